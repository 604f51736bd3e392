//! ITI-103 metadata, JWKS, health and metrics.

use crate::support::{Client, Env};

#[test]
fn metadata_names_every_iua_member_and_both_paths_agree() {
    let env = Env::new();
    let _server = env.start();
    let client = Client::new(&env, None);
    let rfc8414 = client.get("/.well-known/oauth-authorization-server/realms/cara");
    let oidc = client.get("/realms/cara/.well-known/openid-configuration");
    assert_eq!(rfc8414.status, 200);
    assert_eq!(rfc8414.json(), oidc.json());
    let m = rfc8414.json();
    assert_eq!(m["issuer"], env.issuer());
    assert_eq!(m["token_endpoint"], env.token_url());
    assert_eq!(
        m["jwks_uri"],
        format!("{}/protocol/openid-connect/certs", env.issuer())
    );
    assert_eq!(
        m["grant_types_supported"],
        serde_json::json!(["client_credentials", "authorization_code", "refresh_token"])
    );
    assert_eq!(m["response_types_supported"], serde_json::json!(["code"]));
    for method in [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "tls_client_auth",
    ] {
        assert!(
            m["token_endpoint_auth_methods_supported"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == method),
            "{method}"
        );
    }
    for alg in ["ES256", "ES384", "RS256", "RS384"] {
        assert!(m["token_endpoint_auth_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == alg));
    }
    assert_eq!(m["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(
        m["introspection_endpoint"],
        format!("{}/protocol/openid-connect/token/introspect", env.issuer())
    );
    assert_eq!(
        m["revocation_endpoint"],
        format!("{}/protocol/openid-connect/revoke", env.issuer())
    );
    for method in [
        "client_secret_basic",
        "private_key_jwt",
        "tls_client_auth",
        "Bearer",
    ] {
        assert!(
            m["introspection_endpoint_auth_methods_supported"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == method),
            "{method}"
        );
    }
    assert!(m["revocation_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v != "Bearer"));
    assert_eq!(
        m["access_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );

    assert_eq!(
        client
            .get("/.well-known/oauth-authorization-server/realms/nope")
            .status,
        404
    );
    assert_eq!(
        client
            .get("/realms/nope/.well-known/openid-configuration")
            .status,
        404
    );
    assert_eq!(
        client
            .get("/realms/Bad%20Name/protocol/openid-connect/certs")
            .status,
        404
    );
}

#[test]
fn jwks_publishes_the_signing_key_without_private_parts() {
    let env = Env::new();
    let _server = env.start();
    let client = Client::new(&env, None);
    let reply = client.get("/realms/cara/protocol/openid-connect/certs");
    assert_eq!(reply.status, 200);
    let jwks = reply.json();
    let keys = jwks["keys"].as_array().unwrap();
    // The access-token key (ES256) and the id_token key (RS256, SMART).
    assert_eq!(keys.len(), 2, "{jwks}");
    let access = keys.iter().find(|k| k["alg"] == "ES256").unwrap();
    assert_eq!(access["kty"], "EC");
    assert_eq!(access["crv"], "P-256");
    let id = keys.iter().find(|k| k["alg"] == "RS256").unwrap();
    assert_eq!(id["kty"], "RSA");
    assert_ne!(access["kid"], id["kid"]);
    for key in keys {
        assert_eq!(key["use"], "sig");
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(key.get(private).is_none(), "{private} published");
        }
    }
    let printed = std::fs::read_to_string(env.path("config/tessera.toml")).unwrap();
    assert!(!printed.is_empty());
}

#[test]
fn health_and_metrics_reflect_the_server() {
    let env = Env::new();
    let _server = env.start();
    let client = Client::new(&env, None);
    let health = client.get("/healthz");
    assert_eq!(health.status, 200);
    let expected = if crate::support::on_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(health.json()["database"], expected);

    client
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "nobody"),
        ])
        .oauth_error(401, "invalid_client");
    let metrics = client.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains("tessera_token_requests_total{outcome=\"invalid_client\"} 1"),
        "{}",
        metrics.body
    );
    assert!(metrics
        .body
        .contains("tessera_token_request_duration_seconds_count 1"));
    // The refused request's audit record (and the node's start) went through the
    // journal, in at most as many syncs as records.
    let value = |name: &str| -> f64 {
        let line = metrics
            .body
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {}", metrics.body));
        line[name.len() + 1..].parse().unwrap()
    };
    let records = value("tessera_audit_journal_records_total");
    let syncs = value("tessera_audit_journal_syncs_total");
    assert!(
        records >= 1.0 && syncs >= 1.0 && syncs <= records,
        "{records} {syncs}"
    );
    assert!(value("tessera_audit_journal_sync_seconds_total") > 0.0);
    // Nothing fell behind: what the database lacks is in memory, nothing was read back.
    let undrained = value("tessera_audit_journal_undrained_records");
    assert!((0.0..=records).contains(&undrained), "{undrained}");
    assert!(value("tessera_audit_journal_in_memory_records") <= records);
    assert_eq!(value("tessera_audit_journal_reread_records_total"), 0.0);
    assert_eq!(value("tessera_audit_journal_replayed_records_total"), 0.0);
    assert_eq!(client.get("/no/such/path").status, 404);
}

#[test]
fn a_realm_can_sign_with_rsa() {
    let env = Env::new();
    let printed = env
        .cli(&[
            "realm",
            "add",
            "hospital",
            "--alg",
            "RS256",
            "--token-lifetime",
            "120",
        ])
        .unwrap();
    assert!(
        printed.contains("created realm 'hospital': RS256"),
        "{printed}"
    );
    let dup = env.cli(&["realm", "add", "hospital"]).unwrap_err();
    assert!(dup.to_string().contains("already exists"), "{dup}");
    let list = env.cli(&["realm", "list"]).unwrap();
    assert!(
        list.contains("cara") && list.contains("hospital") && list.contains("RS256"),
        "{list}"
    );

    let secret = env.add_secret_client(&[
        "--realm",
        "hospital",
        "--client-id",
        "app",
        "--auth",
        "client_secret_post",
        "--scope",
        "system/Patient.rs",
    ]);
    let _server = env.start();
    let client = Client::new(&env, None);
    let meta = client
        .get("/.well-known/oauth-authorization-server/realms/hospital")
        .json();
    assert_eq!(
        meta["access_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    let reply = client.post_form(
        "/realms/hospital/protocol/openid-connect/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", &secret),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["expires_in"], 120);
    let token = reply.json()["access_token"].as_str().unwrap().to_owned();
    let (header, claims) = crate::support::decode_jwt(&token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["iss"], format!("{}/realms/hospital", env.base_url()));
    let jwks: tessera_iam::jose::JwkSet = serde_json::from_str(
        &client
            .get("/realms/hospital/protocol/openid-connect/certs")
            .body,
    )
    .unwrap();
    assert_eq!(jwks.keys[0].kty, "RSA");
    tessera_iam::jose::UnverifiedJws::parse(&token)
        .unwrap()
        .verify(&jwks.keys)
        .unwrap();
    // The cara realm's keys do not verify hospital's tokens, and its clients are separate.
    let cara: tessera_iam::jose::JwkSet = serde_json::from_str(
        &client
            .get("/realms/cara/protocol/openid-connect/certs")
            .body,
    )
    .unwrap();
    assert!(tessera_iam::jose::UnverifiedJws::parse(&token)
        .unwrap()
        .verify(&cara.keys)
        .is_err());
    client
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", &secret),
        ])
        .oauth_error(401, "invalid_client");
}
