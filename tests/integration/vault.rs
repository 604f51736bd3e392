//! The FHIR Vault (ITI-72) end to end: real tokens from the token endpoint, real HTTPS
//! (mutual TLS where the token is certificate-bound), the real database.

use serde_json::{json, Value};

use crate::support::{assert_valid_fhir, decode_jwt, Client, Env, Reply, Server};

const MPI_A: &str =
    "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1";
const MPI_B: &str =
    "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/7d1e9a2c-0c1f-4f5e-8b44-2a9d3c1e5f60";

/// An installation with two patient partitions, `pa` and `pb`, and a running server.
struct Vault {
    // The server stops before its database goes (fields drop in order).
    _server: Server,
    env: Env,
}

fn vault() -> Vault {
    let env = Env::new();
    for (mpi, partition) in [(MPI_A, "pa"), (MPI_B, "pb")] {
        env.cli(&[
            "account",
            "add",
            "--mpi-id",
            mpi,
            "--partition-name",
            partition,
        ])
        .unwrap();
    }
    Vault {
        _server: env.start(),
        env,
    }
}

impl Vault {
    /// A secret client with `scope` on `partitions`, and a token with all of it.
    fn token(&self, client_id: &str, scope: &str, partitions: &[&str]) -> String {
        let mut args = vec!["--scope", scope];
        for p in partitions {
            args.extend(["--partition", p]);
        }
        self.env.secret_token(client_id, &args, &[("scope", scope)])
    }

    fn client(&self) -> Client {
        Client::new(&self.env, None)
    }
}

fn outcome(reply: &Reply, status: u16, code: &str) -> String {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/fhir+json"));
    let body = reply.json();
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["code"], code, "{body}");
    body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn observation(code: &str, date: &str, category: &str, patient: &str) -> String {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": date,
        "valueQuantity": {"value": 5.4, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    })
    .to_string()
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A searchset and the pages its `next` links lead to, each fetched by `search` with
/// the path under `/fhir/pa/`.
fn every_page(first: Value, search: impl Fn(&str) -> Value) -> Vec<Value> {
    let mut pages = vec![first];
    while let Some(next) = pages.last().and_then(|page| {
        page["link"]
            .as_array()?
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned)
    }) {
        pages.push(search(next.split_once("/fhir/pa/").unwrap().1));
    }
    pages
}

fn create(client: &Client, token: &str, path: &str, body: &str) -> Value {
    let reply = client.send("POST", path, Some(token), &[], Some(body));
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()
}

