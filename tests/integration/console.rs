//! The audit console (`/console`): sign-in through the realm's own code flow with PKCE,
//! searching and reading events, the patient's access log, exports, the chain check,
//! and that nobody sees more than their token allows. The cookie-keeping client of
//! `apps` plays the browser; tests/browser drives the same pages in real Chromium.

use serde_json::Value;

use crate::apps::{
    apps, hidden_fields, location, owned, query_of, trail_with, unescape, Apps, Browser,
};

/// Signs `user` in to the console `as` auditor or patient; returns the browser, now
/// holding the console's cookie, on the events page.
fn sign_in(a: &Apps, user: &str, as_: &str, partition: Option<&str>) -> Browser {
    let mut browser = Browser::new(&a.env);
    let start = browser.get("/console");
    assert_eq!(start.status, 200, "{}", start.body);
    assert!(
        start.body.contains("/console/login?as=auditor"),
        "{}",
        start.body
    );
    let authorize = location(&browser.get(&format!("/console/login?as={as_}")));
    assert!(
        authorize.starts_with(&format!(
            "{}/realms/cara/protocol/openid-connect/auth?",
            a.env.base_url()
        )),
        "{authorize}"
    );
    let params = query_of(&authorize);
    assert_eq!(params["client_id"], "tessera-console");
    assert_eq!(params["code_challenge_method"], "S256");
    let page = a.login(&mut browser, &authorize, user);
    let scopes: Vec<&str> = params["scope"].split(' ').collect();
    let back = a.consent(&mut browser, &page, &scopes, &[], partition);
    assert!(
        back.starts_with(&format!("{}/console/callback?", a.env.base_url())),
        "{back}"
    );
    let signed_in = browser.get(&back);
    assert_eq!(location(&signed_in), "/console/events");
    browser
}

/// The Account URN of a partition's account.
fn account_of(a: &Apps, mpi: &str) -> String {
    let shown: Value =
        serde_json::from_str(&a.env.cli(&["account", "show", mpi]).unwrap()).unwrap();
    shown["accountUrn"].as_str().unwrap().to_owned()
}

/// The event ids linked from a page.
fn event_links(html: &str) -> Vec<String> {
    html.split("href=\"/console/events/")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_owned())
        .collect()
}

