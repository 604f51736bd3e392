//! `tessera serve`: assemble the application from the configuration and run it.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tessera_http::checkpoint::{CheckpointSigner, CheckpointVerifier};
use tessera_http::metrics::Metrics;
use tessera_http::tls::TlsSettings;
use tessera_http::{AimSettings, AppState, ServerSettings, Services, VaultState};
use tessera_iam::{IamSettings, TokenService};
use tessera_outbound::jwks::HttpJwksFetcher;
use tessera_store::JournalStats;

use crate::config::{Loaded, LogFormat, VerifyMode};
use tessera_outbound::delivery::{
    Deliveries, Destination, FhirFeedSettings, SyslogSettings, TransportSettings,
};
use tessera_outbound::gateway::Introspector;

/// The shared application state: database, token service, metrics.
pub fn app_state(loaded: &Loaded) -> anyhow::Result<Arc<AppState>> {
    let store = crate::cli::open_store(loaded)?;
    let plain = store.plain_keys()?;
    if plain > 0 && store.kek_id().is_some() {
        tracing::warn!(
            plain,
            "realm private keys are stored unencrypted: `tessera keys rewrap` encrypts them"
        );
    }
    // Installations from before id_tokens get their realms' RS256 id_token key now.
    for realm in store.list_realms()? {
        if let Some(kid) = crate::cli::ensure_id_token_key(&store, &realm.name, crate::cli::now())?
        {
            tracing::info!(realm = %realm.name, %kid, "created an RS256 id_token key");
        }
    }
    ensure_console_client(&store, loaded)?;
    let iam = &loaded.config.iam;
    let fetcher = HttpJwksFetcher::new(
        iam.jwks_uri_ca
            .as_deref()
            .map(|p| loaded.path(p))
            .as_deref(),
        iam.jwks_refresh_min_seconds,
    )?;
    let settings = IamSettings {
        public_base_url: loaded.public_url(),
        audiences: loaded.audiences(),
        max_assertion_lifetime_seconds: iam.max_assertion_lifetime_seconds,
        clock_skew_seconds: iam.clock_skew_seconds,
        cache_seconds: iam.cache_seconds,
        refresh_token_lifetime_seconds: iam.refresh_token_lifetime_seconds,
    };
    let aim = AimSettings {
        realm: tessera_types::RealmName::try_from(loaded.config.aim.realm.as_str())
            .map_err(|e| anyhow::anyhow!("aim.realm: {e}"))?,
        audience: loaded.aim_audience(),
        account_prefix: loaded.config.aim.account_urn_prefix.clone(),
        public_base: loaded.public_url(),
    };
    let vault_realm = loaded.config.vault.realm.as_str();
    let issuer = format!(
        "{}{}",
        loaded.public_url(),
        tessera_iam::metadata::realm_path(vault_realm)
    );
    let vault = VaultState {
        fhir: tessera_vault::Vault::new().map_err(|e| anyhow::anyhow!(e))?,
        realm: tessera_types::RealmName::try_from(vault_realm)
            .map_err(|e| anyhow::anyhow!("vault.realm: {e}"))?,
        audience: loaded.vault_audience(),
        base: format!("{}/fhir", loaded.public_url()),
        auth: tessera_vault::capability::AuthServer {
            token_endpoint: tessera_iam::metadata::endpoint(&issuer, "token"),
            introspection_endpoint: tessera_iam::metadata::endpoint(&issuer, "token/introspect"),
            revocation_endpoint: tessera_iam::metadata::endpoint(&issuer, "revoke"),
            authorization_endpoint: tessera_iam::metadata::endpoint(&issuer, "auth"),
            jwks_uri: tessera_iam::metadata::endpoint(&issuer, "certs"),
            issuer,
        },
        max_body_bytes: loaded.config.vault.max_body_bytes,
        introspector: gateway(loaded)?,
        exports: tessera_http::ExportSettings::new(
            loaded.config.vault.export_retention_seconds,
            loaded.config.vault.export_worker,
            loaded.config.vault.export_file_resources,
        ),
    };
    let repository = tessera_http::RepositorySettings {
        realm: vault.realm.clone(),
        audience: vault.audience.clone(),
        public_url: loaded.public_url().trim_end_matches('/').to_owned(),
        introspector: vault.introspector.clone(),
    };
    Ok(Arc::new(AppState {
        vault,
        repository,
        tokens: TokenService::new(store.clone(), Arc::new(fetcher), settings),
        audit: tessera_store::AuditWriter::start(
            store.clone(),
            &loaded.path(&loaded.config.audit.journal_dir),
        )
        .map_err(|e| anyhow::anyhow!("{}", e.0))?,
        aim,
        introspection: tessera_introspection::Introspection::new(),
        store,
        metrics: Metrics::default(),
        pages: tessera_http::PageSettings {
            session_lifetime_seconds: iam.session_lifetime_seconds,
        },
        cors: Default::default(),
        chain_check: tessera_http::chain_check::ChainCheck::new(checkpoint_verifier(loaded)?),
    }))
}

