//! The facts an audit message is made of, independent of its encoding: the event's type
//! and subtypes, the participants (agents) and the participant objects (entities).
//! Events other than ITI-71 describe themselves as a [`Shape`], which renders as a FHIR
//! AuditEvent and as a DICOM audit message from the same facts.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::{timestamp, Record};

/// A code with its system and display. `dicom` names the system in DICOM's
/// `codeSystemName`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub system: &'static str,
    pub dicom: &'static str,
    pub display: &'static str,
}

pub const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
pub const IHE_TRANSACTIONS: &str = "urn:ihe:event-type-code";
pub const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const BALP_AGENT_TYPES: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes";

pub const fn dcm(code: &'static str, display: &'static str) -> Code {
    Code {
        code,
        system: DCM,
        dicom: "DCM",
        display,
    }
}

pub const fn ihe(code: &'static str, display: &'static str) -> Code {
    Code {
        code,
        system: IHE_TRANSACTIONS,
        dicom: "IHE Transactions",
        display,
    }
}

pub const APPLICATION: Code = dcm("110150", "Application");
pub const DESTINATION: Code = dcm("110152", "Destination Role ID");
/// BALP: the user an OAuth access token speaks for.
pub const OAUTH_USER: Code = Code {
    code: "UserOauthAgent",
    system: BALP_AGENT_TYPES,
    dicom: "BALP UserAgentTypes",
    display: "User OAuth Agent",
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub id: String,
    /// The system of `id` (for an OAuth user: the token's issuer).
    pub system: Option<String>,
    pub alt_id: Option<String>,
    pub role: Code,
    pub requestor: bool,
    /// IP address (network access point type 2).
    pub address: Option<String>,
    /// BALP: the access token's `jti` as `urn:ietf:params:oauth:jti:<jti>`.
    pub policy: Option<String>,
}

/// Participant object type (DICOM) / `audit-entity-type` (FHIR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    Person = 1,
    SystemObject = 2,
}

/// Participant object role (DICOM) / `object-role` (FHIR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectRole {
    Patient = 1,
    DomainResource = 4,
    SecurityResource = 13,
    Query = 24,
}

impl ObjectRole {
    fn display(self) -> &'static str {
        match self {
            ObjectRole::Patient => "Patient",
            ObjectRole::DomainResource => "Domain Resource",
            ObjectRole::SecurityResource => "Security Resource",
            ObjectRole::Query => "Query",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub kind: ObjectType,
    pub role: ObjectRole,
    pub id: String,
    /// A FHIR reference (URL) to the object, when it is a resource.
    pub reference: Option<String>,
    /// The query, for role Query (encoded as base64 in both formats).
    pub query: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// C R U D E.
    pub action: char,
    pub event: Code,
    pub subtypes: Vec<Code>,
    pub participants: Vec<Participant>,
    pub objects: Vec<Object>,
    /// Why it failed, when it did.
    pub outcome_text: Option<String>,
}

fn coding(code: &Code) -> Value {
    json!({ "system": code.system, "code": code.code, "display": code.display })
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

impl Shape {
    pub fn to_fhir(&self, record: &Record) -> Value {
        let agents: Vec<Value> = self
            .participants
            .iter()
            .map(|p| {
                let mut identifier = json!({ "value": p.id });
                if let Some(system) = &p.system {
                    identifier["system"] = json!(system);
                }
                let mut agent = json!({
                    "type": { "coding": [coding(&p.role)] },
                    "who": { "identifier": identifier },
                    "requestor": p.requestor,
                });
                if let Some(alt) = &p.alt_id {
                    agent["altId"] = json!(alt);
                }
                if let Some(address) = &p.address {
                    agent["network"] = json!({ "address": address, "type": "2" });
                }
                if let Some(policy) = &p.policy {
                    agent["policy"] = json!([policy]);
                }
                agent
            })
            .collect();
        let entities: Vec<Value> = self
            .objects
            .iter()
            .map(|o| {
                let kind = o.kind as u8;
                let role = o.role as u8;
                let mut entity = json!({
                    "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": kind.to_string() },
                    "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": role.to_string(), "display": o.role.display() },
                });
                let mut what = json!({ "identifier": { "value": o.id } });
                if let Some(reference) = &o.reference {
                    what["reference"] = json!(reference);
                }
                entity["what"] = what;
                if let Some(query) = &o.query {
                    entity["query"] = json!(base64(query));
                }
                entity
            })
            .collect();
        let mut event = json!({
            "resourceType": "AuditEvent",
            "id": record.id,
            "type": coding(&self.event),
            "subtype": self.subtypes.iter().map(coding).collect::<Vec<_>>(),
            "action": self.action.to_string(),
            "recorded": timestamp(record.recorded),
            "outcome": record.outcome.code().to_string(),
            "agent": agents,
            "source": { "observer": { "display": record.observer } },
        });
        if !entities.is_empty() {
            event["entity"] = Value::Array(entities);
        }
        if let Some(text) = &self.outcome_text {
            event["outcomeDesc"] = json!(text);
        }
        event
    }

