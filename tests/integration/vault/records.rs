//! Every vault interaction leaves its audit record before the answer.

use serde_json::{json, Value};

use super::*;

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
    let in_database = crate::support::eventually(
        std::time::Duration::from_secs(10),
        || only_vault(crate::audit::records(&v.env)),
        |stored| stored.len() >= events.len(),
    );
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

/// Every interaction the CapabilityStatement advertises, done once over HTTPS, is audited
/// as itself: a route the audit's route mapping missed would be recorded as `operation`,
/// and an interaction advertised without a request below fails the test until one is
/// added.
#[test]
fn every_advertised_interaction_is_audited_as_itself() {
    let v = vault();
    let c = v.client();
    let token = v.token("app", "system/*.cruds", &["pa"]);
    let metadata = c.get("/fhir/pa/metadata").json();
    let rest = &metadata["rest"][0];
    let observations = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Observation")
        .unwrap();
    let codes = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut advertised = codes(&observations["interaction"]);
    advertised.extend(codes(&rest["interaction"]));
    assert!(advertised.len() >= 10, "{advertised:?}");

    let body = observation("4548-4", "2021-01-01", "laboratory", "x");
    let id = create(&c, &token, "/fhir/pa/Observation", &body)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone = create(&c, &token, "/fhir/pa/Observation", &body)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut updated: Value = serde_json::from_str(&body).unwrap();
    updated["id"] = json!(id);
    let bundle = |kind: &str| {
        json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"request": {"method": "GET", "url": format!("Observation/{id}")}}
        ]})
        .to_string()
    };
    let one = format!("/fhir/pa/Observation/{id}");
    for code in &advertised {
        let (method, path, sent) = match code.as_str() {
            "read" => ("GET", one.clone(), None),
            "vread" => ("GET", format!("{one}/_history/1"), None),
            "update" => ("PUT", one.clone(), Some(updated.to_string())),
            "patch" => (
                "PATCH",
                one.clone(),
                Some(r#"[{"op":"replace","path":"/status","value":"amended"}]"#.to_owned()),
            ),
            "delete" => ("DELETE", format!("/fhir/pa/Observation/{gone}"), None),
            "history-instance" => ("GET", format!("{one}/_history"), None),
            "history-type" => ("GET", "/fhir/pa/Observation/_history".into(), None),
            "create" => ("POST", "/fhir/pa/Observation".into(), Some(body.clone())),
            "search-type" => ("GET", "/fhir/pa/Observation?code=4548-4".into(), None),
            "batch" | "transaction" => ("POST", "/fhir/pa".into(), Some(bundle(code))),
            other => panic!("the CapabilityStatement advertises '{other}': request it here"),
        };
        let before = vault_events(&v.env).len();
        let headers: &[(&str, &str)] = if method == "PATCH" {
            &[("Content-Type", "application/json-patch+json")]
        } else {
            &[]
        };
        let reply = c.send(method, &path, Some(&token), headers, sent.as_deref());
        assert!(
            reply.status < 300,
            "{code}: {} {}",
            reply.status,
            reply.body
        );
        let events = vault_events(&v.env);
        let recorded = match &events[before].event {
            tessera_atna::Event::FhirRequest { interaction, .. } => interaction.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(&recorded, code, "{method} {path}");
    }
    // A search posted as a form is a search too.
    let posted = c.send(
        "POST",
        "/fhir/pa/Observation/_search",
        Some(&token),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some("code=4548-4"),
    );
    assert_eq!(posted.status, 200, "{}", posted.body);
    let last = vault_events(&v.env).pop().unwrap();
    assert!(matches!(
        last.event,
        tessera_atna::Event::FhirRequest { ref interaction, .. } if interaction == "search-type"
    ));
}
