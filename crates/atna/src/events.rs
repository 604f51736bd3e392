//! The shapes of the events other than ITI-71: FHIR Vault interactions (BALP's RESTful
//! patterns PatientRead, PatientQuery, PatientCreate, PatientUpdate, PatientDelete, with
//! the access token as BALP's OAUTHaccessTokenUse records it), refused authorizations as
//! security alerts, ITI-102 introspections and AIM lookups.

use serde::{Deserialize, Serialize};

use crate::shape::{
    dcm, ihe, Code, Object, ObjectRole, ObjectType, Participant, Shape, APPLICATION, DESTINATION,
    OAUTH_USER, RESTFUL_INTERACTION,
};
use crate::Record;

/// The access token a request was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUse {
    pub jti: String,
    pub client_id: String,
    pub sub: String,
    pub iss: String,
    /// The IUA `subject_name`, when the token carries one.
    pub subject_name: Option<String>,
}

impl TokenUse {
    /// The client (requestor) and the user the token speaks for, as BALP records them:
    /// the jti as policy, the user as issuer-scoped subject and `alias<user@issuer>`.
    fn participants(&self, address: Option<&str>) -> Vec<Participant> {
        let policy = Some(format!("urn:ietf:params:oauth:jti:{}", self.jti));
        let alias = self.subject_name.as_deref().unwrap_or(&self.client_id);
        vec![
            application(&self.client_id, address),
            Participant {
                id: self.sub.clone(),
                system: Some(self.iss.clone()),
                alt_id: Some(format!("{alias}<{}@{}>", self.sub, self.iss)),
                role: OAUTH_USER,
                requestor: true,
                address: None,
                policy,
            },
        ]
    }
}

/// The requesting application, by its client id.
fn application(id: &str, address: Option<&str>) -> Participant {
    Participant {
        id: id.to_owned(),
        system: None,
        alt_id: None,
        role: APPLICATION,
        requestor: true,
        address: address.map(str::to_owned),
        policy: None,
    }
}

/// Who asked (the token's client and user, or an anonymous caller) and the server asked.
fn requestors_and(
    token: Option<&TokenUse>,
    address: Option<&str>,
    endpoint: &str,
) -> Vec<Participant> {
    let mut participants = match token {
        Some(token) => token.participants(address),
        None => vec![application("anonymous", address)],
    };
    participants.push(server(endpoint));
    participants
}

fn server(endpoint: &str) -> Participant {
    Participant {
        id: endpoint.to_owned(),
        system: None,
        alt_id: None,
        role: DESTINATION,
        requestor: false,
        address: None,
        policy: None,
    }
}

/// A token (its `jti`, or a refresh token family) as the object of an event.
fn security_token(id: &str) -> Object {
    Object {
        kind: ObjectType::SystemObject,
        role: ObjectRole::SecurityResource,
        id: id.to_owned(),
        reference: None,
        query: None,
    }
}

fn patient(id: &str) -> Object {
    Object {
        kind: ObjectType::Person,
        role: ObjectRole::Patient,
        id: id.to_owned(),
        reference: None,
        query: None,
    }
}

fn query(text: &str) -> Object {
    Object {
        kind: ObjectType::SystemObject,
        role: ObjectRole::Query,
        id: "query".into(),
        reference: None,
        query: Some(text.to_owned()),
    }
}

const REST: Code = Code {
    code: "rest",
    system: "http://terminology.hl7.org/CodeSystem/audit-event-type",
    dicom: "HL7 audit-event-type",
    display: "Restful Operation",
};
const SECURITY_ALERT: Code = dcm("110113", "Security Alert");
const RESTRICTED_FUNCTION: Code = dcm("110132", "Use of Restricted Function");
const QUERY: Code = dcm("110112", "Query");

