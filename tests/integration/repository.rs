//! The audit repository: ITI-81 queries for auditors and for patients about their own
//! account, the ITI-20 FHIR feed, and the audit of every repository request.

use serde_json::{json, Value};
use tessera_atna::Event;

use crate::audit::records_eventually;
use crate::support::{assert_valid_fhir, eventually, Client, Env, Reply, MPI_A, MPI_B};

fn token(env: &Env, client_id: &str, args: &[&str], form: &[(&str, &str)]) -> String {
    env.secret_token(client_id, args, form)
}

fn get(c: &Client, token: &str, query: &str) -> Reply {
    c.send(
        "GET",
        &format!("/audit/fhir/AuditEvent?{query}"),
        Some(token),
        &[],
        None,
    )
}

fn total(reply: &Reply) -> u64 {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["total"].as_u64().unwrap()
}

#[test]
fn auditors_query_the_trail_and_patients_see_only_their_own() {
    let env = Env::new();
    let account_a = env.add_account(MPI_A, "pa");
    let account_b = env.add_account(MPI_B, "pb");
    let _server = env.start();
    let c = Client::new(&env, None);
    let clinic = token(
        &env,
        "clinic",
        &[
            "--scope",
            "system/*.cruds",
            "--partition",
            "pa",
            "--partition",
            "pb",
        ],
        &[],
    );
    let auditor = token(&env, "auditor", &["--scope", "system/AuditEvent.rs"], &[]);
    let patient = token(
        &env,
        "patient-app",
        &["--scope", "patient/AuditEvent.rs", "--account", &account_a],
        &[("account", &account_a)],
    );
    let wildcard = token(&env, "wildcard", &["--scope", "system/*.rs"], &[]);
    let observation =
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
            .to_string();
    for partition in ["pa", "pa", "pb"] {
        let reply = c.send(
            "POST",
            &format!("/fhir/{partition}/Observation"),
            Some(&clinic),
            &[],
            Some(&observation),
        );
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    assert_eq!(
        c.send("GET", "/fhir/pa/Observation/nope", Some(&clinic), &[], None)
            .status,
        404
    );
    // 2 account and 4 client registrations, 4 token requests, 4 vault requests: all in
    // the trail before the first query.
    assert_eq!(records_eventually(&env, 14).len(), 14);

    let day = &tessera_vault::dates::format_instant(crate::support::now() * 1000)[..10];
    let range = format!("date=ge{day}&date=le{day}T23:59:59Z");
    let all = get(&c, &auditor, &range);
    assert_eq!(total(&all), 14);
    let bundle = all.json();
    assert_eq!(bundle["entry"][0]["resource"]["resourceType"], "AuditEvent");
    assert_valid_fhir(&bundle);
    // Newest first.
    let recorded: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["recorded"].as_str().unwrap())
        .collect();
    assert!(recorded.windows(2).all(|w| w[0] >= w[1]), "{recorded:?}");

    // ITI-81's parameters.
    assert_eq!(
        total(&get(&c, &auditor, &format!("{range}&patient={account_a}"))),
        3
    );
    assert_eq!(
        total(&get(
            &c,
            &auditor,
            &format!("{range}&patient.identifier={account_b}")
        )),
        1
    );
    assert_eq!(
        total(&get(
            &c,
            &auditor,
            &format!("{range}&entity-id={account_b}")
        )),
        1
    );
    assert_eq!(
        total(&get(&c, &auditor, &format!("{range}&subtype=create"))),
        3
    );
    assert_eq!(
        total(&get(&c, &auditor, &format!("{range}&subtype=ITI-71"))),
        4
    );
    assert_eq!(
        total(&get(&c, &auditor, &format!("{range}&type=rest&outcome=4"))),
        1
    );
    assert_eq!(
        total(&get(&c, &auditor, &format!("{range}&agent=clinic"))),
        5
    );
    assert_eq!(total(&get(&c, &auditor, &format!("{range}&action=C"))), 9);
    assert_eq!(
        total(&get(&c, &auditor, &format!("{range}&subtype=110137"))),
        4,
        "client registrations"
    );
    assert_eq!(total(&get(&c, &auditor, "date=lt2000-01-01")), 0);
    let page = get(&c, &auditor, &format!("{range}&_count=2")).json();
    assert_eq!(page["entry"].as_array().unwrap().len(), 2);
    assert!(page["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["relation"] == "next"));

    // date is required; an auditor scope is required; a clinical wildcard is not one.
    let no_date = get(&c, &auditor, &format!("patient={account_a}"));
    assert_eq!(no_date.status, 400, "{}", no_date.body);
    assert_eq!(no_date.json()["resourceType"], "OperationOutcome");
    assert_eq!(get(&c, &wildcard, &range).status, 403);
    assert_eq!(get(&c, &clinic, &range).status, 403);
    assert_eq!(
        c.send(
            "GET",
            &format!("/audit/fhir/AuditEvent?{range}"),
            None,
            &[],
            None
        )
        .status,
        401
    );

    // A patient sees the events about their account, and nothing else even when asking.
    assert_eq!(total(&get(&c, &patient, &range)), 3);
    assert_eq!(
        total(&get(&c, &patient, &format!("{range}&patient={account_b}"))),
        0
    );

    // Every repository request was audited itself (ITI-81 query events).
    let trail = records_eventually(&env, 14 + 18);
    let queries: Vec<u16> = trail
        .iter()
        .filter_map(|r| match &r.event {
            Event::RepositoryRequest { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(queries.len(), 18, "{queries:?}");
    assert_eq!(queries.iter().filter(|s| **s == 403).count(), 2);
    let query_event = trail
        .iter()
        .find(|r| matches!(r.event, Event::RepositoryRequest { .. }))
        .unwrap();
    let fhir = tessera_atna::to_fhir(query_event);
    assert_eq!(fhir["subtype"][0]["code"], "ITI-81");
    assert_valid_fhir(&fhir);
}

#[test]
fn other_nodes_feed_audit_events_in() {
    let env = Env::new();
    let _server = env.start();
    let c = Client::new(&env, None);
    let node = token(&env, "node-2", &["--scope", "system/AuditEvent.c"], &[]);
    let auditor = token(&env, "auditor", &["--scope", "system/AuditEvent.rs"], &[]);
    let event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110", "display": "Patient Record"},
        "action": "R",
        "recorded": "2026-11-20T10:00:00Z",
        "outcome": "0",
        "agent": [{"who": {"identifier": {"value": "remote-user"}}, "requestor": true}],
        "source": {"observer": {"display": "node-2"}},
        "entity": [{"what": {"identifier": {"value": "urn:tessera:account:remote"}}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}],
    });
    let feed = |body: &Value| {
        c.send(
            "POST",
            "/audit/fhir/AuditEvent",
            Some(&node),
            &[],
            Some(&body.to_string()),
        )
    };
    let feed_batch = |body: &Value| {
        c.send(
            "POST",
            "/audit/fhir",
            Some(&node),
            &[],
            Some(&body.to_string()),
        )
    };
    let created = feed(&event);
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(created
        .header("location")
        .unwrap()
        .contains("/audit/fhir/AuditEvent/"));
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": event, "request": {"method": "POST", "url": "AuditEvent"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "AuditEvent"}},
    ]});
    let reply = feed_batch(&batch);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let statuses: Vec<Value> = reply.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!("201"), json!("400")]);
    // An event that carries its id is kept under it, and a repeated delivery is
    // answered 200 with the stored event instead of being stored twice.
    let mut with_id = event.clone();
    with_id["id"] = json!("4f0c1a3e-2b7d-4c59-9e21-6a8d0f3b7c15");
    let first = feed(&with_id);
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(first
        .header("location")
        .unwrap()
        .contains("/AuditEvent/4f0c1a3e-2b7d-4c59-9e21-6a8d0f3b7c15/"));
    let again = feed(&with_id);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["id"], "4f0c1a3e-2b7d-4c59-9e21-6a8d0f3b7c15");
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": with_id, "request": {"method": "POST", "url": "AuditEvent"}},
    ]});
    let reply = feed_batch(&batch);
    assert_eq!(
        reply.json()["entry"][0]["response"]["status"],
        "200",
        "{}",
        reply.body
    );
    // An auditor may not feed, a feeder may not query.
    assert_eq!(
        c.send(
            "POST",
            "/audit/fhir/AuditEvent",
            Some(&auditor),
            &[],
            Some(&event.to_string())
        )
        .status,
        403
    );
    assert_eq!(get(&c, &node, "date=2026-11-20").status, 403);
    let found = get(
        &c,
        &auditor,
        "date=2026-11-20&patient=urn:tessera:account:remote",
    );
    assert_eq!(total(&found), 3);
    assert_eq!(
        total(&get(&c, &auditor, "date=2026-11-20&agent=remote-user")),
        3
    );
}

