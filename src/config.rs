//! Configuration: built-in defaults, then `config/tessera.toml`, then `TESSERA_*`
//! environment variables (`TESSERA_<SECTION>_<KEY>`, e.g. `TESSERA_DATABASE_URL`,
//! `TESSERA_SERVER_LISTEN`), then command-line flags. Unknown keys are errors, so a
//! typo never silently falls back to a default.
//!
//! Relative paths are resolved against the base directory: the directory `tessera init`
//! ran in, i.e. the parent of the `config/` directory holding the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "config/tessera.toml";
const SECTIONS: [&str; 7] = ["server", "database", "tls", "iam", "aim", "vault", "audit"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub tls: TlsConfig,
    pub iam: IamConfig,
    pub aim: AimConfig,
    pub vault: VaultConfig,
    pub audit: AuditConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where each running instance keeps its audit journal (local disk).
    pub journal_dir: PathBuf,
    /// The HOSTNAME of syslog messages. Empty: this machine's host name.
    pub hostname: String,
    /// The hash chain this instance appends to; each instance needs its own. Empty:
    /// `{host name}:{listen port}`.
    pub chain: String,
    /// How often an instance signs a checkpoint of every chain's head (0: never).
    pub checkpoint_seconds: u64,
    /// The CAs that issue the instances' TLS certificates, which sign the checkpoints.
    pub checkpoint_ca: Vec<PathBuf>,
    /// At most this many events a second indexed for the audit repository in the
    /// background, in seconds when this instance appended no more than that (0: only
    /// when an auditor queries).
    pub index_events_per_second: u64,
    /// ITI-20 syslog receivers (`[[audit.syslog]]`), each sent every event.
    #[serde(default)]
    pub syslog: Vec<SyslogConfig>,
    /// Remote audit repositories fed over FHIR (`[[audit.fhir_feed]]`).
    #[serde(default)]
    pub fhir_feed: Vec<FhirFeedConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `host:port` of the receiver (RFC 5425 names port 6514).
    pub address: String,
    /// Names the delivery cursor; keep it when the address changes. Empty: `syslog:{address}`.
    #[serde(default)]
    pub name: String,
    /// The name the receiver's certificate must carry. Empty: the host of `address`.
    #[serde(default)]
    pub server_name: String,
    /// CA bundle the receiver's certificate must chain to.
    #[serde(default = "default_ca")]
    pub ca: PathBuf,
    /// The certificate and key presented to the receiver. Unset: the node's, [tls] cert/key.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// How long to listen for a refusal after connecting and after each send.
    #[serde(default = "default_confirm_ms")]
    pub confirm_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirFeedConfig {
    /// The remote audit repository's FHIR base; batch Bundles are POSTed to it.
    pub url: String,
    /// The token endpoint of the repository's authorization server.
    pub token_url: String,
    pub client_id: String,
    /// Empty: the client authenticates with the node's certificate (mutual TLS).
    #[serde(default)]
    pub client_secret: String,
    #[serde(default = "default_feed_scope")]
    pub scope: String,
    /// Names the delivery cursor. Empty: `fhir:{url}`.
    #[serde(default)]
    pub name: String,
    /// CA bundle trusted for both endpoints. Unset: Mozilla's roots.
    #[serde(default = "default_ca_option")]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl SyslogConfig {
    /// The delivery cursor's name: `name`, or `syslog:{address}`.
    pub fn cursor_name(&self) -> String {
        match self.name.as_str() {
            "" => format!("syslog:{}", self.address),
            name => name.to_owned(),
        }
    }
}

impl FhirFeedConfig {
    /// The delivery cursor's name: `name`, or `fhir:{url}`.
    pub fn cursor_name(&self) -> String {
        match self.name.as_str() {
            "" => format!("fhir:{}", self.url),
            name => name.to_owned(),
        }
    }
}

fn default_ca() -> PathBuf {
    "pki/ca.crt".into()
}

fn default_ca_option() -> Option<PathBuf> {
    Some(default_ca())
}

fn default_confirm_ms() -> u64 {
    100
}

fn default_feed_scope() -> String {
    "system/AuditEvent.c".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The realm whose tokens the FHIR Vault accepts.
    pub realm: String,
    /// The audience the vault requires in tokens. Empty: `{public_url}/fhir`.
    pub audience: String,
    /// Largest request body (a resource or a Bundle), in bytes.
    pub max_body_bytes: usize,
    /// How access tokens are checked.
    pub verify: VerifyMode,
    /// Gateway mode: the ITI-102 endpoint. Empty: this server's own, for `realm`.
    pub introspection_url: String,
    pub introspection_client_id: String,
    /// Better given as TESSERA_VAULT_INTROSPECTION_CLIENT_SECRET than in the file.
    pub introspection_client_secret: String,
    /// CA bundle trusted for the introspection endpoint. Unset: Mozilla's roots.
    pub introspection_ca: Option<PathBuf>,
    /// An active answer is reused until the token's exp, and at most this long.
    pub introspection_cache_seconds: i64,
    /// A finished Bulk Data export (manifest and files) is kept this long.
    pub export_retention_seconds: i64,
    /// Does this instance run queued exports? In a cluster, all instances queue them;
    /// those with `false` leave running them to the others.
    pub export_worker: bool,
    /// An export's NDJSON file holds at most this many resources (and about 16 MiB);
    /// a type with more is split over several files.
    pub export_file_resources: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Signature with the realm's keys from the database, revocation read per request.
    Local,
    /// ITI-102 introspection at an authorization server (gateway mode).
    Introspection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AimConfig {
    /// The realm whose tokens AIM accepts.
    pub realm: String,
    /// The audience AIM requires in tokens. Empty: `{public_url}/aim`.
    pub audience: String,
    /// Account URNs are this prefix followed by the account id.
    pub account_urn_prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How clients reach this server; issuers and endpoint URLs derive from it.
    /// Empty: `https://` + `listen`.
    pub public_url: String,
    pub workers: usize,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Vec<PathBuf>,
    pub crl: Vec<PathBuf>,
    pub crl_refresh_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IamConfig {
    pub default_realm: String,
    pub token_lifetime_seconds: i64,
    pub audiences: Vec<String>,
    pub max_assertion_lifetime_seconds: i64,
    pub clock_skew_seconds: i64,
    pub cache_seconds: i64,
    pub jwks_uri_ca: Option<PathBuf>,
    pub jwks_refresh_min_seconds: i64,
    pub refresh_token_lifetime_seconds: i64,
    pub session_lifetime_seconds: i64,
    pub key_encryption_key_file: String,
    pub key_encryption_key_env: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
                public_url: String::new(),
                workers: 0,
                log_format: LogFormat::Human,
            },
            database: DatabaseConfig {
                url: "sqlite://data/tessera.db".into(),
                max_connections: 8,
            },
            tls: TlsConfig {
                cert: "pki/server.crt".into(),
                key: "pki/server.key".into(),
                client_ca: vec!["pki/ca.crt".into()],
                crl: vec!["pki/ca.crl".into()],
                crl_refresh_seconds: 10,
            },
            iam: IamConfig {
                default_realm: "cara".into(),
                token_lifetime_seconds: 300,
                audiences: Vec::new(),
                max_assertion_lifetime_seconds: 300,
                clock_skew_seconds: 30,
                cache_seconds: 5,
                jwks_uri_ca: None,
                jwks_refresh_min_seconds: 30,
                refresh_token_lifetime_seconds: 30 * 24 * 3600,
                session_lifetime_seconds: 8 * 3600,
                key_encryption_key_file: "pki/signing-keys.kek".into(),
                key_encryption_key_env: String::new(),
            },
            aim: AimConfig {
                realm: "cara".into(),
                audience: String::new(),
                account_urn_prefix: "urn:tessera:account:".into(),
            },
            vault: VaultConfig {
                realm: "cara".into(),
                audience: String::new(),
                max_body_bytes: 8 * 1024 * 1024,
                verify: VerifyMode::Local,
                introspection_url: String::new(),
                introspection_client_id: String::new(),
                introspection_client_secret: String::new(),
                introspection_ca: Some("pki/ca.crt".into()),
                introspection_cache_seconds: 30,
                export_retention_seconds: 3600,
                export_worker: true,
                export_file_resources: 10_000,
            },
            audit: AuditConfig {
                journal_dir: "data/audit-journal".into(),
                hostname: String::new(),
                chain: String::new(),
                checkpoint_seconds: 60,
                checkpoint_ca: vec!["pki/ca.crt".into()],
                index_events_per_second: 500,
                syslog: Vec::new(),
                fhir_feed: Vec::new(),
            },
        }
    }
}

