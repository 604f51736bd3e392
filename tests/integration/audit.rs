//! ATNA: every token request leaves an audit record, durable before the answer, in
//! both encodings, without secrets; the hash chain exposes tampering.

use serde_json::{json, Value};
use tessera_atna::{to_dicom_xml, to_fhir, Event, Outcome, Record};
use tessera_iam::jose::{Algorithm, SigningKey};

use crate::support::{assert_valid_fhir, decode_jwt, eventually, now, Client, Env, Server};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

pub fn records(env: &Env) -> Vec<Record> {
    tessera::cli::open_store(&env.loaded())
        .unwrap()
        .audit_since(tessera_types::UnixTime(0))
        .unwrap()
}

/// The hash-chained trail in the database once it holds at least `n` records: records
/// are durable in the journal before the answer and reach the database just after.
pub fn records_eventually(env: &Env, n: usize) -> Vec<Record> {
    matching_eventually(env, n, |_| true)
}

/// The records of the trail that match, once there are at least `n` of them (or 10 s
/// have passed).
pub fn matching_eventually(env: &Env, n: usize, wanted: impl Fn(&Record) -> bool) -> Vec<Record> {
    eventually(
        std::time::Duration::from_secs(10),
        || records(env).into_iter().filter(&wanted).collect(),
        |trail: &Vec<Record>| trail.len() >= n,
    )
}

/// The token requests of the trail, once it holds at least `n` of them.
pub fn token_trail(env: &Env, n: usize) -> Vec<Record> {
    matching_eventually(env, n, |r| matches!(r.event, Event::TokenRequest { .. }))
}

/// The raw text of the installation's audit journals.
pub fn journal_text(env: &Env) -> String {
    let dir = env.path("data/audit-journal");
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        // The records end where the zeros written ahead of them begin.
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        text.push_str(std::str::from_utf8(&bytes[..end]).unwrap());
    }
    text
}