/// Checks checkpoint signatures against `audit.checkpoint_ca`.
pub fn checkpoint_verifier(loaded: &Loaded) -> anyhow::Result<CheckpointVerifier> {
    let ca: Vec<_> = loaded
        .config
        .audit
        .checkpoint_ca
        .iter()
        .map(|p| loaded.path(p))
        .collect();
    CheckpointVerifier::load(&ca).context("audit.checkpoint_ca")
}

/// The audit trail's background jobs: every `audit.checkpoint_seconds` a checkpoint of
/// every chain's head signed with the instance's TLS key (and once more when stopped,
/// after the node's stop is recorded); every second, up to
/// `audit.index_events_per_second` events indexed for the audit repository, so an
/// auditor's query does not wait for all the trail gained since the last one. The
/// indexer skips a second in which this instance appended more events than that: the
/// index would fall behind anyway, and at full load indexing took 12% of the token
/// rate (bench/ab.sh); the next query catches up instead, and the indexer resumes when
/// the load falls.
pub struct Background {
    _checkpoints: Option<Periodic>,
    _indexer: Option<Periodic>,
}

impl Background {
    /// `journal`: the instance's audit journal counters (how fast it appends).
    pub fn start(
        loaded: &Loaded,
        store: tessera_store::Store,
        journal: Arc<JournalStats>,
    ) -> anyhow::Result<Self> {
        let audit = &loaded.config.audit;
        let checkpoints = match audit.checkpoint_seconds {
            0 => None,
            seconds => {
                let tls = &loaded.config.tls;
                let signer =
                    CheckpointSigner::load(&loaded.path(&tls.cert), &loaded.path(&tls.key))
                        .context("the checkpoints are signed with [tls] cert and key")?;
                let store = store.clone();
                Some(Periodic::every(
                    "audit-checkpoint",
                    Duration::from_secs(seconds),
                    true,
                    move || match store
                        .write_audit_checkpoint(tessera_http::now(), &|c| signer.sign(c))
                    {
                        Ok(Some(n)) => tracing::debug!(n, "audit checkpoint signed"),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e.0, "cannot write an audit checkpoint; retrying")
                        }
                    },
                )?)
            }
        };
        let indexer = match audit.index_events_per_second {
            0 => None,
            limit => {
                let appended = move || journal.records.load(Ordering::Relaxed);
                let mut seen = appended();
                let index = move || {
                    let now = appended();
                    let recent = now.saturating_sub(seen);
                    seen = now;
                    if recent > limit {
                        return;
                    }
                    if let Err(e) = store.index_audit_repository(limit) {
                        tracing::warn!(error = %e.0, "cannot index the audit repository; retrying");
                    }
                };
                Some(Periodic::every(
                    "audit-indexer",
                    Duration::from_secs(1),
                    false,
                    index,
                )?)
            }
        };
        Ok(Self {
            _checkpoints: checkpoints,
            _indexer: indexer,
        })
    }
}

/// A job run on a thread of its own every `period` until dropped (and once more then,
/// if `at_stop`).
struct Periodic {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Periodic {
    /// `name` names the thread (what `top -H` and the benchmarks' accounts by thread show).
    fn every(
        name: &str,
        period: Duration,
        at_stop: bool,
        mut job: impl FnMut() + Send + 'static,
    ) -> anyhow::Result<Self> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                let waited = stopped.recv_timeout(period);
                let stopping = !matches!(waited, Err(std::sync::mpsc::RecvTimeoutError::Timeout));
                if !stopping || at_stop {
                    job();
                }
                if stopping {
                    break;
                }
            });
        let thread = thread.with_context(|| format!("cannot start the {name} thread"))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The vault's introspection client in gateway mode (`vault.verify = "introspection"`).