#[test]
fn an_auditor_searches_the_trail_opens_an_event_exports_and_checks_the_chain() {
    let a = apps();
    a.add_auditor();
    // The setup's writes are in the trail before the console looks.
    trail_with(&a.env, &["\"display\":\"create\""]);
    let mut browser = sign_in(&a, "audrey", "auditor", None);

    let page = browser.get("/console/events");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<h1>Audit events</h1>"), "{}", page.body);
    for label in [
        "for=\"from\"",
        "for=\"to\"",
        "for=\"agent\"",
        "for=\"outcome\"",
    ] {
        assert!(page.body.contains(label), "{label} missing");
    }
    assert!(page.body.contains("Restful Operation"), "{}", page.body);
    assert!(page.body.contains("User Authentication"), "{}", page.body);
    assert!(page.body.contains("newest first"), "{}", page.body);
    let headers = |name: &str| page.header(name).unwrap_or_default().to_owned();
    assert_eq!(headers("cache-control"), "no-store");
    assert!(headers("content-security-policy").contains("frame-ancestors 'none'"));

    // Filters: only creations; a subtype nobody used finds nothing.
    let creates = browser.get("/console/events?subtype=create");
    assert_eq!(creates.status, 200, "{}", creates.body);
    let ids = event_links(&creates.body);
    assert_eq!(
        ids.len(),
        6,
        "2 Patients and 4 Observations: {}",
        creates.body
    );
    assert!(
        !creates.body.contains("User Authentication"),
        "{}",
        creates.body
    );
    let none = browser.get("/console/events?subtype=ITI-999");
    assert!(
        none.body.contains("No events in this range."),
        "{}",
        none.body
    );
    let bad = browser.get("/console/events?from=yesterday");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("role=\"alert\""), "{}", bad.body);

    // One event: its facts, its FHIR AuditEvent and its DICOM message.
    let event = browser.get(&format!("/console/events/{}", ids[0]));
    assert_eq!(event.status, 200, "{}", event.body);
    let shown = unescape(&event.body);
    assert!(
        shown.contains("\"resourceType\": \"AuditEvent\""),
        "{shown}"
    );
    assert!(shown.contains("<AuditMessage"), "{shown}");
    assert!(
        event.body.contains("loader"),
        "the writing client: {}",
        event.body
    );
    let missing = browser.get("/console/events/no-such-event");
    assert_eq!(missing.status, 404, "{}", missing.body);

    // Exports of the filtered range.
    let ndjson = browser.get("/console/export?subtype=create&format=ndjson");
    assert_eq!(ndjson.status, 200, "{}", ndjson.body);
    assert_eq!(
        ndjson.header("content-type"),
        Some("application/fhir+ndjson")
    );
    let lines: Vec<Value> = ndjson
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|e| e["resourceType"] == "AuditEvent"));
    assert!(lines.iter().all(|e| e["subtype"][0]["code"] == "create"));
    let csv = browser.get("/console/export?subtype=create&format=csv");
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let rows: Vec<&str> = csv.body.lines().collect();
    assert_eq!(rows.len(), 7, "a header and 6 events: {}", csv.body);
    assert!(rows[0].starts_with("id,recorded,type,subtype"));
    assert!(
        rows[1..].iter().all(|r| r.contains(",create,")),
        "{}",
        csv.body
    );

    // The chain: checked from the page, only with the page's form token.
    let trail = browser.get("/console/trail");
    assert_eq!(trail.status, 200, "{}", trail.body);
    assert!(!trail.body.contains("Checked "), "{}", trail.body);
    assert!(
        trail
            .body
            .contains(" events in 1 hash chain: each Tessera server, and the command line,")
            && trail.body.contains("No checkpoint has been signed yet"),
        "{}",
        trail.body
    );
    let form = hidden_fields(&trail.body, "/console/trail/verify");
    let checked = check_chain(&mut browser, &form);
    assert!(
        checked.contains(" events: the chain is intact and every searchable copy matches"),
        "{checked}"
    );
    assert!(checked.contains("by audrey, finished"), "{checked}");
    // A checkpoint signed with the node's key, as the server signs one every minute: the
    // page names it, and the check verifies its signature.
    let signer = tessera_http::checkpoint::CheckpointSigner::load(
        &a.env.path("pki/server.crt"),
        &a.env.path("pki/server.key"),
    )
    .unwrap();
    let written = tessera::cli::open_store(&a.env.loaded())
        .unwrap()
        .write_audit_checkpoint(tessera_types::UnixTime(crate::support::now()), &|c| {
            signer.sign(c)
        })
        .unwrap();
    assert_eq!(written, Some(1));
    let trail = browser.get("/console/trail");
    assert!(
        trail
            .body
            .contains("The newest signed checkpoint, number 1, signed "),
        "{}",
        trail.body
    );
    let checked = check_chain(&mut browser, &form);
    assert!(
        checked.contains(" events: the chain is intact and every searchable copy matches"),
        "{checked}"
    );
    // Someone with database access rewrites the third event: the check names it.
    assert_eq!(
        a.env
            .sql("UPDATE audit_events SET record = record || ' ' WHERE seq = 3"),
        1
    );
    let broken = check_chain(&mut browser, &form);
    assert!(
        broken.contains(&format!(
            "Checked 2 events: the chain is broken at event {}#3 (",
            a.env.loaded().audit_chain()
        )),
        "{broken}"
    );
    let forged = browser.post("/console/trail/verify", &owned(&[("csrf", "guess")]));
    assert_eq!(forged.status, 403, "{}", forged.body);

    // Every console request is in the trail, as ITI-81 queries are.
    trail_with(
        &a.env,
        &[
            "/console/events\"",
            &format!("/console/events/{}\"", ids[0]),
            "/console/export\"",
            "/console/trail/verify\"",
        ],
    );

    // Signing out forgets the token and ends the login session at the realm.
    let events = browser.get("/console/events");
    let form = hidden_fields(&events.body, "/console/logout");
    let out = browser.post("/console/logout", &form);
    assert_eq!(
        location(&out),
        "/realms/cara/protocol/openid-connect/logout"
    );
    assert_eq!(location(&browser.get("/console/events")), "/console");
}

