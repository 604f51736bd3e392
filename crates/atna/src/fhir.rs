//! FHIR R4 AuditEvent, following IHE BALP (`IHE.IUA.71` for ITI-71).

use serde_json::{json, Value};

use crate::{timestamp, Event, Outcome, Record};

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const BALP_AGENT_TYPES: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes";

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

/// The record as a FHIR R4 AuditEvent resource.
pub fn to_fhir(record: &Record) -> Value {
    let Event::TokenRequest {
        client_id,
        token_id,
        scope,
        token_endpoint,
        request,
        error,
    } = &record.event
    else {
        return record
            .shape()
            .map(|s| s.to_fhir(record))
            .unwrap_or(Value::Null);
    };
    let mut client = json!({
        "type": { "coding": [coding(DCM, "110150", "Application")] },
        "who": { "identifier": { "value": client_id.as_deref().unwrap_or("unknown") } },
        "requestor": true,
    });
    if let Some(address) = &record.client_address {
        client["network"] = json!({ "address": address, "type": "2" });
    }
    let server = json!({
        "type": { "coding": [coding(BALP_AGENT_TYPES, "AuthzOauthService", "OAuth Authorization Server")] },
        "who": { "display": token_endpoint },
        "requestor": false,
        "network": { "address": token_endpoint, "type": "5" },
    });
    let mut entities = vec![json!({
        "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
        "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "24", "Query"),
        "query": base64(request),
    })];
    if let Some(jti) = token_id {
        let mut detail = Vec::new();
        if let Some(scope) = scope {
            detail.push(json!({ "type": "scope", "valueString": scope }));
        }
        entities.push(json!({
                    "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
                    "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "13", "Security Resource"),
                    "what": { "identifier": { "value": jti } },
                    "detail": detail,
                }));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": record.id,
        "type": coding(DCM, "110114", "User Authentication"),
        "subtype": [coding("urn:ihe:event-type-code", "ITI-71", "Get Access Token")],
        "action": "E",
        "recorded": timestamp(record.recorded),
        "outcome": outcome(record.outcome),
        "agent": [client, server],
        "source": { "observer": { "display": record.observer } },
        "entity": entities,
    });
    if record.outcome == Outcome::Success {
        event["meta"] = json!({ "profile": ["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.IUA.71"] });
    } else {
        // IHE.IUA.71 profiles success; a refusal keeps its shape without claiming it.
        event["outcomeDesc"] = json!(error.as_deref().unwrap_or("refused"));
    }
    event
}

fn outcome(outcome: Outcome) -> String {
    outcome.code().to_string()
}

/// A record as an audit repository holds it: its FHIR AuditEvent, version 1, last
/// updated when it was recorded; and that instant in milliseconds. `audit verify`
/// derives it again to check the repository's copy.
pub fn repository_copy(record: &Record) -> (Value, i64) {
    let mut event = to_fhir(record);
    let last_updated = record.recorded.0.saturating_mul(1000);
    // `recorded` is whole seconds: FHIR's instant with millisecond precision.
    let instant = timestamp(record.recorded).replace('Z', ".000Z");
    event["meta"]["versionId"] = json!("1");
    event["meta"]["lastUpdated"] = json!(instant);
    (event, last_updated)
}

/// A batch Bundle that creates each record's AuditEvent under the record's id, so a
/// repository that keeps ids can tell a repeated delivery from a new event (the ITI-20
/// FHIR feed).
pub fn feed_bundle<'a>(records: impl IntoIterator<Item = &'a Record>) -> Value {
    let entries: Vec<Value> = records
        .into_iter()
        .map(|record| {
            json!({
                "fullUrl": format!("urn:uuid:{}", record.id),
                "resource": to_fhir(record),
                "request": {"method": "POST", "url": "AuditEvent"},
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_granted_token_is_a_balp_iua_71_event() {
        let event = to_fhir(&crate::tests::issued());
        assert_eq!(event["type"]["code"], "110114");
        assert_eq!(event["subtype"][0]["code"], "ITI-71");
        assert_eq!(event["outcome"], "0");
        assert_eq!(event["recorded"], "2026-11-23T01:04:50Z");
        assert_eq!(
            event["agent"][0]["who"]["identifier"]["value"],
            "bestclinic-tcu"
        );
        assert_eq!(event["agent"][0]["network"]["address"], "192.0.2.7");
        assert_eq!(
            event["agent"][1]["type"]["coding"][0]["code"],
            "AuthzOauthService"
        );
        assert_eq!(event["entity"][0]["role"]["code"], "24");
        assert_eq!(
            event["entity"][1]["what"]["identifier"]["value"],
            "3ZCRX77v-XmgKziJgvtSjg"
        );
        assert!(event.get("outcomeDesc").is_none());
    }

    #[test]
    fn a_refusal_has_a_failure_outcome_and_no_token() {
        let mut record = crate::tests::issued();
        record.outcome = Outcome::MinorFailure;
        let Event::TokenRequest {
            token_id, error, ..
        } = &mut record.event
        else {
            panic!("the fixture is a token request")
        };
        *token_id = None;
        *error = Some("invalid_client".into());
        let event = to_fhir(&record);
        assert_eq!(event["outcome"], "4");
        assert_eq!(event["outcomeDesc"], "invalid_client");
        assert_eq!(event["entity"].as_array().unwrap().len(), 1);
        assert!(event.get("meta").is_none());
    }
}
