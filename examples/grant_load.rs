//! Load generator for a person's grants, which a fixed-request tool such as oha cannot
//! send: every code and every refresh token is used once.
//!
//!   grant_load --base URL --ca CA.crt --client-id ID --user NAME --password-file F
//!              [--seconds 10] [--connections 32]
//!
//! Logs the user in and consents once (as a browser would), then runs three phases of
//! `--seconds` each, printing one line per phase:
//!   authorize  GET the authorization endpoint with the session: a code each (consent remembered)
//!   exchange   the codes of the first phase, each exchanged with PKCE (authorization_code grant)
//!   refresh    each connection refreshes its own token chain (rotation: every answer
//!              carries the next refresh token)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::tls::{Certificate, RootCerts, TlsConfig};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const REDIRECT: &str = "https://app.example/cb";

fn arg(args: &[String], name: &str, default: Option<&str>) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| default.map(str::to_owned))
        .unwrap_or_else(|| panic!("missing {name}"))
}

fn agent(roots: &[Certificate<'static>]) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(roots))
                .build(),
        )
        .build()
        .new_agent()
}

fn set_cookie(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()?
                .strip_prefix(&format!("{name}="))
                .map(str::to_owned)
        })
        .filter(|v| !v.is_empty())
}

/// The hidden inputs of an HTML form (askama escapes `&` as `&#38;`).
fn hidden(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|rest| {
            let (name, rest) = rest.split_once('"').unwrap();
            let value = rest.split("value=\"").nth(1).unwrap();
            let value = value.split('"').next().unwrap();
            (
                name.to_owned(),
                value.replace("&#38;", "&").replace("&amp;", "&"),
            )
        })
        .collect()
}

struct Run {
    base: String,
    client_id: String,
    roots: Vec<Certificate<'static>>,
    authorize: String,
}

impl Run {
    /// Logs in and consents; returns the session cookie.
    fn session(&self, user: &str, password: &str) -> String {
        let agent = agent(&self.roots);
        let mut page = agent.get(&self.authorize).call().unwrap();
        let csrf_cookie = set_cookie(&page, "tessera_login_csrf").unwrap();
        let html = page.body_mut().read_to_string().unwrap();
        let mut form = hidden(&html);
        form.push(("username".into(), user.into()));
        form.push(("password".into(), password.into()));
        let login = agent
            .post(format!(
                "{}/realms/cara/login-actions/authenticate",
                self.base
            ))
            .header("Cookie", &format!("tessera_login_csrf={csrf_cookie}"))
            .send_form(form.iter().map(|(a, b)| (a.as_str(), b.as_str())))
            .unwrap();
        assert_eq!(login.status(), 303, "login failed");
        let session = set_cookie(&login, "tessera_session").unwrap();
        let cookie = format!("tessera_session={session}");
        let mut consent = agent
            .get(&self.authorize)
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        if consent.status() == 200 {
            let html = consent.body_mut().read_to_string().unwrap();
            let mut form = hidden(&html);
            for scope in ["launch/patient", "offline_access", "patient/Observation.rs"] {
                form.push(("scope_granted".into(), scope.into()));
            }
            form.push(("decision".into(), "allow".into()));
            let answer = agent
                .post(format!("{}/realms/cara/login-actions/consent", self.base))
                .header("Cookie", &cookie)
                .send_form(form.iter().map(|(a, b)| (a.as_str(), b.as_str())))
                .unwrap();
            assert_eq!(answer.status(), 303, "consent failed");
        }
        cookie
    }

