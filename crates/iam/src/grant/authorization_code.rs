//! `authorization_code` with PKCE (RFC 6749 4.1, RFC 7636, SMART App Launch 2.2): the
//! code a person's consent produced is exchanged, once, by the client it was issued to,
//! with the redirect URI it was sent to and the verifier of its challenge. A second
//! use revokes everything the first one issued (RFC 6749 4.1.2).

use ring::digest;
use tessera_types::{RealmName, UnixTime};

use crate::authorize::{pkce_value_ok, Decision, Target, ValidRequest};
use crate::client::{Client, IuaAttributes};
use crate::error::{OAuthError, StoreError};
use crate::grant::{CodeRecord, RefreshRecord, UserGrant};
use crate::jose::b64;
use crate::request::{ClientAuthParams, Credentials};
use crate::service::{
    random_b64, random_id, secret_hash, IamStore, Issued, NewRefresh, RealmState, TokenService,
};
use crate::token::{
    AccessTokenClaims, Confirmation, Extensions, IdTokenClaims, IheIua, TokenResponse,
};
use crate::user::{Role, User};

/// RFC 6749 4.1.2 recommends at most ten minutes; SMART apps exchange at once.
pub const CODE_LIFETIME_SECONDS: i64 = 60;

/// The parameters of a code exchange besides client authentication.
#[derive(Debug, Clone, Copy)]
pub struct CodeExchange<'a> {
    pub code: &'a str,
    pub redirect_uri: Option<&'a str>,
    pub code_verifier: Option<&'a str>,
}

/// What the browser session contributes to a grant.
#[derive(Debug, Clone)]
pub struct LoggedIn<'a> {
    pub user: &'a User,
    /// The hash of the session id.
    pub session: &'a str,
    pub auth_time: i64,
}

/// RFC 7636 4.6: BASE64URL(SHA256(ASCII(code_verifier))) == code_challenge.
pub fn s256(verifier: &str) -> String {
    b64(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref())
}

impl<S: IamStore> TokenService<S> {
    /// Issues the code of a decided request; returns the code (shown once, stored hashed).
    pub fn issue_code(
        &self,
        realm: &RealmName,
        valid: &ValidRequest,
        decision: &Decision,
        login: &LoggedIn<'_>,
        patient: Option<String>,
        now: UnixTime,
    ) -> Result<String, OAuthError> {
        let code = random_b64(32).ok_or_else(OAuthError::server_error)?;
        let family = random_id().ok_or_else(OAuthError::server_error)?;
        let audience = match (&valid.target, &decision.partition) {
            (Target::Partition { audience, .. }, _) => audience.clone(),
            (Target::Any { audience }, Some(chosen)) => format!("{audience}/{}", chosen.partition),
            (Target::Any { audience }, None) => audience.clone(),
        };
        let record = CodeRecord {
            grant: UserGrant {
                user_id: login.user.id.clone(),
                client_id: valid.client.client_id.to_string(),
                scope: decision.scope.to_string(),
                audience,
                partition: decision.partition.as_ref().map(|p| p.partition.to_string()),
                account: decision.partition.as_ref().map(|p| p.account.to_string()),
                patient,
                auth_time: login.auth_time,
                session: login.session.to_owned(),
                nonce: valid.request.nonce.clone(),
                launch: valid.launch.as_ref().map(|(_, context)| context.clone()),
            },
            redirect_uri: valid.redirect_uri.clone(),
            code_challenge: valid.code_challenge.clone(),
        };
        self.store().save_code(
            realm,
            &secret_hash(&code),
            &family,
            &record,
            now.plus_seconds(CODE_LIFETIME_SECONDS),
        )?;
        Ok(code)
    }

