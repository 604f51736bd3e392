//! AIM's tables: accounts, MPI-ID links, partitions.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tessera_aim::{Account, AccountStore, AimError, Partition};
use tessera_types::{AccountUrn, MpiIdUrn, PartitionId, UnixTime};

use crate::schema::{account_mpi_ids, accounts, partitions};
use crate::{DbConnection, Store};

/// A write that failed on a unique key, or for another reason.
enum WriteError {
    Conflict,
    Db(DieselError),
}

impl From<DieselError> for WriteError {
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                WriteError::Conflict
            }
            other => WriteError::Db(other),
        }
    }
}

fn store_error(err: impl std::fmt::Display) -> AimError {
    AimError::Store(err.to_string())
}

fn insert_mpi_id(
    conn: &mut DbConnection,
    urn: &AccountUrn,
    mpi_id: &MpiIdUrn,
    now: UnixTime,
) -> Result<(), WriteError> {
    let (authority, patient_id) = mpi_id.authority_and_id();
    diesel::insert_into(account_mpi_ids::table)
        .values((
            account_mpi_ids::mpi_id.eq(mpi_id.as_str()),
            account_mpi_ids::authority.eq(authority),
            account_mpi_ids::patient_id.eq(patient_id),
            account_mpi_ids::account_urn.eq(urn.as_str()),
            account_mpi_ids::linked_at.eq(now.0),
        ))
        .execute(conn)?;
    Ok(())
}

fn insert_partition(
    conn: &mut DbConnection,
    urn: &AccountUrn,
    partition: &PartitionId,
    use_case: Option<&str>,
    now: UnixTime,
) -> Result<(), WriteError> {
    diesel::insert_into(partitions::table)
        .values((
            partitions::id.eq(partition.as_str()),
            partitions::account_urn.eq(urn.as_str()),
            partitions::use_case.eq(use_case),
            partitions::created_at.eq(now.0),
        ))
        .execute(conn)?;
    Ok(())
}

impl Store {
    fn load_account(
        &self,
        conn: &mut DbConnection,
        urn: &str,
    ) -> Result<Option<Account>, AimError> {
        let created: Option<i64> = accounts::table
            .filter(accounts::urn.eq(urn))
            .select(accounts::created_at)
            .first(conn)
            .optional()
            .map_err(store_error)?;
        let Some(created_at) = created else {
            return Ok(None);
        };
        let mpi_ids: Vec<String> = account_mpi_ids::table
            .filter(account_mpi_ids::account_urn.eq(urn))
            .order(account_mpi_ids::linked_at.asc())
            .select(account_mpi_ids::mpi_id)
            .load(conn)
            .map_err(store_error)?;
        let mut parts: Vec<(String, Option<String>)> = partitions::table
            .filter(partitions::account_urn.eq(urn))
            .order(partitions::created_at.asc())
            .select((partitions::id, partitions::use_case))
            .load(conn)
            .map_err(store_error)?;
        parts.sort_by_key(|(_, use_case)| use_case.is_some());
        Ok(Some(Account {
            urn: AccountUrn::try_from(urn).map_err(store_error)?,
            mpi_ids: mpi_ids
                .into_iter()
                .map(MpiIdUrn::try_from)
                .collect::<Result<_, _>>()
                .map_err(store_error)?,
            partitions: parts
                .into_iter()
                .map(|(id, use_case)| {
                    Ok(Partition {
                        id: PartitionId::try_from(id).map_err(store_error)?,
                        use_case,
                    })
                })
                .collect::<Result<_, AimError>>()?,
            created_at: UnixTime(created_at),
        }))
    }

    fn owner_of(&self, conn: &mut DbConnection, mpi_id: &MpiIdUrn) -> Result<AimError, AimError> {
        let owner: String = account_mpi_ids::table
            .filter(account_mpi_ids::mpi_id.eq(mpi_id.as_str()))
            .select(account_mpi_ids::account_urn)
            .first(conn)
            .map_err(store_error)?;
        Ok(AimError::MpiIdTaken(
            mpi_id.clone(),
            AccountUrn::try_from(owner).map_err(store_error)?,
        ))
    }
}

