//! ATNA: the audit trail. Typed audit events, their two encodings (FHIR R4 AuditEvent
//! following IHE BALP, and the DICOM PS3.15 audit message that ATNA syslog carries), the
//! redaction of requests before they are recorded, and the hash chains and signed
//! checkpoints that make the stored trail tamper-evident.
//!
//! This crate must not depend on a web framework or a database library, and reads no
//! clock: every record carries the time it is given.

#![forbid(unsafe_code)]

pub mod checkpoint;
mod dicom;
mod events;
mod fhir;
pub mod plain;
pub mod shape;
pub mod syslog;

pub use checkpoint::{checkpoint_hash, Checkpoint, Head};
pub use dicom::to_dicom_xml;
pub use events::{AimTransaction, TokenUse};
pub use fhir::{feed_bundle, repository_copy, to_fhir};
use ring::digest;
use serde::{Deserialize, Serialize};
use tessera_types::UnixTime;

/// The vault partition that holds the audit repository's AuditEvents (ITI-81). `$` is
/// never part of a partition id, so no patient partition can be named so.
pub const REPOSITORY_PARTITION: &str = "$audit";

/// The AuditEvent search parameters the repository indexes (ITI-81's, and `_id`).
pub const REPOSITORY_PARAMS: [&str; 14] = [
    "_id",
    "date",
    "patient",
    "entity-id",
    "agent",
    "altid",
    "address",
    "policy",
    "type",
    "subtype",
    "outcome",
    "action",
    "entity-type",
    "entity-role",
];

/// What a caller may see of the audit repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryAccess {
    /// Every event (an auditor).
    All,
    /// Only events about this patient's account.
    Patient(String),
}

/// ITI-81 / ITI-20 authority from a token's scopes: `system/` or `user/` AuditEvent
/// scopes (v1 or v2; `s` to query) make an auditor, `system/AuditEvent.c` a feeding
/// node (an audit source is a machine: a person's token never feeds events);
/// `patient/AuditEvent.rs` with the token's `account` lets a patient read the events
/// about that account. A `*` resource type does not count: a clinical wildcard such as
/// `system/*.rs` is no licence to read everyone's audit trail.
pub fn repository_access(
    scope: &str,
    account: Option<&str>,
    feed: bool,
) -> Option<RepositoryAccess> {
    use tessera_types::smart::{Context, Permissions, SmartScope};
    let need = if feed {
        Permissions::CREATE
    } else {
        Permissions::SEARCH
    };
    let mut access = None;
    for text in scope.split(' ') {
        let Some(smart) = tessera_types::Scope::try_from(text)
            .ok()
            .and_then(|s| SmartScope::parse(&s))
        else {
            continue;
        };
        if smart.resource_type != tessera_types::smart::AUDIT_EVENT
            || !smart.permissions.contains(need)
            || smart.query.is_some()
        {
            continue;
        }
        match smart.context {
            Context::System => return Some(RepositoryAccess::All),
            Context::User if !feed => return Some(RepositoryAccess::All),
            Context::User => {}
            Context::Patient if !feed => {
                if let Some(account) = account {
                    access = Some(RepositoryAccess::Patient(account.to_owned()));
                }
            }
            Context::Patient => {}
        }
    }
    access
}

/// The outcome codes of DICOM and FHIR (`audit-event-outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Success,
    /// The request was refused (a client error).
    MinorFailure,
    /// The server failed.
    SeriousFailure,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::MinorFailure => 4,
            Outcome::SeriousFailure => 8,
        }
    }
}