    pub fn to_dicom(&self, record: &Record, xml: &mut String) {
        let code = |tag: &str, c: &Code| {
            format!(
                "<{tag} csd-code=\"{}\" codeSystemName=\"{}\" originalText=\"{}\"/>",
                escape(c.code),
                escape(c.dicom),
                escape(c.display)
            )
        };
        let _ = writeln!(
            xml,
            "  <EventIdentification EventActionCode=\"{}\" EventDateTime=\"{}\" EventOutcomeIndicator=\"{}\">",
            self.action,
            timestamp(record.recorded),
            record.outcome.code()
        );
        let _ = writeln!(xml, "    {}", code("EventID", &self.event));
        for subtype in &self.subtypes {
            let _ = writeln!(xml, "    {}", code("EventTypeCode", subtype));
        }
        if let Some(text) = &self.outcome_text {
            let _ = writeln!(
                xml,
                "    <EventOutcomeDescription>{}</EventOutcomeDescription>",
                escape(text)
            );
        }
        xml.push_str("  </EventIdentification>\n");
        for p in &self.participants {
            let mut attributes = format!("UserID=\"{}\"", escape(&p.id));
            if let Some(alt) = &p.alt_id {
                let _ = write!(attributes, " AlternativeUserID=\"{}\"", escape(alt));
            }
            let _ = write!(attributes, " UserIsRequestor=\"{}\"", p.requestor);
            if let Some(address) = &p.address {
                let _ = write!(
                    attributes,
                    " NetworkAccessPointID=\"{}\" NetworkAccessPointTypeCode=\"2\"",
                    escape(address)
                );
            }
            let _ = writeln!(xml, "  <ActiveParticipant {attributes}>");
            let _ = writeln!(xml, "    {}", code("RoleIDCode", &p.role));
            xml.push_str("  </ActiveParticipant>\n");
        }
        audit_source(record, xml);
        for o in &self.objects {
            let _ = writeln!(
                xml,
                "  <ParticipantObjectIdentification ParticipantObjectTypeCode=\"{}\" ParticipantObjectTypeCodeRole=\"{}\" ParticipantObjectID=\"{}\">",
                o.kind as u8,
                o.role as u8,
                escape(&o.id)
            );
            let id_type = match o.role {
                ObjectRole::Patient => dcm("2", "Patient Number"),
                ObjectRole::Query => self.subtypes.first().copied().unwrap_or(self.event),
                ObjectRole::SecurityResource => dcm("access-token", "Access Token jti"),
                ObjectRole::DomainResource => dcm("12", "URI"),
            };
            let _ = writeln!(xml, "    {}", code("ParticipantObjectIDTypeCode", &id_type));
            // PS3.15 A.5.1: each object has either a name or a query.
            match &o.query {
                Some(query) => {
                    let _ = writeln!(
                        xml,
                        "    <ParticipantObjectQuery>{}</ParticipantObjectQuery>",
                        base64(query)
                    );
                }
                None => {
                    let _ = writeln!(
                        xml,
                        "    <ParticipantObjectName>{}</ParticipantObjectName>",
                        escape(o.reference.as_deref().unwrap_or(&o.id))
                    );
                }
            }
            xml.push_str("  </ParticipantObjectIdentification>\n");
        }
    }
}

/// `AuditSourceIdentification`: the observing node, of DICOM audit source type 4
/// (application server process), as PS3.15 A.5.1 requires a type `code`.
pub(crate) fn audit_source(record: &Record, xml: &mut String) {
    let _ = writeln!(
        xml,
        "  <AuditSourceIdentification code=\"4\" AuditSourceID=\"{}\"/>",
        escape(&record.observer)
    );
}

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}