fn gateway(loaded: &Loaded) -> anyhow::Result<Option<Arc<Introspector>>> {
    let vault = &loaded.config.vault;
    if vault.verify == VerifyMode::Local {
        return Ok(None);
    }
    anyhow::ensure!(
        !vault.introspection_client_id.is_empty() && !vault.introspection_client_secret.is_empty(),
        "vault.verify = \"introspection\" needs vault.introspection_client_id and \
         vault.introspection_client_secret (or TESSERA_VAULT_INTROSPECTION_CLIENT_SECRET): \
         a client of the authorization server with the scope `introspection`"
    );
    let url = match vault.introspection_url.as_str() {
        "" => format!(
            "{}{}",
            loaded.public_url(),
            tessera_iam::metadata::endpoint_path(&vault.realm, "token/introspect")
        ),
        url => url.to_owned(),
    };
    let introspector = Introspector::new(
        url,
        &vault.introspection_client_id,
        &tessera_types::Secret::new(vault.introspection_client_secret.clone()),
        vault
            .introspection_ca
            .as_deref()
            .map(|p| loaded.path(p))
            .as_deref(),
        vault.introspection_cache_seconds,
    )?;
    Ok(Some(Arc::new(introspector)))
}

pub fn server_settings(loaded: &Loaded, services: Services) -> ServerSettings {
    let tls = &loaded.config.tls;
    ServerSettings {
        listen: loaded.config.server.listen,
        workers: loaded.config.server.workers,
        tls: TlsSettings {
            cert: loaded.path(&tls.cert),
            key: loaded.path(&tls.key),
            client_ca: tls.client_ca.iter().map(|p| loaded.path(p)).collect(),
            crl: tls.crl.iter().map(|p| loaded.path(p)).collect(),
            crl_refresh: Duration::from_secs(tls.crl_refresh_seconds.max(1)),
        },
        services,
    }
}

/// Starts delivering the trail to the ITI-20 destinations of `[audit]`.
pub fn deliveries(loaded: &Loaded, store: tessera_store::Store) -> anyhow::Result<Deliveries> {
    let audit = &loaded.config.audit;
    let tls = &loaded.config.tls;
    let node_cert = |cert: &Option<std::path::PathBuf>, key: &Option<std::path::PathBuf>| {
        (
            loaded.path(cert.as_deref().unwrap_or(&tls.cert)),
            loaded.path(key.as_deref().unwrap_or(&tls.key)),
        )
    };
    let hostname = loaded.hostname();
    let sender = tessera_atna::syslog::Sender {
        hostname: hostname.clone(),
        app_name: "tessera".into(),
        procid: std::process::id().to_string(),
    };
    let mut destinations = Vec::new();
    for syslog in &audit.syslog {
        let (cert, key) = node_cert(&syslog.cert, &syslog.key);
        let host = syslog
            .address
            .rsplit_once(':')
            .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
            .with_context(|| {
                format!("audit.syslog address {:?} is not host:port", syslog.address)
            })?;
        destinations.push(Destination {
            name: syslog.cursor_name(),
            transport: TransportSettings::Syslog(SyslogSettings {
                address: syslog.address.clone(),
                server_name: match syslog.server_name.as_str() {
                    "" => host.to_owned(),
                    name => name.to_owned(),
                },
                ca: loaded.path(&syslog.ca),
                cert,
                key,
                confirm: Duration::from_millis(syslog.confirm_ms),
                sender: sender.clone(),
            }),
        });
    }
    for feed in &audit.fhir_feed {
        let (cert, key) = node_cert(&feed.cert, &feed.key);
        destinations.push(Destination {
            name: feed.cursor_name(),
            transport: TransportSettings::Fhir(FhirFeedSettings {
                url: feed.url.clone(),
                token_url: feed.token_url.clone(),
                client_id: feed.client_id.clone(),
                client_secret: tessera_types::Secret::new(feed.client_secret.clone()),
                scope: feed.scope.clone(),
                ca: feed.ca.as_deref().map(|p| loaded.path(p)),
                cert,
                key,
            }),
        });
    }
    let owner = format!(
        "{hostname}/{}/{}",
        std::process::id(),
        tessera_http::ids::random_id().unwrap_or_default()
    );
    tessera_outbound::delivery::start(store, &destinations, &owner, tessera_http::now)
}

