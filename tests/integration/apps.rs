//! Apps and users (SMART App Launch): a person logs in at the realm's pages, consents,
//! and a public app exchanges the code with PKCE, reads what was granted, and refreshes.
//! A cookie-keeping HTTPS client that does not follow redirects plays the browser, so
//! every status, Location and Set-Cookie is seen; tests/browser drives real Chromium.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use ureq::tls::{RootCerts, TlsConfig};

use crate::support::{decode_jwt, eventually, Client, Env, Reply, Server};

pub(crate) use crate::support::{MPI_A, MPI_B};
const REDIRECT: &str = "https://app.example/cb";
pub(crate) const PASSWORD: &str = "correct horse battery staple";
/// RFC 7636 appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const SCOPE: &str =
    "openid launch/patient offline_access patient/Patient.rs patient/Observation.rs";

/// A browser: keeps cookies, never follows redirects.
pub(crate) struct Browser {
    agent: ureq::Agent,
    base: String,
    cookies: HashMap<String, String>,
}

impl Browser {
    pub(crate) fn new(env: &Env) -> Self {
        let pem = std::fs::read(env.path("pki/ca.crt")).unwrap();
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item.unwrap() {
                ureq::tls::PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&certs))
            .build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(20)))
            .tls_config(tls)
            .build()
            .new_agent();
        Self {
            agent,
            base: env.base_url(),
            cookies: HashMap::new(),
        }
    }

    pub(crate) fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    pub(crate) fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.insert(name.to_owned(), value.to_owned());
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, reply: &Reply) {
        for (name, value) in &reply.headers {
            if !name.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            let pair = value.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() || value.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub(crate) fn get(&mut self, path: &str) -> Reply {
        let mut request = self.agent.get(self.url(path));
        if !self.cookies.is_empty() {
            request = request.header("Cookie", &self.cookie_header());
        }
        let reply = read(request.call());
        self.keep(&reply);
        reply
    }

    pub(crate) fn post(&mut self, path: &str, form: &[(String, String)]) -> Reply {
        let mut request = self.agent.post(self.url(path));
        if !self.cookies.is_empty() {
            request = request.header("Cookie", &self.cookie_header());
        }
        let reply = read(request.send_form(form.iter().map(|(a, b)| (a.as_str(), b.as_str()))));
        self.keep(&reply);
        reply
    }
}

fn read(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = result.unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = response.body_mut().read_to_string().unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// Undoes HTML escaping: named entities and decimal/hex character references.
pub(crate) fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail.find(';').unwrap();
        let entity = &tail[1..end];
        let ch = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ if entity.starts_with("#x") => {
                char::from_u32(u32::from_str_radix(&entity[2..], 16).unwrap()).unwrap()
            }
            _ => char::from_u32(entity[1..].parse().unwrap()).unwrap(),
        };
        out.push(ch);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The hidden inputs of the first form whose action ends with `action`.
pub(crate) fn hidden_fields(html: &str, action: &str) -> Vec<(String, String)> {
    let start = html
        .find(&format!("action=\"{action}"))
        .or_else(|| html.find(action))
        .unwrap_or_else(|| panic!("no form for {action} in {html}"));
    let form = &html[start..html[start..].find("</form>").unwrap() + start];
    let mut fields = Vec::new();
    for input in form.split("<input").skip(1) {
        if !input.contains("type=\"hidden\"") {
            continue;
        }
        let attr = |name: &str| {
            let key = format!("{name}=\"");
            let from = input.find(&key).unwrap() + key.len();
            unescape(&input[from..from + input[from..].find('"').unwrap()])
        };
        fields.push((attr("name"), attr("value")));
    }
    fields
}

/// The values of the scope checkboxes on a consent page.
fn offered_scopes(html: &str) -> Vec<String> {
    html.split("name=\"scope_granted\"")
        .skip(1)
        .map(|rest| {
            let from = rest.find("value=\"").unwrap() + 7;
            unescape(&rest[from..from + rest[from..].find('"').unwrap()])
        })
        .collect()
}

/// Waits (up to 10 s) until the exported trail holds every needle: the journal drains
/// into the database a moment after the response.
pub(crate) fn trail_with(env: &Env, needles: &[&str]) {
    let holds = |export: &String| needles.iter().all(|n| export.contains(n));
    let export = eventually(
        Duration::from_secs(10),
        || env.cli(&["audit", "export"]).unwrap(),
        holds,
    );
    assert!(holds(&export), "missing {needles:?} in {export}");
}

pub(crate) fn location(reply: &Reply) -> String {
    assert_eq!(reply.status, 303, "{}", reply.body);
    reply.header("location").unwrap().to_owned()
}

pub(crate) fn query_of(url: &str) -> HashMap<String, String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// An installation with two patients' accounts (partitions `pa`, `pb`), a patient user
/// reaching `pa`, a representative reaching both, a public app, and data in both.
pub(crate) struct Apps {
    _server: Server,
    pub(crate) env: Env,
    patient_id: String,
}

pub(crate) fn apps() -> Apps {
    let env = Env::new();
    let accounts = [env.add_account(MPI_A, "pa"), env.add_account(MPI_B, "pb")];
    let password = env.path("password.txt");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let pw = password.to_str().unwrap();
    env.cli(&[
        "user",
        "add",
        "anna",
        "--role",
        "patient",
        "--account",
        &accounts[0],
        "--fhir-user",
        "Patient/anna",
        "--password-file",
        pw,
    ])
    .unwrap();
    env.cli(&[
        "user",
        "add",
        "rita",
        "--role",
        "representative",
        "--account",
        &accounts[0],
        "--account",
        &accounts[1],
        "--password-file",
        pw,
    ])
    .unwrap();
    env.cli(&[
        "client",
        "add",
        "--client-id",
        "app",
        "--auth",
        "none",
        "--redirect-uri",
        REDIRECT,
        "--scope",
        "openid fhirUser launch/patient offline_access online_access patient/*.rs",
    ])
    .unwrap();
    env.cli(&[
        "client",
        "add",
        "--client-id",
        "other-app",
        "--auth",
        "none",
        "--redirect-uri",
        "https://other.example/cb",
        "--scope",
        "openid launch/patient patient/*.rs",
    ])
    .unwrap();
    let server = env.start();
    let writer = env.secret_token(
        "loader",
        &[
            "--scope",
            "system/*.cruds",
            "--partition",
            "pa",
            "--partition",
            "pb",
        ],
        &[],
    );
    let c = Client::new(&env, None);
    let mut patient_id = String::new();
    for partition in ["pa", "pb"] {
        let reply = c.send(
            "POST",
            &format!("/fhir/{partition}/Patient"),
            Some(&writer),
            &[],
            Some(r#"{"resourceType":"Patient","name":[{"family":"Muster"}]}"#),
        );
        assert_eq!(reply.status, 201, "{}", reply.body);
        if partition == "pa" {
            patient_id = reply.json()["id"].as_str().unwrap().to_owned();
        }
        for category in ["laboratory", "vital-signs"] {
            let body = json!({
                "resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
                "code": {"text": category},
            });
            let reply = c.send(
                "POST",
                &format!("/fhir/{partition}/Observation"),
                Some(&writer),
                &[],
                Some(&body.to_string()),
            );
            assert_eq!(reply.status, 201, "{}", reply.body);
        }
    }
    Apps {
        _server: server,
        env,
        patient_id,
    }
}

impl Apps {
    /// Adds `audrey`, an auditor, with the test password.
    pub(crate) fn add_auditor(&self) {
        let pw = self.env.path("password.txt");
        self.env
            .cli(&[
                "user",
                "add",
                "audrey",
                "--role",
                "auditor",
                "--password-file",
                pw.to_str().unwrap(),
            ])
            .unwrap();
    }

    fn authorize_url(&self, extra: &[(&str, &str)]) -> String {
        let aud = format!("{}/fhir", self.env.base_url());
        let mut pairs = vec![
            ("response_type", "code"),
            ("client_id", "app"),
            ("redirect_uri", REDIRECT),
            ("scope", SCOPE),
            ("state", "st&te 1"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("aud", aud.as_str()),
        ];
        for (name, value) in extra {
            pairs.retain(|(n, _)| n != name);
            if !value.is_empty() {
                pairs.push((name, value));
            }
        }
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("/realms/cara/protocol/openid-connect/auth?{query}")
    }

    /// Logs `user` in from an authorization request's login page; returns the reply to
    /// the request that follows the login.
    pub(crate) fn login(&self, browser: &mut Browser, authorize: &str, user: &str) -> Reply {
        let page = browser.get(authorize);
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("Log in"), "{}", page.body);
        let mut form = hidden_fields(&page.body, "/realms/cara/login-actions/authenticate");
        form.extend(owned(&[("username", user), ("password", PASSWORD)]));
        let next = location(&browser.post("/realms/cara/login-actions/authenticate", &form));
        assert!(
            next.starts_with("/realms/cara/protocol/openid-connect/auth?"),
            "{next}"
        );
        browser.get(&next)
    }

    /// Answers a consent page: `keep` the scopes to leave ticked, `narrow` category per
    /// scope, `partition` to pick; returns the redirect to the app.
    pub(crate) fn consent(
        &self,
        browser: &mut Browser,
        page: &Reply,
        keep: &[&str],
        narrow: &[(&str, &str)],
        partition: Option<&str>,
    ) -> String {
        assert_eq!(page.status, 200, "{}", page.body);
        let mut form = hidden_fields(&page.body, "/realms/cara/login-actions/consent");
        for scope in offered_scopes(&page.body) {
            if keep.contains(&scope.as_str()) {
                form.push(("scope_granted".into(), scope));
            }
        }
        for (scope, category) in narrow {
            form.push((format!("narrow:{scope}"), category.to_string()));
        }
        if let Some(p) = partition {
            form.push(("partition".into(), p.into()));
        }
        form.push(("decision".into(), "allow".into()));
        location(&browser.post("/realms/cara/login-actions/consent", &form))
    }

    fn exchange(&self, code: &str, verifier: &str, client_id: &str) -> Reply {
        Client::new(&self.env, None).token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ])
    }

    /// The whole flow for anna with the first consent; returns the code.
    fn code_for_anna(&self, browser: &mut Browser) -> String {
        let page = self.login(browser, &self.authorize_url(&[]), "anna");
        let back = self.consent(
            browser,
            &page,
            &[
                "openid",
                "launch/patient",
                "offline_access",
                "patient/Observation.rs",
            ],
            &[],
            None,
        );
        query_of(&back)["code"].clone()
    }
}

