//! The authorization endpoint (RFC 6749 4.1, RFC 7636, SMART App Launch 2.2, IUA ITI-71
//! authorization code): the request as it arrives, its checks, and what happens next
//! for the person in front of the browser. The HTTP layer renders the [`Step`] it is
//! given; every decision is made here.

use std::collections::HashMap;

use tessera_types::smart::{Context, SmartScope};
use tessera_types::{AccountUrn, PartitionId, Scope, ScopeSet};

use crate::client::Client;
use crate::error::{OAuthError, OAuthErrorCode};
use crate::launch::{LaunchContext, LAUNCH_SCOPE};
use crate::user::{Role, User};

// The audit trail's resource type: `user/AuditEvent.rs` is the whole trail and is an
// auditor's alone.
use tessera_types::smart::AUDIT_EVENT;

/// PKCE `code_challenge_method` Tessera accepts (RFC 7636 4.2); `plain` is refused.
pub const PKCE_S256: &str = "S256";

/// Scopes that are not SMART resource scopes but that an app may ask a user for.
pub const USER_SCOPES: [&str; 8] = [
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
];

/// An authorization request's parameters, as sent (query string or POSTed form).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizationRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub aud: Option<String>,
    pub launch: Option<String>,
    pub nonce: Option<String>,
}

const PARAMETERS: [&str; 10] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "aud",
    "launch",
    "nonce",
];

impl AuthorizationRequest {
    /// The known parameters of decoded pairs; unknown ones are ignored (RFC 6749 3.1),
    /// a repeated one makes the request invalid.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut values: HashMap<&str, String> = HashMap::new();
        for (name, value) in pairs {
            let Some(known) = PARAMETERS.iter().find(|p| **p == name) else {
                continue;
            };
            if values.insert(known, value.clone()).is_some() {
                return Err(format!("the parameter '{name}' is repeated"));
            }
        }
        let mut take = |name: &str| values.remove(name).filter(|v| !v.is_empty());
        Ok(Self {
            response_type: take("response_type"),
            client_id: take("client_id"),
            redirect_uri: take("redirect_uri"),
            scope: take("scope"),
            state: take("state"),
            code_challenge: take("code_challenge"),
            code_challenge_method: take("code_challenge_method"),
            aud: take("aud"),
            launch: take("launch"),
            nonce: take("nonce"),
        })
    }

    /// The request as `name=value` pairs again, in a fixed order: the login and consent
    /// forms carry it back so that it is checked anew at every step.
    pub fn to_pairs(&self) -> Vec<(&'static str, &str)> {
        let values = [
            &self.response_type,
            &self.client_id,
            &self.redirect_uri,
            &self.scope,
            &self.state,
            &self.code_challenge,
            &self.code_challenge_method,
            &self.aud,
            &self.launch,
            &self.nonce,
        ];
        PARAMETERS
            .iter()
            .zip(values)
            .filter_map(|(name, value)| value.as_deref().map(|v| (*name, v)))
            .collect()
    }
}

/// Why an authorization request fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// The client or its redirect URI cannot be trusted: the user sees an error page
    /// and is sent nowhere (RFC 6749 4.1.2.1).
    Page(String),
    /// Any other failure goes back to the app's (verified) redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: OAuthError,
    },
}

/// What the FHIR resource server's audience names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The realm's FHIR audience as a whole; a partition is chosen later.
    Any { audience: String },
    /// One partition's FHIR base URL.
    Partition {
        audience: String,
        partition: PartitionId,
    },
}

/// A request whose client, redirect URI, PKCE challenge, audience and scopes passed.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub request: AuthorizationRequest,
    pub client: std::sync::Arc<Client>,
    pub redirect_uri: String,
    pub code_challenge: String,
    /// What the app asked for, within its registration.
    pub scope: ScopeSet,
    pub target: Target,
    /// The EHR launch the request continues (`launch=`), with its context.
    pub launch: Option<(String, LaunchContext)>,
}

impl ValidRequest {
    pub fn redirect_error(&self, code: OAuthErrorCode, description: &str) -> AuthorizeError {
        AuthorizeError::Redirect {
            redirect_uri: self.redirect_uri.clone(),
            state: self.request.state.clone(),
            error: OAuthError::new(code, description),
        }
    }

