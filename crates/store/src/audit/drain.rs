//! The drainer: moves journaled records into the database in order, in large
//! transactions, holding a bounded number of them in memory however long the database
//! is away.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tessera_iam::StoreError;

use super::chain::Journaled;
use super::journal::{JournalStats, MAX_BATCH};
use crate::{db_error, Store};

/// How long the drainer gathers journaled records before a database transaction.
const DRAIN_GATHER: Duration = Duration::from_millis(50);

/// The most journaled records the drainer holds in memory by default: handed over by the
/// journal and not yet in the database. A second of full load on one core is about
/// 30,000; a drain every 50 ms holds a twentieth of that, so only a database that is
/// away or slower than the requests fills it. Past it the journal hands over where the
/// records are on disk, and the drainer reads them back from there once it has caught
/// up: memory stays bounded however long the outage (at 0.5-2 KB a record, 8-32 MB), and
/// the journal's disk holds the rest.
pub const IN_MEMORY: usize = 16_384;

/// How many bytes of a journal segment the drainer reads back at once (one transaction,
/// about 1,600 token records; 4 MiB was no faster). Measured (`bench/audit-outage.sh 60`):
/// 1.23 million records read back in 7.5 s, of which 0.8 s the drainer's backoff before
/// its next try and 5.0 s its core, 4.1 µs a record (the chain's SHA-256, SQLite's
/// insert, reading and parsing the line).
const READ_BACK: u64 = 1 << 20;

/// What the journal hands the drainer, in the order it wrote them.
pub(super) enum Handed {
    /// Records just written, in memory.
    Records(Vec<Journaled>),
    /// The journal began keeping records on disk only: the drainer takes their spans
    /// from the [`Backlog`] once it has moved everything handed before.
    OnDisk,
}

/// Records kept in a journal segment only: its bytes `from..to`, whole lines. The span
/// holds the segment's file itself, which stays readable until the span is read.
struct Span {
    file: Arc<File>,
    from: u64,
    to: u64,
}

/// What the journal has handed the drainer and the database does not hold yet: a count
/// of the records in memory (in [`JournalStats::in_memory`]) and the spans on disk.
pub(super) struct Backlog {
    on_disk: Mutex<Vec<Span>>,
    limit: usize,
    stats: Arc<JournalStats>,
}

impl Backlog {
    pub(super) fn new(limit: usize, stats: Arc<JournalStats>) -> Self {
        Self {
            on_disk: Mutex::new(Vec::new()),
            limit,
            stats,
        }
    }

    /// Hands records the journal has just written, at bytes `from..to` of the segment
    /// `file`, to the drainer: in memory while it holds fewer than the limit and
    /// nothing waits on disk, else as a span of the segment. Sent under the lock the
    /// drainer takes spans under, so the drainer moves them in the order written.
    pub(super) fn hand(
        &self,
        drainer: &Sender<Handed>,
        records: Vec<Journaled>,
        file: &Arc<File>,
        (from, to): (u64, u64),
    ) {
        let Ok(mut on_disk) = self.on_disk.lock() else {
            return; // a drainer that panicked: what is journaled is replayed at the next start
        };
        let in_memory = self.stats.in_memory.load(Ordering::SeqCst) as usize;
        if on_disk.is_empty() && in_memory + records.len() <= self.limit {
            self.stats
                .in_memory
                .fetch_add(records.len() as u64, Ordering::SeqCst);
            let _ = drainer.send(Handed::Records(records));
            return;
        }
        match on_disk.last_mut() {
            // The same segment (the same file, which the span keeps open) where it left off.
            Some(last) if Arc::ptr_eq(&last.file, file) && last.to == from => last.to = to,
            _ => {
                on_disk.push(Span {
                    file: file.clone(),
                    from,
                    to,
                });
                if on_disk.len() == 1 {
                    let _ = drainer.send(Handed::OnDisk);
                }
            }
        }
    }

    fn take_spans(&self) -> Vec<Span> {
        self.on_disk
            .lock()
            .map(|mut spans| std::mem::take(&mut *spans))
            .unwrap_or_default()
    }
}