/// What happened. Each variant knows its event type and subtype codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// ITI-71 Get Access Token, granted or refused (BALP `IHE.IUA.71`).
    TokenRequest {
        /// The client's id (or what it claimed, when refused).
        client_id: Option<String>,
        /// The granted token's `jti`; `None` when refused.
        token_id: Option<String>,
        scope: Option<String>,
        /// The token endpoint URL: the auth-server agent.
        token_endpoint: String,
        /// The request as sent, redacted by [`redact_token_request`].
        request: String,
        /// RFC 6749 error code and description, when refused.
        error: Option<String>,
    },
    /// ITI-72: an interaction at the FHIR Vault, allowed or refused (BALP PatientRead,
    /// PatientQuery, PatientCreate, PatientUpdate, PatientDelete; a refusal with 401 or
    /// 403 is a Security Alert).
    FhirRequest {
        /// The FHIR restful-interaction code (`read`, `search-type`, `create`, ...).
        interaction: String,
        /// The access token used, when one was accepted.
        token: Option<TokenUse>,
        partition: String,
        /// The Account URN the partition belongs to.
        patient: Option<String>,
        /// The resource's URL (`{base}/Type/id[/_history/n]`).
        resource: Option<String>,
        /// The search parameters, as sent.
        query: Option<String>,
        /// The partition's FHIR base URL.
        endpoint: String,
        /// The HTTP status answered.
        status: u16,
    },
    /// ITI-102 Introspect Token.
    Introspection {
        /// The authenticated caller (client id), if it authenticated.
        caller: Option<String>,
        /// The introspected token's `jti`, when it was active.
        token_id: Option<String>,
        endpoint: String,
        error: Option<String>,
    },
    /// RFC 7009 Token Revocation over HTTP, done or refused (the CLI's revocations are
    /// [`Event::AdminAction`]s).
    TokenRevocation {
        /// The client that asked (as it claimed, when refused).
        caller: Option<String>,
        /// What was revoked: an access token's `jti` or `refresh-family:{id}`; `None`
        /// when nothing was (an unknown token is answered 200 all the same).
        token_id: Option<String>,
        endpoint: String,
        error: Option<String>,
    },
    /// ITI-81 Retrieve ATNA Audit Event: a query of the audit repository, or a feed of
    /// events into it (ITI-20 FHIR), allowed or refused.
    RepositoryRequest {
        /// `search-type` (ITI-81) or `create` (ITI-20 feed).
        interaction: String,
        token: Option<TokenUse>,
        query: Option<String>,
        endpoint: String,
        status: u16,
    },
    /// An operator changed security or patient identity data with the CLI (a client,
    /// realm, key, revocation, account or partition).
    AdminAction {
        /// The command, e.g. `client add`.
        command: String,
        /// What it changed: a client id, realm, jti, Account URN or MPI-ID.
        target: String,
        /// The operating-system user who ran it.
        operator: String,
    },
    /// The node started or stopped (DICOM Application Activity).
    ApplicationActivity {
        started: bool,
        /// The node's public URL.
        node: String,
        /// Tessera's version.
        version: String,
    },
    /// A person logged in (or failed to), or logged out, at a realm's login page
    /// (DICOM 110114 User Authentication).
    UserAuthentication {
        /// The username given (for a failure: as typed).
        username: String,
        /// The realm's issuer URL.
        realm: String,
        logout: bool,
        /// Why the login failed (wrong password, throttled, disabled).
        error: Option<String>,
    },
    /// AIM: an MPI-ID resolved to an Account URN (CARA resolution or PIXm ITI-83).
    AccountLookup {
        transaction: AimTransaction,
        token: Option<TokenUse>,
        /// The identifier asked about.
        queried: Option<String>,
        /// The Account URN found.
        account: Option<String>,
        endpoint: String,
        status: u16,
    },
}

impl Record {
    /// The encoding-independent facts of every event but ITI-71's.
    fn shape(&self) -> Option<shape::Shape> {
        Some(match &self.event {
            Event::TokenRequest { .. } => return None,
            Event::FhirRequest {
                interaction,
                token,
                patient,
                resource,
                query,
                endpoint,
                status,
                ..
            } => events::fhir_request(
                self,
                interaction,
                token.as_ref(),
                patient.as_deref(),
                resource.as_deref(),
                query.as_deref(),
                endpoint,
                *status,
            ),
            Event::Introspection {
                caller,
                token_id,
                endpoint,
                error,
            } => events::introspection(
                self,
                caller.as_deref(),
                token_id.as_deref(),
                endpoint,
                error.as_deref(),
            ),
            Event::TokenRevocation {
                caller,
                token_id,
                endpoint,
                error,
            } => events::token_revocation(
                self,
                caller.as_deref(),
                token_id.as_deref(),
                endpoint,
                error.as_deref(),
            ),
            Event::RepositoryRequest {
                interaction,
                token,
                query,
                endpoint,
                status,
            } => events::repository_request(
                self,
                interaction,
                token.as_ref(),
                query.as_deref(),
                endpoint,
                *status,
            ),
            Event::ApplicationActivity {
                started,
                node,
                version,
            } => events::application_activity(*started, node, version),
            Event::AdminAction {
                command,
                target,
                operator,
            } => events::admin_action(command, target, operator),
            Event::UserAuthentication {
                username,
                realm,
                logout,
                error,
            } => events::user_authentication(self, username, realm, *logout, error.as_deref()),
            Event::AccountLookup {
                transaction,
                token,
                queried,
                account,
                endpoint,
                status,
            } => events::account_lookup(
                self,
                *transaction,
                token.as_ref(),
                queried.as_deref(),
                account.as_deref(),
                endpoint,
                *status,
            ),
        })
    }
}

