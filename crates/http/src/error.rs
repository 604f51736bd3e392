//! Every error a handler returns, and the one place where each becomes an HTTP status.
//! Bodies carry spec-named codes and safe descriptions: never a secret, a token, a SQL
//! statement or a backtrace.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use tessera_iam::{OAuthError, OAuthErrorCode, StoreError};
use tessera_vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An RFC 6749 error at an OAuth endpoint. `basic_realm` is set when the client
    /// authenticated with HTTP Basic, which RFC 6749 5.2 answers with a challenge.
    #[error("{error}")]
    OAuth {
        error: OAuthError,
        basic_realm: Option<String>,
    },
    /// RFC 6750 3.1: a request with no, an invalid, or an insufficient Bearer token.
    #[error("bearer token refused: {error:?}")]
    Bearer { realm: String, error: BearerError },
    /// The same refusal at the FHIR Vault, whose bodies are OperationOutcomes.
    #[error("bearer token refused at the vault: {error:?}")]
    FhirBearer { realm: String, error: BearerError },
    /// A FHIR Vault interaction that failed.
    #[error("{0}")]
    Vault(VaultError),
    /// A malformed request to a JSON API (400).
    #[error("{0}")]
    BadRequest(String),
    /// Nothing matches (404), said in JSON.
    #[error("{0}")]
    NotFound(String),
    /// A FHIR interaction that failed: an OperationOutcome with the matching status.
    #[error("{diagnostics}")]
    Fhir {
        issue: FhirIssue,
        diagnostics: String,
    },
    #[error("realm '{0}' does not exist")]
    UnknownRealm(String),
    #[error("the service is not ready: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

/// Why a Bearer token was refused (RFC 6750 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No token: 401 with a bare challenge.
    Missing,
    /// Not a current token of the realm, not bound to this connection's certificate, or
    /// not for this audience: 401 `invalid_token`.
    InvalidToken,
    /// A valid token without the scope a resource server needs: 403 `insufficient_scope`.
    InsufficientScope,
    /// A valid token without the introspection scope: 401 `insufficient_scope`, since
    /// ITI-102 answers an introspection caller without authority with 401, not 403.
    NotAllowedToIntrospect,
}

impl BearerError {
    fn code(self) -> Option<&'static str> {
        match self {
            BearerError::Missing => None,
            BearerError::InvalidToken => Some("invalid_token"),
            BearerError::InsufficientScope | BearerError::NotAllowedToIntrospect => {
                Some("insufficient_scope")
            }
        }
    }
}

/// The FHIR issue types (`OperationOutcome.issue.code`) Tessera answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirIssue {
    /// 400 `invalid`.
    Invalid,
    /// 404 `not-found`.
    NotFound,
    /// 403 `forbidden`.
    Forbidden,
}

