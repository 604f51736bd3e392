//! Audit events told plainly: who did what, to what, when, from where, and how it
//! ended, read from the FHIR AuditEvent the repository holds (so events other nodes fed
//! read the same as this node's own). The audit console shows these; a patient reads
//! their access log as sentences ("bestclinic-tcu read your Observation ... on ...").

use serde_json::Value;

/// The facts of one AuditEvent a person looks for first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub id: String,
    /// `recorded`, as the event gives it (an instant in UTC).
    pub recorded: String,
    /// The requesting application (client id), or the requestor's name.
    pub who: String,
    /// The person the application acted for, when a user token was used.
    pub user: Option<String>,
    /// The requestor's network address.
    pub address: Option<String>,
    /// The event type's display (e.g. `Restful Operation`, `User Authentication`).
    pub kind: String,
    /// The subtypes' displays or codes (e.g. `read`, `ITI-71`).
    pub subtypes: Vec<String>,
    /// The action code: C R U D E.
    pub action: String,
    /// The resource or object the event is about, as a reference or identifier.
    pub what: Option<String>,
    /// The search, for a query.
    pub query: Option<String>,
    pub succeeded: bool,
    /// The outcome's words: `Success`, or what the event says went wrong.
    pub outcome: String,
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

fn is_requestor(agent: &&Value) -> bool {
    agent.get("requestor").and_then(Value::as_bool) == Some(true)
}

fn agent_type(agent: &Value) -> Option<&str> {
    agent.pointer("/type/coding/0/code").and_then(Value::as_str)
}

fn identity(agent: &Value) -> Option<String> {
    agent
        .pointer("/who/identifier/value")
        .or_else(|| agent.pointer("/who/display"))
        .and_then(text)
}

/// The user of a BALP user agent: the name in `altId` (`alias<sub@issuer>`), else the
/// subject.
fn user_name(agent: &Value) -> Option<String> {
    if let Some(alt) = agent.get("altId").and_then(Value::as_str) {
        let alias = alt.split('<').next().unwrap_or(alt).trim();
        if !alias.is_empty() {
            return Some(alias.to_owned());
        }
    }
    identity(agent)
}

