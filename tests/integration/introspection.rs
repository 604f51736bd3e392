//! ITI-102 introspection, RFC 7009 revocation and key rotation, over real HTTPS.

use serde_json::{json, Value};
use tessera_iam::jose::{b64, Algorithm, SigningKey};
use tessera_iam::IamStore as _;
use tessera_types::RealmName;

use crate::support::{decode_jwt, eventually, now, Client, Env, Reply, Server};

const INTROSPECT: &str = "/realms/cara/protocol/openid-connect/token/introspect";
const REVOKE: &str = "/realms/cara/protocol/openid-connect/revoke";

/// An installation with: `tcu` (mTLS, gets tokens), `gateway` (mTLS resource server for
/// the vault audience, may introspect), `auditor` (secret, may introspect, no audience).
struct Setup {
    env: Env,
    tcu: Client,
    gateway: Client,
    auditor_secret: String,
}

fn setup() -> Setup {
    let env = Env::new();
    let fhir = format!("{}/fhir", env.base_url());
    env.configure(|c| c.iam.audiences = vec![fhir.clone(), "https://other.example/fhir".into()]);
    let (tcu_crt, tcu_key) = env.add_mtls_client("tcu", &["--scope", "system/*.rs"]);
    let (gw_crt, gw_key) = env.add_mtls_client(
        "gateway",
        &["--scope", "introspection", "--resource-server", &fhir],
    );
    let auditor_secret = env.add_secret_client(&[
        "--client-id",
        "auditor",
        "--auth",
        "client_secret_basic",
        "--scope",
        "introspection",
    ]);
    let tcu = Client::new(&env, Some((&tcu_crt, &tcu_key)));
    let gateway = Client::new(&env, Some((&gw_crt, &gw_key)));
    Setup {
        env,
        tcu,
        gateway,
        auditor_secret,
    }
}

impl Setup {
    fn token(&self, extra: &[(&str, &str)]) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("client_id", "tcu")];
        form.extend_from_slice(extra);
        let reply = self.tcu.token(&form);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["access_token"].as_str().unwrap().to_owned()
    }

    fn gateway_introspects(&self, token: &str) -> Reply {
        self.gateway
            .post_form(INTROSPECT, &[("token", token), ("client_id", "gateway")])
    }

    fn auditor_introspects(&self, client: &Client, token: &str) -> Reply {
        client
            .try_post_form(
                INTROSPECT,
                &[("token", token)],
                Some(&basic("auditor", &self.auditor_secret)),
            )
            .unwrap()
    }

    /// A token signed with the realm's real key, with claims of the test's choosing.
    fn forge(&self, patch: Value) -> String {
        let store = tessera::cli::open_store(&self.env.loaded()).unwrap();
        let stored = store
            .signing_keys(
                &RealmName::try_from("cara").unwrap(),
                tessera_types::UnixTime(now()),
            )
            .unwrap();
        let key = SigningKey::from_pkcs8(stored[0].alg, &stored[0].pkcs8).unwrap();
        let (_, mut claims) = decode_jwt(&self.token(&[]));
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        key.sign("at+jwt", &claims).unwrap()
    }
}

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

fn assert_inactive(reply: &Reply, case: &str) {
    assert_eq!(reply.status, 200, "{case}: {}", reply.body);
    assert_eq!(reply.json(), json!({"active": false}), "{case}");
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{case}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{case}"
    );
}

#[test]
fn an_active_token_introspects_with_exactly_its_claims() {
    let s = setup();
    let _server = s.env.start();
    let token = s.token(&[("scope", "system/Patient.rs")]);
    let reply = s.gateway_introspects(&token);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let mut expected = decode_jwt(&token).1;
    expected["active"] = json!(true);
    assert_eq!(reply.json(), expected);
    assert!(reply.json()["cnf"]["x5t#S256"].is_string());
    // The same answer from cache, and via client_secret_basic.
    assert_eq!(s.gateway_introspects(&token).json(), expected);
    assert_eq!(
        s.auditor_introspects(&Client::new(&s.env, None), &token)
            .json(),
        expected
    );
    let hinted = s.gateway.post_form(
        INTROSPECT,
        &[
            ("token", &token),
            ("client_id", "gateway"),
            ("token_type_hint", "access_token"),
        ],
    );
    assert_eq!(hinted.json(), expected);
}