#[test]
fn a_patient_logs_in_consents_and_the_app_reads_only_what_was_granted() {
    let a = apps();
    let mut browser = Browser::new(&a.env);
    let page = a.login(&mut browser, &a.authorize_url(&[]), "anna");
    // The consent page names the app and each scope in words; anna reaches one record.
    assert!(
        page.body.contains("Allow <strong>app</strong>"),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains("Read, search Observation records of the chosen patient"));
    assert!(
        !page.body.contains("name=\"partition\""),
        "one record: no choice"
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("https://app.example"),
        "{csp}"
    );
    // Patient.rs unticked, Observations narrowed to laboratory.
    let back = a.consent(
        &mut browser,
        &page,
        &[
            "openid",
            "launch/patient",
            "offline_access",
            "patient/Observation.rs",
        ],
        &[("patient/Observation.rs", "laboratory")],
        None,
    );
    assert!(back.starts_with(REDIRECT), "{back}");
    let params = query_of(&back);
    assert_eq!(params["state"], "st&te 1", "state echoed exactly");
    assert_eq!(params["iss"], a.env.issuer());

    let reply = a.exchange(&params["code"], VERIFIER, "app");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    assert_eq!(
        body["patient"],
        a.patient_id.as_str(),
        "launch context at the top level"
    );
    assert_eq!(body["need_patient_banner"], false);
    assert_eq!(
        body["scope"],
        "launch/patient offline_access openid patient/Observation.rs?category=laboratory"
    );
    assert!(body["refresh_token"]
        .as_str()
        .is_some_and(|t| t.len() >= 43));
    let access = body["access_token"].as_str().unwrap();
    let (_, claims) = decode_jwt(access);
    let base = format!("{}/fhir", a.env.base_url());
    assert_eq!(claims["aud"], json!([format!("{base}/pa")]));
    assert_eq!(claims["partitions"], json!(["pa"]));
    assert_eq!(claims["client_id"], "app");
    assert_ne!(claims["sub"], "app", "the token speaks for the user");
    assert_eq!(
        claims["extensions"]["ihe_iua"]["subject_role"]["code"], "PAT",
        "{claims}"
    );

    let c = Client::new(&a.env, None);
    let labs = c.get_with_token("/fhir/pa/Observation", access);
    assert_eq!(labs.status, 200, "{}", labs.body);
    assert_eq!(labs.json()["total"], 1, "only laboratory: {}", labs.body);
    assert_eq!(
        c.get_with_token(&format!("/fhir/pa/Patient/{}", a.patient_id), access)
            .status,
        403,
        "Patient.rs was unticked"
    );
    // Another partition: the token's audience is pa's base URL, so pb's server does
    // not accept it at all (401 invalid_token).
    assert_eq!(c.get_with_token("/fhir/pb/Observation", access).status, 401);

    // The consent is remembered: the next authorization needs no page.
    let again = location(&browser.get(&a.authorize_url(&[(
        "scope",
        "openid launch/patient patient/Observation.rs?category=laboratory",
    )])));
    assert!(query_of(&again).contains_key("code"), "{again}");
    // A wider request asks again.
    assert_eq!(browser.get(&a.authorize_url(&[])).status, 200);

    // Every login is in the audit trail (DICOM 110114, Login 110122).
    trail_with(&a.env, &["\"110114\"", "\"110122\"", "\"anna\""]);
}