    /// Does the app need one patient's record (`launch/patient` or a `patient/` scope)?
    pub fn needs_patient(&self) -> bool {
        self.scope.iter().any(|s| {
            s.as_str() == "launch/patient"
                || SmartScope::parse(s).is_some_and(|smart| smart.context == Context::Patient)
        })
    }
}

/// RFC 7636 4.1/4.2: 43 to 128 characters of `[A-Za-z0-9-._~]`.
pub fn pkce_value_ok(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
}

/// The first checks, in RFC 6749's order: without a known client and one of its exact
/// redirect URIs nothing may be redirected anywhere.
pub fn check_client_and_redirect(
    request: &AuthorizationRequest,
    client: Option<&Client>,
) -> Result<String, AuthorizeError> {
    let page = |text: &str| AuthorizeError::Page(text.to_owned());
    if request.client_id.is_none() {
        return Err(page(
            "The request names no application (client_id is missing).",
        ));
    }
    let client = client
        .filter(|c| c.enabled)
        .ok_or_else(|| page("The application that sent you here is not registered."))?;
    let redirect_uri = request
        .redirect_uri
        .as_deref()
        .ok_or_else(|| page("The request has no redirect_uri."))?;
    if !client.has_redirect_uri(redirect_uri) {
        return Err(page(
            "The redirect_uri is not one the application registered; you were not sent back to it.",
        ));
    }
    Ok(redirect_uri.to_owned())
}

/// The checks that come after the redirect URI is trusted; failures go back to it.
/// `audience_of` tells whether an `aud` names the realm's FHIR audience or a partition;
/// `launch_of` finds a registered, unexpired, unused EHR launch.
pub fn check_request(
    request: AuthorizationRequest,
    client: std::sync::Arc<Client>,
    redirect_uri: String,
    audience_of: impl FnOnce(&str) -> Option<Target>,
    launch_of: impl FnOnce(&str) -> Option<LaunchContext>,
) -> Result<ValidRequest, AuthorizeError> {
    let fail = |code: OAuthErrorCode, description: &str| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: request.state.clone(),
        error: OAuthError::new(code, description),
    };
    if request.response_type.as_deref() != Some("code") {
        return Err(fail(
            OAuthErrorCode::UnsupportedResponseType,
            "response_type must be code",
        ));
    }
    let Some(challenge) = request.code_challenge.clone() else {
        return Err(fail(
            OAuthErrorCode::InvalidRequest,
            "code_challenge is required (PKCE with S256)",
        ));
    };
    if request.code_challenge_method.as_deref() != Some(PKCE_S256) {
        return Err(fail(
            OAuthErrorCode::InvalidRequest,
            "code_challenge_method must be S256",
        ));
    }
    if challenge.len() != 43 || !pkce_value_ok(&challenge) {
        return Err(fail(
            OAuthErrorCode::InvalidRequest,
            "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
        ));
    }
    let Some(aud) = request.aud.as_deref() else {
        return Err(fail(
            OAuthErrorCode::InvalidRequest,
            "aud is required: the FHIR base URL the app will use",
        ));
    };
    let Some(mut target) = audience_of(aud) else {
        return Err(fail(
            OAuthErrorCode::InvalidRequest,
            "aud is not a FHIR server of this authorization server",
        ));
    };
    let scope = request_scope(request.scope.as_deref(), &client)
        .map_err(|e| fail(e.code, &e.description))?;
    let launch_scope = scope.iter().any(|s| s.as_str() == LAUNCH_SCOPE);
    let launch = match (request.launch.as_deref(), launch_scope) {
        (None, false) => None,
        (None, true) => {
            return Err(fail(
                OAuthErrorCode::InvalidRequest,
                "the scope launch needs the launch parameter of an EHR launch",
            ))
        }
        (Some(_), false) => {
            return Err(fail(
                OAuthErrorCode::InvalidRequest,
                "the launch parameter needs the scope launch",
            ))
        }
        (Some(value), true) => {
            let context = launch_of(value)
                .filter(|c| c.client_id == client.client_id.as_str())
                .ok_or_else(|| {
                    fail(
                        OAuthErrorCode::InvalidRequest,
                        "unknown, used, expired or another application's launch",
                    )
                })?;
            target = match target {
                Target::Any { audience } => {
                    let partition = PartitionId::try_from(context.partition.as_str())
                        .map_err(|_| fail(OAuthErrorCode::InvalidRequest, "bad launch"))?;
                    Target::Partition {
                        audience: format!("{audience}/{partition}"),
                        partition,
                    }
                }
                Target::Partition { partition, .. } if partition.as_str() != context.partition => {
                    return Err(fail(
                        OAuthErrorCode::InvalidRequest,
                        "aud names another record than the launch",
                    ))
                }
                same => same,
            };
            Some((value.to_owned(), context))
        }
    };
    Ok(ValidRequest {
        request,
        client,
        redirect_uri,
        code_challenge: challenge,
        scope,
        target,
        launch,
    })
}

