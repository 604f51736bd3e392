//! `tessera account` and `tessera partition`: AIM's administration.

use std::io::Write;

use anyhow::anyhow;
use tessera_aim::{resolution, Account, AccountStore as _, AimError};
use tessera_types::{AccountUrn, MpiIdUrn, PartitionId};

use crate::cli::{now, open_store};
use crate::config::Loaded;

pub enum AccountAction {
    Add {
        mpi_id: String,
        partition_name: Option<String>,
    },
    List,
    Show {
        urn: String,
    },
    LinkMpi {
        account: String,
        mpi_id: String,
    },
}

fn mpi(text: &str) -> anyhow::Result<MpiIdUrn> {
    MpiIdUrn::try_from(text).map_err(|e| anyhow!("--mpi-id: {e} (e.g. urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1)"))
}

fn account_urn(text: &str) -> anyhow::Result<AccountUrn> {
    AccountUrn::try_from(text).map_err(|e| anyhow!("{e}"))
}

/// The account id: random, telling nothing about when the account was made.
fn new_account_id() -> anyhow::Result<String> {
    Ok(tessera_http::ids::random_id()?)
}

fn describe(account: &Account) -> serde_json::Value {
    let mut value = resolution(account);
    value["mpiIdUrns"] = serde_json::json!(account.mpi_ids);
    value
}

fn aim_error(err: AimError) -> anyhow::Error {
    anyhow!("{err}; nothing was changed")
}

pub fn account(action: AccountAction, loaded: &Loaded, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = open_store(loaded)?;
    match action {
        AccountAction::Add {
            mpi_id,
            partition_name,
        } => {
            let mpi_id = mpi(&mpi_id)?;
            let id = new_account_id()?;
            let urn = account_urn(&format!("{}{id}", loaded.config.aim.account_urn_prefix))
                .map_err(|e| anyhow!("aim.account_urn_prefix makes an invalid URN: {e}"))?;
            let partition = PartitionId::try_from(partition_name.as_deref().unwrap_or(&id))
                .map_err(|e| anyhow!("--partition-name: {e}"))?;
            anyhow::ensure!(
                !partition.is_all(),
                "--partition-name: '*' is not a partition name"
            );
            store
                .create_account(&urn, &mpi_id, &partition, now())
                .map_err(aim_error)?;
            writeln!(out, "account    {urn}")?;
            writeln!(out, "mpi-id     {mpi_id}")?;
            writeln!(out, "partition  {partition}")?;
        }
        AccountAction::List => {
            writeln!(out, "{:<58} {:<40} MPI-IDS", "ACCOUNT", "PARTITIONS")?;
            for account in store.accounts().map_err(aim_error)? {
                let partitions: Vec<&str> =
                    account.partitions.iter().map(|p| p.id.as_str()).collect();
                writeln!(
                    out,
                    "{:<58} {:<40} {}",
                    account.urn,
                    partitions.join(","),
                    account.mpi_ids.len()
                )?;
            }
        }
        AccountAction::Show { urn } => {
            let account = match MpiIdUrn::try_from(urn.as_str()) {
                Ok(mpi_id) => {
                    let (authority, patient) = mpi_id.authority_and_id();
                    store
                        .account_of_mpi_id(authority, patient)
                        .map_err(aim_error)?
                }
                Err(_) => store.account(&account_urn(&urn)?).map_err(aim_error)?,
            }
            .ok_or_else(|| anyhow!("no account {urn}"))?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&describe(&account))?
            )?;
        }
        AccountAction::LinkMpi { account, mpi_id } => {
            let urn = account_urn(&account)?;
            let mpi_id = mpi(&mpi_id)?;
            store.link_mpi_id(&urn, &mpi_id, now()).map_err(aim_error)?;
            writeln!(out, "linked {mpi_id} to {urn}")?;
        }
    }
    Ok(())
}

pub fn add_partition(
    account: &str,
    use_case: &str,
    name: Option<&str>,
    loaded: &Loaded,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let store = open_store(loaded)?;
    let urn = account_urn(account)?;
    anyhow::ensure!(
        !use_case.is_empty()
            && use_case
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "--use-case uses letters, digits, '-' and '_'"
    );
    let id = match name {
        Some(name) => name.to_owned(),
        None => {
            let account_id = urn.as_str().rsplit(':').next().unwrap_or_default();
            format!("{account_id}-{use_case}")
        }
    };
    let partition = PartitionId::try_from(id.as_str()).map_err(|e| anyhow!("partition: {e}"))?;
    anyhow::ensure!(!partition.is_all(), "'*' is not a partition name");
    store
        .add_partition(&urn, &partition, use_case, now())
        .map_err(aim_error)?;
    writeln!(out, "partition  {partition} ({use_case}) added to {urn}")?;
    Ok(())
}