#[test]
fn a_representative_picks_whose_record() {
    let a = apps();
    let mut browser = Browser::new(&a.env);
    let page = a.login(&mut browser, &a.authorize_url(&[]), "rita");
    assert!(
        page.body.contains("Whose record may the app use?"),
        "{}",
        page.body
    );
    let back = a.consent(
        &mut browser,
        &page,
        &["launch/patient", "patient/Observation.rs"],
        &[],
        Some("pb"),
    );
    let reply = a.exchange(&query_of(&back)["code"], VERIFIER, "app");
    let body = reply.json();
    assert_eq!(body["need_patient_banner"], true);
    let (_, claims) = decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(claims["partitions"], json!(["pb"]));
    assert_eq!(
        claims["extensions"]["ihe_iua"]["subject_role"]["code"],
        "REP"
    );
    assert!(
        body.get("refresh_token").is_none(),
        "no offline_access granted"
    );
    // A record she does not reach cannot be forced through the form.
    let page = browser.get(&a.authorize_url(&[("state", "x")]));
    let mut form = hidden_fields(&page.body, "/realms/cara/login-actions/consent");
    form.extend(owned(&[
        ("scope_granted", "openid"),
        ("partition", "elsewhere"),
        ("decision", "allow"),
    ]));
    let refused = browser.post("/realms/cara/login-actions/consent", &form);
    assert_eq!(refused.status, 400);
    assert!(refused.header("location").is_none());
}

#[test]
fn codes_are_single_use_bound_and_pkce_checked() {
    let a = apps();
    let mut browser = Browser::new(&a.env);
    let code = a.code_for_anna(&mut browser);
    // Wrong verifier, verifier equal to the challenge, missing verifier: refused, and
    // a refused exchange spends the code.
    a.exchange(&code, CHALLENGE, "app")
        .oauth_error(400, "invalid_grant");
    let next = || {
        let mut b = Browser::new(&a.env);
        a.code_for_anna(&mut b)
    };
    let code = next();
    a.exchange(&code, &"x".repeat(43), "app")
        .oauth_error(400, "invalid_grant");
    let code = next();
    let missing = Client::new(&a.env, None).token(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("client_id", "app"),
    ]);
    missing.oauth_error(400, "invalid_request");
    // ... a missing verifier does not spend it.
    let first = a.exchange(&code, VERIFIER, "app");
    assert_eq!(first.status, 200, "{}", first.body);
    let access = first.json()["access_token"].as_str().unwrap().to_owned();
    let refresh = first.json()["refresh_token"].as_str().unwrap().to_owned();
    let c = Client::new(&a.env, None);
    assert_eq!(
        c.get_with_token("/fhir/pa/Observation", &access).status,
        200
    );
    // A second use: refused, and what the first issued is revoked (RFC 6749 4.1.2).
    a.exchange(&code, VERIFIER, "app")
        .oauth_error(400, "invalid_grant");
    assert_eq!(
        c.get_with_token("/fhir/pa/Observation", &access).status,
        401
    );
    c.token(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("client_id", "app"),
    ])
    .oauth_error(400, "invalid_grant");

    // Another client's exchange, a different redirect_uri, an expired code.
    let code = next();
    a.exchange(&code, VERIFIER, "other-app")
        .oauth_error(400, "invalid_grant");
    let code = next();
    Client::new(&a.env, None)
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://app.example/other"),
            ("client_id", "app"),
            ("code_verifier", VERIFIER),
        ])
        .oauth_error(400, "invalid_grant");
    let code = next();
    a.env.sql("UPDATE authorization_codes SET expires_at = 0");
    let expired = a
        .exchange(&code, VERIFIER, "app")
        .oauth_error(400, "invalid_grant");
    assert!(expired.contains("expired"), "{expired}");
    a.exchange("never-issued", VERIFIER, "app")
        .oauth_error(400, "invalid_grant");
    // A public client gets no client_credentials token.
    c.token(&[("grant_type", "client_credentials"), ("client_id", "app")])
        .oauth_error(400, "unauthorized_client");
}

