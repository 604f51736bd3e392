//! Who may do what: every ITI-72 authorization case, certificate-bound tokens, query
//! restrictions, expired and foreign tokens, and gateway mode's introspection.

use serde_json::json;

use super::*;

/// The vault with one Observation in `pa`, written by a `system/*.cruds` token.
struct OneObservation {
    v: Vault,
    c: Client,
    writer: String,
    obs: Value,
    /// `/fhir/pa/Observation/{id}`.
    path: String,
}

fn one_observation() -> OneObservation {
    let v = vault();
    let c = v.client();
    let writer = v.token("writer", "system/*.cruds", &["pa"]);
    let obs = create(
        &c,
        &writer,
        "/fhir/pa/Observation",
        &observation("4548-4", "2021-01-01", "laboratory", "x"),
    );
    let path = format!("/fhir/pa/Observation/{}", obs["id"].as_str().unwrap());
    OneObservation {
        v,
        c,
        writer,
        obs,
        path,
    }
}

#[test]
fn no_token_a_misplaced_one_a_forged_one_or_alg_none_is_401_with_a_challenge() {
    // The server lives as long as `_v` (a `..` would drop it here).
    let OneObservation {
        v: _v,
        c,
        writer,
        path,
        ..
    } = one_observation();
    // No token, a token in the query string, a malformed scheme: 401 with a challenge.
    let none = c.send("GET", &path, None, &[], None);
    outcome(&none, 401, "login");
    assert!(
        none.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"),
        "{:?}",
        none.headers
    );
    outcome(
        &c.send(
            "GET",
            &format!("{path}?access_token={writer}"),
            None,
            &[],
            None,
        ),
        401,
        "login",
    );
    outcome(
        &c.send(
            "GET",
            &path,
            None,
            &[("Authorization", &format!("Basic {writer}"))],
            None,
        ),
        401,
        "login",
    );
    // A forged signature, and alg none.
    let mut parts: Vec<String> = writer.split('.').map(str::to_owned).collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        &parts[2][..parts[2].len() - 4]
    ) + "AAAA";
    let invalid = c.send("GET", &path, Some(&forged), &[], None);
    outcome(&invalid, 401, "login");
    assert!(invalid
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    parts[0] = tessera_iam::jose::b64(br#"{"alg":"none","typ":"at+jwt"}"#);
    outcome(
        &c.send(
            "GET",
            &path,
            Some(&format!("{}.{}.", parts[0], parts[1])),
            &[],
            None,
        ),
        401,
        "login",
    );
}

#[test]
fn another_partitions_token_is_403_whether_the_resource_exists_or_not() {
    let OneObservation { v, c, path, .. } = one_observation();
    // A token for partition B on partition A: 403, the same whether the resource exists or not.
    let token_b = v.token("other", "system/*.cruds", &["pb"]);
    let denied = c.send("GET", &path, Some(&token_b), &[], None);
    outcome(&denied, 403, "forbidden");
    assert!(denied
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
    let missing = c.send(
        "GET",
        "/fhir/pa/Observation/does-not-exist",
        Some(&token_b),
        &[],
        None,
    );
    assert_eq!(
        (missing.status, missing.body.clone()),
        (denied.status, denied.body.clone())
    );
    outcome(
        &c.send(
            "GET",
            "/fhir/pa/Observation?code=4548-4",
            Some(&token_b),
            &[],
            None,
        ),
        403,
        "forbidden",
    );
    outcome(
        &c.send(
            "POST",
            "/fhir/pa/Observation",
            Some(&token_b),
            &[],
            Some(&observation("1", "2021", "laboratory", "x")),
        ),
        403,
        "forbidden",
    );
    // A partition nobody has: only a wildcard token learns it does not exist.
    outcome(
        &c.send("GET", "/fhir/pz/Observation/x", Some(&token_b), &[], None),
        403,
        "forbidden",
    );
    let everywhere = v.token("ops", "system/*.rs", &["*"]);
    outcome(
        &c.send(
            "GET",
            "/fhir/pz/Observation/x",
            Some(&everywhere),
            &[],
            None,
        ),
        404,
        "not-found",
    );
    assert_eq!(
        c.send("GET", &path, Some(&everywhere), &[], None).status,
        200
    );
}

#[test]
fn a_token_does_only_what_its_scopes_grant() {
    let OneObservation {
        v,
        c,
        writer,
        obs,
        path,
    } = one_observation();
    // Scope escalation: a read-only token cannot write, delete, or read another type.
    let reader = v.token("reader", "system/Observation.rs", &["pa"]);
    assert_eq!(c.send("GET", &path, Some(&reader), &[], None).status, 200);
    outcome(
        &c.send("DELETE", &path, Some(&reader), &[], None),
        403,
        "forbidden",
    );
    outcome(
        &c.send("PUT", &path, Some(&reader), &[], Some(&obs.to_string())),
        403,
        "forbidden",
    );
    outcome(
        &c.send(
            "POST",
            "/fhir/pa/Observation",
            Some(&reader),
            &[],
            Some(&observation("1", "2021", "laboratory", "x")),
        ),
        403,
        "forbidden",
    );
    outcome(
        &c.send("GET", "/fhir/pa/Patient?name=a", Some(&reader), &[], None),
        403,
        "forbidden",
    );
    assert_eq!(
        c.send("GET", &path, Some(&writer), &[], None).json()["meta"]["versionId"],
        "1",
        "nothing changed"
    );
    // v2 letters are exact: read without search, search without read.
    let read_only = v.token("r-only", "system/Observation.r", &["pa"]);
    assert_eq!(
        c.send("GET", &path, Some(&read_only), &[], None).status,
        200
    );
    outcome(
        &c.send("GET", "/fhir/pa/Observation", Some(&read_only), &[], None),
        403,
        "forbidden",
    );
    // An update that would create needs c as well as u.
    let updater = v.token("updater", "system/Observation.u", &["pa"]);
    let fresh = json!({"resourceType": "Observation", "id": "fresh", "status": "final", "code": {"text": "x"}});
    outcome(
        &c.send(
            "PUT",
            "/fhir/pa/Observation/fresh",
            Some(&updater),
            &[],
            Some(&fresh.to_string()),
        ),
        403,
        "forbidden",
    );
    let restricted = v.token(
        "restricted-updater",
        "system/Observation.u?status=final",
        &["pa"],
    );
    outcome(
        &c.send(
            "PUT",
            "/fhir/pa/Observation/fresh",
            Some(&restricted),
            &[],
            Some(&fresh.to_string()),
        ),
        403,
        "forbidden",
    );
    let mut updated = obs.clone();
    updated["status"] = json!("amended");
    assert_eq!(
        c.send(
            "PUT",
            &path,
            Some(&updater),
            &[],
            Some(&updated.to_string())
        )
        .status,
        200
    );
}

#[test]
fn a_token_for_another_audience_or_a_revoked_one_is_401() {
    let OneObservation { v, c, path, .. } = one_observation();
    // A token for AIM (another audience) is not a vault token.
    let aim_token = v.env.secret_token(
        "aimclient",
        &["--scope", "system/*.rs", "--partition", "pa"],
        &[("resource", &format!("{}/aim", v.env.base_url()))],
    );
    outcome(
        &c.send("GET", &path, Some(&aim_token), &[], None),
        401,
        "login",
    );

    // A revoked token stops working at once.
    let reader = v.token("reader", "system/Observation.rs", &["pa"]);
    assert_eq!(c.send("GET", &path, Some(&reader), &[], None).status, 200);
    let jti = crate::support::jti(&reader);
    v.env.cli(&["token", "revoke", &jti]).unwrap();
    outcome(
        &c.send("GET", &path, Some(&reader), &[], None),
        401,
        "login",
    );
}

#[test]
fn a_certificate_bound_token_works_only_over_its_certificate() {
    let v = vault();
    let (crt, key) = v
        .env
        .add_mtls_client("clinic", &["--scope", "system/*.rs", "--partition", "pa"]);
    let (other_crt, other_key) = v.env.issue_client("intruder");
    let bound = Client::new(&v.env, Some((&crt, &key)));
    let reply = bound.token(&[
        ("grant_type", "client_credentials"),
        ("client_id", "clinic"),
    ]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let token = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert!(crate::support::decode_jwt(&token).1["cnf"]["x5t#S256"].is_string());

    assert_eq!(
        bound
            .send("GET", "/fhir/pa/Observation", Some(&token), &[], None)
            .status,
        200
    );
    let stolen = Client::new(&v.env, Some((&other_crt, &other_key)));
    outcome(
        &stolen.send("GET", "/fhir/pa/Observation", Some(&token), &[], None),
        401,
        "login",
    );
    outcome(
        &v.client()
            .send("GET", "/fhir/pa/Observation", Some(&token), &[], None),
        401,
        "login",
    );
}

#[test]
fn query_restricted_scopes_never_leak() {
    let v = vault();
    let c = v.client();
    let writer = v.token("writer", "system/*.cruds", &["pa"]);
    let lab = create(
        &c,
        &writer,
        "/fhir/pa/Observation",
        &observation("4548-4", "2021-01-01", "laboratory", "x"),
    );
    let vital = create(
        &c,
        &writer,
        "/fhir/pa/Observation",
        &observation("8867-4", "2021-01-02", "vital-signs", "x"),
    );

    let lab_only = v.token("lab", "system/Observation.crs?category=laboratory", &["pa"]);
    let all = c
        .send("GET", "/fhir/pa/Observation", Some(&lab_only), &[], None)
        .json();
    assert_eq!(all["total"], 1);
    assert_eq!(ids(&all), vec![lab["id"].as_str().unwrap().to_owned()]);
    assert_eq!(
        c.send(
            "GET",
            "/fhir/pa/Observation?code=8867-4",
            Some(&lab_only),
            &[],
            None
        )
        .json()["total"],
        0
    );
    let lab_path = format!("/fhir/pa/Observation/{}", lab["id"].as_str().unwrap());
    let vital_path = format!("/fhir/pa/Observation/{}", vital["id"].as_str().unwrap());
    assert_eq!(
        c.send("GET", &lab_path, Some(&lab_only), &[], None).status,
        200
    );
    outcome(
        &c.send("GET", &vital_path, Some(&lab_only), &[], None),
        404,
        "not-found",
    );
    // It may create laboratory results only; a vital sign is refused and not stored.
    assert_eq!(
        c.send(
            "POST",
            "/fhir/pa/Observation",
            Some(&lab_only),
            &[],
            Some(&observation("1-1", "2021", "laboratory", "x"))
        )
        .status,
        201
    );
    outcome(
        &c.send(
            "POST",
            "/fhir/pa/Observation",
            Some(&lab_only),
            &[],
            Some(&observation("2-2", "2021", "vital-signs", "x")),
        ),
        403,
        "forbidden",
    );
    let everything = c
        .send(
            "GET",
            "/fhir/pa/Observation?_summary=count",
            Some(&writer),
            &[],
            None,
        )
        .json();
    assert_eq!(
        everything["total"], 3,
        "the refused create left nothing behind"
    );
}

fn introspections(client: &Client) -> u64 {
    client
        .get("/metrics")
        .body
        .lines()
        .filter(|l| l.starts_with("tessera_introspections_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn gateway_mode_checks_tokens_by_introspection() {
    for cache_seconds in [30, 0] {
        let env = Env::new();
        env.cli(&[
            "account",
            "add",
            "--mpi-id",
            MPI_A,
            "--partition-name",
            "pa",
        ])
        .unwrap();
        let audience = format!("{}/fhir", env.base_url());
        let secret = env.add_secret_client(&[
            "--client-id",
            "vault-gateway",
            "--auth",
            "client_secret_basic",
            "--scope",
            "introspection",
            "--resource-server",
            &audience,
        ]);
        env.configure(|c| {
            c.vault.verify = tessera::config::VerifyMode::Introspection;
            c.vault.introspection_client_id = "vault-gateway".into();
            c.vault.introspection_client_secret = secret.clone();
            c.vault.introspection_cache_seconds = cache_seconds;
        });
        let v = Vault {
            _server: env.start(),
            env,
        };
        let c = v.client();
        let token = v.token("app", "system/*.cruds", &["pa"]);
        let created = create(
            &c,
            &token,
            "/fhir/pa/Patient",
            r#"{"resourceType":"Patient","active":true}"#,
        );
        let path = format!("/fhir/pa/Patient/{}", created["id"].as_str().unwrap());
        let before = introspections(&c);
        assert_eq!(c.send("GET", &path, Some(&token), &[], None).status, 200);
        let after = introspections(&c);
        let forged = format!("{}x", &token[..token.len() - 1]);
        outcome(
            &c.send("GET", &path, Some(&forged), &[], None),
            401,
            "login",
        );
        // The gateway's refusal is on the trail, as a local refusal is.
        let refused = crate::audit::matching_eventually(&v.env, 1, |r| {
            matches!(
                r.event,
                tessera_atna::Event::FhirRequest { status: 401, .. }
            )
        });
        assert_eq!(refused.len(), 1, "the refused request is audited");
        // The partition and scope rules are the same as in local mode.
        let other = v.token("other", "system/*.rs", &["pb"]);
        outcome(
            &c.send("GET", &path, Some(&other), &[], None),
            403,
            "forbidden",
        );
        let jti = crate::support::jti(&token);
        v.env.cli(&["token", "revoke", &jti]).unwrap();
        let revoked = c.send("GET", &path, Some(&token), &[], None);
        if cache_seconds == 0 {
            assert!(
                after > before,
                "every request asks the authorization server"
            );
            outcome(&revoked, 401, "login");
        } else {
            assert_eq!(after, before, "a cached answer needs no introspection");
            assert_eq!(
                revoked.status, 200,
                "cached until introspection_cache_seconds pass"
            );
        }
    }
}

#[test]
fn expired_and_foreign_realm_tokens_are_refused() {
    let env = Env::new();
    env.add_account(MPI_A, "pa");
    // Long enough to be used once on a loaded machine, short enough to wait out.
    env.cli(&["realm", "add", "short", "--token-lifetime", "4"])
        .unwrap();
    env.configure(|c| c.vault.realm = "short".into());
    let mut secrets = Vec::new();
    for realm in ["short", "cara"] {
        secrets.push(env.add_secret_client(&[
            "--realm",
            realm,
            "--client-id",
            "app",
            "--auth",
            "client_secret_post",
            "--scope",
            "system/*.rs",
            "--partition",
            "pa",
        ]));
    }
    let _server = env.start();
    let c = Client::new(&env, None);
    let token = |realm: &str, secret: &str| {
        let reply = c.post_form(
            &format!("/realms/{realm}/protocol/openid-connect/token"),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "app"),
                ("client_secret", secret),
            ],
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["access_token"].as_str().unwrap().to_owned()
    };
    let short = token("short", &secrets[0]);
    let foreign = token("cara", &secrets[1]);
    assert_eq!(
        c.send("GET", "/fhir/pa/Patient", Some(&short), &[], None)
            .status,
        200
    );
    outcome(
        &c.send("GET", "/fhir/pa/Patient", Some(&foreign), &[], None),
        401,
        "login",
    );
    let exp = decode_jwt(&short).1["exp"].as_i64().unwrap();
    let left = u64::try_from(exp - crate::support::now()).unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_millis(left * 1000 + 1100));
    let expired = c.send("GET", "/fhir/pa/Patient", Some(&short), &[], None);
    outcome(&expired, 401, "login");
    assert!(expired
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
}
