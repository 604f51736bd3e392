//! SMART Bulk Data export (`$export`) over HTTPS, as a Bulk Data client drives it:
//! kick-off, polling, manifest, NDJSON files, cancellation; each file only for the
//! client that asked and only what its token grants.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

const ASYNC: [(&str, &str); 2] = [
    ("Prefer", "respond-async"),
    ("Accept", "application/fhir+json"),
];

/// A partition `pa` holding Peter and Paula, their Observations (Peter's HbA1c is a lab
/// result, Paula's heart rate a vital sign), an Observation of nobody, and a
/// Practitioner; and a Group with Peter only.
struct Records {
    v: Vault,
    c: Client,
    writer: String,
    peter: String,
    paula: String,
    hba1c: String,
    heart: String,
    orphan: String,
    practitioner: String,
    group: String,
}

fn records() -> Records {
    records_with(vault())
}

fn records_with(v: Vault) -> Records {
    let c = v.client();
    let writer = v.token("writer", "system/*.cruds", &["pa"]);
    let id = |value: Value| value["id"].as_str().unwrap().to_owned();
    let peter = id(create(
        &c,
        &writer,
        "/fhir/pa/Patient",
        r#"{"resourceType":"Patient","name":[{"family":"Muster","given":["Peter"]}]}"#,
    ));
    let paula = id(create(
        &c,
        &writer,
        "/fhir/pa/Patient",
        r#"{"resourceType":"Patient","name":[{"family":"Muster","given":["Paula"]}]}"#,
    ));
    let hba1c = id(create(
        &c,
        &writer,
        "/fhir/pa/Observation",
        &observation("4548-4", "2021-01-10", "laboratory", &peter),
    ));
    let heart = id(create(
        &c,
        &writer,
        "/fhir/pa/Observation",
        &observation("8867-4", "2022-01-01", "vital-signs", &paula),
    ));
    let mut nobody: Value =
        serde_json::from_str(&observation("8867-4", "2022-01-02", "vital-signs", "x")).unwrap();
    nobody.as_object_mut().unwrap().remove("subject");
    let orphan = id(create(
        &c,
        &writer,
        "/fhir/pa/Observation",
        &nobody.to_string(),
    ));
    let practitioner = id(create(
        &c,
        &writer,
        "/fhir/pa/Practitioner",
        r#"{"resourceType":"Practitioner","name":[{"family":"Arzt"}]}"#,
    ));
    let group = id(create(
        &c,
        &writer,
        "/fhir/pa/Group",
        &json!({
            "resourceType": "Group", "type": "person", "actual": true,
            "member": [
                {"entity": {"reference": format!("Patient/{peter}")}},
                {"entity": {"reference": format!("Patient/{paula}")}, "inactive": true},
            ],
        })
        .to_string(),
    ));
    Records {
        v,
        c,
        writer,
        peter,
        paula,
        hba1c,
        heart,
        orphan,
        practitioner,
        group,
    }
}

/// The path under the server of one of its absolute URLs.
fn path_of(url: &str) -> String {
    format!("/fhir/{}", url.split_once("/fhir/").unwrap().1)
}

/// Kicks off an export at `path` (under `/fhir/pa`) and returns the status path.
fn kick_off(c: &Client, token: &str, path: &str) -> String {
    let reply = c.send("GET", &format!("/fhir/pa{path}"), Some(token), &ASYNC, None);
    assert_eq!(reply.status, 202, "{path}: {}", reply.body);
    path_of(reply.header("content-location").expect("Content-Location"))
}