/// The outcome of an HTTP exchange by its status: 2xx/3xx success, 4xx the client's
/// failure, 5xx the server's.
pub fn outcome_of_status(status: u16) -> Outcome {
    match status {
        0..=399 => Outcome::Success,
        400..=499 => Outcome::MinorFailure,
        _ => Outcome::SeriousFailure,
    }
}

/// An audit record: an event with its identity, time, outcome and network facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// A stable id (UUID): delivery is at-least-once, receivers deduplicate by it.
    pub id: String,
    pub recorded: UnixTime,
    /// The node that observed the event (`AuditSourceIdentification`).
    pub observer: String,
    /// The peer's IP address.
    pub client_address: Option<String>,
    pub outcome: Outcome,
    #[serde(flatten)]
    pub event: Event,
}

/// Removes what an audit trail must never hold from a token request body: the client
/// secret, and the signature of a client assertion (its header and claims stay, as the
/// evidence of who asked). Returns the body in form encoding.
pub fn redact_token_request(pairs: &[(String, String)]) -> String {
    let mut out = String::with_capacity(pairs.iter().map(|(n, v)| n.len() + v.len() + 2).sum());
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        form_encode(&mut out, name);
        out.push('=');
        match name.as_str() {
            "client_secret" => form_encode(&mut out, "[redacted]"),
            "client_assertion" => match value.rsplit_once('.') {
                Some((signed_part, _)) => {
                    form_encode(&mut out, signed_part);
                    form_encode(&mut out, ".[signature redacted]");
                }
                None => form_encode(&mut out, "[redacted]"),
            },
            _ => form_encode(&mut out, value),
        }
    }
    out
}

/// Appends `text` form-encoded to `out` (every token request's audit record has one:
/// a `String` a byte, as this once made, was 3% of a token's CPU).
fn form_encode(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            other => {
                out.push('%');
                out.push(char::from(HEX[usize::from(other >> 4)]));
                out.push(char::from(HEX[usize::from(other & 0xf)]));
            }
        }
    }
}

/// The hash of the chain so far including `record`: SHA-256 over the previous hash and
/// the record's canonical JSON, hex. The first record's previous hash is empty.
pub fn chain_hash(previous: &str, canonical: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(previous.as_bytes());
    ctx.update(b"\n");
    ctx.update(canonical.as_bytes());
    tessera_types::hex(ctx.finish().as_ref())
}

/// The canonical text of a record, the one that is hashed and stored.
pub fn canonical(record: &Record) -> String {
    // serde_json writes struct fields in declaration order: stable for a given version.
    serde_json::to_string(record).unwrap_or_default()
}

