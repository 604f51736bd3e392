//! The HTTP surface: actix-web over rustls, the routes of DESIGN.md, extraction of
//! credentials from requests and TLS connections, and the mapping of domain errors to
//! statuses ([`error`]). Handlers parse, call the domain, and format; the decisions are
//! made in the domain crates. Blocking work (database) runs on the blocking pool.

#![forbid(unsafe_code)]

mod aim_routes;
pub mod audit;
mod audit_routes;
pub mod bearer;
mod capped;
pub mod chain_check;
pub mod checkpoint;
pub mod console;
mod cors;
pub mod error;
mod export_routes;
mod iam_routes;
pub mod ids;
pub mod metrics;
mod pages;
pub mod peer;
pub mod tls;
mod vault_routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context as _;
use serde_json::json;
use tessera_iam::TokenService;
use tessera_store::Store;
use tessera_types::UnixTime;

pub use crate::audit_routes::RepositorySettings;
pub use crate::error::ApiError;
pub use crate::export_routes::ExportSettings;
use crate::metrics::Metrics;
use crate::tls::TlsSettings;
pub use crate::vault_routes::VaultState;

/// The services `tessera serve --only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Services {
    pub iam: bool,
    pub aim: bool,
    pub vault: bool,
    /// The audit repository (ITI-81 query, ITI-20 FHIR feed).
    pub atna: bool,
}

impl Services {
    pub const NAMES: [&'static str; 4] = ["iam", "aim", "vault", "atna"];

    pub fn all() -> Self {
        Self {
            iam: true,
            aim: true,
            vault: true,
            atna: true,
        }
    }

    /// The names of the selected services.
    pub fn names(self) -> Vec<&'static str> {
        let selected = [self.iam, self.aim, self.vault, self.atna];
        Self::NAMES
            .iter()
            .zip(selected)
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Parses a comma-separated list such as `iam,aim`.
    pub fn parse(list: &str) -> anyhow::Result<Self> {
        let mut services = Self {
            iam: false,
            aim: false,
            vault: false,
            atna: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "iam" => services.iam = true,
                "aim" => services.aim = true,
                "vault" => services.vault = true,
                "atna" => services.atna = true,
                other => anyhow::bail!(
                    "unknown or not yet available service '{other}'; available: {}",
                    Self::NAMES.join(", ")
                ),
            }
        }
        Ok(services)
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// 0: one worker per core.
    pub workers: usize,
    pub tls: TlsSettings,
    pub services: Services,
}

/// What every handler shares.
pub struct AppState {
    pub tokens: TokenService<Store>,
    /// Durable audit trail: handlers append before they answer.
    pub audit: tessera_store::AuditWriter,
    pub aim: AimSettings,
    pub vault: VaultState,
    pub repository: RepositorySettings,
    pub introspection: tessera_introspection::Introspection,
    pub store: Store,
    pub metrics: Metrics,
    pub pages: PageSettings,
    /// The browser origins allowed cross-origin (from registered redirect URIs).
    pub cors: cors::Origins,
    /// The console's background check of the audit chain.
    pub chain_check: chain_check::ChainCheck,
}

/// Settings of the pages people use (login, consent, account).
#[derive(Debug, Clone)]
pub struct PageSettings {
    /// How long a login lasts (and so `online_access` refresh tokens).
    pub session_lifetime_seconds: i64,
}

/// Where AIM takes its tokens from and how it names accounts.
#[derive(Debug, Clone)]
pub struct AimSettings {
    pub realm: tessera_types::RealmName,
    pub audience: String,
    pub account_prefix: String,
    /// `{public_url}`: the audit records name AIM's endpoints under it.
    pub public_base: String,
}

/// Loads the realm (from cache when fresh); unknown realms are 404.
pub(crate) async fn realm_state(
    state: &web::Data<AppState>,
    name: &str,
) -> Result<Arc<tessera_iam::RealmState>, ApiError> {
    let realm = tessera_types::RealmName::try_from(name)
        .map_err(|_| ApiError::UnknownRealm(name.to_owned()))?;
    let at = now();
    if let Some(cached) = state.tokens.cached_realm(&realm, at) {
        return Ok(cached);
    }
    let st = state.clone().into_inner();
    let found = blocking(move || st.tokens.realm(&realm, at)).await??;
    found.ok_or_else(|| ApiError::UnknownRealm(name.to_owned()))
}

/// Runs blocking domain work (it may read the database) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    web::block(work)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Runs a short database read (rows by key, nothing written) where it is cheapest: on
/// this thread when the store can read at once ([`Store::reads_at_once`]: SQLite with
/// an idle connection), else on the blocking pool. Measured on a vault read: +25%.
pub(crate) async fn read<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    if state.store.reads_at_once() {
        Ok(work())
    } else {
        blocking(work).await
    }
}