/// Polls the status until the manifest comes, as a client following Retry-After would
/// (faster here); every interim answer is 202 with Retry-After and X-Progress.
fn manifest(c: &Client, token: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = c.send("GET", status, Some(token), &[], None);
        match reply.status {
            200 => {
                assert_eq!(reply.header("content-type"), Some("application/json"));
                assert!(reply.header("expires").is_some());
                return reply.json();
            }
            202 => {
                assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
                assert!(reply.header("x-progress").is_some(), "{:?}", reply.headers);
            }
            other => panic!("status {other}: {}", reply.body),
        }
        assert!(Instant::now() < deadline, "the export did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file of a manifest's `key` (`output` or `error`), downloaded: (type, resources).
fn download(c: &Client, token: &str, manifest: &Value, key: &str) -> Vec<(String, Vec<Value>)> {
    manifest[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| {
            let reply = c.send(
                "GET",
                &path_of(file["url"].as_str().unwrap()),
                Some(token),
                &[("Accept", "application/fhir+ndjson")],
                None,
            );
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(
                reply.header("content-type"),
                Some("application/fhir+ndjson")
            );
            assert!(reply.body.ends_with('\n'));
            let lines: Vec<Value> = reply
                .body
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(file["count"], lines.len(), "{file}");
            for resource in &lines {
                assert_eq!(resource["resourceType"], file["type"]);
            }
            (file["type"].as_str().unwrap().to_owned(), lines)
        })
        .collect()
}

/// `Type/id` of every exported resource.
fn exported(c: &Client, token: &str, manifest: &Value) -> BTreeSet<String> {
    download(c, token, manifest, "output")
        .into_iter()
        .flat_map(|(_, resources)| resources)
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect()
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

#[test]
fn a_system_export_delivers_every_resource_of_the_partition_as_ndjson() {
    let r = records();
    let reader = r.v.token("bulk", "system/*.rs", &["pa"]);
    let status = kick_off(
        &r.c,
        &reader,
        "/$export?_outputFormat=application%2Ffhir%2Bndjson",
    );
    assert!(status.starts_with("/fhir/pa/$export-status/"), "{status}");
    let manifest = manifest(&r.c, &reader, &status);
    assert!(manifest["request"]
        .as_str()
        .unwrap()
        .ends_with("/fhir/pa/$export?_outputFormat=application%2Ffhir%2Bndjson"));
    assert_eq!(manifest["requiresAccessToken"], true);
    let time = manifest["transactionTime"].as_str().unwrap();
    assert!(tessera_vault::dates::parse(time).is_some(), "{time}");
    assert_eq!(manifest["error"], json!([]));
    let files = download(&r.c, &reader, &manifest, "output");
    for (_, resources) in &files {
        for resource in resources {
            assert_valid_fhir(resource);
        }
    }
    let types: Vec<&str> = files.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["Group", "Observation", "Patient", "Practitioner"]);
    assert_eq!(
        exported(&r.c, &reader, &manifest),
        set(&[
            format!("Group/{}", r.group),
            format!("Observation/{}", r.hba1c),
            format!("Observation/{}", r.heart),
            format!("Observation/{}", r.orphan),
            format!("Patient/{}", r.peter),
            format!("Patient/{}", r.paula),
            format!("Practitioner/{}", r.practitioner),
        ])
    );
    // The resource as exported is the resource as read.
    let observations = &files[1].1;
    let read = r.c.send(
        "GET",
        &format!("/fhir/pa/Observation/{}", r.hba1c),
        Some(&reader),
        &[],
        None,
    );
    assert!(observations.contains(&read.json()));

    // Done with it: the client deletes the job, and its files go with it.
    let file = path_of(manifest["output"][0]["url"].as_str().unwrap());
    let deleted = r.c.send("DELETE", &status, Some(&reader), &[], None);
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    outcome(
        &r.c.send("GET", &status, Some(&reader), &[], None),
        404,
        "not-found",
    );
    outcome(
        &r.c.send("GET", &file, Some(&reader), &[], None),
        404,
        "not-found",
    );
}

#[test]
fn type_since_and_type_filter_narrow_the_export() {
    let r = records();
    let reader = r.v.token("bulk", "system/*.rs", &["pa"]);
    let only = |query: &str| {
        let status = kick_off(&r.c, &reader, &format!("/$export?{query}"));
        exported(&r.c, &reader, &manifest(&r.c, &reader, &status))
    };
    assert_eq!(
        only("_type=Patient,Practitioner"),
        set(&[
            format!("Patient/{}", r.peter),
            format!("Patient/{}", r.paula),
            format!("Practitioner/{}", r.practitioner),
        ])
    );
    assert_eq!(
        only("_type=Observation&_typeFilter=Observation%3Fcode%3D4548-4"),
        set(&[format!("Observation/{}", r.hba1c)])
    );
    // Two filters of one type: either one.
    assert_eq!(
        only(&format!(
            "_type=Observation&_typeFilter=Observation%3Fcode%3D4548-4&_typeFilter=Observation%3Fsubject%3DPatient%2F{}",
            r.paula
        )),
        set(&[format!("Observation/{}", r.hba1c), format!("Observation/{}", r.heart)])
    );
    // A chain in a filter.
    assert_eq!(
        only("_type=Observation&_typeFilter=Observation%3Fsubject.name%3DPaula"),
        set(&[format!("Observation/{}", r.heart)])
    );
    // `_since`: changed after the instant; the HbA1c is changed now, the rest is older.
    let since = r.c.send(
        "GET",
        &format!("/fhir/pa/Observation/{}", r.orphan),
        Some(&reader),
        &[],
        None,
    );
    let since = since.json()["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_millis(5));
    let mut hba1c: Value =
        serde_json::from_str(&observation("4548-4", "2021-01-10", "laboratory", &r.peter)).unwrap();
    hba1c["id"] = json!(r.hba1c);
    hba1c["status"] = json!("amended");
    let updated = r.c.send(
        "PUT",
        &format!("/fhir/pa/Observation/{}", r.hba1c),
        Some(&r.writer),
        &[],
        Some(&hba1c.to_string()),
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    // Written after the orphan: the Practitioner, the Group, and the amended HbA1c.
    let query = format!("_since={}", since.replace('+', "%2B"));
    assert_eq!(
        only(&query),
        set(&[
            format!("Observation/{}", r.hba1c),
            format!("Practitioner/{}", r.practitioner),
            format!("Group/{}", r.group),
        ])
    );
}

#[test]
fn patient_and_group_exports_hold_the_patients_compartments() {
    let r = records();
    let reader = r.v.token("bulk", "system/*.rs", &["pa"]);
    let run = |path: &str| {
        let status = kick_off(&r.c, &reader, path);
        exported(&r.c, &reader, &manifest(&r.c, &reader, &status))
    };
    // Both patients and what is theirs (the Group too: R4 puts a Group in its members'
    // compartments); not the Observation of nobody, nor the Practitioner (outside the
    // Patient compartment).
    assert_eq!(
        run("/Patient/$export"),
        set(&[
            format!("Group/{}", r.group),
            format!("Observation/{}", r.hba1c),
            format!("Observation/{}", r.heart),
            format!("Patient/{}", r.peter),
            format!("Patient/{}", r.paula),
        ])
    );
    // The Group's active member only.
    assert_eq!(
        run(&format!("/Group/{}/$export", r.group)),
        set(&[
            format!("Group/{}", r.group),
            format!("Observation/{}", r.hba1c),
            format!("Patient/{}", r.peter),
        ])
    );
    assert_eq!(
        run(&format!("/Group/{}/$export?_type=Observation", r.group)),
        set(&[format!("Observation/{}", r.hba1c)])
    );
    // POST with Parameters: one patient (the Group names her, as an inactive member,
    // which R4's compartment, by the `member` parameter, does not tell apart).
    let parameters = json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
            {"name": "patient", "valueReference": {"reference": format!("Patient/{}", r.paula)}},
        ],
    });
    let reply = r.c.send(
        "POST",
        "/fhir/pa/Patient/$export",
        Some(&reader),
        &ASYNC,
        Some(&parameters.to_string()),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let status = path_of(reply.header("content-location").unwrap());
    assert_eq!(
        exported(&r.c, &reader, &manifest(&r.c, &reader, &status)),
        set(&[
            format!("Group/{}", r.group),
            format!("Observation/{}", r.heart),
            format!("Patient/{}", r.paula),
        ])
    );
    // `patient` names only Patients the token may see: for one restricted to Peter, Paula
    // is as unknown as an id that does not exist.
    let peters = r.v.token(
        "peters",
        "system/Patient.rs?name=Peter system/Observation.rs",
        &["pa"],
    );
    let ask = |id: &str| {
        let parameters = json!({
            "resourceType": "Parameters",
            "parameter": [{"name": "patient", "valueReference": {"reference": format!("Patient/{id}")}}],
        });
        r.c.send(
            "POST",
            "/fhir/pa/Patient/$export",
            Some(&peters),
            &ASYNC,
            Some(&parameters.to_string()),
        )
    };
    assert_eq!(ask(&r.peter).status, 202);
    outcome(&ask(&r.paula), 404, "not-found");
    outcome(&ask("nobody"), 404, "not-found");
}

#[test]
fn an_export_holds_only_what_the_token_grants_and_goes_only_to_its_client() {
    let r = records();
    // A client that may search lab results and vital signs, asking for lab results only.
    let secret = r.v.env.add_secret_client(&[
        "--client-id",
        "lab",
        "--auth",
        "client_secret_post",
        "--scope",
        "system/Observation.rs?category=laboratory system/Observation.rs?category=vital-signs",
        "--partition",
        "pa",
    ]);
    let lab_token = |scope: &str| {
        let reply = r.c.token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "lab"),
            ("client_secret", &secret),
            ("scope", scope),
        ]);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["access_token"].as_str().unwrap().to_owned()
    };
    let lab = lab_token("system/Observation.rs?category=laboratory");
    // The vital signs stay out, and the Patients, which it may not search, are named
    // in the error file.
    let status = kick_off(&r.c, &lab, "/$export?_type=Observation,Patient");
    let manifest = manifest(&r.c, &lab, &status);
    assert_eq!(
        exported(&r.c, &lab, &manifest),
        set(&[format!("Observation/{}", r.hba1c)])
    );
    let errors = download(&r.c, &lab, &manifest, "error");
    assert_eq!(errors.len(), 1);
    let (ty, outcomes) = &errors[0];
    assert_eq!(ty, "OperationOutcome");
    assert_valid_fhir(&outcomes[0]);
    assert_eq!(outcomes[0]["issue"][0]["code"], "suppressed");
    let said = outcomes[0]["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(said.ends_with(": Patient"), "{said}");

    // Another client, even one that may read everything, gets neither status nor files,
    // and cannot cancel.
    let other = r.v.token("other", "system/*.rs", &["pa"]);
    let file = path_of(manifest["output"][0]["url"].as_str().unwrap());
    for path in [&status, &file] {
        let refused = outcome(
            &r.c.send("GET", path, Some(&other), &[], None),
            403,
            "forbidden",
        );
        assert!(refused.contains("another client"), "{refused}");
    }
    outcome(
        &r.c.send("DELETE", &status, Some(&other), &[], None),
        403,
        "forbidden",
    );
    assert_eq!(r.c.send("GET", &file, None, &[], None).status, 401);
    // The same client: with a token for vital signs only, no lab file; with a token
    // granting at least the kick-off's, the file.
    let vital = lab_token("system/Observation.rs?category=vital-signs");
    outcome(
        &r.c.send("GET", &file, Some(&vital), &[], None),
        403,
        "forbidden",
    );
    let both = lab_token(
        "system/Observation.rs?category=laboratory system/Observation.rs?category=vital-signs",
    );
    for token in [
        &lab_token("system/Observation.rs?category=laboratory"),
        &both,
    ] {
        let reply = r.c.send("GET", &file, Some(token), &[], None);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

#[test]
fn a_kick_off_the_vault_cannot_honour_exactly_is_refused_and_queues_nothing() {
    let r = records();
    let reader = r.v.token("bulk", "system/*.rs", &["pa"]);
    let refused = |path: &str, headers: &[(&str, &str)], status: u16, code: &str| {
        let reply = r.c.send(
            "GET",
            &format!("/fhir/pa{path}"),
            Some(&reader),
            headers,
            None,
        );
        assert!(reply.header("content-location").is_none(), "{path}");
        outcome(&reply, status, code)
    };
    let said = refused(
        "/$export",
        &[("Accept", "application/fhir+json")],
        400,
        "invalid",
    );
    assert!(said.contains("respond-async"), "{said}");
    refused(
        "/$export",
        &[("Prefer", "respond-async"), ("Accept", "text/csv")],
        400,
        "not-supported",
    );
    for (query, code) in [
        ("_outputFormat=text%2Fcsv", "not-supported"),
        ("_type=Foo", "invalid"),
        ("_since=2024-01-01", "invalid"),
        ("_since=2024-01-01T10:00:00", "invalid"),
        ("_elements=id", "not-supported"),
        ("_until=2030-01-01T00:00:00Z", "not-supported"),
        (
            "includeAssociatedData=LatestProvenanceResources",
            "not-supported",
        ),
        ("foo=bar", "invalid"),
        (
            "_typeFilter=Observation%3Fcode%3Dx%26_sort%3Ddate",
            "invalid",
        ),
        ("_typeFilter=Observation%3Fvalue-foo%3D1", "invalid"),
        (
            "_type=Patient&_typeFilter=Observation%3Fcode%3Dx",
            "invalid",
        ),
        ("patient=Patient%2Fx", "invalid"),
    ] {
        let said = refused(&format!("/$export?{query}"), &ASYNC, 400, code);
        assert!(!said.is_empty(), "{query}");
    }
    refused(
        "/Patient/$export?_type=Practitioner",
        &ASYNC,
        400,
        "invalid",
    );
    // A POSTed kick-off takes a Parameters resource in FHIR JSON.
    let posted = |content_type: &str, body: &str| {
        let mut headers = ASYNC.to_vec();
        headers.push(("Content-Type", content_type));
        r.c.send(
            "POST",
            "/fhir/pa/Patient/$export",
            Some(&reader),
            &headers,
            Some(body),
        )
    };
    outcome(&posted("text/plain", "_type=Patient"), 400, "not-supported");
    outcome(
        &posted("application/fhir+json", r#"{"resourceType":"Patient"}"#),
        400,
        "invalid",
    );
    outcome(
        &posted(
            "application/fhir+json",
            r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueBoolean":true}]}"#,
        ),
        400,
        "invalid",
    );
    refused("/Observation/$export", &ASYNC, 400, "not-supported");
    refused("/Patient/x/$export", &ASYNC, 400, "not-supported");
    refused("/Group/nope/$export", &ASYNC, 404, "not-found");
    // A token that may not search any type asked for, or not on this partition.
    let practitioners = r.v.token("prac", "system/Practitioner.rs", &["pa"]);
    let reply = r.c.send(
        "GET",
        "/fhir/pa/$export?_type=Observation",
        Some(&practitioners),
        &ASYNC,
        None,
    );
    outcome(&reply, 403, "forbidden");
    let elsewhere = r.v.token("elsewhere", "system/*.rs", &["pb"]);
    outcome(
        &r.c.send("GET", "/fhir/pa/$export", Some(&elsewhere), &ASYNC, None),
        403,
        "forbidden",
    );
    assert_eq!(
        r.c.send("GET", "/fhir/pa/$export", None, &ASYNC, None)
            .status,
        401
    );
    assert_eq!(
        r.v.env
            .sql_values("SELECT CAST(COUNT(*) AS TEXT) AS value FROM export_jobs"),
        ["0"],
        "no refused kick-off queued a job"
    );
}

/// Another instance of the installation, with an export worker (its own journal).
fn second_instance(env: &Env) -> Server {
    Server::start_with(env, |loaded| {
        loaded.config.server.public_url = env.base_url();
        loaded
            .config
            .server
            .listen
            .set_port(crate::support::free_port());
        loaded.config.audit.journal_dir = "data/audit-journal-2".into();
        loaded.config.vault.export_worker = true;
    })
}

#[test]
fn queued_exports_wait_for_a_worker_are_limited_per_client_and_can_be_cancelled() {
    // An instance that leaves running exports to others (export_worker = false).
    let r = records_with(vault_configured(|c| c.vault.export_worker = false));
    let reader = r.v.token("bulk", "system/*.rs", &["pa"]);
    let statuses: Vec<String> = (0..3)
        .map(|_| kick_off(&r.c, &reader, "/$export"))
        .collect();
    for status in &statuses {
        let reply = r.c.send("GET", status, Some(&reader), &[], None);
        assert_eq!(reply.status, 202, "{}", reply.body);
        assert_eq!(reply.header("retry-after"), Some("2"));
        assert_eq!(reply.header("x-progress"), Some("queued"));
    }
    // A fourth at once is too many for one client; another client may still ask.
    let busy =
        r.c.send("GET", "/fhir/pa/$export", Some(&reader), &ASYNC, None);
    outcome(&busy, 429, "throttled");
    let other = r.v.token("other", "system/*.rs", &["pa"]);
    let others = kick_off(&r.c, &other, "/$export?_type=Patient");
    // Cancelling one makes room.
    let cancelled = r.c.send("DELETE", &statuses[0], Some(&reader), &[], None);
    assert_eq!(cancelled.status, 202, "{}", cancelled.body);
    outcome(
        &r.c.send("GET", &statuses[0], Some(&reader), &[], None),
        404,
        "not-found",
    );
    outcome(
        &r.c.send("DELETE", &statuses[0], Some(&reader), &[], None),
        404,
        "not-found",
    );
    let fourth = kick_off(&r.c, &reader, "/$export?_type=Practitioner");

    // A second instance of the installation, with a worker, runs what the first queued.
    let worker = second_instance(&r.v.env);
    for status in [&statuses[1], &statuses[2], &fourth] {
        let manifest = manifest(&r.c, &reader, status);
        assert!(!manifest["output"].as_array().unwrap().is_empty());
    }
    assert_eq!(
        exported(&r.c, &other, &manifest(&r.c, &other, &others)),
        set(&[
            format!("Patient/{}", r.peter),
            format!("Patient/{}", r.paula)
        ])
    );
    drop(worker);
}

#[test]
fn a_job_whose_worker_stopped_is_taken_over_and_its_partial_files_dropped() {
    let r = records_with(vault_configured(|c| c.vault.export_worker = false));
    let reader = r.v.token("bulk", "system/*.rs", &["pa"]);
    let status = kick_off(&r.c, &reader, "/$export?_type=Patient");
    let id = status.rsplit('/').next().unwrap().to_owned();
    // As a worker that died half-way would leave it: running, a file written, its
    // lease run out.
    r.v.env.sql(&format!(
        "UPDATE export_jobs SET status = 'running', attempt = 1, started = 1, lease_until = 1 WHERE id = '{id}'"
    ));
    r.v.env.sql(&format!(
        "INSERT INTO export_files (job_id, seq, kind, resource_type, count, content) \
         VALUES ('{id}', 1, 'output', 'Patient', 1, '{{\"resourceType\":\"Patient\",\"id\":\"stale\"}}\n')"
    ));
    let reply = r.c.send("GET", &status, Some(&reader), &[], None);
    assert_eq!(reply.status, 202);
    let worker = second_instance(&r.v.env);
    let manifest = manifest(&r.c, &reader, &status);
    assert_eq!(
        exported(&r.c, &reader, &manifest),
        set(&[
            format!("Patient/{}", r.peter),
            format!("Patient/{}", r.paula)
        ])
    );
    assert_eq!(
        r.v.env.sql_values(&format!(
            "SELECT CAST(attempt AS TEXT) AS value FROM export_jobs WHERE id = '{id}'"
        )),
        ["2"]
    );
    drop(worker);
}

#[test]
fn every_export_request_is_audited_with_its_url() {
    let r = records();
    let reader = r.v.token("bulk", "system/*.rs", &["pa"]);
    let status = kick_off(&r.c, &reader, "/$export?_type=Patient");
    let manifest = manifest(&r.c, &reader, &status);
    let file = path_of(manifest["output"][0]["url"].as_str().unwrap());
    download(&r.c, &reader, &manifest, "output");
    let other = r.v.token("other", "system/*.rs", &["pa"]);
    assert_eq!(r.c.send("GET", &file, Some(&other), &[], None).status, 403);
    let records: Vec<(String, Option<String>, u16, String)> = crate::audit::journaled(&r.v.env)
        .into_iter()
        .filter_map(|record| match record.event {
            tessera_atna::Event::FhirRequest {
                interaction,
                resource,
                status,
                token,
                ..
            } => Some((
                interaction,
                resource,
                status,
                token.map(|t| t.client_id).unwrap_or_default(),
            )),
            _ => None,
        })
        .filter(|(_, resource, _, _)| resource.as_deref().is_some_and(|r| r.contains("$export")))
        .collect();
    let ends = |suffix: &str| {
        records
            .iter()
            .filter(|(_, resource, _, _)| resource.as_deref().unwrap().ends_with(suffix))
            .map(|(i, _, status, client)| (i.as_str(), *status, client.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ends("/fhir/pa/$export"), [("operation", 202, "bulk")]);
    assert!(ends(&status)
        .iter()
        .all(|e| *e == ("operation", 200, "bulk") || *e == ("operation", 202, "bulk")));
    assert_eq!(
        ends(&file),
        [("operation", 200, "bulk"), ("operation", 403, "other")]
    );
}

#[test]
fn a_type_with_more_resources_than_a_file_holds_is_split_over_files() {
    let r = records_with(vault_configured(|c| c.vault.export_file_resources = 2));
    let reader = r.v.token("bulk", "system/*.rs", &["pa"]);
    let status = kick_off(&r.c, &reader, "/$export?_type=Observation,Patient");
    let manifest = manifest(&r.c, &reader, &status);
    let files = download(&r.c, &reader, &manifest, "output");
    let shape: Vec<(&str, usize)> = files.iter().map(|(t, r)| (t.as_str(), r.len())).collect();
    assert_eq!(
        shape,
        [("Observation", 2), ("Observation", 1), ("Patient", 2)]
    );
    assert_eq!(
        exported(&r.c, &reader, &manifest),
        set(&[
            format!("Observation/{}", r.hba1c),
            format!("Observation/{}", r.heart),
            format!("Observation/{}", r.orphan),
            format!("Patient/{}", r.peter),
            format!("Patient/{}", r.paula),
        ])
    );
}
