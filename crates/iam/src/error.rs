//! OAuth 2.0 errors by their RFC names. The HTTP layer maps each to a status code in
//! one place; descriptions here are safe to show a client: never a secret, a token,
//! or an internal detail.

/// The `error` values of RFC 6749 section 5.2 and RFC 8707 section 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorCode {
    /// RFC 6749 5.2: a required parameter is missing, repeated or malformed.
    InvalidRequest,
    /// RFC 6749 5.2: client authentication failed (unknown client, no or wrong
    /// credentials, unsupported method).
    InvalidClient,
    /// RFC 6749 5.2: the grant itself is invalid, expired or revoked.
    InvalidGrant,
    /// RFC 6749 5.2: the client may not use this grant type.
    UnauthorizedClient,
    /// RFC 6749 5.2: the grant type is not supported by this server.
    UnsupportedGrantType,
    /// RFC 6749 5.2: the requested scope is invalid, unknown or exceeds what was granted.
    InvalidScope,
    /// RFC 8707 2: the requested resource is invalid or not allowed for this client.
    InvalidTarget,
    /// RFC 6749 4.1.2.1: the authorization server does not issue codes this way.
    UnsupportedResponseType,
    /// RFC 6749 4.1.2.1: the user (or the server on their behalf) denied the request.
    AccessDenied,
    /// RFC 6749 4.1.2.1: an unexpected condition; details go to the log, not the client.
    ServerError,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::AccessDenied => "access_denied",
            Self::ServerError => "server_error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    pub code: OAuthErrorCode,
    pub description: String,
}

impl OAuthError {
    pub fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }

    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidRequest, d)
    }

    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidClient, d)
    }

    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidScope, d)
    }

    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidGrant, d)
    }

    pub fn server_error() -> Self {
        Self::new(OAuthErrorCode::ServerError, "internal error")
    }
}

/// A failure of the storage behind the domain. Its text is logged, never sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StoreError(pub String);

impl From<StoreError> for OAuthError {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err.0, "storage failure while serving an OAuth request");
        OAuthError::server_error()
    }
}
