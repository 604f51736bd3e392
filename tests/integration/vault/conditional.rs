//! Conditional create, update and delete (`If-None-Exist`, `[type]?criteria`, also in
//! Bundles), `PATCH` with JSON Patch, and decimals kept exactly as sent.

use serde_json::{json, Value};

use super::*;

const AHV: &str = "urn:oid:2.16.756.5.32";

fn patient(ahv: &str, family: &str) -> String {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": AHV, "value": ahv}],
        "name": [{"family": family}],
    })
    .to_string()
}

fn patients(c: &Client, token: &str) -> Value {
    c.send(
        "GET",
        "/fhir/pa/Patient?_sort=_lastUpdated",
        Some(token),
        &[],
        None,
    )
    .json()
}

#[test]
fn conditional_create_update_and_delete_act_on_the_one_match() {
    let v = vault();
    let c = v.client();
    let token = v.token("writer", "system/*.cruds", &["pa"]);
    let condition = format!("identifier={AHV}|7560000000001");

    // If-None-Exist: created once, then the existing one is returned (200), not a copy.
    let first = c.send(
        "POST",
        "/fhir/pa/Patient",
        Some(&token),
        &[("If-None-Exist", &condition)],
        Some(&patient("7560000000001", "Muster")),
    );
    assert_eq!(first.status, 201, "{}", first.body);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let again = c.send(
        "POST",
        "/fhir/pa/Patient",
        Some(&token),
        &[("If-None-Exist", &condition)],
        Some(&patient("7560000000001", "Other")),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(again.json()["name"][0]["family"], "Muster");
    assert_eq!(patients(&c, &token)["total"], 1);

    // Conditional update: the one match is updated, whatever id the body lacks.
    let path = format!("/fhir/pa/Patient?{}", condition.replace('|', "%7C"));
    let updated = c.send(
        "PUT",
        &path,
        Some(&token),
        &[],
        Some(&patient("7560000000001", "Updated")),
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.json()["id"], id.as_str());
    assert_eq!(updated.json()["meta"]["versionId"], "2");
    // No match: created.
    let created = c.send(
        "PUT",
        "/fhir/pa/Patient?identifier=urn:oid:2.16.756.5.32%7C7560000000002",
        Some(&token),
        &[],
        Some(&patient("7560000000002", "Neu")),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let second = created.json()["id"].as_str().unwrap().to_owned();
    // Several matches: 412, and nothing changes.
    let before = patients(&c, &token);
    let several = c.send(
        "PUT",
        "/fhir/pa/Patient?identifier=urn:oid:2.16.756.5.32%7C",
        Some(&token),
        &[],
        Some(&patient("7560000000003", "Several")),
    );
    outcome(&several, 412, "conflict");
    // A body id that is not the match's: 400.
    let mut wrong: Value = serde_json::from_str(&patient("7560000000001", "X")).unwrap();
    wrong["id"] = json!(second);
    outcome(
        &c.send("PUT", &path, Some(&token), &[], Some(&wrong.to_string())),
        400,
        "invalid",
    );
    // Criteria the vault does not understand are refused: ignoring them would widen the
    // condition to every Patient.
    outcome(
        &c.send(
            "PUT",
            "/fhir/pa/Patient?colour=red",
            Some(&token),
            &[],
            Some(&patient("1", "X")),
        ),
        400,
        "invalid",
    );
    outcome(
        &c.send("DELETE", "/fhir/pa/Patient", Some(&token), &[], None),
        400,
        "invalid",
    );
    outcome(
        &c.send(
            "DELETE",
            "/fhir/pa/Patient?identifier=urn:oid:2.16.756.5.32%7C",
            Some(&token),
            &[],
            None,
        ),
        412,
        "conflict",
    );
    assert_eq!(patients(&c, &token), before, "nothing changed");

    // Conditional delete: the one match; no match is a success that deletes nothing.
    let deleted = c.send("DELETE", &path, Some(&token), &[], None);
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let gone = c.send(
        "GET",
        &format!("/fhir/pa/Patient/{id}"),
        Some(&token),
        &[],
        None,
    );
    assert_eq!(gone.status, 410);
    let nothing = c.send("DELETE", &path, Some(&token), &[], None);
    assert_eq!(nothing.status, 204);
    assert_eq!(patients(&c, &token)["total"], 1);

    // The condition searches with the token: a token that may create but not search
    // cannot probe with If-None-Exist.
    let create_only = v.token("create-only", "system/Patient.c", &["pa"]);
    let probe = c.send(
        "POST",
        "/fhir/pa/Patient",
        Some(&create_only),
        &[("If-None-Exist", "identifier=x")],
        Some(&patient("x", "X")),
    );
    outcome(&probe, 403, "forbidden");
}

#[test]
fn a_transaction_creates_conditionally_and_links_to_what_exists() {
    let v = vault();
    let c = v.client();
    let token = v.token("writer", "system/*.cruds", &["pa"]);
    let existing = create(
        &c,
        &token,
        "/fhir/pa/Patient",
        &patient("7560000000001", "Muster"),
    );
    let id = existing["id"].as_str().unwrap();
    let transaction = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6d2c4a50-1f0e-4b51-9a3e-0b1c2d3e4f50",
                "resource": serde_json::from_str::<Value>(&patient("7560000000001", "Copy")).unwrap(),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={AHV}|7560000000001")},
            },
            {
                "resource": serde_json::from_str::<Value>(&observation("4548-4", "2021-01-01", "laboratory", "x")).unwrap(),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    });
    let mut body = transaction.clone();
    body["entry"][1]["resource"]["subject"]["reference"] =
        json!("urn:uuid:6d2c4a50-1f0e-4b51-9a3e-0b1c2d3e4f50");
    let reply = c.send(
        "POST",
        "/fhir/pa",
        Some(&token),
        &[],
        Some(&body.to_string()),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let response = reply.json();
    assert_eq!(response["entry"][0]["response"]["status"], "200");
    assert_eq!(response["entry"][1]["response"]["status"], "201");
    let observations = c
        .send("GET", "/fhir/pa/Observation", Some(&token), &[], None)
        .json();
    assert_eq!(
        observations["entry"][0]["resource"]["subject"]["reference"],
        format!("Patient/{id}")
    );
    assert_eq!(patients(&c, &token)["total"], 1);
    // Conditional update and delete entries in a batch.
    let batch = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {
                "resource": serde_json::from_str::<Value>(&patient("7560000000001", "Batch")).unwrap(),
                "request": {"method": "PUT", "url": format!("Patient?identifier={AHV}|7560000000001")},
            },
            {"request": {"method": "DELETE", "url": "Observation?code=4548-4"}},
            {"request": {"method": "DELETE", "url": "Observation?code=0000-0"}},
            // No match, and the body's id names a Patient that does not meet the
            // condition: 409, as for PUT [type]?criteria itself.
            {
                "resource": {"resourceType": "Patient", "id": id, "gender": "other"},
                "request": {"method": "PUT", "url": "Patient?identifier=nobody"},
            },
        ],
    });
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
    assert_eq!(statuses, ["200", "204", "204", "409"]);
    let read = c
        .send(
            "GET",
            &format!("/fhir/pa/Patient/{id}"),
            Some(&token),
            &[],
            None,
        )
        .json();
    assert_eq!(read["name"][0]["family"], "Batch");
    let observations = c
        .send("GET", "/fhir/pa/Observation", Some(&token), &[], None)
        .json();
    assert_eq!(observations["total"], 0);
}

