//! The access token Tessera issues: a JWS with `typ: at+jwt` (RFC 9068) carrying the
//! IUA extension (IHE IUA 3.71.4.2.2.1.2) and, for certificate clients, `cnf` (RFC 8705).

use serde::{Deserialize, Serialize};

use crate::client::IuaAttributes;

pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// `extensions.ihe_iua`: the registration's IUA attributes (with the request's
/// `subject_role`/`purpose_of_use` where it gave them) and the requested `person_id`.
/// Only members with a value are written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IheIua {
    #[serde(flatten)]
    pub attributes: IuaAttributes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_id: Option<String>,
}

/// `extensions.ch_delegation` (CH:IUA): the principal a technical user acts for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChDelegation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
}

impl ChDelegation {
    fn is_empty(&self) -> bool {
        self.principal.is_none() && self.principal_id.is_none()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extensions {
    pub ihe_iua: IheIua,
    #[serde(default, skip_serializing_if = "ChDelegation::is_empty")]
    pub ch_delegation: ChDelegation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    pub client_id: String,
    pub aud: Vec<String>,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// The patient account the token is for, when the client asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The FHIR Vault partitions the token may be used on (`*`: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<String>,
    pub extensions: Extensions,
}

/// The JSON body of a successful token response (RFC 6749 section 5.1), with the SMART
/// launch context at the top level for tokens a person authorized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// OpenID Connect: who logged in, for the client (`openid` scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// SMART launch context: the id of the Patient resource the app works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need_patient_banner: Option<bool>,
    /// SMART launch context of an EHR launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    #[serde(
        rename = "fhirContext",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fhir_context: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_style_url: Option<String>,
}

impl TokenResponse {
    pub fn bearer(access_token: String, expires_in: i64, scope: String) -> Self {
        Self {
            access_token,
            token_type: "Bearer".into(),
            expires_in,
            scope,
            refresh_token: None,
            id_token: None,
            patient: None,
            need_patient_banner: None,
            encounter: None,
            fhir_context: None,
            smart_style_url: None,
        }
    }
}

/// OpenID Connect Core 2 ID Token claims, with SMART's `fhirUser` (an absolute URL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdTokenClaims {
    pub iss: String,
    pub sub: String,
    /// The client_id.
    pub aud: String,
    pub azp: String,
    pub iat: i64,
    pub exp: i64,
    pub auth_time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
}
