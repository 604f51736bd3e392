//! ITI-20 delivery: the audit trail sent on to its destinations, each at its own pace.
//!
//! Every destination (a syslog receiver over TLS, a remote audit repository's FHIR
//! feed) has a cursor in the database: the last event of the trail it acknowledged.
//! A thread per destination reads the events after it, sends them, and moves the
//! cursor only once they are through; a destination that is down is retried with
//! backoff, from where it stopped. So delivery is at-least-once and in trail order, and
//! every event carries its stable id for the receiver to deduplicate. With several
//! instances on one database, a lease in the cursor row lets one deliver at a time.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;
use tessera_atna::{syslog, Record};
use tessera_store::Store;
use tessera_types::{Secret, UnixTime};

use crate::tls::{load_certs, load_key, provider};

/// The most events one send carries.
const BATCH: i64 = 500;
/// How long a lease lasts; renewed at every round, taken over by another instance
/// only after it ran out.
const LEASE_SECONDS: i64 = 30;
/// How often an idle sender looks for new events.
const IDLE: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A destination of the trail, as configured.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The cursor's name: stable across restarts, so delivery resumes where it stopped.
    pub name: String,
    pub transport: TransportSettings,
}

#[derive(Debug, Clone)]
pub enum TransportSettings {
    Syslog(SyslogSettings),
    Fhir(FhirFeedSettings),
}

/// ITI-20 syslog over TLS (RFC 5425) with mutual authentication.
#[derive(Debug, Clone)]
pub struct SyslogSettings {
    /// `host:port` of the receiver.
    pub address: String,
    /// The name the receiver's certificate must carry.
    pub server_name: String,
    /// The CA bundle that the receiver's certificate must chain to.
    pub ca: PathBuf,
    /// The node's certificate and key, presented to the receiver.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How long to listen for the receiver's refusal (a TLS alert, a close) after
    /// connecting and after each send before counting the events as delivered.
    pub confirm: Duration,
    pub sender: syslog::Sender,
}

/// ITI-20 FHIR feed: batch Bundles of AuditEvents POSTed to a remote audit repository,
/// with an access token from its authorization server (client credentials).
#[derive(Debug, Clone)]
pub struct FhirFeedSettings {
    /// The repository's FHIR base (the batch is POSTed to it).
    pub url: String,
    pub token_url: String,
    pub client_id: String,
    /// Empty: the client authenticates with the node's certificate (mutual TLS).
    pub client_secret: Secret,
    pub scope: String,
    /// CA bundle trusted for both endpoints; `None`: Mozilla's roots.
    pub ca: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The running senders; dropping this stops them (their cursors keep their place).
pub struct Deliveries {
    stops: Vec<mpsc::Sender<()>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Something that can carry a batch of events to a destination.
trait Transport: Send {
    /// Sends the events; `Ok` only once the destination has them.
    fn send(&mut self, events: &[(String, i64, Record)]) -> Result<(), String>;
}

/// Starts a sender for each destination. `owner` names this instance in the leases;
/// `clock` tells the time (leases, the feed's token expiry).
pub fn start(
    store: Store,
    destinations: &[Destination],
    owner: &str,
    clock: fn() -> UnixTime,
) -> anyhow::Result<Deliveries> {
    let mut deliveries = Deliveries {
        stops: Vec::new(),
        threads: Vec::new(),
    };
    for destination in destinations {
        let transport: Box<dyn Transport> = match &destination.transport {
            TransportSettings::Syslog(settings) => Box::new(SyslogTransport::new(settings)?),
            TransportSettings::Fhir(settings) => Box::new(FhirTransport::new(settings, clock)?),
        };
        let (stop, stopped) = mpsc::channel();
        let sender = Sender {
            store: store.clone(),
            name: destination.name.clone(),
            owner: owner.to_owned(),
            transport,
            held: None,
            clock,
        };
        let thread = thread::Builder::new()
            .name(format!("audit-delivery {}", destination.name))
            .spawn(move || sender.run(&stopped))
            .context("cannot start an audit delivery thread")?;
        deliveries.stops.push(stop);
        deliveries.threads.push(thread);
    }
    Ok(deliveries)
}

struct Sender {
    clock: fn() -> UnixTime,
    store: Store,
    name: String,
    owner: String,
    transport: Box<dyn Transport>,
    /// While this instance holds the lease: until when (unix s) and the last sequence
    /// number delivered, so an idle round only reads the trail's head.
    held: Option<(i64, i64)>,
}

impl Sender {
    fn run(mut self, stopped: &mpsc::Receiver<()>) {
        self.deliver(stopped);
        if let Err(e) = self.store.release_delivery(&self.name, &self.owner) {
            tracing::warn!(destination = %self.name, error = %e.0, "the delivery lease could not be released; another instance takes over when it runs out");
        }
    }

