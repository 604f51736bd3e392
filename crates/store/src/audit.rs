//! The durable audit trail: a journal that makes records durable in groups (one disk
//! sync for many requests), appends that extend the hash chain in the database, chain
//! verification and export.

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

use diesel::prelude::*;
use tessera_atna::{canonical, chain_hash, Record};
use tessera_iam::StoreError;
use tessera_types::UnixTime;

use crate::schema::{audit_chain, audit_deliveries, audit_events, audit_repository_cursor};
use crate::{db_error, DbConnection, Store};

/// The most events one transaction takes.
const MAX_BATCH: usize = 512;
/// How long the drainer gathers journaled records before a database transaction.
const DRAIN_GATHER: Duration = Duration::from_millis(50);
/// The most records the journal waits for before a sync (it takes more if more are there).
const GROUP_TARGET: usize = 16;
/// The longest the journal lets a group fill before one sync for all.
const GROUP_WAIT: Duration = Duration::from_millis(2);

/// A record as the journal holds it; its canonical text is what is hashed and stored.
struct Journaled {
    id: String,
    recorded: i64,
    text: String,
}

impl Journaled {
    fn of(record: &Record) -> Self {
        Self {
            id: record.id.clone(),
            recorded: record.recorded.0,
            text: canonical(record),
        }
    }
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub checked: u64,
    /// The first event whose stored hash does not follow from its predecessors: (seq, id).
    pub first_broken: Option<(i64, String)>,
    /// The first event whose copy in the audit repository (what ITI-81 queries answer)
    /// is missing or differs from the trail: (seq, id).
    pub first_altered_copy: Option<(i64, String)>,
}

impl Store {
    /// Appends records in order, in one transaction, extending the chain.
    pub fn append_audit(&self, records: &[Record]) -> Result<(), StoreError> {
        let lines: Vec<Journaled> = records.iter().map(Journaled::of).collect();
        self.append_journaled(&lines)
    }

