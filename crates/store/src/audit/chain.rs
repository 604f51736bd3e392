//! The hash-chained trail in the database: appends that extend an instance's chain,
//! checkpoints of all chains, their verification, the audit repository's catch-up, and reads of the trail.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tessera_atna::{canonical, chain_hash, Checkpoint, Head, Record};
use tessera_iam::StoreError;
use tessera_types::UnixTime;

use crate::schema::{audit_chains, audit_checkpoints, audit_events, audit_repository_cursors};
use crate::{db_error, DbConnection, Store};

/// A record as the journal holds it; its canonical text is what is hashed and stored.
#[derive(Debug, Clone)]
pub struct Journaled {
    pub(super) id: String,
    pub(super) recorded: i64,
    pub(super) text: String,
}

/// How many rows one SQLite insert statement takes. A statement of a fixed row count is
/// prepared once and kept (diesel caches a statement by its type, and an array's length
/// is part of it); the rows of a batch past the last whole statement go one at a time.
/// The drainer offers the core to other threads after each (see `append_journaled`).
const SQLITE_ROWS: usize = 64;

impl Journaled {
    pub fn of(record: &Record) -> Self {
        Self {
            id: record.id.clone(),
            recorded: record.recorded.0,
            text: canonical(record),
        }
    }

    /// A journal line read back: only its id and time are taken out of it, the rest
    /// checked as JSON and kept as it is. The journal wrote the line from a record
    /// ([`canonical`]), so it is that record's text; parsing it whole again, as a
    /// [`Record`] with its flattened event, cost the drainer 0.4-0.8 µs more a line of a
    /// catch-up after an outage (4.2-4.3 µs against 4.7-5.0, bench/HISTORY.md, stop 34).
    pub(super) fn parse(line: &str) -> Result<Self, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Head {
            id: String,
            recorded: i64,
        }
        let head: Head = serde_json::from_str(line)?;
        Ok(Self {
            id: head.id,
            recorded: head.recorded,
            text: line.to_owned(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// An event of the trail: its chain, its place in it, its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub chain: String,
    pub seq: i64,
    pub id: String,
}

impl std::fmt::Display for EventRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{} ({})", self.chain, self.seq, self.id)
    }
}

/// The result of walking the chains and the checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Events whose hash follows from their chain's predecessors.
    pub checked: u64,
    /// How many chains the trail has.
    pub chains: usize,
    /// How many checkpoints were read.
    pub checkpoints: u64,
    /// Who signed them (each once), as the caller's signature check names them.
    pub signers: Vec<String>,
    /// The first event whose stored hash does not follow from its predecessors.
    pub first_broken: Option<EventRef>,
    /// Why the checkpoints do not agree with each other or with the chains.
    pub checkpoint_broken: Option<String>,
    /// The first event whose copy in the audit repository (what ITI-81 queries answer)
    /// is missing or differs from the trail.
    pub first_altered_copy: Option<EventRef>,
    /// Events after the newest checkpoint's heads: no signature vouches for them yet.
    pub unanchored: u64,
}

impl ChainReport {
    fn new(chains: usize) -> Self {
        Self {
            checked: 0,
            chains,
            checkpoints: 0,
            signers: Vec::new(),
            first_broken: None,
            checkpoint_broken: None,
            first_altered_copy: None,
            unanchored: 0,
        }
    }
}

/// What the checkpoints say of the chains.
#[derive(Default)]
struct Checkpoints {
    /// The newest checkpoint that follows all before it.
    newest: Option<Checkpoint>,
    /// Per chain: the hash a checkpoint signed for the event at each place (and the
    /// checkpoint's number).
    promised: BTreeMap<String, BTreeMap<i64, (String, i64)>>,
    /// The first checkpoint whose signature does not verify, and why.
    unsigned: Option<String>,
}

