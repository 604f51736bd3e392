//! Malformed FHIR is refused and changes nothing; the discovery documents.

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
    assert!(params.contains(&"value-quantity"));
    assert!(
        !params.contains(&"code-value-quantity"),
        "only what is supported is listed (composite parameters are not)"
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
