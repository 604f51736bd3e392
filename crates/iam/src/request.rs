//! Requests to the OAuth endpoints as they arrive (RFC 6749 4.4, RFC 7521/7523,
//! RFC 8707, RFC 7662, RFC 7009, CH:IUA extension parameters), before any check
//! against registrations.

use std::collections::HashMap;

use tessera_types::Secret;

use crate::error::OAuthError;

pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What the TLS and HTTP layers know about the caller besides the form body.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// `Authorization: Basic` (RFC 6749 2.3.1), already form-decoded.
    pub basic: Option<(String, Secret)>,
    /// The client certificate of the TLS connection, already verified against the CA.
    pub certificate: Option<PresentedCertificate>,
}

/// A client certificate the TLS layer accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCertificate {
    /// base64url SHA-256 of the DER (`x5t#S256`).
    pub thumbprint: String,
    /// RFC 4514 subject and issuer distinguished names.
    pub subject: String,
    pub issuer: String,
}

/// A decoded `application/x-www-form-urlencoded` body. RFC 6749 section 3.2: parameters
/// sent without a value are treated as omitted, and no parameter may appear twice
/// (except `resource`, which RFC 8707 allows to repeat).
#[derive(Debug, Default)]
pub struct Form {
    values: HashMap<String, String>,
    resources: Vec<String>,
}

impl Form {
    pub fn parse(pairs: Vec<(String, String)>) -> Result<Self, OAuthError> {
        let mut form = Form::default();
        for (name, value) in pairs {
            if value.is_empty() {
                continue;
            }
            if name == "resource" {
                form.resources.push(value);
                continue;
            }
            if form.values.contains_key(&name) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter '{name}' is repeated"
                )));
            }
            form.values.insert(name, value);
        }
        Ok(form)
    }

    pub fn take(&mut self, name: &str) -> Option<String> {
        self.values.remove(name)
    }

    pub(crate) fn require(&mut self, name: &str) -> Result<String, OAuthError> {
        self.take(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("the {name} parameter is missing")))
    }

    /// The client authentication parameters of the body (RFC 6749 2.3.1, RFC 7523 2.2).
    pub fn client_auth(&mut self) -> ClientAuthParams {
        ClientAuthParams {
            client_id: self.take("client_id"),
            client_secret: self.take("client_secret").map(Secret::new),
            client_assertion_type: self.take("client_assertion_type"),
            client_assertion: self.take("client_assertion"),
        }
    }
}

/// How a client may authenticate in the body of a request to any OAuth endpoint.
#[derive(Debug, Clone, Default)]
pub struct ClientAuthParams {
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
}

/// A `client_credentials` token request (ITI-71 for technical users).
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub client: ClientAuthParams,
    pub scope: Option<String>,
    pub resource: Vec<String>,
    /// CH:IUA parameters; also accepted as `name=value` tokens inside `scope`.
    pub principal_id: Option<String>,
    pub principal: Option<String>,
    pub person_id: Option<String>,
    pub purpose_of_use: Option<String>,
    pub subject_role: Option<String>,
    /// The Account URN of the patient whose data the token is for (AIM).
    pub account: Option<String>,
}

impl TokenRequest {
    /// The parameters of a parsed form; unknown parameters are ignored.
    pub(crate) fn from_parsed(mut form: Form) -> Self {
        TokenRequest {
            client: form.client_auth(),
            scope: form.take("scope"),
            resource: std::mem::take(&mut form.resources),
            principal_id: form.take("principal_id"),
            principal: form.take("principal"),
            person_id: form.take("person_id"),
            purpose_of_use: form.take("purpose_of_use"),
            subject_role: form.take("subject_role"),
            account: form.take("account"),
        }
    }
}

/// A token introspection (RFC 7662) or revocation (RFC 7009) request: the token and the
/// caller's client authentication. The optional `token_type_hint` is not read: an
/// access token and a refresh token are told apart by their form, as both RFCs allow.
#[derive(Debug, Clone, Default)]
pub struct TokenQuery {
    pub token: String,
    pub client: ClientAuthParams,
}

impl TokenQuery {
    pub fn from_form(pairs: Vec<(String, String)>) -> Result<Self, OAuthError> {
        let mut form = Form::parse(pairs)?;
        Ok(TokenQuery {
            token: form.require("token")?,
            client: form.client_auth(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    use crate::grant::GrantRequest;

    fn cc(form: Vec<(String, String)>) -> Result<TokenRequest, OAuthError> {
        match GrantRequest::from_form(form)? {
            GrantRequest::ClientCredentials(request) => Ok(request),
            other => panic!("not client_credentials: {other:?}"),
        }
    }

    #[test]
    fn repeated_parameters_are_invalid_requests() {
        let err = cc(pairs(&[
            ("grant_type", "client_credentials"),
            ("scope", "a"),
            ("scope", "b"),
        ]))
        .unwrap_err();
        assert_eq!(err.code, crate::OAuthErrorCode::InvalidRequest);
        let err = TokenQuery::from_form(pairs(&[("token", "a"), ("token", "b")])).unwrap_err();
        assert_eq!(err.code, crate::OAuthErrorCode::InvalidRequest);
    }

    #[test]
    fn resource_may_repeat_and_empty_values_are_omitted() {
        let req = cc(pairs(&[
            ("grant_type", "client_credentials"),
            ("resource", "https://a"),
            ("resource", "https://b"),
            ("scope", ""),
        ]))
        .unwrap();
        assert_eq!(req.resource, vec!["https://a", "https://b"]);
        assert!(req.scope.is_none());
    }

    #[test]
    fn missing_required_parameters_are_invalid_requests() {
        let err = cc(pairs(&[("client_id", "x")])).unwrap_err();
        assert_eq!(err.code, crate::OAuthErrorCode::InvalidRequest);
        let err = TokenQuery::from_form(pairs(&[("token_type_hint", "access_token")])).unwrap_err();
        assert_eq!(err.code, crate::OAuthErrorCode::InvalidRequest);
    }
}