#[test]
fn json_patch_changes_only_what_it_says_and_only_the_version_it_read() {
    let v = vault();
    let c = v.client();
    let token = v.token("writer", "system/*.cruds", &["pa"]);
    let created = create(
        &c,
        &token,
        "/fhir/pa/Patient",
        &patient("7560000000001", "Muster"),
    );
    let path = format!("/fhir/pa/Patient/{}", created["id"].as_str().unwrap());
    let json_patch = [("Content-Type", "application/json-patch+json")];
    let patch = |body: &str, headers: &[(&str, &str)]| {
        let mut all = json_patch.to_vec();
        all.extend_from_slice(headers);
        c.send("PATCH", &path, Some(&token), &all, Some(body))
    };
    let reply = patch(
        r#"[{"op":"test","path":"/name/0/family","value":"Muster"},
            {"op":"replace","path":"/name/0/family","value":"Meier"},
            {"op":"add","path":"/gender","value":"female"}]"#,
        &[],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let patched = reply.json();
    assert_eq!(patched["name"][0]["family"], "Meier");
    assert_eq!(patched["gender"], "female");
    assert_eq!(patched["identifier"], created["identifier"]);
    assert_eq!(patched["meta"]["versionId"], "2");
    assert_eq!(reply.header("etag"), Some("W/\"2\""));

    // Each failure leaves version 2 as it is.
    outcome(
        &patch(r#"[{"op":"test","path":"/gender","value":"male"}]"#, &[]),
        422,
        "processing",
    );
    outcome(
        &patch(r#"[{"op":"remove","path":"/telecom"}]"#, &[]),
        422,
        "processing",
    );
    outcome(
        &patch(r#"[{"op":"replace","path":"/id","value":"other"}]"#, &[]),
        422,
        "processing",
    );
    outcome(
        &patch(r#"[{"op":"jump","path":"/x"}]"#, &[]),
        400,
        "invalid",
    );
    outcome(&patch("not json", &[]), 400, "invalid");
    // The result is checked as any update: an empty string is not FHIR JSON.
    outcome(
        &patch(r#"[{"op":"add","path":"/gender","value":""}]"#, &[]),
        400,
        "invalid",
    );
    outcome(
        &patch(
            r#"[{"op":"add","path":"/active","value":true}]"#,
            &[("If-Match", "W/\"1\"")],
        ),
        412,
        "conflict",
    );
    let fhir_json = c.send(
        "PATCH",
        &path,
        Some(&token),
        &[],
        Some(r#"{"resourceType":"Parameters"}"#),
    );
    outcome(&fhir_json, 400, "not-supported");
    let read = c.send("GET", &path, Some(&token), &[], None).json();
    assert_eq!(read["meta"]["versionId"], "2");
    assert_eq!(read["gender"], "female");
    // A token that may read but not update cannot patch.
    let reader = v.token("reader", "system/Patient.rs", &["pa"]);
    let refused = c.send(
        "PATCH",
        &path,
        Some(&reader),
        &json_patch,
        Some(r#"[{"op":"add","path":"/active","value":true}]"#),
    );
    outcome(&refused, 403, "forbidden");
    let missing = c.send(
        "PATCH",
        "/fhir/pa/Patient/nobody",
        Some(&token),
        &json_patch,
        Some("[]"),
    );
    outcome(&missing, 404, "not-found");
}

/// Every number of the R4 example as written: `1.00` stays `1.00`, `1E-22` keeps its
/// digits, through update-as-create, read and search.
#[test]
fn decimals_keep_their_precision() {
    let v = vault();
    let c = v.client();
    let token = v.token("writer", "system/*.cruds", &["pa"]);
    let example = include_str!("../fixtures/observation-decimal.json");
    let written = [
        "\"value\": 1.0,",
        "\"value\": 1.00,",
        "\"value\": 1E-22,",
        "\"value\": 1000000000000000000,",
        "\"value\": 1.000000000000000000E-245,",
        "\"value\": -1.000000000000000000E+245,",
    ];
    for number in written {
        assert!(example.contains(number), "{number}");
    }
    // Digits and exponent as written; the exponent's letter may come back in lower case
    // (serde_json writes `e`), which JSON and FHIR read alike.
    let kept = |body: &str| {
        let body = body.to_ascii_lowercase();
        for number in written {
            let compact = number
                .replace(' ', "")
                .trim_end_matches(',')
                .to_ascii_lowercase();
            assert!(body.contains(&compact), "{compact} in {body}");
        }
    };
    let put = c.send(
        "PUT",
        "/fhir/pa/Observation/decimal",
        Some(&token),
        &[],
        Some(example),
    );
    assert_eq!(put.status, 201, "{}", put.body);
    kept(&put.body);
    kept(
        &c.send(
            "GET",
            "/fhir/pa/Observation/decimal",
            Some(&token),
            &[],
            None,
        )
        .body,
    );
    kept(
        &c.send(
            "GET",
            "/fhir/pa/Observation?_id=decimal",
            Some(&token),
            &[],
            None,
        )
        .body,
    );
    let precise = r#"{"resourceType":"Observation","status":"final","code":{"text":"weight"},"valueQuantity":{"value":66.899999999999991,"unit":"kg"}}"#;
    let created = c.send(
        "POST",
        "/fhir/pa/Observation",
        Some(&token),
        &[],
        Some(precise),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(
        created.body.contains("66.899999999999991"),
        "{}",
        created.body
    );
}
