//! AIM, Account and Identifier Management (as in CARA): every patient has an account,
//! named by an Account URN, with a default FHIR Vault partition and optional extra
//! partitions for specific use cases; MPI-IDs point to accounts (several may point to
//! one, after a merge; one never points to two). Resolution answers CARA's
//! `get-account-urn-from-mpi-id-urn` and the IHE PIXm query (ITI-83).
//!
//! This crate must not depend on a web framework or a database library.

#![forbid(unsafe_code)]

use serde::Serialize;
use serde_json::{json, Value};
use tessera_types::{AccountUrn, MpiIdUrn, PartitionId, UnixTime};

/// The scope a token needs to resolve MPI-IDs.
pub const RESOLVE_SCOPE: &str = "aim/resolve";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    pub id: PartitionId,
    /// `None` for the account's default partition.
    #[serde(rename = "useCase", skip_serializing_if = "Option::is_none")]
    pub use_case: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub urn: AccountUrn,
    pub mpi_ids: Vec<MpiIdUrn>,
    /// The default partition first.
    pub partitions: Vec<Partition>,
    pub created_at: UnixTime,
}

#[derive(Debug, thiserror::Error)]
pub enum AimError {
    #[error("MPI-ID {0} already belongs to account {1}")]
    MpiIdTaken(MpiIdUrn, AccountUrn),
    #[error("partition '{0}' already exists")]
    PartitionTaken(PartitionId),
    #[error("account {0} does not exist")]
    NoAccount(AccountUrn),
    #[error("storage error: {0}")]
    Store(String),
}

/// What AIM needs from the database. Each write is one transaction: it happens whole
/// or, on a conflict, not at all.
pub trait AccountStore: Send + Sync {
    /// Creates the account with its first MPI-ID and its default partition.
    fn create_account(
        &self,
        urn: &AccountUrn,
        mpi_id: &MpiIdUrn,
        partition: &PartitionId,
        now: UnixTime,
    ) -> Result<(), AimError>;
    fn link_mpi_id(
        &self,
        urn: &AccountUrn,
        mpi_id: &MpiIdUrn,
        now: UnixTime,
    ) -> Result<(), AimError>;
    fn add_partition(
        &self,
        urn: &AccountUrn,
        partition: &PartitionId,
        use_case: &str,
        now: UnixTime,
    ) -> Result<(), AimError>;
    fn account(&self, urn: &AccountUrn) -> Result<Option<Account>, AimError>;
    fn account_of_mpi_id(
        &self,
        authority: &str,
        patient_id: &str,
    ) -> Result<Option<Account>, AimError>;
    /// Is any MPI-ID of this assigning authority known?
    fn knows_authority(&self, authority: &str) -> Result<bool, AimError>;
    fn accounts(&self) -> Result<Vec<Account>, AimError>;
}

/// The body of CARA's resolution answer.
pub fn resolution(account: &Account) -> Value {
    json!({
        "accountUrn": account.urn,
        "partitions": account.partitions,
    })
}

/// The request body of `get-account-urn-from-mpi-id-urn`.
pub fn parse_resolution_request(body: &[u8]) -> Result<MpiIdUrn, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| "the body is not JSON".to_owned())?;
    let text = value
        .get("mpiIdUrn")
        .and_then(Value::as_str)
        .ok_or_else(|| "the body needs a string member mpiIdUrn".to_owned())?;
    MpiIdUrn::try_from(text).map_err(|e| e.to_string())
}

/// How a PIXm query (ITI-83) ends.
#[derive(Debug, PartialEq)]
pub enum PixOutcome {
    /// 200 with a Parameters resource.
    Found(Value),
    /// 400: the query is malformed or its source domain is not known.
    Invalid(String),
    /// 404: the patient is not known in the source domain.
    UnknownPatient,
    /// 403: the target domain is not known.
    UnknownTargetDomain(String),
}

/// The identifier system of Account URNs, e.g. `urn:tessera:account` for the prefix
/// `urn:tessera:account:`.
pub fn account_system(prefix: &str) -> &str {
    prefix.trim_end_matches(':')
}

/// Answers `Patient/$ihe-pix?sourceIdentifier=urn:oid:<OID>|<UUID>[&targetSystem=...]`.
pub fn pix_query<S: AccountStore>(
    store: &S,
    account_prefix: &str,
    source_identifier: Option<&str>,
    target_systems: &[String],
) -> Result<PixOutcome, AimError> {
    let Some(source) = source_identifier else {
        return Ok(PixOutcome::Invalid("sourceIdentifier is required".into()));
    };
    let Some((system, value)) = source.split_once('|') else {
        return Ok(PixOutcome::Invalid(
            "sourceIdentifier must be system|value".into(),
        ));
    };
    let Some(authority) = system.strip_prefix("urn:oid:") else {
        return Ok(PixOutcome::Invalid(format!(
            "sourceIdentifier Assigning Authority not found: {system}"
        )));
    };
    let system_of_accounts = account_system(account_prefix);
    if let Some(unknown) = target_systems
        .iter()
        .find(|t| t.as_str() != system_of_accounts)
    {
        return Ok(PixOutcome::UnknownTargetDomain(format!(
            "targetSystem not found: {unknown}"
        )));
    }
    if !store.knows_authority(authority)? {
        return Ok(PixOutcome::Invalid(format!(
            "sourceIdentifier Assigning Authority not found: {system}"
        )));
    }
    let Some(account) = store.account_of_mpi_id(authority, value)? else {
        return Ok(PixOutcome::UnknownPatient);
    };
    Ok(PixOutcome::Found(json!({
        "resourceType": "Parameters",
        "parameter": [{
            "name": "targetIdentifier",
            "valueIdentifier": { "system": system_of_accounts, "value": account.urn },
        }],
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_requests_are_validated() {
        let good = br#"{"mpiIdUrn":"urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1"}"#;
        assert!(parse_resolution_request(good).is_ok());
        for bad in [
            &b"not json"[..],
            br#"{}"#,
            br#"{"mpiIdUrn": 5}"#,
            br#"{"mpiIdUrn":"urn:x"}"#,
        ] {
            assert!(parse_resolution_request(bad).is_err());
        }
    }

    #[test]
    fn the_account_system_is_the_prefix_without_its_colon() {
        assert_eq!(
            account_system("urn:tessera:account:"),
            "urn:tessera:account"
        );
    }
}
