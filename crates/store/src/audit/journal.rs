//! The journal that makes records durable in groups (one disk sync for many requests)
//! before they reach the database, and its recovery after a crash.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use tessera_atna::Record;
use tessera_iam::StoreError;

use super::chain::Journaled;
use super::cpu::CpuLoad;
use super::drain::{drain, replay, Backlog, Handed};
use crate::{db_error, Store};

/// The most events one journal group, or one transaction of a replay, takes.
pub(super) const MAX_BATCH: usize = 512;
/// The most records the journal waits for before a sync (it takes more if more are there).
const GROUP_TARGET: usize = 24;
/// The longest the journal lets a group fill before one sync for all (only while the
/// cores are saturated: see [`AuditWriter`]).
const GROUP_WAIT: Duration = Duration::from_millis(8);

/// The answer to one append: set by the journal thread once the record is synced (or
/// failed), awaited by an async caller or waited for by a blocking one.
#[derive(Default)]
struct Slot {
    result: Option<Result<(), StoreError>>,
    waker: Option<Waker>,
    /// Whether a blocking caller waits on the condition variable: only then is it
    /// notified (a notification is a system call even with nobody waiting, and most
    /// callers are async).
    blocked: bool,
}

#[derive(Default, Clone)]
struct Reply(Arc<(Mutex<Slot>, Condvar)>);

