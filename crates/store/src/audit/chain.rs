//! The hash-chained trail in the database: appends that extend the chain, its
//! verification, the audit repository's catch-up, and reads of the trail.

use diesel::prelude::*;
use tessera_atna::{canonical, chain_hash, Record};
use tessera_iam::StoreError;
use tessera_types::UnixTime;

use crate::schema::{audit_chain, audit_events, audit_repository_cursor};
use crate::{db_error, DbConnection, Store};

/// A record as the journal holds it; its canonical text is what is hashed and stored.
pub(super) struct Journaled {
    pub(super) id: String,
    pub(super) recorded: i64,
    pub(super) text: String,
}

impl Journaled {
    pub(super) fn of(record: &Record) -> Self {
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
    pub(super) fn append_journaled(&self, lines: &[Journaled]) -> Result<(), StoreError> {
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
        // The head as the check starts: the events up to it are checked; those appended
        // while the check runs (the check's own request is one) are the next check's.
        // Read at the end instead, a head that moved on looked like removed events.
        let (head_seq, head_hash): (i64, String) = audit_chain::table
            .filter(audit_chain::id.eq(1))
            .select((audit_chain::seq, audit_chain::hash))
            .first(&mut *self.conn()?)
            .map_err(db_error)?;
        loop {
            let mut conn = self.conn()?;
            let rows: Vec<(i64, String, String, String)> = audit_events::table
                .filter(audit_events::seq.gt(expected_seq))
                .filter(audit_events::seq.le(head_seq))
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
        if head_seq != expected_seq || head_hash != previous {
            // The newest events were removed, or the head was rewritten.
            return Ok(ChainReport {
                checked,
                first_broken: Some((expected_seq + 1, "(missing)".into())),
                first_altered_copy,
            });
        }
        // Rows put after the head without moving it: every append moves the head in its
        // own transaction, so a head read after the newest row is never behind it.
        let mut conn = self.conn()?;
        let newest: Option<i64> = audit_events::table
            .select(diesel::dsl::max(audit_events::seq))
            .first(&mut *conn)
            .map_err(db_error)?;
        let head_now: i64 = audit_chain::table
            .filter(audit_chain::id.eq(1))
            .select(audit_chain::seq)
            .first(&mut *conn)
            .map_err(db_error)?;
        if newest.is_some_and(|newest| newest > head_now) {
            return Ok(ChainReport {
                checked,
                first_broken: Some((head_now + 1, "(after the chain's head)".into())),
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
            return Ok(Some((*seq, id.clone())));
        }
    }
    Ok(None)
}

impl Store {
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
}
