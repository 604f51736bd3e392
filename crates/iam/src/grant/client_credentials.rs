//! `client_credentials` (RFC 6749 4.4): a technical user or SMART backend service asks
//! for a token for itself, within its registration (scopes, audience, account, CH:IUA
//! delegation parameters).

use std::collections::HashMap;
use std::sync::Arc;

use tessera_types::smart::scope_allowed;
use tessera_types::{AccountUrn, PartitionId, Scope, ScopeSet, UnixTime};

use crate::client::{Client, Coding, IuaAttributes, WILDCARD};
use crate::error::{OAuthError, OAuthErrorCode};
use crate::request::{Credentials, TokenRequest};
use crate::service::{invalid_client, random_id, IamStore, Issued, RealmState, TokenService};
use crate::token::{
    AccessTokenClaims, ChDelegation, Confirmation, Extensions, IheIua, TokenResponse,
};

impl<S: IamStore> TokenService<S> {
    pub(crate) fn client_credentials(
        &self,
        realm: &RealmState,
        request: TokenRequest,
        credentials: &Credentials,
        now: UnixTime,
    ) -> Result<Issued, OAuthError> {
        let grant = self.authenticate_then(realm, &request.client, credentials, now, |auth| {
            // A public client (a PKCE app) acts for a person, never for itself.
            if auth.client.auth.is_public() {
                return Err(OAuthError::new(
                    OAuthErrorCode::UnauthorizedClient,
                    "a public client may use only the authorization_code and refresh_token grants",
                ));
            }
            let scope = self.grant_scope(&auth.client, &request)?;
            Ok(Decided {
                audience: self.audience(&request)?,
                extensions: self.extensions(&auth.client, &request, &scope.extra)?,
                account: self.account(&auth.client, &request)?,
                scope,
                client: auth.client.clone(),
                cnf: auth.cnf.clone(),
            })
        })?;

        let lifetime = realm.realm.token_lifetime_seconds;
        // A token for an account may be used on that account's partitions; otherwise on
        // the partitions the client is registered for.
        let (account, partitions) = match grant.account {
            Some((urn, partitions)) => (Some(urn.to_string()), partitions),
            None => (None, grant.client.partitions.clone()),
        };
        let claims = AccessTokenClaims {
            iss: realm.issuer.clone(),
            sub: grant.client.client_id.to_string(),
            client_id: grant.client.client_id.to_string(),
            aud: grant.audience,
            jti: random_id().ok_or_else(OAuthError::server_error)?,
            iat: now.0,
            exp: now.0 + lifetime,
            scope: grant.scope.granted.to_string(),
            cnf: grant.cnf,
            account,
            partitions: partitions.iter().map(|p| p.to_string()).collect(),
            extensions: grant.extensions,
        };
        let access_token = realm.sign_access_token(&claims)?;
        Ok(Issued {
            response: TokenResponse::bearer(access_token, lifetime, claims.scope.clone()),
            claims,
            auth_method: grant.client.auth.method_name(),
        })
    }

    fn grant_scope(
        &self,
        client: &Client,
        request: &TokenRequest,
    ) -> Result<ScopeGrant, OAuthError> {
        let mut granted = Vec::new();
        let mut extra = HashMap::new();
        let Some(text) = request.scope.as_deref() else {
            return Ok(ScopeGrant {
                granted: client.scopes.clone(),
                extra,
            });
        };
        let mut refused = Vec::new();
        for token in text.split(' ').filter(|t| !t.is_empty()) {
            // CH:IUA extension parameters may travel inside `scope` as name=value.
            if let Some((name, value)) = token.split_once('=') {
                if CH_PARAMETERS.contains(&name) {
                    if extra.insert(name.to_owned(), value.to_owned()).is_some() {
                        return Err(OAuthError::invalid_scope(format!(
                            "{name} is repeated in scope"
                        )));
                    }
                    continue;
                }
            }
            let scope = Scope::try_from(token).map_err(|_| {
                OAuthError::invalid_scope("scope contains characters RFC 6749 forbids")
            })?;
            if scope_allowed(&scope, client.scopes.iter()) {
                granted.push(scope);
            } else {
                refused.push(token.to_owned());
            }
        }
        if !refused.is_empty() {
            return Err(OAuthError::invalid_scope(format!(
                "not allowed for this client: {}",
                refused.join(" ")
            )));
        }
        let granted: ScopeSet = granted.into_iter().collect();
        Ok(ScopeGrant {
            granted: if granted.is_empty() && extra.is_empty() {
                client.scopes.clone()
            } else {
                granted
            },
            extra,
        })
    }

