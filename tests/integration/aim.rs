//! AIM: accounts and MPI-IDs, the resolution API and PIXm (ITI-83), over real HTTPS.

use serde_json::{json, Value};

use crate::support::{assert_valid_fhir, decode_jwt, Client, Env, Reply};

const RESOLVE: &str = "/aim/api/v1/query/get-account-urn-from-mpi-id-urn";
const MPI_A: &str =
    "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1";
const MPI_B: &str =
    "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/7d1e9a2c-0c1f-4f5e-8b44-2a9d3c1e5f60";
const MPI_UNKNOWN: &str =
    "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/00000000-0000-4000-8000-000000000000";

fn field<'a>(printed: &'a str, name: &str) -> &'a str {
    printed
        .lines()
        .find_map(|l| l.strip_prefix(name).map(str::trim))
        .unwrap_or_else(|| panic!("no {name} in {printed}"))
}

fn account_count(env: &Env) -> usize {
    env.cli(&["account", "list"]).unwrap().lines().count() - 1
}

#[test]
fn accounts_are_created_and_linked_and_a_conflict_changes_nothing() {
    let env = Env::new();
    let printed = env.cli(&["account", "add", "--mpi-id", MPI_A]).unwrap();
    let urn = field(&printed, "account").to_owned();
    let partition = field(&printed, "partition").to_owned();
    assert!(urn.starts_with("urn:tessera:account:"), "{urn}");
    assert_eq!(
        urn.rsplit(':').next().unwrap(),
        partition,
        "the default partition is named after the account"
    );

    let by_urn: Value =
        serde_json::from_str(&env.cli(&["account", "show", &urn]).unwrap()).unwrap();
    let by_mpi: Value =
        serde_json::from_str(&env.cli(&["account", "show", MPI_A]).unwrap()).unwrap();
    assert_eq!(by_urn, by_mpi);
    assert_eq!(by_urn["accountUrn"], urn);
    assert_eq!(by_urn["partitions"], json!([{ "id": partition }]));
    assert_eq!(by_urn["mpiIdUrns"], json!([MPI_A]));

    // The same MPI-ID again: refused, nothing created.
    let again = env
        .cli(&["account", "add", "--mpi-id", MPI_A])
        .unwrap_err()
        .to_string();
    assert!(
        again.contains("already belongs") && again.contains(&urn),
        "{again}"
    );
    // A new MPI-ID whose partition name clashes: the whole creation is rolled back.
    let clash = env
        .cli(&[
            "account",
            "add",
            "--mpi-id",
            MPI_B,
            "--partition-name",
            &partition,
        ])
        .unwrap_err()
        .to_string();
    assert!(clash.contains("already exists"), "{clash}");
    assert_eq!(account_count(&env), 1);
    assert!(
        env.cli(&["account", "show", MPI_B]).is_err(),
        "MPI_B must not be linked anywhere"
    );

    // After a merge, a second MPI-ID points to the same account; never to two.
    env.cli(&["account", "link-mpi", "--account", &urn, "--mpi-id", MPI_B])
        .unwrap();
    let merged: Value =
        serde_json::from_str(&env.cli(&["account", "show", MPI_B]).unwrap()).unwrap();
    assert_eq!(merged["accountUrn"], urn);
    assert_eq!(merged["mpiIdUrns"], json!([MPI_A, MPI_B]));
    let other = field(
        &env.cli(&["account", "add", "--mpi-id", MPI_UNKNOWN])
            .unwrap(),
        "account",
    )
    .to_owned();
    let twice = env
        .cli(&[
            "account",
            "link-mpi",
            "--account",
            &other,
            "--mpi-id",
            MPI_B,
        ])
        .unwrap_err()
        .to_string();
    assert!(twice.contains("already belongs"), "{twice}");
    let nowhere = env
        .cli(&[
            "account",
            "link-mpi",
            "--account",
            "urn:tessera:account:nope",
            "--mpi-id",
            MPI_B,
        ])
        .unwrap_err();
    assert!(nowhere.to_string().contains("does not exist"), "{nowhere}");

    // Extra partitions for use cases.
    let added = env
        .cli(&[
            "partition",
            "add",
            "--account",
            &urn,
            "--use-case",
            "research",
        ])
        .unwrap();
    assert!(added.contains(&format!("{partition}-research")), "{added}");
    let shown: Value = serde_json::from_str(&env.cli(&["account", "show", &urn]).unwrap()).unwrap();
    assert_eq!(
        shown["partitions"],
        json!([{ "id": partition }, { "id": format!("{partition}-research"), "useCase": "research" }])
    );
    let dup = env
        .cli(&[
            "partition",
            "add",
            "--account",
            &urn,
            "--use-case",
            "research",
        ])
        .unwrap_err();
    assert!(dup.to_string().contains("already exists"), "{dup}");
    assert!(env
        .cli(&["partition", "add", "--account", &urn, "--use-case", "a/b"])
        .is_err());

    let malformed = env
        .cli(&["account", "add", "--mpi-id", "urn:cara:mpi_id:not-an-oid/x"])
        .unwrap_err();
    assert!(malformed.to_string().contains("MPI-ID"), "{malformed}");
}