#[test]
fn crud_versions_and_history_over_https() {
    let v = vault();
    let c = v.client();
    let token = v.token("app", "system/*.cruds", &["pa"]);

    let created = c.send(
        "POST",
        "/fhir/pa/Patient",
        Some(&token),
        &[],
        Some(r#"{"resourceType":"Patient","id":"ignored","name":[{"family":"Muster","given":["Anna"]}],"gender":"female","birthDate":"1980-02-29"}"#),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let patient = created.json();
    let id = patient["id"].as_str().unwrap().to_owned();
    assert_ne!(id, "ignored", "the server assigns ids on create");
    assert_eq!(patient["meta"]["versionId"], "1");
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    let location = created.header("location").unwrap();
    assert!(
        location.ends_with(&format!("/fhir/pa/Patient/{id}/_history/1")),
        "{location}"
    );
    assert!(created.header("last-modified").is_some());
    assert_valid_fhir(&patient);

    let read = c.send(
        "GET",
        &format!("/fhir/pa/Patient/{id}"),
        Some(&token),
        &[],
        None,
    );
    assert_eq!(read.status, 200);
    assert_eq!(read.json(), patient);

    // Update with the right version, then a stale one (412, nothing changes).
    let mut changed = patient.clone();
    changed["gender"] = json!("other");
    let path = format!("/fhir/pa/Patient/{id}");
    let updated = c.send(
        "PUT",
        &path,
        Some(&token),
        &[("If-Match", "W/\"1\"")],
        Some(&changed.to_string()),
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.json()["meta"]["versionId"], "2");
    let stale = c.send(
        "PUT",
        &path,
        Some(&token),
        &[("If-Match", "W/\"1\"")],
        Some(&patient.to_string()),
    );
    outcome(&stale, 412, "conflict");
    assert_eq!(
        c.send("GET", &path, Some(&token), &[], None).json()["gender"],
        "other"
    );
    // An update whose id differs from the URL's.
    let mut other = changed.clone();
    other["id"] = json!("someone-else");
    outcome(
        &c.send("PUT", &path, Some(&token), &[], Some(&other.to_string())),
        400,
        "invalid",
    );

    // vread of both versions; an unknown version is 404.
    let v1 = c.send(
        "GET",
        &format!("{path}/_history/1"),
        Some(&token),
        &[],
        None,
    );
    assert_eq!(v1.json()["gender"], "female");
    assert_eq!(
        c.send(
            "GET",
            &format!("{path}/_history/2"),
            Some(&token),
            &[],
            None
        )
        .json()["gender"],
        "other"
    );
    outcome(
        &c.send(
            "GET",
            &format!("{path}/_history/9"),
            Some(&token),
            &[],
            None,
        ),
        404,
        "not-found",
    );

    // Client-chosen ids: allowed by PUT, within the partition only.
    let chosen = r#"{"resourceType":"Patient","id":"chosen-1","active":true}"#;
    let put = c.send(
        "PUT",
        "/fhir/pa/Patient/chosen-1",
        Some(&token),
        &[],
        Some(chosen),
    );
    assert_eq!(put.status, 201, "{}", put.body);
    let token_b = v.token("app-b", "system/*.cruds", &["pb"]);
    outcome(
        &c.send(
            "GET",
            "/fhir/pb/Patient/chosen-1",
            Some(&token_b),
            &[],
            None,
        ),
        404,
        "not-found",
    );
    let put_b = c.send(
        "PUT",
        "/fhir/pb/Patient/chosen-1",
        Some(&token_b),
        &[],
        Some(chosen),
    );
    assert_eq!(
        put_b.status, 201,
        "the same id in another partition is another resource: {}",
        put_b.body
    );
    assert_eq!(
        c.send("GET", "/fhir/pa/Patient/chosen-1", Some(&token), &[], None)
            .json()["meta"]["versionId"],
        "1"
    );

    // Delete: logical, then 410; deleting again changes nothing.
    assert_eq!(c.send("DELETE", &path, Some(&token), &[], None).status, 204);
    outcome(
        &c.send("GET", &path, Some(&token), &[], None),
        410,
        "deleted",
    );
    assert_eq!(c.send("DELETE", &path, Some(&token), &[], None).status, 204);
    assert_eq!(
        c.send(
            "GET",
            &format!("{path}/_history/1"),
            Some(&token),
            &[],
            None
        )
        .status,
        200
    );
    outcome(
        &c.send(
            "GET",
            &format!("{path}/_history/3"),
            Some(&token),
            &[],
            None,
        ),
        410,
        "deleted",
    );
    outcome(
        &c.send("GET", "/fhir/pa/Patient/never-was", Some(&token), &[], None),
        404,
        "not-found",
    );

    // Instance history: newest first, the deletion included.
    let history = c.send("GET", &format!("{path}/_history"), Some(&token), &[], None);
    assert_eq!(history.status, 200, "{}", history.body);
    let history = history.json();
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], 3);
    let methods: Vec<&str> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);
    assert_valid_fhir(&history);
    // Type history counts every version of every Patient of this partition only.
    let type_history = c
        .send(
            "GET",
            "/fhir/pa/Patient/_history?_count=2",
            Some(&token),
            &[],
            None,
        )
        .json();
    assert_eq!(type_history["total"], 4);
    assert_eq!(type_history["entry"].as_array().unwrap().len(), 2);
    assert!(type_history["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["relation"] == "next"));
}

#[test]
fn the_seed_002_query_and_search_parameters() {
    let v = vault();
    let c = v.client();
    let writer = v.token("writer", "system/*.cruds", &["pa"]);
    let patient = create(
        &c,
        &writer,
        "/fhir/pa/Patient",
        r#"{"resourceType":"Patient","identifier":[{"system":"urn:oid:2.16.756.5.32","value":"7560000000001"}],"name":[{"family":"Müller","given":["Anna"]}]}"#,
    );
    let pid = patient["id"].as_str().unwrap();
    let dates = [
        "2021-01-10",
        "2023-05-01T10:00:00+02:00",
        "2022-03-15",
        "2020-07-01",
    ];
    let mut hba1c = Vec::new();
    for date in dates {
        hba1c.push(
            create(
                &c,
                &writer,
                "/fhir/pa/Observation",
                &observation("4548-4", date, "laboratory", pid),
            )["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let vital = create(
        &c,
        &writer,
        "/fhir/pa/Observation",
        &observation("8867-4", "2022-01-01", "vital-signs", pid),
    );
    // Another partition's data never shows.
    let writer_b = v.token("writer-b", "system/*.cruds", &["pb"]);
    create(
        &c,
        &writer_b,
        "/fhir/pb/Observation",
        &observation("4548-4", "2024-01-01", "laboratory", pid),
    );

    // Seed 002's call, from a backend-services client that may only read and search.
    let reader = v.token("reader", "system/Observation.rs system/Patient.rs", &["pa"]);
    let seed = c.send(
        "GET",
        "/fhir/pa/Observation?code=4548-4&_sort%3Adesc=date&_count=10",
        Some(&reader),
        &[("Accept", "application/json")],
        None,
    );
    assert_eq!(seed.status, 200, "{}", seed.body);
    let bundle = seed.json();
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], 4);
    // Newest first: 2023, 2022, 2021, 2020.
    assert_eq!(
        ids(&bundle),
        vec![
            hba1c[1].clone(),
            hba1c[2].clone(),
            hba1c[0].clone(),
            hba1c[3].clone()
        ]
    );
    assert_valid_fhir(&bundle);

    let search = |query: &str| -> Value {
        let reply = c.send(
            "GET",
            &format!("/fhir/pa/{query}"),
            Some(&reader),
            &[],
            None,
        );
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        reply.json()
    };
    let count = |query: &str| search(query)["total"].as_u64().unwrap();
    // token forms
    assert_eq!(count("Observation?code=http://loinc.org|4548-4"), 4);
    assert_eq!(count("Observation?code=http://snomed.info/sct|4548-4"), 0);
    assert_eq!(count("Observation?code=http://loinc.org|"), 5);
    assert_eq!(count("Observation?code=4548-4,8867-4"), 5);
    assert_eq!(count("Observation?code:not=4548-4"), 1);
    assert_eq!(count("Observation?category=vital-signs"), 1);
    assert_eq!(count("Observation?status=final&category=laboratory"), 4);
    // dates, with prefixes, over ranges
    assert_eq!(count("Observation?date=2022"), 2);
    assert_eq!(count("Observation?date=ge2022-01-01"), 3);
    assert_eq!(count("Observation?date=lt2021-01-10"), 1);
    assert_eq!(count("Observation?date=ge2021-01-01&date=le2021-12-31"), 1);
    assert_eq!(
        count("Observation?date=2023-05-01T08:00:00Z"),
        1,
        "time zones are honoured"
    );
    assert_eq!(count("Observation?date=sa2022-12-31"), 1);
    // references
    assert_eq!(count(&format!("Observation?patient={pid}")), 5);
    assert_eq!(count(&format!("Observation?subject=Patient/{pid}")), 5);
    assert_eq!(count("Observation?patient=nobody"), 0);
    // strings and identifiers
    assert_eq!(count("Patient?name=m%C3%BCl"), 1);
    assert_eq!(count("Patient?family:exact=M%C3%BCller"), 1);
    assert_eq!(count("Patient?family:exact=m%C3%BCller"), 0);
    assert_eq!(count("Patient?given:contains=nn"), 1);
    assert_eq!(
        count("Patient?identifier=urn:oid:2.16.756.5.32|7560000000001"),
        1
    );
    // _id, _lastUpdated, :missing
    assert_eq!(count(&format!("Observation?_id={}", hba1c[0])), 1);
    assert_eq!(count("Observation?_lastUpdated=gt2000-01-01"), 5);
    assert_eq!(count("Observation?code:missing=true"), 0);
    // POST _search is the same search.
    let posted = c.send(
        "POST",
        "/fhir/pa/Observation/_search",
        Some(&reader),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some("code=4548-4&date=2022"),
    );
    assert_eq!(posted.json()["total"], 1, "{}", posted.body);

    // Paging: next links until the end, each entry exactly once.
    let seen: Vec<String> = every_page(search("Observation?_sort=date&_count=2"), search)
        .iter()
        .flat_map(ids)
        .collect();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0], hba1c[3], "ascending date starts in 2020");
    assert_eq!(seen[4], hba1c[1]);
    // _summary=count, _total=none
    let summary = search("Observation?_summary=count");
    assert_eq!(summary["total"], 5);
    assert!(summary.get("entry").is_none());
    assert!(search("Observation?_total=none").get("total").is_none());

    // Unknown parameters: ignored (and left out of the self link), or 400 when strict.
    let lenient = search("Observation?colour=red&code=8867-4");
    assert_eq!(lenient["total"], 1);
    let self_link = lenient["link"][0]["url"].as_str().unwrap();
    assert!(
        !self_link.contains("colour") && self_link.contains("code=8867-4"),
        "{self_link}"
    );
    let strict = c.send(
        "GET",
        "/fhir/pa/Observation?colour=red",
        Some(&reader),
        &[("Prefer", "handling=strict")],
        None,
    );
    outcome(&strict, 400, "invalid");
    outcome(
        &c.send(
            "GET",
            "/fhir/pa/Observation?date=yesterday",
            Some(&reader),
            &[],
            None,
        ),
        400,
        "invalid",
    );
    outcome(
        &c.send(
            "GET",
            "/fhir/pa/Observation?code:below=x",
            Some(&reader),
            &[],
            None,
        ),
        400,
        "invalid",
    );
    let _ = vital;
}