/// The scopes asked for: each within the client's registration; `system/` scopes
/// belong to backend services, not to an app a person authorizes.
fn request_scope(text: Option<&str>, client: &Client) -> Result<ScopeSet, OAuthError> {
    let Some(text) = text else {
        return Err(OAuthError::invalid_scope("scope is required"));
    };
    let mut refused = Vec::new();
    let mut scopes = Vec::new();
    for token in text.split(' ').filter(|t| !t.is_empty()) {
        let scope = Scope::try_from(token)
            .map_err(|_| OAuthError::invalid_scope("scope contains characters RFC 6749 forbids"))?;
        let smart = SmartScope::parse(&scope);
        let acceptable = match &smart {
            Some(s) => s.context != Context::System,
            None => USER_SCOPES.contains(&token),
        };
        if acceptable && tessera_types::smart::scope_allowed(&scope, client.scopes.iter()) {
            scopes.push(scope);
        } else {
            refused.push(token.to_owned());
        }
    }
    if !refused.is_empty() {
        return Err(OAuthError::invalid_scope(format!(
            "not allowed for this application: {}",
            refused.join(" ")
        )));
    }
    if scopes.is_empty() {
        return Err(OAuthError::invalid_scope("scope is empty"));
    }
    Ok(scopes.into_iter().collect())
}

/// A partition a user reaches, with the account it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachable {
    pub partition: PartitionId,
    pub account: AccountUrn,
}

/// What the person must do next, or what they decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nobody is logged in.
    Login,
    /// Ask the user: which scopes to grant and, when the app needs one patient and the
    /// user reaches several, whose record (`choices`).
    Consent { choices: Vec<Reachable> },
    /// Everything is decided: issue a code for these scopes and partition.
    Grant(Decision),
}

/// What the user granted.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub scope: ScopeSet,
    /// The partition the token is for (`None`: a token without patient data, e.g. an
    /// auditor's or `openid` only).
    pub partition: Option<Reachable>,
}

/// Decides the next step for `user` (if logged in). `reachable`: the partitions the user
/// reaches through their accounts; `remembered`: the scopes they granted this client
/// before, if any.
pub fn next_step(
    valid: &ValidRequest,
    user: Option<&User>,
    reachable: &[Reachable],
    remembered: Option<&ScopeSet>,
) -> Result<Step, AuthorizeError> {
    let Some(user) = user else {
        return Ok(Step::Login);
    };
    let choices = partition_choices(valid, user, reachable)?;
    let covered = remembered.is_some_and(|granted| valid.scope.not_in(granted).next().is_none());
    match choices.as_slice() {
        [only] if covered => Ok(Step::Grant(Decision {
            scope: valid.scope.clone(),
            partition: Some(only.clone()),
        })),
        [] if covered => Ok(Step::Grant(Decision {
            scope: valid.scope.clone(),
            partition: None,
        })),
        _ => Ok(Step::Consent { choices }),
    }
}

