//! Create, read, update, delete, versions and history over HTTPS.

use serde_json::json;

use super::*;

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