struct Aim {
    env: Env,
    tcu: Client,
    urn: String,
    partition: String,
}

/// An installation with one account and `tcu`, an mTLS client allowed to resolve.
fn aim() -> Aim {
    let env = Env::new();
    let printed = env.cli(&["account", "add", "--mpi-id", MPI_A]).unwrap();
    let (urn, partition) = (
        field(&printed, "account").to_owned(),
        field(&printed, "partition").to_owned(),
    );
    let (crt, key) = env.add_mtls_client("tcu", &["--scope", "aim/resolve system/*.rs"]);
    let tcu = Client::new(&env, Some((&crt, &key)));
    Aim {
        env,
        tcu,
        urn,
        partition,
    }
}

impl Aim {
    fn token(&self, scope: &str, resource: Option<&str>) -> String {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", "tcu"),
            ("scope", scope),
        ];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        let reply = self.tcu.token(&form);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["access_token"].as_str().unwrap().to_owned()
    }
}

fn resolve(client: &Client, token: Option<&str>, body: &str) -> Reply {
    client.post_json(RESOLVE, token, body)
}

#[test]
fn resolution_needs_a_bound_token_for_aim_with_the_aim_scope() {
    let a = aim();
    let _server = a.env.start();
    let token = a.token("aim/resolve", None);
    assert!(decode_jwt(&token).1["cnf"].is_object());
    let body = json!({ "mpiIdUrn": MPI_A }).to_string();

    let ok = resolve(&a.tcu, Some(&token), &body);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.json(),
        json!({ "accountUrn": a.urn, "partitions": [{ "id": a.partition }] })
    );

    let unknown = resolve(
        &a.tcu,
        Some(&token),
        &json!({ "mpiIdUrn": MPI_UNKNOWN }).to_string(),
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"], "not_found");
    for bad in ["not json", "{}", r#"{"mpiIdUrn":"urn:x:y"}"#] {
        let reply = resolve(&a.tcu, Some(&token), bad);
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_request");
    }
    // The body is JSON, said so exactly: a good body under another media type is refused.
    for content_type in [
        "text/plain",
        "application/jsonx",
        "application/x-www-form-urlencoded",
    ] {
        let reply = a.tcu.send(
            "POST",
            RESOLVE,
            Some(&token),
            &[("Content-Type", content_type)],
            Some(&body),
        );
        assert_eq!(reply.status, 400, "{content_type}: {}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_request");
    }
    let with_charset = a.tcu.send(
        "POST",
        RESOLVE,
        Some(&token),
        &[("Content-Type", "application/json; charset=utf-8")],
        Some(&body),
    );
    assert_eq!(with_charset.status, 200, "{}", with_charset.body);

    // No token, or a token only in the query string: 401 with a bare challenge.
    let none = resolve(&a.tcu, None, &body);
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"cara\"")
    );
    let in_query = a
        .tcu
        .post_json(&format!("{RESOLVE}?access_token={token}"), None, &body);
    assert_eq!(in_query.status, 401);
    // A certificate-bound token over a connection without that certificate.
    let stolen = resolve(&Client::new(&a.env, None), Some(&token), &body);
    assert_eq!(stolen.status, 401);
    assert_eq!(
        stolen.header("www-authenticate"),
        Some("Bearer realm=\"cara\", error=\"invalid_token\"")
    );
    // Valid, but without the AIM scope: 403.
    let weak = resolve(&a.tcu, Some(&a.token("system/Patient.rs", None)), &body);
    assert_eq!(weak.status, 403);
    assert_eq!(
        weak.header("www-authenticate"),
        Some("Bearer realm=\"cara\", error=\"insufficient_scope\"")
    );
    // Valid, with the scope, but meant for the vault only.
    let vault_only = a.token("aim/resolve", Some(&format!("{}/fhir", a.env.base_url())));
    let reply = resolve(&a.tcu, Some(&vault_only), &body);
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"], "invalid_token");
    // Revoked.
    a.tcu.post_form(
        "/realms/cara/protocol/openid-connect/revoke",
        &[("token", &token), ("client_id", "tcu")],
    );
    assert_eq!(resolve(&a.tcu, Some(&token), &body).status, 401);
}

