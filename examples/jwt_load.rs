//! Load generator for the `private_key_jwt` path: every request carries a freshly signed
//! assertion with its own `jti`, which a fixed-body tool such as oha cannot send.
//!
//!   jwt_load keygen KEYFILE        writes an ES256 key, prints its public key (PEM)
//!   jwt_load load --key KEYFILE --client-id ID --token-url URL --ca CA.crt
//!                 [--seconds 10] [--connections 32]

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_iam::jose::{Algorithm, SigningKey};
use tessera_iam::pem::jwk_to_pem;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

fn arg(args: &[String], name: &str, default: Option<&str>) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| default.map(str::to_owned))
        .unwrap_or_else(|| panic!("missing {name}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("keygen") => {
            let (key, pkcs8) = SigningKey::generate_ec(Algorithm::ES256).unwrap();
            std::fs::write(&args[2], pkcs8).unwrap();
            print!("{}", jwk_to_pem(&key.public_jwk()).unwrap());
        }
        Some("load") => load(&args),
        _ => eprintln!("usage: jwt_load keygen KEYFILE | jwt_load load --key K --client-id ID --token-url URL --ca CA"),
    }
}

fn load(args: &[String]) {
    let key = Arc::new(
        SigningKey::from_pkcs8(
            Algorithm::ES256,
            &std::fs::read(arg(args, "--key", None)).unwrap(),
        )
        .unwrap(),
    );
    let client_id = arg(args, "--client-id", None);
    let url = arg(args, "--token-url", None);
    let seconds: u64 = arg(args, "--seconds", Some("10")).parse().unwrap();
    let connections: usize = arg(args, "--connections", Some("32")).parse().unwrap();
    let ca = std::fs::read(arg(args, "--ca", None)).unwrap();
    let roots: Vec<Certificate<'static>> = ureq::tls::parse_pem(&ca)
        .filter_map(|i| match i.unwrap() {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|t| {
            let (key, client_id, url, stop, roots) = (
                key.clone(),
                client_id.clone(),
                url.clone(),
                stop.clone(),
                roots.clone(),
            );
            std::thread::spawn(move || {
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .tls_config(
                        TlsConfig::builder()
                            .root_certs(RootCerts::new_with_certs(&roots))
                            .build(),
                    )
                    .build()
                    .new_agent();
                let mut latencies = Vec::new();
                let mut failures = 0u64;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let now = tessera_http::now().0;
                    let claims = serde_json::json!({
                        "iss": client_id, "sub": client_id, "aud": url,
                        "iat": now, "exp": now + 300, "jti": format!("load-{t}-{n}-{now}"),
                    });
                    let assertion = key.sign("JWT", &claims).unwrap();
                    let begin = Instant::now();
                    let response = agent.post(&url).send_form([
                        ("grant_type", "client_credentials"),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", assertion.as_str()),
                    ]);
                    match response {
                        Ok(mut r) if r.status() == 200 => {
                            let _ = r.body_mut().read_to_string();
                            latencies.push(begin.elapsed());
                        }
                        _ => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failures = 0;
    for thread in threads {
        let (l, f) = thread.join().unwrap();
        all.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{:18} {:9.0} req/s  p50 {:6.2} ms  p99 {:6.2} ms  status {{\"200\": {}, \"failed\": {failures}}}",
        "jwt-keepalive",
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        all.len()
    );
}