impl AccountStore for Store {
    fn create_account(
        &self,
        urn: &AccountUrn,
        mpi_id: &MpiIdUrn,
        partition: &PartitionId,
        now: UnixTime,
    ) -> Result<(), AimError> {
        let mut conn = self.conn().map_err(store_error)?;
        let result = conn.transaction::<_, WriteError, _>(|conn| {
            diesel::insert_into(accounts::table)
                .values((
                    accounts::urn.eq(urn.as_str()),
                    accounts::created_at.eq(now.0),
                ))
                .execute(conn)?;
            insert_mpi_id(conn, urn, mpi_id, now)?;
            insert_partition(conn, urn, partition, None, now)
        });
        match result {
            Ok(()) => Ok(()),
            Err(WriteError::Db(e)) => Err(store_error(e)),
            Err(WriteError::Conflict) => {
                // Find which key clashed, to say so.
                let taken = account_mpi_ids::table
                    .filter(account_mpi_ids::mpi_id.eq(mpi_id.as_str()))
                    .count()
                    .get_result::<i64>(&mut *conn)
                    .map_err(store_error)?;
                if taken > 0 {
                    Err(self.owner_of(&mut conn, mpi_id)?)
                } else {
                    Err(AimError::PartitionTaken(partition.clone()))
                }
            }
        }
    }

    fn link_mpi_id(
        &self,
        urn: &AccountUrn,
        mpi_id: &MpiIdUrn,
        now: UnixTime,
    ) -> Result<(), AimError> {
        let mut conn = self.conn().map_err(store_error)?;
        if self.load_account(&mut conn, urn.as_str())?.is_none() {
            return Err(AimError::NoAccount(urn.clone()));
        }
        match insert_mpi_id(&mut conn, urn, mpi_id, now) {
            Ok(()) => Ok(()),
            Err(WriteError::Conflict) => Err(self.owner_of(&mut conn, mpi_id)?),
            Err(WriteError::Db(e)) => Err(store_error(e)),
        }
    }

    fn add_partition(
        &self,
        urn: &AccountUrn,
        partition: &PartitionId,
        use_case: &str,
        now: UnixTime,
    ) -> Result<(), AimError> {
        let mut conn = self.conn().map_err(store_error)?;
        if self.load_account(&mut conn, urn.as_str())?.is_none() {
            return Err(AimError::NoAccount(urn.clone()));
        }
        match insert_partition(&mut conn, urn, partition, Some(use_case), now) {
            Ok(()) => Ok(()),
            Err(WriteError::Conflict) => Err(AimError::PartitionTaken(partition.clone())),
            Err(WriteError::Db(e)) => Err(store_error(e)),
        }
    }

    fn account(&self, urn: &AccountUrn) -> Result<Option<Account>, AimError> {
        let mut conn = self.conn().map_err(store_error)?;
        self.load_account(&mut conn, urn.as_str())
    }

    fn account_of_mpi_id(
        &self,
        authority: &str,
        patient_id: &str,
    ) -> Result<Option<Account>, AimError> {
        let mut conn = self.conn().map_err(store_error)?;
        let urn: Option<String> = account_mpi_ids::table
            .filter(account_mpi_ids::authority.eq(authority))
            .filter(account_mpi_ids::patient_id.eq(patient_id))
            .select(account_mpi_ids::account_urn)
            .first(&mut *conn)
            .optional()
            .map_err(store_error)?;
        match urn {
            Some(urn) => self.load_account(&mut conn, &urn),
            None => Ok(None),
        }
    }

    fn knows_authority(&self, authority: &str) -> Result<bool, AimError> {
        let mut conn = self.conn().map_err(store_error)?;
        let found: Option<String> = account_mpi_ids::table
            .filter(account_mpi_ids::authority.eq(authority))
            .select(account_mpi_ids::mpi_id)
            .first(&mut *conn)
            .optional()
            .map_err(store_error)?;
        Ok(found.is_some())
    }

    fn accounts(&self) -> Result<Vec<Account>, AimError> {
        let mut conn = self.conn().map_err(store_error)?;
        let urns: Vec<String> = accounts::table
            .order(accounts::created_at.asc())
            .select(accounts::urn)
            .load(&mut *conn)
            .map_err(store_error)?;
        urns.iter()
            .filter_map(|urn| self.load_account(&mut conn, urn).transpose())
            .collect()
    }
}