    /// The `account` a token is asked for: allowed by the registration (that account or
    /// `*`) and existing; returns it with its partitions.
    fn account(
        &self,
        client: &Client,
        request: &TokenRequest,
    ) -> Result<Option<(AccountUrn, Vec<PartitionId>)>, OAuthError> {
        let Some(asked) = request.account.as_deref() else {
            return Ok(None);
        };
        let urn = AccountUrn::try_from(asked)
            .map_err(|e| OAuthError::invalid_request(format!("account: {e}")))?;
        let allowed = client
            .accounts
            .iter()
            .any(|a| a == WILDCARD || a == urn.as_str());
        if !allowed {
            return Err(invalid_client(
                "this client may not ask for tokens for that account",
            ));
        }
        let partitions = self
            .store()
            .account_partitions(&urn)?
            .ok_or_else(|| OAuthError::invalid_request("no such account"))?;
        Ok(Some((urn, partitions)))
    }

    /// RFC 8707: `resource` narrows the audience to the named, known resource servers.
    fn audience(&self, request: &TokenRequest) -> Result<Vec<String>, OAuthError> {
        if request.resource.is_empty() {
            return Ok(self.settings().audiences.clone());
        }
        for resource in &request.resource {
            let absolute = resource.contains("://") && !resource.contains('#');
            if !absolute {
                return Err(OAuthError::new(
                    OAuthErrorCode::InvalidTarget,
                    "resource must be an absolute URI without a fragment",
                ));
            }
            if !self.settings().audiences.iter().any(|a| a == resource) {
                return Err(OAuthError::new(
                    OAuthErrorCode::InvalidTarget,
                    format!("unknown resource: {resource}"),
                ));
            }
        }
        let mut audience = request.resource.clone();
        audience.dedup();
        Ok(audience)
    }

    /// Fills `extensions` from the registration and the CH:IUA request parameters; a
    /// parameter that contradicts the registration fails client authentication.
    fn extensions(
        &self,
        client: &Client,
        request: &TokenRequest,
        in_scope: &HashMap<String, String>,
    ) -> Result<Extensions, OAuthError> {
        let param = |name: &str, form: &Option<String>| -> Result<Option<String>, OAuthError> {
            match (form, in_scope.get(name)) {
                (Some(a), Some(b)) if a != b => Err(OAuthError::invalid_request(format!(
                    "{name} differs between the form and the scope"
                ))),
                (Some(a), _) => Ok(Some(a.clone())),
                (None, b) => Ok(b.cloned()),
            }
        };
        let must_match = |name: &str, asked: Option<String>, registered: &Option<String>| match (
            asked, registered,
        ) {
            (None, registered) => Ok(registered.clone()),
            (Some(asked), Some(registered)) if asked == *registered => Ok(Some(asked)),
            (Some(_), _) => Err(invalid_client(&format!(
                "{name} does not match the client registration"
            ))),
        };
        let coding = |name: &str, asked: Option<String>, registered: &Option<Coding>| {
            let asked = asked
                .map(|text| {
                    Coding::parse(&text).ok_or_else(|| {
                        OAuthError::invalid_request(format!("{name} must be written system|code"))
                    })
                })
                .transpose()?;
            match (asked, registered) {
                (None, registered) => Ok(registered.clone()),
                (Some(asked), Some(registered)) if asked != *registered => Err(invalid_client(
                    &format!("{name} does not match the client registration"),
                )),
                (Some(asked), _) => Ok(Some(asked)),
            }
        };

        let principal_id = must_match(
            "principal_id",
            param("principal_id", &request.principal_id)?,
            &client.principal_id,
        )?;
        let principal = must_match(
            "principal",
            param("principal", &request.principal)?,
            &client.principal_name,
        )?;
        let person_id = match param("person_id", &request.person_id)? {
            None => None,
            Some(asked) => {
                let allowed = client
                    .person_ids
                    .iter()
                    .any(|p| p == WILDCARD || *p == asked);
                if !allowed {
                    return Err(invalid_client("person_id is not allowed for this client"));
                }
                Some(asked)
            }
        };
        Ok(Extensions {
            ihe_iua: IheIua {
                attributes: IuaAttributes {
                    subject_role: coding(
                        "subject_role",
                        param("subject_role", &request.subject_role)?,
                        &client.iua.subject_role,
                    )?,
                    purpose_of_use: coding(
                        "purpose_of_use",
                        param("purpose_of_use", &request.purpose_of_use)?,
                        &client.iua.purpose_of_use,
                    )?,
                    ..client.iua.clone()
                },
                person_id,
            },
            ch_delegation: ChDelegation {
                principal,
                principal_id,
            },
        })
    }
}

const CH_PARAMETERS: [&str; 5] = [
    "principal_id",
    "principal",
    "person_id",
    "purpose_of_use",
    "subject_role",
];

/// Everything the checks of a token request decided.
struct Decided {
    client: Arc<Client>,
    cnf: Option<Confirmation>,
    scope: ScopeGrant,
    audience: Vec<String>,
    extensions: Extensions,
    account: Option<(AccountUrn, Vec<PartitionId>)>,
}

struct ScopeGrant {
    granted: ScopeSet,
    extra: HashMap<String, String>,
}