/// The ids of `env`'s trail found in the repository of `remote` (queried by an auditor).
fn held_remotely(remote: &Env, auditor: &str, ids: &[String]) -> Vec<String> {
    let c = Client::new(remote, None);
    let reply = get(
        &c,
        auditor,
        &format!("date=ge2000-01-01&_count=1000&_id={}", ids.join(",")),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until `env`'s trail holds at least `at_least` events (the journal makes them
/// durable first; the trail's table follows) and `remote`'s repository holds them all.
fn fed_eventually(
    env: &Env,
    remote: &Env,
    auditor: &str,
    at_least: usize,
) -> (Vec<String>, Vec<String>) {
    eventually(
        std::time::Duration::from_secs(20),
        || {
            let ids: Vec<String> = crate::audit::records(env)
                .into_iter()
                .map(|r| r.id)
                .collect();
            let held = if ids.len() >= at_least {
                held_remotely(remote, auditor, &ids)
            } else {
                Vec::new()
            };
            (ids, held)
        },
        |(ids, held)| ids.len() >= at_least && held.len() >= ids.len(),
    )
}

#[test]
fn a_node_feeds_its_trail_to_a_remote_repository_over_mutual_tls() {
    // The remote audit repository, whose operator issued the node a client certificate.
    let arr = Env::new();
    let (crt, key) = arr.add_mtls_client("node-a", &["--scope", "system/AuditEvent.c"]);
    let arr_server = arr.start();
    let auditor = token(&arr, "auditor", &["--scope", "system/AuditEvent.rs"], &[]);

    let node = Env::new();
    node.configure(|c| {
        c.audit.fhir_feed.push(tessera::config::FhirFeedConfig {
            name: "arr".into(),
            url: format!("https://localhost:{}/audit/fhir", arr.port),
            token_url: format!(
                "https://localhost:{}/realms/cara/protocol/openid-connect/token",
                arr.port
            ),
            client_id: "node-a".into(),
            client_secret: String::new(),
            scope: "system/AuditEvent.c".into(),
            ca: Some(arr.path("pki/ca.crt")),
            cert: Some(crt.clone()),
            key: Some(key.clone()),
        })
    });
    let node_server = node.start();
    let _clinic = token(&node, "clinic", &["--scope", "system/*.rs"], &[]);
    let (ids, held) = fed_eventually(&node, &arr, &auditor, 2);
    assert!(ids.len() >= 2, "the registration and the token request");
    let mut sorted = held.clone();
    sorted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(sorted, expected);
    // The repository holds them as FHIR AuditEvents with the node's ids and content.
    let c = Client::new(&arr, None);
    let token_event = crate::audit::records(&node)
        .into_iter()
        .find(|r| matches!(r.event, Event::TokenRequest { .. }))
        .unwrap();
    let read = get(
        &c,
        &auditor,
        &format!("date=ge2000-01-01&_id={}", token_event.id),
    );
    let stored = &read.json()["entry"][0]["resource"];
    assert_eq!(
        stored["subtype"],
        tessera_atna::to_fhir(&token_event)["subtype"]
    );

    // The repository goes down: the node's events wait, and all arrive when it is back.
    drop(arr_server);
    let _more = token(&node, "clinic-2", &["--scope", "system/*.rs"], &[]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let arr_server = arr.start();
    let (ids, held) = fed_eventually(&node, &arr, &auditor, 4);
    drop(node_server);
    drop(arr_server);
    assert!(ids.len() >= 4);
    assert_eq!(held.len(), ids.len());
}

#[test]
fn audit_verify_catches_an_altered_or_removed_repository_copy() {
    let env = Env::new();
    let _server = env.start();
    let auditor = token(&env, "auditor", &["--scope", "system/AuditEvent.rs"], &[]);
    let c = Client::new(&env, None);
    // The registration and the token request; a query brings the repository up to date.
    records_eventually(&env, 2);
    assert!(total(&get(&c, &auditor, "date=ge2000-01-01")) >= 2);
    assert!(env.cli(&["audit", "verify"]).is_ok());

    // Someone with database access rewrites what auditors are shown of the first event.
    let first = crate::audit::records(&env)[0].id.clone();
    let rewrite = format!(
        "UPDATE fhir_resources SET content = replace(content, '\"auditor\"', '\"someone\"') \
         WHERE partition_id = '$audit' AND id = '{first}'"
    );
    assert_eq!(env.sql(&rewrite), 1);
    let altered = env.cli(&["audit", "verify"]).unwrap_err().to_string();
    assert!(
        altered.contains(&format!(
            "copy of event {}#1 ({first}) is missing or altered",
            env.loaded().audit_chain()
        )),
        "{altered}"
    );
    // Removed instead of rewritten: the same.
    env.sql(&format!(
        "DELETE FROM fhir_resources WHERE partition_id = '$audit' AND id = '{first}'"
    ));
    let removed = env.cli(&["audit", "verify"]).unwrap_err().to_string();
    assert!(removed.contains("#1"), "{removed}");
}

#[test]
fn a_clinical_wildcard_reaches_no_audit_trail() {
    let env = Env::new();
    let _server = env.start();
    let c = Client::new(&env, None);
    // A clinic registered for everything clinical on its partition ...
    let secret = env.add_secret_client(&[
        "--client-id",
        "clinic",
        "--auth",
        "client_secret_post",
        "--scope",
        "system/*.cruds",
        "--partition",
        "p1",
    ]);
    let ask = |scope: &str| {
        c.token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "clinic"),
            ("client_secret", secret.as_str()),
            ("scope", scope),
        ])
    };
    // ... gets clinical scopes, and no audit scope of any kind: neither to read the
    // trail (ITI-81) nor to feed events into it (ITI-20).
    assert_eq!(ask("system/Observation.rs").status, 200);
    for audit in [
        "system/AuditEvent.rs",
        "system/AuditEvent.read",
        "system/AuditEvent.c",
        "system/AuditEvent.cruds",
        "system/Observation.rs system/AuditEvent.s",
    ] {
        ask(audit).oauth_error(400, "invalid_scope");
    }
    // Its broadest token still answers 403 at the repository, both ways.
    let reply = ask("system/*.cruds");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let wide = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(&c, &wide, "date=2026-11-20").status, 403);
    let forged = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2026-11-20T10:00:00Z",
        "agent": [{"who": {"identifier": {"value": "someone"}}, "requestor": true}],
        "source": {"observer": {"display": "forger"}},
    });
    let post = c.send(
        "POST",
        "/audit/fhir/AuditEvent",
        Some(&wide),
        &[],
        Some(&forged.to_string()),
    );
    assert_eq!(post.status, 403, "{}", post.body);
    // An audit source is registered by name: system/AuditEvent.c.
    let node = token(&env, "node-2", &["--scope", "system/AuditEvent.c"], &[]);
    let post = c.send(
        "POST",
        "/audit/fhir/AuditEvent",
        Some(&node),
        &[],
        Some(&forged.to_string()),
    );
    assert_eq!(post.status, 201, "{}", post.body);
}

