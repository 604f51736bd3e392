//! `refresh_token` (RFC 6749 6, OAuth 2.0 Security BCP 4.14): a refresh token is used
//! once and replaced by a new one of the same family (rotation); presenting a rotated
//! one again means it was stolen, and the whole family is revoked. It is bound to its
//! client, may narrow but never widen the scope, and an `online_access` token dies
//! with the browser session it came from.

use tessera_types::{Scope, ScopeSet, UnixTime};

use crate::error::{OAuthError, StoreError};
use crate::grant::{RefreshRecord, UserGrant};
use crate::request::{ClientAuthParams, Credentials};
use crate::service::{secret_hash, IamStore, Issued, RealmState, TokenService};

impl<S: IamStore> TokenService<S> {
    pub(crate) fn refresh_token(
        &self,
        realm: &RealmState,
        client: &ClientAuthParams,
        credentials: &Credentials,
        refresh_token: &str,
        scope: Option<&str>,
        now: UnixTime,
    ) -> Result<Issued, OAuthError> {
        let name = &realm.realm.name;
        let (auth_client, cnf, grant, family) =
            self.authenticate_then(realm, client, credentials, now, |auth| {
                let narrowed = scope.map(ScopeSet::parse).transpose().map_err(|_| {
                    OAuthError::invalid_scope("scope contains characters RFC 6749 forbids")
                })?;
                let redeemed =
                    self.store()
                        .redeem_refresh(name, &secret_hash(refresh_token), now)?;
                let (record, family) = self.first_use(name, redeemed, "refresh token", now)?;
                if record.grant.client_id != auth.client.client_id.as_str() {
                    return Err(OAuthError::invalid_grant(
                        "the refresh token was issued to another client",
                    ));
                }
                if !record.offline && !self.store().session_active(&record.grant.session, now)? {
                    return Err(OAuthError::invalid_grant(
                        "the user's session ended (online_access)",
                    ));
                }
                let grant = match narrowed {
                    None => record.grant,
                    Some(asked) => narrow(record.grant, &asked)?,
                };
                Ok((auth.client.clone(), auth.cnf.clone(), grant, family))
            })?;
        self.mint_user_tokens(realm, &auth_client, cnf, &grant, &family, now)
    }
}

/// A live refresh token as introspection and revocation see it.
#[derive(Debug, Clone)]
pub struct LiveRefresh {
    pub record: RefreshRecord,
    pub family: String,
    pub expires_at: i64,
}

impl LiveRefresh {
    /// RFC 7662 claims of the refresh token.
    pub fn introspection(&self, issuer: &str) -> serde_json::Value {
        serde_json::json!({
            "active": true,
            "token_type": "refresh_token",
            "iss": issuer,
            "client_id": self.record.grant.client_id,
            "sub": self.record.grant.user_id,
            "scope": self.record.grant.scope,
            "exp": self.expires_at,
        })
    }
}

impl<S: IamStore> TokenService<S> {
    /// A refresh token that would be accepted now (unused, unrevoked, unexpired, and for
    /// `online_access` its session still logged in), without using it.
    pub fn live_refresh(
        &self,
        realm: &RealmState,
        token: &str,
        now: UnixTime,
    ) -> Result<Option<LiveRefresh>, StoreError> {
        let Some((record, family, expires_at)) =
            self.store()
                .live_refresh(&realm.realm.name, &secret_hash(token), now)?
        else {
            return Ok(None);
        };
        if !record.offline && !self.store().session_active(&record.grant.session, now)? {
            return Ok(None);
        }
        Ok(Some(LiveRefresh {
            record,
            family,
            expires_at,
        }))
    }

    /// RFC 7009 2.1: revoking a refresh token revokes its grant: the family's refresh
    /// and access tokens.
    pub fn revoke_refresh(
        &self,
        realm: &RealmState,
        live: &LiveRefresh,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.store()
            .revoke_family(&realm.realm.name, &live.family, now)
    }
}

/// RFC 6749 6: the new scope must be within the original grant.
fn narrow(mut grant: UserGrant, asked: &ScopeSet) -> Result<UserGrant, OAuthError> {
    let original = ScopeSet::parse(&grant.scope).unwrap_or_default();
    let wider: Vec<&Scope> = asked.not_in(&original).collect();
    if !wider.is_empty() {
        let names: Vec<&str> = wider.iter().map(|s| s.as_str()).collect();
        return Err(OAuthError::invalid_scope(format!(
            "beyond the original grant: {}",
            names.join(" ")
        )));
    }
    if !asked.is_empty() {
        grant.scope = asked.to_string();
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(scope: &str) -> UserGrant {
        UserGrant {
            user_id: "u".into(),
            client_id: "c".into(),
            scope: scope.into(),
            audience: "https://h/fhir".into(),
            partition: None,
            account: None,
            patient: None,
            auth_time: 0,
            session: "s".into(),
            nonce: None,
            launch: None,
        }
    }

    #[test]
    fn a_refresh_may_narrow_but_not_widen() {
        let g = grant("offline_access patient/*.rs openid");
        let narrowed = narrow(
            g.clone(),
            &ScopeSet::parse("offline_access openid").unwrap(),
        );
        assert_eq!(narrowed.unwrap().scope, "offline_access openid");
        let wider = narrow(g.clone(), &ScopeSet::parse("patient/*.cruds").unwrap());
        assert_eq!(wider.unwrap_err().code, crate::OAuthErrorCode::InvalidScope);
        assert_eq!(narrow(g.clone(), &ScopeSet::default()).unwrap(), g);
    }
}
