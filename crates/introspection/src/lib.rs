//! Token introspection (RFC 7662, IHE ITI-102) and revocation (RFC 7009).
//!
//! Who may introspect: a client whose registration includes the `introspection` scope,
//! authenticated like at the token endpoint (mutual TLS, client secret,
//! private_key_jwt), or the holder of an access token with that scope (IUA's Bearer
//! option). What it learns: `{"active": false}` and nothing else for any token that is
//! not a current token of the realm, revoked, or (when the caller is a registered
//! resource server) not meant for it; otherwise the token's claims as signed.
//!
//! This crate owns that policy. It depends on `iam` for the token format and client
//! authentication, and must not depend on a web framework or a database library.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tessera_iam::request::{Credentials, TokenQuery};
use tessera_iam::{
    IamStore, OAuthError, OAuthErrorCode, RealmState, StoreError, TokenService, VerifiedToken,
};
use tessera_types::{ClientId, RealmName, Scope, UnixTime};

/// The scope that lets a client or a token holder call the introspection endpoint.
pub const INTROSPECTION_SCOPE: &str = "introspection";

/// The revocation key that ends every token of a client issued until the revocation
/// (`tessera client disable`).
pub fn client_revocation(client_id: &str) -> String {
    format!("client:{client_id}")
}

/// The revocation key that ends every token bound to a certificate (its
/// `cnf.x5t#S256`) issued until the revocation (`tessera pki revoke`).
pub fn certificate_revocation(x5t_s256: &str) -> String {
    format!("x5t#S256:{x5t_s256}")
}

/// Is the token revoked, given the revocations found under its keys (key, revoked at)?
/// Its own `jti` ends it whenever it was revoked; a client's or certificate's
/// revocation ends the tokens issued until then (a client enabled again gets working
/// tokens, the old ones stay dead).
pub fn is_revoked(claims: &tessera_iam::token::AccessTokenClaims, found: &[(String, i64)]) -> bool {
    found
        .iter()
        .any(|(key, revoked_at)| *key == claims.jti || *revoked_at >= claims.iat)
}

/// The keys a token may be revoked under: its `jti`, its client, its certificate.
pub fn revocation_keys(claims: &tessera_iam::token::AccessTokenClaims) -> Vec<String> {
    let mut keys = vec![claims.jti.clone(), client_revocation(&claims.client_id)];
    if let Some(cnf) = &claims.cnf {
        keys.push(certificate_revocation(&cnf.x5t_s256));
    }
    keys
}

/// Revoked access tokens by realm and `jti`, and wider revocations (a client, a
/// certificate) under the keys of [`client_revocation`] and [`certificate_revocation`].
pub trait RevocationStore: Send + Sync {
    /// Records the revocation; revoking twice is not an error (the later time is kept).
    /// `expires_at` is when the record may be forgotten (the token would be inactive
    /// anyway).
    fn revoke(
        &self,
        realm: &RealmName,
        jti: &str,
        client: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// The revocations recorded under any of `keys`: (key, revoked at). One query.
    fn revocations(
        &self,
        realm: &RealmName,
        keys: &[String],
    ) -> Result<Vec<(String, i64)>, StoreError>;
}

/// Why the caller of the introspection endpoint was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    /// Client authentication failed or the client may not introspect (RFC 6749 errors).
    #[error(transparent)]
    Client(#[from] OAuthError),
    /// The caller's own Bearer token is not valid (RFC 6750 `invalid_token`).
    #[error("the bearer token is not valid")]
    InvalidBearer,
    /// The caller's Bearer token lacks the introspection scope (RFC 6750
    /// `insufficient_scope`; answered 401 as ITI-102 expects, not 403).
    #[error("the bearer token lacks the introspection scope")]
    InsufficientScope,
}

impl From<StoreError> for IntrospectionError {
    fn from(err: StoreError) -> Self {
        IntrospectionError::Client(err.into())
    }
}

/// An introspection request as the caller sent it: the form, what the connection and
/// headers proved, and the caller's own access token when it used `Authorization: Bearer`.
#[derive(Clone, Copy)]
pub struct IntrospectionRequest<'a> {
    pub query: &'a TokenQuery,
    pub credentials: &'a Credentials,
    pub bearer: Option<&'a str>,
}

/// What an introspection answers (RFC 7662 2.2).
#[derive(Debug)]
pub enum Introspected {
    /// A current access token of the realm, meant for the caller.
    Access(Arc<VerifiedToken>),
    /// A live refresh token, told to a caller that is not a resource server: its claims.
    Refresh(Value),
    /// Anything else: `{"active": false}` and nothing more.
    Inactive,
}

impl Introspected {
    pub fn is_active(&self) -> bool {
        !matches!(self, Introspected::Inactive)
    }

    /// The access token's `jti`, for the audit record.
    pub fn jti(&self) -> Option<&str> {
        match self {
            Introspected::Access(token) => Some(&token.claims.jti),
            Introspected::Refresh(_) | Introspected::Inactive => None,
        }
    }