#[test]
fn refresh_tokens_rotate_and_a_replay_revokes_the_family() {
    let a = apps();
    let mut browser = Browser::new(&a.env);
    let code = a.code_for_anna(&mut browser);
    let first = a.exchange(&code, VERIFIER, "app").json();
    let c = Client::new(&a.env, None);
    let refresh = |token: &str, scope: Option<&str>, client: &str| {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", client),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        c.token(&form)
    };
    let r1 = first["refresh_token"].as_str().unwrap();
    // Wider scope, another client: refused without spending the token? They spend it
    // only once the token itself matched, so try those on a token of its own.
    refresh(r1, Some("patient/*.rs"), "app").oauth_error(400, "invalid_scope");
    let code = a.code_for_anna(&mut Browser::new(&a.env));
    let second = a.exchange(&code, VERIFIER, "app").json();
    let r2 = second["refresh_token"].as_str().unwrap();
    refresh(r2, None, "other-app").oauth_error(400, "invalid_grant");

    let code = a.code_for_anna(&mut Browser::new(&a.env));
    let third = a.exchange(&code, VERIFIER, "app").json();
    let r3 = third["refresh_token"].as_str().unwrap().to_owned();
    let rotated = refresh(&r3, Some("patient/Observation.rs offline_access"), "app");
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let rotated = rotated.json();
    assert_eq!(rotated["scope"], "offline_access patient/Observation.rs");
    let r4 = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r4, r3);
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        c.get_with_token("/fhir/pa/Observation", &access).status,
        200
    );
    // The rotated token replayed: refused, and the whole family dies.
    refresh(&r3, None, "app").oauth_error(400, "invalid_grant");
    refresh(&r4, None, "app").oauth_error(400, "invalid_grant");
    assert_eq!(
        c.get_with_token("/fhir/pa/Observation", &access).status,
        401
    );
    // Introspection says inactive too.
    let rs = a.env.add_secret_client(&[
        "--client-id",
        "gateway",
        "--auth",
        "client_secret_post",
        "--scope",
        "introspection",
    ]);
    let seen = c.post_form(
        "/realms/cara/protocol/openid-connect/token/introspect",
        &[
            ("token", &access),
            ("client_id", "gateway"),
            ("client_secret", &rs),
        ],
    );
    assert_eq!(seen.json()["active"], false, "{}", seen.body);
}

#[test]
fn online_access_dies_with_the_session_and_consent_can_be_withdrawn() {
    let a = apps();
    let mut browser = Browser::new(&a.env);
    let page = a.login(
        &mut browser,
        &a.authorize_url(&[("scope", "online_access patient/Observation.rs")]),
        "anna",
    );
    let back = a.consent(
        &mut browser,
        &page,
        &["online_access", "patient/Observation.rs"],
        &[],
        None,
    );
    let body = a.exchange(&query_of(&back)["code"], VERIFIER, "app").json();
    let online = body["refresh_token"].as_str().unwrap().to_owned();

    // The account page lists the consent; withdrawing it asks the app to ask again.
    let account = browser.get("/realms/cara/account");
    assert_eq!(account.status, 200);
    assert!(account.body.contains("<td>app</td>"), "{}", account.body);

    // Logout (RP-initiated): a confirmation page with a CSRF token, then the session ends.
    let logout_page = browser.get(&format!(
        "/realms/cara/protocol/openid-connect/logout?client_id=app&post_logout_redirect_uri={}&state=bye",
        url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
    ));
    assert_eq!(logout_page.status, 200);
    let form = hidden_fields(
        &logout_page.body,
        "/realms/cara/protocol/openid-connect/logout",
    );
    let without_csrf: Vec<_> = form.iter().filter(|(n, _)| n != "csrf").cloned().collect();
    assert_eq!(
        browser
            .post("/realms/cara/protocol/openid-connect/logout", &without_csrf)
            .status,
        400,
        "no logout without the form's token"
    );
    let gone = location(&browser.post("/realms/cara/protocol/openid-connect/logout", &form));
    assert_eq!(gone, format!("{REDIRECT}?state=bye"));
    Client::new(&a.env, None)
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &online),
            ("client_id", "app"),
        ])
        .oauth_error(400, "invalid_grant");
    // An unregistered post_logout_redirect_uri is not followed.
    let stay = browser.get(
        "/realms/cara/protocol/openid-connect/logout?client_id=app&post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F",
    );
    assert_eq!(stay.status, 200);
    assert!(stay.header("location").is_none());

    // Withdraw: log in at the account page, withdraw, and the remembered consent is gone.
    let login = browser.get("/realms/cara/account");
    let mut form = hidden_fields(&login.body, "/realms/cara/login-actions/authenticate");
    form.extend(owned(&[("username", "anna"), ("password", PASSWORD)]));
    assert_eq!(
        location(&browser.post("/realms/cara/login-actions/authenticate", &form)),
        "/realms/cara/account",
        "a login continues only to Tessera's own pages"
    );
    let account = browser.get("/realms/cara/account");
    let form = hidden_fields(&account.body, "/realms/cara/account/consents/revoke");
    let done = location(&browser.post("/realms/cara/account/consents/revoke", &form));
    assert!(browser
        .get(&done)
        .body
        .contains("Access for app was withdrawn"));
    let asked = browser.get(&a.authorize_url(&[("scope", "online_access patient/Observation.rs")]));
    assert_eq!(asked.status, 200, "the consent page again");
    assert!(asked.body.contains("Allow <strong>app</strong>"));
}