    pub(crate) fn authorization_code(
        &self,
        realm: &RealmState,
        client: &ClientAuthParams,
        credentials: &Credentials,
        exchange: CodeExchange<'_>,
        now: UnixTime,
    ) -> Result<Issued, OAuthError> {
        let name = &realm.realm.name;
        let (auth_client, cnf, record, family) =
            self.authenticate_then(realm, client, credentials, now, |auth| {
                // The verifier's form is checked before the code is spent, so a
                // malformed request does not burn a good code.
                let verifier = exchange.code_verifier.ok_or_else(|| {
                    OAuthError::invalid_request("code_verifier is required (PKCE)")
                })?;
                if !pkce_value_ok(verifier) {
                    return Err(OAuthError::invalid_request(
                        "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
                    ));
                }
                let redeemed = self
                    .store()
                    .redeem_code(name, &secret_hash(exchange.code), now)?;
                let (record, family) = self.first_use(name, redeemed, "code", now)?;
                if record.grant.client_id != auth.client.client_id.as_str() {
                    return Err(OAuthError::invalid_grant(
                        "the code was issued to another client",
                    ));
                }
                if exchange.redirect_uri != Some(record.redirect_uri.as_str()) {
                    return Err(OAuthError::invalid_grant(
                        "redirect_uri differs from the authorization request's",
                    ));
                }
                if s256(verifier) != record.code_challenge {
                    return Err(OAuthError::invalid_grant(
                        "code_verifier does not match the code_challenge",
                    ));
                }
                Ok((auth.client.clone(), auth.cnf.clone(), record, family))
            })?;
        self.mint_user_tokens(realm, &auth_client, cnf, &record.grant, &family, now)
    }

    /// The access token (and refresh token, for `offline_access` / `online_access`) of
    /// a person's grant; both are recorded in the family.
    pub(crate) fn mint_user_tokens(
        &self,
        realm: &RealmState,
        client: &Client,
        cnf: Option<Confirmation>,
        grant: &UserGrant,
        family: &str,
        now: UnixTime,
    ) -> Result<Issued, OAuthError> {
        let name = &realm.realm.name;
        let user = self
            .store()
            .user_by_id(name, &grant.user_id)?
            .filter(|u| u.enabled)
            .ok_or_else(|| OAuthError::invalid_grant("the user is disabled or no longer exists"))?;
        let lifetime = realm.realm.token_lifetime_seconds;
        let claims = AccessTokenClaims {
            iss: realm.issuer.clone(),
            sub: user.id.clone(),
            client_id: client.client_id.to_string(),
            aud: vec![grant.audience.clone()],
            jti: random_id().ok_or_else(OAuthError::server_error)?,
            iat: now.0,
            exp: now.0 + lifetime,
            scope: grant.scope.clone(),
            cnf,
            account: grant.account.clone(),
            partitions: grant.partition.iter().cloned().collect(),
            extensions: user_extensions(&user),
        };
        let access_token = realm.sign_access_token(&claims)?;
        let scopes: Vec<&str> = grant.scope.split(' ').collect();
        let offline = scopes.contains(&"offline_access");
        let refresh_token = if offline || scopes.contains(&"online_access") {
            Some(random_b64(32).ok_or_else(OAuthError::server_error)?)
        } else {
            None
        };
        // A refreshed id_token carries no nonce (OpenID Connect Core 12.2).
        let record = RefreshRecord {
            grant: UserGrant {
                nonce: None,
                ..grant.clone()
            },
            offline,
        };
        let refresh_hash = refresh_token.as_deref().map(secret_hash);
        self.store().record_issued(
            name,
            family,
            &claims,
            refresh_hash.as_deref().map(|token_hash| NewRefresh {
                token_hash,
                record: &record,
                expires_at: now.plus_seconds(self.settings().refresh_token_lifetime_seconds),
            }),
        )?;
        let mut response = TokenResponse::bearer(access_token, lifetime, claims.scope.clone());
        response.refresh_token = refresh_token;
        if scopes.contains(&"openid") {
            response.id_token = Some(self.id_token(realm, client, &user, grant, &scopes, now)?);
        }
        if scopes.contains(&"launch/patient") || grant.patient.is_some() {
            response.patient = grant.patient.clone();
            response.need_patient_banner = Some(user.role != Role::Patient);
        }
        if let Some(launch) = &grant.launch {
            response.encounter = launch.encounter.clone();
            response.fhir_context = launch.fhir_context.clone();
            response.smart_style_url = launch.smart_style_url.clone();
            if launch.need_patient_banner.is_some() {
                response.need_patient_banner = launch.need_patient_banner;
            }
        }
        Ok(Issued {
            response,
            claims,
            auth_method: client.auth.method_name(),
        })
    }
}