/// Every chain's head.
pub(super) fn chain_heads(conn: &mut DbConnection) -> QueryResult<BTreeMap<String, Head>> {
    Ok(audit_chains::table
        .select((audit_chains::chain, audit_chains::seq, audit_chains::hash))
        .load::<(String, i64, String)>(conn)?
        .into_iter()
        .map(|(chain, seq, hash)| (chain, Head { seq, hash }))
        .collect())
}

/// Adds the row `(key, 0)` unless it exists (per backend: diesel's MultiBackend has no
/// upsert). `insert` is the one-row insert with `on_conflict_do_nothing`.
macro_rules! insert_ignored {
    ($conn:expr, $insert:expr) => {
        match $conn {
            DbConnection::Sqlite(c) => $insert.execute(c),
            DbConnection::Postgres(c) => $insert.execute(c),
        }
    };
}
pub(super) use insert_ignored;

impl Store {
    /// Appends records in order, in one transaction, extending this store's chain.
    pub fn append_audit(&self, records: &[Record]) -> Result<(), StoreError> {
        let lines: Vec<Journaled> = records.iter().map(Journaled::of).collect();
        self.append_journaled(&lines)
    }

    /// Appends records already in their canonical text, in one transaction and in
    /// multi-row inserts, extending this store's chain. Only the chain's own head row
    /// is locked: instances on other chains append at the same time.
    pub(super) fn append_journaled(&self, lines: &[Journaled]) -> Result<(), StoreError> {
        let chain = self.audit_chain();
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            let head = (
                audit_chains::chain.eq(chain),
                audit_chains::seq.eq(0i64),
                audit_chains::hash.eq(""),
            );
            let insert = diesel::insert_into(audit_chains::table)
                .values(head)
                .on_conflict_do_nothing();
            insert_ignored!(&mut **conn, insert)?;
            // Take the head's row lock before reading it (PostgreSQL; SQLite writes are serial).
            diesel::update(audit_chains::table.filter(audit_chains::chain.eq(chain)))
                .set(audit_chains::seq.eq(audit_chains::seq))
                .execute(conn)?;
            let (mut seq, mut hash): (i64, String) = audit_chains::table
                .filter(audit_chains::chain.eq(chain))
                .select((audit_chains::seq, audit_chains::hash))
                .first(conn)?;
            let first = seq + 1;
            let mut hashes = Vec::with_capacity(lines.len());
            for line in lines {
                hash = chain_hash(&hash, &line.text);
                hashes.push(hash.clone());
            }
            seq += lines.len() as i64;
            // The n-th line's row. Owned: diesel keeps a multi-row statement by its
            // values' type, which must then hold no borrowed text.
            let row = |n: usize| {
                let line = &lines[n];
                (
                    audit_events::chain.eq(chain.to_owned()),
                    audit_events::seq.eq(first + n as i64),
                    audit_events::id.eq(line.id.clone()),
                    audit_events::recorded.eq(line.recorded),
                    audit_events::record.eq(line.text.clone()),
                    audit_events::hash.eq(hashes[n].clone()),
                )
            };
            // Per backend (diesel's MultiBackend has no multi-row insert). PostgreSQL takes
            // many rows a statement, one round trip for a thousand. SQLite, in process,
            // takes them [`SQLITE_ROWS`] a statement, prepared once: a statement of each
            // batch's own size was parsed and planned afresh every time, and a row a
            // statement spent more on the statement (binding, cache lookup, reset) than
            // on the row: 45% of the drainer's instructions besides the hash (callgrind,
            // `examples/audit_append.rs`).
            match &mut **conn {
                DbConnection::Sqlite(c) => {
                    let whole = lines.len() / SQLITE_ROWS * SQLITE_ROWS;
                    for start in (0..whole).step_by(SQLITE_ROWS) {
                        let statement: [_; SQLITE_ROWS] = std::array::from_fn(|n| row(start + n));
                        diesel::insert_into(audit_events::table)
                            .values(statement)
                            .execute(c)?;
                        // SQLite's work runs on this thread, on the cores the requests
                        // use. A batch of hundreds took the core for milliseconds at a
                        // time and every request in flight waited that long (the token
                        // endpoint's p99 at full load on one core: 6.3 ms, 4.4-4.7 ms
                        // yielding every 64 rows). Other writers wait for SQLite's one
                        // write lock the few yields longer.
                        std::thread::yield_now();
                    }
                    for n in whole..lines.len() {
                        diesel::insert_into(audit_events::table)
                            .values(row(n))
                            .execute(c)?;
                    }
                }
                DbConnection::Postgres(c) => {
                    let rows: Vec<_> = (0..lines.len()).map(row).collect();
                    for chunk in rows.chunks(1000) {
                        diesel::insert_into(audit_events::table)
                            .values(chunk)
                            .execute(c)?;
                    }
                }
            }
            diesel::update(audit_chains::table.filter(audit_chains::chain.eq(chain)))
                .set((audit_chains::seq.eq(seq), audit_chains::hash.eq(&hash)))
                .execute(conn)
                .map(|_| ())
        })
        .map_err(db_error)
    }

    /// Writes the next checkpoint, signed by `sign` (its JSON in, the signed text out),
    /// unless no chain moved since the last one or another instance wrote it meanwhile.
    /// Answers its number when it wrote one.
    pub fn write_audit_checkpoint(
        &self,
        at: UnixTime,
        sign: &dyn Fn(&Checkpoint) -> Result<String, String>,
    ) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn()?;
        let last = match newest_checkpoint(&mut conn).map_err(db_error)? {
            Some(text) => Some((checkpoint_of(&text).map_err(db_error)?, text)),
            None => None,
        };
        let heads = chain_heads(&mut conn).map_err(db_error)?;
        let Some(next) =
            Checkpoint::next(last.as_ref().map(|(c, text)| (text.as_str(), c)), heads, at)
        else {
            return Ok(None);
        };
        let signed = sign(&next).map_err(db_error)?;
        let written = diesel::insert_into(audit_checkpoints::table)
            .values((
                audit_checkpoints::n.eq(next.n),
                audit_checkpoints::at.eq(next.at.0),
                audit_checkpoints::jws.eq(&signed),
            ))
            .execute(&mut *conn);
        match written {
            Ok(_) => Ok(Some(next.n)),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(None),
            Err(e) => Err(db_error(e)),
        }
    }

    /// Recomputes every chain from its first event, names the first broken link, and
    /// checks the checkpoints: each is signed (`signature` checks one's signed text and
    /// answers its signer: the trust anchors are configuration, not data), follows the
    /// one before, and each chain's event at the head a checkpoint names has the hash it
    /// names (a chain rewritten with recomputed hashes, or removed, fails there). Checks
    /// as well that the audit repository's copy of each event it has indexed is the one
    /// the trail derives. `progress` hears how many events verify so far, after each
    /// batch of 1,000. Events and checkpoints are read 1,000 at a time, each batch on a
    /// connection of its own, so a long check holds neither much memory nor any of the
    /// pool's connections for long.
    pub fn verify_audit_chain(
        &self,
        signature: &dyn Fn(&str) -> Result<String, String>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ChainReport, StoreError> {
        // The heads as the check starts: the events up to them are checked; those
        // appended while the check runs (the check's own request is one) are the next
        // check's. A checkpoint written meanwhile may name heads further on: those
        // events are not checked against it.
        let (heads, indexed) = {
            let mut conn = self.conn()?;
            let heads = chain_heads(&mut conn).map_err(db_error)?;
            let indexed = repository_cursors(&mut conn).map_err(db_error)?;
            (heads, indexed)
        };
        let mut report = ChainReport::new(heads.len());
        let checkpoints = self.verify_checkpoints(signature, &mut report)?;
        let anchored = |chain: &str| {
            checkpoints
                .newest
                .as_ref()
                .and_then(|last| last.heads.get(chain))
                .map_or(0, |h| h.seq)
        };
        report.unanchored = heads
            .iter()
            .map(|(chain, head)| u64::try_from(head.seq - anchored(chain)).unwrap_or(0))
            .sum();
        self.verify_chains(
            &heads,
            &indexed,
            &checkpoints.promised,
            &mut report,
            progress,
        )?;
        // A signature is the last thing the report names about the checkpoints.
        report.checkpoint_broken = report.checkpoint_broken.or(checkpoints.unsigned);
        Ok(report)
    }

    /// Reads the checkpoints in order, 1,000 at a time: counts them and their signers in
    /// `report`, names there the first that does not follow the one before or that
    /// claims more events of a chain than the chain now has, and answers what the
    /// chains are checked against.
    fn verify_checkpoints(
        &self,
        signature: &dyn Fn(&str) -> Result<String, String>,
        report: &mut ChainReport,
    ) -> Result<Checkpoints, StoreError> {
        let mut found = Checkpoints::default();
        let mut previous: Option<String> = None;
        let mut after = 0i64;
        'pages: loop {
            let page: Vec<(i64, String)> = audit_checkpoints::table
                .filter(audit_checkpoints::n.gt(after))
                .order(audit_checkpoints::n.asc())
                .limit(1000)
                .select((audit_checkpoints::n, audit_checkpoints::jws))
                .load(&mut *self.conn()?)
                .map_err(db_error)?;
            if page.is_empty() {
                break;
            }
            for (n, text) in page {
                after = n;
                report.checkpoints += 1;
                let checkpoint = checkpoint_of(&text);
                if found.unsigned.is_none() {
                    match signature(&text) {
                        Ok(signer) if !report.signers.contains(&signer) => {
                            report.signers.push(signer);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let n = checkpoint.as_ref().map_or(n, |c| c.n);
                            found.unsigned = Some(format!("checkpoint {n}: {e}"));
                        }
                    }
                }
                let checkpoint = match checkpoint {
                    Ok(c) => c,
                    Err(e) => {
                        report.checkpoint_broken = Some(e);
                        break 'pages;
                    }
                };
                let last = previous.as_deref().zip(found.newest.as_ref());
                if let Err(e) = checkpoint.follows(last) {
                    report.checkpoint_broken = Some(e);
                    break 'pages;
                }
                for (chain, head) in &checkpoint.heads {
                    found
                        .promised
                        .entry(chain.clone())
                        .or_default()
                        .insert(head.seq, (head.hash.clone(), checkpoint.n));
                }
                previous = Some(text);
                found.newest = Some(checkpoint);
            }
        }
        if report.checkpoint_broken.is_some() {
            return Ok(found);
        }
        let Some(last) = &found.newest else {
            return Ok(found);
        };
        // Heads only grow: read after the checkpoints, none can be behind the newest.
        let heads_now = chain_heads(&mut *self.conn()?).map_err(db_error)?;
        report.checkpoint_broken =
            last.heads
                .iter()
                .find_map(|(chain, head)| match heads_now.get(chain) {
                    Some(now) if now.seq >= head.seq => None,
                    Some(now) => Some(format!(
                        "chain {chain} has {} events, but {} at checkpoint {}: events were removed",
                        now.seq, head.seq, last.n
                    )),
                    None => Some(format!(
                    "chain {chain} is in checkpoint {} but no longer in the trail: it was removed",
                    last.n
                )),
                });
        Ok(found)
    }

    /// Walks every chain up to its head in `heads`, then looks for rows put after a
    /// head; stops at the first broken link (named in `report`).
    fn verify_chains(
        &self,
        heads: &BTreeMap<String, Head>,
        indexed: &BTreeMap<String, i64>,
        promised: &BTreeMap<String, BTreeMap<i64, (String, i64)>>,
        report: &mut ChainReport,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        let none = BTreeMap::new();
        for (chain, head) in heads {
            let broken = self.verify_one_chain(
                chain,
                head,
                indexed.get(chain).copied().unwrap_or(0),
                promised.get(chain).unwrap_or(&none),
                report,
                progress,
            )?;
            if broken {
                return Ok(());
            }
        }
        // Rows put after a head without moving it, or in a chain without a head: every
        // append moves its head in its own transaction, so a head read after the newest
        // row is never behind it.
        let mut conn = self.conn()?;
        let newest: Vec<(String, Option<i64>)> = audit_events::table
            .group_by(audit_events::chain)
            .select((audit_events::chain, diesel::dsl::max(audit_events::seq)))
            .load(&mut *conn)
            .map_err(db_error)?;
        let heads_now = chain_heads(&mut conn).map_err(db_error)?;
        for (chain, newest) in newest {
            let head = heads_now.get(&chain).map_or(0, |h| h.seq);
            if newest.is_some_and(|newest| newest > head) {
                report.first_broken = Some(EventRef {
                    chain,
                    seq: head + 1,
                    id: "(after the chain's head)".into(),
                });
                return Ok(());
            }
        }
        Ok(())
    }

    /// Walks one chain up to `head`; true when it is broken (named in `report`).
    fn verify_one_chain(
        &self,
        chain: &str,
        head: &Head,
        indexed: i64,
        promised: &BTreeMap<i64, (String, i64)>,
        report: &mut ChainReport,
        progress: &mut dyn FnMut(u64),
    ) -> Result<bool, StoreError> {
        let mut previous = String::new();
        let mut expected_seq = 0i64;
        let broken = |seq: i64, id: &str| EventRef {
            chain: chain.to_owned(),
            seq,
            id: id.to_owned(),
        };
        loop {
            let mut conn = self.conn()?;
            let rows: Vec<(i64, String, String, String)> = audit_events::table
                .filter(audit_events::chain.eq(chain))
                .filter(audit_events::seq.gt(expected_seq))
                .filter(audit_events::seq.le(head.seq))
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
            if report.first_altered_copy.is_none() {
                report.first_altered_copy = altered_copy(&mut conn, chain, &rows, indexed)?;
            }
            for (seq, id, record, hash) in rows {
                expected_seq += 1;
                let computed = chain_hash(&previous, &record);
                // A gap in seq (a deleted row) breaks the chain as surely as an edit.
                if seq != expected_seq || computed != hash {
                    report.first_broken = Some(broken(seq, &id));
                    return Ok(true);
                }
                if let Some((signed, n)) = promised.get(&seq) {
                    if *signed != hash {
                        report.checkpoint_broken.get_or_insert_with(|| {
                            format!(
                                "event {chain}#{seq} ({id}) is not the one checkpoint {n} signed: \
                                 the chain was rewritten up to it"
                            )
                        });
                    }
                }
                previous = hash;
                report.checked += 1;
            }
            progress(report.checked);
        }
        if head.seq != expected_seq || head.hash != previous {
            // The newest events were removed, or the head was rewritten.
            report.first_broken = Some(broken(expected_seq + 1, "(missing)"));
            return Ok(true);
        }
        Ok(false)
    }

    /// Brings the audit repository (ITI-81) up to date with the trail: the events
    /// appended to each chain since its last catch-up are indexed, in transactions of
    /// 500. Run before each repository query, and in the background at a bounded rate
    /// ([`Store::index_audit_repository`]), so the cost of indexing falls on neither
    /// audited requests nor, under a moderate load, on auditors. Each chain's catch-up
    /// is serialised by its cursor row's lock.
    pub fn catch_up_audit_repository(&self) -> Result<u64, StoreError> {
        self.index_audit_repository(u64::MAX)
    }

    /// Indexes at most `limit` of the events the audit repository is behind by (in
    /// transactions of up to 500), each chain's oldest first. Answers how many it indexed.
    pub fn index_audit_repository(&self, limit: u64) -> Result<u64, StoreError> {
        // Most queries find the repository current: two reads, no write lock.
        let behind: Vec<String> = {
            let mut conn = self.conn()?;
            let cursors = repository_cursors(&mut conn).map_err(db_error)?;
            chain_heads(&mut conn)
                .map_err(db_error)?
                .into_iter()
                .filter(|(chain, head)| head.seq > cursors.get(chain).copied().unwrap_or(0))
                .map(|(chain, _)| chain)
                .collect()
        };
        let mut indexed = 0u64;
        for chain in behind {
            while indexed < limit {
                let mut conn = self.conn()?;
                let done = conn
                    .transaction::<_, DieselError, _>(|conn| {
                        let cursor = (
                            audit_repository_cursors::chain.eq(&chain),
                            audit_repository_cursors::seq.eq(0i64),
                        );
                        let insert = diesel::insert_into(audit_repository_cursors::table)
                            .values(cursor)
                            .on_conflict_do_nothing();
                        insert_ignored!(&mut **conn, insert)?;
                        let of_chain = audit_repository_cursors::chain.eq(&chain);
                        diesel::update(audit_repository_cursors::table.filter(of_chain))
                            .set(audit_repository_cursors::seq.eq(audit_repository_cursors::seq))
                            .execute(conn)?;
                        let cursor: i64 = audit_repository_cursors::table
                            .filter(of_chain)
                            .select(audit_repository_cursors::seq)
                            .first(conn)?;
                        let rows: Vec<(i64, String)> = audit_events::table
                            .filter(audit_events::chain.eq(&chain))
                            .filter(audit_events::seq.gt(cursor))
                            .order(audit_events::seq.asc())
                            .limit(i64::try_from((limit - indexed).min(500)).unwrap_or(500))
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
                        diesel::update(audit_repository_cursors::table.filter(of_chain))
                            .set(audit_repository_cursors::seq.eq(last))
                            .execute(conn)?;
                        indexed += records.len() as u64;
                        Ok(false)
                    })
                    .map_err(db_error)?;
                if done {
                    break;
                }
            }
        }
        Ok(indexed)
    }

    /// Of these records, those whose id the trail does not hold yet, in order. A stored
    /// copy has the same `recorded` time, so only the trail between the earliest and the
    /// latest of them is looked at (ids have no index: appends stay sequential). Not all
    /// the trail since the earliest: a start replaying a long journal segment by segment
    /// read everything after each segment again, and a database already holding most of
    /// an outage's records made that quadratic.
    pub fn audit_records_missing(
        &self,
        records: &[Journaled],
    ) -> Result<Vec<Journaled>, StoreError> {
        let times = records.iter().map(|r| r.recorded);
        let (Some(earliest), Some(latest)) = (times.clone().min(), times.max()) else {
            return Ok(Vec::new());
        };
        let mut conn = self.conn()?;
        let present: std::collections::HashSet<String> = audit_events::table
            .filter(audit_events::recorded.between(earliest, latest))
            .select(audit_events::id)
            .load::<String>(&mut *conn)
            .map_err(db_error)?
            .into_iter()
            .collect();
        Ok(records
            .iter()
            .filter(|r| !present.contains(&r.id))
            .cloned()
            .collect())
    }

    /// The records recorded at or after `since`, by time (and each chain's order).
    pub fn audit_since(&self, since: UnixTime) -> Result<Vec<Record>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<String> = audit_events::table
            .filter(audit_events::recorded.ge(since.0))
            .order((
                audit_events::recorded.asc(),
                audit_events::chain.asc(),
                audit_events::seq.asc(),
            ))
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
    chain: &str,
    rows: &[(i64, String, String, String)],
    indexed: i64,
) -> Result<Option<EventRef>, StoreError> {
    let ids: Vec<&str> = rows
        .iter()
        .filter(|(seq, ..)| *seq <= indexed)
        .map(|(_, id, ..)| id.as_str())
        .collect();
    let copies: std::collections::HashMap<String, (String, i64, bool)> =
        crate::search::resources_by_id(
            conn,
            tessera_atna::REPOSITORY_PARTITION,
            "AuditEvent",
            &ids,
        )
        .map_err(db_error)?
        .into_iter()
        .map(|r| (r.id, (r.content, r.last_updated, r.deleted)))
        .collect();
    for (seq, id, text, _) in rows.iter().filter(|(seq, ..)| *seq <= indexed) {
        let Ok(record) = serde_json::from_str::<Record>(text) else {
            // An unreadable record fails the chain check itself.
            continue;
        };
        let (expected, last_updated) = tessera_atna::repository_copy(&record);
        let intact = copies.get(id).is_some_and(|(content, at, deleted)| {
            !deleted
                && *at == last_updated
                && serde_json::from_str::<serde_json::Value>(content).ok() == Some(expected.clone())
        });
        if !intact {
            return Ok(Some(EventRef {
                chain: chain.to_owned(),
                seq: *seq,
                id: id.clone(),
            }));
        }
    }
    Ok(None)
}