#[test]
fn bad_authorization_requests_are_refused_without_an_open_redirect() {
    let a = apps();
    let mut browser = Browser::new(&a.env);
    // Untrusted client or redirect_uri: an error page, no Location.
    for extra in [
        vec![("redirect_uri", "https://evil.example/cb")],
        vec![("redirect_uri", "https://app.example/cb/../evil")],
        vec![("client_id", "nobody")],
        vec![("client_id", "")],
    ] {
        let reply = browser.get(&a.authorize_url(&extra));
        assert_eq!(reply.status, 400, "{extra:?}: {}", reply.body);
        assert!(reply.header("location").is_none());
        assert!(reply.body.contains("cannot be completed"), "{}", reply.body);
    }
    // Everything else goes back to the app with an error and the state.
    let base = a.env.base_url();
    let foreign = format!("{base}/fhir/nowhere");
    for (extra, error) in [
        (vec![("code_challenge", "")], "invalid_request"),
        (vec![("code_challenge_method", "plain")], "invalid_request"),
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
        ),
        (vec![("aud", "")], "invalid_request"),
        (
            vec![("aud", "https://elsewhere.example/fhir")],
            "invalid_request",
        ),
        (vec![("aud", foreign.as_str())], "invalid_request"),
        (vec![("scope", "system/*.rs")], "invalid_scope"),
        (vec![("scope", "patient/*.cruds")], "invalid_scope"),
    ] {
        let back = location(&browser.get(&a.authorize_url(&extra)));
        assert!(back.starts_with(REDIRECT), "{back}");
        let params = query_of(&back);
        assert_eq!(params["error"], error, "{extra:?}");
        assert_eq!(params["state"], "st&te 1");
    }
    // aud naming a partition anna does not reach: access_denied after login.
    let pb = format!("{base}/fhir/pb");
    let after = a.login(&mut browser, &a.authorize_url(&[("aud", &pb)]), "anna");
    assert_eq!(query_of(&location(&after))["error"], "access_denied");
    // Deny.
    let page = browser.get(&a.authorize_url(&[]));
    let mut form = hidden_fields(&page.body, "/realms/cara/login-actions/consent");
    form.push(("decision".into(), "deny".into()));
    let back = location(&browser.post("/realms/cara/login-actions/consent", &form));
    assert_eq!(query_of(&back)["error"], "access_denied");
    assert_eq!(query_of(&back)["state"], "st&te 1");
    // The consent form without its CSRF token changes nothing.
    let page = browser.get(&a.authorize_url(&[]));
    let mut form = hidden_fields(&page.body, "/realms/cara/login-actions/consent");
    form.retain(|(n, _)| n != "csrf");
    form.extend(owned(&[("scope_granted", "openid"), ("decision", "allow")]));
    let refused = browser.post("/realms/cara/login-actions/consent", &form);
    assert_eq!(refused.status, 400);
    assert!(refused.header("location").is_none());
}

#[test]
fn logins_resist_csrf_fixation_and_guessing() {
    let a = apps();
    let mut browser = Browser::new(&a.env);
    let page = browser.get(&a.authorize_url(&[]));
    let form = hidden_fields(&page.body, "/realms/cara/login-actions/authenticate");
    // No CSRF token in the form: refused.
    let mut no_token: Vec<_> = form.iter().filter(|(n, _)| n != "csrf").cloned().collect();
    no_token.extend(owned(&[("username", "anna"), ("password", PASSWORD)]));
    assert_eq!(
        browser
            .post("/realms/cara/login-actions/authenticate", &no_token)
            .status,
        400
    );
    // A session id planted before login is never the one after it.
    browser
        .cookies
        .insert("tessera_session".into(), "planted-by-attacker".into());
    let mut good = form.clone();
    good.extend(owned(&[("username", "anna"), ("password", PASSWORD)]));
    location(&browser.post("/realms/cara/login-actions/authenticate", &good));
    let session = browser.cookies["tessera_session"].clone();
    assert_ne!(session, "planted-by-attacker");
    assert!(session.len() >= 43);
    let stored = a.env.sql(&format!(
        "UPDATE user_sessions SET expires_at = expires_at WHERE id_hash = '{}'",
        tessera_iam::service::secret_hash("planted-by-attacker")
    ));
    assert_eq!(stored, 0, "the planted id names no session");

    // Wrong passwords: three free attempts, then a growing wait (429), never a lockout.
    let mut guesser = Browser::new(&a.env);
    let page = guesser.get(&a.authorize_url(&[]));
    let form = hidden_fields(&page.body, "/realms/cara/login-actions/authenticate");
    let attempt = |b: &mut Browser| {
        let mut f = form.clone();
        f.extend(owned(&[
            ("username", "rita"),
            ("password", "wrong password!"),
        ]));
        b.post("/realms/cara/login-actions/authenticate", &f)
    };
    for _ in 0..3 {
        let reply = attempt(&mut guesser);
        assert_eq!(reply.status, 401);
        assert!(reply.body.contains("Wrong username or password"));
    }
    let throttled = attempt(&mut guesser);
    assert_eq!(throttled.status, 429, "{}", throttled.body);
    assert!(throttled.body.contains("Please wait"));
    // An unknown user fails the same way as a wrong password.
    let mut f = form.clone();
    f.extend(owned(&[
        ("username", "nobody"),
        ("password", "wrong password!"),
    ]));
    let mut other = Browser::new(&a.env);
    other.cookies = guesser.cookies.clone();
    let reply = other.post("/realms/cara/login-actions/authenticate", &f);
    assert!(reply.status == 401 || reply.status == 429);
    // Failures are audited, throttled attempts too.
    trail_with(&a.env, &["wrong username or password", "throttled for"]);
    // A disabled user cannot log in; the CLI says so.
    let printed = a.env.cli(&["user", "disable", "anna"]).unwrap();
    assert!(printed.contains("disabled"), "{printed}");
    let listed = a.env.cli(&["user", "list"]).unwrap();
    assert!(
        listed.contains("anna") && listed.contains("patient"),
        "{listed}"
    );
    let shown = a.env.cli(&["user", "show", "anna"]).unwrap();
    assert!(!shown.contains("argon2"), "no hash shown: {shown}");
}