fn decode_base64(text: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The summary of a FHIR AuditEvent. Missing parts are left out, never invented.
pub fn summarize(event: &Value) -> Summary {
    let agents: Vec<&Value> = event
        .get("agent")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let requestors: Vec<&Value> = agents.iter().copied().filter(is_requestor).collect();
    let user_agent = requestors
        .iter()
        .find(|a| agent_type(a) == Some("UserOauthAgent"));
    let app = requestors
        .iter()
        .find(|a| agent_type(a) != Some("UserOauthAgent"))
        .or(user_agent);
    let who = app
        .and_then(|a| identity(a))
        .unwrap_or_else(|| "someone unnamed".into());
    let user = user_agent
        .and_then(|a| user_name(a))
        .filter(|name| name != &who);
    let address = requestors
        .iter()
        .find_map(|a| a.pointer("/network/address").and_then(text));
    let entities: Vec<&Value> = event
        .get("entity")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let role = |e: &&Value| {
        e.pointer("/role/code")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let what = entities
        .iter()
        .find(|e| role(e).as_deref() == Some("4"))
        .or_else(|| entities.iter().find(|e| role(e).as_deref() == Some("1")))
        .or_else(|| entities.iter().find(|e| role(e).as_deref() == Some("13")))
        .and_then(|e| {
            e.pointer("/what/reference")
                .or_else(|| e.pointer("/what/identifier/value"))
                .and_then(text)
        });
    let query = entities
        .iter()
        .find_map(|e| e.get("query").and_then(Value::as_str))
        .and_then(decode_base64);
    let subtypes = event
        .get("subtype")
        .and_then(Value::as_array)
        .map(|codings| {
            codings
                .iter()
                .filter_map(|c| c.get("display").or_else(|| c.get("code")).and_then(text))
                .collect()
        })
        .unwrap_or_default();
    let outcome_code = event.get("outcome").and_then(Value::as_str).unwrap_or("0");
    let succeeded = outcome_code == "0";
    let outcome = if succeeded {
        "Success".to_owned()
    } else {
        let level = match outcome_code {
            "4" => "Minor failure",
            "8" => "Serious failure",
            _ => "Major failure",
        };
        match event.get("outcomeDesc").and_then(Value::as_str) {
            Some(desc) => format!("{level}: {desc}"),
            None => level.to_owned(),
        }
    };
    Summary {
        id: event.get("id").and_then(text).unwrap_or_default(),
        recorded: event.get("recorded").and_then(text).unwrap_or_default(),
        who,
        user,
        address,
        kind: event
            .pointer("/type/display")
            .or_else(|| event.pointer("/type/code"))
            .and_then(text)
            .unwrap_or_default(),
        subtypes,
        action: event.get("action").and_then(text).unwrap_or_default(),
        what,
        query,
        succeeded,
        outcome,
    }
}

/// `2026-12-01T10:02:03Z` as `1 December 2026 at 10:02 UTC`; anything else unchanged.
pub fn when(recorded: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let parts = || -> Option<String> {
        let (date, time) = recorded.split_once('T')?;
        let mut ymd = date.split('-');
        let (year, month, day) = (ymd.next()?, ymd.next()?, ymd.next()?);
        let month = MONTHS.get(month.parse::<usize>().ok()?.checked_sub(1)?)?;
        let day: u32 = day.parse().ok()?;
        let hm = time.get(..5)?;
        let zone = if time.ends_with('Z') { " UTC" } else { "" };
        Some(format!("{day} {month} {year} at {hm}{zone}"))
    };
    parts().unwrap_or_else(|| recorded.to_owned())
}

/// What a resource reference names, for a person: `Observation/123` as
/// `Observation 123`; a full URL by its last two segments.
fn resource_words(reference: &str) -> String {
    let path = reference.split('?').next().unwrap_or(reference);
    let path = path.split("/_history").next().unwrap_or(path);
    let mut segments = path.rsplit('/');
    match (segments.next(), segments.next()) {
        (Some(id), Some(kind)) if kind.chars().next().is_some_and(char::is_uppercase) => {
            format!("{kind} {id}")
        }
        _ => reference.to_owned(),
    }
}

impl Summary {
    /// The event as one sentence addressed to the patient it is about.
    pub fn sentence_for_patient(&self) -> String {
        let verb = match (
            self.subtypes.first().map(String::as_str),
            self.action.as_str(),
        ) {
            (Some("read") | Some("vread"), _) => "read",
            (Some("search-type"), _) => "searched",
            (Some("create"), _) | (_, "C") => "added",
            (Some("update"), _) | (_, "U") => "changed",
            (Some("delete"), _) | (_, "D") => "deleted",
            (Some("history-instance") | Some("history-type"), _) => "read the history of",
            (_, "R") => "read",
            _ => "used",
        };
        let object = match &self.what {
            Some(reference) if reference.contains('/') => {
                format!("your {}", resource_words(reference))
            }
            _ => "your record".to_owned(),
        };
        let actor = match &self.user {
            Some(user) => format!("{} (for {user})", self.who),
            None => self.who.clone(),
        };
        let when = when(&self.recorded);
        if self.succeeded {
            format!("{actor} {verb} {object} on {when}.")
        } else {
            let attempt = match verb {
                "read the history of" => "read the history of",
                "searched" => "search",
                "added" => "add to",
                "changed" => "change",
                "deleted" => "delete",
                "used" => "use",
                other => other,
            };
            format!("{actor} tried to {attempt} {object} on {when} and was refused.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, Record, TokenUse};
    use tessera_types::UnixTime;

    fn vault_event(interaction: &str, status: u16, resource: Option<&str>) -> Value {
        let record = Record {
            id: "e1".into(),
            recorded: UnixTime(1_796_119_323),
            outcome: crate::outcome_of_status(status),
            observer: "tessera".into(),
            client_address: Some("192.0.2.7".into()),
            event: Event::FhirRequest {
                interaction: interaction.into(),
                token: Some(TokenUse {
                    jti: "j1".into(),
                    client_id: "bestclinic-tcu".into(),
                    sub: "u-42".into(),
                    iss: "https://tessera.example/realms/cara".into(),
                    subject_name: Some("Dr. Ada Muster".into()),
                }),
                partition: "p1".into(),
                patient: Some("urn:uuid:acc".into()),
                resource: resource.map(str::to_owned),
                query: None,
                endpoint: "https://tessera.example/fhir/p1".into(),
                status,
            },
        };
        crate::to_fhir(&record)
    }

    #[test]
    fn a_read_names_the_app_the_person_the_resource_and_the_time() {
        let event = vault_event(
            "read",
            200,
            Some("https://tessera.example/fhir/p1/Observation/bp-1"),
        );
        let summary = summarize(&event);
        assert_eq!(summary.who, "bestclinic-tcu");
        assert_eq!(summary.user.as_deref(), Some("Dr. Ada Muster"));
        assert_eq!(summary.address.as_deref(), Some("192.0.2.7"));
        assert!(summary.succeeded);
        assert_eq!(
            summary.sentence_for_patient(),
            "bestclinic-tcu (for Dr. Ada Muster) read your Observation bp-1 on 1 December 2026 at 10:02 UTC."
        );
    }

    #[test]
    fn a_refusal_says_the_attempt_failed() {
        let event = vault_event(
            "read",
            403,
            Some("https://tessera.example/fhir/p1/Observation/bp-1"),
        );
        let summary = summarize(&event);
        assert!(!summary.succeeded);
        assert!(
            summary.outcome.starts_with("Minor failure"),
            "{}",
            summary.outcome
        );
        assert_eq!(
            summary.sentence_for_patient(),
            "bestclinic-tcu (for Dr. Ada Muster) tried to read your Observation bp-1 on 1 December 2026 at 10:02 UTC and was refused."
        );
    }

    #[test]
    fn a_search_is_told_as_a_search_of_the_record() {
        let summary = summarize(&vault_event("search-type", 200, None));
        assert!(summary
            .sentence_for_patient()
            .starts_with("bestclinic-tcu (for Dr. Ada Muster) searched your record on"));
    }

    #[test]
    fn times_read_as_words_and_odd_values_are_kept() {
        assert_eq!(when("2026-01-05T07:09:00Z"), "5 January 2026 at 07:09 UTC");
        assert_eq!(when("2026-13-05T07:09:00Z"), "2026-13-05T07:09:00Z");
        assert_eq!(when("yesterday"), "yesterday");
    }

    #[test]
    fn an_event_without_agents_is_summarized_without_inventions() {
        let summary = summarize(&serde_json::json!({
            "resourceType": "AuditEvent", "id": "x", "recorded": "2026-01-01T00:00:00Z",
            "outcome": "8", "type": { "code": "110100" }
        }));
        assert_eq!(summary.who, "someone unnamed");
        assert_eq!(summary.what, None);
        assert_eq!(summary.outcome, "Serious failure");
        assert_eq!(summary.kind, "110100");
    }
}
