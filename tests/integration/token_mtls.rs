//! ITI-71 with `tls_client_auth` (CARA technical users), over real mutual TLS.

use std::path::Path;
use std::time::Duration;

use ring::digest;
use tessera::pki::{Pki, Validity};
use tessera_iam::jose::{b64, JwkSet, UnverifiedJws};

use rustls::AlertDescription;

use crate::support::{
    decode_jwt, eventually, foreign_ca_client, now, tls_client_config, tls_client_offering,
    tls_probe, tls_request, Client, Env,
};

const CLIENT_ID: &str = "bestclinic-tcu";

/// A certificate client with the scopes and partition most tests need, plus `extra`.
fn register(
    env: &Env,
    client_id: &str,
    extra: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut args = vec![
        "--scope",
        "system/*.rs system/Observation.cruds aim/resolve",
        "--partition",
        "p-1",
    ];
    args.extend_from_slice(extra);
    env.add_mtls_client(client_id, &args)
}

fn cara_form(client_id: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
    ]
}

fn thumbprint(cert: &Path) -> String {
    let pem = std::fs::read(cert).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    b64(digest::digest(&digest::SHA256, &pem.contents).as_ref())
}

#[test]
fn a_technical_user_gets_a_certificate_bound_iua_token() {
    let env = Env::new();
    let (crt, key) = register(
        &env,
        CLIENT_ID,
        &[
            "--principal-id",
            "7601000000000",
            "--subject-name",
            "Best Clinic",
            "--subject-organization",
            "Best Clinic AG",
            "--subject-role",
            "urn:oid:2.16.756.5.30.1.127.3.10.6|HCP",
            "--home-community-id",
            "urn:oid:2.16.756.5.30.1.191.1.0",
        ],
    );
    let _server = env.start();
    let client = Client::new(&env, Some((&crt, &key)));
    let mut form = cara_form(CLIENT_ID);
    form.push(("scope", "system/Patient.rs"));
    let reply = client.token(&form);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("pragma"), Some("no-cache"));
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "system/Patient.rs");

    let token = body["access_token"].as_str().unwrap();
    let (header, claims) = decode_jwt(token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["iss"], env.issuer());
    assert_eq!(claims["sub"], CLIENT_ID);
    assert_eq!(claims["client_id"], CLIENT_ID);
    // Without `resource`, every configured audience: the vault and AIM.
    assert_eq!(
        claims["aud"],
        serde_json::json!([
            format!("{}/fhir", env.base_url()),
            format!("{}/aim", env.base_url())
        ])
    );
    assert_eq!(claims["scope"], "system/Patient.rs");
    assert_eq!(claims["partitions"], serde_json::json!(["p-1"]));
    let iat = claims["iat"].as_i64().unwrap();
    assert!((iat - now()).abs() <= 5);
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 300);
    assert_eq!(claims["cnf"]["x5t#S256"], thumbprint(&crt));
    let iua = &claims["extensions"]["ihe_iua"];
    assert_eq!(iua["subject_name"], "Best Clinic");
    assert_eq!(iua["subject_organization"], "Best Clinic AG");
    assert_eq!(
        iua["subject_role"],
        serde_json::json!({"system": "urn:oid:2.16.756.5.30.1.127.3.10.6", "code": "HCP"})
    );
    assert_eq!(iua["home_community_id"], "urn:oid:2.16.756.5.30.1.191.1.0");
    assert_eq!(
        claims["extensions"]["ch_delegation"]["principal_id"],
        "7601000000000"
    );

    // The signature verifies with the key the realm publishes, chosen by kid.
    let jwks: JwkSet = serde_json::from_str(
        &client
            .get("/realms/cara/protocol/openid-connect/certs")
            .body,
    )
    .unwrap();
    let verified = UnverifiedJws::parse(token)
        .unwrap()
        .verify(&jwks.keys)
        .unwrap();
    assert_eq!(verified, claims);

    // Without a scope parameter the client gets everything it is registered for.
    let reply = client.token(&cara_form(CLIENT_ID));
    assert_eq!(
        reply.json()["scope"],
        "aim/resolve system/*.rs system/Observation.cruds"
    );
}

