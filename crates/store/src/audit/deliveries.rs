//! Each ITI-20 destination's delivery cursor and lease.

use diesel::prelude::*;
use tessera_iam::StoreError;
use tessera_types::UnixTime;

use crate::schema::audit_deliveries;
use crate::{db_error, DbConnection, Store};

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
}

impl Store {
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