#[test]
fn a_patient_reads_who_accessed_their_record_and_nothing_else() {
    let a = apps();
    a.add_auditor();
    trail_with(&a.env, &["\"display\":\"create\""]);
    let own = account_of(&a, crate::apps::MPI_A);
    let other = account_of(&a, crate::apps::MPI_B);

    let mut patient = sign_in(&a, "anna", "patient", None);
    let page = patient.get("/console/events");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Who accessed your record"),
        "{}",
        page.body
    );
    // Plain sentences: the setup's loader added her Patient and two Observations.
    assert!(
        page.body.contains("loader added your Patient"),
        "{}",
        page.body
    );
    assert_eq!(
        page.body.matches("loader added your").count(),
        3,
        "{}",
        page.body
    );
    assert!(!page.body.contains("/console/export"), "{}", page.body);
    assert!(!page.body.contains("/console/trail"), "{}", page.body);

    // Another account's events: not listed, not openable, not reachable by a filter.
    let mut auditor = sign_in(&a, "audrey", "auditor", None);
    let theirs = auditor.get(&format!(
        "/console/export?format=ndjson&patient={}",
        url::form_urlencoded::byte_serialize(other.as_bytes()).collect::<String>()
    ));
    let their_ids: Vec<String> = theirs
        .body
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(their_ids.len(), 3, "{}", theirs.body);
    for id in &their_ids {
        assert!(!page.body.contains(id.as_str()));
        let opened = patient.get(&format!("/console/events/{id}"));
        assert_eq!(opened.status, 404, "{}", opened.body);
    }
    let filtered = patient.get(&format!(
        "/console/events?patient={}",
        url::form_urlencoded::byte_serialize(other.as_bytes()).collect::<String>()
    ));
    assert!(
        filtered.body.contains("No events in this range."),
        "{}",
        filtered.body
    );
    // Her own events open, told plainly, with the details.
    let mine = event_links(&page.body);
    let opened = patient.get(&format!("/console/events/{}", mine[0]));
    assert_eq!(opened.status, 200, "{}", opened.body);
    assert!(
        opened.body.contains(&own) || opened.body.contains("your"),
        "{}",
        opened.body
    );
    // The token of her record reads the same events over ITI-81.
    let token = patient.cookie("tessera_console").unwrap().to_owned();
    let day = &tessera_atna::timestamp(tessera_types::UnixTime(crate::support::now()))[..10];
    let iti81 = crate::support::Client::new(&a.env, None).send(
        "GET",
        &format!("/audit/fhir/AuditEvent?date=ge{day}&subtype=create"),
        Some(&token),
        &[],
        None,
    );
    assert_eq!(iti81.status, 200, "{}", iti81.body);
    assert_eq!(iti81.json()["total"], 3, "{}", iti81.body);
    // What is for auditors is refused to her.
    assert_eq!(patient.get("/console/export?format=csv").status, 403);
    assert_eq!(patient.get("/console/trail").status, 403);
    // Her one record is named; there is no other to switch to.
    assert!(page.body.contains("The record of "), "{}", page.body);
    assert!(!page.body.contains("Switch record"), "{}", page.body);

    // A representative reaches two records: one at a time, switching without a new
    // login (the login session is still there; only the picker is asked again).
    let mut rita = sign_in(&a, "rita", "patient", Some("pa"));
    let first = rita.get("/console/events");
    assert!(first.body.contains("Switch record"), "{}", first.body);
    let first_ids = event_links(&first.body);
    assert_eq!(first_ids.len(), 3, "{}", first.body);
    let authorize = location(&rita.get("/console/login?as=patient"));
    let picker = rita.get(&authorize);
    assert!(!picker.body.contains("Log in"), "{}", picker.body);
    let back = a.consent(
        &mut rita,
        &picker,
        &["openid", "patient/AuditEvent.rs"],
        &[],
        Some("pb"),
    );
    assert_eq!(location(&rita.get(&back)), "/console/events");
    let second = rita.get("/console/events");
    let second_ids = event_links(&second.body);
    assert_eq!(second_ids.len(), 3, "{}", second.body);
    assert!(second_ids.iter().all(|id| their_ids.contains(id)));
    assert!(first_ids.iter().all(|id| !second_ids.contains(id)));
    let label = |body: &str| {
        let at = body.find("The record of ").unwrap();
        body[at..at + body[at..].find(")").unwrap()].to_owned()
    };
    assert!(label(&first.body).ends_with("(record pa"), "{}", first.body);
    assert!(
        label(&second.body).ends_with("(record pb"),
        "{}",
        second.body
    );
    assert_eq!(
        rita.get(&format!("/console/events/{}", first_ids[0]))
            .status,
        404
    );
}