#[test]
fn certificate_failures_are_refused() {
    let env = Env::new();
    let (crt, key) = register(&env, CLIENT_ID, &[]);
    let (other_crt, other_key) = register(&env, "other-tcu", &[]);
    let _server = env.start();

    // No certificate at all.
    let reply = Client::new(&env, None).token(&cara_form(CLIENT_ID));
    let why = reply.oauth_error(401, "invalid_client");
    assert!(why.contains("certificate"), "{why}");

    // A valid certificate, but registered for another client.
    let reply = Client::new(&env, Some((&other_crt, &other_key))).token(&cara_form(CLIENT_ID));
    reply.oauth_error(401, "invalid_client");

    // The right client with its own certificate still works.
    assert_eq!(
        Client::new(&env, Some((&crt, &key)))
            .token(&cara_form(CLIENT_ID))
            .status,
        200
    );

    // No client_id and no other credentials.
    let reply =
        Client::new(&env, Some((&crt, &key))).token(&[("grant_type", "client_credentials")]);
    reply.oauth_error(401, "invalid_client");
}

/// Asserts that the server refuses the certificate with `alert`, over TLS 1.3 and 1.2.
fn assert_refused(env: &Env, cert: &Path, key: &Path, alert: AlertDescription) {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        match tls_probe(env, cert, key, version) {
            Err(rustls::Error::AlertReceived(received)) => {
                assert_eq!(received, alert, "{version:?}")
            }
            other => panic!("{version:?}: expected the alert {alert:?}, got {other:?}"),
        }
    }
}

#[test]
fn foreign_and_expired_certificates_fail_the_handshake() {
    let env = Env::new();
    register(&env, CLIENT_ID, &[]);

    // An impostor CA that copies the real CA's name: the chain is found by name and its
    // signature fails (rustls: decrypt_error).
    let impostor = Pki::new(env.path("impostor-pki"));
    impostor.ensure(&["localhost".into()]).unwrap();
    let (i_crt, i_key) = impostor
        .issue_client(
            "bestclinic",
            &env.path("impostor"),
            false,
            Validity::days(30),
        )
        .unwrap();
    // A CA with a name of its own: unknown_ca.
    let (f_crt, f_key) = foreign_ca_client(&env);
    // An expired certificate from the right CA.
    let pki = Pki::new(env.path("pki"));
    let (e_crt, e_key) = pki
        .issue_client(
            "expired",
            &env.path("expired"),
            false,
            Validity {
                from_days: -30,
                to_days: -1,
            },
        )
        .unwrap();
    env.cli(&[
        "client",
        "add",
        "--client-id",
        "expired-tcu",
        "--auth",
        "tls_client_auth",
        "--cert",
        e_crt.to_str().unwrap(),
    ])
    .unwrap();

    let (g_crt, g_key) = env.issue_client("good");

    let _server = env.start();
    assert_refused(&env, &i_crt, &i_key, AlertDescription::DecryptError);
    assert_refused(&env, &f_crt, &f_key, AlertDescription::UnknownCA);
    assert_refused(&env, &e_crt, &e_key, AlertDescription::CertificateExpired);
    // The probe itself accepts a good certificate, on both versions.
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let response = tls_probe(&env, &g_crt, &g_key, version).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
}

#[test]
fn a_revoked_certificate_is_refused_once_the_crl_reloads() {
    let env = Env::new();
    let (crt, key) = register(&env, CLIENT_ID, &[]);
    let _server = env.start();
    assert_eq!(
        Client::new(&env, Some((&crt, &key)))
            .token(&cara_form(CLIENT_ID))
            .status,
        200
    );
    // Clients that keep what the server offers for resuming a session, and have
    // connected before the revocation: the server offers nothing, each connection is a
    // full handshake, so a resumed session cannot carry the revoked certificate.
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let resuming: Vec<_> = versions
        .iter()
        .map(|version| tls_client_config(&env, &crt, &key, version))
        .collect();
    for (config, version) in resuming.iter().zip(versions) {
        for _ in 0..2 {
            let exchange = tls_request(&env, config).unwrap();
            assert!(
                exchange.response.starts_with("HTTP/1.1 200"),
                "{exchange:?}"
            );
            assert_eq!(
                exchange.kind,
                Some(rustls::HandshakeKind::Full),
                "{version:?}"
            );
        }
    }

    let printed = env.cli(&["pki", "revoke", crt.to_str().unwrap()]).unwrap();
    assert!(printed.contains("revoked serial"), "{printed}");
    let again = env.cli(&["pki", "revoke", crt.to_str().unwrap()]).unwrap();
    assert!(again.contains("already revoked"), "{again}");

    // The server notices the new CRL within crl_refresh_seconds (1 s in tests).
    let probe = eventually(
        Duration::from_secs(15),
        || tls_probe(&env, &crt, &key, &rustls::version::TLS13),
        Result::is_err,
    );
    assert!(probe.is_err(), "the revocation was not picked up");
    assert_refused(&env, &crt, &key, AlertDescription::CertificateRevoked);
    for (config, version) in resuming.iter().zip(versions) {
        match tls_request(&env, config) {
            Err(rustls::Error::AlertReceived(AlertDescription::CertificateRevoked)) => {}
            other => {
                panic!("{version:?}: a client that connected before was not refused: {other:?}")
            }
        }
    }
}