    /// Runs `work` on every connection for `seconds` (or until it returns None); prints
    /// the phase's line and returns what the work produced.
    fn phase<T: Send + 'static>(
        &self,
        name: &str,
        seconds: u64,
        connections: usize,
        work: impl Fn(usize, &ureq::Agent) -> Option<Result<T, String>> + Send + Sync + 'static,
    ) -> Vec<T> {
        let work = Arc::new(work);
        let stop = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let threads: Vec<_> = (0..connections)
            .map(|t| {
                let (work, stop, produced, roots) = (
                    work.clone(),
                    stop.clone(),
                    produced.clone(),
                    self.roots.clone(),
                );
                std::thread::spawn(move || {
                    let agent = agent(&roots);
                    let (mut latencies, mut failures) = (Vec::new(), 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let begin = Instant::now();
                        match work(t, &agent) {
                            None => break,
                            Some(Ok(value)) => {
                                latencies.push(begin.elapsed());
                                produced.lock().unwrap().push(value);
                            }
                            Some(Err(e)) => {
                                if failures == 0 {
                                    eprintln!("{e}");
                                }
                                failures += 1;
                            }
                        }
                    }
                    (latencies, failures)
                })
            })
            .collect();
        let deadline = started + Duration::from_secs(seconds);
        while Instant::now() < deadline && threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        let (mut all, mut failures) = (Vec::new(), 0);
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
            "{name:18} {:9.0} req/s  p50 {:6.2} ms  p99 {:6.2} ms  status {{\"ok\": {}, \"failed\": {failures}}}",
            all.len() as f64 / elapsed,
            pct(0.50),
            pct(0.99),
            all.len()
        );
        Arc::try_unwrap(produced)
            .ok()
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = arg(&args, "--base", None);
    let client_id = arg(&args, "--client-id", None);
    let seconds: u64 = arg(&args, "--seconds", Some("10")).parse().unwrap();
    let connections: usize = arg(&args, "--connections", Some("32")).parse().unwrap();
    let ca = std::fs::read(arg(&args, "--ca", None)).unwrap();
    let password = std::fs::read_to_string(arg(&args, "--password-file", None)).unwrap();
    let roots: Vec<Certificate<'static>> = ureq::tls::parse_pem(&ca)
        .filter_map(|i| match i.unwrap() {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    let query = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", REDIRECT),
        (
            "scope",
            "launch/patient offline_access patient/Observation.rs",
        ),
        ("state", "bench"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
        ("aud", &format!("{base}/fhir")),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", tessera_iam::authorize::form_encode(v)))
    .collect::<Vec<_>>()
    .join("&");
    let run = Arc::new(Run {
        authorize: format!("{base}/realms/cara/protocol/openid-connect/auth?{query}"),
        base: base.clone(),
        client_id,
        roots,
    });
    let cookie = run.session(&arg(&args, "--user", None), password.trim_end());

    let r = run.clone();
    let codes = run.phase("authorize", seconds, connections, move |_, agent| {
        let response = agent
            .get(&r.authorize)
            .header("Cookie", &cookie)
            .call()
            .map_err(|e| e.to_string());
        Some(response.and_then(|resp| {
            let location = resp
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| format!("authorize answered {}", resp.status()))?;
            location
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix("code="))
                .map(str::to_owned)
                .ok_or_else(|| format!("no code in {location}"))
        }))
    });

    let token_url = format!("{base}/realms/cara/protocol/openid-connect/token");
    let queue = Arc::new(Mutex::new(codes));
    let (r, url) = (run.clone(), token_url.clone());
    let refresh_tokens = run.phase("exchange", seconds, connections, move |_, agent| {
        let code = queue.lock().unwrap().pop()?;
        Some(token(
            agent,
            &url,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &r.client_id),
                ("code_verifier", VERIFIER),
            ],
        ))
    });

    let chains: Arc<Vec<Mutex<Option<String>>>> = Arc::new(
        (0..connections)
            .map(|i| Mutex::new(refresh_tokens.get(i).cloned()))
            .collect(),
    );
    let r = run.clone();
    run.phase("refresh", seconds, connections, move |t, agent| {
        let mut slot = chains[t].lock().unwrap();
        let current = slot.take()?;
        let next = token(
            agent,
            &token_url,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &current),
                ("client_id", &r.client_id),
            ],
        );
        if let Ok(next) = &next {
            *slot = Some(next.clone());
        }
        Some(next)
    });
}

/// POSTs a token request; returns the refresh token of the answer.
fn token(agent: &ureq::Agent, url: &str, form: &[(&str, &str)]) -> Result<String, String> {
    let mut response = agent
        .post(url)
        .send_form(form.iter().copied())
        .map_err(|e| e.to_string())?;
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!(
            "token endpoint answered {}: {body}",
            response.status()
        ));
    }
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    json["refresh_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "no refresh_token".to_owned())
}
