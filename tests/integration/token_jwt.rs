//! ITI-71 with `private_key_jwt`: SMART Backend Services client assertions.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use tessera::pki::{Pki, Validity};
use tessera_iam::jose::{b64, Algorithm, JwkSet, SigningKey};
use tessera_iam::pem::{jwk_to_pem, pem_block};
use tessera_iam::request::JWT_BEARER_ASSERTION;

use crate::support::{decode_jwt, now, Client, Env, JwksServer, Reply, Server};

const CLIENT_ID: &str = "a6ac14a8-e87a-4b0c-8b2d-407fedab9c62";

fn claims(env: &Env, jti: &str) -> Value {
    json!({
        "iss": CLIENT_ID, "sub": CLIENT_ID, "aud": env.token_url(),
        "iat": now(), "exp": now() + 300, "jti": jti,
    })
}

fn request(client: &Client, assertion: &str, scope: &str) -> Reply {
    client.token(&[
        ("grant_type", "client_credentials"),
        ("scope", scope),
        ("client_assertion_type", JWT_BEARER_ASSERTION),
        ("client_assertion", assertion),
    ])
}

#[test]
fn an_es384_backend_service_gets_a_token_and_cannot_replay_its_assertion() {
    let env = Env::new();
    let (key, _) = SigningKey::generate_ec(Algorithm::ES384).unwrap();
    let printed = env.add_key_client(CLIENT_ID, &key, "system/Patient.rs system/Observation.rs");
    assert!(printed.contains(&format!("kid={}", key.kid())), "{printed}");
    let _server = env.start();
    let client = Client::new(&env, None);

    let assertion = key.sign("JWT", &claims(&env, "jti-1")).unwrap();
    let reply = request(&client, &assertion, "system/Patient.rs");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (_, token) = decode_jwt(reply.json()["access_token"].as_str().unwrap());
    assert_eq!(token["sub"], CLIENT_ID);
    assert_eq!(token["scope"], "system/Patient.rs");
    assert!(
        token.get("cnf").is_none(),
        "an assertion client's token is not certificate-bound"
    );

    request(&client, &assertion, "system/Patient.rs").oauth_error(401, "invalid_client");
    // A new jti is a new assertion.
    let fresh = key.sign("JWT", &claims(&env, "jti-2")).unwrap();
    assert_eq!(request(&client, &fresh, "system/Patient.rs").status, 200);
}

#[test]
fn the_seed_002_rs384_flow_works_with_a_pem_registration() {
    let env = Env::new();
    let pki = Pki::new(env.path("pki"));
    let (_, key_file) = pki
        .issue_client("rsa-backend", &env.path("rsa"), true, Validity::days(1))
        .unwrap();
    let der = pem_block(&std::fs::read_to_string(key_file).unwrap(), "PRIVATE KEY").unwrap();
    let key = SigningKey::from_pkcs8(Algorithm::RS384, &der).unwrap();
    env.add_key_client(CLIENT_ID, &key, "system/Patient.rs system/Observation.rs");
    let _server = env.start();
    let assertion = key.sign("JWT", &claims(&env, "rs-1")).unwrap();
    assert_eq!(decode_jwt(&assertion).0["alg"], "RS384");
    let reply = request(&Client::new(&env, None), &assertion, "system/Patient.rs");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

fn hmac_forgery(header: Value, claims: &Value, secret: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(tag.as_ref()))
}

#[test]
fn every_bad_assertion_is_invalid_client_and_changes_nothing() {
    let env = Env::new();
    let (key, _) = SigningKey::generate_ec(Algorithm::ES384).unwrap();
    env.add_key_client(CLIENT_ID, &key, "system/Patient.rs system/Observation.rs");
    let _server = env.start();
    let client = Client::new(&env, None);
    let (stranger, _) = SigningKey::generate_ec(Algorithm::ES384).unwrap();
    let public_pem = jwk_to_pem(&key.public_jwk()).unwrap();

    let with = |patch: Value| {
        let mut c = claims(&env, "shared-jti");
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": key.kid()});
    let none_header = b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes());
    let good = key.sign("JWT", &claims(&env, "shared-jti")).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let mut tampered_sig = tessera_iam::jose::b64_decode(parts[2]).unwrap();
    tampered_sig[10] ^= 1;

    let cases: Vec<(&str, String)> = vec![
        (
            "wrong aud",
            key.sign("JWT", &with(json!({"aud": "https://elsewhere/token"})))
                .unwrap(),
        ),
        (
            "expired",
            key.sign(
                "JWT",
                &with(json!({"exp": now() - 120, "iat": now() - 400})),
            )
            .unwrap(),
        ),
        (
            "exp too far ahead",
            key.sign("JWT", &with(json!({"exp": now() + 3600})))
                .unwrap(),
        ),
        (
            "no exp",
            key.sign("JWT", &with(json!({"exp": null}))).unwrap(),
        ),
        (
            "no jti",
            key.sign("JWT", &with(json!({"jti": null}))).unwrap(),
        ),
        (
            "iss != sub",
            key.sign("JWT", &with(json!({"sub": "someone-else"})))
                .unwrap(),
        ),
        (
            "unknown client",
            key.sign("JWT", &with(json!({"iss": "nobody", "sub": "nobody"})))
                .unwrap(),
        ),
        (
            "unknown kid",
            stranger.sign("JWT", &claims(&env, "shared-jti")).unwrap(),
        ),
        (
            "bad signature",
            format!("{}.{}.{}", parts[0], parts[1], b64(&tampered_sig)),
        ),
        ("alg none", format!("{none_header}.{}.", parts[1])),
        (
            "HS256 with the public key as secret",
            hmac_forgery(header, &claims(&env, "shared-jti"), public_pem.as_bytes()),
        ),
        ("not a JWS", "not-a-jwt".to_string()),
        (
            "a jku for a client whose keys are registered inline",
            key.sign_with_header(
                "JWT",
                json!({"jku": "https://attacker.example/jwks.json"})
                    .as_object()
                    .unwrap()
                    .clone(),
                &claims(&env, "shared-jti"),
            )
            .unwrap(),
        ),
        (
            "a numeric kid",
            key.sign_with_header(
                "JWT",
                json!({"kid": 1}).as_object().unwrap().clone(),
                &claims(&env, "shared-jti"),
            )
            .unwrap(),
        ),
    ];
    for (name, assertion) in cases {
        let reply = request(&client, &assertion, "system/Patient.rs");
        assert_eq!(reply.status, 401, "{name}: {}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_client", "{name}");
    }
    // None of the failures consumed the jti: the genuine assertion still works once.
    assert_eq!(request(&client, &good, "system/Patient.rs").status, 200);
    request(&client, &good, "system/Patient.rs").oauth_error(401, "invalid_client");

    let wrong_type = client.token(&[
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        ),
        (
            "client_assertion",
            &key.sign("JWT", &claims(&env, "t-1")).unwrap(),
        ),
    ]);
    // SMART Backend Services: an assertion the server cannot use is invalid_client.
    let said = wrong_type.oauth_error(401, "invalid_client");
    assert!(said.contains("client_assertion_type"), "{said}");
}