/// RFC 3339 UTC, second precision, as FHIR `instant` and DICOM `EventDateTime` take it.
pub fn timestamp(t: UnixTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.0)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn issued() -> Record {
        Record {
            id: "4b7e6e1c-4c66-4a7e-9d8a-0c1b2d3e4f50".into(),
            recorded: UnixTime(1_795_395_890),
            observer: "https://tessera.example/realms/cara".into(),
            client_address: Some("192.0.2.7".into()),
            outcome: Outcome::Success,
            event: Event::TokenRequest {
                client_id: Some("bestclinic-tcu".into()),
                token_id: Some("3ZCRX77v-XmgKziJgvtSjg".into()),
                scope: Some("system/Patient.rs".into()),
                token_endpoint: "https://tessera.example/realms/cara/protocol/openid-connect/token"
                    .into(),
                request: "grant_type=client_credentials&client_id=bestclinic-tcu".into(),
                error: None,
            },
        }
    }

    #[test]
    fn a_record_reads_back_as_written_numbers_included() {
        // The journal and the chain check read records back; serde_json's exact numbers
        // (arbitrary_precision, for FHIR decimals) must not break a number inside the
        // flattened, tagged event.
        let mut record = issued();
        record.event = Event::RepositoryRequest {
            interaction: "search-type".into(),
            token: None,
            query: Some("date=ge2026".into()),
            endpoint: "https://tessera.example/audit".into(),
            status: 403,
        };
        for record in [issued(), record] {
            let text = serde_json::to_string(&record).unwrap();
            assert_eq!(
                serde_json::from_str::<Record>(&text).unwrap(),
                record,
                "{text}"
            );
        }
    }

    #[test]
    fn secrets_and_signatures_never_reach_the_trail() {
        let pairs = vec![
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("client_secret".to_owned(), "s3cret value".to_owned()),
            (
                "client_assertion".to_owned(),
                "aGVhZA.Y2xhaW1z.c2lnbmF0dXJl".to_owned(),
            ),
        ];
        let text = redact_token_request(&pairs);
        assert!(
            !text.contains("s3cret") && !text.contains("c2lnbmF0dXJl"),
            "{text}"
        );
        assert!(text.contains("aGVhZA.Y2xhaW1z."), "{text}");
        assert_eq!(
            text,
            "grant_type=client_credentials&client_secret=%5Bredacted%5D\
             &client_assertion=aGVhZA.Y2xhaW1z.%5Bsignature+redacted%5D"
        );
        // Each byte as a form encodes it: UTF-8 bytes, reserved characters, spaces.
        let pairs = [("scope".to_owned(), "a b/c*~é&=".to_owned())];
        assert_eq!(
            redact_token_request(&pairs),
            "scope=a+b%2Fc*%7E%C3%A9%26%3D"
        );
        let bare = [("client_assertion".to_owned(), "no dots".to_owned())];
        assert_eq!(
            redact_token_request(&bare),
            "client_assertion=%5Bredacted%5D"
        );
    }

    #[test]
    fn the_chain_depends_on_every_record_and_its_order() {
        let a = canonical(&issued());
        let mut other = issued();
        other.id = "other".into();
        let b = canonical(&other);
        let h1 = chain_hash("", &a);
        let h2 = chain_hash(&h1, &b);
        assert_eq!(h2, chain_hash(&chain_hash("", &a), &b));
        assert_ne!(h2, chain_hash(&chain_hash("", &b), &a));
        assert_ne!(h1, chain_hash("", &a.replace("Patient", "Patienx")));
        assert_eq!(h1.len(), 64);
    }

    #[test]
    fn repository_access_needs_an_audit_event_scope() {
        let all = Some(RepositoryAccess::All);
        let table: &[(&str, Option<&str>, bool, Option<RepositoryAccess>)] = &[
            ("system/AuditEvent.rs", None, false, all.clone()),
            ("user/AuditEvent.read", None, false, all.clone()),
            ("system/AuditEvent.r", None, false, None),
            ("system/*.rs", None, false, None),
            ("system/*.cruds", None, true, None),
            ("system/AuditEvent.c", None, true, all.clone()),
            ("user/AuditEvent.c", None, true, None),
            ("user/AuditEvent.cruds", None, true, None),
            ("system/AuditEvent.rs", None, true, None),
            (
                "patient/AuditEvent.rs",
                Some("urn:a"),
                false,
                Some(RepositoryAccess::Patient("urn:a".into())),
            ),
            ("patient/AuditEvent.rs", None, false, None),
            ("patient/AuditEvent.c", Some("urn:a"), true, None),
            ("system/AuditEvent.rs?outcome=4", None, false, None),
            (
                "patient/AuditEvent.rs system/AuditEvent.s",
                Some("urn:a"),
                false,
                all.clone(),
            ),
        ];
        for (scope, account, feed, expected) in table {
            assert_eq!(
                &repository_access(scope, *account, *feed),
                expected,
                "{scope} {feed}"
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(UnixTime(1_795_395_890)), "2026-11-23T01:04:50Z");
    }
}