#[test]
fn the_console_accepts_only_its_own_sign_ins() {
    let a = apps();
    a.add_auditor();
    let mut browser = Browser::new(&a.env);
    // A callback this browser did not start, or with another state, signs nobody in.
    let stray = browser.get("/console/callback?code=abc&state=xyz");
    assert_eq!(stray.status, 400, "{}", stray.body);
    let authorize = location(&browser.get("/console/login?as=auditor"));
    let page = a.login(&mut browser, &authorize, "audrey");
    let back = a.consent(
        &mut browser,
        &page,
        &["openid", "user/AuditEvent.rs"],
        &[],
        None,
    );
    let code = query_of(&back)["code"].clone();
    let forged = browser.get(&format!("/console/callback?code={code}&state=not-the-one"));
    assert_eq!(forged.status, 400, "{}", forged.body);
    assert_eq!(location(&browser.get("/console/events")), "/console");
    // A role that does not fit the person is refused at the realm and said plainly.
    let mut patient = Browser::new(&a.env);
    let authorize = location(&patient.get("/console/login?as=auditor"));
    let back = location(&a.login(&mut patient, &authorize, "anna"));
    let refused = patient.get(&back);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("only auditors read the audit trail"),
        "{}",
        refused.body
    );
    // A cookie holding anything but a console-worthy token is nobody.
    let mut forger = Browser::new(&a.env);
    forger.set_cookie("tessera_console", "eyJhbGciOiJub25lIn0.e30.");
    assert_eq!(location(&forger.get("/console/events")), "/console");
    let unknown = forger.get("/console/login?as=admin");
    assert_eq!(unknown.status, 400, "{}", unknown.body);
}

/// Starts the chain check from the trail page's form and follows the page, which
/// reloads itself while the check runs, until the check has ended; its text.
fn check_chain(browser: &mut Browser, form: &[(String, String)]) -> String {
    let started = browser.post("/console/trail/verify", form);
    assert_eq!(started.status, 303, "{}", started.body);
    assert_eq!(location(&started), "/console/trail");
    for _ in 0..100 {
        let page = browser.get("/console/trail");
        assert_eq!(page.status, 200, "{}", page.body);
        if page.body.contains("http-equiv=\"refresh\"") {
            assert!(page.body.contains("<progress"), "{}", page.body);
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        assert!(page.body.contains("finished"), "{}", page.body);
        return page.body;
    }
    panic!("the chain check did not end");
}