    /// Appends records already in their canonical text, in one transaction and in
    /// multi-row inserts, extending the chain.
    fn append_journaled(&self, lines: &[Journaled]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            // Take the head's row lock before reading it (PostgreSQL; SQLite writes are serial).
            diesel::update(audit_chain::table.filter(audit_chain::id.eq(1)))
                .set(audit_chain::seq.eq(audit_chain::seq))
                .execute(conn)?;
            let (mut seq, mut hash): (i64, String) = audit_chain::table
                .filter(audit_chain::id.eq(1))
                .select((audit_chain::seq, audit_chain::hash))
                .first(conn)?;
            let mut rows = Vec::with_capacity(lines.len());
            for line in lines {
                seq += 1;
                hash = chain_hash(&hash, &line.text);
                rows.push((
                    audit_events::seq.eq(seq),
                    audit_events::id.eq(&line.id),
                    audit_events::recorded.eq(line.recorded),
                    audit_events::record.eq(&line.text),
                    audit_events::hash.eq(hash.clone()),
                ));
            }
            // Multi-row inserts are per backend (diesel's MultiBackend has none).
            for chunk in rows.chunks(1000) {
                let insert = diesel::insert_into(audit_events::table).values(chunk);
                match &mut **conn {
                    DbConnection::Sqlite(c) => insert.execute(c)?,
                    DbConnection::Postgres(c) => insert.execute(c)?,
                };
            }
            diesel::update(audit_chain::table.filter(audit_chain::id.eq(1)))
                .set((audit_chain::seq.eq(seq), audit_chain::hash.eq(&hash)))
                .execute(conn)
                .map(|_| ())
        })
        .map_err(db_error)
    }

    /// Recomputes the chain from the first event; names the first broken link. Checks
    /// as well that the audit repository's copy of each event it has indexed is the one
    /// the trail derives. `progress` hears how many events verify so far, after each
    /// batch of 1,000 (each batch on a connection of its own, so a long check holds
    /// none of the pool's connections for long).
    pub fn verify_audit_chain(
        &self,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ChainReport, StoreError> {
        let mut previous = String::new();
        let mut expected_seq = 0i64;
        let mut checked = 0u64;
        let mut first_altered_copy = None;
        let indexed: i64 = audit_repository_cursor::table
            .filter(audit_repository_cursor::id.eq(1))
            .select(audit_repository_cursor::seq)
            .first(&mut *self.conn()?)
            .map_err(db_error)?;
        loop {
            let mut conn = self.conn()?;
            let rows: Vec<(i64, String, String, String)> = audit_events::table
                .filter(audit_events::seq.gt(expected_seq))
                .order(audit_events::seq.asc())
                .limit(1000)
                .select((
                    audit_events::seq,
                    audit_events::id,
                    audit_events::record,
                    audit_events::hash,
                ))
                .load(&mut *conn)
                .map_err(db_error)?;
            if rows.is_empty() {
                break;
            }
            if first_altered_copy.is_none() {
                first_altered_copy = altered_copy(&mut conn, &rows, indexed)?;
            }
            for (seq, id, record, hash) in rows {
                expected_seq += 1;
                let computed = chain_hash(&previous, &record);
                // A gap in seq (a deleted row) breaks the chain as surely as an edit.
                if seq != expected_seq || computed != hash {
                    return Ok(ChainReport {
                        checked,
                        first_broken: Some((seq, id)),
                        first_altered_copy,
                    });
                }
                previous = hash;
                checked += 1;
            }
            progress(checked);
        }
        let (head_seq, head_hash): (i64, String) = audit_chain::table
            .filter(audit_chain::id.eq(1))
            .select((audit_chain::seq, audit_chain::hash))
            .first(&mut *self.conn()?)
            .map_err(db_error)?;
        if head_seq != expected_seq || head_hash != previous {
            // The newest events were removed, or the head was rewritten.
            return Ok(ChainReport {
                checked,
                first_broken: Some((expected_seq + 1, "(missing)".into())),
                first_altered_copy,
            });
        }
        Ok(ChainReport {
            checked,
            first_broken: None,
            first_altered_copy,
        })
    }

    /// Brings the audit repository (ITI-81) up to date with the trail: the events
    /// appended since the last catch-up are indexed, in transactions of 500. Run before
    /// each repository query, so the cost of indexing falls on auditors, not on every
    /// audited request. Serialised by the cursor row's lock.
    pub fn catch_up_audit_repository(&self) -> Result<u64, StoreError> {
        // Most queries find the repository current: two reads, no write lock.
        {
            let mut conn = self.conn()?;
            let cursor: i64 = audit_repository_cursor::table
                .filter(audit_repository_cursor::id.eq(1))
                .select(audit_repository_cursor::seq)
                .first(&mut *conn)
                .map_err(db_error)?;
            let newer = audit_events::table
                .filter(audit_events::seq.gt(cursor))
                .select(audit_events::seq)
                .first::<i64>(&mut *conn)
                .optional()
                .map_err(db_error)?;
            if newer.is_none() {
                return Ok(0);
            }
        }
        let mut indexed = 0u64;
        loop {
            let mut conn = self.conn()?;
            let done = conn
                .transaction::<_, diesel::result::Error, _>(|conn| {
                    diesel::update(
                        audit_repository_cursor::table.filter(audit_repository_cursor::id.eq(1)),
                    )
                    .set(audit_repository_cursor::seq.eq(audit_repository_cursor::seq))
                    .execute(conn)?;
                    let cursor: i64 = audit_repository_cursor::table
                        .filter(audit_repository_cursor::id.eq(1))
                        .select(audit_repository_cursor::seq)
                        .first(conn)?;
                    let rows: Vec<(i64, String)> = audit_events::table
                        .filter(audit_events::seq.gt(cursor))
                        .order(audit_events::seq.asc())
                        .limit(500)
                        .select((audit_events::seq, audit_events::record))
                        .load(conn)?;
                    let Some(last) = rows.last().map(|(seq, _)| *seq) else {
                        return Ok(true);
                    };
                    let records: Vec<Record> = rows
                        .iter()
                        .filter_map(|(_, text)| serde_json::from_str(text).ok())
                        .collect();
                    crate::vault::index_repository(conn, &records)?;
                    diesel::update(
                        audit_repository_cursor::table.filter(audit_repository_cursor::id.eq(1)),
                    )
                    .set(audit_repository_cursor::seq.eq(last))
                    .execute(conn)?;
                    indexed += records.len() as u64;
                    Ok(false)
                })
                .map_err(db_error)?;
            if done {
                return Ok(indexed);
            }
        }
    }

    /// Of these records, those whose id the trail does not hold yet, in order. A stored
    /// copy has the same `recorded` time, so only the trail since the earliest of them
    /// is looked at (ids have no index: appends stay sequential).
    pub fn audit_records_missing(&self, records: Vec<Record>) -> Result<Vec<Record>, StoreError> {
        let Some(earliest) = records.iter().map(|r| r.recorded.0).min() else {
            return Ok(records);
        };
        let mut conn = self.conn()?;
        let present: std::collections::HashSet<String> = audit_events::table
            .filter(audit_events::recorded.ge(earliest))
            .select(audit_events::id)
            .load::<String>(&mut *conn)
            .map_err(db_error)?
            .into_iter()
            .collect();
        Ok(records
            .into_iter()
            .filter(|r| !present.contains(&r.id))
            .collect())
    }

    /// The records recorded at or after `since`, in chain order.
    pub fn audit_since(&self, since: UnixTime) -> Result<Vec<Record>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<String> = audit_events::table
            .filter(audit_events::recorded.ge(since.0))
            .order(audit_events::seq.asc())
            .select(audit_events::record)
            .load(&mut *conn)
            .map_err(db_error)?;
        rows.iter()
            .map(|text| serde_json::from_str(text).map_err(db_error))
            .collect()
    }
}