    /// The answer's JSON.
    pub fn json(&self) -> String {
        match self {
            Introspected::Access(token) => token.introspection_json().to_owned(),
            Introspected::Refresh(claims) => claims.to_string(),
            Introspected::Inactive => r#"{"active":false}"#.to_owned(),
        }
    }
}

/// The identity behind an introspection request.
struct Caller {
    client_id: ClientId,
    resource_servers: Vec<String>,
}

/// How many verified tokens are remembered. Verifying a signature costs far more than
/// the rest of an introspection, and a gateway asks about the same token repeatedly.
const CACHE_CAPACITY: usize = 16_384;

#[derive(Default)]
pub struct Introspection {
    verified: Mutex<HashMap<(RealmName, String), Arc<VerifiedToken>>>,
}

impl Introspection {
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies `token` for `realm`, from cache when it was verified before. The cache
    /// is keyed by the whole token, never by its unverified `jti`, so a forged token
    /// can never be answered from it.
    fn verify(
        &self,
        realm: &RealmState,
        token: &str,
        now: UnixTime,
        skew: i64,
    ) -> Option<Arc<VerifiedToken>> {
        let key = (realm.realm.name.clone(), token.to_owned());
        if let Some(hit) = self.verified.lock().ok()?.get(&key) {
            // Time passes and keys retire: a cached verification holds only while both allow.
            return (hit.claims.exp > now.0 && realm.has_key(&hit.kid)).then(|| hit.clone());
        }
        let verified = Arc::new(realm.verify_access_token(token, now, skew).ok()?);
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, v| v.claims.exp > now.0);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(key, verified.clone());
        }
        Some(verified)
    }

    /// Is this a current, unrevoked token of the realm? Returns it if so.
    pub fn active<R: RevocationStore>(
        &self,
        realm: &RealmState,
        revocations: &R,
        token: &str,
        now: UnixTime,
        skew: i64,
    ) -> Result<Option<Arc<VerifiedToken>>, StoreError> {
        let Some(verified) = self.verify(realm, token, now, skew) else {
            return Ok(None);
        };
        let keys = revocation_keys(&verified.claims);
        let found = revocations.revocations(&realm.realm.name, &keys)?;
        if is_revoked(&verified.claims, &found) {
            return Ok(None);
        }
        Ok(Some(verified))
    }

    /// RFC 7662 / ITI-102.
    pub fn introspect<S: IamStore, R: RevocationStore>(
        &self,
        tokens: &TokenService<S>,
        revocations: &R,
        realm: &RealmState,
        request: &IntrospectionRequest<'_>,
        now: UnixTime,
    ) -> Result<Introspected, IntrospectionError> {
        let IntrospectionRequest {
            query,
            credentials,
            bearer,
        } = *request;
        let skew = tokens.settings().clock_skew_seconds;
        let caller = match bearer {
            Some(bearer) => self.bearer_caller(tokens, revocations, realm, request, bearer, now)?,
            None => tokens.authenticate_then(realm, &query.client, credentials, now, |auth| {
                if !may_introspect(auth.client.scopes.iter()) {
                    return Err(OAuthError::invalid_client(format!(
                        "this client may not introspect tokens (it needs the '{INTROSPECTION_SCOPE}' scope)"
                    )));
                }
                Ok(Caller {
                    client_id: auth.client.client_id.clone(),
                    resource_servers: auth.client.resource_servers.clone(),
                })
            })?,
        };
        let Some(token) = self.active(realm, revocations, &query.token, now, skew)? else {
            // Not an access token: a refresh token, told only to callers that are not a
            // resource server (refresh tokens are never meant for one).
            if caller.resource_servers.is_empty() {
                if let Some(live) = tokens.live_refresh(realm, &query.token, now)? {
                    return Ok(Introspected::Refresh(live.introspection(&realm.issuer)));
                }
            }
            return Ok(Introspected::Inactive);
        };
        let for_caller = caller.resource_servers.is_empty()
            || token
                .claims
                .aud
                .iter()
                .any(|aud| caller.resource_servers.contains(aud));
        if !for_caller {
            tracing::info!(caller = %caller.client_id, "introspected token is not meant for this resource server");
            return Ok(Introspected::Inactive);
        }
        Ok(Introspected::Access(token))
    }

    /// IUA's Bearer option: the caller shows an access token of its own with the
    /// introspection scope, bound to its certificate if the token says so.
    fn bearer_caller<S: IamStore, R: RevocationStore>(
        &self,
        tokens: &TokenService<S>,
        revocations: &R,
        realm: &RealmState,
        request: &IntrospectionRequest<'_>,
        bearer: &str,
        now: UnixTime,
    ) -> Result<Caller, IntrospectionError> {
        let credentials = request.credentials;
        let client = &request.query.client;
        if client.client_id.is_some()
            || client.client_secret.is_some()
            || client.client_assertion.is_some()
        {
            return Err(OAuthError::invalid_request(
                "authenticate with a Bearer token or as a client, not both",
            )
            .into());
        }
        let skew = tokens.settings().clock_skew_seconds;
        let token = self
            .active(realm, revocations, bearer, now, skew)?
            .ok_or(IntrospectionError::InvalidBearer)?;
        if let Some(cnf) = &token.claims.cnf {
            let presented = credentials
                .certificate
                .as_ref()
                .map(|c| c.thumbprint.as_str());
            if presented != Some(cnf.x5t_s256.as_str()) {
                return Err(IntrospectionError::InvalidBearer);
            }
        }
        let scopes: Vec<Scope> = token
            .claims
            .scope
            .split(' ')
            .filter_map(|s| Scope::try_from(s).ok())
            .collect();
        if !may_introspect(scopes.iter()) {
            return Err(IntrospectionError::InsufficientScope);
        }
        let client_id = ClientId::try_from(token.claims.client_id.as_str())
            .map_err(|_| IntrospectionError::InvalidBearer)?;
        let registration = tokens
            .client(&realm.realm.name, &client_id, now)?
            .filter(|c| c.enabled)
            .ok_or(IntrospectionError::InvalidBearer)?;
        Ok(Caller {
            client_id,
            resource_servers: registration.resource_servers.clone(),
        })
    }

    /// RFC 7009: a client revokes one of its own tokens. Unknown, invalid and expired
    /// tokens are not errors (there is nothing to revoke); another client's token is
    /// refused and stays valid.
    pub fn revoke<S: IamStore, R: RevocationStore>(
        &self,
        tokens: &TokenService<S>,
        revocations: &R,
        realm: &RealmState,
        query: &TokenQuery,
        credentials: &Credentials,
        now: UnixTime,
    ) -> Result<Option<String>, OAuthError> {
        // Answers what was revoked: an access token's jti, or `refresh-family:{id}`.
        let skew = tokens.settings().clock_skew_seconds;
        let not_yours = || {
            OAuthError::new(
                OAuthErrorCode::UnauthorizedClient,
                "the token was not issued to this client",
            )
        };
        let target = tokens.authenticate_then(realm, &query.client, credentials, now, |auth| {
            let Some(token) = self.verify(realm, &query.token, now, skew) else {
                // A refresh token: revoking it revokes its grant (RFC 7009 2.1).
                let Some(live) = tokens.live_refresh(realm, &query.token, now)? else {
                    return Ok(Revocable::Nothing);
                };
                if live.record.grant.client_id != auth.client.client_id.as_str() {
                    return Err(not_yours());
                }
                return Ok(Revocable::Refresh(Box::new(live)));
            };
            if token.claims.client_id != auth.client.client_id.as_str() {
                return Err(not_yours());
            }
            Ok(Revocable::Access(token))
        })?;
        let token = match target {
            Revocable::Nothing => return Ok(None),
            Revocable::Refresh(live) => {
                tokens.revoke_refresh(realm, &live, now)?;
                return Ok(Some(format!("refresh-family:{}", live.family)));
            }
            Revocable::Access(token) => token,
        };
        let claims = &token.claims;
        revocations.revoke(
            &realm.realm.name,
            &claims.jti,
            &claims.client_id,
            tessera_types::UnixTime(claims.exp),
            now,
        )?;
        Ok(Some(claims.jti.clone()))
    }
}