#[test]
fn the_server_chooses_a_sha256_suite_and_serves_clients_without_one() {
    use rustls::crypto::ring::cipher_suite::*;
    use rustls::version::{TLS12, TLS13};
    let env = Env::new();
    let (crt, key) = register(&env, CLIENT_ID, &[]);
    let _server = env.start();
    // rustls, OpenSSL and Java list the SHA-384 suite first; the server's own order
    // decides (SHA-256 first: SHA-512 has no hardware path on x86-64), and a client
    // that offers only SHA-384 suites is still served.
    let cases = [
        (
            &TLS13,
            vec![
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_128_GCM_SHA256,
            ],
            TLS13_AES_128_GCM_SHA256,
        ),
        (
            &TLS13,
            vec![TLS13_AES_256_GCM_SHA384],
            TLS13_AES_256_GCM_SHA384,
        ),
        (
            &TLS12,
            vec![
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &TLS12,
            vec![TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384],
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ];
    for (version, offered, chosen) in cases {
        let names: Vec<_> = offered.iter().map(|s| s.suite()).collect();
        let config = tls_client_offering(&env, &crt, &key, version, offered);
        let exchange = tls_request(&env, &config).unwrap();
        assert!(
            exchange.response.starts_with("HTTP/1.1 200"),
            "{exchange:?}"
        );
        assert_eq!(exchange.suite, Some(chosen.suite()), "offered {names:?}");
    }
}

#[test]
fn a_subject_dn_binding_accepts_a_renewed_certificate() {
    let env = Env::new();
    env.cli(&[
        "client",
        "add",
        "--client-id",
        CLIENT_ID,
        "--auth",
        "tls_client_auth",
        "--cert-subject",
        "CN=renewing, O=Tessera clients",
        "--scope",
        "system/*.rs",
    ])
    .unwrap();
    let (first_crt, first_key) = env.issue_client("renewing");
    let first = thumbprint(&first_crt);
    let _server = env.start();
    let reply = Client::new(&env, Some((&first_crt, &first_key))).token(&cara_form(CLIENT_ID));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        decode_jwt(reply.json()["access_token"].as_str().unwrap()).1["cnf"]["x5t#S256"],
        first
    );

    let (renewed_crt, renewed_key) = env.issue_client("renewing");
    let renewed = thumbprint(&renewed_crt);
    assert_ne!(first, renewed);
    let reply = Client::new(&env, Some((&renewed_crt, &renewed_key))).token(&cara_form(CLIENT_ID));
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The token is bound to the certificate actually presented.
    assert_eq!(
        decode_jwt(reply.json()["access_token"].as_str().unwrap()).1["cnf"]["x5t#S256"],
        renewed
    );

    let (other_crt, other_key) = env.issue_client("someone-else");
    Client::new(&env, Some((&other_crt, &other_key)))
        .token(&cara_form(CLIENT_ID))
        .oauth_error(401, "invalid_client");
}

#[test]
fn scopes_beyond_the_registration_are_invalid_scope() {
    let env = Env::new();
    let (crt, key) = register(&env, CLIENT_ID, &[]);
    let _server = env.start();
    let client = Client::new(&env, Some((&crt, &key)));
    for scope in [
        "system/Patient.cruds",
        "system/Patient.write",
        "patient/Patient.rs",
        "admin",
        "system/*.*",
    ] {
        let mut form = cara_form(CLIENT_ID);
        form.push(("scope", scope));
        let why = client.token(&form).oauth_error(400, "invalid_scope");
        assert!(why.contains(scope), "{scope}: {why}");
    }
    let mut form = cara_form(CLIENT_ID);
    form.push((
        "scope",
        "system/Observation.c system/Encounter.read aim/resolve",
    ));
    let reply = client.token(&form);
    assert_eq!(
        reply.json()["scope"],
        "aim/resolve system/Encounter.read system/Observation.c"
    );
}

#[test]
fn ch_iua_parameters_must_match_the_registration() {
    let env = Env::new();
    let (crt, key) = register(
        &env,
        CLIENT_ID,
        &[
            "--principal-id",
            "7601000000000",
            "--principal-name",
            "Dr. Best",
            "--person-id",
            "761337610411353650",
        ],
    );
    let _server = env.start();
    let client = Client::new(&env, Some((&crt, &key)));
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut form = cara_form(CLIENT_ID);
        form.extend_from_slice(extra);
        client.token(&form)
    };
    let ok = with(&[
        ("principal_id", "7601000000000"),
        ("person_id", "761337610411353650"),
        ("purpose_of_use", "urn:oid:2.16.756.5.30.1.127.3.10.5|NORM"),
    ]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let claims = decode_jwt(ok.json()["access_token"].as_str().unwrap()).1;
    assert_eq!(
        claims["extensions"]["ihe_iua"]["person_id"],
        "761337610411353650"
    );
    assert_eq!(
        claims["extensions"]["ihe_iua"]["purpose_of_use"]["code"],
        "NORM"
    );
    assert_eq!(
        claims["extensions"]["ch_delegation"]["principal"],
        "Dr. Best"
    );

    with(&[("principal_id", "7601000000001")]).oauth_error(401, "invalid_client");
    with(&[("principal", "Someone Else")]).oauth_error(401, "invalid_client");
    with(&[("person_id", "000")]).oauth_error(401, "invalid_client");
    with(&[("scope", "principal_id=7601000000001")]).oauth_error(401, "invalid_client");
    with(&[("purpose_of_use", "NORM")]).oauth_error(400, "invalid_request");
}

#[test]
fn a_disabled_client_gets_no_token_until_enabled() {
    let env = Env::new();
    let (crt, key) = register(&env, CLIENT_ID, &[]);
    let _server = env.start();
    let client = Client::new(&env, Some((&crt, &key)));
    assert_eq!(client.token(&cara_form(CLIENT_ID)).status, 200);
    env.cli(&["client", "disable", CLIENT_ID]).unwrap();
    client
        .token(&cara_form(CLIENT_ID))
        .oauth_error(401, "invalid_client");
    env.cli(&["client", "enable", CLIENT_ID]).unwrap();
    assert_eq!(client.token(&cara_form(CLIENT_ID)).status, 200);
}

#[test]
fn malformed_requests_are_rfc_6749_errors() {
    let env = Env::new();
    let (crt, key) = register(&env, CLIENT_ID, &[]);
    let _server = env.start();
    let client = Client::new(&env, Some((&crt, &key)));
    let path = "/realms/cara/protocol/openid-connect/token";

    client
        .token(&[("grant_type", "password"), ("client_id", CLIENT_ID)])
        .oauth_error(400, "unsupported_grant_type");
    client
        .token(&[("client_id", CLIENT_ID)])
        .oauth_error(400, "invalid_request");
    client
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("scope", "a"),
            ("scope", "b"),
        ])
        .oauth_error(400, "invalid_request");
    client
        .post_raw(
            path,
            "application/json",
            r#"{"grant_type":"client_credentials"}"#,
        )
        .oauth_error(400, "invalid_request");
    // The media type is compared exactly, not by prefix; parameters are allowed.
    let body = format!("grant_type=client_credentials&client_id={CLIENT_ID}");
    let said = client
        .post_raw(path, "application/x-www-form-urlencodedX", &body)
        .oauth_error(400, "invalid_request");
    assert!(said.contains("x-www-form-urlencoded"), "{said}");
    let charset = client.post_raw(
        path,
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        &body,
    );
    assert_eq!(charset.status, 200, "{}", charset.body);
    let mut form = cara_form(CLIENT_ID);
    form.push(("resource", "https://elsewhere.example/fhir"));
    client.token(&form).oauth_error(400, "invalid_target");
    let own_fhir = format!("{}/fhir", env.base_url());
    let mut form = cara_form(CLIENT_ID);
    form.push(("resource", own_fhir.as_str()));
    let reply = client.token(&form);
    assert_eq!(
        decode_jwt(reply.json()["access_token"].as_str().unwrap()).1["aud"],
        serde_json::json!([own_fhir])
    );

    let unknown = client.post_form(
        "/realms/nowhere/protocol/openid-connect/token",
        &cara_form(CLIENT_ID),
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(client.get(path).status, 405);
}