/// Of these trail rows, the first whose repository copy is missing (though the
/// repository has indexed past it) or is not what the record derives.
fn altered_copy(
    conn: &mut DbConnection,
    rows: &[(i64, String, String, String)],
    indexed: i64,
) -> Result<Option<(i64, String)>, StoreError> {
    use crate::schema::fhir_resources;
    let ids: Vec<&str> = rows
        .iter()
        .filter(|(seq, ..)| *seq <= indexed)
        .map(|(_, id, ..)| id.as_str())
        .collect();
    let copies: std::collections::HashMap<String, (String, i64, bool)> = fhir_resources::table
        .filter(fhir_resources::partition_id.eq(tessera_atna::REPOSITORY_PARTITION))
        .filter(fhir_resources::resource_type.eq("AuditEvent"))
        .filter(fhir_resources::id.eq_any(&ids))
        .select((
            fhir_resources::id,
            fhir_resources::content,
            fhir_resources::last_updated,
            fhir_resources::deleted,
        ))
        .load::<(String, String, i64, bool)>(conn)
        .map_err(db_error)?
        .into_iter()
        .map(|(id, content, last_updated, deleted)| (id, (content, last_updated, deleted)))
        .collect();
    for (seq, id, text, _) in rows.iter().filter(|(seq, ..)| *seq <= indexed) {
        let Ok(record) = serde_json::from_str::<Record>(text) else {
            // An unreadable record fails the chain check itself.
            continue;
        };
        let (expected, last_updated) = crate::vault::repository_copy(&record);
        let intact = copies.get(id).is_some_and(|(content, at, deleted)| {
            !deleted
                && *at == last_updated
                && serde_json::from_str::<serde_json::Value>(content).ok() == Some(expected.clone())
        });
        if !intact {
            return Ok(Some((*seq, id.clone())));
        }
    }
    Ok(None)
}

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
/// per ~16 on kept-alive connections; `/metrics` shows the counts). A second thread then moves the records into the database (the hash-chained
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

    /// The journal's counters, for `/metrics`.
    pub fn stats(&self) -> &JournalStats {
        &self.inner.stats
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

/// Adds `destination`'s cursor at `seq`, unleased, unless it exists.
fn add_delivery(
    conn: &mut DbConnection,
    destination: &str,
    seq: i64,
) -> Result<(), diesel::result::Error> {
    let row = (
        audit_deliveries::destination.eq(destination),
        audit_deliveries::seq.eq(seq),
        audit_deliveries::owner.eq(""),
        audit_deliveries::lease_until.eq(0i64),
    );
    let insert = diesel::insert_into(audit_deliveries::table)
        .values(row)
        .on_conflict_do_nothing();
    match conn {
        DbConnection::Sqlite(c) => insert.execute(c)?,
        DbConnection::Postgres(c) => insert.execute(c)?,
    };
    Ok(())
}

/// A delivery's lease: held by one instance, renewed as it delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The last sequence number the destination acknowledged.
    pub seq: i64,
}

