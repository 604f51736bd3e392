//! The grants of the token endpoint, one module each: `client_credentials` (ITI-71 for
//! technical users and SMART Backend Services), `authorization_code` with PKCE (a
//! person authorized an app) and `refresh_token` (rotating, per family).

pub mod authorization_code;
pub mod client_credentials;
pub mod refresh_token;

use serde::{Deserialize, Serialize};

use crate::error::{OAuthError, OAuthErrorCode};
use crate::request::{ClientAuthParams, Form, TokenRequest};

/// A token request, by grant type, with the client's authentication parameters.
#[derive(Debug)]
pub enum GrantRequest {
    ClientCredentials(TokenRequest),
    AuthorizationCode {
        client: ClientAuthParams,
        code: String,
        redirect_uri: Option<String>,
        code_verifier: Option<String>,
    },
    RefreshToken {
        client: ClientAuthParams,
        refresh_token: String,
        scope: Option<String>,
    },
}

impl GrantRequest {
    /// Reads the form of a token request; an unknown `grant_type` is
    /// `unsupported_grant_type` (RFC 6749 5.2).
    pub fn from_form(pairs: Vec<(String, String)>) -> Result<Self, OAuthError> {
        let mut form = Form::parse(pairs)?;
        let grant_type = form.require("grant_type")?;
        Ok(match grant_type.as_str() {
            "client_credentials" => Self::ClientCredentials(TokenRequest::from_parsed(form)),
            "authorization_code" => Self::AuthorizationCode {
                client: form.client_auth(),
                code: form.require("code")?,
                redirect_uri: form.take("redirect_uri"),
                code_verifier: form.take("code_verifier"),
            },
            "refresh_token" => Self::RefreshToken {
                client: form.client_auth(),
                refresh_token: form.require("refresh_token")?,
                scope: form.take("scope"),
            },
            _ => {
                return Err(OAuthError::new(
                    OAuthErrorCode::UnsupportedGrantType,
                    "supported grants: client_credentials, authorization_code, refresh_token",
                ))
            }
        })
    }

    pub fn client(&self) -> &ClientAuthParams {
        match self {
            Self::ClientCredentials(request) => &request.client,
            Self::AuthorizationCode { client, .. } | Self::RefreshToken { client, .. } => client,
        }
    }
}

/// What a person granted an app: kept with the authorization code, then with each
/// refresh token of the family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserGrant {
    pub user_id: String,
    pub client_id: String,
    /// The scopes granted (after consent), space-separated.
    pub scope: String,
    /// The token's `aud`: the realm's FHIR audience or the partition's base URL.
    pub audience: String,
    /// The partition the token is for, with its account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The id of the partition's Patient resource (SMART launch context `patient`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// When the user logged in (OIDC `auth_time`).
    pub auth_time: i64,
    /// The hash of the browser session: `online_access` refresh tokens die with it.
    pub session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The EHR launch's context (encounter, fhirContext, banner, style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<crate::launch::LaunchContext>,
}

/// An authorization code as stored (under the SHA-256 of the code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    pub grant: UserGrant,
    pub redirect_uri: String,
    pub code_challenge: String,
}

/// A refresh token as stored (under the SHA-256 of the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub grant: UserGrant,
    /// `offline_access` (outlives the session) or `online_access`.
    pub offline: bool,
}

/// What redeeming a single-use value (a code, a refresh token) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed<T> {
    /// First use: it is now marked used, here is what it stands for.
    Fresh {
        record: T,
        family: String,
        expires_at: i64,
    },
    /// Used before (or revoked): its family must be revoked.
    Spent {
        family: String,
    },
    Unknown,
}

impl<S: crate::IamStore> crate::TokenService<S> {
    /// What a single-use value (`what`: a code, a refresh token) stands for, if this was
    /// its first use and it has not expired. A second use means the value was stolen
    /// or replayed: everything issued from its family is revoked (RFC 6749 4.1.2,
    /// OAuth 2.0 Security BCP 4.14.2).
    pub(crate) fn first_use<T>(
        &self,
        realm: &tessera_types::RealmName,
        redeemed: Redeemed<T>,
        what: &str,
        now: tessera_types::UnixTime,
    ) -> Result<(T, String), OAuthError> {
        match redeemed {
            Redeemed::Fresh {
                record,
                family,
                expires_at,
            } if expires_at > now.0 => Ok((record, family)),
            Redeemed::Fresh { .. } => {
                Err(OAuthError::invalid_grant(format!("the {what} has expired")))
            }
            Redeemed::Spent { family } => {
                self.store().revoke_family(realm, &family, now)?;
                tracing::warn!(%family, what, "a single-use value was used again; its family is revoked");
                Err(OAuthError::invalid_grant(format!(
                    "the {what} was already used or revoked"
                )))
            }
            Redeemed::Unknown => Err(OAuthError::invalid_grant(format!("unknown {what}"))),
        }
    }
}