#[test]
fn discovery_advertises_the_code_flow() {
    let a = apps();
    let c = Client::new(&a.env, None);
    let oidc = c
        .get("/realms/cara/.well-known/openid-configuration")
        .json();
    assert_eq!(oidc["response_types_supported"], json!(["code"]));
    assert_eq!(
        oidc["authorization_endpoint"],
        format!("{}/protocol/openid-connect/auth", a.env.issuer())
    );
    assert_eq!(oidc["code_challenge_methods_supported"], json!(["S256"]));
    assert!(oidc["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("refresh_token")));
    let smart: Value = c.get("/fhir/pa/.well-known/smart-configuration").json();
    let capabilities = smart["capabilities"].as_array().unwrap();
    for capability in [
        "launch-standalone",
        "client-public",
        "permission-offline",
        "context-standalone-patient",
    ] {
        assert!(capabilities.contains(&json!(capability)), "{capability}");
    }
    for capability in ["launch-ehr", "sso-openid-connect", "context-ehr-encounter"] {
        assert!(capabilities.contains(&json!(capability)), "{capability}");
    }
    assert_eq!(
        oidc["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    assert_eq!(
        oidc["userinfo_endpoint"],
        format!("{}/protocol/openid-connect/userinfo", a.env.issuer())
    );
    assert_eq!(
        oidc["end_session_endpoint"],
        format!("{}/protocol/openid-connect/logout", a.env.issuer())
    );
}

#[test]
fn openid_gives_an_rs256_id_token_and_userinfo() {
    let a = apps();
    let mut browser = Browser::new(&a.env);
    let authorize = a.authorize_url(&[
        (
            "scope",
            "openid fhirUser launch/patient patient/Observation.rs",
        ),
        ("nonce", "n-0S6_WzA2Mj"),
    ]);
    let page = a.login(&mut browser, &authorize, "anna");
    let back = a.consent(
        &mut browser,
        &page,
        &[
            "openid",
            "fhirUser",
            "launch/patient",
            "patient/Observation.rs",
        ],
        &[],
        None,
    );
    let body = a.exchange(&query_of(&back)["code"], VERIFIER, "app").json();
    let id_token = body["id_token"].as_str().expect("an id_token");
    let (header, claims) = decode_jwt(id_token);
    assert_eq!(header["alg"], "RS256");
    // It verifies against the realm's JWKS.
    let jwks: tessera_iam::jose::JwkSet = serde_json::from_str(
        &Client::new(&a.env, None)
            .get("/realms/cara/protocol/openid-connect/certs")
            .body,
    )
    .unwrap();
    tessera_iam::jose::UnverifiedJws::parse(id_token)
        .unwrap()
        .verify(&jwks.keys)
        .expect("the id_token verifies with the published key");
    assert_eq!(claims["iss"], a.env.issuer());
    assert_eq!(claims["aud"], "app");
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    let (_, access) = decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], access["sub"]);
    assert_eq!(
        claims["fhirUser"],
        format!("{}/fhir/pa/Patient/anna", a.env.base_url()),
        "an absolute URL"
    );
    assert!(claims["auth_time"].as_i64().unwrap() <= claims["iat"].as_i64().unwrap());

    // UserInfo with the access token; not without openid, not without a token.
    let c = Client::new(&a.env, None);
    let token = body["access_token"].as_str().unwrap();
    let info = c.get_with_token("/realms/cara/protocol/openid-connect/userinfo", token);
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(info.json()["sub"], claims["sub"]);
    assert_eq!(info.json()["fhirUser"], claims["fhirUser"]);
    let machine = a
        .env
        .secret_token("machine", &["--scope", "system/*.rs"], &[]);
    assert_eq!(
        c.get_with_token("/realms/cara/protocol/openid-connect/userinfo", &machine)
            .status,
        403
    );
    assert_eq!(
        c.get("/realms/cara/protocol/openid-connect/userinfo")
            .status,
        401
    );

    // The id_token key rotates on its own: the access-token key is untouched, and the
    // previous id_token key stays published until its tokens have expired.
    let access_kid = decode_jwt(token).0["kid"].as_str().unwrap().to_owned();
    let printed = a.env.cli(&["keys", "rotate", "--id-token"]).unwrap();
    assert!(
        printed.contains("now signs id_tokens with RS256"),
        "{printed}"
    );
    let old_kid = header["kid"].as_str().unwrap();
    assert!(printed.contains(&format!("key {old_kid} stops signing")));
    assert!(!printed.contains(&access_kid), "{printed}");
    let listed = a.env.cli(&["keys", "list"]).unwrap();
    let line_of = |kid: &str| listed.lines().find(|l| l.contains(kid)).unwrap().to_owned();
    assert!(line_of(old_kid).contains("id_token"), "{listed}");
    assert!(line_of(old_kid).contains("verifying"), "{listed}");
    assert!(line_of(&access_kid).contains("signing"), "{listed}");
    let page = browser.get(&authorize);
    assert_eq!(page.status, 303, "consent remembered: {}", page.body);
    let body = a
        .exchange(&query_of(&location(&page))["code"], VERIFIER, "app")
        .json();
    let (new_header, _) = decode_jwt(body["id_token"].as_str().unwrap());
    assert_eq!(new_header["alg"], "RS256");
    assert_ne!(new_header["kid"], header["kid"]);
    let (access_header, _) = decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(access_header["kid"], access_kid.as_str());
    let kids: Vec<String> = Client::new(&a.env, None)
        .get("/realms/cara/protocol/openid-connect/certs")
        .json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kids.len(), 3, "{kids:?}");
    assert!(kids.iter().any(|k| k == old_kid));
}