/// The records in the installation's audit journals: what was durable when answered.
pub fn journaled(env: &Env) -> Vec<Record> {
    journal_text(env)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn parts(record: &Record) -> (Option<&str>, Option<&str>, &str, Option<&str>) {
    let Event::TokenRequest {
        client_id,
        token_id,
        request,
        error,
        ..
    } = &record.event
    else {
        panic!("not a token request: {record:?}")
    };
    (
        client_id.as_deref(),
        token_id.as_deref(),
        request.as_str(),
        error.as_deref(),
    )
}

#[test]
fn every_token_request_is_recorded_before_the_answer_and_without_secrets() {
    let env = Env::new();
    let (crt, key) = env.add_mtls_client("tcu", &["--scope", "system/*.rs"]);
    let secret = env.add_secret_client(&[
        "--client-id",
        "app",
        "--auth",
        "client_secret_post",
        "--scope",
        "system/*.rs",
    ]);
    let (assertion_key, _) = SigningKey::generate_ec(Algorithm::ES256).unwrap();
    env.add_key_client("be", &assertion_key, "system/*.rs");
    let _server = env.start();

    // Granted over mTLS: the record is there the moment the answer is.
    let reply = Client::new(&env, Some((&crt, &key)))
        .token(&[("grant_type", "client_credentials"), ("client_id", "tcu")]);
    let jti = decode_jwt(reply.json()["access_token"].as_str().unwrap()).1["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let journal = journaled(&env);
    assert_eq!(journal.len(), 1, "durable before the answer");
    let trail = token_trail(&env, 1);
    assert_eq!(trail, journal, "then in the database's trail");
    let granted = &trail[0];
    assert_eq!(granted.outcome, Outcome::Success);
    assert_eq!(parts(granted).0, Some("tcu"));
    assert_eq!(parts(granted).1, Some(jti.as_str()));
    assert_eq!(granted.client_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(granted.observer, env.issuer());
    let fhir = to_fhir(granted);
    assert_valid_fhir(&fhir);
    assert_eq!(fhir["subtype"][0]["code"], "ITI-71");
    assert_eq!(fhir["entity"][1]["what"]["identifier"]["value"], jti);
    let xml = to_dicom_xml(granted);
    assert!(
        xml.contains(&format!("ParticipantObjectID=\"{jti}\"")),
        "{xml}"
    );

    // Refused with a wrong secret: recorded as a failure; the secret tried is nowhere.
    let anonymous = Client::new(&env, None);
    anonymous
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "wrong-secret-xyz"),
        ])
        .oauth_error(401, "invalid_client");
    assert_eq!(
        anonymous
            .token(&[
                ("grant_type", "client_credentials"),
                ("client_id", "app"),
                ("client_secret", &secret)
            ])
            .status,
        200
    );
    // A client assertion: its claims are evidence, its signature is not kept.
    let assertion = assertion_key
        .sign("JWT", &json!({"iss": "be", "sub": "be", "aud": env.token_url(), "exp": now() + 60, "jti": "a-1"}))
        .unwrap();
    let signature = assertion.rsplit('.').next().unwrap().to_owned();
    assert_eq!(
        anonymous
            .token(&[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    tessera_iam::request::JWT_BEARER_ASSERTION
                ),
                ("client_assertion", &assertion),
            ])
            .status,
        200
    );
    // Malformed requests are recorded too ...
    anonymous
        .token(&[("client_id", "app")])
        .oauth_error(400, "invalid_request");
    // ... a malformed Authorization header, read before the body ...
    anonymous
        .send(
            "POST",
            "/realms/cara/protocol/openid-connect/token",
            None,
            &[
                ("Authorization", "Basic %%%not-base64"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some("grant_type=client_credentials&client_id=app"),
        )
        .oauth_error(400, "invalid_request");
    // ... and a realm that does not exist.
    let nowhere = anonymous.post_form(
        "/realms/nowhere/protocol/openid-connect/token",
        &[("grant_type", "client_credentials"), ("client_id", "app")],
    );
    assert_eq!(nowhere.status, 404);

    let trail = token_trail(&env, 7);
    assert_eq!(trail.len(), 7, "{trail:#?}");
    let header = &trail[5];
    assert_eq!(header.outcome, Outcome::MinorFailure);
    assert_eq!(parts(header).0, Some("app"));
    assert!(
        parts(header).3.unwrap().contains("Authorization"),
        "{header:?}"
    );
    let unknown = &trail[6];
    assert_eq!(unknown.outcome, Outcome::MinorFailure);
    assert!(parts(unknown).3.unwrap().contains("nowhere"), "{unknown:?}");
    let Event::TokenRequest { token_endpoint, .. } = &unknown.event else {
        unreachable!()
    };
    assert!(token_endpoint.ends_with("/realms/nowhere/protocol/openid-connect/token"));
    assert_eq!(journaled(&env), trail);
    let refused = &trail[1];
    assert_eq!(refused.outcome, Outcome::MinorFailure);
    assert_eq!(parts(refused).0, Some("app"));
    assert!(parts(refused).3.unwrap().starts_with("invalid_client"));
    assert_valid_fhir(&to_fhir(refused));
    assert_eq!(to_fhir(refused)["outcome"], "4");
    let stored: String = trail
        .iter()
        .map(tessera_atna::canonical)
        .collect::<String>()
        + &journal_text(&env);
    assert!(
        !stored.contains("wrong-secret-xyz") && !stored.contains(&secret),
        "a secret reached the trail"
    );
    assert!(
        !stored.contains(&signature),
        "an assertion signature reached the trail"
    );
    assert!(parts(&trail[3])
        .2
        .contains(&assertion[..assertion.len() - signature.len()]));
    assert_eq!(
        parts(&trail[4]).3.map(|e| e.starts_with("invalid_request")),
        Some(true)
    );
    for record in &trail {
        assert_valid_fhir(&to_fhir(record));
    }
}

#[test]
fn the_hash_chain_names_the_first_tampered_or_missing_event() {
    let env = Env::new();
    let (crt, key) = env.add_mtls_client("tcu", &["--scope", "system/*.rs"]);
    let _server = env.start();
    let client = Client::new(&env, Some((&crt, &key)));
    for _ in 0..4 {
        assert_eq!(
            client
                .token(&[("grant_type", "client_credentials"), ("client_id", "tcu")])
                .status,
            200
        );
    }
    // The certificate's issue and the registration (admin actions), four token requests.
    assert_eq!(records_eventually(&env, 6).len(), 6);
    assert_eq!(
        env.cli(&["audit", "verify"]).unwrap().trim(),
        "audit trail intact: 6 events in 1 chain verified, 0 signed checkpoints\n\
         6 events are newer than the last checkpoint: the next one signs them"
    );
    // The CLI and the server it runs beside append to the same chain: {host}:{port}.
    let chain = env.loaded().audit_chain();
    assert!(chain.ends_with(&format!(":{}", env.port)), "{chain}");

    let export = env
        .cli(&["audit", "export", "--since", "2020-01-01"])
        .unwrap();
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|e| e["resourceType"] == "AuditEvent"));
    assert_eq!(
        env.cli(&["audit", "export", "--since", "2999-01-01"])
            .unwrap(),
        ""
    );
    assert!(env
        .cli(&["audit", "export", "--since", "yesterday"])
        .is_err());

    // Someone with database access rewrites the third event.
    assert_eq!(env.sql("UPDATE audit_events SET record = replace(record, '\"tcu\"', '\"someone\"') WHERE seq = 3"), 1);
    let broken = env.cli(&["audit", "verify"]).unwrap_err().to_string();
    assert!(
        broken.contains(&format!("audit chain {chain} broken at event {chain}#3"))
            && broken.contains("2 events before it verify"),
        "{broken}"
    );

    // Put it back; then delete the newest event instead: the chain head catches that.
    env.sql(
        "UPDATE audit_events SET record = replace(record, '\"someone\"', '\"tcu\"') WHERE seq = 3",
    );
    assert!(env.cli(&["audit", "verify"]).is_ok());
    // A row put after the newest without moving the chain's head is caught too.
    let head: i64 = env.sql_values("SELECT CAST(seq AS TEXT) AS value FROM audit_chains")[0]
        .parse()
        .unwrap();
    env.sql(&format!(
        "INSERT INTO audit_events (chain, seq, id, recorded, record, hash) \
         SELECT chain, {}, 'forged', recorded, record, hash FROM audit_events WHERE seq = {head}",
        head + 1
    ));
    let forged = env.cli(&["audit", "verify"]).unwrap_err().to_string();
    assert!(forged.contains(&format!("#{}", head + 1)), "{forged}");
    env.sql(&format!(
        "DELETE FROM audit_events WHERE seq = {}",
        head + 1
    ));
    assert!(env.cli(&["audit", "verify"]).is_ok());
    env.sql("DELETE FROM audit_events WHERE seq = 6");
    let missing = env.cli(&["audit", "verify"]).unwrap_err().to_string();
    assert!(missing.contains(&format!("{chain}#6")), "{missing}");
}