/// What a revocation request names.
enum Revocable {
    Nothing,
    Access(Arc<VerifiedToken>),
    Refresh(Box<tessera_iam::grant::refresh_token::LiveRefresh>),
}

fn may_introspect<'a>(mut scopes: impl Iterator<Item = &'a Scope>) -> bool {
    scopes.any(|s| s.as_str() == INTROSPECTION_SCOPE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_iam::token::{AccessTokenClaims, Confirmation};

    fn claims(iat: i64, bound: bool) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://h/realms/cara".into(),
            sub: "tcu".into(),
            client_id: "tcu".into(),
            aud: vec!["https://h/fhir".into()],
            jti: "j1".into(),
            iat,
            exp: iat + 300,
            scope: "system/*.rs".into(),
            cnf: bound.then(|| Confirmation {
                x5t_s256: "thumb".into(),
            }),
            account: None,
            partitions: vec![],
            extensions: Default::default(),
        }
    }

    #[test]
    fn a_token_ends_with_its_jti_its_client_or_its_certificate() {
        let token = claims(1_000, true);
        assert_eq!(
            revocation_keys(&token),
            ["j1", "client:tcu", "x5t#S256:thumb"]
        );
        assert_eq!(revocation_keys(&claims(1_000, false)).len(), 2);
        let table: &[(&[(&str, i64)], bool)] = &[
            (&[], false),
            // Its own jti ends it whatever the clocks say.
            (&[("j1", 999)], true),
            // A client or certificate revocation ends what was issued until then ...
            (&[("client:tcu", 1_000)], true),
            (&[("x5t#S256:thumb", 1_500)], true),
            // ... not what was issued after it (the client was enabled again).
            (&[("client:tcu", 999)], false),
            (&[("x5t#S256:thumb", 999), ("client:tcu", 500)], false),
        ];
        for (found, revoked) in table {
            let found: Vec<(String, i64)> =
                found.iter().map(|(k, at)| (k.to_string(), *at)).collect();
            assert_eq!(is_revoked(&token, &found), *revoked, "{found:?}");
        }
    }
}