/// How far the audit repository has indexed each chain.
fn repository_cursors(conn: &mut DbConnection) -> QueryResult<BTreeMap<String, i64>> {
    Ok(audit_repository_cursors::table
        .select((
            audit_repository_cursors::chain,
            audit_repository_cursors::seq,
        ))
        .load::<(String, i64)>(conn)?
        .into_iter()
        .collect())
}

impl Store {
    /// The newest checkpoint's content (unverified), if any was written.
    pub fn latest_audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let mut conn = self.conn()?;
        newest_checkpoint(&mut conn)
            .map_err(db_error)?
            .map(|t| checkpoint_of(&t).map_err(db_error))
            .transpose()
    }
}

/// The newest checkpoint's signed text, if any.
fn newest_checkpoint(conn: &mut DbConnection) -> QueryResult<Option<String>> {
    audit_checkpoints::table
        .order(audit_checkpoints::n.desc())
        .select(audit_checkpoints::jws)
        .first(conn)
        .optional()
}

/// The content of a checkpoint's signed text (a compact JWS), unverified: the
/// signature is the caller's to check.
pub fn checkpoint_of(signed: &str) -> Result<Checkpoint, String> {
    let payload = tessera_iam::jose::UnverifiedJws::parse(signed)
        .and_then(|jws| jws.unverified_claims())
        .map_err(|e| format!("a checkpoint is not a JWS: {e}"))?;
    serde_json::from_value(payload).map_err(|e| format!("a checkpoint's content is not one: {e}"))
}