/// The commented file `tessera init` writes: every key, its default, what it does.
/// `the_written_file_equals_the_defaults` keeps it and [`Config::default`] in step.
pub const DEFAULT_TOML: &str = include_str!("../config/tessera.toml");

/// A loaded configuration with the directory its relative paths are relative to.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub base: PathBuf,
    pub file: Option<PathBuf>,
}

impl Loaded {
    pub fn path(&self, relative: &Path) -> PathBuf {
        if relative.is_absolute() {
            relative.to_owned()
        } else {
            self.base.join(relative)
        }
    }

    /// The database URL with a relative SQLite path made absolute.
    pub fn database_url(&self) -> String {
        let url = &self.config.database.url;
        match url.strip_prefix("sqlite://") {
            Some(path) => format!("sqlite://{}", self.path(Path::new(path)).display()),
            None => url.clone(),
        }
    }

    pub fn public_url(&self) -> String {
        let url = self.config.server.public_url.trim_end_matches('/');
        if url.is_empty() {
            format!("https://{}", self.config.server.listen)
        } else {
            url.to_owned()
        }
    }

    pub fn audiences(&self) -> Vec<String> {
        if self.config.iam.audiences.is_empty() {
            vec![self.vault_audience(), self.aim_audience()]
        } else {
            self.config.iam.audiences.clone()
        }
    }