fn interaction_code(interaction: &str) -> Code {
    let (code, display) = match interaction {
        "read" => ("read", "read"),
        "vread" => ("vread", "vread"),
        "update" => ("update", "update"),
        "patch" => ("patch", "patch"),
        "delete" => ("delete", "delete"),
        "history-instance" => ("history-instance", "history-instance"),
        "history-type" => ("history-type", "history-type"),
        "create" => ("create", "create"),
        "search-type" => ("search-type", "search-type"),
        "batch" => ("batch", "batch"),
        "transaction" => ("transaction", "transaction"),
        _ => ("operation", "operation"),
    };
    Code {
        code,
        system: RESTFUL_INTERACTION,
        dicom: "HL7 restful-interaction",
        display,
    }
}

/// BALP's action for a FHIR interaction.
fn action(interaction: &str) -> char {
    match interaction {
        "create" => 'C',
        "read" | "vread" | "history-instance" => 'R',
        "update" | "patch" => 'U',
        "delete" => 'D',
        _ => 'E',
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn fhir_request(
    record: &Record,
    interaction: &str,
    token: Option<&TokenUse>,
    patient_id: Option<&str>,
    resource: Option<&str>,
    query_text: Option<&str>,
    endpoint: &str,
    status: u16,
) -> Shape {
    let participants = requestors_and(token, record.client_address.as_deref(), endpoint);
    let mut objects = Vec::new();
    if let Some(id) = patient_id {
        objects.push(patient(id));
    }
    if let Some(url) = resource {
        objects.push(Object {
            kind: ObjectType::SystemObject,
            role: ObjectRole::DomainResource,
            id: url.to_owned(),
            reference: Some(url.to_owned()),
            query: None,
        });
    }
    if let Some(text) = query_text {
        objects.push(query(text));
    }
    // A refused authorization is a security alert (ATNA), naming the interaction refused.
    let refused = status == 401 || status == 403;
    Shape {
        action: action(interaction),
        event: if refused { SECURITY_ALERT } else { REST },
        subtypes: if refused {
            vec![RESTRICTED_FUNCTION, interaction_code(interaction)]
        } else {
            vec![interaction_code(interaction)]
        },
        participants,
        objects,
        outcome_text: (status >= 400).then(|| format!("HTTP {status}")),
    }
}

pub(crate) fn introspection(
    record: &Record,
    caller: Option<&str>,
    token_id: Option<&str>,
    endpoint: &str,
    error: Option<&str>,
) -> Shape {
    let address = record.client_address.as_deref();
    let client = application(caller.unwrap_or("anonymous"), address);
    Shape {
        action: 'E',
        event: QUERY,
        subtypes: vec![ihe("ITI-102", "Introspect Token")],
        participants: vec![client, server(endpoint)],
        objects: token_id.map(security_token).into_iter().collect(),
        outcome_text: error.map(str::to_owned),
    }
}

/// RFC 7009: the client asked to end a token; the token (when one was revoked) is the
/// object whose security attributes changed, as for `tessera token revoke`.
pub(crate) fn token_revocation(
    record: &Record,
    caller: Option<&str>,
    token_id: Option<&str>,
    endpoint: &str,
    error: Option<&str>,
) -> Shape {
    let client = application(
        caller.unwrap_or("anonymous"),
        record.client_address.as_deref(),
    );
    Shape {
        action: 'U',
        event: SECURITY_ALERT,
        subtypes: vec![dcm("110135", "Object Security Attributes Changed")],
        participants: vec![client, server(endpoint)],
        objects: token_id.map(security_token).into_iter().collect(),
        outcome_text: error.map(str::to_owned),
    }
}

pub(crate) fn repository_request(
    record: &Record,
    interaction: &str,
    token: Option<&TokenUse>,
    query_text: Option<&str>,
    endpoint: &str,
    status: u16,
) -> Shape {
    let participants = requestors_and(token, record.client_address.as_deref(), endpoint);
    let feed = interaction == "create";
    Shape {
        action: if feed { 'C' } else { 'E' },
        event: if feed { dcm("110106", "Export") } else { QUERY },
        subtypes: vec![if feed {
            ihe("ITI-20", "Record Audit Event")
        } else {
            ihe("ITI-81", "Retrieve ATNA Audit Event")
        }],
        participants,
        objects: query_text.map(query).into_iter().collect(),
        outcome_text: (status >= 400).then(|| format!("HTTP {status}")),
    }
}

pub(crate) fn application_activity(started: bool, node: &str, version: &str) -> Shape {
    Shape {
        action: 'E',
        event: dcm("110100", "Application Activity"),
        subtypes: vec![if started {
            dcm("110120", "Application Start")
        } else {
            dcm("110121", "Application Stop")
        }],
        participants: vec![Participant {
            id: node.to_owned(),
            system: None,
            alt_id: Some(format!("tessera {version}")),
            role: APPLICATION,
            requestor: false,
            address: None,
            policy: None,
        }],
        objects: Vec::new(),
        outcome_text: None,
    }
}

/// DICOM 110114 User Authentication, Login (110122) or Logout (110123): the person as
/// requestor with the address they came from, the realm as the authenticating node.
pub(crate) fn user_authentication(
    record: &Record,
    username: &str,
    realm: &str,
    logout: bool,
    error: Option<&str>,
) -> Shape {
    Shape {
        action: 'E',
        event: dcm("110114", "User Authentication"),
        subtypes: vec![if logout {
            dcm("110123", "Logout")
        } else {
            dcm("110122", "Login")
        }],
        participants: vec![
            Participant {
                id: username.to_owned(),
                system: Some(realm.to_owned()),
                alt_id: None,
                role: dcm("110153", "Source Role ID"),
                requestor: true,
                address: record.client_address.clone(),
                policy: None,
            },
            server(realm),
        ],
        objects: Vec::new(),
        outcome_text: error.map(str::to_owned),
    }
}

/// A CLI change: security data are a Security Alert (DICOM 110113) naming what changed;
/// accounts and partitions are a Patient Record event (110110).
pub(crate) fn admin_action(command: &str, target: &str, operator: &str) -> Shape {
    let (event, subtype, role) = match command.split(' ').next().unwrap_or_default() {
        "account" | "partition" => (dcm("110110", "Patient Record"), None, ObjectRole::Patient),
        "client" | "user" => (
            SECURITY_ALERT,
            Some(dcm("110137", "User Security Attributes Changed")),
            ObjectRole::SecurityResource,
        ),
        "token" => (
            SECURITY_ALERT,
            Some(dcm("110135", "Object Security Attributes Changed")),
            ObjectRole::SecurityResource,
        ),
        _ => (
            SECURITY_ALERT,
            Some(dcm("110129", "Security Configuration")),
            ObjectRole::SecurityResource,
        ),
    };
    let kind = if role == ObjectRole::Patient {
        ObjectType::Person
    } else {
        ObjectType::SystemObject
    };
    Shape {
        action: if command.ends_with(" add") { 'C' } else { 'U' },
        event,
        subtypes: subtype.into_iter().collect(),
        participants: vec![Participant {
            id: operator.to_owned(),
            system: None,
            alt_id: Some(format!("tessera {command}")),
            role: APPLICATION,
            requestor: true,
            address: None,
            policy: None,
        }],
        objects: vec![Object {
            kind,
            role,
            id: target.to_owned(),
            reference: None,
            query: None,
        }],
        outcome_text: None,
    }
}

/// Which AIM transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AimTransaction {
    /// CARA's `get-account-urn-from-mpi-id-urn`.
    Resolution,
    /// IHE PIXm Query (ITI-83).
    Pixm,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn account_lookup(
    record: &Record,
    transaction: AimTransaction,
    token: Option<&TokenUse>,
    queried: Option<&str>,
    account: Option<&str>,
    endpoint: &str,
    status: u16,
) -> Shape {
    let participants = requestors_and(token, record.client_address.as_deref(), endpoint);
    let subtype = match transaction {
        AimTransaction::Resolution => Code {
            code: "get-account-urn-from-mpi-id-urn",
            system: "urn:tessera:aim",
            dicom: "CARA AIM",
            display: "Resolve Account URN from MPI-ID",
        },
        AimTransaction::Pixm => ihe("ITI-83", "Mobile Patient Identifier Cross-reference Query"),
    };
    let mut objects = Vec::new();
    if let Some(account) = account {
        objects.push(patient(account));
    }
    if let Some(queried) = queried {
        objects.push(query(queried));
    }
    Shape {
        action: 'E',
        event: QUERY,
        subtypes: vec![subtype],
        participants,
        objects,
        outcome_text: (status >= 400).then(|| format!("HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use tessera_types::UnixTime;

    use crate::{to_dicom_xml, to_fhir, Event, Outcome, Record, TokenUse};

    fn read(status: u16) -> Record {
        Record {
            id: "9b2f4c1e-0d7a-4f43-9a51-1c2d3e4f5a6b".into(),
            recorded: UnixTime(1_795_395_890),
            observer: "https://tessera.example/fhir".into(),
            client_address: Some("192.0.2.7".into()),
            outcome: crate::outcome_of_status(status),
            event: Event::FhirRequest {
                interaction: "read".into(),
                token: Some(TokenUse {
                    jti: "3ZCRX77v".into(),
                    client_id: "bestclinic-tcu".into(),
                    sub: "bestclinic-tcu".into(),
                    iss: "https://tessera.example/realms/cara".into(),
                    subject_name: Some("Dr. Anna Muster".into()),
                }),
                partition: "p-1".into(),
                patient: Some("urn:tessera:account:1".into()),
                resource: Some("https://tessera.example/fhir/p-1/Observation/o1".into()),
                query: None,
                endpoint: "https://tessera.example/fhir/p-1".into(),
                status,
            },
        }
    }

    #[test]
    fn a_vault_read_is_balp_patient_read_with_the_token() {
        let event = to_fhir(&read(200));
        assert_eq!(event["type"]["code"], "rest");
        assert_eq!(event["subtype"][0]["code"], "read");
        assert_eq!(event["action"], "R");
        assert_eq!(event["outcome"], "0");
        let user = &event["agent"][1];
        assert_eq!(user["type"]["coding"][0]["code"], "UserOauthAgent");
        assert_eq!(user["policy"][0], "urn:ietf:params:oauth:jti:3ZCRX77v");
        assert_eq!(
            user["who"]["identifier"]["system"],
            "https://tessera.example/realms/cara"
        );
        assert_eq!(
            user["altId"],
            "Dr. Anna Muster<bestclinic-tcu@https://tessera.example/realms/cara>"
        );
        assert_eq!(event["agent"][0]["network"]["address"], "192.0.2.7");
        assert_eq!(event["entity"][0]["role"]["code"], "1");
        assert_eq!(
            event["entity"][0]["what"]["identifier"]["value"],
            "urn:tessera:account:1"
        );
        assert_eq!(
            event["entity"][1]["what"]["reference"],
            "https://tessera.example/fhir/p-1/Observation/o1"
        );
        let xml = to_dicom_xml(&read(200));
        assert!(xml.contains("EventActionCode=\"R\""), "{xml}");
        assert!(xml.contains("<EventTypeCode csd-code=\"read\""), "{xml}");
        assert!(
            xml.contains("AlternativeUserID=\"Dr. Anna Muster&lt;bestclinic-tcu@"),
            "{xml}"
        );
        assert!(
            xml.contains(
                "ParticipantObjectTypeCodeRole=\"1\" ParticipantObjectID=\"urn:tessera:account:1\""
            ),
            "{xml}"
        );
    }

    #[test]
    fn a_refused_request_is_a_security_alert() {
        let event = to_fhir(&read(403));
        assert_eq!(event["type"]["code"], "110113");
        assert_eq!(event["subtype"][0]["code"], "110132");
        assert_eq!(event["subtype"][1]["code"], "read");
        assert_eq!(event["outcome"], "4");
        assert_eq!(event["outcomeDesc"], "HTTP 403");
        assert_eq!(crate::outcome_of_status(503), Outcome::SeriousFailure);
        assert!(to_dicom_xml(&read(401)).contains("<EventID csd-code=\"110113\""));
    }
}