impl Reply {
    fn send(&self, result: Result<(), StoreError>) {
        let (slot, ready) = &*self.0;
        let (waker, blocked) = match slot.lock() {
            Ok(mut slot) => {
                slot.result = Some(result);
                (slot.waker.take(), slot.blocked)
            }
            Err(_) => (None, true),
        };
        if blocked {
            ready.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A record on its way into the journal: `.await` it (no thread is held meanwhile) or
/// [`Pending::wait`] for it.
pub struct Pending(Reply);

impl Pending {
    fn stopped() -> Result<(), StoreError> {
        Err(StoreError("the audit writer has stopped".into()))
    }

    /// Blocks until the record is durable (or could not be made so).
    pub fn wait(self) -> Result<(), StoreError> {
        let (slot, ready) = &*(self.0).0;
        let Ok(mut guard) = slot.lock() else {
            return Self::stopped();
        };
        loop {
            if let Some(result) = guard.result.take() {
                return result;
            }
            guard.blocked = true;
            guard = match ready.wait(guard) {
                Ok(guard) => guard,
                Err(_) => return Self::stopped(),
            };
        }
    }
}

impl Future for Pending {
    type Output = Result<(), StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (slot, _) = &*(self.0).0;
        let Ok(mut slot) = slot.lock() else {
            return Poll::Ready(Self::stopped());
        };
        match slot.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A journal is emptied once everything in it is in the database and it has grown past this.
pub const ROTATE_BYTES: u64 = 4 * 1024 * 1024;

/// Appends audit records durably and fast. A record is durable once it is in this
/// process's journal file, appended and synced (`fdatasync`) together with the records
/// of its group: one disk sync for many requests. Each caller returns only then.
///
/// A group is what arrived while the previous sync ran, written at once, unless the
/// cores this process runs on are saturated (see `cpu.rs`): then it waits (see
/// [`Target`], at most [`GROUP_WAIT`]) for as many records as the last group had, plus
/// one, up to [`GROUP_TARGET`]. A sync costs about 100 µs of CPU on a virtual disk
/// (its system call, the disk's notification and interrupt, the thread switches), which
/// saturated cores take from requests; idle cores do not miss it, and waiting then only
/// adds latency. Measured on one core at 32 connections (`bench/ab.sh`, `/metrics` shows
/// the counts): with a new TLS handshake per token, waits of 4 and 8 ms instead of 2
/// made groups of 10 and 23 records instead of 5 and served 5-7% and 8-12% more; on
/// kept-alive connections groups reach the target first, and a target of 24 served
/// 4-7% more tokens than 16 (32 no more than 16). A wait regardless of load stalls
/// fewer clients than the target: at 4 connections every other group waited out a 2 ms
/// window while the core idled (2,400 kept-alive tokens/s; 7,800 without the wait).
///
/// A second thread then moves the records into the database (the hash-chained
/// trail) in large transactions, retrying with backoff while the database is away.
/// Once the database holds everything a journal held, the journal is emptied.
///
/// On start, journals of processes that are gone (their file lock is free) are locked
/// and replayed into the database by the drainer before this instance's records,
/// skipping records it already holds: a crash between the journal
/// and the database loses nothing. Each running process locks its own journal, so
/// several instances can share a directory.
#[derive(Clone)]
pub struct AuditWriter {
    inner: Arc<Inner>,
}

/// What the journal has done since start: `records / syncs` is the mean group size,
/// `records - drained` what is durable in the journal and not yet in the database.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub syncs: AtomicU64,
    /// Time spent in `fdatasync`, in nanoseconds.
    pub sync_nanos: AtomicU64,
    /// Records the drainer has moved into the database.
    pub drained: AtomicU64,
    /// Records handed to the drainer in memory and not yet in the database (at most the
    /// in-memory limit: see `drain.rs`).
    pub in_memory: AtomicU64,
    /// Records the drainer read back from the journal's disk, having fallen behind.
    pub reread: AtomicU64,
    /// Records of instances now gone that the drainer replayed from their journals (those
    /// the database lacked).
    pub replayed: AtomicU64,
}

/// Records waiting for the journal. A submitter wakes the journal thread only for the
/// first record of a group and for the one that completes it, not for every record.
struct Queue {
    state: Mutex<Waiting>,
    arrived: Condvar,
}

struct Waiting {
    records: Vec<(Record, Reply)>,
    /// The group size the journal waits for while the cores are saturated.
    target: Target,
    /// When the journal last took a group.
    taken_at: std::time::Instant,
    closed: bool,
}

/// The group size to wait for: as many as the last group had (the journal takes all that
/// are there, so this follows the load), plus one (a probe) when that group filled in
/// time, up to [`GROUP_TARGET`]. A probe that did not fill in time found all the clients
/// there are: the group after it would wait out the window for one more that cannot
/// come while the core idles, so the next probe comes only after twice as many groups
/// as the last time (up to [`MAX_BACKOFF`]); a probe that filled lets the next group
/// probe again. A group waits at most twice as long as the last group that filled took,
/// counted from when the group before it was taken (its sync included): the window
/// follows the load, so few clients are not kept waiting long for one more.
#[derive(Debug, Clone, Copy)]
struct Target {
    size: usize,
    /// Whether the group being gathered is a probe.
    probing: bool,
    /// Groups to go before the next probe.
    probe_in: u32,
    /// What `probe_in` was set to after the last probe that did not fill.
    backoff: u32,
    /// How long the last group that reached its size took, from the group before it.
    filled_in: Option<Duration>,
}

/// The most groups between probes.
const MAX_BACKOFF: u32 = 64;

impl Target {
    const ALONE: Self = Self {
        size: 1,
        probing: false,
        probe_in: 0,
        backoff: 0,
        filled_in: None,
    };

    /// How long the group being gathered may wait: twice what the last one that filled
    /// took, at most [`GROUP_WAIT`].
    fn window(&self) -> Duration {
        match self.filled_in {
            Some(filled_in) => GROUP_WAIT.min(filled_in * 2),
            None => GROUP_WAIT,
        }
    }

    /// After a group of `taken` records that reached the size `filled_in` after the
    /// group before it was taken (`None`: did not in time).
    fn after(&mut self, taken: usize, filled_in: Option<Duration>) {
        let reached = filled_in.is_some();
        if reached {
            self.filled_in = filled_in;
        }
        if self.probing {
            self.backoff = if reached {
                0
            } else {
                (self.backoff * 2).clamp(1, MAX_BACKOFF)
            };
            self.probe_in = self.backoff;
        }
        self.probing = false;
        self.size = taken.clamp(1, GROUP_TARGET);
        if reached && taken > 1 && self.size < GROUP_TARGET {
            if self.probe_in == 0 {
                self.size += 1;
                self.probing = true;
            } else {
                self.probe_in -= 1;
            }
        }
    }
}

impl Queue {
    fn new() -> Self {
        Self {
            state: Mutex::new(Waiting {
                records: Vec::new(),
                target: Target::ALONE,
                taken_at: std::time::Instant::now(),
                closed: false,
            }),
            arrived: Condvar::new(),
        }
    }

    /// False once the journal has stopped taking records.
    fn push(&self, record: Record, reply: Reply) -> Result<(), Reply> {
        let Ok(mut waiting) = self.state.lock() else {
            return Err(reply);
        };
        if waiting.closed {
            return Err(reply);
        }
        waiting.records.push((record, reply));
        let n = waiting.records.len();
        if n == 1 || n == waiting.target.size {
            self.arrived.notify_one();
        }
        Ok(())
    }

    fn close(&self) {
        if let Ok(mut waiting) = self.state.lock() {
            waiting.closed = true;
        }
        self.arrived.notify_one();
    }

    /// The next group: waits for a first record; then, while the cores are saturated, for
    /// the group to reach its target, for as long as [`Target::window`] allows. With a core
    /// to spare the group is what came during the previous sync. `saturated` says whether the cores are, at
    /// the instant given. `None` once closed and empty.
    fn next_group(
        &self,
        saturated: &mut impl FnMut(std::time::Instant) -> bool,
    ) -> Option<Vec<(Record, Reply)>> {
        let mut waiting = self.state.lock().ok()?;
        while waiting.records.is_empty() {
            if waiting.closed {
                return None;
            }
            waiting = self.arrived.wait(waiting).ok()?;
        }
        // Read (at most every 100 ms) without holding up submitters meanwhile.
        drop(waiting);
        let now = std::time::Instant::now();
        let saturated = saturated(now);
        let mut waiting = self.state.lock().ok()?;
        let mut reached = waiting.records.len() >= waiting.target.size;
        if saturated {
            let deadline = now + waiting.target.window();
            while !reached && !waiting.closed {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                waiting = self.arrived.wait_timeout(waiting, left).ok()?.0;
                reached = waiting.records.len() >= waiting.target.size;
            }
        }
        let take = waiting.records.len().min(MAX_BATCH);
        let group: Vec<_> = waiting.records.drain(..take).collect();
        let taken_at = std::time::Instant::now();
        let since_last = taken_at.saturating_duration_since(waiting.taken_at);
        waiting.taken_at = taken_at;
        // A group written at once says nothing of how many clients wait together: the
        // size stays for when the cores are saturated again.
        if saturated {
            waiting
                .target
                .after(group.len(), reached.then_some(since_last));
        }
        Some(group)
    }
}

struct Inner {
    queue: Arc<Queue>,
    stats: Arc<JournalStats>,
    threads: Vec<thread::JoinHandle<()>>,
    /// Set when stopping: the drainer then gives up on a database that keeps failing
    /// (what it could not move stays in the journal for the next start).
    stopping: Arc<AtomicBool>,
}

/// When the last handle goes, the journal thread finishes what it was given and the
/// drainer moves it into the database before this returns: a clean stop leaves the
/// journal drained, and no database work is left running while the process exits.
impl Drop for Inner {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.queue.close();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl AuditWriter {
    /// Starts writing a journal in `dir`, taking over what instances now gone left there:
    /// the drainer replays it before anything else, while requests are served.
    pub fn start(store: Store, dir: &Path) -> Result<Self, StoreError> {
        Self::start_with(store, dir, ROTATE_BYTES, super::drain::IN_MEMORY)
    }

    /// With segments of `rotate_bytes` and at most `in_memory` records held in memory
    /// for the drainer (the defaults: [`ROTATE_BYTES`], [`IN_MEMORY`](super::drain::IN_MEMORY)).
    pub fn start_with(
        store: Store,
        dir: &Path,
        rotate_bytes: u64,
        in_memory: usize,
    ) -> Result<Self, StoreError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError(format!("audit journal {}: {what}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(|e| fail("cannot create it", &e))?;
        // Locked for this instance now, replayed by its drainer before anything else.
        let dead = dead_journals(dir).map_err(|e| fail("cannot read it", &e))?;
        let (file, path) = own_journal(dir, 0).map_err(|e| fail("cannot open one", &e))?;
        // A segment is written ahead with zeros (see `Journal::append`); doing the first
        // one now makes a volume without room for it fail here, saying so.
        let segment = segment_bytes(rotate_bytes);
        let allocated = file.metadata().map(|m| m.len()).unwrap_or(0);
        if allocated < segment {
            write_zeros(&file, allocated, segment)
                .and_then(|()| file.sync_all())
                .map_err(|e| fail("cannot write its first segment", &no_space_hint(e, segment)))?;
        }
        let journal_dir = dir.to_owned();
        let queue = Arc::new(Queue::new());
        let incoming = queue.clone();
        let (to_drainer, drained_from) = mpsc::channel();
        let drainer_gone = Arc::new(AtomicBool::new(false));
        let gone = drainer_gone.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let stats = Arc::new(JournalStats::default());
        let journal_stats = stats.clone();
        let backlog = Arc::new(Backlog::new(in_memory, stats.clone()));
        let drainer_backlog = backlog.clone();
        let drainer_stats = stats.clone();
        let drainer = thread::Builder::new()
            .name("audit-drainer".into())
            .spawn(move || {
                replay(&store, dead, &stop, &drainer_stats);
                drain(&store, &drained_from, &drainer_backlog, &stop);
                gone.store(true, Ordering::SeqCst);
            })
            .map_err(|e| fail("cannot start the drainer", &e))?;
        let writer = thread::Builder::new()
            .name("audit-journal".into())
            .spawn(move || {
                let journal = Journal {
                    size: 0,
                    allocated: file.metadata().map(|m| m.len()).unwrap_or(segment),
                    file: Arc::new(file),
                    path,
                    dir: journal_dir,
                    retired: Vec::new(),
                    backlog,
                    drainer_gone,
                    rotate_bytes,
                    stats: journal_stats,
                };
                journal.run(&incoming, to_drainer)
            })
            .map_err(|e| fail("cannot start the writer", &e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                stats,
                threads: vec![writer, drainer],
                stopping,
            }),
        })
    }

    /// Hands the record to the journal; the result says when it is durable.
    pub fn submit(&self, record: Record) -> Pending {
        let reply = Reply::default();
        if let Err(reply) = self.inner.queue.push(record, reply.clone()) {
            reply.send(Pending::stopped());
        }
        Pending(reply)
    }

    /// The journal's counters, for `/metrics` and for background work that yields to
    /// the requests (they hold no writer: the journal still stops with its last handle).
    pub fn stats(&self) -> Arc<JournalStats> {
        self.inner.stats.clone()
    }
}

/// The first journal file in `dir` whose lock is free, locked for this process.
/// The bytes one journal segment takes on disk: it rotates past `rotate_bytes` and is
/// written ahead a quarter beyond. The journal volume needs at least this much free
/// (5 MiB with the default 4 MiB segments), more while the database is unreachable.
pub fn segment_bytes(rotate_bytes: u64) -> u64 {
    rotate_bytes + rotate_bytes / 4
}

/// Writes zeros over `[from, to)` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// A write error, with what the volume must have free when it is full.
fn no_space_hint(error: std::io::Error, needed: u64) -> String {
    if error.kind() == std::io::ErrorKind::StorageFull {
        format!(
            "{error}: the audit journal needs {} MiB free for a segment (audit.journal_dir); \
             free space or move the journal to a larger volume",
            needed.div_ceil(1024 * 1024)
        )
    } else {
        error.to_string()
    }
}

fn own_journal(dir: &Path, from: u64) -> std::io::Result<(File, PathBuf)> {
    for n in from.. {
        let path = dir.join(format!("{n}.journal"));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .read(true)
            .truncate(false)
            .open(&path)?;
        if file.try_lock().is_ok() {
            // Holding records (an instance that died after this start's recovery ran):
            // left for the next start to replay.
            let mut first = [0u8; 1];
            if file.read_at(&mut first, 0)? == 1 && first[0] != 0 {
                continue;
            }
            return Ok((file, path));
        }
    }
    Err(std::io::Error::other("no journal file could be locked"))
}

/// The number of a journal segment's file, `{n}.journal`.
fn segment_number(path: &Path) -> Option<u64> {
    if path.extension().is_none_or(|e| e != "journal") {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}

/// The number for a new segment: past every journal file in `dir`, so the numbers of an
/// instance's segments follow the order it wrote them in, which recovery replays them in.
fn next_segment(dir: &Path) -> std::io::Result<u64> {
    let mut next = 0;
    for entry in fs::read_dir(dir)? {
        if let Some(n) = segment_number(&entry?.path()) {
            next = next.max(n + 1);
        }
    }
    Ok(next)
}

/// The journal segments of `dir` that instances now gone left records in (their file
/// lock was free), locked for this one, in the order of their numbers: an instance's
/// segments in the order it wrote them. The drainer replays them (see `drain::replay`).
fn dead_journals(dir: &Path) -> std::io::Result<Vec<(PathBuf, File)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(n) = segment_number(&path) {
            segments.push((n, path));
        }
    }
    segments.sort();
    let mut dead = Vec::new();
    for (_, path) in segments {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        if file.try_lock().is_err() {
            continue; // a live instance's journal
        }
        let mut first = [0u8; 1];
        if file.read_at(&mut first, 0)? == 1 && first[0] != 0 {
            dead.push((path, file));
        }
    }
    Ok(dead)
}

/// This instance's journal: segment files, each locked while this instance holds it.
/// Appends go to the current segment; once it has grown past `rotate_bytes`, a new one
/// begins, and a full segment is deleted when the database holds all of its records.
struct Journal {
    file: Arc<File>,
    path: PathBuf,
    dir: PathBuf,
    /// Full segments not yet all in the database: (path, file, records written up to
    /// its end).
    retired: Vec<(PathBuf, Arc<File>, u64)>,
    /// What the drainer holds in memory and what it is to read back from disk.
    backlog: Arc<Backlog>,
    /// Set when the drainer has stopped (done, or given up on a failing database).
    drainer_gone: Arc<AtomicBool>,
    /// Where the current segment's records end: the next append's offset.
    size: u64,
    /// The current segment's length: records, then zeros written ahead of them.
    allocated: u64,
    rotate_bytes: u64,
    stats: Arc<JournalStats>,
}

impl Journal {
    /// Records this instance has made durable (only this thread counts them).
    fn written(&self) -> u64 {
        self.stats.records.load(Ordering::Relaxed)
    }

    /// Records the drainer has committed to the database, counted the same way.
    fn drained(&self) -> u64 {
        self.stats.drained.load(Ordering::SeqCst)
    }

    fn run(mut self, incoming: &Queue, drainer: Sender<Handed>) {
        // While the cores are saturated a group gathers for a moment: one sync then
        // serves many requests.
        let mut load = CpuLoad::new(std::time::Instant::now());
        let mut saturated = |now| load.saturated(now);
        while let Some(batch) = incoming.next_group(&mut saturated) {
            let records: Vec<Journaled> = batch.iter().map(|(r, _)| Journaled::of(r)).collect();
            let from = self.size;
            let result = self.append(&records);
            if let Err(e) = &result {
                tracing::error!(error = %e.0, journal = %self.path.display(), events = records.len(), "audit events could not be journaled");
            }
            let ok = result.is_ok();
            for (_, reply) in batch {
                reply.send(result.clone());
            }
            if ok {
                let at = (from, self.size);
                self.backlog.hand(&drainer, records, &self.file, at);
            }
            self.rotate();
        }
        self.finish(drainer);
    }

    /// A clean stop: once the drainer has moved everything into the database (it is
    /// given a while), the segments are deleted, so the next start has nothing to replay.
    fn finish(mut self, drainer: Sender<Handed>) {
        drop(drainer);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.drained() < self.written() {
            if self.drainer_gone.load(Ordering::SeqCst) || std::time::Instant::now() > deadline {
                return; // what is left is replayed (once) at the next start
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.rotate();
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::error!(error = %e, journal = %self.path.display(), "could not delete the drained audit journal");
        }
    }

    /// Appends the lines and syncs them. The file is written ahead with zeros, so an
    /// append overwrites allocated blocks and its `fdatasync` flushes the data alone, not
    /// the file's size and extents too (measured: +13% tokens/s on one core).
    fn append(&mut self, lines: &[Journaled]) -> Result<(), StoreError> {
        let mut buffer = String::new();
        for line in lines {
            buffer.push_str(&line.text);
            buffer.push('\n');
        }
        let end = self.size + buffer.len() as u64;
        if end > self.allocated {
            // A segment ends a little past `rotate_bytes`: zeros for that, at once.
            let target = end.max(self.allocated + segment_bytes(self.rotate_bytes));
            write_zeros(&self.file, self.allocated, target)
                .and_then(|()| self.file.sync_all())
                .map_err(|e| db_error(no_space_hint(e, target - self.allocated)))?;
            self.allocated = target;
        }
        self.file
            .write_all_at(buffer.as_bytes(), self.size)
            .map_err(db_error)?;
        let started = std::time::Instant::now();
        self.file.sync_data().map_err(db_error)?;
        let nanos = started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
        self.stats.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records
            .fetch_add(lines.len() as u64, Ordering::Relaxed);
        self.size = end;
        Ok(())
    }

    /// Begins a new segment when the current one is large, and deletes the full ones
    /// whose records the database holds.
    fn rotate(&mut self) {
        if self.size >= self.rotate_bytes {
            match next_segment(&self.dir).and_then(|n| own_journal(&self.dir, n)) {
                Ok((file, path)) => {
                    let full = std::mem::replace(&mut self.file, Arc::new(file));
                    let full_path = std::mem::replace(&mut self.path, path);
                    self.retired.push((full_path, full, self.written()));
                    self.allocated = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                    self.size = 0;
                }
                Err(e) => {
                    tracing::error!(error = %e, dir = %self.dir.display(), "could not begin a new audit journal segment; the current one grows")
                }
            }
        }
        let drained = self.drained();
        self.retired.retain(|(path, _, end)| {
            if *end > drained {
                return true;
            }
            if let Err(e) = fs::remove_file(path) {
                tracing::error!(error = %e, journal = %path.display(), "could not delete a drained audit journal segment");
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_journal_volume_says_how_much_it_needs() {
        assert_eq!(segment_bytes(ROTATE_BYTES), 5 * 1024 * 1024);
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let said = no_space_hint(full, segment_bytes(ROTATE_BYTES));
        assert!(said.contains("needs 5 MiB free"), "{said}");
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(!no_space_hint(other, 1).contains("MiB"));
        // The real thing: /dev/full answers every write with ENOSPC.
        let dev_full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let error = write_zeros(&dev_full, 0, 4096).unwrap_err();
        assert!(no_space_hint(error, segment_bytes(ROTATE_BYTES)).contains("needs 5 MiB free"));
    }

    #[test]
    fn a_blocking_caller_is_woken_whether_the_answer_comes_before_or_after_it_waits() {
        // Answered first: the result is there, nothing to wait for.
        let reply = Reply::default();
        reply.send(Ok(()));
        assert!(Pending(reply).wait().is_ok());
        // Answered while it waits: the waiter said so, and is notified.
        let reply = Reply::default();
        let answer = reply.clone();
        let sender = thread::spawn(move || {
            while !answer.0 .0.lock().unwrap().blocked {
                thread::sleep(Duration::from_millis(1));
            }
            answer.send(Err(StoreError("disk gone".into())));
        });
        let result = Pending(reply).wait();
        sender.join().unwrap();
        assert_eq!(result.unwrap_err().0, "disk gone");
    }

    /// Pushes records with the ids `e<n>` for each `n` given, as requests would.
    fn push(queue: &Queue, ids: std::ops::Range<usize>) {
        for n in ids {
            let record = Record {
                id: format!("e{n}"),
                recorded: tessera_types::UnixTime(0),
                observer: "https://tessera.example".into(),
                client_address: None,
                outcome: tessera_atna::Outcome::Success,
                event: tessera_atna::Event::AdminAction {
                    command: "user add".into(),
                    target: "audrey".into(),
                    operator: "root".into(),
                },
            };
            assert!(queue.push(record, Reply::default()).is_ok());
        }
    }

    fn queue_waiting_for(size: usize) -> Queue {
        let queue = Queue::new();
        queue.state.lock().unwrap().target.size = size;
        queue
    }

    #[test]
    fn with_a_core_to_spare_a_group_is_taken_at_once() {
        // A wait would take its whole window (no fourth record comes); the fastest of
        // five tries shows there was none, however busy the machine running the tests.
        let fastest = (0..5)
            .map(|_| {
                let queue = queue_waiting_for(5);
                push(&queue, 0..3);
                let started = std::time::Instant::now();
                let group = queue.next_group(&mut |_| false).unwrap();
                let took = started.elapsed();
                assert_eq!(group.len(), 3);
                assert_eq!(queue.state.lock().unwrap().target.size, 5, "unchanged");
                took
            })
            .min()
            .unwrap();
        assert!(fastest < GROUP_WAIT / 2, "{fastest:?}");
    }

    #[test]
    fn on_saturated_cores_a_group_waits_for_its_size_or_its_window() {
        // Four more records from another thread, a millisecond after the first: the group
        // takes all five as soon as the fifth comes, within its window (8 ms). One of five
        // tries must, however busy the machine running the tests.
        let queue = (0..5)
            .find_map(|_| {
                let queue = Arc::new(queue_waiting_for(5));
                push(&queue, 0..1);
                let pusher = {
                    let queue = queue.clone();
                    thread::spawn(move || {
                        thread::sleep(Duration::from_millis(1));
                        push(&queue, 1..5);
                    })
                };
                let group = queue.next_group(&mut |_| true).unwrap();
                pusher.join().unwrap();
                (group.len() == 5).then_some(queue)
            })
            .expect("a group waited for its fifth record");
        let target = queue.state.lock().unwrap().target;
        assert_eq!((target.size, target.probing), (6, true));
        // The probe for a sixth: nobody comes, the window ends, and the group is what came.
        push(&queue, 5..10);
        let started = std::time::Instant::now();
        let group = queue.next_group(&mut |_| true).unwrap();
        let took = started.elapsed();
        assert_eq!(group.len(), 5);
        assert!(took >= target.window(), "{took:?}");
        let target = queue.state.lock().unwrap().target;
        let after = (target.size, target.probing, target.probe_in);
        assert_eq!(after, (5, false, 1));
        // Closed and empty: no more groups.
        queue.close();
        assert!(queue.next_group(&mut |_| true).is_none());
    }

    #[test]
    fn a_group_probes_for_one_more_and_backs_off_when_no_more_came() {
        let mut target = Target::ALONE;
        let filled = Some(Duration::from_millis(1));
        // Alone: the next lone record is written at once.
        target.after(1, filled);
        assert_eq!((target.size, target.probing), (1, false));
        // Filled in time: the next group probes for one more, and a probe that fills
        // lets the one after probe again.
        assert_eq!(Target::ALONE.window(), GROUP_WAIT, "nothing filled yet");
        target.after(2, filled);
        assert_eq!((target.size, target.probing), (3, true));
        // A group waits twice as long as the last group that filled took, at most.
        assert_eq!(target.window(), Duration::from_millis(2));
        target.after(3, filled);
        assert_eq!((target.size, target.probing, target.backoff), (4, true, 0));
        // Four clients: the probe for a fifth runs out of time. The next probe comes
        // after one group, then two, four... as long as none fills.
        target.after(4, None);
        assert_eq!(
            (target.size, target.probing, target.probe_in),
            (4, false, 1)
        );
        assert_eq!(target.window(), Duration::from_millis(2), "a probe or not");
        target.after(4, filled);
        assert_eq!(
            (target.size, target.probing, target.probe_in),
            (4, false, 0)
        );
        target.after(4, filled);
        assert_eq!((target.size, target.probing), (5, true));
        target.after(4, None);
        assert_eq!((target.size, target.probe_in), (4, 2));
        for _ in 0..2 {
            target.after(4, filled);
            assert!(!target.probing);
        }
        target.after(4, filled);
        assert!(target.probing);
        for _ in 0..10 {
            target.after(4, None);
            target.probe_in = 0;
            target.after(4, filled);
        }
        assert_eq!(target.backoff, MAX_BACKOFF);
        // A sixth client: the probe fills, and growth is quick again.
        target.after(5, Some(GROUP_WAIT));
        assert_eq!((target.size, target.probing, target.backoff), (6, true, 0));
        assert_eq!(
            target.window(),
            GROUP_WAIT,
            "twice the fill, but no longer than any"
        );
        // Fewer records than waited for, not in a probe: the load fell.
        target.after(6, filled);
        target.probing = false;
        target.after(3, None);
        assert_eq!((target.size, target.probing), (3, false));
        // A backlog, or the cap: the cap, and no probe above it.
        target.after(MAX_BATCH, filled);
        assert_eq!((target.size, target.probing), (GROUP_TARGET, false));
        target.after(GROUP_TARGET, filled);
        assert_eq!((target.size, target.probing), (GROUP_TARGET, false));
    }
}