#[test]
fn every_authorization_case_of_iti_72() {
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

    // A token for AIM (another audience) is not a vault token.
    let aim_secret = v.env.add_secret_client(&[
        "--client-id",
        "aimclient",
        "--auth",
        "client_secret_post",
        "--scope",
        "system/*.rs",
        "--partition",
        "pa",
    ]);
    let aim_token = c.token(&[
        ("grant_type", "client_credentials"),
        ("client_id", "aimclient"),
        ("client_secret", &aim_secret),
        ("resource", &format!("{}/aim", v.env.base_url())),
    ]);
    assert_eq!(aim_token.status, 200, "{}", aim_token.body);
    let aim_token = aim_token.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    outcome(
        &c.send("GET", &path, Some(&aim_token), &[], None),
        401,
        "login",
    );

    // A revoked token stops working at once.
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

#[test]
fn transactions_are_all_or_nothing_and_batches_are_not() {
    let v = vault();
    let c = v.client();
    let token = v.token("writer", "system/*.cruds", &["pa"]);
    let transaction = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                          "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": "Patient?family=Tx"}},
        ],
    });
    let reply = c.send(
        "POST",
        "/fhir/pa",
        Some(&token),
        &[],
        Some(&transaction.to_string()),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let response = reply.json();
    assert_eq!(response["type"], "transaction-response");
    assert_valid_fhir(&response);
    let entries = response["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201");
    assert_eq!(entries[1]["response"]["status"], "201");
    assert_eq!(
        entries[2]["resource"]["total"], 1,
        "reads run after the writes"
    );
    let patient_location = entries[0]["response"]["location"].as_str().unwrap();
    let patient_ref = patient_location.split("/_history").next().unwrap();
    let obs_location = entries[1]["response"]["location"].as_str().unwrap();
    let obs = c
        .send(
            "GET",
            &format!(
                "/fhir/pa/{}",
                obs_location.split("/_history").next().unwrap()
            ),
            Some(&token),
            &[],
            None,
        )
        .json();
    assert_eq!(
        obs["subject"]["reference"], patient_ref,
        "urn:uuid references point at the new ids"
    );

    // One bad entry fails the whole transaction: nothing of it is stored.
    let before = c
        .send(
            "GET",
            "/fhir/pa/Patient?_summary=count",
            Some(&token),
            &[],
            None,
        )
        .json()["total"]
        .clone();
    let failing = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "name": [{"family": "Lost"}]}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": "p9"}, "request": {"method": "PUT", "url": "Patient/p9", "ifMatch": "W/\"4\""}},
        ],
    });
    outcome(
        &c.send(
            "POST",
            "/fhir/pa",
            Some(&token),
            &[],
            Some(&failing.to_string()),
        ),
        412,
        "conflict",
    );
    assert_eq!(
        c.send(
            "GET",
            "/fhir/pa/Patient?_summary=count",
            Some(&token),
            &[],
            None
        )
        .json()["total"],
        before
    );
    assert_eq!(
        c.send(
            "GET",
            "/fhir/pa/Patient?family=Lost",
            Some(&token),
            &[],
            None
        )
        .json()["total"],
        0
    );
    // An entry the token may not do fails the transaction too.
    let reader = v.token("reader", "system/Patient.rs", &["pa"]);
    outcome(
        &c.send(
            "POST",
            "/fhir/pa",
            Some(&reader),
            &[],
            Some(&failing.to_string()),
        ),
        403,
        "forbidden",
    );

    // A batch: each entry on its own, each authorized on its own.
    let mixed = v.token(
        "mixed",
        "system/Patient.cruds system/Observation.rs",
        &["pa"],
    );
    let batch = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Patient", "name": [{"family": "Batch"}]}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "no"}}, "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "wrong type"}}, "request": {"method": "POST", "url": "Patient"}},
        ],
    });
    let reply = c.send(
        "POST",
        "/fhir/pa",
        Some(&mixed),
        &[],
        Some(&batch.to_string()),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let response = reply.json();
    assert_eq!(response["type"], "batch-response");
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["201", "403", "404", "400"]);
    assert_eq!(
        c.send(
            "GET",
            "/fhir/pa/Patient?family=Batch",
            Some(&token),
            &[],
            None
        )
        .json()["total"],
        1
    );
    assert_valid_fhir(&response);

    // A batch to a partition the token does not name is refused whole, as a
    // transaction is: 403, no batch-response of 403 entries.
    for kind in ["batch", "transaction"] {
        let elsewhere = json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"request": {"method": "GET", "url": "Patient?name=x"}},
        ]});
        outcome(
            &c.send(
                "POST",
                "/fhir/pb",
                Some(&mixed),
                &[],
                Some(&elsewhere.to_string()),
            ),
            403,
            "forbidden",
        );
    }
}

