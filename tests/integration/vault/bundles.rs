//! Batch and transaction Bundles.

use serde_json::json;

use super::*;

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