/// Each instance appends to a hash chain of its own (so instances sharing a database
/// never wait for each other's appends); signed checkpoints of every chain's head catch
/// what a chain alone cannot: a chain rewritten with recomputed hashes, cut short or
/// removed whole, and checkpoints altered, removed or signed by an untrusted key.
#[test]
fn instances_append_to_chains_of_their_own_under_signed_checkpoints() {
    let env = Env::new();
    env.configure(|c| c.audit.checkpoint_seconds = 1);
    let (crt, key) = env.add_mtls_client("tcu", &["--scope", "system/*.rs"]);
    let second_port = crate::support::free_port();
    let second_base = format!("https://127.0.0.1:{second_port}");
    let first_chain = env.loaded().audit_chain();
    let second_chain = first_chain.replace(&format!(":{}", env.port), &format!(":{second_port}"));
    {
        let _first = env.start();
        let _second = Server::start_with(&env, |l| l.config.server.listen.set_port(second_port));
        // Both instances take token requests at the same time, in two rounds a
        // checkpoint apart.
        for round in 0..2 {
            std::thread::scope(|s| {
                for base in [env.base_url(), second_base.clone()] {
                    let client = Client::new(&env, Some((&crt, &key))).to(&base);
                    s.spawn(move || {
                        for _ in 0..10 {
                            let reply = client.token(&[
                                ("grant_type", "client_credentials"),
                                ("client_id", "tcu"),
                            ]);
                            assert_eq!(reply.status, 200, "{}", reply.body);
                        }
                    });
                }
            });
            let wanted = 2 + 20 * (round + 1);
            assert_eq!(records_eventually(&env, wanted).len(), wanted);
            eventually(
                std::time::Duration::from_secs(10),
                || checkpoints(&env),
                |signed| *signed > round,
            );
        }
    }
    // Each instance wrote a last checkpoint as it stopped: it vouches for every event.
    let signed = checkpoints(&env);
    assert!(signed >= 2, "{signed} checkpoints");
    let verified = env.cli(&["audit", "verify"]).unwrap();
    assert_eq!(
        verified.trim(),
        format!(
            "audit trail intact: 42 events in 2 chains verified, {signed} signed checkpoints \
             (signed by CN=localhost)"
        ),
    );
    let chain_of = |chain: &str| {
        env.sql_values(&format!(
            "SELECT CAST(seq AS TEXT) || '|' || record AS value FROM audit_events \
             WHERE chain = '{chain}' ORDER BY seq"
        ))
        .into_iter()
        .map(|row| {
            let (seq, record) = row.split_once('|').unwrap();
            (seq.parse::<i64>().unwrap(), record.to_owned())
        })
        .collect::<Vec<_>>()
    };
    let ours = chain_of(&first_chain);
    let theirs = chain_of(&second_chain);
    // The CLI's two registrations and the first instance's requests; the second's.
    assert_eq!((ours.len(), theirs.len()), (22, 20));
    assert_eq!(verify_fails(&env, |_| {}), None, "untouched");

    // Someone with database access rewrites the second instance's third event and
    // recomputes every hash after it: the chain itself verifies, the checkpoints do not.
    let error = verify_fails(&env, |env| {
        let mut hash = String::new();
        for (seq, record) in &theirs {
            let record = match seq {
                3 => record.replace("\"tcu\"", "\"someone\""),
                _ => record.clone(),
            };
            hash = tessera_atna::chain_hash(&hash, &record);
            env.sql(&format!(
                "UPDATE audit_events SET record = '{}', hash = '{hash}' \
                 WHERE chain = '{second_chain}' AND seq = {seq}",
                record.replace('\'', "''")
            ));
        }
        env.sql(&format!(
            "UPDATE audit_chains SET hash = '{hash}' WHERE chain = '{second_chain}'"
        ));
    });
    let error = error.unwrap();
    assert!(
        error.contains("audit checkpoints do not vouch for the trail")
            && error.contains(&format!("event {second_chain}#"))
            && error.contains("the chain was rewritten up to it"),
        "{error}"
    );
    // Its newest events removed, and its head moved back to match.
    let error = verify_fails(&env, |env| {
        env.sql(&format!(
            "DELETE FROM audit_events WHERE chain = '{second_chain}' AND seq > 15"
        ));
        env.sql(&format!(
            "UPDATE audit_chains SET seq = 15, hash = (SELECT hash FROM audit_events \
             WHERE chain = '{second_chain}' AND seq = 15) WHERE chain = '{second_chain}'"
        ));
    });
    let error = error.unwrap();
    assert!(
        error.contains(&format!(
            "chain {second_chain} has 15 events, but 20 at checkpoint"
        )),
        "{error}"
    );
    // The whole chain removed.
    let error = verify_fails(&env, |env| {
        env.sql(&format!(
            "DELETE FROM audit_events WHERE chain = '{second_chain}'"
        ));
        env.sql(&format!(
            "DELETE FROM audit_chains WHERE chain = '{second_chain}'"
        ));
    });
    let error = error.unwrap();
    assert!(
        error.contains(&format!("chain {second_chain} is in checkpoint"))
            && error.contains("no longer in the trail"),
        "{error}"
    );
    // The first checkpoint removed: the next one names a predecessor that is not there.
    let error = verify_fails(&env, |env| {
        env.sql("DELETE FROM audit_checkpoints WHERE n = 1");
    });
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .contains("checkpoint 2 is the first one kept"),
        "{error:?}"
    );
    // A checkpoint's content changed (its time), its signature kept: the newest one
    // (nothing links to it, so only its signature tells), or an earlier one (whose
    // successor's link breaks as well, and is what is named first).
    let altered = |n: usize| {
        move |env: &Env| {
            let jws = env
                .sql_values(&format!(
                    "SELECT jws AS value FROM audit_checkpoints WHERE n = {n}"
                ))
                .remove(0);
            let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
            let mut content: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
            content["at"] = json!(content["at"].as_i64().unwrap() + 1);
            parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&content).unwrap());
            let jws = parts.join(".");
            env.sql(&format!(
                "UPDATE audit_checkpoints SET jws = '{jws}' WHERE n = {n}"
            ));
        }
    };
    let error = verify_fails(&env, altered(signed)).unwrap();
    assert!(
        error.contains(&format!(
            "checkpoint {signed}: its signature does not verify"
        )),
        "{error}"
    );
    let error = verify_fails(&env, altered(1)).unwrap();
    assert!(
        error.contains("checkpoint 2 does not name checkpoint 1 as its predecessor"),
        "{error}"
    );
    // Signed by a key whose certificate the configured CAs did not issue.
    let (foreign, _) = crate::support::foreign_ca_client(&env);
    env.configure(|c| c.audit.checkpoint_ca = vec![foreign.clone()]);
    let error = env.cli(&["audit", "verify"]).unwrap_err().to_string();
    assert!(
        error.contains("checkpoint 1: its signer certificate is not trusted when it was written"),
        "{error}"
    );
    env.configure(|c| c.audit.checkpoint_ca = vec!["pki/ca.crt".into()]);
    assert!(env.cli(&["audit", "verify"]).is_ok());
}

