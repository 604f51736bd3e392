//! ITI-71 token endpoint, JWKS and ITI-103 metadata.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use tessera_iam::metadata::authorization_server_metadata;
use tessera_iam::request::{Credentials, PresentedCertificate, TokenRequest};
use tessera_iam::{OAuthError, RealmState};
use tessera_types::{RealmName, Secret};

use crate::{now, ApiError, AppState};

const FORM_LIMIT: usize = 64 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/realms/{realm}/protocol/openid-connect/token")
            .app_data(web::PayloadConfig::new(FORM_LIMIT))
            .route(web::post().to(token)),
    )
    .route(
        "/realms/{realm}/protocol/openid-connect/certs",
        web::get().to(certs),
    )
    .route(
        "/realms/{realm}/.well-known/openid-configuration",
        web::get().to(metadata),
    )
    .route(
        "/.well-known/oauth-authorization-server/realms/{realm}",
        web::get().to(metadata),
    );
}

/// Loads the realm (from cache when fresh); unknown realms are 404.
async fn realm_state(state: &web::Data<AppState>, name: &str) -> Result<Arc<RealmState>, ApiError> {
    let realm = RealmName::try_from(name).map_err(|_| ApiError::UnknownRealm(name.to_owned()))?;
    let at = now();
    if let Some(cached) = state.tokens.cached_realm(&realm, at) {
        return Ok(cached);
    }
    let st = state.clone().into_inner();
    let found = web::block(move || st.tokens.realm(&realm, at))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    found.ok_or_else(|| ApiError::UnknownRealm(name.to_owned()))
}

/// RFC 6749 2.3.1: `Basic base64(urlencode(id):urlencode(secret))`.
fn basic_credentials(req: &HttpRequest) -> Result<Option<(String, Secret)>, OAuthError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || OAuthError::invalid_request("malformed Authorization header");
    let value = value.to_str().map_err(|_| bad())?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err(OAuthError::invalid_request(
            "the token endpoint accepts only Basic authorization",
        ));
    };
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let form_decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| bad())
    };
    Ok(Some((form_decode(id)?, Secret::new(form_decode(secret)?))))
}

async fn token(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = issue(&req, &path, &body, &state).await;
    let outcome = match &result {
        Ok(_) => "issued",
        Err(ApiError::OAuth { error, .. }) => error.code.as_str(),
        Err(ApiError::UnknownRealm(_)) => "invalid_request",
        Err(_) => "server_error",
    };
    state.metrics.token_request(outcome, started.elapsed());
    result
}

async fn issue(
    req: &HttpRequest,
    realm: &str,
    body: &[u8],
    state: &web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let realm = realm_state(state, realm).await?;
    let basic = basic_credentials(req)?;
    let basic_realm = basic.as_ref().map(|_| realm.realm.name.to_string());
    let oauth = |error: OAuthError| ApiError::OAuth {
        error,
        basic_realm: basic_realm.clone(),
    };

    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(oauth(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        )));
    }
    let pairs = url::form_urlencoded::parse(body).into_owned().collect();
    let request = TokenRequest::from_form(pairs).map_err(oauth)?;
    let client_hint = request
        .client_id
        .clone()
        .or_else(|| basic.as_ref().map(|(id, _)| id.clone()));
    let credentials = Credentials {
        basic,
        certificate: req.conn_data::<PresentedCertificate>().cloned(),
    };

    let st = state.clone().into_inner();
    let at = now();
    let realm_for_log = realm.realm.name.clone();
    let result = web::block(move || st.tokens.issue(&realm, request, &credentials, at))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match result {
        Ok(issued) => {
            tracing::info!(
                realm = %realm_for_log,
                client_id = %issued.claims.client_id,
                auth = issued.auth_method,
                jti = %issued.claims.jti,
                scope = %issued.claims.scope,
                "token issued"
            );
            Ok(HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header((header::PRAGMA, "no-cache"))
                .json(issued.response))
        }
        Err(error) => {
            tracing::warn!(
                realm = %realm_for_log,
                client_id = client_hint.as_deref().unwrap_or("-"),
                error = error.code.as_str(),
                reason = %error.description,
                "token refused"
            );
            Err(oauth(error))
        }
    }
}

async fn certs(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let realm = realm_state(&state, &path).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=60"))
        .content_type("application/jwk-set+json")
        .json(&realm.jwks))
}

async fn metadata(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let realm = realm_state(&state, &path).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(authorization_server_metadata(
            &realm.issuer,
            realm.signer.alg(),
        )))
}
