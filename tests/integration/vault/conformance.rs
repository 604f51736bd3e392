//! Malformed FHIR and resources R4 does not allow are refused and change nothing; every
//! valid R4 example is accepted; the discovery documents.

use serde_json::json;

use super::*;

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
fn resources_r4_does_not_allow_are_422_naming_each_element() {
    let v = vault();
    let c = v.client();
    let token = v.token("writer", "system/*.cruds", &["pa"]);
    // Issue 15's Patient: a gender outside its required value set, a birthDate that is
    // not a date, an element R4 does not define, and a repeating element as an object.
    let robot = r#"{"resourceType":"Patient","gender":"robot","birthDate":"yesterday","foo":"bar","name":{"family":"Muster"}}"#;
    for (method, path) in [
        ("POST", "/fhir/pa/Patient"),
        ("PUT", "/fhir/pa/Patient/robot"),
    ] {
        let body = robot.replace(
            r#""resourceType":"Patient","#,
            r#""resourceType":"Patient","id":"robot","#,
        );
        let reply = c.send(method, path, Some(&token), &[], Some(&body));
        assert_eq!(reply.status, 422, "{}", reply.body);
        let outcome = reply.json();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let issues: Vec<(String, String)> = outcome["issue"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["expression"][0].as_str().unwrap().to_owned(),
                    i["code"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        for expected in [
            ("Patient.gender", "code-invalid"),
            ("Patient.birthDate", "value"),
            ("Patient.foo", "structure"),
            ("Patient.name", "structure"),
        ] {
            assert!(
                issues.contains(&(expected.0.to_owned(), expected.1.to_owned())),
                "{expected:?} in {issues:?}"
            );
        }
        assert_valid_fhir(&outcome);
    }
    // A JSON Patch that would make it nonconformant is refused the same way.
    let patient = create(
        &c,
        &token,
        "/fhir/pa/Patient",
        r#"{"resourceType":"Patient","gender":"female"}"#,
    );
    let patched = c.send(
        "PATCH",
        &format!("/fhir/pa/Patient/{}", patient["id"].as_str().unwrap()),
        Some(&token),
        &[("Content-Type", "application/json-patch+json")],
        Some(r#"[{"op":"replace","path":"/gender","value":"robot"}]"#),
    );
    assert_eq!(patched.status, 422, "{}", patched.body);
    // In a batch only the nonconformant entry fails; a transaction fails whole.
    let entries = json!([
        {"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
    ]);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let reply = c.send(
        "POST",
        "/fhir/pa",
        Some(&token),
        &[],
        Some(&batch.to_string()),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let statuses: Vec<String> = reply.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["201", "422"]);
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let reply = c.send(
        "POST",
        "/fhir/pa",
        Some(&token),
        &[],
        Some(&transaction.to_string()),
    );
    assert_eq!(reply.status, 422, "{}", reply.body);
    let all = c
        .send("GET", "/fhir/pa/Patient", Some(&token), &[], None)
        .json();
    assert_eq!(
        all["total"], 2,
        "the first patient and the batch's good entry only"
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
    let params_of = |ty: &str| -> Vec<String> {
        statement["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == ty)
            .unwrap()["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let params = params_of("Observation");
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
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
    assert!(params.contains(&"value-quantity") && params.contains(&"code-value-quantity"));
    // Only what is supported is listed: not a special parameter, nor one whose
    // expression is beyond the FHIRPath the vault evaluates.
    assert!(!params_of("Location").contains(&"near".to_owned()));
    let patient = params_of("Patient");
    assert!(patient.contains(&"gender".to_owned()) && !patient.contains(&"deceased".to_owned()));
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

/// The examples of the R4 package that R4 itself does not allow, and why: a 1..1 element
/// missing, or an id longer than 64 characters. Each must be refused for that reason.
const INVALID_R4_EXAMPLES: [(&str, &str); 14] = [
    ("ig-r4.json", "ImplementationGuide.name"),
    (
        "ImplementationGuide-fhir.json",
        "ImplementationGuide.status",
    ),
    (
        "Questionnaire-qs1.json",
        "Questionnaire.item[0].item[0].linkId",
    ),
    (
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        "id must be",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-author.json",
        "SearchParameter.base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-effective.json",
        "SearchParameter.base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-end.json",
        "SearchParameter.base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-keyword.json",
        "SearchParameter.base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-workflow.json",
        "SearchParameter.base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-author.json",
        "SearchParameter.base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-effective.json",
        "SearchParameter.base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-end.json",
        "SearchParameter.base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-keyword.json",
        "SearchParameter.base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-workflow.json",
        "SearchParameter.base",
    ),
];

/// Every resource example of the R4 specification (npm `hl7.fhir.r4.examples`, installed
/// by `npm ci --prefix tests/fhir`) that R4 allows is accepted as the vault accepts a
/// resource (the JSON rules, then the R4 definitions); those it does not are refused for
/// their known reason.
#[test]
fn every_valid_r4_example_is_accepted() {
    if crate::support::on_postgres() {
        return; // No database here: the SQLite pass of the suite has run it.
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fhir/node_modules/hl7.fhir.r4.examples");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `npm ci --prefix tests/fhir` (scripts/test does)",
            dir.display()
        )
    });
    let vault = tessera_vault::Vault::new().unwrap();
    let mut checked = 0;
    let mut refused = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name == "package.json" || name.starts_with('.') {
            continue;
        }
        let Ok(Value::Object(resource)) =
            serde_json::from_slice::<Value>(&std::fs::read(&path).unwrap())
        else {
            continue;
        };
        if !resource.contains_key("resourceType") {
            continue;
        }
        checked += 1;
        let result = tessera_vault::resource::check(vault.registry(), resource, None)
            .and_then(|r| vault.conformant(r));
        let known = INVALID_R4_EXAMPLES.iter().find(|(file, _)| *file == name);
        match (result, known) {
            (Ok(_), None) => {}
            (Err(error), Some((_, why))) if error.to_string().contains(why) => {}
            (Err(error), _) => refused.push(format!("{name}: {error}")),
            (Ok(_), Some(_)) => refused.push(format!("{name}: accepted, but R4 does not allow it")),
        }
    }
    assert!(
        checked > 5000,
        "only {checked} examples found in {}",
        dir.display()
    );
    assert!(
        refused.is_empty(),
        "{} of {checked} wrongly judged:\n{}",
        refused.len(),
        refused.join("\n")
    );
}