/// The partitions the token may be for: the one `aud` names, or the user's.
fn partition_choices(
    valid: &ValidRequest,
    user: &User,
    reachable: &[Reachable],
) -> Result<Vec<Reachable>, AuthorizeError> {
    let smart: Vec<SmartScope> = valid.scope.iter().filter_map(SmartScope::parse).collect();
    let audit = |s: &SmartScope| s.resource_type == AUDIT_EVENT;
    if user.role == Role::Auditor {
        // An auditor reaches the audit repository (ITI-81) and nothing else: only
        // AuditEvent scopes that read, for the realm's audience, no partition.
        let reads_trail = |s: &SmartScope| audit(s) && s.permissions.reads_only();
        if !smart.iter().all(reads_trail) || valid.needs_patient() {
            return Err(valid.redirect_error(
                OAuthErrorCode::AccessDenied,
                "an auditor's login reaches the audit trail, no patient record",
            ));
        }
        if matches!(valid.target, Target::Partition { .. }) {
            return Err(valid.redirect_error(
                OAuthErrorCode::AccessDenied,
                "the audit trail is not a patient's record: use the realm's FHIR audience",
            ));
        }
        return Ok(Vec::new());
    }
    if smart
        .iter()
        .any(|s| audit(s) && s.context != Context::Patient)
    {
        return Err(valid.redirect_error(
            OAuthErrorCode::AccessDenied,
            "only auditors read the audit trail",
        ));
    }
    if smart.is_empty() && !valid.needs_patient() {
        return Ok(Vec::new());
    }
    let choices: Vec<Reachable> = match &valid.target {
        Target::Partition { partition, .. } => reachable
            .iter()
            .filter(|r| &r.partition == partition)
            .cloned()
            .collect(),
        Target::Any { .. } => reachable.to_vec(),
    };
    if choices.is_empty() {
        return Err(valid.redirect_error(
            OAuthErrorCode::AccessDenied,
            "the user has no access to the record this application asked for",
        ));
    }
    Ok(choices)
}

/// What the consent form sent: the scopes left ticked (each possibly narrowed to a
/// category), the partition picked, and allow or deny.
#[derive(Debug, Clone, Default)]
pub struct ConsentAnswer {
    pub allow: bool,
    pub scopes: Vec<String>,
    pub partition: Option<String>,
}

/// Checks a consent answer against the request: granted scopes must be ones asked for
/// (or one of them narrowed by a `?category=` restriction), and the partition one of
/// the choices.
pub fn decide(
    valid: &ValidRequest,
    choices: &[Reachable],
    answer: &ConsentAnswer,
) -> Result<Decision, AuthorizeError> {
    if !answer.allow {
        return Err(
            valid.redirect_error(OAuthErrorCode::AccessDenied, "the user denied the request")
        );
    }
    let mut granted = Vec::new();
    for text in &answer.scopes {
        let scope = Scope::try_from(text.as_str())
            .map_err(|_| AuthorizeError::Page("The form sent an unknown scope.".into()))?;
        if !valid.scope.contains(&scope) && !narrows_requested(valid, &scope) {
            return Err(AuthorizeError::Page(
                "The form sent a scope the application did not ask for.".into(),
            ));
        }
        granted.push(scope);
    }
    let partition = match choices {
        [] => None,
        [only] if answer.partition.is_none() => Some(only.clone()),
        _ => {
            let picked = answer.partition.as_deref().ok_or_else(|| {
                AuthorizeError::Page("Choose whose record the application may use.".into())
            })?;
            Some(
                choices
                    .iter()
                    .find(|c| c.partition.as_str() == picked)
                    .cloned()
                    .ok_or_else(|| {
                        AuthorizeError::Page("That record is not one you can share.".into())
                    })?,
            )
        }
    };
    Ok(Decision {
        scope: granted.into_iter().collect(),
        partition,
    })
}

/// Is `scope` a requested unrestricted SMART scope narrowed by a query restriction
/// (`patient/Observation.rs` -> `patient/Observation.rs?category=laboratory`)?
fn narrows_requested(valid: &ValidRequest, scope: &Scope) -> bool {
    let Some(narrow) = SmartScope::parse(scope) else {
        return false;
    };
    let Some(query) = &narrow.query else {
        return false;
    };
    if !query.starts_with("category=") {
        return false;
    }
    valid.scope.iter().any(|asked| {
        SmartScope::parse(asked).is_some_and(|a| a.query.is_none() && a.covers(&narrow))
    })
}