#[test]
fn every_inactive_token_gets_active_false_and_nothing_else() {
    let s = setup();
    let other_realm = s.env.cli(&["realm", "add", "hospital"]).unwrap();
    assert!(other_realm.contains("created realm"));
    let h_secret = s.env.add_secret_client(&[
        "--realm",
        "hospital",
        "--client-id",
        "h",
        "--auth",
        "client_secret_post",
        "--scope",
        "x",
    ]);
    let _server = s.env.start();

    let good = s.token(&[]);
    let parts: Vec<&str> = good.split('.').collect();
    let mut sig = tessera_iam::jose::b64_decode(parts[2]).unwrap();
    sig[5] ^= 1;
    let hospital_token = Client::new(&s.env, None)
        .post_form(
            "/realms/hospital/protocol/openid-connect/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "h"),
                ("client_secret", &h_secret),
            ],
        )
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (stranger, _) = SigningKey::generate_ec(Algorithm::ES256).unwrap();
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"at+jwt"}"#), parts[1]);
    let assertion_like = {
        let store = tessera::cli::open_store(&s.env.loaded()).unwrap();
        let stored = store
            .signing_keys(
                &RealmName::try_from("cara").unwrap(),
                tessera_types::UnixTime(now()),
            )
            .unwrap();
        SigningKey::from_pkcs8(stored[0].alg, &stored[0].pkcs8)
            .unwrap()
            .sign("JWT", &decode_jwt(&good).1)
            .unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "not-a-token".into()),
        (
            "bad signature",
            format!("{}.{}.{}", parts[0], parts[1], b64(&sig)),
        ),
        ("another realm's token", hospital_token),
        (
            "unknown key",
            stranger.sign("at+jwt", &decode_jwt(&good).1).unwrap(),
        ),
        ("alg none", none),
        ("typ JWT instead of at+jwt", assertion_like),
        (
            "expired",
            s.forge(json!({"iat": now() - 600, "exp": now() - 1})),
        ),
        (
            "not yet valid",
            s.forge(json!({"iat": now() + 600, "exp": now() + 900})),
        ),
        (
            "other issuer",
            s.forge(json!({"iss": "https://evil.example/realms/cara"})),
        ),
    ];
    for (case, token) in &cases {
        assert_inactive(&s.gateway_introspects(token), case);
    }
    // A genuine token stays active through all of that.
    assert_eq!(s.gateway_introspects(&good).json()["active"], true);
}

#[test]
fn a_resource_server_learns_only_about_tokens_meant_for_it() {
    let s = setup();
    let _server = s.env.start();
    let elsewhere = s.token(&[("resource", "https://other.example/fhir")]);
    assert_eq!(
        decode_jwt(&elsewhere).1["aud"],
        json!(["https://other.example/fhir"])
    );
    assert_inactive(
        &s.gateway_introspects(&elsewhere),
        "aud excludes the gateway",
    );
    // A caller that is no resource server sees it active.
    assert_eq!(
        s.auditor_introspects(&Client::new(&s.env, None), &elsewhere)
            .json()["active"],
        true
    );
    let for_gateway = s.token(&[]);
    assert_eq!(
        decode_jwt(&for_gateway).1["aud"].as_array().unwrap().len(),
        2
    );
    assert_eq!(s.gateway_introspects(&for_gateway).json()["active"], true);
}