#[test]
fn an_ehr_launches_an_app_in_a_context_used_once() {
    let a = apps();
    // A practitioner reaching pb, an EHR registered for launches on pb.
    let printed = a.env.cli(&["account", "list"]).unwrap();
    let pb_account = printed
        .lines()
        .find(|l| l.contains(" pb"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let pw = a.env.path("password.txt");
    a.env
        .cli(&[
            "user",
            "add",
            "dr-house",
            "--role",
            "practitioner",
            "--account",
            &pb_account,
            "--gln",
            "7601000000001",
            "--fhir-user",
            "Practitioner/house",
            "--password-file",
            pw.to_str().unwrap(),
        ])
        .unwrap();
    a.env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "ehr-app",
            "--auth",
            "none",
            "--redirect-uri",
            REDIRECT,
            "--launch-url",
            "https://app.example/launch",
            "--scope",
            "openid fhirUser launch patient/*.rs user/*.rs",
        ])
        .unwrap();
    let ehr_secret = a.env.add_secret_client(&[
        "--client-id",
        "ehr",
        "--auth",
        "client_secret_post",
        "--scope",
        "launch",
        "--partition",
        "pb",
    ]);
    let c = Client::new(&a.env, None);
    let register = |extra: &[(&str, &str)]| {
        let mut form = vec![
            ("client_id", "ehr"),
            ("client_secret", ehr_secret.as_str()),
            ("app", "ehr-app"),
            ("partition", "pb"),
            ("encounter", "enc-7"),
            ("fhirContext", r#"[{"reference":"Encounter/enc-7"}]"#),
        ];
        for (k, v) in extra {
            form.retain(|(n, _)| n != k);
            form.push((k, v));
        }
        c.post_form("/realms/cara/launch", &form)
    };
    let launched = register(&[]);
    assert_eq!(launched.status, 200, "{}", launched.body);
    let launched = launched.json();
    let launch = launched["launch"].as_str().unwrap().to_owned();
    let iss = format!("{}/fhir/pb", a.env.base_url());
    assert_eq!(launched["iss"], iss.as_str());
    assert!(launched["launch_url"]
        .as_str()
        .unwrap()
        .starts_with("https://app.example/launch?iss="));
    // The EHR may launch only where it is registered, only with the launch scope.
    register(&[("partition", "pa")]).oauth_error(400, "invalid_request");
    register(&[("fhirContext", "not json")]).oauth_error(400, "invalid_request");
    let plain = a.env.add_secret_client(&[
        "--client-id",
        "not-an-ehr",
        "--auth",
        "client_secret_post",
        "--scope",
        "system/*.rs",
        "--partition",
        "pb",
    ]);
    c.post_form(
        "/realms/cara/launch",
        &[
            ("client_id", "not-an-ehr"),
            ("client_secret", &plain),
            ("app", "ehr-app"),
            ("partition", "pb"),
        ],
    )
    .oauth_error(400, "unauthorized_client");

    let ehr_url = |launch: &str, client: &str| {
        a.authorize_url(&[
            ("client_id", client),
            ("scope", "openid fhirUser launch patient/*.rs"),
            ("launch", launch),
            ("aud", iss.as_str()),
        ])
    };
    // Another app's launch, an unknown launch: refused back to the app.
    let mut browser = Browser::new(&a.env);
    a.env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "third",
            "--auth",
            "none",
            "--redirect-uri",
            REDIRECT,
            "--scope",
            "launch patient/*.rs openid fhirUser",
        ])
        .unwrap();
    for url in [ehr_url(&launch, "third"), ehr_url("made-up", "ehr-app")] {
        let back = location(&browser.get(&url));
        assert_eq!(query_of(&back)["error"], "invalid_request", "{back}");
    }
    // The practitioner logs in and allows; the context comes back with the token.
    let page = a.login(&mut browser, &ehr_url(&launch, "ehr-app"), "dr-house");
    assert!(page.body.contains("Muster (record pb)"), "{}", page.body);
    let back = a.consent(
        &mut browser,
        &page,
        &["openid", "fhirUser", "launch", "patient/*.rs"],
        &[],
        None,
    );
    let body = a
        .exchange(&query_of(&back)["code"], VERIFIER, "ehr-app")
        .json();
    assert_eq!(body["encounter"], "enc-7", "{body}");
    assert_eq!(
        body["fhirContext"],
        json!([{"reference": "Encounter/enc-7"}])
    );
    assert!(body["patient"].as_str().is_some());
    assert_eq!(body["need_patient_banner"], true);
    let (_, claims) = decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(claims["partitions"], json!(["pb"]));
    assert_eq!(
        claims["extensions"]["ihe_iua"]["subject_role"]["code"],
        "HCP"
    );
    assert_eq!(
        claims["extensions"]["ihe_iua"]["national_provider_identifier"],
        "7601000000001"
    );
    let (_, id) = decode_jwt(body["id_token"].as_str().unwrap());
    assert_eq!(
        id["fhirUser"],
        format!("{}/fhir/pb/Practitioner/house", a.env.base_url())
    );
    // Used once: the same launch again is refused.
    let back = location(&browser.get(&ehr_url(&launch, "ehr-app")));
    assert_eq!(
        query_of(&back).get("error").map(String::as_str),
        Some("invalid_request"),
        "{back}"
    );
}

