//! ITI-20 over syslog: the trail delivered to a real receiver, Debian's rsyslog with
//! rsyslog-gnutls, over mutual TLS with `x509/name` peer checking (RFC 5425).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_atna::Record;

use crate::audit::records;
use crate::support::{eventually, foreign_ca_client, free_port, Env};

/// An rsyslog receiver of the installation's CA, accepting only peers named `localhost`
/// (the name in the dev node certificate), writing what it receives to a file.
struct Rsyslog {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// One message as rsyslog parsed it.
#[derive(Debug)]
struct Received {
    pri: String,
    app_name: String,
    msgid: String,
    event_id: String,
    sequence: i64,
    chain: String,
    msg: String,
}

impl Rsyslog {
    fn new(env: &Env) -> Self {
        Self::with_input(env, "")
    }

    /// A receiver whose `imtcp` input has the `extra` parameters.
    fn with_input(env: &Env, extra: &str) -> Self {
        let dir = env.path("rsyslog");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let pki = |name: &str| env.path("pki").join(name).display().to_string();
        let config = format!(
            r#"global(workDirectory="{dir}" maxMessageSize="256k"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{ca}"
  DefaultNetstreamDriverCertFile="{crt}"
  DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"
  StreamDriver.AuthMode="x509/name" PermittedPeer=["localhost"])
input(type="imtcp" address="127.0.0.1" port="{port}" {extra})
template(name="seen" type="string"
  string="%pri% %app-name% %msgid% %structured-data% %msg%\n")
action(type="omfile" file="{dir}/received.log" template="seen")
"#,
            dir = dir.display(),
            ca = pki("ca.crt"),
            crt = pki("server.crt"),
            key = pki("server.key"),
            extra = extra,
        );
        std::fs::write(dir.join("rsyslog.conf"), config).unwrap();
        Self {
            dir,
            port,
            child: None,
        }
    }

    fn start(&mut self) {
        let stderr = std::fs::File::create(self.dir.join("rsyslogd.err")).unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("rsyslogd (Debian packages rsyslog and rsyslog-gnutls) must be installed");
        self.child = Some(child);
        let started = Instant::now();
        while !listening(self.port) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "rsyslogd did not start: {}",
                std::fs::read_to_string(self.dir.join("rsyslogd.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn received(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(self.dir.join("received.log")).unwrap_or_default();
        text.lines()
            .filter(|line| !line.is_empty())
            .map(|line| {
                let fields: Vec<&str> = line.splitn(4, ' ').collect();
                let param = |name: &str| {
                    let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                    line[start..start + line[start..].find('"').unwrap()].to_owned()
                };
                Received {
                    pri: fields[0].into(),
                    app_name: fields[1].into(),
                    msgid: fields[2].into(),
                    event_id: param("eventId"),
                    sequence: param("sequenceId").parse().unwrap(),
                    chain: param("chain"),
                    msg: line[line.find("] ").unwrap() + 2..].to_owned(),
                }
            })
            .collect()
    }

    /// What arrived once every event of the trail has and the sender counts it as
    /// delivered (or 20 s passed). A receiver stopped before the sender's confirmation
    /// window closed would get those events again: that is at-least-once.
    fn received_all(&self, env: &Env) -> (Vec<Received>, Vec<Record>) {
        self.received_after(env, 0)
    }

    /// [`Rsyslog::received_all`] for the events after the first `skipped` of the trail.
    fn received_after(&self, env: &Env, skipped: usize) -> (Vec<Received>, Vec<Record>) {
        // The cursor read with the trail: every event of it confirmed delivered.
        let (received, trail, _) = eventually(
            Duration::from_secs(20),
            || {
                let trail = records(env);
                let confirmed = cursor(env).unwrap_or(0) >= trail.len() as i64;
                (self.received(), trail, confirmed)
            },
            |(received, trail, confirmed)| {
                let ids: std::collections::HashSet<&str> =
                    received.iter().map(|r| r.event_id.as_str()).collect();
                *confirmed
                    && trail
                        .iter()
                        .skip(skipped)
                        .all(|r| ids.contains(r.id.as_str()))
            },
        );
        (received, trail)
    }
}

/// Whether a socket listens on the port, as the kernel's table tells. (Connecting to
/// find out is no good: rsyslog 8.2302 was seen to drop a session being accepted while
/// it handled such a probe's failed handshake, so an event was delivered twice.)
fn listening(port: u16) -> bool {
    let wanted = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && format!("{} ", fields[1]).ends_with(&wanted) && fields[3] == "0A"
        })
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("rsyslogd.err")).unwrap_or_default();
            eprintln!("rsyslogd said:\n{log}");
        }
    }
}