/// The media type of a request body (RFC 9110 8.3.1): the `Content-Type` before any
/// parameter, trimmed and lowercased. Compared exactly, never by prefix.
pub(crate) fn media_type(req: &actix_web::HttpRequest) -> Option<String> {
    let value = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

/// Is the request body a form (`application/x-www-form-urlencoded`, any parameters)?
pub(crate) fn is_form(req: &actix_web::HttpRequest) -> bool {
    media_type(req).as_deref() == Some("application/x-www-form-urlencoded")
}

/// The pairs of an `application/x-www-form-urlencoded` body, as `url::form_urlencoded`
/// parses them (empty pairs skipped, a name without `=` has an empty value, invalid UTF-8
/// replaced). A name or value with neither `%` nor `+` (a token, most ids) is taken as
/// it is; the body is split and scanned with memchr, a word at a time: decoding an
/// introspected token byte by byte was 10% of the introspection's instructions, and
/// scanning it so 8%.
pub(crate) fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(part: &[u8]) -> String {
        if memchr::memchr2(b'%', b'+', part).is_none() {
            return match std::str::from_utf8(part) {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(part).into_owned(),
            };
        }
        let spaced: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    }
    let mut pairs = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let end = memchr::memchr(b'&', rest).unwrap_or(rest.len());
        let pair = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        if pair.is_empty() {
            continue;
        }
        pairs.push(match memchr::memchr(b'=', pair) {
            Some(at) => (decode(&pair[..at]), decode(&pair[at + 1..])),
            None => (decode(pair), String::new()),
        });
    }
    pairs
}

/// The wall clock in seconds, read here at the edge and passed into the domain.
pub fn now() -> UnixTime {
    UnixTime(now_ms().div_euclid(1000))
}

/// The wall clock in milliseconds (FHIR `lastUpdated`, time-ordered ids): the one
/// place Tessera reads it.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A server that is listening; `server` must be awaited (or its handle stopped).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub server: actix_web::dev::Server,
}

/// Binds and starts the server. Must be called inside an actix system (`#[actix_web::main]`
/// or `actix_web::rt::System`), which also runs its background tasks.
pub fn start(state: Arc<AppState>, settings: &ServerSettings) -> anyhow::Result<RunningServer> {
    let (tls_config, verifier) = tls::server_config(&settings.tls)?;
    let data = web::Data::from(state.clone());
    let services = settings.services;
    let max_body = state.vault.max_body_bytes;
    let described = Arc::new(peer::Described::default());
    let mut server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(cors::middleware))
            .route("/healthz", web::get().to(healthz))
            .route("/metrics", web::get().to(metrics))
            .default_service(web::to(not_found));
        // actix tries the services in this order, each dynamic path by a regex: AIM's
        // paths are static and the vault is one scope, so they go before the IAM's many
        // `/realms/{realm}/...` resources (a vault read tried 19 patterns before its
        // own, 9% of its instructions; a token now tries one more, the vault's scope).
        if services.aim {
            app = app.configure(aim_routes::configure);
        }
        if services.vault {
            app = app.configure(|cfg| vault_routes::configure(cfg, max_body));
        }
        if services.iam {
            app = app
                .configure(iam_routes::configure)
                .configure(pages::configure);
        }
        if services.atna {
            app = app
                .configure(|cfg| audit_routes::configure(cfg, max_body))
                .configure(console::configure);
        }
        app
    })
    .on_connect(move |connection, data| peer::on_connect(&described, connection, data))
    .client_request_timeout(Duration::from_secs(10));
    if settings.workers > 0 {
        server = server.workers(settings.workers);
    }
    let server = server
        .bind_rustls_0_23(settings.listen, tls_config)
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .context("the server has no listening address")?;
    let server = server.run();

    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(verifier.refresh_interval());
        loop {
            tick.tick().await;
            let verifier = verifier.clone();
            match web::block(move || verifier.refresh()).await {
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not reload the CRLs; the previous ones stay in force")
                }
                Err(e) => tracing::error!(error = %e, "CRL reload task failed"),
                Ok(Ok(_)) => {}
            }
        }
    });
    if services.vault && state.vault.exports.worker {
        export_routes::spawn_worker(state.clone());
    }
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let state = state.clone();
            if let Ok(Err(e)) = web::block(move || state.store.purge_expired(now())).await {
                tracing::warn!(error = %e, "could not purge expired assertion ids");
            }
        }
    });
    Ok(RunningServer { addr, server })
}

async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    web::block(move || store.ping())
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .map_err(|e| ApiError::Unavailable(e.0))?;
    Ok(HttpResponse::Ok().json(json!({ "status": "ok", "database": state.store.backend() })))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render() + &metrics::render_journal(&state.audit.stats()))
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "error": "not_found" }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_pairs_are_what_url_parses() {
        let bodies: [&[u8]; 16] = [
            b"",
            b"&",
            b"=&=",
            b"&&a&",
            b"x=\xc3\xbc\xff&\xff",
            b"grant_type=client_credentials&client_id=tcu",
            b"token=eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJ4In0.c2ln&client_id=gateway",
            b"scope=a+b%2Bc&name=J%C3%BCrg",
            b"a=1&&b=2&",
            b"flag&x=",
            b"=v&k=a=b==",
            b"bad=%zz%4&pct=%",
            b"utf8=%FF%FE&raw=\xff",
            b"sp+ace+name=+",
            b"client_assertion=a.b.c%3D%3D&client_secret=s%26t",
            b"%26=%3D&%2B=%20",
        ];
        for body in bodies {
            let expected: Vec<(String, String)> =
                url::form_urlencoded::parse(body).into_owned().collect();
            assert_eq!(super::form_pairs(body), expected, "{body:?}");
        }
    }
}