    pub fn vault_audience(&self) -> String {
        match self.config.vault.audience.as_str() {
            "" => format!("{}/fhir", self.public_url()),
            audience => audience.to_owned(),
        }
    }

    /// The delivery cursor's name of each configured ITI-20 destination: syslog ones
    /// first, then FHIR feeds, in configuration order.
    /// This machine's host name, or `audit.hostname` when set.
    pub fn hostname(&self) -> String {
        match self.config.audit.hostname.as_str() {
            "" => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            name => name.to_owned(),
        }
    }

    /// The audit hash chain this instance appends to (`audit.chain`).
    pub fn audit_chain(&self) -> String {
        match self.config.audit.chain.as_str() {
            "" => format!("{}:{}", self.hostname(), self.config.server.listen.port()),
            chain => chain.to_owned(),
        }
    }

    pub fn delivery_names(&self) -> Vec<String> {
        let audit = &self.config.audit;
        audit
            .syslog
            .iter()
            .map(SyslogConfig::cursor_name)
            .chain(audit.fhir_feed.iter().map(FhirFeedConfig::cursor_name))
            .collect()
    }

    pub fn aim_audience(&self) -> String {
        match self.config.aim.audience.as_str() {
            "" => format!("{}/aim", self.public_url()),
            audience => audience.to_owned(),
        }
    }
}

/// Loads the configuration. `file` given: it must exist. Not given: `config/tessera.toml`
/// under the current directory if present, else the defaults.
pub fn load(file: Option<&Path>) -> anyhow::Result<Loaded> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let file = match file {
        Some(f) => {
            let f = cwd.join(f);
            anyhow::ensure!(
                f.is_file(),
                "the configuration file {} does not exist",
                f.display()
            );
            Some(f)
        }
        None => Some(cwd.join(CONFIG_FILE)).filter(|f| f.is_file()),
    };
    let base = match &file {
        Some(f) => base_of(f),
        None => cwd,
    };
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(f) = &file {
        figment = figment.merge(Toml::file_exact(f));
    }
    let env = Env::prefixed("TESSERA_")
        // Keys arrive here upper-case; figment lowercases them only afterwards.
        .filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|s| key.starts_with(&format!("{s}_")))
        })
        .map(|key| key.as_str().replacen('_', ".", 1).into());
    let config: Config = figment.merge(env).extract().map_err(|e| {
        let source = file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        anyhow::anyhow!("invalid configuration ({source} and TESSERA_* variables): {e}")
    })?;
    Ok(Loaded { config, base, file })
}

fn base_of(file: &Path) -> PathBuf {
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "config") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_file_equals_the_defaults() {
        let from_file: Config = Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap();
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(&from_file).unwrap(),
            serde_json::to_value(&defaults).unwrap()
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let result: Result<Config, _> = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(
                "[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n",
            ))
            .extract();
        assert!(result.is_err());
    }

    #[test]
    fn base_is_the_parent_of_config() {
        assert_eq!(
            base_of(Path::new("/srv/t/config/tessera.toml")),
            PathBuf::from("/srv/t")
        );
        assert_eq!(
            base_of(Path::new("/etc/tessera.toml")),
            PathBuf::from("/etc")
        );
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;

    #[test]
    // figment's Jail closure must return figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    fn environment_variables_override_by_section() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TESSERA_SERVER_LISTEN", "127.0.0.1:9555");
            jail.set_env("TESSERA_DATABASE_URL", "postgres://x@y/z");
            jail.set_env("TESSERA_IAM_CACHE_SECONDS", "7");
            jail.set_env("TESSERA_TEST_DATABASE", "postgres");
            let loaded = load(None).map_err(|e| e.to_string())?;
            assert_eq!(loaded.config.server.listen.port(), 9555);
            assert_eq!(loaded.config.database.url, "postgres://x@y/z");
            assert_eq!(loaded.config.iam.cache_seconds, 7);
            Ok(())
        });
    }
}
