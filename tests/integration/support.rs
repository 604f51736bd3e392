//! The test harness: a fresh directory set up by the real `tessera init`, a fresh
//! database (a SQLite file, or a new PostgreSQL database when
//! `TESSERA_TEST_DATABASE=postgres`), the real server started in-process on a free port,
//! and an HTTPS client with the development CA and optional client certificates.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use diesel::{Connection, RunQueryDsl};
use serde_json::Value;
use tessera_http::Services;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// The MPI-IDs of the two patients the suites set up (partitions `pa` and `pb`).
pub const MPI_A: &str =
    "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1";
pub const MPI_B: &str =
    "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/7d1e9a2c-0c1f-4f5e-8b44-2a9d3c1e5f60";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

pub fn postgres_admin_url() -> String {
    std::env::var("TESSERA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn on_postgres() -> bool {
    std::env::var("TESSERA_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// A PostgreSQL database made for one test and dropped after it.
struct PgDatabase {
    name: String,
}

impl PgDatabase {
    fn create() -> (Self, String) {
        let name = unique("tessera_t");
        let mut admin = diesel::PgConnection::establish(&postgres_admin_url())
            .expect("PostgreSQL is not reachable");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .unwrap();
        let admin_url = postgres_admin_url();
        let base = admin_url.rsplit_once('/').unwrap().0;
        (Self { name: name.clone() }, format!("{base}/{name}"))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = diesel::PgConnection::establish(&postgres_admin_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

/// A directory with a Tessera installation in it, and its database.
pub struct Env {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    _db: Option<PgDatabase>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Env {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("tessera-it"));
        std::fs::create_dir_all(&dir).unwrap();
        let (db, url) = if on_postgres() {
            let (db, url) = PgDatabase::create();
            (Some(db), Some(url))
        } else {
            (None, None)
        };
        let mut args = vec![
            "init".to_string(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        if let Some(url) = &url {
            args.extend(["--database-url".into(), url.clone()]);
        }
        run_cli(&args).unwrap();
        let config = dir.join("config/tessera.toml");
        let port = free_port();
        let env = Self {
            dir,
            config,
            port,
            _db: db,
        };
        // Test-speed settings: quick CRL reloads, no client cache, the dev CA for jwks_uri.
        env.configure(|c| {
            c.server.listen = SocketAddr::from(([127, 0, 0, 1], port));
            c.server.workers = 2;
            c.tls.crl_refresh_seconds = 1;
            c.iam.cache_seconds = 0;
            c.iam.jwks_uri_ca = Some("pki/ca.crt".into());
            c.iam.jwks_refresh_min_seconds = 0;
        });
        env
    }

    /// Issues a certificate named `client_id` and registers it as a `tls_client_auth`
    /// client with `extra` arguments (scope, ...); returns (certificate, key) paths.
    pub fn add_mtls_client(&self, client_id: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let (crt, key) = self.issue_client(client_id);
        let cert = crt.to_str().unwrap().to_owned();
        let mut args = vec![
            "client",
            "add",
            "--client-id",
            client_id,
            "--auth",
            "tls_client_auth",
            "--cert",
            &cert,
        ];
        args.extend_from_slice(extra);
        self.cli(&args).unwrap();
        (crt, key)
    }

    /// Registers a `private_key_jwt` client from `key`'s public key (written as PEM, as a
    /// client hands it to the operator) with the key's algorithm; returns what the CLI printed.
    pub fn add_key_client(
        &self,
        client_id: &str,
        key: &tessera_iam::jose::SigningKey,
        scope: &str,
    ) -> String {
        let pem = self.path(&format!("{client_id}.pub.pem"));
        std::fs::write(
            &pem,
            tessera_iam::pem::jwk_to_pem(&key.public_jwk()).unwrap(),
        )
        .unwrap();
        self.cli(&[
            "client",
            "add",
            "--client-id",
            client_id,
            "--auth",
            "private_key_jwt",
            "--public-key",
            pem.to_str().unwrap(),
            "--alg",
            key.alg().name(),
            "--scope",
            scope,
        ])
        .unwrap()
    }

    /// Runs `tessera account add` for `mpi` with its partition named `partition`; returns
    /// the Account URN it printed.
    pub fn add_account(&self, mpi: &str, partition: &str) -> String {
        let printed = self
            .cli(&[
                "account",
                "add",
                "--mpi-id",
                mpi,
                "--partition-name",
                partition,
            ])
            .unwrap();
        printed
            .lines()
            .find_map(|l| l.strip_prefix("account").map(str::trim))
            .expect("the Account URN is printed")
            .to_owned()
    }

    /// Runs `tessera client add ARGS...` for a secret client; returns the secret it printed.
    pub fn add_secret_client(&self, args: &[&str]) -> String {
        let mut full = vec!["client", "add"];
        full.extend_from_slice(args);
        let printed = self.cli(&full).unwrap();
        printed
            .lines()
            .find_map(|l| l.strip_prefix("client_secret: "))
            .expect("the secret is printed once")
            .to_owned()
    }

    /// Registers a `client_secret_post` client with `register` arguments (scope,
    /// partitions, ...) and returns a token for it, asked with the extra `form` fields.
    pub fn secret_token(
        &self,
        client_id: &str,
        register: &[&str],
        form: &[(&str, &str)],
    ) -> String {
        let mut args = vec!["--client-id", client_id, "--auth", "client_secret_post"];
        args.extend_from_slice(register);
        let secret = self.add_secret_client(&args);
        let mut request = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret.as_str()),
        ];
        request.extend_from_slice(form);
        let reply = Client::new(self, None).token(&request);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["access_token"].as_str().unwrap().to_owned()
    }

    /// Runs a SQL statement on this installation's database, as an attacker with
    /// database access would (for tamper tests).
    pub fn sql(&self, statement: &str) -> usize {
        let url = self.loaded().database_url();
        match url.strip_prefix("sqlite://") {
            Some(path) => {
                let mut conn = diesel::SqliteConnection::establish(path).unwrap();
                // The running server writes too (its audit drainer): wait for the lock
                // as the server's own connections do.
                diesel::sql_query("PRAGMA busy_timeout = 5000")
                    .execute(&mut conn)
                    .unwrap();
                diesel::sql_query(statement).execute(&mut conn).unwrap()
            }
            None => {
                let mut conn = diesel::PgConnection::establish(&url).unwrap();
                diesel::sql_query(statement).execute(&mut conn).unwrap()
            }
        }
    }

    /// Runs several SQL statements (a migration's script) on this installation's database.
    pub fn sql_script(&self, script: &str) {
        use diesel::connection::SimpleConnection as _;
        let url = self.loaded().database_url();
        match url.strip_prefix("sqlite://") {
            Some(path) => diesel::SqliteConnection::establish(path)
                .unwrap()
                .batch_execute(script)
                .unwrap(),
            None => diesel::PgConnection::establish(&url)
                .unwrap()
                .batch_execute(script)
                .unwrap(),
        }
    }

    /// The text values a SQL query selects (one column named `value`).
    pub fn sql_values(&self, query: &str) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            value: String,
        }
        let url = self.loaded().database_url();
        let rows: Vec<Row> = match url.strip_prefix("sqlite://") {
            Some(path) => {
                let mut conn = diesel::SqliteConnection::establish(path).unwrap();
                diesel::sql_query(query).load(&mut conn).unwrap()
            }
            None => {
                let mut conn = diesel::PgConnection::establish(&url).unwrap();
                diesel::sql_query(query).load(&mut conn).unwrap()
            }
        };
        rows.into_iter().map(|r| r.value).collect()
    }

    /// Changes the configuration (before the server starts) through its typed form:
    /// the file is read as `tessera serve` reads it and written back whole.
    pub fn configure(&self, change: impl FnOnce(&mut tessera::config::Config)) {
        let mut loaded = tessera::config::load(Some(&self.config)).unwrap();
        change(&mut loaded.config);
        std::fs::write(&self.config, toml::to_string(&loaded.config).unwrap()).unwrap();
    }

    /// Runs `tessera --config <this env> ARGS...` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["--config".to_string(), self.config.display().to_string()];
        full.extend(args.iter().map(|a| a.to_string()));
        run_cli(&full)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn token_url(&self) -> String {
        format!(
            "{}/realms/cara/protocol/openid-connect/token",
            self.base_url()
        )
    }

    pub fn issuer(&self) -> String {
        format!("{}/realms/cara", self.base_url())
    }

    pub fn loaded(&self) -> tessera::config::Loaded {
        tessera::config::load(Some(&self.config)).unwrap()
    }

    /// Issues a client certificate from the development CA; returns (cert, key) paths.
    pub fn issue_client(&self, name: &str) -> (PathBuf, PathBuf) {
        let out = self.path("clients");
        self.cli(&["pki", "issue-client", name, "--out", out.to_str().unwrap()])
            .unwrap();
        (
            out.join(format!("{name}.crt")),
            out.join(format!("{name}.key")),
        )
    }

    pub fn start(&self) -> Server {
        Server::start(self, Services::all())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run_cli(args: &[String]) -> anyhow::Result<String> {
    let mut out = Vec::new();
    let mut full = vec!["tessera".to_string()];
    full.extend(args.iter().cloned());
    tessera::cli::run(full, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

/// The real server, in its own actix system on a thread; stopped on drop.
pub struct Server {
    handle: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<()>>,
    /// The ITI-20 senders of `[audit]`, stopped after the server.
    deliveries: Option<tessera_outbound::delivery::Deliveries>,
    /// The checkpoint signer and the repository's indexer, stopped (with a last
    /// checkpoint) after the state.
    background: Option<tessera::serve::Background>,
    /// The application state, dropped last: its audit writer then flushes into the
    /// database while the test's Env (and its PostgreSQL database) still exists.
    state: Option<std::sync::Arc<tessera_http::AppState>>,
}

impl Server {
    pub fn start(env: &Env, services: Services) -> Self {
        Self::start_configured(env.loaded(), services)
    }

    /// A server of the same installation with some settings changed (e.g. a second
    /// instance on another port sharing the database).
    pub fn start_with(env: &Env, change: impl FnOnce(&mut tessera::config::Loaded)) -> Self {
        let mut loaded = env.loaded();
        change(&mut loaded);
        Self::start_configured(loaded, Services::all())
    }

    fn start_configured(loaded: tessera::config::Loaded, services: Services) -> Self {
        // TESSERA_TEST_LOG=debug (a tracing filter) shows the server's log in failing tests.
        if let Ok(filter) = std::env::var("TESSERA_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let thread_state = tessera::serve::app_state(&loaded).unwrap();
        let deliveries = tessera::serve::deliveries(&loaded, thread_state.store.clone()).unwrap();
        let background = tessera::serve::Background::start(
            &loaded,
            thread_state.store.clone(),
            thread_state.audit.stats(),
        )
        .unwrap();
        let state = thread_state.clone();
        let settings = tessera::serve::server_settings(&loaded, services);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let running = tessera_http::start(thread_state, &settings).unwrap();
                tx.send(running.server.handle()).unwrap();
                running.server.await.unwrap();
            });
        });
        let handle = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not start");
        Self {
            handle,
            thread: Some(thread),
            deliveries: Some(deliveries),
            background: Some(background),
            state: Some(state),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_web::rt::System::new().block_on(handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.deliveries.take();
        // The server's worker threads release their clones as they wind down.
        if let Some(state) = self.state.take() {
            eventually(
                Duration::from_secs(10),
                || std::sync::Arc::strong_count(&state),
                |held| *held == 1,
            );
            drop(state);
        }
        self.background.take();
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an RFC 6749 error response and returns its description.
    pub fn oauth_error(&self, status: u16, error: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        let body = self.json();
        assert_eq!(body["error"], error, "{}", self.body);
        assert_eq!(self.header("cache-control"), Some("no-store"));
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// An HTTPS client trusting the environment's CA, with or without a client certificate.
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

fn pem_certs(path: &Path) -> Vec<Certificate<'static>> {
    let pem = std::fs::read(path).unwrap();
    ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item.unwrap() {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect()
}

impl Client {
    pub fn new(env: &Env, cert: Option<(&Path, &Path)>) -> Self {
        Self::with_ca(env, &env.path("pki/ca.crt"), cert)
    }

    /// A client of another instance of the same installation.
    pub fn at(env: &Env, base: &str) -> Self {
        let mut client = Self::new(env, None);
        client.base = base.to_owned();
        client
    }

    /// This client, talking to another instance of the same installation.
    pub fn to(mut self, base: &str) -> Self {
        self.base = base.to_owned();
        self
    }

    pub fn with_ca(env: &Env, ca: &Path, cert: Option<(&Path, &Path)>) -> Self {
        let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&pem_certs(ca)));
        if let Some((crt, key)) = cert {
            let key = PrivateKey::from_pem(&std::fs::read(key).unwrap()).unwrap();
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&pem_certs(crt), key)));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .tls_config(tls.build())
            .build()
            .new_agent();
        Self {
            agent,
            base: env.base_url(),
        }
    }

    fn reply(
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, String> {
        let mut response = result.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub fn get(&self, path: &str) -> Reply {
        self.try_get(path).unwrap()
    }

    pub fn try_get(&self, path: &str) -> Result<Reply, String> {
        Self::reply(self.agent.get(format!("{}{path}", self.base)).call())
    }

    pub fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Reply {
        self.try_post_form(path, form, None).unwrap()
    }

    pub fn try_post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        basic: Option<&str>,
    ) -> Result<Reply, String> {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some(basic) = basic {
            request = request.header("Authorization", basic);
        }
        Self::reply(request.send_form(form.iter().copied()))
    }

    pub fn post_raw(&self, path: &str, content_type: &str, body: &str) -> Reply {
        let request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", content_type);
        Self::reply(request.send(body)).unwrap()
    }

    /// POSTs a JSON body, with an access token if given.
    pub fn post_json(&self, path: &str, token: Option<&str>, body: &str) -> Reply {
        let mut request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(token) = token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        Self::reply(request.send(body)).unwrap()
    }

    /// GETs with an access token.
    pub fn get_with_token(&self, path: &str, token: &str) -> Reply {
        let request = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {token}"));
        Self::reply(request.call()).unwrap()
    }

    /// Any request: method, path, optional Bearer token, extra headers, optional body.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("Content-Type", "application/fhir+json");
        }
        let result = match body {
            Some(body) => self.agent.run(request.body(body.to_owned()).unwrap()),
            None => self.agent.run(request.body(()).unwrap()),
        };
        Self::reply(result).unwrap()
    }

    /// Requests a token on realm `cara`.
    pub fn token(&self, form: &[(&str, &str)]) -> Reply {
        self.post_form("/realms/cara/protocol/openid-connect/token", form)
    }
}

/// Decodes a JWS without verifying: (header, claims).
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = || {
        let bytes = tessera_iam::jose::b64_decode(parts.next().unwrap()).unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    (part(), part())
}

/// A token's `jti`.
pub fn jti(token: &str) -> String {
    decode_jwt(token).1["jti"].as_str().unwrap().to_owned()
}

pub fn now() -> i64 {
    tessera_http::now().0
}

/// Looks with `look` until `done` holds of what it saw or `within` has passed, and
/// answers the last look either way, for the caller's assertion to show. For what the
/// server does just after it answers or in the background (the audit drainer, a CRL
/// reload, the repository's indexer). Looks again after 10 ms, doubling to 200 ms.
pub fn eventually<T>(
    within: Duration,
    mut look: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        let seen = look();
        if done(&seen) || std::time::Instant::now() >= deadline {
            return seen;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// An HTTPS server serving a JWK Set that a test can change, with a Cache-Control
/// header, for `jwks_uri` clients. Uses the environment's server certificate.
pub struct JwksServer {
    pub url: String,
    pub body: Arc<Mutex<String>>,
    pub hits: Arc<AtomicU32>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl JwksServer {
    pub fn start(env: &Env, cache_control: &'static str) -> Self {
        use actix_web::{web, App, HttpResponse, HttpServer};
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(env.path("pki/server.crt"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_file(env.path("pki/server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(tessera_outbound::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let body = Arc::new(Mutex::new(String::from("{\"keys\":[]}")));
        let hits = Arc::new(AtomicU32::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (b, h) = (body.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let (b, h) = (b.clone(), h.clone());
                    App::new().route(
                        "/jwks.json",
                        web::get().to(move || {
                            let (b, h) = (b.clone(), h.clone());
                            async move {
                                h.fetch_add(1, Ordering::SeqCst);
                                let text = b.lock().unwrap().clone();
                                HttpResponse::Ok()
                                    .insert_header(("Cache-Control", cache_control))
                                    .content_type("application/json")
                                    .body(text)
                            }
                        }),
                    )
                })
                .workers(1)
                .bind_rustls_0_23("127.0.0.1:0", config)
                .unwrap();
                let port = server.addrs()[0].port();
                let server = server.run();
                tx.send((port, server.handle())).unwrap();
                server.await.unwrap();
            });
        });
        let (port, handle) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        Self {
            url: format!("https://localhost:{port}/jwks.json"),
            body,
            hits,
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_web::rt::System::new().block_on(handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens a raw TLS connection with a client certificate and sends one request.
/// Returns the response text, or the TLS error that ended the connection: the alert
/// the server sent when it refused the certificate.
pub fn tls_probe(
    env: &Env,
    cert: &Path,
    key: &Path,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<String, rustls::Error> {
    tls_request(env, &tls_client_config(env, cert, key, version)).map(|exchange| exchange.response)
}

/// A rustls client configuration with a client certificate. It keeps what the server
/// offers for resuming sessions (rustls' default), as most TLS clients do.
pub fn tls_client_config(
    env: &Env,
    cert: &Path,
    key: &Path,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let suites = tessera_outbound::tls::provider().cipher_suites.clone();
    tls_client_offering(env, cert, key, version, suites)
}

/// [`tls_client_config`] offering `suites`, in that order of preference.
pub fn tls_client_offering(
    env: &Env,
    cert: &Path,
    key: &Path,
    version: &'static rustls::SupportedProtocolVersion,
    suites: Vec<rustls::SupportedCipherSuite>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(env.path("pki/ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        ..Arc::unwrap_or_clone(tessera_outbound::tls::provider())
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// What [`tls_request`] saw: the response, whether the handshake was a full one or
/// resumed a session, and the suite the server chose.
#[derive(Debug)]
pub struct TlsExchange {
    pub response: String,
    pub kind: Option<rustls::HandshakeKind>,
    pub suite: Option<rustls::CipherSuite>,
}

/// [`tls_probe`] with a given client configuration (and its session cache).
pub fn tls_request(
    env: &Env,
    config: &Arc<rustls::ClientConfig>,
) -> Result<TlsExchange, rustls::Error> {
    use rustls::pki_types::ServerName;
    use std::io::{Read, Write};

    let connection =
        rustls::ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let socket = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    let as_tls = |e: std::io::Error| -> rustls::Error {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => tls.clone(),
            None => rustls::Error::General(e.to_string()),
        }
    };
    // A write may meet a socket the server already closed; the alert is still there to read.
    let _ = tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    match tls.read_to_string(&mut response) {
        Ok(_) => Ok(TlsExchange {
            response,
            kind: tls.conn.handshake_kind(),
            suite: tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
        }),
        Err(e) => Err(as_tls(e)),
    }
}

/// Validates a FHIR R4 resource with the `fhir` npm package's validator
/// (tests/fhir/validate.js; `scripts/test` runs `npm ci --prefix tests/fhir` first).
pub fn assert_valid_fhir(resource: &Value) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir");
    assert!(
        dir.join("node_modules/fhir").is_dir(),
        "the FHIR validator is not installed: run `npm ci --prefix tests/fhir` (scripts/test does)"
    );
    let mut child = Command::new("node")
        .arg(dir.join("validate.js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is needed to validate FHIR resources");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(resource.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "not valid FHIR R4: {}\n{resource:#}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A client certificate from a self-made CA that Tessera does not know.
pub fn foreign_ca_client(env: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "Foreign CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "bestclinic");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (crt_path, key_path) = (env.path("foreign.crt"), env.path("foreign.key"));
    std::fs::write(&crt_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (crt_path, key_path)
}

/// Validates DICOM audit messages against the DICOM PS3.15 A.5.1 RELAX NG schema in
/// `../shared/standards` with xmllint (Debian's libxml2-utils); panics naming each
/// invalid message and what xmllint said.
pub fn assert_valid_dicom(messages: &[String]) {
    let schema =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/standards/dicom-audit-message.rng");
    assert!(schema.exists(), "{} is missing", schema.display());
    let dir = std::env::temp_dir().join(unique("tessera-dicom"));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = messages
        .iter()
        .enumerate()
        .map(|(i, xml)| {
            let file = dir.join(format!("message-{i}.xml"));
            std::fs::write(&file, xml).unwrap();
            file
        })
        .collect();
    let output = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--relaxng")
        .arg(&schema)
        .args(&files)
        .output()
        .expect("xmllint (apt install libxml2-utils) validates the DICOM audit messages");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    let invalid: Vec<String> = files
        .iter()
        .zip(messages)
        .filter(|(file, _)| !said.contains(&format!("{} validates", file.display())))
        .map(|(_, xml)| xml.clone())
        .collect();
    assert!(
        output.status.success() && invalid.is_empty(),
        "{} of {} messages are not valid DICOM audit messages:\n{said}\nfirst: {}",
        invalid.len(),
        messages.len(),
        invalid.first().map(String::as_str).unwrap_or_default()
    );
}
