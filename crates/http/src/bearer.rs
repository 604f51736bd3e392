//! Authorization of requests to Tessera's resource servers (AIM and the FHIR Vault) from their access token, as ITI-72 describes: the token comes only in
//! `Authorization: Bearer` (a token in the query string is ignored), must be a current,
//! unrevoked token of the realm, bound to this connection's certificate when it has
//! `cnf`, meant for this service (`aud`), and carry the scope the call needs.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use tessera_iam::request::PresentedCertificate;
use tessera_iam::VerifiedToken;
use tessera_types::RealmName;

use crate::error::BearerError;
use crate::{blocking, now, read, realm_state, ApiError, AppState};
use tessera_outbound::gateway::Introspector;

pub struct Requirement<'a> {
    pub realm: &'a RealmName,
    pub audience: &'a str,
    pub scope: &'a str,
}

pub async fn authorize(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    need: Requirement<'_>,
) -> Result<Arc<VerifiedToken>, ApiError> {
    let token = verify(req, state, need.realm, Some(&[need.audience]), None).await?;
    if !token.claims.scope.split(' ').any(|s| s == need.scope) {
        return Err(ApiError::Bearer {
            realm: need.realm.to_string(),
            error: BearerError::InsufficientScope,
        });
    }
    Ok(token)
}

/// Everything but the scope: a current, unrevoked token of `realm` in the
/// Authorization header, bound to this connection's certificate if it has `cnf`, and
/// meant for one of `audiences` (`None`: any, for the authorization server's own
/// endpoints such as UserInfo). What the token permits is for the caller to decide. With
/// `remote`, an authorization server's introspection endpoint says whether the token is
/// active (gateway mode) instead of this installation's keys and revocation list.
pub async fn verify(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    realm_name: &RealmName,
    audiences: Option<&[&str]>,
    remote: Option<Arc<Introspector>>,
) -> Result<Arc<VerifiedToken>, ApiError> {
    let refuse = |error| ApiError::Bearer {
        realm: realm_name.to_string(),
        error,
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refuse(BearerError::Missing))?;
    verify_presented(req, state, realm_name, audiences, remote, token).await
}

/// [`verify`] for a token the request presented some other way (the audit console's
/// cookie).
pub async fn verify_presented(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    realm_name: &RealmName,
    audiences: Option<&[&str]>,
    remote: Option<Arc<Introspector>>,
    token: String,
) -> Result<Arc<VerifiedToken>, ApiError> {
    let refuse = |error| ApiError::Bearer {
        realm: realm_name.to_string(),
        error,
    };
    let at = now();
    let verified = match remote {
        Some(remote) => blocking(move || remote.active(&token, at))
            .await?
            .map_err(ApiError::Unavailable)?,
        None => {
            let realm = realm_state(state, realm_name.as_str()).await?;
            let st = state.clone().into_inner();
            let skew = state.tokens.settings().clock_skew_seconds;
            read(state, move || {
                st.introspection.active(&realm, &st.store, &token, at, skew)
            })
            .await??
        }
    };
    let token = verified.ok_or_else(|| refuse(BearerError::InvalidToken))?;
    if let Some(cnf) = &token.claims.cnf {
        let presented = req
            .conn_data::<PresentedCertificate>()
            .map(|c| c.thumbprint.as_str());
        if presented != Some(cnf.x5t_s256.as_str()) {
            return Err(refuse(BearerError::InvalidToken));
        }
    }
    let meant_for_us = audiences.is_none_or(|audiences| {
        token
            .claims
            .aud
            .iter()
            .any(|aud| audiences.contains(&aud.as_str()))
    });
    if !meant_for_us {
        return Err(refuse(BearerError::InvalidToken));
    }
    Ok(token)
}