#[test]
fn browser_apps_get_cors_from_their_registered_origins() {
    let a = apps();
    let c = Client::new(&a.env, None);
    let preflight = |path: &str, origin: &str| {
        c.send(
            "OPTIONS",
            path,
            None,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            None,
        )
    };
    let token_path = "/realms/cara/protocol/openid-connect/token";
    let ok = preflight(token_path, "https://app.example");
    assert_eq!(ok.status, 204, "{}", ok.body);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(ok
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(ok.header("access-control-allow-credentials").is_none());
    let refused = preflight(token_path, "https://evil.example");
    assert_eq!(refused.status, 403);
    assert!(refused.header("access-control-allow-origin").is_none());
    // The pages people log in on are never cross-origin.
    let pages = preflight(
        "/realms/cara/protocol/openid-connect/auth",
        "https://app.example",
    );
    assert!(pages.header("access-control-allow-origin").is_none());

    // Real requests carry the header for a registered origin only.
    for path in [
        "/fhir/pa/metadata",
        "/fhir/pa/.well-known/smart-configuration",
        "/realms/cara/.well-known/openid-configuration",
        "/realms/cara/protocol/openid-connect/certs",
    ] {
        let reply = c.send(
            "GET",
            path,
            None,
            &[("Origin", "https://other.example")],
            None,
        );
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some("https://other.example"),
            "{path}"
        );
        let reply = c.send(
            "GET",
            path,
            None,
            &[("Origin", "https://evil.example")],
            None,
        );
        assert!(
            reply.header("access-control-allow-origin").is_none(),
            "{path}"
        );
    }
    let reply = c.send(
        "POST",
        token_path,
        None,
        &[
            ("Origin", "https://app.example"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some("grant_type=refresh_token&refresh_token=x&client_id=app"),
    );
    reply.oauth_error(400, "invalid_grant");
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example"),
        "errors are readable by the app too"
    );
}

#[test]
fn refresh_tokens_are_introspectable_and_revocable() {
    let a = apps();
    let code = a.code_for_anna(&mut Browser::new(&a.env));
    let body = a.exchange(&code, VERIFIER, "app").json();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let access = body["access_token"].as_str().unwrap().to_owned();
    let c = Client::new(&a.env, None);
    let secret = a.env.add_secret_client(&[
        "--client-id",
        "gateway",
        "--auth",
        "client_secret_post",
        "--scope",
        "introspection",
    ]);
    let introspect = |token: &str| {
        c.post_form(
            "/realms/cara/protocol/openid-connect/token/introspect",
            &[
                ("token", token),
                ("client_id", "gateway"),
                ("client_secret", &secret),
            ],
        )
        .json()
    };
    let seen = introspect(&refresh);
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["token_type"], "refresh_token");
    assert_eq!(seen["client_id"], "app");
    assert_eq!(seen["scope"], body["scope"]);
    // A resource server learns nothing about refresh tokens.
    let rs = a.env.add_secret_client(&[
        "--client-id",
        "fhir-rs",
        "--auth",
        "client_secret_post",
        "--scope",
        "introspection",
        "--resource-server",
        &format!("{}/fhir", a.env.base_url()),
    ]);
    let seen = c
        .post_form(
            "/realms/cara/protocol/openid-connect/token/introspect",
            &[
                ("token", &refresh),
                ("client_id", "fhir-rs"),
                ("client_secret", &rs),
            ],
        )
        .json();
    assert_eq!(seen, json!({"active": false}));

    // Another client may not revoke it; the app may, and that ends the grant.
    let revoke = |client: &str, token: &str| {
        c.post_form(
            "/realms/cara/protocol/openid-connect/revoke",
            &[
                ("token", token),
                ("client_id", client),
                ("token_type_hint", "refresh_token"),
            ],
        )
    };
    revoke("other-app", &refresh).oauth_error(400, "unauthorized_client");
    assert_eq!(introspect(&refresh)["active"], true);
    let done = revoke("app", &refresh);
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(introspect(&refresh), json!({"active": false}));
    assert_eq!(
        introspect(&access),
        json!({"active": false}),
        "its access token too"
    );
    c.token(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("client_id", "app"),
    ])
    .oauth_error(400, "invalid_grant");
}

#[test]
fn an_auditor_reads_the_trail_and_nobody_else_does() {
    let a = apps();
    a.add_auditor();
    a.env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "trail-app",
            "--auth",
            "none",
            "--redirect-uri",
            REDIRECT,
            "--scope",
            // The trail is registered by name: `user/*.rs` would not cover it.
            "openid user/*.rs user/AuditEvent.cruds patient/*.rs",
        ])
        .unwrap();
    let url = |extra: &[(&str, &str)]| {
        let mut all = vec![
            ("client_id", "trail-app"),
            ("scope", "openid user/AuditEvent.rs"),
        ];
        all.extend_from_slice(extra);
        a.authorize_url(&all)
    };
    // The auditor: a consent page with nothing to choose, then a token for the trail.
    let mut browser = Browser::new(&a.env);
    let page = a.login(&mut browser, &url(&[]), "audrey");
    assert!(!page.body.contains("name=\"partition\""), "{}", page.body);
    let back = a.consent(
        &mut browser,
        &page,
        &["openid", "user/AuditEvent.rs"],
        &[],
        None,
    );
    let body = a
        .exchange(&query_of(&back)["code"], VERIFIER, "trail-app")
        .json();
    let token = body["access_token"].as_str().unwrap();
    let (_, claims) = decode_jwt(token);
    assert!(claims.get("partitions").is_none(), "{claims}");
    let day = &tessera_atna::timestamp(tessera_types::UnixTime(crate::support::now()))[..10];
    let c = Client::new(&a.env, None);
    let trail = c.send(
        "GET",
        &format!("/audit/fhir/AuditEvent?date=ge{day}"),
        Some(token),
        &[],
        None,
    );
    assert_eq!(trail.status, 200, "{}", trail.body);
    assert!(trail.json()["total"].as_u64().unwrap() > 0);
    // Her login reaches no patient record.
    let back = location(&browser.get(&url(&[(
        "scope",
        "user/AuditEvent.rs patient/Observation.rs",
    )])));
    assert_eq!(query_of(&back)["error"], "access_denied");
    // She reads the trail; she never writes to it, whatever the app registered.
    let back = location(&browser.get(&url(&[("scope", "user/AuditEvent.cu")])));
    assert_eq!(query_of(&back)["error"], "access_denied");
    // An app registered with `user/*.rs` only is refused the trail outright.
    a.env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "clinical-app",
            "--auth",
            "none",
            "--redirect-uri",
            REDIRECT,
            "--scope",
            "openid user/*.rs",
        ])
        .unwrap();
    let wide = a.authorize_url(&[
        ("client_id", "clinical-app"),
        ("scope", "openid user/AuditEvent.rs"),
    ]);
    let back = location(&browser.get(&wide));
    assert_eq!(query_of(&back)["error"], "invalid_scope");
    // A patient's app never gets the trail, even with it registered.
    let mut browser = Browser::new(&a.env);
    let back = location(&a.login(&mut browser, &url(&[]), "anna"));
    assert_eq!(query_of(&back)["error"], "access_denied");
}