/// The repository indexes the trail in the background, a bounded number of events a
/// second, so an auditor's query does not wait for all the trail gained since the last
/// one; with `index_events_per_second = 0` only a query indexes.
/// The sum of the `seq` columns of `table`: how far its chains (or cursors) are.
fn sum(env: &Env, table: &str) -> i64 {
    env.sql_values(&format!(
        "SELECT CAST(COALESCE(SUM(seq), 0) AS TEXT) AS value FROM {table}"
    ))[0]
        .parse()
        .unwrap()
}

#[test]
fn the_repository_indexes_the_trail_in_the_background_at_a_bounded_rate() {
    for per_second in [0, 2] {
        let env = Env::new();
        env.configure(|c| c.audit.index_events_per_second = per_second);
        let started = std::time::Instant::now();
        let _server = env.start();
        for i in 0..8 {
            let _ = token(&env, &format!("tcu-{i}"), &["--scope", "system/*.rs"], &[]);
        }
        // A registration and a token each: 16 events, none queried.
        assert!(records_eventually(&env, 16).len() >= 16);
        // The indexer skips the seconds in which the server appended more than 2 (the
        // tokens'); the next one, all quiet, indexes.
        std::thread::sleep(std::time::Duration::from_millis(2500));
        let indexed = sum(&env, "audit_repository_cursors");
        if per_second == 0 {
            assert_eq!(indexed, 0, "nothing indexed before a query");
            continue;
        }
        // At most 2 each second since the server started (one round may be under way):
        // fewer than the 16 events unless the set-up took more than 6 s.
        let rounds = started.elapsed().as_secs() as i64 + 2;
        assert!(
            indexed > 0 && indexed <= 2 * rounds,
            "{indexed} indexed in {rounds} rounds of at most 2"
        );
        let (indexed, appended) = eventually(
            std::time::Duration::from_secs(20),
            || {
                (
                    sum(&env, "audit_repository_cursors"),
                    sum(&env, "audit_chains"),
                )
            },
            |(indexed, appended)| indexed >= appended,
        );
        assert_eq!(indexed, appended, "all indexed in the background");
    }
}

