//! The token request as the endpoint receives it (RFC 6749 section 4.4, RFC 7521/7523,
//! RFC 8707, CH:IUA extension parameters), before any check against registrations.

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

#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub grant_type: String,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
    pub scope: Option<String>,
    pub resource: Vec<String>,
    /// CH:IUA parameters; also accepted as `name=value` tokens inside `scope`.
    pub principal_id: Option<String>,
    pub principal: Option<String>,
    pub person_id: Option<String>,
    pub purpose_of_use: Option<String>,
    pub subject_role: Option<String>,
}

impl TokenRequest {
    /// Builds a request from decoded form pairs. RFC 6749 section 3.2: parameters sent
    /// without a value are treated as omitted, and no parameter may appear twice
    /// (except `resource`, which RFC 8707 allows to repeat).
    pub fn from_form(pairs: Vec<(String, String)>) -> Result<Self, OAuthError> {
        let mut seen: HashMap<String, ()> = HashMap::new();
        let mut req = TokenRequest::default();
        let mut grant_type = None;
        for (name, value) in pairs {
            if value.is_empty() {
                continue;
            }
            if name == "resource" {
                req.resource.push(value);
                continue;
            }
            if seen.insert(name.clone(), ()).is_some() {
                return Err(OAuthError::invalid_request(format!(
                    "parameter '{name}' is repeated"
                )));
            }
            let slot = match name.as_str() {
                "grant_type" => &mut grant_type,
                "client_id" => &mut req.client_id,
                "client_assertion_type" => &mut req.client_assertion_type,
                "client_assertion" => &mut req.client_assertion,
                "scope" => &mut req.scope,
                "principal_id" => &mut req.principal_id,
                "principal" => &mut req.principal,
                "person_id" => &mut req.person_id,
                "purpose_of_use" => &mut req.purpose_of_use,
                "subject_role" => &mut req.subject_role,
                "client_secret" => {
                    req.client_secret = Some(Secret::new(value));
                    continue;
                }
                // RFC 6749 3.2: unrecognised parameters are ignored.
                _ => continue,
            };
            *slot = Some(value);
        }
        req.grant_type = grant_type
            .ok_or_else(|| OAuthError::invalid_request("the grant_type parameter is missing"))?;
        Ok(req)
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

    #[test]
    fn repeated_parameters_are_invalid_requests() {
        let err = TokenRequest::from_form(pairs(&[
            ("grant_type", "client_credentials"),
            ("scope", "a"),
            ("scope", "b"),
        ]))
        .unwrap_err();
        assert_eq!(err.code, crate::OAuthErrorCode::InvalidRequest);
    }

    #[test]
    fn resource_may_repeat_and_empty_values_are_omitted() {
        let req = TokenRequest::from_form(pairs(&[
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
    fn missing_grant_type_is_an_invalid_request() {
        let err = TokenRequest::from_form(pairs(&[("client_id", "x")])).unwrap_err();
        assert_eq!(err.code, crate::OAuthErrorCode::InvalidRequest);
    }
}