    fn deliver(&mut self, stopped: &mpsc::Receiver<()>) {
        let mut backoff = Duration::from_millis(200);
        let pause = |d: Duration| {
            matches!(
                stopped.recv_timeout(d),
                Err(RecvTimeoutError::Timeout) | Ok(())
            )
        };
        loop {
            match self.round() {
                Ok(true) => backoff = Duration::from_millis(200),
                Ok(false) => {
                    backoff = Duration::from_millis(200);
                    if !pause(IDLE) {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(destination = %self.name, %error, retry_in_ms = backoff.as_millis() as u64, "audit events not delivered yet");
                    if !pause(backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
                return;
            }
        }
    }

    /// One batch: `Ok(true)` when events were delivered, `Ok(false)` when there was
    /// nothing to do (nothing new, or another instance holds the lease).
    fn round(&mut self) -> Result<bool, String> {
        let store_error = |e: tessera_iam::StoreError| format!("database: {}", e.0);
        let now = (self.clock)();
        if let Some((until, delivered)) = self.held {
            // Nothing new and the lease is good for a while: no write needed.
            let head = self.store.audit_head().map_err(store_error)?;
            if head <= delivered && until - now.0 > LEASE_SECONDS / 2 {
                return Ok(false);
            }
        }
        self.held = None;
        let Some(lease) = self
            .store
            .claim_delivery(&self.name, &self.owner, now, LEASE_SECONDS)
            .map_err(store_error)?
        else {
            return Ok(false);
        };
        let until = now.0 + LEASE_SECONDS;
        self.held = Some((until, lease.delivered()));
        let events = self
            .store
            .audit_after(&lease.cursors, BATCH)
            .map_err(store_error)?;
        if events.is_empty() {
            return Ok(false);
        }
        let mut upto = lease.cursors.clone();
        for (chain, seq, _) in &events {
            upto.insert(chain.clone(), *seq);
        }
        // Each record goes with its chain and place in it (syslog's sequenceId).
        self.transport.send(&events)?;
        if !self
            .store
            .advance_delivery(&self.name, &self.owner, &upto)
            .map_err(store_error)?
        {
            // Another instance took over meanwhile (this one was stalled past its lease),
            // or an operator skipped past these: go on from the stored cursors.
            self.held = None;
            return Ok(false);
        }
        let delivered = upto.values().sum::<i64>();
        self.held = Some((until, delivered));
        tracing::debug!(destination = %self.name, events = events.len(), delivered, "audit events delivered");
        Ok(true)
    }
}

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

struct SyslogTransport {
    address: String,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    confirm: Duration,
    sender: syslog::Sender,
    stream: Option<TlsStream>,
}

impl SyslogTransport {
    fn new(settings: &SyslogSettings) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in load_certs(&settings.ca)? {
            roots
                .add(cert)
                .with_context(|| format!("{}: not a usable CA", settings.ca.display()))?;
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(load_certs(&settings.cert)?, load_key(&settings.key)?)
            .with_context(|| {
                format!(
                    "the node certificate {} and key {} do not go together",
                    settings.cert.display(),
                    settings.key.display()
                )
            })?;
        let server_name = ServerName::try_from(settings.server_name.clone())
            .with_context(|| format!("{:?} is not a server name", settings.server_name))?;
        Ok(Self {
            address: settings.address.clone(),
            server_name,
            config: Arc::new(config),
            confirm: settings.confirm,
            sender: settings.sender.clone(),
            stream: None,
        })
    }

    fn connect(&self) -> Result<TlsStream, String> {
        let addresses = self
            .address
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", self.address))?;
        let mut last = format!("{}: no address", self.address);
        let mut connected = None;
        for address in addresses {
            match TcpStream::connect_timeout(&address, Duration::from_secs(10)) {
                Ok(tcp) => {
                    connected = Some(tcp);
                    break;
                }
                Err(e) => last = format!("{} ({address}): {e}", self.address),
            }
        }
        let tcp = connected.ok_or(last)?;
        let _ = tcp.set_nodelay(true);
        tcp.set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let connection = ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        let mut stream = StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("TLS handshake with {}: {e}", self.address))?;
        }
        // With TLS 1.3 the receiver judges our certificate after the handshake is over
        // for us: its refusal arrives as an alert. Listen for it before sending anything.
        self.confirmed(&mut stream)
            .map_err(|e| format!("after the handshake: {e}"))?;
        tracing::debug!(receiver = %self.address, "syslog connection open");
        Ok(stream)
    }

    /// Listens for `confirm`: a receiver sends nothing back, so silence means it kept
    /// the connection (and what was sent on it); an alert, a close or an error means
    /// it did not.
    fn confirmed(&self, stream: &mut TlsStream) -> Result<(), String> {
        stream
            .sock
            .set_read_timeout(Some(self.confirm.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        let mut buffer = [0u8; 512];
        match stream.read(&mut buffer) {
            Ok(0) => Err(format!("{} closed the connection", self.address)),
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
            Err(e) => Err(format!("{} refused the connection: {e}", self.address)),
        }
    }
}

/// Ends the connection politely, so the receiver logs no error.
impl Drop for SyslogTransport {
    fn drop(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            stream.conn.send_close_notify();
            let _ = stream.conn.complete_io(&mut stream.sock);
        }
    }
}

impl Transport for SyslogTransport {
    /// Sends on the open connection, or a new one; on failure the connection is
    /// dropped, so the next try starts a new one.
    fn send(&mut self, events: &[(String, i64, Record)]) -> Result<(), String> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => self.connect()?,
        };
        let mut frames = Vec::new();
        for (chain, seq, record) in events {
            frames.extend(syslog::frame(&syslog::message(
                record,
                chain,
                *seq,
                &self.sender,
            )));
        }
        stream
            .write_all(&frames)
            .and_then(|()| stream.flush())
            .map_err(|e| format!("sending to {}: {e}", self.address))?;
        self.confirmed(&mut stream)
            .map_err(|e| format!("after sending {} events: {e}", events.len()))?;
        self.stream = Some(stream);
        Ok(())
    }
}

struct FhirTransport {
    clock: fn() -> UnixTime,
    settings: FhirFeedSettings,
    agent: ureq::Agent,
    /// The access token and when to fetch a new one (unix seconds).
    token: Option<(Secret, i64)>,
}

impl FhirTransport {
    fn new(settings: &FhirFeedSettings, clock: fn() -> UnixTime) -> anyhow::Result<Self> {
        let client_cert = if settings.client_secret.expose().is_empty() {
            Some((settings.cert.as_path(), settings.key.as_path()))
        } else {
            None
        };
        let agent = crate::tls::https_agent_with(
            settings.ca.as_deref(),
            Duration::from_secs(30),
            false,
            client_cert,
        )?;
        Ok(Self {
            clock,
            settings: settings.clone(),
            agent,
            token: None,
        })
    }