/// Sends the trail to `receiver` with the certificate `cert`/`key` (default: the node's).
fn deliver_to(env: &Env, receiver: &Rsyslog, cert: Option<(&Path, &Path)>) {
    env.configure(|c| {
        c.audit.syslog.push(tessera::config::SyslogConfig {
            name: "arr".into(),
            address: format!("localhost:{}", receiver.port),
            server_name: String::new(),
            ca: "pki/ca.crt".into(),
            cert: cert.map(|(crt, _)| crt.to_owned()),
            key: cert.map(|(_, key)| key.to_owned()),
            confirm_ms: 200,
        })
    });
}

fn some_tokens(env: &Env, n: usize) {
    let (crt, key) = (env.path("clients/tcu.crt"), env.path("clients/tcu.key"));
    if !crt.exists() {
        env.add_mtls_client("tcu", &["--scope", "system/*.rs"]);
    }
    let client = crate::support::Client::new(env, Some((&crt, &key)));
    for _ in 0..n {
        let reply = client.token(&[("grant_type", "client_credentials"), ("client_id", "tcu")]);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

/// The delivery cursor of the destination named `arr`.
fn cursor(env: &Env) -> Option<i64> {
    tessera::cli::open_store(&env.loaded())
        .unwrap()
        .deliveries()
        .unwrap()
        .into_iter()
        .find(|(name, _)| name == "arr")
        .map(|(_, seq)| seq)
}

fn count_by_id(received: &[Received]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for r in received {
        *counts.entry(r.event_id.as_str()).or_default() += 1;
    }
    counts
}

#[test]
fn the_trail_reaches_rsyslog_over_mutual_tls_in_iti_20_form() {
    let env = Env::new();
    let mut receiver = Rsyslog::new(&env);
    receiver.start();
    deliver_to(&env, &receiver, None);
    let server = env.start();
    some_tokens(&env, 5);
    let (received, trail) = receiver.received_all(&env);
    drop(server);

    // Every event of the trail, once, in trail order, with its place in its chain (the
    // CLI's registration and the server's tokens share one: this host and port).
    assert!(trail.len() >= 6, "the client registration and five tokens");
    let sent: Vec<&str> = received.iter().map(|r| r.event_id.as_str()).collect();
    let expected: Vec<&str> = trail.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(&sent[..expected.len()], &expected[..]);
    let chain = env.loaded().audit_chain();
    for (i, r) in received.iter().enumerate() {
        assert_eq!(
            (r.chain.as_str(), r.sequence),
            (chain.as_str(), i as i64 + 1)
        );
        // facility 10 (security/authorization) x 8 + severity 5 (notice)
        assert_eq!(r.pri, "85");
        assert_eq!(r.app_name, "tessera");
        assert_eq!(r.msgid, "IHE+RFC-3881");
        assert!(r.msg.contains("<AuditMessage>"), "{}", r.msg);
    }
    // Each is a valid DICOM audit message as it arrived (rsyslog writes a line feed
    // inside a message as #012).
    let arrived: Vec<String> = received
        .iter()
        .map(|r| r.msg.replace("#012", "\n"))
        .collect();
    crate::support::assert_valid_dicom(&arrived);
    // A token request arrives as its DICOM audit message.
    let token = trail
        .iter()
        .position(|r| matches!(r.event, tessera_atna::Event::TokenRequest { .. }))
        .unwrap();
    assert!(
        received[token].msg.contains("csd-code=\"ITI-71\""),
        "{}",
        received[token].msg
    );
    assert!(
        received[token].msg.contains("UserID=\"tcu\""),
        "{}",
        received[token].msg
    );
    assert!(cursor(&env).unwrap() >= trail.len() as i64);
}

#[test]
fn the_receiver_refuses_rogue_certificates_and_nothing_counts_as_delivered() {
    let env = Env::new();
    let mut receiver = Rsyslog::new(&env);
    receiver.start();
    // From a CA the receiver does not trust; then from the right CA but not the
    // permitted peer name (x509/name).
    let foreign = foreign_ca_client(&env);
    let misnamed = env.issue_client("rogue-node");
    for (crt, key) in [&foreign, &misnamed] {
        let original = std::fs::read_to_string(&env.config).unwrap();
        deliver_to(&env, &receiver, Some((crt, key)));
        let server = env.start();
        some_tokens(&env, 2);
        std::thread::sleep(Duration::from_secs(2));
        drop(server);
        assert!(receiver.received().is_empty(), "{crt:?} was accepted");
        assert_eq!(cursor(&env).unwrap_or(0), 0, "{crt:?}: the cursor moved");
        std::fs::write(&env.config, original).unwrap();
    }
    let log = std::fs::read_to_string(receiver.dir.join("rsyslogd.err")).unwrap();
    // The receiver said why: an unknown issuer, then a name it does not permit.
    assert!(log.contains("signer not found"), "{log}");
    assert!(log.contains("peer name not authorized"), "{log}");
    // With the node's own certificate, the whole backlog goes through, each event once.
    deliver_to(&env, &receiver, None);
    let server = env.start();
    let (received, trail) = receiver.received_all(&env);
    drop(server);
    let counts = count_by_id(&received);
    assert!(trail.len() >= 5, "the client registration and four tokens");
    for record in &trail {
        assert_eq!(counts.get(record.id.as_str()), Some(&1), "{}", record.id);
    }
}

#[test]
fn a_receiver_that_is_down_gets_every_event_once_when_it_is_back() {
    let env = Env::new();
    let mut receiver = Rsyslog::new(&env);
    deliver_to(&env, &receiver, None);
    let server = env.start();
    // Down from the start: the events wait.
    some_tokens(&env, 3);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cursor(&env).unwrap_or(0), 0);
    let waiting = records(&env).len();
    let status = env.cli(&["audit", "deliveries"]).unwrap();
    assert!(
        status.contains(&format!("arr: delivered 0, pending {waiting}\n")),
        "{status}"
    );
    receiver.start();
    let (received, trail) = receiver.received_all(&env);
    assert_eq!(received.len(), trail.len());
    let status = env.cli(&["audit", "deliveries"]).unwrap();
    assert!(status.contains("pending 0\n"), "{status}");

    // Down while connected: what is sent meanwhile is sent again on a new connection.
    receiver.stop();
    some_tokens(&env, 3);
    std::thread::sleep(Duration::from_secs(1));
    receiver.start();
    some_tokens(&env, 2);
    let (received, trail) = receiver.received_all(&env);
    drop(server);
    let counts = count_by_id(&received);
    for record in &trail {
        assert_eq!(counts.get(record.id.as_str()), Some(&1), "{}", record.id);
    }
    assert_eq!(received.len(), trail.len());
}

#[test]
fn two_instances_on_one_database_deliver_each_event_once() {
    let env = Env::new();
    let mut receiver = Rsyslog::new(&env);
    receiver.start();
    deliver_to(&env, &receiver, None);
    let first = env.start();
    let second_port = free_port();
    let second = crate::support::Server::start_with(&env, |loaded| {
        loaded.config.server.listen.set_port(second_port);
        loaded.config.audit.journal_dir = "data/audit-journal-2".into();
    });
    some_tokens(&env, 4);
    let (received, trail) = receiver.received_all(&env);
    drop(second);
    drop(first);
    let counts = count_by_id(&received);
    for record in &trail {
        assert_eq!(counts.get(record.id.as_str()), Some(&1), "{}", record.id);
    }
}

#[test]
fn a_receiver_below_tls_1_2_gets_nothing() {
    let env = Env::new();
    let mut receiver = Rsyslog::with_input(
        &env,
        r#"gnutlsPriorityString="NORMAL:-VERS-ALL:+VERS-TLS1.1:+VERS-TLS1.0""#,
    );
    receiver.start();
    deliver_to(&env, &receiver, None);
    let server = env.start();
    some_tokens(&env, 1);
    std::thread::sleep(Duration::from_secs(2));
    drop(server);
    assert!(receiver.received().is_empty());
    assert_eq!(cursor(&env).unwrap_or(0), 0);
    let log = std::fs::read_to_string(receiver.dir.join("rsyslogd.err")).unwrap();
    // rustls offers TLS 1.3 and 1.2 with AEAD suites only, none of which TLS 1.1 has.
    // rsyslog words the refusal by where the handshake stopped ("error on handshake",
    // "handshake retry returned error: No supported cipher suites"); both name the handshake.
    assert!(log.contains("handshake") && log.contains("error"), "{log}");
}

#[test]
fn an_operator_can_skip_events_a_destination_is_not_to_get() {
    let env = Env::new();
    let mut receiver = Rsyslog::new(&env);
    deliver_to(&env, &receiver, None);
    let server = env.start();
    some_tokens(&env, 3);
    // The receiver is down; once the three token events are in the trail, they are skipped.
    let tokens_in = |trail: &[Record]| {
        trail
            .iter()
            .filter(|r| matches!(r.event, tessera_atna::Event::TokenRequest { .. }))
            .count()
    };
    let skipped = eventually(
        Duration::from_secs(10),
        || records(&env),
        |trail| tokens_in(trail) >= 3,
    );
    assert!(
        tokens_in(&skipped) >= 3,
        "the token events never reached the trail"
    );
    let head = skipped.len();

    let unknown = env.cli(&["audit", "skip", "nosuch", "--through", "head"]);
    assert!(format!("{:#}", unknown.unwrap_err()).contains("no ITI-20 destination named nosuch"),);
    let beyond = env.cli(&["audit", "skip", "arr", "--through", &(head + 1).to_string()]);
    assert!(format!("{:#}", beyond.unwrap_err()).contains("--through"));
    let elsewhere = env.cli(&["audit", "skip", "arr", "--through", "nosuch:1"]);
    assert!(format!("{:#}", elsewhere.unwrap_err()).contains("chains: "));
    assert_eq!(cursor(&env).unwrap_or(0), 0, "a refused skip moves nothing");
    // The trail is one chain per instance: the CLI and this server share theirs.
    let chain = env.loaded().audit_chain();

    let printed = env
        .cli(&["audit", "skip", "arr", "--through", "head"])
        .unwrap();
    assert!(
        printed.contains(&format!(
            "arr: events through {chain}#{head} count as delivered ({head} skipped)"
        )),
        "{printed}"
    );
    assert!(cursor(&env).unwrap() >= head as i64);
    let back = env.cli(&["audit", "skip", "arr", "--through", "1"]);
    assert!(format!("{:#}", back.unwrap_err()).contains("already delivered through event"),);

    receiver.start();
    some_tokens(&env, 2);
    let (received, trail) = receiver.received_after(&env, head);
    drop(server);
    let counts = count_by_id(&received);
    for record in &skipped {
        assert!(
            !counts.contains_key(record.id.as_str()),
            "skipped {}",
            record.id
        );
    }
    for record in &trail[head..] {
        assert_eq!(counts.get(record.id.as_str()), Some(&1), "{}", record.id);
    }
    // The skip itself is an audited operator action, delivered like any event.
    let skip = trail
        .iter()
        .find(|r| {
            matches!(&r.event, tessera_atna::Event::AdminAction { command, target, .. }
                if command == "audit skip" && *target == format!("arr through event {chain}#{head}"))
        })
        .expect("the skip is in the trail");
    assert_eq!(counts.get(skip.id.as_str()), Some(&1));
    assert_eq!(tokens_in(&trail[head..]), 2);
}