impl From<OAuthError> for ApiError {
    fn from(error: OAuthError) -> Self {
        ApiError::OAuth {
            error,
            basic_realm: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        ApiError::Internal(err.0)
    }
}

/// AIM's errors: an unknown account is 404; a taken MPI-ID or partition name 400 (the
/// request names something that exists); a storage failure 500.
impl From<tessera_aim::AimError> for ApiError {
    fn from(err: tessera_aim::AimError) -> Self {
        use tessera_aim::AimError;
        match err {
            AimError::NoAccount(_) => ApiError::NotFound(err.to_string()),
            AimError::MpiIdTaken(..) | AimError::PartitionTaken(_) => {
                ApiError::BadRequest(err.to_string())
            }
            AimError::Store(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<VaultError> for ApiError {
    fn from(err: VaultError) -> Self {
        ApiError::Vault(err)
    }
}

impl ApiError {
    /// The FHIR form of a Bearer refusal (OperationOutcome body, same status).
    pub fn into_fhir(self) -> Self {
        match self {
            ApiError::Bearer { realm, error } => ApiError::FhirBearer { realm, error },
            other => other,
        }
    }
}

/// RFC 6750 3.1: no or a bad token is 401; a good token without the authority is 403.
fn bearer_status(error: BearerError) -> StatusCode {
    match error {
        BearerError::InsufficientScope => StatusCode::FORBIDDEN,
        BearerError::Missing | BearerError::InvalidToken | BearerError::NotAllowedToIntrospect => {
            StatusCode::UNAUTHORIZED
        }
    }
}

/// FHIR's status for each vault error (R4 http.html): a refused partition or scope is
/// 403 `insufficient_scope`, as DESIGN.md chooses over IUA's 401.
pub fn vault_status(error: &VaultError) -> StatusCode {
    match error {
        VaultError::Invalid(_) | VaultError::NotSupported(_) | VaultError::TooCostly(_) => {
            StatusCode::BAD_REQUEST
        }
        VaultError::NotFound(_) => StatusCode::NOT_FOUND,
        VaultError::Gone(_) => StatusCode::GONE,
        VaultError::VersionConflict(_) => StatusCode::PRECONDITION_FAILED,
        VaultError::Unprocessable(_) | VaultError::Nonconformant(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        VaultError::Conflict(_) => StatusCode::CONFLICT,
        VaultError::Denied(_) => StatusCode::FORBIDDEN,
        VaultError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        VaultError::Store(_) | VaultError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The OperationOutcome issue type of each vault error.
fn vault_issue(error: &VaultError) -> &'static str {
    match error {
        VaultError::Invalid(_) => "invalid",
        VaultError::NotSupported(_) => "not-supported",
        VaultError::TooCostly(_) => "too-costly",
        VaultError::NotFound(_) => "not-found",
        VaultError::Gone(_) => "deleted",
        VaultError::VersionConflict(_) | VaultError::Conflict(_) => "conflict",
        VaultError::Unprocessable(_) => "processing",
        VaultError::Nonconformant(_) => "structure",
        VaultError::Denied(_) => "forbidden",
        VaultError::Busy(_) => "throttled",
        VaultError::Store(_) | VaultError::Failed(_) => "exception",
    }
}

fn fhir_response(
    response: &mut actix_web::HttpResponseBuilder,
    code: &str,
    diagnostics: &str,
) -> HttpResponse {
    response
        .content_type("application/fhir+json")
        .json(tessera_vault::operation_outcome("error", code, diagnostics))
}

fn challenge(response: &mut actix_web::HttpResponseBuilder, realm: &str, error: BearerError) {
    let mut params = Vec::new();
    if !realm.is_empty() {
        params.push(format!("realm=\"{realm}\""));
    }
    if let Some(code) = error.code() {
        params.push(format!("error=\"{code}\""));
    }
    let challenge = format!("Bearer {}", params.join(", "))
        .trim_end()
        .to_owned();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.insert_header((header::WWW_AUTHENTICATE, value));
    }
}

/// RFC 6749 5.2: 401 for a failed client authentication, 400 for the rest.
pub fn oauth_status(code: OAuthErrorCode) -> StatusCode {
    match code {
        OAuthErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
        OAuthErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        OAuthErrorCode::InvalidRequest
        | OAuthErrorCode::InvalidGrant
        | OAuthErrorCode::UnauthorizedClient
        | OAuthErrorCode::UnsupportedGrantType
        | OAuthErrorCode::InvalidScope
        | OAuthErrorCode::InvalidTarget
        | OAuthErrorCode::UnsupportedResponseType => StatusCode::BAD_REQUEST,
        OAuthErrorCode::AccessDenied => StatusCode::FORBIDDEN,
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::OAuth { error, .. } => oauth_status(error.code),
            ApiError::Bearer { error, .. } | ApiError::FhirBearer { error, .. } => {
                bearer_status(*error)
            }
            ApiError::Vault(error) => vault_status(error),
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Fhir { issue, .. } => match issue {
                FhirIssue::Invalid => StatusCode::BAD_REQUEST,
                FhirIssue::NotFound => StatusCode::NOT_FOUND,
                FhirIssue::Forbidden => StatusCode::FORBIDDEN,
            },
            ApiError::UnknownRealm(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"));
        let body = match self {
            ApiError::OAuth { error, basic_realm } => {
                if let Some(realm) = basic_realm
                    .as_deref()
                    .filter(|_| error.code == OAuthErrorCode::InvalidClient)
                {
                    if let Ok(value) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
                        response.insert_header((header::WWW_AUTHENTICATE, value));
                    }
                }
                json!({ "error": error.code.as_str(), "error_description": error.description })
            }
            ApiError::FhirBearer { realm, error } => {
                challenge(&mut response, realm, *error);
                let (code, diagnostics) = match error {
                    BearerError::Missing => ("login", "an access token is required in the Authorization header (Bearer)"),
                    BearerError::InvalidToken => ("login", "the access token is not valid here: expired, revoked, not for this vault, or bound to another certificate"),
                    BearerError::InsufficientScope | BearerError::NotAllowedToIntrospect => ("forbidden", "the access token does not grant this"),
                };
                return fhir_response(&mut response, code, diagnostics);
            }
            ApiError::Vault(error) => {
                if let VaultError::Denied(tessera_vault::Denial::Requester) = error {
                    return fhir_response(
                        &mut response,
                        "forbidden",
                        "this export was requested by another client or user",
                    );
                }
                if let VaultError::Denied(_) = error {
                    // Whether the partition or the scope refused stays unsaid.
                    challenge(&mut response, "", BearerError::InsufficientScope);
                    return fhir_response(
                        &mut response,
                        "forbidden",
                        "the access token does not grant this interaction on this partition",
                    );
                }
                if let VaultError::Nonconformant(issues) = error {
                    // One issue per element, each with its location (R4 OperationOutcome).
                    let issues: Vec<serde_json::Value> = issues
                        .iter()
                        .map(|i| {
                            json!({
                                "severity": "error",
                                "code": i.code,
                                "diagnostics": format!("{}: {}", i.location, i.message),
                                "expression": [i.location],
                            })
                        })
                        .collect();
                    return response
                        .content_type("application/fhir+json")
                        .json(json!({ "resourceType": "OperationOutcome", "issue": issues }));
                }
                if let VaultError::Store(detail) = error {
                    tracing::error!(detail, "vault storage error");
                    return fhir_response(&mut response, "exception", "internal error");
                }
                return fhir_response(&mut response, vault_issue(error), &error.to_string());
            }
            ApiError::Bearer { realm, error } => {
                challenge(&mut response, realm, *error);
                json!({ "error": error.code().unwrap_or("invalid_request"), "error_description": "a valid Bearer access token is required" })
            }
            ApiError::BadRequest(detail) => {
                json!({ "error": "invalid_request", "error_description": detail })
            }
            ApiError::NotFound(detail) => {
                json!({ "error": "not_found", "error_description": detail })
            }
            ApiError::Fhir { issue, diagnostics } => {
                let code = match issue {
                    FhirIssue::Invalid => "invalid",
                    FhirIssue::NotFound => "not-found",
                    FhirIssue::Forbidden => "forbidden",
                };
                return response.content_type("application/fhir+json").json(json!({
                    "resourceType": "OperationOutcome",
                    "issue": [{ "severity": "error", "code": code, "diagnostics": diagnostics }],
                }));
            }
            ApiError::UnknownRealm(_) => {
                json!({ "error": "not_found", "error_description": self.to_string() })
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(detail, "not ready");
                json!({ "error": "temporarily_unavailable", "error_description": "the service is not ready" })
            }
            ApiError::Internal(detail) => {
                tracing::error!(detail, "internal error");
                json!({ "error": "server_error", "error_description": "internal error" })
            }
        };
        response.json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_oauth_error_has_its_rfc_status() {
        let table = [
            (OAuthErrorCode::InvalidRequest, 400),
            (OAuthErrorCode::InvalidClient, 401),
            (OAuthErrorCode::InvalidGrant, 400),
            (OAuthErrorCode::UnauthorizedClient, 400),
            (OAuthErrorCode::UnsupportedGrantType, 400),
            (OAuthErrorCode::InvalidScope, 400),
            (OAuthErrorCode::InvalidTarget, 400),
            (OAuthErrorCode::ServerError, 500),
        ];
        for (code, status) in table {
            assert_eq!(oauth_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn internal_details_stay_out_of_the_body() {
        let err = ApiError::Internal("SELECT secret FROM clients".into());
        let response = err.error_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = actix_web::rt::System::new()
            .block_on(actix_web::body::to_bytes(response.into_body()))
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("server_error"), "{body}");
        assert!(!body.contains("SELECT"), "{body}");
    }

    #[test]
    fn basic_clients_get_a_challenge() {
        let err = ApiError::OAuth {
            error: OAuthError::invalid_client("x"),
            basic_realm: Some("cara".into()),
        };
        let response = err.error_response();
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Basic realm=\"cara\""
        );
        assert_eq!(
            response.headers().get(header::CACHE_CONTROL).unwrap(),
            "no-store"
        );
    }
}