/// Replays the journals of instances now gone (locked for this one, in the order written)
/// into the database, skipping the records it already holds, and empties each: a crash
/// between journal and database loses nothing. The drainer does this before it moves
/// this instance's records, so the server answers meanwhile. Retries while the database
/// fails; stopping, it leaves the rest to the next start (which skips what is stored).
pub(super) fn replay(
    store: &Store,
    dead: Vec<(PathBuf, File)>,
    stopping: &AtomicBool,
    stats: &JournalStats,
) {
    let mut replayed = 0;
    for (path, mut file) in dead {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let Some(records) = retrying(stopping, 0, || dead_records(&mut file, &path)) else {
            return;
        };
        let Some(missing) = retrying(stopping, records.len(), || {
            store.audit_records_missing(&records)
        }) else {
            return;
        };
        for chunk in missing.chunks(MAX_BATCH) {
            if stopping.load(Ordering::SeqCst)
                || retrying(stopping, chunk.len(), || store.append_journaled(chunk)).is_none()
            {
                return;
            }
            stats
                .replayed
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        replayed += missing.len();
        // Left as it is, the next start reads it again and finds its records stored.
        if let Err(e) = file.set_len(0).and_then(|()| file.sync_all()) {
            tracing::error!(error = %e, journal = %path.display(), "could not empty a replayed audit journal");
        }
    }
    if replayed > 0 {
        tracing::warn!(
            replayed,
            "audit records of an earlier process replayed from its journal"
        );
    }
}

/// The records of a dead instance's journal segment, up to where the zeros written ahead
/// begin. Its last line may be cut short by the crash (its caller was never answered):
/// a line that does not parse is skipped.
fn dead_records(file: &mut File, path: &Path) -> Result<Vec<Journaled>, StoreError> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(db_error)?;
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let text = String::from_utf8_lossy(&bytes[..end]);
    Ok(lines(&text)
        .filter_map(|line| {
            line.inspect_err(|e| {
                tracing::warn!(journal = %path.display(), error = %e, "skipping a partial journal line")
            })
            .ok()
        })
        .collect())
}

/// The journal's lines in `text`, read back: the one reader of both the read-back and
/// the replay.
fn lines(text: &str) -> impl Iterator<Item = Result<Journaled, serde_json::Error>> + '_ {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(Journaled::parse)
}

/// Moves journaled records into the database in order, in large transactions; while the
/// database fails, retries the same records with backoff (they are safe in the journal,
/// and what comes meanwhile waits there past the in-memory limit). Stopping while the
/// database fails, it leaves the rest in the journal for the next start to replay.
pub(super) fn drain(
    store: &Store,
    incoming: &Receiver<Handed>,
    backlog: &Backlog,
    stopping: &AtomicBool,
) {
    let stats = &backlog.stats;
    while let Ok(first) = incoming.recv() {
        // Nobody waits on this step, so it waits a little for more: a transaction costs
        // about the same for one record as for hundreds. It sleeps rather than waiting
        // on the queue, so the journal's sends do not wake it group by group.
        if !stopping.load(Ordering::SeqCst) {
            thread::sleep(DRAIN_GATHER);
        }
        let mut batch = Vec::new();
        for handed in std::iter::once(first).chain(incoming.try_iter()) {
            match handed {
                Handed::Records(records) => batch.extend(records),
                Handed::OnDisk => {
                    // What was handed before the spans goes first.
                    if !commit(store, &mut batch, stopping, stats) {
                        return;
                    }
                    for span in backlog.take_spans() {
                        if !read_back(store, &span, stopping, stats) {
                            return;
                        }
                    }
                }
            }
        }
        if !commit(store, &mut batch, stopping, stats) {
            return;
        }
    }
}

/// Commits the records handed in memory, retrying while the database fails, and empties
/// `batch`.
fn commit(
    store: &Store,
    batch: &mut Vec<Journaled>,
    stopping: &AtomicBool,
    stats: &JournalStats,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    if retrying(stopping, batch.len(), || store.append_journaled(batch)).is_none() {
        return false;
    }
    let n = batch.len() as u64;
    stats.drained.fetch_add(n, Ordering::SeqCst);
    stats.in_memory.fetch_sub(n, Ordering::SeqCst);
    batch.clear();
    true
}

/// Reads a span's records back from its segment, [`READ_BACK`] bytes a transaction. A
/// segment that cannot be read (the disk failing) is retried as a database that fails
/// is: its records are not dropped, and the journal keeps the segment meanwhile.
fn read_back(store: &Store, span: &Span, stopping: &AtomicBool, stats: &JournalStats) -> bool {
    let mut at = span.from;
    while at < span.to {
        let Some((lines, end)) = retrying(stopping, 0, || records_at(&span.file, at, span.to))
        else {
            return false;
        };
        if retrying(stopping, lines.len(), || store.append_journaled(&lines)).is_none() {
            return false;
        }
        let n = lines.len() as u64;
        stats.drained.fetch_add(n, Ordering::SeqCst);
        stats.reread.fetch_add(n, Ordering::SeqCst);
        at = end;
    }
    true
}

/// The records of whole lines from `at` on, at most [`READ_BACK`] bytes of them unless
/// one line is longer, and where they end. `to` ends a line.
fn records_at(file: &File, at: u64, to: u64) -> Result<(Vec<Journaled>, u64), StoreError> {
    let mut want = READ_BACK.min(to - at);
    loop {
        let mut bytes = vec![0u8; want as usize];
        file.read_exact_at(&mut bytes, at).map_err(db_error)?;
        let whole = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(last) => last + 1,
            None if at + want < to => {
                want = (want * 2).min(to - at);
                continue;
            }
            None => return Err(StoreError("an audit journal segment ends mid-line".into())),
        };
        let text = std::str::from_utf8(&bytes[..whole]).map_err(db_error)?;
        let records = lines(text).collect::<Result<_, _>>().map_err(db_error)?;
        return Ok((records, at + whole as u64));
    }
}