/// The redirect of a granted request: `code`, `state` as sent, and `iss` (RFC 9207).
pub fn code_redirect(redirect_uri: &str, code: &str, state: Option<&str>, iss: &str) -> String {
    let mut pairs = vec![("code", code)];
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    pairs.push(("iss", iss));
    append_query(redirect_uri, &pairs)
}

/// The redirect of a refused request (RFC 6749 4.1.2.1).
pub fn error_redirect(
    redirect_uri: &str,
    error: &OAuthError,
    state: Option<&str>,
    iss: &str,
) -> String {
    let mut pairs = vec![
        ("error", error.code.as_str()),
        ("error_description", error.description.as_str()),
    ];
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    pairs.push(("iss", iss));
    append_query(redirect_uri, &pairs)
}

/// `uri` with `pairs` added to its query (RFC 6749 3.1.2: keep the registered query).
pub fn append_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let (without_fragment, _) = uri.split_once('#').unwrap_or((uri, ""));
    let encoded: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}={}", form_encode(value)))
        .collect();
    let separator = if without_fragment.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{without_fragment}{separator}{}", encoded.join("&"))
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ClientAuth, IuaAttributes};
    use std::sync::Arc;

    fn client() -> Arc<Client> {
        Arc::new(Client {
            realm: "cara".try_into().unwrap(),
            client_id: "app".try_into().unwrap(),
            enabled: true,
            auth: ClientAuth::None,
            scopes: ScopeSet::parse(
                "openid fhirUser launch launch/patient offline_access patient/*.rs user/*.rs system/*.rs \
                 user/AuditEvent.cruds patient/AuditEvent.rs",
            )
            .unwrap(),
            partitions: vec![],
            principal_id: None,
            principal_name: None,
            person_ids: vec![],
            resource_servers: vec![],
            accounts: vec![],
            iua: IuaAttributes::default(),
            redirect_uris: vec!["https://app.example/cb?x=1".into()],
            launch_url: None,
        })
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn request(extra: &[(&str, &str)]) -> AuthorizationRequest {
        let mut list = vec![
            ("response_type", "code"),
            ("client_id", "app"),
            ("redirect_uri", "https://app.example/cb?x=1"),
            ("scope", "openid launch/patient patient/*.rs"),
            ("state", "s t"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("aud", "https://h/fhir"),
        ];
        for (name, value) in extra {
            list.retain(|(n, _)| n != name);
            if !value.is_empty() {
                list.push((name, value));
            }
        }
        AuthorizationRequest::from_pairs(&pairs(&list)).unwrap()
    }

    fn audience(aud: &str) -> Option<Target> {
        match aud {
            "https://h/fhir" => Some(Target::Any {
                audience: aud.into(),
            }),
            "https://h/fhir/p1" => Some(Target::Partition {
                audience: aud.into(),
                partition: "p1".try_into().unwrap(),
            }),
            _ => None,
        }
    }

    fn check(req: AuthorizationRequest) -> Result<ValidRequest, AuthorizeError> {
        check_with(req, client())
    }

    fn check_with(
        req: AuthorizationRequest,
        c: Arc<Client>,
    ) -> Result<ValidRequest, AuthorizeError> {
        let uri = check_client_and_redirect(&req, Some(&c))?;
        check_request(req, c, uri, audience, launch)
    }

    fn launch(value: &str) -> Option<LaunchContext> {
        let context = |client: &str| LaunchContext {
            client_id: client.into(),
            partition: "p1".into(),
            encounter: Some("e1".into()),
            fhir_context: None,
            need_patient_banner: None,
            smart_style_url: None,
        };
        match value {
            "good" => Some(context("app")),
            "foreign" => Some(context("other")),
            _ => None,
        }
    }

    fn redirect_code<T: std::fmt::Debug>(result: Result<T, AuthorizeError>) -> OAuthErrorCode {
        match result {
            Err(AuthorizeError::Redirect { error, state, .. }) => {
                assert_eq!(state.as_deref(), Some("s t"), "state is echoed");
                error.code
            }
            other => panic!("expected a redirect error, got {other:?}"),
        }
    }

    #[test]
    fn a_good_request_passes() {
        let valid = check(request(&[])).unwrap();
        assert_eq!(
            valid.scope.to_string(),
            "launch/patient openid patient/*.rs"
        );
        assert!(valid.needs_patient());
    }

    #[test]
    fn untrusted_client_or_redirect_gives_a_page_not_a_redirect() {
        for req in [
            request(&[("redirect_uri", "https://evil.example/cb")]),
            request(&[("redirect_uri", "https://app.example/cb")]),
            request(&[("redirect_uri", "https://app.example/cb?x=1&y=2")]),
            request(&[("redirect_uri", "")]),
            request(&[("client_id", "")]),
        ] {
            assert!(matches!(check(req), Err(AuthorizeError::Page(_))));
        }
        let req = request(&[]);
        assert!(matches!(
            check_client_and_redirect(&req, None),
            Err(AuthorizeError::Page(_))
        ));
    }

    #[test]
    fn pkce_response_type_aud_and_scope_rules() {
        use OAuthErrorCode::*;
        let table = [
            (request(&[("code_challenge", "")]), InvalidRequest),
            (
                request(&[("code_challenge_method", "plain")]),
                InvalidRequest,
            ),
            (request(&[("code_challenge_method", "")]), InvalidRequest),
            (request(&[("code_challenge", "short")]), InvalidRequest),
            (
                request(&[("response_type", "token")]),
                UnsupportedResponseType,
            ),
            (request(&[("aud", "")]), InvalidRequest),
            (request(&[("aud", "https://other/fhir")]), InvalidRequest),
            (request(&[("scope", "system/*.rs")]), InvalidScope),
            (request(&[("scope", "patient/*.cruds")]), InvalidScope),
            (request(&[("scope", "")]), InvalidScope),
            (request(&[("scope", "launch patient/*.rs")]), InvalidRequest),
            (request(&[("launch", "good")]), InvalidRequest),
            (
                request(&[("scope", "launch"), ("launch", "used")]),
                InvalidRequest,
            ),
            (
                request(&[("scope", "launch"), ("launch", "foreign")]),
                InvalidRequest,
            ),
            (
                request(&[
                    ("scope", "launch"),
                    ("launch", "good"),
                    ("aud", "https://h/fhir/p2"),
                ]),
                InvalidRequest,
            ),
        ];
        for (req, expected) in table {
            assert_eq!(redirect_code(check(req)), expected);
        }
    }

    #[test]
    fn an_ehr_launch_fixes_the_partition() {
        let valid = check(request(&[
            ("scope", "launch patient/*.rs"),
            ("launch", "good"),
        ]))
        .unwrap();
        assert_eq!(
            valid.target,
            Target::Partition {
                audience: "https://h/fhir/p1".into(),
                partition: "p1".try_into().unwrap()
            }
        );
        assert_eq!(valid.launch.unwrap().1.encounter.as_deref(), Some("e1"));
    }

    #[test]
    fn repeated_parameters_are_refused() {
        let err = AuthorizationRequest::from_pairs(&pairs(&[("state", "a"), ("state", "b")]));
        assert!(err.is_err());
    }

    fn user(role: Role) -> User {
        User {
            realm: "cara".try_into().unwrap(),
            id: "u1".into(),
            username: "anna".into(),
            role,
            accounts: vec![],
            fhir_user: None,
            gln: None,
            enabled: true,
            password_hash: String::new(),
        }
    }

    fn reach(partition: &str) -> Reachable {
        Reachable {
            partition: partition.try_into().unwrap(),
            account: "urn:tessera:account:a".try_into().unwrap(),
        }
    }

    #[test]
    fn the_next_step_follows_login_consent_and_choices() {
        let valid = check(request(&[])).unwrap();
        let patient = user(Role::Patient);
        assert_eq!(next_step(&valid, None, &[], None).unwrap(), Step::Login);
        let two = [reach("p1"), reach("p2")];
        assert_eq!(
            next_step(&valid, Some(&patient), &two, None).unwrap(),
            Step::Consent {
                choices: two.to_vec()
            }
        );
        // Remembered consent with one record: no page at all.
        let granted = valid.scope.clone();
        assert!(matches!(
            next_step(&valid, Some(&patient), &two[..1], Some(&granted)).unwrap(),
            Step::Grant(_)
        ));
        // Remembered, but two records to choose from: the page is shown.
        assert!(matches!(
            next_step(&valid, Some(&patient), &two, Some(&granted)).unwrap(),
            Step::Consent { .. }
        ));
        // aud naming a partition the user does not reach: access_denied.
        let p3 = check(request(&[("aud", "https://h/fhir/p1")])).unwrap();
        assert_eq!(
            redirect_code(next_step(&p3, Some(&patient), &[reach("p2")], None)),
            OAuthErrorCode::AccessDenied
        );
        assert!(matches!(
            next_step(&p3, Some(&patient), &two, None).unwrap(),
            Step::Consent { choices } if choices == vec![reach("p1")]
        ));
        // An auditor reaches no patient record, only the audit trail.
        let auditor = user(Role::Auditor);
        assert_eq!(
            redirect_code(next_step(&valid, Some(&auditor), &two, None)),
            OAuthErrorCode::AccessDenied
        );
        let trail = check(request(&[("scope", "openid user/AuditEvent.rs")])).unwrap();
        assert_eq!(
            next_step(&trail, Some(&auditor), &[], None).unwrap(),
            Step::Consent { choices: vec![] }
        );
        // ... to read it, never to change it, whatever the app registered.
        let write = check(request(&[("scope", "openid user/AuditEvent.cu")])).unwrap();
        assert_eq!(
            redirect_code(next_step(&write, Some(&auditor), &[], None)),
            OAuthErrorCode::AccessDenied
        );
        // A `*` registration never stands for the audit trail.
        let mut wildcard = (*client()).clone();
        wildcard.scopes = ScopeSet::parse("openid user/*.cruds").unwrap();
        let wide = request(&[("scope", "openid user/AuditEvent.rs")]);
        assert_eq!(
            redirect_code(check_with(wide, Arc::new(wildcard))),
            OAuthErrorCode::InvalidScope
        );
        // ... which nobody else reads, whatever the app registered.
        assert_eq!(
            redirect_code(next_step(&trail, Some(&patient), &two, None)),
            OAuthErrorCode::AccessDenied
        );
    }

    #[test]
    fn consent_answers_grant_at_most_what_was_asked() {
        let valid = check(request(&[])).unwrap();
        let choices = [reach("p1"), reach("p2")];
        let answer = |scopes: &[&str], partition: Option<&str>| ConsentAnswer {
            allow: true,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            partition: partition.map(str::to_owned),
        };
        let d = decide(
            &valid,
            &choices,
            &answer(
                &["openid", "patient/Observation.rs?category=laboratory"],
                Some("p2"),
            ),
        )
        .unwrap();
        assert_eq!(
            d.scope.to_string(),
            "openid patient/Observation.rs?category=laboratory"
        );
        assert_eq!(d.partition, Some(reach("p2")));
        for bad in [
            answer(&["patient/*.cruds"], Some("p1")),
            answer(&["user/*.rs"], Some("p1")),
            answer(&["patient/Observation.rs?code=1"], Some("p1")),
            answer(&["openid"], None),
            answer(&["openid"], Some("p9")),
        ] {
            assert!(matches!(
                decide(&valid, &choices, &bad),
                Err(AuthorizeError::Page(_))
            ));
        }
        let deny = ConsentAnswer::default();
        assert_eq!(
            redirect_code(decide(&valid, &choices, &deny)),
            OAuthErrorCode::AccessDenied
        );
    }

    #[test]
    fn redirects_keep_the_registered_query_and_encode_values() {
        assert_eq!(
            code_redirect("https://a/cb?x=1", "c/d", Some("s t&u"), "https://i"),
            "https://a/cb?x=1&code=c%2Fd&state=s+t%26u&iss=https%3A%2F%2Fi"
        );
        let err = OAuthError::new(OAuthErrorCode::AccessDenied, "no");
        assert_eq!(
            error_redirect("https://a/cb", &err, None, "i"),
            "https://a/cb?error=access_denied&error_description=no&iss=i"
        );
    }
}
