//! The durable audit trail: appends that extend the hash chain, a writer that groups
//! concurrent appends into one transaction (one disk sync for many requests), chain
//! verification and export.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;

use diesel::prelude::*;
use tessera_atna::{canonical, chain_hash, Record};
use tessera_iam::StoreError;
use tessera_types::UnixTime;

use crate::schema::{audit_chain, audit_events};
use crate::{db_error, Store};

/// The most events one transaction takes.
const MAX_BATCH: usize = 512;

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub checked: u64,
    /// The first event whose stored hash does not follow from its predecessors: (seq, id).
    pub first_broken: Option<(i64, String)>,
}

impl Store {
    /// Appends records in order, in one transaction, extending the chain.
    pub fn append_audit(&self, records: &[Record]) -> Result<(), StoreError> {
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
            for record in records {
                let text = canonical(record);
                seq += 1;
                hash = chain_hash(&hash, &text);
                diesel::insert_into(audit_events::table)
                    .values((
                        audit_events::seq.eq(seq),
                        audit_events::id.eq(&record.id),
                        audit_events::recorded.eq(record.recorded.0),
                        audit_events::record.eq(&text),
                        audit_events::hash.eq(&hash),
                    ))
                    .execute(conn)?;
            }
            diesel::update(audit_chain::table.filter(audit_chain::id.eq(1)))
                .set((audit_chain::seq.eq(seq), audit_chain::hash.eq(&hash)))
                .execute(conn)
                .map(|_| ())
        })
        .map_err(db_error)
    }

    /// Recomputes the chain from the first event; names the first broken link.
    pub fn verify_audit_chain(&self) -> Result<ChainReport, StoreError> {
        let mut conn = self.conn()?;
        let mut previous = String::new();
        let mut expected_seq = 0i64;
        let mut checked = 0u64;
        loop {
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
            for (seq, id, record, hash) in rows {
                expected_seq += 1;
                let computed = chain_hash(&previous, &record);
                // A gap in seq (a deleted row) breaks the chain as surely as an edit.
                if seq != expected_seq || computed != hash {
                    return Ok(ChainReport {
                        checked,
                        first_broken: Some((seq, id)),
                    });
                }
                previous = hash;
                checked += 1;
            }
        }
        let (head_seq, head_hash): (i64, String) = audit_chain::table
            .filter(audit_chain::id.eq(1))
            .select((audit_chain::seq, audit_chain::hash))
            .first(&mut *conn)
            .map_err(db_error)?;
        if head_seq != expected_seq || head_hash != previous {
            // The newest events were removed, or the head was rewritten.
            return Ok(ChainReport {
                checked,
                first_broken: Some((expected_seq + 1, "(missing)".into())),
            });
        }
        Ok(ChainReport {
            checked,
            first_broken: None,
        })
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

type Reply = SyncSender<Result<(), StoreError>>;

/// Appends audit records durably, grouping concurrent appends: while one transaction
/// commits, the next requests queue, and the next transaction takes them all. Each
/// caller returns only once its record is committed.
#[derive(Clone)]
pub struct AuditWriter {
    queue: Sender<(Record, Reply)>,
}

impl AuditWriter {
    pub fn start(store: Store) -> Self {
        let (queue, incoming) = mpsc::channel();
        thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_batches(&store, &incoming))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "could not start the audit writer"));
        Self { queue }
    }

    /// Blocks until the record is committed to the database.
    pub fn append(&self, record: Record) -> Result<(), StoreError> {
        let (reply, done) = mpsc::sync_channel(1);
        self.queue
            .send((record, reply))
            .map_err(|_| StoreError("the audit writer has stopped".into()))?;
        done.recv()
            .map_err(|_| StoreError("the audit writer has stopped".into()))?
    }
}

fn write_batches(store: &Store, incoming: &Receiver<(Record, Reply)>) {
    while let Ok(first) = incoming.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match incoming.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let records: Vec<Record> = batch.iter().map(|(r, _)| r.clone()).collect();
        let result = store.append_audit(&records);
        if let Err(e) = &result {
            tracing::error!(error = %e.0, events = records.len(), "audit events could not be recorded");
        }
        for (_, reply) in batch {
            let _ = reply.send(result.clone());
        }
    }
}
