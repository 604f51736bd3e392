//! The FHIR Vault (ITI-72) end to end: real tokens from the token endpoint, real HTTPS
//! (mutual TLS where the token is certificate-bound), the real database.

use serde_json::{json, Value};

pub(crate) use crate::support::{
    assert_valid_fhir, decode_jwt, Client, Env, Reply, Server, MPI_A, MPI_B,
};

mod access;
mod bundles;
mod conditional;
mod conformance;
mod crud;
mod export;
mod linked;
mod records;
mod search;

/// An installation with two patient partitions, `pa` and `pb`, and a running server.
struct Vault {
    // The server stops before its database goes (fields drop in order).
    _server: Server,
    env: Env,
}

fn vault() -> Vault {
    vault_configured(|_| {})
}

/// The same, with settings changed before the server starts.
fn vault_configured(change: impl FnOnce(&mut tessera::config::Config)) -> Vault {
    let env = Env::new();
    for (mpi, partition) in [(MPI_A, "pa"), (MPI_B, "pb")] {
        env.add_account(mpi, partition);
    }
    env.configure(change);
    Vault {
        _server: env.start(),
        env,
    }
}

impl Vault {
    /// A secret client with `scope` on `partitions`, and a token with all of it.
    fn token(&self, client_id: &str, scope: &str, partitions: &[&str]) -> String {
        let mut args = vec!["--scope", scope];
        for p in partitions {
            args.extend(["--partition", p]);
        }
        self.env.secret_token(client_id, &args, &[("scope", scope)])
    }

    fn client(&self) -> Client {
        Client::new(&self.env, None)
    }
}

fn outcome(reply: &Reply, status: u16, code: &str) -> String {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/fhir+json"));
    let body = reply.json();
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["code"], code, "{body}");
    body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn observation(code: &str, date: &str, category: &str, patient: &str) -> String {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": date,
        "valueQuantity": {"value": 5.4, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    })
    .to_string()
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A searchset and the pages its `next` links lead to, each fetched by `search` with
/// the path under `/fhir/pa/`.
fn every_page(first: Value, search: impl Fn(&str) -> Value) -> Vec<Value> {
    let mut pages = vec![first];
    while let Some(next) = pages.last().and_then(|page| {
        page["link"]
            .as_array()?
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned)
    }) {
        pages.push(search(next.split_once("/fhir/pa/").unwrap().1));
    }
    pages
}

fn create(client: &Client, token: &str, path: &str, body: &str) -> Value {
    let reply = client.send("POST", path, Some(token), &[], Some(body));
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()
}