#[test]
fn malformed_fhir_is_refused_and_changes_nothing() {
    let v = vault();
    let c = v.client();
    let token = v.token("writer", "system/*.cruds", &["pa"]);
    let cases = [
        ("POST", "/fhir/pa/Patient", "{not json", "invalid"),
        ("POST", "/fhir/pa/Patient", "[1,2]", "invalid"),
        (
            "POST",
            "/fhir/pa/Patient",
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#,
            "invalid",
        ),
        (
            "POST",
            "/fhir/pa/Patient",
            r#"{"resourceType":"Patient","gender":null}"#,
            "invalid",
        ),
        (
            "POST",
            "/fhir/pa/Patient",
            r#"{"resourceType":"Patient","name":[{}]}"#,
            "invalid",
        ),
        (
            "POST",
            "/fhir/pa/Nonsense",
            r#"{"resourceType":"Nonsense"}"#,
            "not-found",
        ),
        (
            "PUT",
            "/fhir/pa/Patient/a..b!",
            r#"{"resourceType":"Patient","id":"a..b!"}"#,
            "invalid",
        ),
        (
            "POST",
            "/fhir/pa",
            r#"{"resourceType":"Bundle","type":"collection"}"#,
            "invalid",
        ),
        ("PATCH", "/fhir/pa/Patient/x", r#"[]"#, "not-supported"),
    ];
    for (method, path, body, code) in cases {
        let reply = c.send(method, path, Some(&token), &[], Some(body));
        let status = if code == "not-found" { 404 } else { 400 };
        let diagnostics = outcome(&reply, status, code);
        assert!(!diagnostics.is_empty(), "{method} {path}");
    }
    let xml = c.send(
        "POST",
        "/fhir/pa/Patient",
        Some(&token),
        &[("Content-Type", "application/fhir+xml")],
        Some("<Patient/>"),
    );
    outcome(&xml, 400, "not-supported");
    let history = c
        .send("GET", "/fhir/pa/Patient/_history", Some(&token), &[], None)
        .json();
    assert_eq!(history["total"], 0, "nothing was stored: {history}");
    assert_valid_fhir(
        &c.send("POST", "/fhir/pa/Patient", Some(&token), &[], Some("{"))
            .json(),
    );
}

#[test]
fn metadata_and_smart_discovery_need_no_token() {
    let v = vault();
    let c = v.client();
    let reply = c.get("/fhir/pa/metadata");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let statement = reply.json();
    assert_eq!(statement["fhirVersion"], "4.0.1");
    let security = &statement["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "IUA");
    assert_eq!(
        security["service"][0]["coding"][0]["system"],
        "http://profiles.ihe.net/fhir/ihe.securityTypes/CodeSystem/securityTypes"
    );
    assert_eq!(security["service"][1]["coding"][0]["code"], "SMART-on-FHIR");
    let uris = &security["extension"][0]["extension"];
    assert_eq!(uris[0]["url"], "authorize");
    assert_eq!(
        uris[0]["valueUri"],
        format!("{}/protocol/openid-connect/auth", v.env.issuer())
    );
    assert_eq!(uris[1]["url"], "token");
    assert_eq!(uris[1]["valueUri"], v.env.token_url());
    let observation = statement["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Observation")
        .unwrap();
    let params: Vec<&str> = observation["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in [
        "code",
        "date",
        "patient",
        "category",
        "status",
        "_id",
        "_lastUpdated",
    ] {
        assert!(params.contains(&expected), "{expected} in {params:?}");
    }
    assert!(
        !params.contains(&"value-quantity"),
        "only what is supported is listed"
    );
    assert_valid_fhir(&statement);

    let smart = c.get("/fhir/pa/.well-known/smart-configuration");
    assert_eq!(smart.status, 200);
    let smart = smart.json();
    assert_eq!(smart["token_endpoint"], v.env.token_url());
    assert!(smart["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("client-confidential-asymmetric")));
    assert!(smart["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("private_key_jwt")));
    assert_eq!(
        smart["grant_types_supported"],
        json!(["client_credentials", "authorization_code", "refresh_token"])
    );
    assert_eq!(smart["response_types_supported"], json!(["code"]));
    assert!(smart["code_challenge_methods_supported"].is_array());
    assert!(smart["scopes_supported"].is_array());
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
    env.cli(&[
        "account",
        "add",
        "--mpi-id",
        MPI_A,
        "--partition-name",
        "pa",
    ])
    .unwrap();
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

fn only_vault(records: Vec<tessera_atna::Record>) -> Vec<tessera_atna::Record> {
    records
        .into_iter()
        .filter(|r| matches!(r.event, tessera_atna::Event::FhirRequest { .. }))
        .collect()
}

/// The vault's records in the journal: durable when the answer came.
fn vault_events(env: &Env) -> Vec<tessera_atna::Record> {
    only_vault(crate::audit::journaled(env))
}

#[test]
fn every_vault_interaction_is_audited_before_the_answer() {
    use tessera_atna::{Event, Outcome};
    let v = vault();
    let c = v.client();
    let token = v.token("app", "system/*.cruds", &["pa"]);
    let jti = crate::support::jti(&token);
    let account = v.env.cli(&["account", "show", MPI_A]).unwrap();
    let account: Value = serde_json::from_str(&account).unwrap();
    let account_urn = account["accountUrn"].as_str().unwrap().to_owned();

    let created = create(
        &c,
        &token,
        "/fhir/pa/Observation",
        &observation("4548-4", "2021-01-01", "laboratory", "x"),
    );
    let id = created["id"].as_str().unwrap();
    // Each record is committed before its answer: count right after each call.
    assert_eq!(vault_events(&v.env).len(), 1);
    assert_eq!(
        c.send(
            "GET",
            &format!("/fhir/pa/Observation/{id}"),
            Some(&token),
            &[],
            None
        )
        .status,
        200
    );
    assert_eq!(vault_events(&v.env).len(), 2);
    assert_eq!(
        c.send(
            "GET",
            "/fhir/pa/Observation?code=4548-4",
            Some(&token),
            &[],
            None
        )
        .status,
        200
    );
    let other = v.token("other", "system/*.rs", &["pb"]);
    assert_eq!(
        c.send(
            "GET",
            &format!("/fhir/pa/Observation/{id}"),
            Some(&other),
            &[],
            None
        )
        .status,
        403
    );
    assert_eq!(
        c.send("GET", "/fhir/pa/Observation", None, &[], None)
            .status,
        401
    );
    assert_eq!(
        c.send(
            "DELETE",
            &format!("/fhir/pa/Observation/{id}"),
            Some(&token),
            &[],
            None
        )
        .status,
        204
    );
    assert_eq!(c.get("/fhir/pa/metadata").status, 200);

    let events = vault_events(&v.env);
    // The six vault requests reach the database's trail (after the registrations and
    // token requests recorded before them).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut in_database = only_vault(crate::audit::records(&v.env));
    while in_database.len() < events.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        in_database = only_vault(crate::audit::records(&v.env));
    }
    assert_eq!(in_database, events);
    let summary: Vec<(String, u16, Outcome)> = events
        .iter()
        .map(|r| match &r.event {
            Event::FhirRequest {
                interaction,
                status,
                ..
            } => (interaction.clone(), *status, r.outcome),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("create".to_string(), 201, Outcome::Success),
            ("read".to_string(), 200, Outcome::Success),
            ("search-type".to_string(), 200, Outcome::Success),
            ("read".to_string(), 403, Outcome::MinorFailure),
            ("search-type".to_string(), 401, Outcome::MinorFailure),
            ("delete".to_string(), 204, Outcome::Success),
        ],
        "the metadata read is not a patient data access"
    );
    let Event::FhirRequest {
        token: used,
        patient,
        resource,
        partition,
        ..
    } = &events[1].event
    else {
        unreachable!()
    };
    assert_eq!(used.as_ref().unwrap().jti, jti);
    assert_eq!(patient.as_deref(), Some(account_urn.as_str()));
    assert_eq!(partition, "pa");
    assert!(resource
        .as_deref()
        .unwrap()
        .ends_with(&format!("/fhir/pa/Observation/{id}")));
    let Event::FhirRequest {
        resource: created_at,
        ..
    } = &events[0].event
    else {
        unreachable!()
    };
    assert!(created_at
        .as_deref()
        .unwrap()
        .contains(&format!("/Observation/{id}/_history/1")));
    let Event::FhirRequest { query, .. } = &events[2].event else {
        unreachable!()
    };
    assert_eq!(query.as_deref(), Some("code=4548-4"));

    // BALP in FHIR (validated) and the DICOM message.
    let read = tessera_atna::to_fhir(&events[1]);
    assert_eq!(read["action"], "R");
    assert_eq!(
        read["agent"][1]["policy"][0],
        format!("urn:ietf:params:oauth:jti:{jti}")
    );
    assert_valid_fhir(&read);
    let alert = tessera_atna::to_fhir(&events[3]);
    assert_eq!(
        alert["type"]["code"], "110113",
        "a refused authorization is a security alert"
    );
    assert_valid_fhir(&alert);
    assert!(tessera_atna::to_dicom_xml(&events[4]).contains("UserID=\"anonymous\""));

    // A batch: a record of the whole and one per entry, as the interaction it is.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": serde_json::from_str::<Value>(&observation("4548-4", "2021-02-01", "laboratory", "y")).unwrap(),
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": "Observation?code=4548-4"}},
        {"request": {"method": "GET", "url": "Observation/not-there"}},
    ]});
    let reply = c.send(
        "POST",
        "/fhir/pa",
        Some(&token),
        &[],
        Some(&batch.to_string()),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let created_id = reply.json()["entry"][0]["response"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", reply.body))
        .split('/')
        .nth(1)
        .unwrap()
        .to_owned();
    let events = vault_events(&v.env);
    let entries: Vec<(String, u16, Option<String>, Option<String>)> = events[6..]
        .iter()
        .map(|r| match &r.event {
            Event::FhirRequest {
                interaction,
                status,
                resource,
                query,
                ..
            } => (
                interaction.clone(),
                *status,
                resource.clone(),
                query.clone(),
            ),
            _ => unreachable!(),
        })
        .collect();
    let at = |path: &str| Some(format!("{}/fhir/pa/{path}", v.env.base_url()));
    assert_eq!(
        entries,
        vec![
            ("batch".into(), 200, None, None),
            (
                "create".into(),
                201,
                at(&format!("Observation/{created_id}")),
                None
            ),
            ("search-type".into(), 200, None, Some("code=4548-4".into())),
            ("read".into(), 404, at("Observation/not-there"), None),
        ]
    );
    assert_eq!(events[9].outcome, Outcome::MinorFailure);
}

#[test]
fn a_search_past_its_bounds_is_refused_before_it_runs() {
    let v = vault();
    let c = v.client();
    let token = v.token("app", "system/*.cruds", &["pa"]);
    let auditor = v
        .env
        .secret_token("auditor", &["--scope", "system/AuditEvent.rs"], &[]);
    let search = |path: &str, token: &str| c.send("GET", path, Some(token), &[], None);
    let repeated = |name: &str, n: usize| {
        (0..n)
            .map(|i| format!("{name}=v{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    // Within the bounds: answered.
    let within = search(
        &format!("/fhir/pa/Patient?{}", repeated("family", 16)),
        &token,
    );
    assert_eq!(within.status, 200, "{}", within.body);
    // 1,000 repeated parameters, 300 dates on ITI-81, a thousand comma values, a huge
    // value: each 400 too-costly, at once.
    let cases = [
        (
            format!("/fhir/pa/Patient?{}", repeated("family", 1000)),
            &token,
        ),
        (
            format!("/fhir/pa/Patient?family={}", vec!["x"; 1000].join(",")),
            &token,
        ),
        (
            format!("/fhir/pa/Patient?family={}", "x".repeat(5000)),
            &token,
        ),
        (
            format!(
                "/audit/fhir/AuditEvent?{}",
                vec!["date=ge2026-11-01"; 300].join("&")
            ),
            &auditor,
        ),
        (
            format!("/fhir/pa/Patient?_sort={}", ["family"; 5].join(",")),
            &token,
        ),
    ];
    for (path, token) in &cases {
        let diagnostics = outcome(&search(path, token), 400, "too-costly");
        assert!(diagnostics.contains("at most"), "{path}: {diagnostics}");
    }
}

/// Sorted newest first by `_lastUpdated` and filtered on it, a search walks the rows of
/// its most selective code or reference in that order: each match once, in order,
/// across pages, with the other criteria still applied.
#[test]
fn newest_first_searches_by_a_code_walk_its_rows_and_meet_each_resource_once() {
    let v = vault();
    let c = v.client();
    let writer = v.token("writer", "system/*.cruds", &["pa"]);
    let patient = create(
        &c,
        &writer,
        "/fhir/pa/Patient",
        r#"{"resourceType":"Patient","name":[{"family":"Walker"}]}"#,
    );
    let pid = patient["id"].as_str().unwrap();
    let mut hba1c = Vec::new();
    for n in 0..7 {
        let date = format!("2020-01-0{}", n + 1);
        let created = create(
            &c,
            &writer,
            "/fhir/pa/Observation",
            &observation("4548-4", &date, "laboratory", pid),
        );
        hba1c.push(created["id"].as_str().unwrap().to_owned());
        create(
            &c,
            &writer,
            "/fhir/pa/Observation",
            &observation("8867-4", &date, "vital-signs", pid),
        );
    }
    // One code in two systems: a bare `code=` meets this resource by two index rows.
    let twice = create(
        &c,
        &writer,
        "/fhir/pa/Observation",
        &json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"},
                                {"system": "urn:local", "code": "1234-5"}]},
            "subject": {"reference": format!("Patient/{pid}")},
        })
        .to_string(),
    );
    let reader = v.token("reader", "system/Observation.rs", &["pa"]);
    let search = |query: &str| {
        let reply = c.send(
            "GET",
            &format!("/fhir/pa/{query}"),
            Some(&reader),
            &[],
            None,
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    };
    let newest = "_lastUpdated=gt2000-01-01&_sort=-_lastUpdated";

    let first = search(&format!("Observation?code=4548-4&{newest}&_count=3"));
    assert_eq!(first["total"], 7, "{first}");
    let pages = every_page(first, search);
    let seen: Vec<String> = pages.iter().flat_map(ids).collect();
    let stamps: Vec<String> = pages
        .iter()
        .flat_map(|page| page["entry"].as_array().cloned().unwrap_or_default())
        .map(|entry| {
            entry["resource"]["meta"]["lastUpdated"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    let mut expected = hba1c.clone();
    expected.sort();
    assert_eq!(sorted_seen, expected, "each match once, across pages");
    assert!(
        stamps.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {stamps:?}"
    );
    // Two codes and a reference: whichever leads, the others still apply.
    let both = search(&format!(
        "Observation?code=4548-4&category=laboratory&subject=Patient/{pid}&{newest}"
    ));
    assert_eq!(both["total"], 7, "{both}");
    let none = search(&format!(
        "Observation?code=4548-4&category=vital-signs&{newest}"
    ));
    assert_eq!(none["total"], 0, "{none}");
    let not = search(&format!(
        "Observation?code=4548-4&status:not=final&{newest}"
    ));
    assert_eq!(not["total"], 0, "{not}");
    let ranged = search(&format!(
        "Observation?code=4548-4&date=ge2020-01-05&{newest}"
    ));
    assert_eq!(ranged["total"], 3, "{ranged}");
    // The resource with the code in two systems: once.
    let once = search(&format!("Observation?code=1234-5&{newest}"));
    assert_eq!(once["total"], 1, "{once}");
    assert_eq!(ids(&once), vec![twice["id"].as_str().unwrap().to_owned()]);
    // An update moves a resource to the front.
    let first = &hba1c[0];
    let updated = c.send(
        "PUT",
        &format!("/fhir/pa/Observation/{first}"),
        Some(&writer),
        &[],
        Some(
            &json!({
                "resourceType": "Observation",
                "id": first,
                "status": "amended",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "subject": {"reference": format!("Patient/{pid}")},
            })
            .to_string(),
        ),
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    let front = search(&format!("Observation?code=4548-4&{newest}&_count=1"));
    assert_eq!(ids(&front), vec![first.clone()]);
    assert_eq!(front["total"], 7);
}