    fn access_token(&mut self) -> Result<Secret, String> {
        let now = (self.clock)().0;
        if let Some((token, until)) = &self.token {
            if now < *until {
                return Ok(token.clone());
            }
        }
        let s = &self.settings;
        let mut request = self
            .agent
            .post(&s.token_url)
            .header("Accept", "application/json");
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("scope", s.scope.as_str()),
        ];
        let basic;
        if s.client_secret.expose().is_empty() {
            form.push(("client_id", s.client_id.as_str()));
        } else {
            basic = crate::tls::basic_authorization(&s.client_id, &s.client_secret);
            request = request.header("Authorization", basic.expose());
        }
        let mut response = request
            .send_form(form)
            .map_err(|e| format!("token request to {}: {e}", s.token_url))?;
        let body = read_json(&mut response)?;
        if response.status() != 200 {
            return Err(format!(
                "{} refused the token request ({}): {}",
                s.token_url,
                response.status(),
                body.get("error").and_then(Value::as_str).unwrap_or("")
            ));
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{} answered no access_token", s.token_url))?;
        let lifetime = body.get("expires_in").and_then(Value::as_i64).unwrap_or(60);
        // Fetch the next one a little before this one expires.
        let until = now + (lifetime - 10).max(lifetime / 2);
        let token = Secret::new(token.to_owned());
        self.token = Some((token.clone(), until));
        Ok(token)
    }
}

fn read_json(response: &mut ureq::http::Response<ureq::Body>) -> Result<Value, String> {
    let text = response
        .body_mut()
        .with_config()
        .limit(16 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| format!("the answer could not be read: {e}"))?;
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Transport for FhirTransport {
    fn send(&mut self, events: &[(String, i64, Record)]) -> Result<(), String> {
        let token = self.access_token()?;
        let url = self.settings.url.trim_end_matches('/').to_owned();
        let mut response = self
            .agent
            .post(&url)
            .header("Authorization", format!("Bearer {}", token.expose()))
            .header("Content-Type", "application/fhir+json")
            .header("Accept", "application/fhir+json")
            .send(tessera_atna::feed_bundle(events.iter().map(|(_, _, r)| r)).to_string())
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = read_json(&mut response)?;
        if status == 401 {
            // The token may have been revoked or the repository restarted: fetch a new one.
            self.token = None;
        }
        if status != 200 {
            return Err(format!("{url} answered {status}"));
        }
        // Every entry must be stored (201) or already held (200).
        let entries = body.get("entry").and_then(Value::as_array);
        let refused: Vec<String> = entries
            .into_iter()
            .flatten()
            .filter_map(|e| e.pointer("/response/status").and_then(Value::as_str))
            .filter(|s| !(s.starts_with("200") || s.starts_with("201")))
            .map(str::to_owned)
            .collect();
        match entries.map(Vec::len) {
            Some(n) if n == events.len() && refused.is_empty() => Ok(()),
            _ if !refused.is_empty() => Err(format!(
                "{url} refused {} of {} events ({})",
                refused.len(),
                events.len(),
                refused.join(", ")
            )),
            _ => Err(format!(
                "{url} answered a batch response without the entries"
            )),
        }
    }
}