impl Store {
    /// Takes or renews the lease on delivering to `destination` until `now + seconds`:
    /// granted when nobody holds it, `owner` already does, or the holder's lease ran
    /// out. A destination seen for the first time starts at the beginning of the trail.
    pub fn claim_delivery(
        &self,
        destination: &str,
        owner: &str,
        now: UnixTime,
        seconds: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let mut conn = self.conn()?;
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            add_delivery(conn, destination, 0)?;
            let claimed = diesel::update(
                audit_deliveries::table
                    .filter(audit_deliveries::destination.eq(destination))
                    .filter(
                        audit_deliveries::owner
                            .eq(owner)
                            .or(audit_deliveries::lease_until.lt(now.0)),
                    ),
            )
            .set((
                audit_deliveries::owner.eq(owner),
                audit_deliveries::lease_until.eq(now.0.saturating_add(seconds)),
            ))
            .execute(conn)?;
            if claimed == 0 {
                return Ok(None);
            }
            let seq = audit_deliveries::table
                .filter(audit_deliveries::destination.eq(destination))
                .select(audit_deliveries::seq)
                .first(conn)?;
            Ok(Some(Lease { seq }))
        })
        .map_err(db_error)
    }

    /// Records that `destination` acknowledged everything up to `seq`; false when
    /// `owner` no longer holds the lease (another instance took over: nothing is moved).
    pub fn advance_delivery(
        &self,
        destination: &str,
        owner: &str,
        seq: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let moved = diesel::update(
            audit_deliveries::table
                .filter(audit_deliveries::destination.eq(destination))
                .filter(audit_deliveries::owner.eq(owner))
                .filter(audit_deliveries::seq.lt(seq)),
        )
        .set(audit_deliveries::seq.eq(seq))
        .execute(&mut *conn)
        .map_err(db_error)?;
        Ok(moved == 1)
    }

    /// Moves `destination`'s cursor forward to `seq` (an operator skipping events), never
    /// back. Returns the cursor: `seq`, or where it already was when that is further on.
    /// The instance delivering to it notices at its next round (its own advance then no
    /// longer matches and it reads the cursor again).
    pub fn skip_delivery(&self, destination: &str, seq: i64) -> Result<i64, StoreError> {
        let mut conn = self.conn()?;
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            add_delivery(conn, destination, seq)?;
            diesel::update(
                audit_deliveries::table
                    .filter(audit_deliveries::destination.eq(destination))
                    .filter(audit_deliveries::seq.lt(seq)),
            )
            .set(audit_deliveries::seq.eq(seq))
            .execute(conn)?;
            audit_deliveries::table
                .filter(audit_deliveries::destination.eq(destination))
                .select(audit_deliveries::seq)
                .first(conn)
        })
        .map_err(db_error)
    }

    /// Gives up `owner`'s lease (a clean stop), so another instance can go on at once.
    pub fn release_delivery(&self, destination: &str, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        diesel::update(
            audit_deliveries::table
                .filter(audit_deliveries::destination.eq(destination))
                .filter(audit_deliveries::owner.eq(owner)),
        )
        .set(audit_deliveries::lease_until.eq(0i64))
        .execute(&mut *conn)
        .map(|_| ())
        .map_err(db_error)
    }

    /// Up to `limit` records of the trail after `seq`, with their sequence numbers.
    pub fn audit_after(&self, seq: i64, limit: i64) -> Result<Vec<(i64, Record)>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<(i64, String)> = audit_events::table
            .filter(audit_events::seq.gt(seq))
            .order(audit_events::seq.asc())
            .limit(limit)
            .select((audit_events::seq, audit_events::record))
            .load(&mut *conn)
            .map_err(db_error)?;
        rows.into_iter()
            .map(|(seq, text)| Ok((seq, serde_json::from_str(&text).map_err(db_error)?)))
            .collect()
    }

    /// This node's own record of an event, found by its id and the second it was
    /// recorded (the `recorded` index narrows the search to that second).
    pub fn audit_record(&self, id: &str, recorded: UnixTime) -> Result<Option<Record>, StoreError> {
        let mut conn = self.conn()?;
        let text: Option<String> = audit_events::table
            .filter(audit_events::recorded.eq(recorded.0))
            .filter(audit_events::id.eq(id))
            .select(audit_events::record)
            .first(&mut *conn)
            .optional()
            .map_err(db_error)?;
        text.map(|t| serde_json::from_str(&t).map_err(db_error))
            .transpose()
    }

    /// The sequence number of the newest event of the trail.
    pub fn audit_head(&self) -> Result<i64, StoreError> {
        let mut conn = self.conn()?;
        audit_chain::table
            .filter(audit_chain::id.eq(1))
            .select(audit_chain::seq)
            .first(&mut *conn)
            .map_err(db_error)
    }

    /// Each destination's acknowledged sequence number.
    pub fn deliveries(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut conn = self.conn()?;
        audit_deliveries::table
            .order(audit_deliveries::destination.asc())
            .select((audit_deliveries::destination, audit_deliveries::seq))
            .load(&mut *conn)
            .map_err(db_error)
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
