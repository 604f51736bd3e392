//! `tessera user ...`: the people who log in at a realm's pages (patients,
//! representatives, practitioners, auditors), with argon2id password hashes.

use std::io::{BufRead as _, IsTerminal as _, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use tessera_iam::user::{self, Role, User};
use tessera_store::Store;
use tessera_types::{AccountUrn, Secret};

use crate::cli::{now, open_store, realm_of};
use crate::config::Loaded;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (the password is asked for, or read from --password-file)
    Add(Box<UserAdd>),
    /// List the users of a realm
    List {
        #[arg(long)]
        realm: Option<String>,
    },
    /// Show one user (never the password hash)
    Show {
        username: String,
        #[arg(long)]
        realm: Option<String>,
    },
    /// Disable a user: no more logins, and their sessions end
    Disable {
        username: String,
        #[arg(long)]
        realm: Option<String>,
    },
    /// Enable a disabled user again
    Enable {
        username: String,
        #[arg(long)]
        realm: Option<String>,
    },
    /// Set a new password (their sessions end)
    Passwd {
        username: String,
        #[arg(long)]
        realm: Option<String>,
        /// Read the password from the first line of this file instead of a prompt
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct UserAdd {
    pub username: String,
    #[arg(long)]
    realm: Option<String>,
    /// patient, representative, practitioner or auditor
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// An Account URN whose partitions the user reaches (repeatable)
    #[arg(long = "account")]
    accounts: Vec<String>,
    /// The user's own FHIR resource: Patient/ID, Practitioner/ID or RelatedPerson/ID
    #[arg(long)]
    fhir_user: Option<String>,
    /// A practitioner's GLN (13 digits), carried as IUA national_provider_identifier
    #[arg(long)]
    gln: Option<String>,
    /// Read the password from the first line of this file instead of a prompt
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| "one of patient, representative, practitioner, auditor".into())
}

impl UserCommand {
    /// The audit trail's name of a change this command makes, with its target.
    pub fn change(&self) -> Option<(&'static str, String)> {
        match self {
            UserCommand::Add(args) => Some(("user add", args.username.clone())),
            UserCommand::Disable { username, .. } => Some(("user disable", username.clone())),
            UserCommand::Enable { username, .. } => Some(("user enable", username.clone())),
            UserCommand::Passwd { username, .. } => Some(("user passwd", username.clone())),
            UserCommand::List { .. } | UserCommand::Show { .. } => None,
        }
    }
}

pub fn run(cmd: UserCommand, loaded: &Loaded, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = open_store(loaded)?;
    match cmd {
        UserCommand::Add(args) => add(*args, loaded, &store, out),
        UserCommand::List { realm } => {
            let realm = realm_of(realm, loaded)?;
            writeln!(
                out,
                "{:<32} {:<15} {:<8} ACCOUNTS",
                "USERNAME", "ROLE", "ENABLED"
            )?;
            for u in store.list_users(&realm)? {
                let accounts: Vec<&str> = u.accounts.iter().map(|a| a.as_str()).collect();
                writeln!(
                    out,
                    "{:<32} {:<15} {:<8} {}",
                    u.username,
                    u.role,
                    u.enabled,
                    accounts.join(" ")
                )?;
            }
            Ok(())
        }
        UserCommand::Show { username, realm } => {
            let realm = realm_of(realm, loaded)?;
            let user = store
                .user(&realm, &username)?
                .ok_or_else(|| anyhow!("no user '{username}' in realm '{realm}'"))?;
            let shown = serde_json::json!({
                "realm": user.realm.as_str(),
                "username": user.username,
                "id": user.id,
                "role": user.role.name(),
                "accounts": user.accounts.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                "fhir_user": user.fhir_user,
                "gln": user.gln,
                "enabled": user.enabled,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&shown)?)?;
            Ok(())
        }
        UserCommand::Disable { username, realm } => {
            set_enabled(&store, loaded, &username, realm, false, out)
        }
        UserCommand::Enable { username, realm } => {
            set_enabled(&store, loaded, &username, realm, true, out)
        }
        UserCommand::Passwd {
            username,
            realm,
            password_file,
        } => {
            let realm = realm_of(realm, loaded)?;
            if store.user(&realm, &username)?.is_none() {
                bail!("no user '{username}' in realm '{realm}'");
            }
            let password = read_password(password_file.as_deref(), out)?;
            let hash = user::hash_password(&password)?;
            store.set_password(&realm, &username, &hash, now())?;
            writeln!(
                out,
                "password of '{username}' changed; their sessions ended"
            )?;
            Ok(())
        }
    }
}

fn add(args: UserAdd, loaded: &Loaded, store: &Store, out: &mut dyn Write) -> anyhow::Result<()> {
    use tessera_aim::AccountStore as _;
    let realm = realm_of(args.realm.clone(), loaded)?;
    user::check_username(&args.username)?;
    let accounts = args
        .accounts
        .iter()
        .map(|a| AccountUrn::try_from(a.as_str()).map_err(|e| anyhow!("--account: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    user::check_accounts(args.role, &accounts)?;
    for account in &accounts {
        if store
            .account(account)
            .map_err(|e| anyhow!("{e}"))?
            .is_none()
        {
            bail!("no account {account}; create it with `tessera account add --mpi-id ...`");
        }
    }
    if let Some(reference) = &args.fhir_user {
        user::check_fhir_user(args.role, reference)?;
    }
    if let Some(gln) = &args.gln {
        user::check_gln(gln)?;
    }
    let password = read_password(args.password_file.as_deref(), out)?;
    let id = tessera_http::ids::random_id()?;
    let new = User {
        realm: realm.clone(),
        id,
        username: args.username.clone(),
        role: args.role,
        accounts,
        fhir_user: args.fhir_user,
        gln: args.gln,
        enabled: true,
        password_hash: user::hash_password(&password)?,
    };
    store.insert_user(&new, now())?;
    writeln!(
        out,
        "added user '{}' ({}) in realm '{realm}', id {}",
        new.username, new.role, new.id
    )?;
    writeln!(
        out,
        "login page: {}/realms/{realm}/account",
        loaded.public_url()
    )?;
    Ok(())
}

fn set_enabled(
    store: &Store,
    loaded: &Loaded,
    username: &str,
    realm: Option<String>,
    enabled: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let realm = realm_of(realm, loaded)?;
    if !store.set_user_enabled(&realm, username, enabled, now())? {
        bail!("no user '{username}' in realm '{realm}'");
    }
    let word = if enabled {
        "enabled"
    } else {
        "disabled; their sessions ended"
    };
    writeln!(out, "user '{username}' {word}")?;
    Ok(())
}

/// The new password: the first line of `file`, or typed twice at a terminal without
/// echo, or one line from standard input when that is not a terminal.
fn read_password(file: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<Secret> {
    let line = |text: &str| text.lines().next().unwrap_or_default().to_owned();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(Secret::new(line(&text)));
    }
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Password again: ")?;
        if first != again {
            bail!("the passwords differ; nothing was changed");
        }
        return Ok(Secret::new(first));
    }
    writeln!(out, "reading the password from standard input")?;
    let mut text = String::new();
    std::io::stdin().lock().read_line(&mut text)?;
    Ok(Secret::new(line(&text)))
}