#[test]
fn the_background_indexer_leaves_the_core_to_a_load_it_could_not_follow() {
    use std::time::{Duration, Instant};
    let env = Env::new();
    env.configure(|c| c.audit.index_events_per_second = 2);
    let _server = env.start();
    let c = Client::new(&env, None);
    // Refused token requests, each an ITI-71 event: far more than 2 a second.
    let load = |seconds: f64| {
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let mut sent = 0;
        while Instant::now() < until {
            let reply = c.send(
                "POST",
                "/realms/cara/protocol/openid-connect/token",
                None,
                &[("Content-Type", "application/x-www-form-urlencoded")],
                Some("grant_type=client_credentials&client_id=nobody&client_secret=wrong"),
            );
            assert_eq!(reply.status, 401, "{}", reply.body);
            sent += 1;
        }
        sent
    };
    // A round under way when the load began has finished after 1.5 s.
    load(1.5);
    let before = sum(&env, "audit_repository_cursors");
    let sent = load(3.0);
    assert!(
        sent > 3 * 4,
        "the load must outrun the indexer: {sent} in 3 s"
    );
    assert_eq!(
        sum(&env, "audit_repository_cursors"),
        before,
        "nothing indexed in the background while the server appended {sent} events in 3 s"
    );
    // Once the load is gone, the indexer goes on.
    let indexed = eventually(
        Duration::from_secs(10),
        || sum(&env, "audit_repository_cursors"),
        |indexed| *indexed != before,
    );
    assert!(indexed > before, "the indexer resumed after the load");
    assert!(
        sum(&env, "audit_repository_cursors") < sum(&env, "audit_chains"),
        "and indexes at its own rate, not all at once"
    );
}