impl Store {
    /// Up to `limit` records of the trail after the `cursors` (each chain's last
    /// delivered event; a chain not named is delivered from its start), with their
    /// chains and places in them: each chain's in order, chain after chain.
    pub fn audit_after(
        &self,
        cursors: &BTreeMap<String, i64>,
        limit: i64,
    ) -> Result<Vec<(String, i64, Record)>, StoreError> {
        let mut conn = self.conn()?;
        let mut out = Vec::new();
        for (chain, head) in chain_heads(&mut conn).map_err(db_error)? {
            let after = cursors.get(&chain).copied().unwrap_or(0);
            let room = limit - out.len() as i64;
            if head.seq <= after {
                continue;
            }
            if room <= 0 {
                break;
            }
            let rows: Vec<(i64, String)> = audit_events::table
                .filter(audit_events::chain.eq(&chain))
                .filter(audit_events::seq.gt(after))
                .order(audit_events::seq.asc())
                .limit(room)
                .select((audit_events::seq, audit_events::record))
                .load(&mut *conn)
                .map_err(db_error)?;
            for (seq, text) in rows {
                out.push((
                    chain.clone(),
                    seq,
                    serde_json::from_str(&text).map_err(db_error)?,
                ));
            }
        }
        Ok(out)
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

    /// How many events the trail has (all chains).
    pub fn audit_head(&self) -> Result<i64, StoreError> {
        Ok(self.audit_chains()?.values().sum())
    }

    /// Each chain's number of events.
    pub fn audit_chains(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut conn = self.conn()?;
        Ok(chain_heads(&mut conn)
            .map_err(db_error)?
            .into_iter()
            .map(|(chain, head)| (chain, head.seq))
            .collect())
    }
}