#[test]
fn callers_must_authenticate_and_be_allowed_to_introspect() {
    let s = setup();
    let (be_key, _) = SigningKey::generate_ec(Algorithm::ES256).unwrap();
    s.env.add_key_client("be", &be_key, "introspection");
    let _server = s.env.start();
    let token = s.token(&[]);
    let anonymous = Client::new(&s.env, None);

    anonymous
        .post_form(INTROSPECT, &[("token", &token)])
        .oauth_error(401, "invalid_client");
    // tcu authenticates fine but may not introspect.
    let why = s
        .tcu
        .post_form(INTROSPECT, &[("token", &token), ("client_id", "tcu")])
        .oauth_error(401, "invalid_client");
    assert!(why.contains("introspection"), "{why}");
    anonymous
        .try_post_form(
            INTROSPECT,
            &[("token", &token)],
            Some(&basic("auditor", "wrong")),
        )
        .unwrap()
        .oauth_error(401, "invalid_client");
    anonymous
        .post_form(INTROSPECT, &[("client_id", "gateway")])
        .oauth_error(400, "invalid_request");
    assert_eq!(anonymous.get(INTROSPECT).status, 405);

    // private_key_jwt callers; their assertion is single-use here too.
    let assertion = be_key
        .sign("JWT", &json!({"iss": "be", "sub": "be", "aud": s.env.token_url(), "exp": now() + 60, "jti": "intro-1"}))
        .unwrap();
    let form = [
        ("token", token.as_str()),
        (
            "client_assertion_type",
            tessera_iam::request::JWT_BEARER_ASSERTION,
        ),
        ("client_assertion", assertion.as_str()),
    ];
    assert_eq!(
        anonymous.post_form(INTROSPECT, &form).json()["active"],
        true
    );
    anonymous
        .post_form(INTROSPECT, &form)
        .oauth_error(401, "invalid_client");

    // Bearer: the gateway's own token with the introspection scope, bound to its certificate.
    let gw_token = s
        .gateway
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "gateway"),
        ])
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {gw_token}");
    let reply = s
        .gateway
        .try_post_form(INTROSPECT, &[("token", &token)], Some(&bearer))
        .unwrap();
    assert_eq!(reply.json()["active"], true, "{}", reply.body);
    // Without its certificate the bound token is no credential.
    let stolen = anonymous
        .try_post_form(INTROSPECT, &[("token", &token)], Some(&bearer))
        .unwrap();
    assert_eq!(stolen.status, 401);
    assert_eq!(
        stolen.header("www-authenticate"),
        Some("Bearer realm=\"cara\", error=\"invalid_token\"")
    );
    // A valid token without the introspection scope.
    let tcu_bearer = format!("Bearer {token}");
    let weak = s
        .tcu
        .try_post_form(INTROSPECT, &[("token", &token)], Some(&tcu_bearer))
        .unwrap();
    assert_eq!(weak.status, 401);
    assert_eq!(
        weak.header("www-authenticate"),
        Some("Bearer realm=\"cara\", error=\"insufficient_scope\"")
    );
    let junk = anonymous
        .try_post_form(INTROSPECT, &[("token", &token)], Some("Bearer junk"))
        .unwrap();
    assert_eq!(junk.status, 401);
    assert_eq!(junk.json()["error"], "invalid_token");
}

#[test]
fn a_client_revokes_its_own_tokens_and_no_one_elses() {
    let s = setup();
    let _server = s.env.start();
    let token = s.token(&[]);
    let auditor = Client::new(&s.env, None);

    // Another client cannot revoke it; it stays active.
    let refused = auditor
        .try_post_form(
            REVOKE,
            &[("token", &token)],
            Some(&basic("auditor", &s.auditor_secret)),
        )
        .unwrap();
    refused.oauth_error(400, "unauthorized_client");
    assert_eq!(s.gateway_introspects(&token).json()["active"], true);
    // Unauthenticated: refused.
    auditor
        .post_form(REVOKE, &[("token", &token)])
        .oauth_error(401, "invalid_client");

    let revoked = s
        .tcu
        .post_form(REVOKE, &[("token", &token), ("client_id", "tcu")]);
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_inactive(&s.gateway_introspects(&token), "revoked");
    // Again, and for tokens that are not tokens: still 200 (RFC 7009 2.2).
    assert_eq!(
        s.tcu
            .post_form(REVOKE, &[("token", &token), ("client_id", "tcu")])
            .status,
        200
    );
    assert_eq!(
        s.tcu
            .post_form(
                REVOKE,
                &[
                    ("token", "garbage"),
                    ("client_id", "tcu"),
                    ("token_type_hint", "refresh_token")
                ]
            )
            .status,
        200
    );
    // Other tokens of the client are unaffected.
    assert_eq!(s.gateway_introspects(&s.token(&[])).json()["active"], true);

    // The operator revokes by jti.
    let other = s.token(&[]);
    let jti = decode_jwt(&other).1["jti"].as_str().unwrap().to_owned();
    let printed = s.env.cli(&["token", "revoke", &jti]).unwrap();
    assert!(printed.contains("inactive"), "{printed}");
    assert_inactive(&s.gateway_introspects(&other), "revoked by the operator");
}

#[test]
fn a_revocation_is_visible_at_once_to_another_instance() {
    let s = setup();
    let _first = s.env.start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _second = Server::start_with(&s.env, |loaded| {
        loaded.config.server.public_url = s.env.base_url();
        loaded.config.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    });
    let second = Client::at(&s.env, &format!("https://127.0.0.1:{port}"));
    let token = s.token(&[]);
    // The second instance has verified (and cached) the token...
    assert_eq!(
        s.auditor_introspects(&second, &token).json()["active"],
        true
    );
    // ...the first revokes it...
    assert_eq!(
        s.tcu
            .post_form(REVOKE, &[("token", &token), ("client_id", "tcu")])
            .status,
        200
    );
    // ...and the second says inactive on the very next request.
    assert_inactive(
        &s.auditor_introspects(&second, &token),
        "revoked on another instance",
    );
}

