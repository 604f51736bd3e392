//! The `tessera` command line (DESIGN.md). Each command writes what it did to `out`, so
//! tests run the real commands in-process and read what a user would see.
//! Errors: `anyhow` here at the edge, with messages that say what to do next.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tessera_iam::client::{Client, ClientAuth, JwksSource};
use tessera_iam::jose::{Algorithm, SigningKey};
use tessera_iam::keywrap::Kek;
use tessera_iam::registration::{
    certificate_subject, register, Credential, Registered, Registration,
};
use tessera_iam::IamStore as _;
use tessera_store::{KeyUse, Store};
use tessera_types::{ClientId, RealmName, UnixTime};

use crate::config::{self, Loaded, CONFIG_FILE};
use crate::pki::{Pki, Validity};

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: IHE IUA / ATNA identity and audit platform for FHIR APIs"
)]
pub struct Cli {
    /// Configuration file [default: ./config/tessera.toml when present]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Database URL (sqlite://PATH or postgres://...); overrides the configuration
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write config/tessera.toml, a development PKI under pki/, and a migrated database
    /// with the default realm and its signing key. Safe to run again.
    Init {
        /// Directory to set up
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Extra host names or IP addresses for the server certificate
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
    },
    /// Run the HTTPS server
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8443
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Comma-separated services to run (default: all). Available: iam, aim
        #[arg(long)]
        only: Option<String>,
        /// Log as JSON lines instead of human-readable text
        #[arg(long)]
        log_json: bool,
    },
    /// Development PKI: client certificates and revocation
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Client registrations (technical users, backend services)
    #[command(subcommand)]
    Client(ClientCommand),
    /// Realms: independent issuers, each with its own clients and signing key
    #[command(subcommand)]
    Realm(RealmCommand),
    /// Signing keys of a realm
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Issued access tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Patient accounts (AIM): Account URN, MPI-IDs, partitions
    #[command(subcommand)]
    Account(AccountCommand),
    /// FHIR Vault partitions of an account
    #[command(subcommand)]
    Partition(PartitionCommand),
    /// The audit trail: verify its hash chain, export it
    #[command(subcommand)]
    Audit(AuditCommand),
    /// People who log in: patients, representatives, practitioners, auditors
    #[command(subcommand)]
    User(crate::users::UserCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute every instance's hash chain and check the signed checkpoints; fails naming
    /// the first broken link
    Verify,
    /// Write events as NDJSON (one FHIR AuditEvent per line) to standard output
    Export {
        /// Only events recorded at or after this date (YYYY-MM-DD) or time (RFC 3339)
        #[arg(long)]
        since: Option<String>,
    },
    /// Show how far each ITI-20 destination (syslog, FHIR feed) has been delivered
    Deliveries,
    /// Count a destination's events up to a point as delivered without sending them: for
    /// an event the destination refuses for good, or to start a new destination at the
    /// present rather than at the beginning of the trail. Recorded in the trail
    Skip {
        /// The destination, as `tessera audit deliveries` names it
        destination: String,
        /// The last event to skip: `head` (the newest of every chain), `CHAIN:N` (event N
        /// of a chain, as `tessera audit deliveries` names them), or `N` when there is one chain
        #[arg(long)]
        through: String,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Create an account for a patient's MPI-ID, with its default partition
    Add {
        /// urn:<namespace>:mpi_id:<OID>/<UUID>
        #[arg(long)]
        mpi_id: String,
        /// Name of the default partition [default: the account id]
        #[arg(long)]
        partition_name: Option<String>,
    },
    /// List the accounts
    List,
    /// Show an account (by Account URN or by one of its MPI-IDs) as JSON
    Show { urn: String },
    /// Point another MPI-ID at an existing account (e.g. after a patient merge)
    LinkMpi {
        #[arg(long)]
        account: String,
        #[arg(long)]
        mpi_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PartitionCommand {
    /// Add a partition for a specific use case to an account
    Add {
        #[arg(long)]
        account: String,
        /// The use case (letters, digits, '-', '_')
        #[arg(long)]
        use_case: String,
        /// The partition id [default: <account id>-<use case>]
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new signing key; the previous one stays published and verifies until every
    /// token it signed has expired (token lifetime + clock skew), then retires
    Rotate {
        #[arg(long)]
        realm: Option<String>,
        /// Algorithm of the new key [default: the realm's current one]
        #[arg(long, value_parser = ["ES256", "RS256", "RS384"], conflicts_with = "id_token")]
        alg: Option<String>,
        /// Rotate the key that signs OpenID Connect id_tokens (RS256) instead of the
        /// access-token key
        #[arg(long)]
        id_token: bool,
        /// Retire the previous key after this many seconds instead of when its last token
        /// expires; 0 retires it now and invalidates its tokens (a compromised key)
        #[arg(long, value_name = "SECONDS")]
        retire_previous_in: Option<i64>,
    },
    /// List a realm's keys, retired ones included
    List {
        #[arg(long)]
        realm: Option<String>,
    },
    /// Encrypt every realm's private keys with the configured key encryption key: keys
    /// stored unencrypted, or under the old key encryption key given
    Rewrap {
        /// The previous key encryption key file
        #[arg(long, value_name = "FILE")]
        from_key_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Revoke an access token by its jti (as logged when it was issued); it is inactive
    /// at introspection at once, on every instance sharing the database
    Revoke {
        /// A jti is base64url: it may begin with `-`
        #[arg(allow_hyphen_values = true)]
        jti: String,
        #[arg(long)]
        realm: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RealmCommand {
    /// Create a realm with a new signing key
    Add {
        name: String,
        /// Access token signing algorithm
        #[arg(long, default_value = "ES256", value_parser = ["ES256", "RS256", "RS384"])]
        alg: String,
        /// Access token lifetime in seconds [default: iam.token_lifetime_seconds]
        #[arg(long)]
        token_lifetime: Option<i64>,
    },
    /// List the realms
    List,
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Issue DIR/NAME.crt and DIR/NAME.key signed by the development CA (pki/ca.crt)
    IssueClient {
        name: String,
        #[arg(long)]
        out: PathBuf,
        /// RSA 2048 instead of ECDSA P-256
        #[arg(long)]
        rsa: bool,
        /// Validity in days
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Revoke a certificate issued by the development CA (adds it to pki/ca.crl)
    Revoke {
        /// The certificate file (PEM)
        cert: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Register a client
    Add(Box<ClientAdd>),
    /// List the clients of a realm
    List {
        #[arg(long)]
        realm: Option<String>,
    },
    /// Show one client's registration as JSON
    Show {
        client_id: String,
        #[arg(long)]
        realm: Option<String>,
    },
    /// Disable a client: it gets no more tokens
    Disable {
        client_id: String,
        #[arg(long)]
        realm: Option<String>,
    },
    /// Enable a disabled client again
    Enable {
        client_id: String,
        #[arg(long)]
        realm: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
enum AuthMethod {
    TlsClientAuth,
    PrivateKeyJwt,
    ClientSecretBasic,
    ClientSecretPost,
    /// A public app (browser or native): no secret, PKCE proves each code
    None,
}

#[derive(Debug, Args)]
struct ClientAdd {
    #[arg(long)]
    realm: Option<String>,
    #[arg(long)]
    client_id: String,
    /// How the client authenticates at the token endpoint
    #[arg(long, value_enum)]
    auth: AuthMethod,
    /// tls_client_auth: the client's certificate (PEM); binds this exact certificate
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// tls_client_auth: accept any certificate with this subject DN (e.g. "CN=x, O=y")
    #[arg(long, value_name = "DN", conflicts_with = "cert")]
    cert_subject: Option<String>,
    /// with --cert-subject: the issuer DN [default: the development CA's subject]
    #[arg(long, value_name = "DN", requires = "cert_subject")]
    cert_issuer: Option<String>,
    /// private_key_jwt: a JWK Set file
    #[arg(long, value_name = "FILE")]
    jwks: Option<PathBuf>,
    /// private_key_jwt: an https URL serving the client's JWK Set
    #[arg(long, value_name = "URL", conflicts_with = "jwks")]
    jwks_uri: Option<String>,
    /// private_key_jwt: a PEM public key (file or the PEM text), converted to a JWK
    #[arg(long, value_name = "PEM", allow_hyphen_values = true, conflicts_with_all = ["jwks", "jwks_uri"])]
    public_key: Option<String>,
    /// with --public-key: the JWK alg [default: RS384 for RSA, ES256/ES384 for EC]
    #[arg(long, requires = "public_key")]
    alg: Option<String>,
    /// Scopes the client may ask for, space-separated (SMART scopes are matched by containment)
    #[arg(long, default_value = "")]
    scope: String,
    /// A FHIR Vault partition the client's tokens may use (repeatable; "*" for all)
    #[arg(long = "partition")]
    partitions: Vec<String>,
    /// CH:IUA principal_id (e.g. a GLN) the client acts for
    #[arg(long)]
    principal_id: Option<String>,
    /// CH:IUA principal: the name of that principal
    #[arg(long)]
    principal_name: Option<String>,
    /// A person_id the client may name in token requests (repeatable; "*" for any)
    #[arg(long = "person-id")]
    person_ids: Vec<String>,
    /// The client is a resource server known by this audience URI (repeatable):
    /// introspection tells it only about tokens whose aud names it
    #[arg(long = "resource-server")]
    resource_servers: Vec<String>,
    /// An Account URN the client may ask tokens for with `account=` (repeatable; "*" for any)
    #[arg(long = "account")]
    accounts: Vec<String>,
    #[arg(long)]
    subject_name: Option<String>,
    #[arg(long)]
    subject_organization: Option<String>,
    #[arg(long)]
    subject_organization_id: Option<String>,
    /// system|code
    #[arg(long)]
    subject_role: Option<String>,
    /// system|code
    #[arg(long)]
    purpose_of_use: Option<String>,
    #[arg(long)]
    home_community_id: Option<String>,
    #[arg(long)]
    national_provider_identifier: Option<String>,
    /// Where the authorization endpoint may send users back, exactly (repeatable)
    #[arg(long = "redirect-uri", value_name = "URL")]
    redirect_uris: Vec<String>,
    /// The app's SMART launch URL
    #[arg(long, value_name = "URL")]
    launch_url: Option<String>,
}

/// Runs the command line with `args` (the first being the program name).
pub fn run<I, T>(args: I, out: &mut dyn Write) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            write!(out, "{e}")?;
            return Ok(());
        }
        Err(e) => bail!("{}", e.render().to_string().trim_start_matches("error: ")),
    };
    execute(cli, out)
}

pub fn execute(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let change = admin_change(&cli.command);
    let (config, database_url) = (cli.config.clone(), cli.database_url.clone());
    run_command(cli, out)?;
    if let Some((command, target)) = change {
        let loaded = load(config.as_deref(), database_url.as_deref())?;
        audit_admin_change(&loaded, command, target)?;
    }
    Ok(())
}

/// The commands that change security or patient identity data, with what they change:
/// each is recorded in the audit trail once it succeeded.
fn admin_change(command: &Command) -> Option<(&'static str, String)> {
    Some(match command {
        Command::Client(ClientCommand::Add(args)) => ("client add", args.client_id.clone()),
        Command::Client(ClientCommand::Disable { client_id, .. }) => {
            ("client disable", client_id.clone())
        }
        Command::Client(ClientCommand::Enable { client_id, .. }) => {
            ("client enable", client_id.clone())
        }
        Command::Realm(RealmCommand::Add { name, .. }) => ("realm add", name.clone()),
        Command::Keys(KeysCommand::Rotate { realm, .. }) => (
            "keys rotate",
            realm.clone().unwrap_or_else(|| "(default realm)".into()),
        ),
        Command::Keys(KeysCommand::Rewrap { .. }) => ("keys rewrap", "(every realm)".into()),
        Command::Token(TokenCommand::Revoke { jti, .. }) => ("token revoke", jti.clone()),
        Command::Account(AccountCommand::Add { mpi_id, .. }) => ("account add", mpi_id.clone()),
        Command::Account(AccountCommand::LinkMpi { mpi_id, .. }) => {
            ("account link-mpi", mpi_id.clone())
        }
        Command::Partition(PartitionCommand::Add { account, .. }) => {
            ("partition add", account.clone())
        }
        Command::Pki(PkiCommand::IssueClient { name, .. }) => ("pki issue-client", name.clone()),
        Command::Pki(PkiCommand::Revoke { cert }) => ("pki revoke", crate::pki::describe(cert)),
        Command::User(cmd) => return cmd.change(),
        _ => return None,
    })
}

fn audit_admin_change(loaded: &Loaded, command: &str, target: String) -> anyhow::Result<()> {
    let operator = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    let record = tessera_http::audit::new_record(
        now(),
        &loaded.public_url(),
        None,
        tessera_atna::Outcome::Success,
        tessera_atna::Event::AdminAction {
            command: command.to_owned(),
            target,
            operator,
        },
    )?;
    open_store(loaded)?
        .append_audit(&[record])
        .map_err(|e| anyhow::anyhow!("the change was made, but could not be audited: {}", e.0))
}

fn run_command(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { dir, hostnames } => {
            init(&dir, &hostnames, cli.database_url.as_deref(), out)
        }
        Command::Serve {
            listen,
            only,
            log_json,
        } => {
            let mut loaded = load(cli.config.as_deref(), cli.database_url.as_deref())?;
            if let Some(listen) = listen {
                loaded.config.server.listen = listen;
            }
            if log_json {
                loaded.config.server.log_format = config::LogFormat::Json;
            }
            let services = match only {
                Some(list) => tessera_http::Services::parse(&list)?,
                None => tessera_http::Services::all(),
            };
            crate::serve::run(loaded, services, out)
        }
        Command::Pki(cmd) => {
            let loaded = load(cli.config.as_deref(), cli.database_url.as_deref())?;
            pki(cmd, &loaded, out)
        }
        Command::Client(cmd) => {
            let loaded = load(cli.config.as_deref(), cli.database_url.as_deref())?;
            client(cmd, &loaded, out)
        }
        Command::Realm(cmd) => {
            let loaded = load(cli.config.as_deref(), cli.database_url.as_deref())?;
            realm(cmd, &loaded, out)
        }
        Command::Keys(cmd) => {
            let loaded = load(cli.config.as_deref(), cli.database_url.as_deref())?;
            keys(cmd, &loaded, out)
        }
        Command::Token(TokenCommand::Revoke { jti, realm }) => {
            let loaded = load(cli.config.as_deref(), cli.database_url.as_deref())?;
            revoke_token(&jti, realm, &loaded, out)
        }
        Command::Account(cmd) => {
            let loaded = load(cli.config.as_deref(), cli.database_url.as_deref())?;
            crate::accounts::account(cmd_account(cmd), &loaded, out)
        }
        Command::Audit(cmd) => {
            let loaded = load(cli.config.as_deref(), cli.database_url.as_deref())?;
            audit(cmd, &loaded, out)
        }
        Command::User(cmd) => {
            let loaded = load(cli.config.as_deref(), cli.database_url.as_deref())?;
            crate::users::run(cmd, &loaded, out)
        }
        Command::Partition(PartitionCommand::Add {
            account,
            use_case,
            name,
        }) => {
            let loaded = load(cli.config.as_deref(), cli.database_url.as_deref())?;
            crate::accounts::add_partition(&account, &use_case, name.as_deref(), &loaded, out)
        }
    }
}

fn cmd_account(cmd: AccountCommand) -> crate::accounts::AccountAction {
    use crate::accounts::AccountAction;
    match cmd {
        AccountCommand::Add {
            mpi_id,
            partition_name,
        } => AccountAction::Add {
            mpi_id,
            partition_name,
        },
        AccountCommand::List => AccountAction::List,
        AccountCommand::Show { urn } => AccountAction::Show { urn },
        AccountCommand::LinkMpi { account, mpi_id } => AccountAction::LinkMpi { account, mpi_id },
    }
}

fn load(file: Option<&Path>, database_url: Option<&str>) -> anyhow::Result<Loaded> {
    let mut loaded = config::load(file)?;
    if let Some(url) = database_url {
        loaded.config.database.url = url.to_owned();
    }
    Ok(loaded)
}

pub fn open_store(loaded: &Loaded) -> anyhow::Result<Store> {
    let kek = key_encryption_key(loaded)?;
    let url = loaded.database_url();
    let store = Store::open(&url, loaded.config.database.max_connections).map_err(|e| {
        anyhow!(
            "{}\n  database: {}\n  Check [database] url in the configuration or TESSERA_DATABASE_URL; \
             run `tessera init` in a new directory to create the embedded default.",
            e.0,
            redact_url(&url)
        )
    })?;
    Ok(store.with_kek(kek).with_audit_chain(&loaded.audit_chain()))
}

/// The key encryption key the configuration names (`iam.key_encryption_key_env` first,
/// then `iam.key_encryption_key_file`); `None` when both are empty.
fn key_encryption_key(loaded: &Loaded) -> anyhow::Result<Option<Kek>> {
    let iam = &loaded.config.iam;
    if !iam.key_encryption_key_env.is_empty() {
        let name = &iam.key_encryption_key_env;
        let text = std::env::var(name)
            .map_err(|_| anyhow!("iam.key_encryption_key_env names {name}, which is not set"))?;
        return Ok(Some(Kek::parse(&text).map_err(|e| anyhow!("{name}: {e}"))?));
    }
    if iam.key_encryption_key_file.is_empty() {
        return Ok(None);
    }
    read_kek_file(&loaded.path(Path::new(&iam.key_encryption_key_file))).map(Some)
}

fn read_kek_file(path: &Path) -> anyhow::Result<Kek> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow!(
            "the key encryption key {} cannot be read ({e}). `tessera init` creates it \
             (then `tessera keys rewrap` encrypts keys stored before); \
             iam.key_encryption_key_file = \"\" stores keys unencrypted",
            path.display()
        )
    })?;
    Kek::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// `tessera init`: a new key encryption key file, unless one exists or the
/// configuration names an environment variable (or nothing) instead.
fn ensure_kek_file(loaded: &Loaded, out: &mut dyn Write) -> anyhow::Result<()> {
    let iam = &loaded.config.iam;
    if !iam.key_encryption_key_env.is_empty() || iam.key_encryption_key_file.is_empty() {
        return Ok(());
    }
    let path = loaded.path(Path::new(&iam.key_encryption_key_file));
    if path.exists() {
        writeln!(out, "kept       {}", path.display())?;
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::pki::write_private(&path, &format!("{}\n", Kek::generate()?))?;
    writeln!(
        out,
        "created    {} (key encryption key, keep it apart from database backups)",
        path.display()
    )?;
    Ok(())
}

/// Hides a password in a database URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub fn now() -> UnixTime {
    tessera_http::now()
}

fn init(
    dir: &Path,
    hostnames: &[String],
    database_url: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("config"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::create_dir_all(dir.join("data"))?;
    let dir = dir.canonicalize()?;
    let file = dir.join(CONFIG_FILE);
    if file.exists() {
        writeln!(out, "kept       {}", file.display())?;
    } else {
        let mut text = config::DEFAULT_TOML.to_owned();
        if let Some(url) = database_url {
            text = text.replace(
                "url = \"sqlite://data/tessera.db\"",
                &format!("url = {}", toml_string(url)),
            );
        }
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
        writeln!(out, "created    {}", file.display())?;
    }
    let loaded = load(Some(&file), database_url)?;

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(hostnames.iter().cloned());
    let pki = Pki::new(loaded.base.join("pki"));
    let created = pki.ensure(&names)?;
    for path in &created {
        writeln!(out, "created    {}", path.display())?;
    }
    if created.is_empty() {
        writeln!(
            out,
            "kept       {} (CA, server certificate, CRL)",
            loaded.base.join("pki").display()
        )?;
    }
    ensure_kek_file(&loaded, out)?;

    let store = open_store(&loaded)?;
    writeln!(
        out,
        "database   {} ({}), migrated",
        redact_url(&loaded.database_url()),
        store.backend()
    )?;
    let realm = RealmName::try_from(loaded.config.iam.default_realm.as_str())
        .map_err(|e| anyhow!("iam.default_realm: {e}"))?;
    let at = now();
    if store.ensure_realm(
        &realm,
        loaded.config.iam.token_lifetime_seconds,
        Algorithm::ES256,
        at,
    )? {
        writeln!(out, "created    realm '{realm}'")?;
    }
    if !store.has_signing_key(&realm, KeyUse::Access)? {
        let kid = add_signing_key(&store, &realm, KeyUse::Access, Algorithm::ES256, at, at)?;
        writeln!(
            out,
            "created    ES256 signing key {kid} for realm '{realm}'"
        )?;
    }
    if let Some(kid) = ensure_id_token_key(&store, &realm, at)? {
        writeln!(
            out,
            "created    RS256 id_token key {kid} for realm '{realm}'"
        )?;
    }
    writeln!(
        out,
        "\nReady. Start the server with:\n  cd {} && tessera serve",
        dir.display()
    )?;
    writeln!(out, "Issuer: {}/realms/{realm}", loaded.public_url())?;
    Ok(())
}

/// Generates a signing key for `realm` and makes it the one that signs for `key_use`,
/// retiring the previous keys of that use at `retire_previous_at`; returns the new kid.
fn add_signing_key(
    store: &Store,
    realm: &RealmName,
    key_use: KeyUse,
    alg: Algorithm,
    at: UnixTime,
    retire_previous_at: UnixTime,
) -> anyhow::Result<String> {
    let (key, pkcs8) = if alg.is_rsa() {
        let pkcs8 = crate::pki::generate_rsa_pkcs8()?;
        (
            SigningKey::from_pkcs8(alg, &pkcs8).map_err(|e| anyhow!("{e}"))?,
            pkcs8,
        )
    } else {
        SigningKey::generate_ec(alg).map_err(|e| anyhow!("{e}"))?
    };
    store.add_signing_key(
        realm,
        key_use,
        key.kid(),
        alg,
        &pkcs8,
        at,
        retire_previous_at,
    )?;
    Ok(key.kid().to_owned())
}

/// Gives the realm an RS256 key for OpenID Connect id_tokens unless it has one; returns
/// the new key's kid.
pub(crate) fn ensure_id_token_key(
    store: &Store,
    realm: &RealmName,
    at: UnixTime,
) -> anyhow::Result<Option<String>> {
    if store.has_signing_key(realm, KeyUse::IdToken)? {
        return Ok(None);
    }
    let kid = add_signing_key(store, realm, KeyUse::IdToken, Algorithm::RS256, at, at)?;
    Ok(Some(kid))
}

fn existing_realm(
    store: &Store,
    name: Option<String>,
    loaded: &Loaded,
) -> anyhow::Result<tessera_iam::Realm> {
    let name = realm_of(name, loaded)?;
    store
        .realm(&name)?
        .ok_or_else(|| anyhow!("realm '{name}' does not exist (see `tessera realm list`)"))
}

fn keys(cmd: KeysCommand, loaded: &Loaded, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = open_store(loaded)?;
    match cmd {
        KeysCommand::Rotate {
            realm,
            alg,
            id_token,
            retire_previous_in,
        } => {
            let realm = existing_realm(&store, realm, loaded)?;
            // id_tokens are RS256, as SMART's test suites require.
            let (key_use, alg) = match (id_token, alg) {
                (true, _) => (KeyUse::IdToken, Algorithm::RS256),
                (false, Some(alg)) => (
                    KeyUse::Access,
                    Algorithm::parse(&alg).map_err(|e| anyhow!("--alg: {e}"))?,
                ),
                (false, None) => (KeyUse::Access, realm.signing_alg),
            };
            let at = now();
            let natural = realm.token_lifetime_seconds + loaded.config.iam.clock_skew_seconds;
            let delay = retire_previous_in.unwrap_or(natural);
            anyhow::ensure!(delay >= 0, "--retire-previous-in cannot be negative");
            let retire_at = at.plus_seconds(delay);
            let previous: Vec<String> = store
                .list_keys(&realm.name)?
                .into_iter()
                .filter(|k| k.key_use == key_use && k.retired_at.is_none())
                .map(|k| k.kid)
                .collect();
            let kid = add_signing_key(&store, &realm.name, key_use, alg, at, retire_at)?;
            let what = match key_use {
                KeyUse::Access => "",
                KeyUse::IdToken => " id_tokens",
            };
            writeln!(
                out,
                "realm '{}' now signs{what} with {} key {kid}",
                realm.name,
                alg.name()
            )?;
            for old in previous {
                if delay == 0 {
                    writeln!(
                        out,
                        "key {old} is retired now: tokens it signed no longer verify"
                    )?;
                } else {
                    writeln!(out, "key {old} stops signing and retires in {delay} s")?;
                }
            }
            writeln!(
                out,
                "running servers pick this up within {} s; no restart needed",
                loaded.config.iam.cache_seconds
            )?;
        }
        KeysCommand::List { realm } => {
            let realm = existing_realm(&store, realm, loaded)?;
            let at = now();
            writeln!(
                out,
                "{:<18} {:<8} {:<6} {:<10} RETIRES",
                "KID", "SIGNS", "ALG", "STATE"
            )?;
            for key in store.list_keys(&realm.name)? {
                let (state, retires) = match key.retired_at {
                    None => ("signing", "-".to_owned()),
                    Some(t) if t > at => ("verifying", format!("in {} s", t.0 - at.0)),
                    Some(_) => ("retired", "-".to_owned()),
                };
                let state = if key.active { "signing" } else { state };
                let signs = match key.key_use {
                    KeyUse::Access => "access",
                    KeyUse::IdToken => "id_token",
                };
                writeln!(
                    out,
                    "{:<18} {signs:<8} {:<6} {:<10} {retires}",
                    key.kid, key.alg, state
                )?;
            }
        }
        KeysCommand::Rewrap { from_key_file } => {
            let Some(kek_id) = store.kek_id() else {
                bail!(
                    "no key encryption key is configured (iam.key_encryption_key_file or \
                     iam.key_encryption_key_env) to wrap the keys with"
                );
            };
            let old = from_key_file.as_deref().map(read_kek_file).transpose()?;
            let (rewrapped, current) = store.rewrap_keys(old.as_ref())?;
            writeln!(
                out,
                "{rewrapped} private keys now encrypted with key encryption key {kek_id}; {current} already were"
            )?;
        }
    }
    Ok(())
}

fn audit(cmd: AuditCommand, loaded: &Loaded, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = open_store(loaded)?;
    match cmd {
        AuditCommand::Verify => {
            let verifier = crate::serve::checkpoint_verifier(loaded)?;
            let report =
                store.verify_audit_chain(&|signed| verifier.verify(signed), &mut |_| {})?;
            if let Some(broken) = &report.first_broken {
                bail!(
                    "audit chain {} broken at event {broken}: {} events before it verify, this one does not; \
                     it or an earlier event was changed, removed or reordered",
                    broken.chain,
                    report.checked
                );
            }
            if let Some(why) = &report.checkpoint_broken {
                bail!(
                    "audit checkpoints do not vouch for the trail: {why}; \
                     events or checkpoints were changed, removed or forged"
                );
            }
            if let Some(altered) = &report.first_altered_copy {
                bail!(
                    "audit chains intact ({} events), but the audit repository's copy of event {altered} \
                     is missing or altered: ITI-81 queries do not show the trail as recorded",
                    report.checked
                );
            }
            writeln!(
                out,
                "audit trail intact: {} events in {} verified, {} signed checkpoint{}{}",
                report.checked,
                match report.chains {
                    1 => "1 chain".to_owned(),
                    n => format!("{n} chains"),
                },
                report.checkpoints,
                if report.checkpoints == 1 { "" } else { "s" },
                match report.signers.as_slice() {
                    [] => String::new(),
                    signers => format!(" (signed by {})", signers.join("; ")),
                }
            )?;
            if report.unanchored > 0 {
                writeln!(
                    out,
                    "{} events are newer than the last checkpoint: the next one signs them",
                    report.unanchored
                )?;
            }
        }
        AuditCommand::Export { since } => {
            let since = match since {
                None => UnixTime(0),
                Some(text) => parse_since(&text)?,
            };
            for record in store.audit_since(since)? {
                writeln!(out, "{}", tessera_atna::to_fhir(&record))?;
            }
        }
        AuditCommand::Skip {
            destination,
            through,
        } => {
            let chains = store.audit_chains()?;
            let through = skip_point(&through, &chains)?;
            let known = store.deliveries()?;
            if !loaded.delivery_names().contains(&destination)
                && !known.iter().any(|(name, _)| *name == destination)
            {
                bail!("no ITI-20 destination named {destination}: `tessera audit deliveries` lists them");
            }
            let described = through
                .iter()
                .map(|(chain, seq)| format!("{chain}#{seq}"))
                .collect::<Vec<_>>()
                .join(", ");
            let skipped = store.skip_delivery(&destination, &through)?;
            if skipped == 0 {
                bail!(
                    "{destination} is already delivered through event {described}: nothing skipped"
                );
            }
            writeln!(
                out,
                "{destination}: events through {described} count as delivered ({skipped} skipped); \
                 a running server goes on after them"
            )?;
            audit_admin_change(
                loaded,
                "audit skip",
                format!("{destination} through event {described}"),
            )?;
        }
        AuditCommand::Deliveries => {
            let chains = store.audit_chains()?;
            let head: i64 = chains.values().sum();
            let mut known = store.deliveries()?;
            for name in loaded.delivery_names() {
                if !known.iter().any(|(n, _)| *n == name) {
                    known.push((name, 0));
                }
            }
            let each = chains
                .iter()
                .map(|(chain, seq)| format!("{chain} {seq}"))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                out,
                "trail: {head} events{}",
                if chains.is_empty() {
                    String::new()
                } else {
                    format!(" (chains: {each})")
                }
            )?;
            if known.is_empty() {
                writeln!(out, "no ITI-20 destinations: see [[audit.syslog]] and [[audit.fhir_feed]] in the configuration")?;
            }
            let configured = loaded.delivery_names();
            for (name, seq) in known {
                let note = if configured.contains(&name) {
                    ""
                } else {
                    "  (no longer configured)"
                };
                writeln!(
                    out,
                    "{name}: delivered {seq}, pending {}{note}",
                    (head - seq).max(0)
                )?;
            }
        }
    }
    Ok(())
}

/// Where `audit skip --through` stops, per chain: `head` (every chain's newest event),
/// `CHAIN:N`, or a bare `N` when the trail has one chain.
fn skip_point(
    through: &str,
    chains: &std::collections::BTreeMap<String, i64>,
) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let expected = || {
        let names: Vec<&str> = chains.keys().map(String::as_str).collect();
        anyhow!(
            "--through: expected `head`, or CHAIN:N with N an event number of the chain \
             (chains: {})",
            if names.is_empty() {
                "none yet".to_owned()
            } else {
                names.join(", ")
            }
        )
    };
    if through == "head" {
        return Ok(chains.clone());
    }
    let (chain, number) = match through.rsplit_once(':') {
        Some((chain, number)) if chains.contains_key(chain) => (chain.to_owned(), number),
        Some(_) => return Err(expected()),
        None if chains.len() == 1 => (chains.keys().next().cloned().unwrap_or_default(), through),
        None => return Err(expected()),
    };
    let head = chains.get(&chain).copied().unwrap_or(0);
    let seq = number
        .parse::<i64>()
        .ok()
        .filter(|n| (0..=head).contains(n))
        .ok_or_else(expected)?;
    Ok([(chain, seq)].into())
}

/// A date (`YYYY-MM-DD`, midnight UTC) or an RFC 3339 time.
fn parse_since(text: &str) -> anyhow::Result<UnixTime> {
    use time::format_description::well_known::Rfc3339;
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    let parsed = time::OffsetDateTime::parse(&full, &Rfc3339).map_err(|_| {
        anyhow!("--since: expected YYYY-MM-DD or an RFC 3339 time such as 2026-11-23T10:00:00Z")
    })?;
    Ok(UnixTime(parsed.unix_timestamp()))
}

/// Records a revocation under `key` (a jti, or a client's or certificate's key: then every
/// token under it issued until now is inactive). The record is kept for one token
/// lifetime: the token's own exp is unknown here, and it is at most that far away.
fn revoke_key(
    store: &Store,
    realm: &tessera_iam::Realm,
    key: &str,
    owner: &str,
    loaded: &Loaded,
) -> anyhow::Result<()> {
    use tessera_introspection::RevocationStore as _;
    let at = now();
    let keep_until =
        at.plus_seconds(realm.token_lifetime_seconds + loaded.config.iam.clock_skew_seconds);
    store.revoke(&realm.name, key, owner, keep_until, at)?;
    Ok(())
}

fn revoke_token(
    jti: &str,
    realm: Option<String>,
    loaded: &Loaded,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let store = open_store(loaded)?;
    let realm = existing_realm(&store, realm, loaded)?;
    tessera_types::Jti::try_from(jti).map_err(|e| anyhow!("{e}"))?;
    revoke_key(&store, &realm, jti, "(operator)", loaded)?;
    writeln!(
        out,
        "revoked token {jti} in realm '{}': inactive at introspection now, on every instance",
        realm.name
    )?;
    Ok(())
}

fn realm(cmd: RealmCommand, loaded: &Loaded, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = open_store(loaded)?;
    match cmd {
        RealmCommand::Add {
            name,
            alg,
            token_lifetime,
        } => {
            let realm =
                RealmName::try_from(name.as_str()).map_err(|e| anyhow!("realm name: {e}"))?;
            let alg = Algorithm::parse(&alg).map_err(|e| anyhow!("--alg: {e}"))?;
            let lifetime = token_lifetime.unwrap_or(loaded.config.iam.token_lifetime_seconds);
            anyhow::ensure!(lifetime > 0, "--token-lifetime must be positive");
            let at = now();
            if !store.ensure_realm(&realm, lifetime, alg, at)? {
                bail!("realm '{realm}' already exists");
            }
            let kid = add_signing_key(&store, &realm, KeyUse::Access, alg, at, at)?;
            ensure_id_token_key(&store, &realm, at)?;
            writeln!(
                out,
                "created realm '{realm}': {} signing key {kid}, tokens valid {lifetime} s",
                alg.name()
            )?;
            writeln!(out, "issuer: {}/realms/{realm}", loaded.public_url())?;
        }
        RealmCommand::List => {
            writeln!(out, "{:<24} {:<6} TOKEN_LIFETIME", "REALM", "ALG")?;
            for realm in store.list_realms()? {
                writeln!(
                    out,
                    "{:<24} {:<6} {}",
                    realm.name,
                    realm.signing_alg.name(),
                    realm.token_lifetime_seconds
                )?;
            }
        }
    }
    Ok(())
}

fn toml_string(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn pki(cmd: PkiCommand, loaded: &Loaded, out: &mut dyn Write) -> anyhow::Result<()> {
    let pki = Pki::new(loaded.base.join("pki"));
    match cmd {
        PkiCommand::IssueClient {
            name,
            out: dir,
            rsa,
            days,
        } => {
            anyhow::ensure!(days > 0, "--days must be positive");
            let (crt, key) = pki.issue_client(&name, &dir, rsa, Validity::days(days))?;
            writeln!(
                out,
                "certificate {}\nprivate key {}",
                crt.display(),
                key.display()
            )?;
            writeln!(
                out,
                "issued by   {}",
                pki.path(crate::pki::CA_CERT).display()
            )?;
        }
        PkiCommand::Revoke { cert } => {
            let (serial, thumbprint, new) = pki.revoke(&cert)?;
            let crl = pki.path(crate::pki::CA_CRL);
            // The CRL stops new handshakes once reloaded; the tokens bound to the
            // certificate end now, on every instance, in every realm.
            let store = open_store(loaded)?;
            let key = tessera_introspection::certificate_revocation(&thumbprint);
            for realm in store.list_realms()? {
                revoke_key(&store, &realm, &key, "(certificate)", loaded)?;
            }
            if new {
                writeln!(
                    out,
                    "revoked serial {serial}; {} updated (the server reloads it within {} s); \
                     the tokens bound to it are inactive now",
                    crl.display(),
                    loaded.config.tls.crl_refresh_seconds
                )?;
            } else {
                writeln!(
                    out,
                    "serial {serial} was already revoked in {}",
                    crl.display()
                )?;
            }
        }
    }
    Ok(())
}

pub(crate) fn realm_of(name: Option<String>, loaded: &Loaded) -> anyhow::Result<RealmName> {
    let name = name.unwrap_or_else(|| loaded.config.iam.default_realm.clone());
    RealmName::try_from(name.as_str()).map_err(|e| anyhow!("--realm: {e}"))
}

fn client(cmd: ClientCommand, loaded: &Loaded, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = open_store(loaded)?;
    match cmd {
        ClientCommand::Add(args) => client_add(*args, loaded, &store, out),
        ClientCommand::List { realm } => {
            let realm = realm_of(realm, loaded)?;
            let clients = store.list_clients(&realm)?;
            writeln!(
                out,
                "{:<32} {:<20} {:<8} SCOPES",
                "CLIENT_ID", "AUTH", "ENABLED"
            )?;
            for c in clients {
                writeln!(
                    out,
                    "{:<32} {:<20} {:<8} {}",
                    c.client_id,
                    c.auth.method_name(),
                    c.enabled,
                    c.scopes
                )?;
            }
            Ok(())
        }
        ClientCommand::Show { client_id, realm } => {
            let realm = realm_of(realm, loaded)?;
            let id = ClientId::try_from(client_id.as_str())?;
            let client = store
                .client(&realm, &id)?
                .ok_or_else(|| anyhow!("no client '{id}' in realm '{realm}'"))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&describe(&client))?)?;
            Ok(())
        }
        ClientCommand::Disable { client_id, realm } => {
            set_enabled(&store, loaded, client_id, realm, false, out)
        }
        ClientCommand::Enable { client_id, realm } => {
            set_enabled(&store, loaded, client_id, realm, true, out)
        }
    }
}

fn set_enabled(
    store: &Store,
    loaded: &Loaded,
    client_id: String,
    realm: Option<String>,
    enabled: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let realm = existing_realm(store, realm, loaded)?;
    let id = ClientId::try_from(client_id.as_str())?;
    if !store.set_client_enabled(&realm.name, &id, enabled, now())? {
        bail!("no client '{id}' in realm '{}'", realm.name);
    }
    if enabled {
        writeln!(
            out,
            "client '{id}' enabled (running servers notice within {} s)",
            loaded.config.iam.cache_seconds
        )?;
    } else {
        // Its tokens end at once on every instance; new ones are refused once the
        // servers' client cache notices.
        let key = tessera_introspection::client_revocation(id.as_str());
        revoke_key(store, &realm, &key, id.as_str(), loaded)?;
        writeln!(
            out,
            "client '{id}' disabled: its tokens are inactive now; running servers refuse it new ones within {} s",
            loaded.config.iam.cache_seconds
        )?;
    }
    Ok(())
}

/// A registration as `client show` prints it: everything but the secret hash.
fn describe(client: &Client) -> serde_json::Value {
    let credential = match &client.auth {
        ClientAuth::ClientSecret { .. } => {
            serde_json::json!({ "client_secret": "(stored hashed)" })
        }
        other => serde_json::to_value(other).unwrap_or_default(),
    };
    serde_json::json!({
        "realm": client.realm,
        "client_id": client.client_id,
        "enabled": client.enabled,
        "token_endpoint_auth_method": client.auth.method_name(),
        "credential": credential,
        "scope": client.scopes.to_string(),
        "partitions": client.partitions,
        "principal_id": client.principal_id,
        "principal_name": client.principal_name,
        "person_ids": client.person_ids,
        "resource_servers": client.resource_servers,
        "accounts": client.accounts,
        "ihe_iua": client.iua,
        "redirect_uris": client.redirect_uris,
        "launch_url": client.launch_url,
    })
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// What `client add`'s flags register as the client's credential, files read.
fn credential(args: &ClientAdd, loaded: &Loaded) -> anyhow::Result<Credential> {
    Ok(match args.auth {
        AuthMethod::TlsClientAuth => match (&args.cert, &args.cert_subject) {
            (Some(path), _) => Credential::Certificate(
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            ),
            (None, Some(subject)) => Credential::CertificateSubject {
                subject: subject.clone(),
                issuer: match &args.cert_issuer {
                    Some(issuer) => issuer.clone(),
                    None => ca_subject(loaded)?,
                },
            },
            (None, None) => bail!("tls_client_auth needs --cert FILE or --cert-subject DN"),
        },
        AuthMethod::PrivateKeyJwt => match (&args.jwks, &args.jwks_uri, &args.public_key) {
            (Some(path), _, _) => Credential::Jwks(read_text(path)?),
            (None, Some(uri), _) => Credential::JwksUri(uri.clone()),
            (None, None, Some(pem)) => Credential::PublicKey {
                pem: if pem.trim_start().starts_with("-----BEGIN") {
                    pem.clone()
                } else {
                    read_text(Path::new(pem))?
                },
                alg: args.alg.clone(),
            },
            (None, None, None) => {
                bail!("private_key_jwt needs --jwks FILE, --jwks-uri URL or --public-key PEM")
            }
        },
        AuthMethod::ClientSecretBasic => Credential::Secret { post: false },
        AuthMethod::ClientSecretPost => Credential::Secret { post: true },
        AuthMethod::None => Credential::None,
    })
}

fn client_add(
    args: ClientAdd,
    loaded: &Loaded,
    store: &Store,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let realm = realm_of(args.realm.clone(), loaded)?;
    let credential = credential(&args, loaded)?;
    let request = Registration {
        realm: None,
        client_id: args.client_id,
        scope: args.scope,
        partitions: args.partitions,
        credential,
        redirect_uris: args.redirect_uris,
        launch_url: args.launch_url,
        principal_id: args.principal_id,
        principal_name: args.principal_name,
        person_ids: args.person_ids,
        resource_servers: args.resource_servers,
        accounts: args.accounts,
        subject_name: args.subject_name,
        subject_organization: args.subject_organization,
        subject_organization_id: args.subject_organization_id,
        subject_role: args.subject_role,
        purpose_of_use: args.purpose_of_use,
        home_community_id: args.home_community_id,
        national_provider_identifier: args.national_provider_identifier,
    };
    let Registered { client, secret } =
        register(request, realm.clone()).map_err(|e| anyhow!("--{e}"))?;
    let client_id = client.client_id.clone();
    store.insert_client(&client, now())?;
    writeln!(
        out,
        "registered client '{client_id}' in realm '{realm}' ({})",
        client.auth.method_name()
    )?;
    if let ClientAuth::PrivateKeyJwt(JwksSource::Inline(set)) = &client.auth {
        for key in &set.keys {
            writeln!(
                out,
                "key        kid={} alg={}",
                key.kid.as_deref().unwrap_or("-"),
                key.alg.as_deref().unwrap_or("-")
            )?;
        }
    }
    if let Some(secret) = secret {
        writeln!(out, "client_secret: {secret}")?;
        writeln!(out, "(shown once; only its hash is stored)")?;
    }
    writeln!(
        out,
        "token endpoint: {}{}",
        loaded.public_url(),
        tessera_iam::metadata::endpoint_path(realm.as_str(), "token")
    )?;
    Ok(())
}

fn ca_subject(loaded: &Loaded) -> anyhow::Result<String> {
    let path = loaded.base.join("pki").join(crate::pki::CA_CERT);
    let pem = std::fs::read(&path)
        .with_context(|| format!("cannot read {}; pass --cert-issuer", path.display()))?;
    certificate_subject(&pem).ok_or_else(|| anyhow!("{} is not a PEM certificate", path.display()))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite:///x.db"), "sqlite:///x.db");
    }
}