/// Records the node's start or stop (ATNA Application Activity), durably.
async fn node_activity(state: &AppState, node: &str, started: bool) -> anyhow::Result<()> {
    let record = tessera_http::audit::new_record(
        tessera_http::now(),
        node,
        None,
        tessera_atna::Outcome::Success,
        tessera_atna::Event::ApplicationActivity {
            started,
            node: node.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    )?;
    state.audit.submit(record).await.map_err(|e| {
        anyhow::anyhow!(
            "the node's {} could not be audited: {}",
            if started { "start" } else { "stop" },
            e.0
        )
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// The audit console signs in as a public client of the audit repository's realm
/// (`tessera-console`, redirect URI `{public_url}/console/callback`). Registered here,
/// once, so every installation has it; an operator may disable it like any client.
fn ensure_console_client(store: &tessera_store::Store, loaded: &Loaded) -> anyhow::Result<()> {
    use tessera_http::console::{redirect_uri, CLIENT_ID, CLIENT_SCOPES};
    let realm = tessera_types::RealmName::try_from(loaded.config.vault.realm.as_str())
        .map_err(|e| anyhow::anyhow!("vault.realm: {e}"))?;
    let id = tessera_types::ClientId::try_from(CLIENT_ID).map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = tessera_iam::client::first_party_public(
        realm.clone(),
        id,
        tessera_types::ScopeSet::parse(CLIENT_SCOPES).map_err(|e| anyhow::anyhow!("{e}"))?,
        redirect_uri(&loaded.public_url()),
    );
    match store.insert_client(&client, crate::cli::now()) {
        Ok(()) => {
            tracing::info!(%realm, client_id = CLIENT_ID, "registered the audit console's client");
            Ok(())
        }
        // Registered before (by this or another instance), or the realm is not created yet.
        Err(
            tessera_store::AddClientError::Exists(_) | tessera_store::AddClientError::NoRealm(_),
        ) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn run(loaded: Loaded, services: Services, out: &mut dyn Write) -> anyhow::Result<()> {
    init_logging(loaded.config.server.log_format);
    let settings = server_settings(&loaded, services);
    let state = app_state(&loaded)?;
    let deliveries = deliveries(&loaded, state.store.clone())?;
    let background = Background::start(&loaded, state.store.clone(), state.audit.stats())?;
    actix_web::rt::System::new().block_on(async move {
        let running = tessera_http::start(state.clone(), &settings).with_context(|| {
            format!(
                "cannot start the server; check [server] listen ({}) and the [tls] files, or run `tessera init`",
                settings.listen
            )
        })?;
        let base = loaded.public_url();
        writeln!(out, "Tessera listening on https://{}", running.addr)?;
        if let Some(file) = &loaded.file {
            writeln!(out, "  configuration {}", file.display())?;
        }
        writeln!(out, "  database      {}", state.store.backend())?;
        writeln!(out, "  services      {}, healthz, metrics", services.names().join(", "))?;
        if services.iam {
            let realm = &loaded.config.iam.default_realm;
            let token = tessera_iam::metadata::endpoint_path(realm, "token");
            writeln!(out, "  token         {base}{token}")?;
            writeln!(out, "  discovery     {base}/.well-known/oauth-authorization-server/realms/{realm}")?;
        }
        if services.aim {
            writeln!(out, "  aim           {base}/aim/api/v1/query/get-account-urn-from-mpi-id-urn")?;
        }
        if services.atna {
            writeln!(out, "  audit         {base}/audit/fhir/AuditEvent  (ITI-81 query, ITI-20 FHIR feed)")?;
            writeln!(out, "  console       {base}/console  (the audit trail in the browser)")?;
        }
        if services.vault {
            writeln!(out, "  fhir vault    {base}/fhir/{{partition}}  (CapabilityStatement: {base}/fhir/{{partition}}/metadata)")?;
        }
        out.flush()?;
        node_activity(&state, &base, true).await?;
        let stopped = running.server.await.context("the server stopped with an error");
        node_activity(&state, &base, false).await?;
        drop(deliveries);
        drop(background);
        stopped
    })
}