/// Runs `step` until it succeeds, with backoff (50 ms doubling to 5 s) and an error logged
/// each time; `None` once stopping while it fails.
fn retrying<T>(
    stopping: &AtomicBool,
    events: usize,
    mut step: impl FnMut() -> Result<T, StoreError>,
) -> Option<T> {
    let mut wait = Duration::from_millis(50);
    loop {
        let e = match step() {
            Ok(done) => return Some(done),
            Err(e) => e,
        };
        if stopping.load(Ordering::SeqCst) {
            tracing::error!(error = %e.0, events, "stopping with audit events only in the journal; the next start moves them");
            return None;
        }
        tracing::error!(error = %e.0, events, retry_in_ms = wait.as_millis() as u64, "audit events not yet in the database");
        thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_atna::{canonical, Event, Outcome, Record};

    fn line(id: &str, command_len: usize) -> String {
        canonical(&Record {
            id: id.into(),
            recorded: tessera_types::UnixTime(7),
            observer: "https://tessera.example".into(),
            client_address: None,
            outcome: Outcome::Success,
            event: Event::AdminAction {
                command: "x".repeat(command_len),
                target: "audrey".into(),
                operator: "root".into(),
            },
        }) + "\n"
    }

    fn segment(name: &str, text: &str) -> (File, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("tessera-drain-{name}-{}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        (File::open(&path).unwrap(), path)
    }

    #[test]
    fn records_are_read_back_in_whole_lines_a_window_at_a_time() {
        // Three lines of 400 KiB: two fit a window of 1 MiB, the third begins the next.
        let lines: Vec<String> = (0..3).map(|n| line(&format!("e{n}"), 400 << 10)).collect();
        let text = lines.concat();
        let (file, path) = segment("windows", &text);
        let to = text.len() as u64;
        let (first, end) = records_at(&file, 0, to).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(end, (lines[0].len() + lines[1].len()) as u64);
        assert_eq!(first[1].id, "e1");
        assert_eq!(first[1].recorded, 7);
        assert_eq!(
            format!("{}\n", first[1].text),
            lines[1],
            "the text as journaled"
        );
        let (rest, end) = records_at(&file, end, to).unwrap();
        assert_eq!((rest.len(), rest[0].id.as_str(), end), (1, "e2", to));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_line_longer_than_the_window_is_read_whole_and_a_cut_one_is_an_error() {
        let text = line("long", 3 << 20) + &line("short", 10);
        let (file, path) = segment("long", &text);
        let (records, end) = records_at(&file, 0, text.len() as u64).unwrap();
        assert_eq!(records.len(), 2, "the window grew past the long line");
        assert_eq!(end, text.len() as u64);
        // A span that ends five bytes short: its whole lines, then an error for the rest.
        let short = (text.len() - 5) as u64;
        let (records, end) = records_at(&file, 0, short).unwrap();
        assert_eq!(records.len(), 1);
        let Err(cut) = records_at(&file, end, short) else {
            panic!("a span cut mid-line was read");
        };
        assert!(cut.0.contains("mid-line"), "{}", cut.0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_dead_segment_gives_its_lines_up_to_the_zeros_and_skips_one_cut_short() {
        // A crash mid-write: two whole lines, half of a third, then the zeros written ahead.
        let third = line("e2", 10);
        let text = line("e0", 10) + &line("e1", 10) + &third[..third.len() / 2];
        let (_, path) = segment("dead", &(text + &"\0".repeat(4096)));
        let mut file = File::open(&path).unwrap();
        let records = dead_records(&mut file, &path).unwrap();
        let ids: Vec<&str> = records.iter().map(|r| r.id()).collect();
        assert_eq!(ids, ["e0", "e1"]);
        assert_eq!(records[1].recorded, 7);
        assert_eq!(format!("{}\n", records[1].text), line("e1", 10));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_line_read_back_must_be_json_whole_with_an_id_and_a_time() {
        let whole = line("e0", 10);
        assert_eq!(Journaled::parse(whole.trim_end()).unwrap().id(), "e0");
        for bad in [
            &whole[..whole.len() - 3],          // cut short
            r#"{"id":"e0","recorded":7,"x":}"#, // the rest not JSON
            r#"{"id":"e0"}"#,                   // no time
            r#"{"id":"e0","recorded":"7"}"#,    // a time that is not a number
        ] {
            assert!(Journaled::parse(bad).is_err(), "{bad} was read back");
        }
    }
}