#[test]
fn pixm_answers_with_fhir_resources_and_pixm_statuses() {
    let a = aim();
    let _server = a.env.start();
    let token = a.token("aim/resolve", None);
    let (oid, uuid) = MPI_A
        .rsplit_once(":mpi_id:")
        .unwrap()
        .1
        .split_once('/')
        .unwrap();
    let pix = |query: &str| {
        a.tcu
            .get_with_token(&format!("/aim/fhir/Patient/$ihe-pix?{query}"), &token)
    };
    let source = format!("sourceIdentifier=urn:oid:{oid}%7C{uuid}");

    for query in [
        source.clone(),
        format!("{source}&targetSystem=urn:tessera:account"),
    ] {
        let found = pix(&query);
        assert_eq!(found.status, 200, "{query}: {}", found.body);
        assert_eq!(found.header("content-type"), Some("application/fhir+json"));
        let parameters = found.json();
        assert_valid_fhir(&parameters);
        assert_eq!(
            parameters,
            json!({"resourceType": "Parameters", "parameter": [{
                "name": "targetIdentifier",
                "valueIdentifier": { "system": "urn:tessera:account", "value": a.urn },
            }]})
        );
    }
    let cases = [
        (
            format!("{source}&targetSystem=urn:oid:9.9.9"),
            403,
            "forbidden",
        ),
        (
            format!("sourceIdentifier=urn:oid:{oid}%7C00000000-0000-4000-8000-000000000000"),
            404,
            "not-found",
        ),
        (
            format!("sourceIdentifier=urn:oid:1.2.3%7C{uuid}"),
            400,
            "invalid",
        ),
        (
            "targetSystem=urn:tessera:account".to_owned(),
            400,
            "invalid",
        ),
        (format!("sourceIdentifier={uuid}"), 400, "invalid"),
    ];
    for (query, status, code) in cases {
        let reply = pix(&query);
        assert_eq!(reply.status, status, "{query}: {}", reply.body);
        let outcome = reply.json();
        assert_valid_fhir(&outcome);
        assert_eq!(outcome["issue"][0]["code"], code, "{query}");
    }
    let anonymous = Client::new(&a.env, None).get(&format!("/aim/fhir/Patient/$ihe-pix?{source}"));
    assert_eq!(anonymous.status, 401);
}

#[test]
fn a_token_for_an_account_names_it_and_exactly_its_partitions() {
    let a = aim();
    a.env
        .cli(&[
            "partition",
            "add",
            "--account",
            &a.urn,
            "--use-case",
            "research",
        ])
        .unwrap();
    let other = field(
        &a.env.cli(&["account", "add", "--mpi-id", MPI_B]).unwrap(),
        "account",
    )
    .to_owned();
    let one_secret = a.env.add_secret_client(&[
        "--client-id",
        "app",
        "--auth",
        "client_secret_post",
        "--scope",
        "system/*.rs",
        "--account",
        &a.urn,
    ]);
    let any_secret = a.env.add_secret_client(&[
        "--client-id",
        "hub",
        "--auth",
        "client_secret_post",
        "--scope",
        "system/*.rs",
        "--account",
        "*",
    ]);
    let _server = a.env.start();
    let client = Client::new(&a.env, None);
    let ask = |id: &str, secret: &str, account: &str| {
        client.token(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("account", account),
        ])
    };

    let reply = ask("app", &one_secret, &a.urn);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let claims = decode_jwt(reply.json()["access_token"].as_str().unwrap()).1;
    assert_eq!(claims["account"], a.urn);
    assert_eq!(
        claims["partitions"],
        json!([a.partition, format!("{}-research", a.partition)])
    );

    ask("app", &one_secret, &other).oauth_error(401, "invalid_client");
    let reply = ask("hub", &any_secret, &other);
    assert_eq!(
        decode_jwt(reply.json()["access_token"].as_str().unwrap()).1["account"],
        other
    );
    ask("hub", &any_secret, "urn:tessera:account:does-not-exist")
        .oauth_error(400, "invalid_request");
    ask("hub", &any_secret, "not a urn").oauth_error(400, "invalid_request");
    // Without `account`, no account claim.
    let plain = client.token(&[
        ("grant_type", "client_credentials"),
        ("client_id", "hub"),
        ("client_secret", &any_secret),
    ]);
    assert!(decode_jwt(plain.json()["access_token"].as_str().unwrap())
        .1
        .get("account")
        .is_none());
}