#[test]
fn rotation_keeps_old_tokens_valid_until_their_key_retires() {
    let s = setup();
    let _server = s.env.start();
    let before = s.token(&[]);
    let old_kid = decode_jwt(&before).0["kid"].as_str().unwrap().to_owned();

    let printed = s.env.cli(&["keys", "rotate", "--alg", "RS256"]).unwrap();
    assert!(printed.contains("now signs with RS256"), "{printed}");
    assert!(
        printed.contains(&format!("key {old_kid} stops signing")),
        "{printed}"
    );
    let after = s.token(&[]);
    let (header, _) = decode_jwt(&after);
    assert_eq!(header["alg"], "RS256");
    assert_ne!(header["kid"], old_kid);
    let jwks = Client::new(&s.env, None)
        .get("/realms/cara/protocol/openid-connect/certs")
        .json();
    // The new and the previous access-token keys, and the id_token key.
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 3, "{jwks}");
    assert_eq!(s.gateway_introspects(&before).json()["active"], true);
    assert_eq!(s.gateway_introspects(&after).json()["active"], true);
    let meta = Client::new(&s.env, None)
        .get("/.well-known/oauth-authorization-server/realms/cara")
        .json();
    assert_eq!(
        meta["access_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    let listed = s.env.cli(&["keys", "list"]).unwrap();
    assert!(
        listed.contains("signing") && listed.contains("verifying"),
        "{listed}"
    );

    // A compromised key: rotate and retire the previous one now.
    let printed = s
        .env
        .cli(&["keys", "rotate", "--retire-previous-in", "0"])
        .unwrap();
    assert!(printed.contains("retired now"), "{printed}");
    let jwks = Client::new(&s.env, None)
        .get("/realms/cara/protocol/openid-connect/certs")
        .json();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(!kids.contains(&header["kid"].as_str().unwrap()), "{kids:?}");
    // The first key is still within its natural retirement window and verifies.
    assert!(kids.contains(&old_kid.as_str()), "{kids:?}");
    assert_inactive(&s.gateway_introspects(&after), "signed by a retired key");
    assert_eq!(s.gateway_introspects(&before).json()["active"], true);
    assert_eq!(s.gateway_introspects(&s.token(&[])).json()["active"], true);
}

#[test]
fn disabling_a_client_or_revoking_its_certificate_ends_its_tokens_on_every_instance() {
    let s = setup();
    let (lab_crt, lab_key) = s.env.add_mtls_client("lab", &["--scope", "system/*.rs"]);
    let lab = Client::new(&s.env, Some((&lab_crt, &lab_key)));
    let lab_token = || {
        let reply = lab.token(&[("grant_type", "client_credentials"), ("client_id", "lab")]);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["access_token"].as_str().unwrap().to_owned()
    };
    let _first = s.env.start();
    let port = crate::support::free_port();
    let _second = Server::start_with(&s.env, |loaded| {
        loaded.config.server.public_url = s.env.base_url();
        loaded.config.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    });
    let second = Client::at(&s.env, &format!("https://127.0.0.1:{port}"));
    let active = |token: &str| {
        [
            s.gateway_introspects(token).json()["active"] == true,
            s.auditor_introspects(&second, token).json()["active"] == true,
        ]
    };

    let before = s.token(&[]);
    let bystander = lab_token();
    assert_eq!(active(&before), [true, true]);
    // Disabled: every token it holds is inactive at once, on both instances ...
    let printed = s.env.cli(&["client", "disable", "tcu"]).unwrap();
    assert!(printed.contains("inactive now"), "{printed}");
    assert_eq!(active(&before), [false, false]);
    // ... and no other client's.
    assert_eq!(active(&bystander), [true, true]);
    // Enabled again, a later token works; the old one stays dead.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    s.env.cli(&["client", "enable", "tcu"]).unwrap();
    let reply = eventually(
        std::time::Duration::from_secs(10),
        || {
            s.tcu
                .token(&[("grant_type", "client_credentials"), ("client_id", "tcu")])
        },
        |reply| reply.status == 200,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let after = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(active(&after), [true, true]);
    assert_eq!(active(&before), [false, false]);
    // Disabled a second time, the tokens of its second life end too.
    s.env.cli(&["client", "disable", "tcu"]).unwrap();
    assert_eq!(active(&after), [false, false]);

    // A revoked certificate ends the tokens bound to it at once, before any server has
    // reloaded the CRL.
    let bound = lab_token();
    assert_eq!(active(&bound), [true, true]);
    let printed = s
        .env
        .cli(&["pki", "revoke", lab_crt.to_str().unwrap()])
        .unwrap();
    assert!(printed.contains("inactive now"), "{printed}");
    assert_eq!(active(&bound), [false, false]);
    assert_eq!(active(&bystander), [false, false]);
}
