//! Each ITI-20 destination's delivery cursor and lease.

use diesel::prelude::*;
use tessera_iam::StoreError;
use tessera_types::UnixTime;

use std::collections::BTreeMap;

use super::chain::insert_ignored;
use crate::schema::{audit_deliveries, audit_delivery_cursors};
use crate::{db_error, DbConnection, Store};

/// Adds `destination`'s row, unleased, unless it exists.
fn add_delivery(conn: &mut DbConnection, destination: &str) -> Result<(), diesel::result::Error> {
    let row = (
        audit_deliveries::destination.eq(destination),
        audit_deliveries::owner.eq(""),
        audit_deliveries::lease_until.eq(0i64),
    );
    let insert = diesel::insert_into(audit_deliveries::table)
        .values(row)
        .on_conflict_do_nothing();
    insert_ignored!(conn, insert)?;
    Ok(())
}

/// Moves `destination`'s cursor on `chain` forward to `seq`, never back; true when it moved.
fn advance_cursor(
    conn: &mut DbConnection,
    destination: &str,
    chain: &str,
    seq: i64,
) -> Result<bool, diesel::result::Error> {
    let row = (
        audit_delivery_cursors::destination.eq(destination),
        audit_delivery_cursors::chain.eq(chain),
        audit_delivery_cursors::seq.eq(0i64),
    );
    let insert = diesel::insert_into(audit_delivery_cursors::table)
        .values(row)
        .on_conflict_do_nothing();
    insert_ignored!(conn, insert)?;
    let moved = diesel::update(
        audit_delivery_cursors::table
            .filter(audit_delivery_cursors::destination.eq(destination))
            .filter(audit_delivery_cursors::chain.eq(chain))
            .filter(audit_delivery_cursors::seq.lt(seq)),
    )
    .set(audit_delivery_cursors::seq.eq(seq))
    .execute(conn)?;
    Ok(moved == 1)
}

/// `destination`'s cursor on each chain.
fn cursors(
    conn: &mut DbConnection,
    destination: &str,
) -> Result<BTreeMap<String, i64>, diesel::result::Error> {
    Ok(audit_delivery_cursors::table
        .filter(audit_delivery_cursors::destination.eq(destination))
        .select((audit_delivery_cursors::chain, audit_delivery_cursors::seq))
        .load::<(String, i64)>(conn)?
        .into_iter()
        .collect())
}

/// A delivery's lease: held by one instance, renewed as it delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The last event of each chain the destination acknowledged (a chain not named:
    /// none of its events yet).
    pub cursors: BTreeMap<String, i64>,
}

impl Lease {
    /// How many events the destination acknowledged, all chains together.
    pub fn delivered(&self) -> i64 {
        self.cursors.values().sum()
    }
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
            add_delivery(conn, destination)?;
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
            Ok(Some(Lease {
                cursors: cursors(conn, destination)?,
            }))
        })
        .map_err(db_error)
    }

    /// Records that `destination` acknowledged everything up to `upto` (per chain);
    /// false when `owner` no longer holds the lease (another instance took over:
    /// nothing is moved).
    pub fn advance_delivery(
        &self,
        destination: &str,
        owner: &str,
        upto: &BTreeMap<String, i64>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            // The lease row's lock keeps a taking-over instance out until this commits.
            let held = diesel::update(
                audit_deliveries::table
                    .filter(audit_deliveries::destination.eq(destination))
                    .filter(audit_deliveries::owner.eq(owner)),
            )
            .set(audit_deliveries::owner.eq(owner))
            .execute(conn)?;
            if held == 0 {
                return Ok(false);
            }
            let mut moved = false;
            for (chain, seq) in upto {
                moved |= advance_cursor(conn, destination, chain, *seq)?;
            }
            // Nothing moved: an operator skipped past these meanwhile; the caller reads
            // the cursors again.
            Ok(moved)
        })
        .map_err(db_error)
    }

    /// Moves `destination`'s cursors forward to `through` (an operator skipping events),
    /// never back. Answers how many events that skipped. The instance delivering to it
    /// notices at its next round (its own advance then no longer moves anything and it
    /// reads the cursors again).
    pub fn skip_delivery(
        &self,
        destination: &str,
        through: &BTreeMap<String, i64>,
    ) -> Result<i64, StoreError> {
        let mut conn = self.conn()?;
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            add_delivery(conn, destination)?;
            let before = cursors(conn, destination)?;
            let mut skipped = 0;
            for (chain, seq) in through {
                if advance_cursor(conn, destination, chain, *seq)? {
                    skipped += seq - before.get(chain).copied().unwrap_or(0);
                }
            }
            Ok(skipped)
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
}

impl Store {
    /// How many events each destination acknowledged, all chains together.
    pub fn deliveries(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut conn = self.conn()?;
        let names: Vec<String> = audit_deliveries::table
            .order(audit_deliveries::destination.asc())
            .select(audit_deliveries::destination)
            .load(&mut *conn)
            .map_err(db_error)?;
        let sums: BTreeMap<String, i64> = audit_delivery_cursors::table
            .select((
                audit_delivery_cursors::destination,
                audit_delivery_cursors::seq,
            ))
            .load::<(String, i64)>(&mut *conn)
            .map_err(db_error)?
            .into_iter()
            .fold(BTreeMap::new(), |mut sums, (name, seq)| {
                *sums.entry(name).or_default() += seq;
                sums
            });
        Ok(names
            .into_iter()
            .map(|name| {
                let delivered = sums.get(&name).copied().unwrap_or(0);
                (name, delivered)
            })
            .collect())
    }
}
