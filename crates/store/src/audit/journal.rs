//! The journal that makes records durable in groups (one disk sync for many requests)
//! before they reach the database, and its recovery after a crash.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use tessera_atna::Record;
use tessera_iam::StoreError;

use super::chain::Journaled;
use crate::{db_error, Store};

/// The most events one transaction takes.
const MAX_BATCH: usize = 512;
/// How long the drainer gathers journaled records before a database transaction.
const DRAIN_GATHER: Duration = Duration::from_millis(50);
/// The most records the journal waits for before a sync (it takes more if more are there).
const GROUP_TARGET: usize = 24;
/// The longest the journal lets a group fill before one sync for all.
const GROUP_WAIT: Duration = Duration::from_millis(2);

/// The answer to one append: set by the journal thread once the record is synced (or
/// failed), awaited by an async caller or waited for by a blocking one.
#[derive(Default)]
struct Slot {
    result: Option<Result<(), StoreError>>,
    waker: Option<Waker>,
}

#[derive(Default, Clone)]
struct Reply(Arc<(Mutex<Slot>, Condvar)>);

impl Reply {
    fn send(&self, result: Result<(), StoreError>) {
        let (slot, ready) = &*self.0;
        let waker = match slot.lock() {
            Ok(mut slot) => {
                slot.result = Some(result);
                slot.waker.take()
            }
            Err(_) => None,
        };
        ready.notify_all();
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
/// of its group: one disk sync for many requests. Each caller returns only then. A lone
/// record is written at once; under load a group waits (at most [`GROUP_WAIT`]) for as
/// many records as the last one had, plus one, up to [`GROUP_TARGET`]: a sync costs
/// about 100 µs of CPU on a virtual disk, so fewer, larger groups leave that CPU to
/// the requests (measured: one sync per ~8 token requests with a TLS handshake each,
/// per ~17 on kept-alive connections with a target of 16, ~24 with 24; `/metrics`
/// shows the counts). At 32 connections on one core a target of 24 served 4-7% more
/// tokens than 16, and 32 no more than 16: a group that waits for every connection
/// leaves the core idle meanwhile. A second thread then moves the records into the database (the hash-chained
/// trail) in large transactions, retrying with backoff while the database is away.
/// Once the database holds everything a journal held, the journal is emptied.
///
/// On start, journals of processes that are gone (their file lock is free) are replayed
/// into the database, skipping records it already holds: a crash between the journal
/// and the database loses nothing. Each running process locks its own journal, so
/// several instances can share a directory.
#[derive(Clone)]
pub struct AuditWriter {
    inner: Arc<Inner>,
}

/// What the journal has done since start: `records / syncs` is the mean group size.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub syncs: AtomicU64,
    /// Time spent in `fdatasync`, in nanoseconds.
    pub sync_nanos: AtomicU64,
}

/// Records waiting for the journal. A submitter wakes the journal thread only for the
/// first record of a group and for the one that completes it, not for every record.
struct Queue {
    state: Mutex<Waiting>,
    arrived: Condvar,
}

struct Waiting {
    records: Vec<(Record, Reply)>,
    /// The group size the journal waits for: as many as the last group had (it takes
    /// all that are there when it wakes, so this grows with the load), up to
    /// [`GROUP_TARGET`]. A lone caller (last group of one) is written at once.
    target: usize,
    closed: bool,
}

impl Queue {
    fn new() -> Self {
        Self {
            state: Mutex::new(Waiting {
                records: Vec::new(),
                target: 1,
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
        if n == 1 || n == waiting.target {
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

    /// The next group: waits for a first record, then up to [`GROUP_WAIT`] for the
    /// group to reach its target. `None` once closed and empty.
    fn next_group(&self) -> Option<Vec<(Record, Reply)>> {
        let mut waiting = self.state.lock().ok()?;
        while waiting.records.is_empty() {
            if waiting.closed {
                return None;
            }
            waiting = self.arrived.wait(waiting).ok()?;
        }
        let deadline = std::time::Instant::now() + GROUP_WAIT;
        let mut reached = true;
        while waiting.records.len() < waiting.target && !waiting.closed {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                reached = false;
                break;
            }
            waiting = self.arrived.wait_timeout(waiting, left).ok()?.0;
        }
        let take = waiting.records.len().min(MAX_BATCH);
        let group: Vec<_> = waiting.records.drain(..take).collect();
        waiting.target = next_target(group.len(), reached);
        Some(group)
    }
}

/// The size the next group waits for, after one of `taken` records that did (or did
/// not) reach its target in time: a group that filled asks for one more, one that did
/// not asks for what came; a lone record asks for nothing more (it is written at once).
fn next_target(taken: usize, reached: bool) -> usize {
    let wanted = if reached && taken > 1 {
        taken + 1
    } else {
        taken
    };
    wanted.clamp(1, GROUP_TARGET)
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
    /// Recovers what earlier processes left in `dir`, then starts writing a journal there.
    pub fn start(store: Store, dir: &Path) -> Result<Self, StoreError> {
        Self::start_with(store, dir, ROTATE_BYTES)
    }

    pub fn start_with(store: Store, dir: &Path, rotate_bytes: u64) -> Result<Self, StoreError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError(format!("audit journal {}: {what}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(|e| fail("cannot create it", &e))?;
        let recovered = recover(&store, dir).map_err(|e| fail("cannot replay it", &e.0))?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "audit records of an earlier process replayed from its journal"
            );
        }
        let (file, path) = own_journal(dir).map_err(|e| fail("cannot open one", &e))?;
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
        let drained = Arc::new(AtomicU64::new(0));
        let counter = drained.clone();
        let drainer_gone = Arc::new(AtomicBool::new(false));
        let gone = drainer_gone.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let stats = Arc::new(JournalStats::default());
        let journal_stats = stats.clone();
        let drainer = thread::Builder::new()
            .name("audit-drainer".into())
            .spawn(move || {
                drain(&store, &drained_from, &counter, &stop);
                gone.store(true, Ordering::SeqCst);
            })
            .map_err(|e| fail("cannot start the drainer", &e))?;
        let writer = thread::Builder::new()
            .name("audit-journal".into())
            .spawn(move || {
                let journal = Journal {
                    size: 0,
                    allocated: file.metadata().map(|m| m.len()).unwrap_or(segment),
                    file,
                    path,
                    dir: journal_dir,
                    retired: Vec::new(),
                    drained,
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

fn own_journal(dir: &Path) -> std::io::Result<(File, PathBuf)> {
    for n in 0u32.. {
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

/// Replays every unlocked journal of `dir` into the database and empties it.
fn recover(store: &Store, dir: &Path) -> Result<usize, StoreError> {
    let mut recovered = 0;
    let entries = fs::read_dir(dir).map_err(db_error)?;
    for entry in entries {
        let path = entry.map_err(db_error)?.path();
        if path.extension().is_none_or(|e| e != "journal") {
            continue;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(db_error)?;
        if file.try_lock().is_err() {
            continue; // a live process's journal
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(db_error)?;
        // The records end where the preallocated zeros begin.
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut records = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            match serde_json::from_str::<Record>(line) {
                Ok(record) => records.push(record),
                // Only a write cut short by the crash can be partial; its caller was never answered.
                Err(e) => {
                    tracing::warn!(journal = %path.display(), error = %e, "skipping a partial journal line")
                }
            }
        }
        let missing = store.audit_records_missing(records)?;
        recovered += missing.len();
        for chunk in missing.chunks(MAX_BATCH) {
            store.append_audit(chunk)?;
        }
        file.set_len(0).map_err(db_error)?;
        file.sync_all().map_err(db_error)?;
    }
    Ok(recovered)
}

/// This instance's journal: segment files, each locked while this instance holds it.
/// Appends go to the current segment; once it has grown past `rotate_bytes`, a new one
/// begins, and a full segment is deleted when the database holds all of its records.
struct Journal {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    /// Full segments not yet all in the database: (path, file, records written up to
    /// its end).
    retired: Vec<(PathBuf, File, u64)>,
    /// Records the drainer has committed to the database, counted the same way.
    drained: Arc<AtomicU64>,
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

    fn run(mut self, incoming: &Queue, drainer: Sender<Vec<Journaled>>) {
        // Under load, a group gathers for a moment: one sync then serves many requests.
        while let Some(batch) = incoming.next_group() {
            let records: Vec<Journaled> = batch.iter().map(|(r, _)| Journaled::of(r)).collect();
            let result = self.append(&records);
            if let Err(e) = &result {
                tracing::error!(error = %e.0, journal = %self.path.display(), events = records.len(), "audit events could not be journaled");
            }
            let ok = result.is_ok();
            for (_, reply) in batch {
                reply.send(result.clone());
            }
            if ok {
                let _ = drainer.send(records);
            }
            self.rotate();
        }
        self.finish(drainer);
    }

    /// A clean stop: once the drainer has moved everything into the database (it is
    /// given a while), the segments are deleted, so the next start has nothing to replay.
    fn finish(mut self, drainer: Sender<Vec<Journaled>>) {
        drop(drainer);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.drained.load(Ordering::SeqCst) < self.written() {
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
            match own_journal(&self.dir) {
                Ok((file, path)) => {
                    let full = std::mem::replace(&mut self.file, file);
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
        let drained = self.drained.load(Ordering::SeqCst);
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

/// Moves journaled records into the database in order, in large transactions; while the
/// database fails, retries the same records with backoff (they are safe in the journal).
fn drain(
    store: &Store,
    incoming: &Receiver<Vec<Journaled>>,
    drained: &AtomicU64,
    stopping: &AtomicBool,
) {
    while let Ok(mut records) = incoming.recv() {
        // Nobody waits on this step, so it waits a little for more: a transaction costs
        // about the same for one record as for hundreds. It sleeps rather than waiting
        // on the queue, so the journal's sends do not wake it group by group.
        if !stopping.load(Ordering::SeqCst) {
            thread::sleep(DRAIN_GATHER);
        }
        while let Ok(more) = incoming.try_recv() {
            records.extend(more);
        }
        let mut wait = Duration::from_millis(50);
        while let Err(e) = store.append_journaled(&records) {
            if stopping.load(Ordering::SeqCst) {
                tracing::error!(error = %e.0, events = records.len(), "stopping with audit events only in the journal; the next start moves them");
                return;
            }
            tracing::error!(error = %e.0, events = records.len(), retry_in_ms = wait.as_millis() as u64, "audit events not yet in the database");
            thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        drained.fetch_add(records.len() as u64, Ordering::SeqCst);
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
    fn a_group_asks_for_one_more_once_it_fills_and_for_what_came_when_it_did_not() {
        let cases = [
            // (taken, reached in time, next target)
            (1, true, 1), // alone: the next lone record is written at once
            (1, false, 1),
            (2, true, 3),
            (5, true, 6),
            (5, false, 5),
            (GROUP_TARGET, true, GROUP_TARGET),
            (MAX_BATCH, true, GROUP_TARGET), // woke to a backlog
            (MAX_BATCH, false, GROUP_TARGET),
        ];
        for (taken, reached, next) in cases {
            assert_eq!(next_target(taken, reached), next, "{taken} {reached}");
        }
    }
}