#[test]
fn a_jwks_uri_is_fetched_cached_and_refreshed_when_the_client_rotates() {
    let env = Env::new();
    let jwks = JwksServer::start(&env, "public, max-age=300");
    let (first, _) = SigningKey::generate_ec(Algorithm::ES384).unwrap();
    let (second, _) = SigningKey::generate_ec(Algorithm::ES256).unwrap();
    let set = |keys: &[&SigningKey]| {
        serde_json::to_string(&JwkSet {
            keys: keys.iter().map(|k| k.public_jwk()).collect(),
        })
        .unwrap()
    };
    *jwks.body.lock().unwrap() = set(&[&first]);
    env.cli(&[
        "client",
        "add",
        "--client-id",
        CLIENT_ID,
        "--auth",
        "private_key_jwt",
        "--jwks-uri",
        &jwks.url,
        "--scope",
        "system/Patient.rs",
    ])
    .unwrap();
    let _server = env.start();
    let client = Client::new(&env, None);

    assert_eq!(
        request(
            &client,
            &first.sign("JWT", &claims(&env, "u-1")).unwrap(),
            "system/Patient.rs"
        )
        .status,
        200
    );
    assert_eq!(
        request(
            &client,
            &first.sign("JWT", &claims(&env, "u-2")).unwrap(),
            "system/Patient.rs"
        )
        .status,
        200
    );
    assert_eq!(
        jwks.hits.load(Ordering::SeqCst),
        1,
        "the key set is cached per Cache-Control"
    );

    // The client rotates: an unknown kid makes Tessera fetch again.
    *jwks.body.lock().unwrap() = set(&[&second]);
    let reply = request(
        &client,
        &second.sign("JWT", &claims(&env, "u-3")).unwrap(),
        "system/Patient.rs",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 2);
    // The retired key no longer verifies.
    request(
        &client,
        &first.sign("JWT", &claims(&env, "u-4")).unwrap(),
        "system/Patient.rs",
    )
    .oauth_error(401, "invalid_client");

    // SMART Backend Services: a `jku` in the header SHALL be the registered JWKS URL.
    let fetched = jwks.hits.load(Ordering::SeqCst);
    let with_header = |extra: Value, jti: &str| {
        let Value::Object(extra) = extra else {
            unreachable!()
        };
        second
            .sign_with_header("JWT", extra, &claims(&env, jti))
            .unwrap()
    };
    let named = with_header(json!({"jku": jwks.url}), "u-5");
    assert_eq!(request(&client, &named, "system/Patient.rs").status, 200);
    for (jku, jti) in [
        ("https://attacker.example/jwks.json", "u-6"),
        (&format!("{}/", jwks.url), "u-7"),
    ] {
        let said = request(
            &client,
            &with_header(json!({"jku": jku}), jti),
            "system/Patient.rs",
        )
        .oauth_error(401, "invalid_client");
        assert!(said.contains("jku"), "{said}");
    }
    // A `kid` that is not a string is malformed, not "no kid, use the only key".
    let numeric = with_header(json!({"kid": 7}), "u-8");
    request(&client, &numeric, "system/Patient.rs").oauth_error(401, "invalid_client");
    assert_eq!(
        jwks.hits.load(Ordering::SeqCst),
        fetched,
        "a jku is compared, never fetched"
    );
}

#[test]
fn an_assertion_cannot_be_replayed_on_another_instance_sharing_the_database() {
    let env = Env::new();
    let (key, _) = SigningKey::generate_ec(Algorithm::ES256).unwrap();
    env.add_key_client(CLIENT_ID, &key, "system/Patient.rs system/Observation.rs");
    let _first = env.start();
    let second_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _second = Server::start_with(&env, |loaded| {
        loaded.config.server.public_url = env.base_url();
        loaded.config.server.listen = format!("127.0.0.1:{second_port}").parse().unwrap();
    });
    let assertion = key.sign("JWT", &claims(&env, "cross-instance")).unwrap();
    assert_eq!(
        request(&Client::new(&env, None), &assertion, "system/Patient.rs").status,
        200
    );
    let other = Client::at(&env, &format!("https://127.0.0.1:{second_port}"));
    let reply = request(&other, &assertion, "system/Patient.rs");
    let why = reply.oauth_error(401, "invalid_client");
    assert!(why.contains("already used"), "{why}");
}