impl<S: IamStore> TokenService<S> {
    /// OpenID Connect UserInfo for a verified access token of a person with `openid`;
    /// `None` when the token is not a person's (or the user is gone or disabled).
    pub fn userinfo(
        &self,
        realm: &RealmState,
        claims: &AccessTokenClaims,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let Some(user) = self
            .store()
            .user_by_id(&realm.realm.name, &claims.sub)?
            .filter(|u| u.enabled)
        else {
            return Ok(None);
        };
        let scopes: Vec<&str> = claims.scope.split(' ').collect();
        let mut info = serde_json::json!({ "sub": user.id });
        if scopes.contains(&"fhirUser") {
            let audience = claims.aud.first().map(String::as_str).unwrap_or_default();
            let partition = claims.partitions.first().map(String::as_str);
            if let Some(url) = self.fhir_user_url(&user, audience, partition)? {
                info["fhirUser"] = serde_json::json!(url);
            }
        }
        if scopes.contains(&"profile") {
            info["preferred_username"] = serde_json::json!(user.username);
        }
        Ok(Some(info))
    }

    /// The id_token of a grant with `openid`, signed with the realm's RS256 id key.
    fn id_token(
        &self,
        realm: &RealmState,
        client: &Client,
        user: &User,
        grant: &UserGrant,
        scopes: &[&str],
        now: UnixTime,
    ) -> Result<String, OAuthError> {
        let signer = realm.id_signer.as_ref().ok_or_else(|| {
            tracing::error!(realm = %realm.realm.name, "the realm has no id_token key; restart `tessera serve` to create it");
            OAuthError::server_error()
        })?;
        let fhir_user = if scopes.contains(&"fhirUser") {
            self.fhir_user_url(user, &grant.audience, grant.partition.as_deref())?
        } else {
            None
        };
        let claims = IdTokenClaims {
            iss: realm.issuer.clone(),
            sub: user.id.clone(),
            aud: client.client_id.to_string(),
            azp: client.client_id.to_string(),
            iat: now.0,
            exp: now.0 + realm.realm.token_lifetime_seconds,
            auth_time: grant.auth_time,
            nonce: grant.nonce.clone(),
            fhir_user,
            preferred_username: scopes.contains(&"profile").then(|| user.username.clone()),
        };
        signer.sign("JWT", &claims).map_err(|e| {
            tracing::error!(error = %e, "could not sign an id_token");
            OAuthError::server_error()
        })
    }

    /// SMART `fhirUser`: the user's own resource as an absolute URL under the partition
    /// a token is for (its `audience` is then that partition's base URL), or else under
    /// the first partition of the user's first account.
    pub fn fhir_user_url(
        &self,
        user: &User,
        audience: &str,
        partition: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let Some(reference) = &user.fhir_user else {
            return Ok(None);
        };
        if partition.is_some() {
            return Ok(Some(format!("{audience}/{reference}")));
        }
        let Some(account) = user.accounts.first() else {
            return Ok(None);
        };
        let first = self
            .store()
            .account_partitions(account)?
            .and_then(|p| p.into_iter().next());
        Ok(first.map(|p| format!("{audience}/{p}/{reference}")))
    }
}

/// IUA `extensions.ihe_iua` for a person: their name, CH:EPR role and GLN.
fn user_extensions(user: &User) -> Extensions {
    Extensions {
        ihe_iua: IheIua {
            attributes: IuaAttributes {
                subject_name: Some(user.username.clone()),
                subject_role: user.role.subject_role(),
                national_provider_identifier: user.gln.clone(),
                ..IuaAttributes::default()
            },
            person_id: None,
        },
        ch_delegation: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_is_rfc_7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