/// An installation from before chains (one chain for the trail, one head row) keeps its
/// trail: the migration makes it the chain `main`, which still verifies, and new events
/// go to the instance's own chain beside it.
#[test]
fn the_single_chain_of_an_older_installation_becomes_the_chain_main() {
    let env = Env::new();
    let (crt, key) = env.add_mtls_client("tcu", &["--scope", "system/*.rs"]);
    {
        let _server = env.start();
        let client = Client::new(&env, Some((&crt, &key)));
        for _ in 0..3 {
            let reply = client.token(&[("grant_type", "client_credentials"), ("client_id", "tcu")]);
            assert_eq!(reply.status, 200);
        }
        assert_eq!(records_eventually(&env, 5).len(), 5);
    }
    // Back to the schema before chains, the trail as that version kept it.
    let chain = env.loaded().audit_chain();
    let dir = if crate::support::on_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    let down = std::fs::read_to_string(format!(
        "{}/migrations/{dir}/2026-12-03-000015_audit_chains/down.sql",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    env.sql_script(&format!(
        "UPDATE audit_events SET chain = 'main' WHERE chain = '{chain}';
         UPDATE audit_chains SET chain = 'main' WHERE chain = '{chain}';
         UPDATE audit_repository_cursors SET chain = 'main' WHERE chain = '{chain}';
         {down}
         DELETE FROM __diesel_schema_migrations WHERE version = '20261203000015';"
    ));
    assert_eq!(
        env.sql_values("SELECT CAST(seq AS TEXT) AS value FROM audit_chain"),
        ["5"]
    );
    // The next start migrates it.
    assert_eq!(
        env.cli(&["audit", "verify"]).unwrap().lines().next(),
        Some("audit trail intact: 5 events in 1 chain verified, 0 signed checkpoints")
    );
    {
        let _server = env.start();
        let reply = Client::new(&env, Some((&crt, &key)))
            .token(&[("grant_type", "client_credentials"), ("client_id", "tcu")]);
        assert_eq!(reply.status, 200);
        assert_eq!(records_eventually(&env, 6).len(), 6);
    }
    let mut heads =
        env.sql_values("SELECT chain || ' ' || CAST(seq AS TEXT) AS value FROM audit_chains");
    heads.sort_by_key(|head| !head.starts_with("main"));
    assert_eq!(heads, ["main 5".to_owned(), format!("{chain} 1")]);
    assert!(env
        .cli(&["audit", "verify"])
        .unwrap()
        .starts_with("audit trail intact: 6 events in 2 chains verified"));
}

fn checkpoints(env: &Env) -> usize {
    env.sql_values("SELECT CAST(count(*) AS TEXT) AS value FROM audit_checkpoints")[0]
        .parse()
        .unwrap()
}

/// What `audit verify` says after `tamper`; the trail is then put back as it was.
fn verify_fails(env: &Env, tamper: impl FnOnce(&Env)) -> Option<String> {
    const TABLES: [&str; 3] = ["audit_events", "audit_chains", "audit_checkpoints"];
    for table in TABLES {
        env.sql(&format!(
            "CREATE TABLE saved_{table} AS SELECT * FROM {table}"
        ));
    }
    tamper(env);
    let said = env.cli(&["audit", "verify"]).err().map(|e| e.to_string());
    for table in TABLES {
        env.sql(&format!("DELETE FROM {table}"));
        env.sql(&format!("INSERT INTO {table} SELECT * FROM saved_{table}"));
        env.sql(&format!("DROP TABLE saved_{table}"));
    }
    said
}

#[test]
fn introspections_and_aim_lookups_are_audited_too() {
    const MPI: &str =
        "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1";
    const UNKNOWN: &str =
        "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/00000000-0000-4000-8000-000000000000";
    let env = Env::new();
    let printed = env.cli(&["account", "add", "--mpi-id", MPI]).unwrap();
    let account = printed
        .lines()
        .find_map(|l| l.strip_prefix("account").map(str::trim))
        .unwrap()
        .to_owned();
    let (crt, key) = env.add_mtls_client("gw", &["--scope", "introspection aim/resolve"]);
    let _server = env.start();
    let c = Client::new(&env, Some((&crt, &key)));
    let reply = c.token(&[
        ("grant_type", "client_credentials"),
        ("client_id", "gw"),
        ("scope", "aim/resolve"),
    ]);
    let token = reply.json()["access_token"].as_str().unwrap().to_owned();
    let jti = crate::support::jti(&token);
    let introspected = c.post_form(
        "/realms/cara/protocol/openid-connect/token/introspect",
        &[("token", &token), ("client_id", "gw")],
    );
    assert_eq!(introspected.json()["active"], true, "{}", introspected.body);
    let resolve = "/aim/api/v1/query/get-account-urn-from-mpi-id-urn";
    let found = c.post_json(
        resolve,
        Some(&token),
        &json!({ "mpiIdUrn": MPI }).to_string(),
    );
    assert_eq!(found.status, 200, "{}", found.body);
    let missing = c.post_json(
        resolve,
        Some(&token),
        &json!({ "mpiIdUrn": UNKNOWN }).to_string(),
    );
    assert_eq!(missing.status, 404);

    // Account and client registrations and the client's certificate, a token, an
    // introspection, two lookups.
    let trail: Vec<Record> = records_eventually(&env, 7)
        .into_iter()
        .filter(|r| {
            matches!(
                r.event,
                Event::Introspection { .. } | Event::AccountLookup { .. }
            )
        })
        .collect();
    assert_eq!(trail.len(), 3, "{trail:?}");
    match &trail[0].event {
        Event::Introspection {
            caller,
            token_id,
            error,
            ..
        } => {
            assert_eq!(caller.as_deref(), Some("gw"));
            assert_eq!(token_id.as_deref(), Some(jti.as_str()));
            assert!(error.is_none());
        }
        other => panic!("{other:?}"),
    }
    match (&trail[1].event, &trail[2].event) {
        (
            Event::AccountLookup {
                account: found,
                status: 200,
                token: Some(used),
                queried,
                ..
            },
            Event::AccountLookup {
                account: None,
                status: 404,
                ..
            },
        ) => {
            assert_eq!(found.as_deref(), Some(account.as_str()));
            assert_eq!(used.jti, jti);
            assert_eq!(queried.as_deref(), Some(MPI));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(trail[2].outcome, Outcome::MinorFailure);
    for record in &trail {
        let event = to_fhir(record);
        assert_valid_fhir(&event);
        assert!(to_dicom_xml(record).contains("<EventID csd-code=\"110112\""));
    }
    assert_eq!(to_fhir(&trail[0])["subtype"][0]["code"], "ITI-102");
    assert_eq!(
        to_fhir(&trail[1])["entity"][0]["what"]["identifier"]["value"],
        json!(account)
    );

    // RFC 7009 over HTTP: a revocation, one refused (not the caller's token), and one
    // of a token nobody knows (200 all the same) each leave a record.
    let revoke = "/realms/cara/protocol/openid-connect/revoke";
    let other = env.secret_token("other", &["--scope", "system/Patient.rs"], &[]);
    assert_eq!(
        c.post_form(revoke, &[("token", &token), ("client_id", "gw")])
            .status,
        200
    );
    c.post_form(revoke, &[("token", &other), ("client_id", "gw")])
        .oauth_error(400, "unauthorized_client");
    assert_eq!(
        c.post_form(revoke, &[("token", "no-such-token"), ("client_id", "gw")])
            .status,
        200
    );
    let revocations = matching_eventually(&env, 3, |r| {
        matches!(r.event, Event::TokenRevocation { .. })
    });
    assert_eq!(revocations.len(), 3, "{revocations:?}");
    let facts: Vec<(Outcome, Option<&str>, Option<&str>, bool)> = revocations
        .iter()
        .map(|r| match &r.event {
            Event::TokenRevocation {
                caller,
                token_id,
                error,
                ..
            } => (
                r.outcome,
                caller.as_deref(),
                token_id.as_deref(),
                error.is_some(),
            ),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        facts,
        vec![
            (Outcome::Success, Some("gw"), Some(jti.as_str()), false),
            (Outcome::MinorFailure, Some("gw"), None, true),
            (Outcome::Success, Some("gw"), None, false),
        ]
    );
    for record in &revocations {
        assert_valid_fhir(&to_fhir(record));
        assert!(to_dicom_xml(record).contains(r#"<EventID csd-code="110113""#));
    }
    assert!(!revocations
        .iter()
        .any(|r| format!("{r:?}").contains(&token)));
}

fn sample(id: &str, client: &str) -> Record {
    Record {
        id: id.into(),
        recorded: tessera_types::UnixTime(now()),
        observer: "https://127.0.0.1/realms/cara".into(),
        client_address: None,
        outcome: Outcome::Success,
        event: Event::TokenRequest {
            client_id: Some(client.into()),
            token_id: Some(format!("jti-{id}")),
            scope: None,
            token_endpoint: "https://127.0.0.1/realms/cara/protocol/openid-connect/token".into(),
            request: "grant_type=client_credentials".into(),
            error: None,
        },
    }
}

#[test]
fn a_journal_left_by_a_crash_is_replayed_once_at_start() {
    let env = Env::new();
    let store = tessera::cli::open_store(&env.loaded()).unwrap();
    // The crashed process had journaled three records; the first had reached the database.
    let journaled: Vec<Record> = ["e-1", "e-2", "e-3"]
        .iter()
        .map(|id| sample(id, "crashed"))
        .collect();
    store.append_audit(&journaled[..1]).unwrap();
    let dir = env.path("data/audit-journal");
    std::fs::create_dir_all(&dir).unwrap();
    let mut text: String = journaled
        .iter()
        .map(|r| tessera_atna::canonical(r) + "\n")
        .collect();
    text.push_str("{\"id\":\"cut-sho"); // the write the crash interrupted
    std::fs::write(dir.join("0.journal"), text).unwrap();

    // The server answers while its drainer replays the journal, before anything else.
    let _server = env.start();
    assert_eq!(Client::new(&env, None).get("/healthz").status, 200);
    let trail = records_eventually(&env, 3);
    assert_eq!(
        trail, journaled,
        "each journaled record exactly once, in order"
    );
    // Counted just after they are stored.
    let replayed = "\ntessera_audit_journal_replayed_records_total 2\n";
    let metrics = eventually(
        std::time::Duration::from_secs(10),
        || Client::new(&env, None).get("/metrics").body,
        |metrics| metrics.contains(replayed),
    );
    assert!(
        metrics.contains(replayed),
        "the two the database lacked: {metrics}"
    );
    assert_eq!(
        env.cli(&["audit", "verify"]).unwrap().trim(),
        "audit trail intact: 3 events in 1 chain verified, 0 signed checkpoints\n\
         3 events are newer than the last checkpoint: the next one signs them"
    );
    // Emptied once replayed (just after its records are stored).
    let left = eventually(
        std::time::Duration::from_secs(10),
        || journal_text(&env),
        String::is_empty,
    );
    assert_eq!(left, "", "a replayed journal is emptied");
}

/// The drainer's transactions are large: on SQLite their rows go 64 a statement, the
/// rest one by one; on PostgreSQL up to a thousand a statement. Either way each row is in
/// its place in the chain and the chain verifies.
#[test]
fn a_large_append_keeps_every_record_in_order_on_its_chain() {
    let env = Env::new();
    let store = tessera::cli::open_store(&env.loaded()).unwrap();
    let batch = |from: usize, count: usize| -> Vec<Record> {
        (from..from + count)
            .map(|n| sample(&format!("e-{n:04}"), "bulk"))
            .collect()
    };
    // Two whole statements and 22 rows; then one row; then 64 exactly.
    let (first, second, third) = (batch(0, 150), batch(150, 1), batch(151, 64));
    for records in [&first, &second, &third] {
        store.append_audit(records).unwrap();
    }
    let appended: Vec<Record> = [first, second, third].concat();
    assert_eq!(records(&env), appended);
    let order = env.sql_values(
        "SELECT id || ' ' || CAST(seq AS TEXT) AS value FROM audit_events ORDER BY seq",
    );
    let expected: Vec<String> = (0..215).map(|n| format!("e-{n:04} {}", n + 1)).collect();
    assert_eq!(order, expected);
    assert_eq!(
        env.cli(&["audit", "verify"]).unwrap().trim(),
        "audit trail intact: 215 events in 1 chain verified, 0 signed checkpoints\n\
         215 events are newer than the last checkpoint: the next one signs them"
    );
}

/// `tessera serve` as its own process (to be killed or signalled), once it answers.
fn serve_process(env: &Env) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["--config", env.config.to_str().unwrap(), "serve"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let probe = Client::new(env, None);
    let started = std::time::Instant::now();
    while probe.try_get("/healthz").is_err() {
        assert!(started.elapsed().as_secs() < 30, "the server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

#[test]
fn killing_the_server_under_load_loses_no_audit_record() {
    use std::sync::{Arc, Mutex};
    let env = Env::new();
    let (crt, key) = env.add_mtls_client("tcu", &["--scope", "system/*.rs"]);
    let mut child = serve_process(&env);
    // Four clients ask for tokens as fast as they can; the server is killed meanwhile.
    let answered = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (crt, key, answered) = (crt.clone(), key.clone(), answered.clone());
            let client = Client::new(&env, Some((&crt, &key)));
            std::thread::spawn(move || loop {
                let reply = client.try_post_form(
                    "/realms/cara/protocol/openid-connect/token",
                    &[("grant_type", "client_credentials"), ("client_id", "tcu")],
                    None,
                );
                match reply {
                    Ok(reply) if reply.status == 200 => {
                        let jti = decode_jwt(reply.json()["access_token"].as_str().unwrap()).1
                            ["jti"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                        answered.lock().unwrap().push(jti);
                    }
                    _ => return,
                }
            })
        })
        .collect();
    while answered.lock().unwrap().len() < 200 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    child.wait().unwrap();
    for worker in workers {
        worker.join().unwrap();
    }
    let answered = answered.lock().unwrap().clone();

    // A new instance replays what the killed one journaled but had not moved on, in
    // the background: it answers meanwhile.
    let _server = env.start();
    let lost = eventually(
        std::time::Duration::from_secs(10),
        || {
            let trail = records(&env);
            let recorded: std::collections::HashSet<&str> = trail
                .iter()
                .filter(|r| matches!(r.event, Event::TokenRequest { .. }))
                .filter_map(|r| parts(r).1)
                .collect();
            answered
                .iter()
                .filter(|jti| !recorded.contains(jti.as_str()))
                .cloned()
                .collect::<Vec<String>>()
        },
        Vec::is_empty,
    );
    assert!(
        lost.is_empty(),
        "{} of {} answered tokens have no audit record",
        lost.len(),
        answered.len()
    );
    assert!(env.cli(&["audit", "verify"]).is_ok());
}

#[test]
fn the_node_records_its_start_and_stop() {
    let env = Env::new();
    let mut child = serve_process(&env);
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exited = eventually(
        std::time::Duration::from_secs(30),
        || child.try_wait().unwrap(),
        Option::is_some,
    );
    assert!(exited.is_some(), "the server did not stop on SIGTERM");
    // A clean stop leaves its records in the database; the journal is drained.
    let activity: Vec<bool> = records(&env)
        .iter()
        .filter_map(|r| match &r.event {
            Event::ApplicationActivity { started, .. } => Some(*started),
            _ => None,
        })
        .collect();
    assert_eq!(activity, vec![true, false]);
    let start = records(&env).into_iter().next().unwrap();
    let fhir = to_fhir(&start);
    assert_eq!(fhir["type"]["code"], "110100");
    assert_eq!(fhir["subtype"][0]["code"], "110120");
    assert_valid_fhir(&fhir);
    assert!(to_dicom_xml(&start).contains("<EventTypeCode csd-code=\"110120\""));
}

#[test]
fn operator_changes_are_audited_and_failed_ones_are_not() {
    const MPI: &str =
        "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1";
    let env = Env::new();
    env.add_secret_client(&[
        "--client-id",
        "app",
        "--auth",
        "client_secret_basic",
        "--scope",
        "system/*.rs",
    ]);
    env.cli(&["client", "disable", "app"]).unwrap();
    assert!(env
        .cli(&[
            "client",
            "add",
            "--client-id",
            "app",
            "--auth",
            "client_secret_basic"
        ])
        .is_err());
    env.cli(&["realm", "add", "second"]).unwrap();
    env.cli(&["keys", "rotate"]).unwrap();
    env.cli(&["account", "add", "--mpi-id", MPI]).unwrap();
    let (crt, _) = env.issue_client("lab-device");
    env.cli(&["pki", "revoke", crt.to_str().unwrap()]).unwrap();
    let revoked = tessera::pki::describe(&crt);
    assert!(
        revoked.starts_with("serial ") && revoked.contains("CN=lab-device"),
        "{revoked}"
    );
    let changes: Vec<(String, String)> = records(&env)
        .iter()
        .filter_map(|r| match &r.event {
            Event::AdminAction {
                command, target, ..
            } => Some((command.clone(), target.clone())),
            _ => None,
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("client add", "app"),
        ("client disable", "app"),
        ("realm add", "second"),
        ("keys rotate", "(default realm)"),
        ("account add", MPI),
        ("pki issue-client", "lab-device"),
        ("pki revoke", revoked.as_str()),
    ]
    .iter()
    .map(|(c, t)| (c.to_string(), t.to_string()))
    .collect();
    assert_eq!(changes, expected, "the refused duplicate left no record");
    let trail = records(&env);
    let registration = to_fhir(&trail[0]);
    assert_eq!(registration["type"]["code"], "110113");
    assert_eq!(registration["subtype"][0]["code"], "110137");
    assert_eq!(
        registration["entity"][0]["what"]["identifier"]["value"],
        "app"
    );
    assert_valid_fhir(&registration);
    let account = to_fhir(&trail[4]);
    assert_eq!(account["type"]["code"], "110110");
    assert_eq!(account["action"], "C");
    assert_valid_fhir(&account);
    assert!(to_dicom_xml(&trail[3]).contains("<EventTypeCode csd-code=\"110129\""));
    assert!(env.cli(&["audit", "verify"]).is_ok());
}

#[test]
fn journal_segments_are_deleted_once_the_database_holds_them() {
    let env = Env::new();
    let store = tessera::cli::open_store(&env.loaded()).unwrap();
    let dir = env.path("rotating-journal");
    // A tiny rotation size: many segments begin and end meanwhile.
    let writer = tessera_store::AuditWriter::start_with(store, &dir, 2048, 16_384).unwrap();
    let records_in = |dir: &std::path::Path| -> usize {
        let mut left = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            // The journal thread may delete a segment meanwhile.
            let Ok(bytes) = std::fs::read(entry.unwrap().path()) else {
                continue;
            };
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            assert!(
                bytes[end..].iter().all(|b| *b == 0),
                "zeros after the records"
            );
            left += bytes[..end].iter().filter(|b| **b == b'\n').count();
        }
        left
    };
    let mut ids = Vec::new();
    let mut submit = |n: usize| {
        let record = sample(&format!("rot-{n}"), "tcu");
        ids.push(record.id.clone());
        writer.submit(record).wait().unwrap();
    };
    for n in 0..100 {
        submit(n);
    }
    // Once the drainer has moved them, the next append deletes the full segments.
    std::thread::sleep(std::time::Duration::from_millis(300));
    submit(100);
    let left = eventually(
        std::time::Duration::from_secs(5),
        || records_in(&dir),
        |left| *left < 50,
    );
    assert!(left < 50, "{left} records still journaled");
    for n in 101..200 {
        submit(n);
    }
    drop(writer); // a clean stop: everything reaches the database, no segment is left
    assert_eq!(records_in(&dir), 0);
    let stored: Vec<String> = records(&env).into_iter().map(|r| r.id).collect();
    assert_eq!(stored, ids, "each record once, in order");
    // A restart finds nothing to replay.
    let store = tessera::cli::open_store(&env.loaded()).unwrap();
    drop(tessera_store::AuditWriter::start_with(store, &dir, 2048, 16_384).unwrap());
    assert_eq!(records(&env).len(), 200);
}

/// Replaying a journal skips what the trail holds, looking only at the trail between
/// the earliest and the latest record replayed: copies at either end are found.
#[test]
fn a_replay_finds_stored_copies_at_both_ends_of_its_time_span() {
    let env = Env::new();
    let store = tessera::cli::open_store(&env.loaded()).unwrap();
    let at = |id: &str, t: i64| Record {
        recorded: tessera_types::UnixTime(t),
        ..sample(id, "tcu")
    };
    store
        .append_audit(&[at("first", 100), at("last", 300), at("later", 400)])
        .unwrap();
    let replayed: Vec<_> = [at("first", 100), at("middle", 200), at("last", 300)]
        .iter()
        .map(tessera_store::Journaled::of)
        .collect();
    let missing: Vec<String> = store
        .audit_records_missing(&replayed)
        .unwrap()
        .iter()
        .map(|r| r.id().to_owned())
        .collect();
    assert_eq!(missing, ["middle"]);
}

/// While the database is away the journal keeps taking records and the drainer holds
/// only a bounded number of them in memory; the rest it reads back from the journal's
/// segments once the database is back, each record once and in order. Stopping while it
/// is still away leaves them to the next start.
#[test]
fn a_database_outage_holds_few_records_in_memory_and_loses_none() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Duration;
    let env = Env::new();
    let dir = env.path("outage-journal");
    let start = || {
        let store = tessera::cli::open_store(&env.loaded()).unwrap();
        // Small segments and at most 40 records in memory: the outage spans many segments.
        tessera_store::AuditWriter::start_with(store, &dir, 4096, 40).unwrap()
    };
    let writer = start();
    let stats = writer.stats();
    let mut ids = Vec::new();
    let mut submit = |writer: &tessera_store::AuditWriter, n: usize| {
        let record = sample(&format!("out-{n}"), "tcu");
        ids.push(record.id.clone());
        writer.submit(record).wait().unwrap();
    };
    let drained = |n: u64| {
        eventually(
            Duration::from_secs(20),
            || stats.drained.load(SeqCst),
            |drained| *drained >= n,
        )
    };
    for n in 0..10 {
        submit(&writer, n);
    }
    assert_eq!(drained(10), 10);
    // The database away for the drainer: every append fails.
    env.sql("ALTER TABLE audit_chains RENAME TO audit_chains_away");
    for n in 10..400 {
        submit(&writer, n);
        assert!(stats.in_memory.load(SeqCst) <= 40, "record {n}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        stats.drained.load(SeqCst),
        10,
        "nothing reached the database"
    );
    assert_eq!(records(&env).len(), 10);
    assert_eq!(stats.reread.load(SeqCst), 0, "nothing read back yet");
    env.sql("ALTER TABLE audit_chains_away RENAME TO audit_chains");
    assert_eq!(drained(400), 400);
    let reread = stats.reread.load(SeqCst);
    assert!(
        (350..=390).contains(&reread),
        "{reread} read back from disk"
    );
    assert_eq!(stats.in_memory.load(SeqCst), 0);
    // Caught up, the drainer holds records in memory again.
    for n in 400..420 {
        submit(&writer, n);
    }
    assert_eq!(drained(420), 420);
    assert_eq!(stats.reread.load(SeqCst), reread);
    // Away again, and the instance stops meanwhile: the journal keeps what the database
    // lacks, and the next start moves it.
    env.sql("ALTER TABLE audit_chains RENAME TO audit_chains_away");
    for n in 420..600 {
        submit(&writer, n);
    }
    drop(writer);
    assert_eq!(records(&env).len(), 420);
    env.sql("ALTER TABLE audit_chains_away RENAME TO audit_chains");
    // A start stopped at once leaves what it did not replay to the next, which skips
    // what it did.
    drop(start());
    let restarted = start(); // its drainer replays the journal while it runs
    let stored: Vec<String> = records_eventually(&env, 600)
        .into_iter()
        .map(|r| r.id)
        .collect();
    drop(restarted);
    assert_eq!(stored, ids, "each record once, in order");
    assert!(env.cli(&["audit", "verify"]).is_ok());
}

/// Every kind of event, as the DICOM audit message it becomes: valid against the
/// DICOM PS3.15 A.5.1 schema, succeeded and failed, with and without optional facts.
#[test]
fn every_event_kind_is_a_schema_valid_dicom_audit_message() {
    use tessera_atna::{AimTransaction, TokenUse};
    // Exhaustive: a new kind of event does not compile until it is listed here.
    fn kind(event: &Event) -> &'static str {
        match event {
            Event::TokenRequest { .. } => "token",
            Event::FhirRequest { .. } => "fhir",
            Event::Introspection { .. } => "introspection",
            Event::TokenRevocation { .. } => "revocation",
            Event::RepositoryRequest { .. } => "repository",
            Event::AdminAction { .. } => "admin",
            Event::ApplicationActivity { .. } => "activity",
            Event::UserAuthentication { .. } => "login",
            Event::AccountLookup { .. } => "aim",
        }
    }
    const KINDS: usize = 9;
    let token = || {
        Some(TokenUse {
            jti: "3ZCRX77v-XmgKziJgvtSjg".into(),
            client_id: "bestclinic-tcu".into(),
            sub: "u-1".into(),
            iss: "https://h/realms/cara".into(),
            subject_name: Some("Dr. <A> & B".into()),
        })
    };
    let s = |text: &str| Some(text.to_owned());
    let endpoint = || "https://h/fhir/p1".to_owned();
    let events = vec![
        Event::TokenRequest {
            client_id: s("tcu"),
            token_id: s("jti-1"),
            scope: s("system/*.rs"),
            token_endpoint: "https://h/realms/cara/protocol/openid-connect/token".into(),
            request: "grant_type=client_credentials".into(),
            error: None,
        },
        Event::TokenRequest {
            client_id: None,
            token_id: None,
            scope: None,
            token_endpoint: "https://h/realms/x/protocol/openid-connect/token".into(),
            request: String::new(),
            error: s("invalid_request: malformed Authorization header"),
        },
        Event::FhirRequest {
            interaction: "read".into(),
            token: token(),
            partition: "p1".into(),
            patient: s("urn:uuid:1"),
            resource: s("https://h/fhir/p1/Patient/a"),
            query: None,
            endpoint: endpoint(),
            status: 200,
        },
        Event::FhirRequest {
            interaction: "search-type".into(),
            token: token(),
            partition: "p1".into(),
            patient: s("urn:uuid:1"),
            resource: None,
            query: s("code=4548-4&_count=10"),
            endpoint: endpoint(),
            status: 200,
        },
        Event::FhirRequest {
            interaction: "create".into(),
            token: None,
            partition: "p1".into(),
            patient: None,
            resource: None,
            query: None,
            endpoint: endpoint(),
            status: 401,
        },
        Event::Introspection {
            caller: s("gw"),
            token_id: s("jti-1"),
            endpoint: endpoint(),
            error: None,
        },
        Event::Introspection {
            caller: None,
            token_id: None,
            endpoint: endpoint(),
            error: s("invalid_client"),
        },
        Event::TokenRevocation {
            caller: s("gw"),
            token_id: s("refresh-family:f1"),
            endpoint: endpoint(),
            error: None,
        },
        Event::TokenRevocation {
            caller: None,
            token_id: None,
            endpoint: endpoint(),
            error: s("unauthorized_client"),
        },
        Event::RepositoryRequest {
            interaction: "search-type".into(),
            token: token(),
            query: s("date=ge2026-11-01"),
            endpoint: endpoint(),
            status: 200,
        },
        Event::RepositoryRequest {
            interaction: "create".into(),
            token: None,
            query: None,
            endpoint: endpoint(),
            status: 403,
        },
        Event::AdminAction {
            command: "client add".into(),
            target: "tcu".into(),
            operator: "root".into(),
        },
        Event::AdminAction {
            command: "account add".into(),
            target: "urn:uuid:1".into(),
            operator: "root".into(),
        },
        Event::AdminAction {
            command: "token revoke".into(),
            target: "jti-1".into(),
            operator: "root".into(),
        },
        Event::AdminAction {
            command: "keys rotate".into(),
            target: "cara".into(),
            operator: "root".into(),
        },
        Event::ApplicationActivity {
            started: true,
            node: "https://h".into(),
            version: "0.1.0".into(),
        },
        Event::ApplicationActivity {
            started: false,
            node: "https://h".into(),
            version: "0.1.0".into(),
        },
        Event::UserAuthentication {
            username: "anna".into(),
            realm: "https://h/realms/cara".into(),
            logout: false,
            error: None,
        },
        Event::UserAuthentication {
            username: "anna".into(),
            realm: "https://h/realms/cara".into(),
            logout: true,
            error: None,
        },
        Event::UserAuthentication {
            username: "mallory".into(),
            realm: "https://h/realms/cara".into(),
            logout: false,
            error: s("wrong password"),
        },
        Event::AccountLookup {
            transaction: AimTransaction::Resolution,
            token: token(),
            queried: s("urn:mpi:1"),
            account: s("urn:uuid:1"),
            endpoint: endpoint(),
            status: 200,
        },
        Event::AccountLookup {
            transaction: AimTransaction::Pixm,
            token: None,
            queried: None,
            account: None,
            endpoint: endpoint(),
            status: 404,
        },
    ];
    let kinds: std::collections::HashSet<&str> = events.iter().map(kind).collect();
    assert_eq!(kinds.len(), KINDS, "every kind of event has a sample");
    let records: Vec<Record> = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Record {
            id: format!("6b0f3a51-0c1e-4d2b-9a7f-{i:012}"),
            recorded: tessera_types::UnixTime(now()),
            observer: "https://h/realms/cara".into(),
            client_address: (i % 2 == 0).then(|| "192.0.2.7".to_owned()),
            outcome: if i % 3 == 0 {
                Outcome::MinorFailure
            } else {
                Outcome::Success
            },
            event,
        })
        .collect();
    let messages: Vec<String> = records.iter().map(to_dicom_xml).collect();
    crate::support::assert_valid_dicom(&messages);
    // ... and the FHIR form of each is valid R4.
    for record in &records {
        assert_valid_fhir(&to_fhir(record));
    }
}
