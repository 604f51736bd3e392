//! CORS for browser apps (SMART apps running in a page): the token, revocation, UserInfo
//! and JWKS endpoints, the discovery documents, and the FHIR Vault (its `/metadata` and
//! SMART configuration included) answer cross-origin requests from the origins of the
//! registered redirect URIs, and their preflights. No credentials (cookies) are ever
//! allowed cross-origin: the login pages are same-origin only.

use std::collections::HashSet;
use std::sync::RwLock;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use tessera_types::UnixTime;

use crate::{blocking, now, AppState};

/// The allowed origins, reloaded from the client registry when older than the IAM
/// cache time.
#[derive(Default)]
pub struct Origins {
    cached: RwLock<Option<(UnixTime, HashSet<String>)>>,
}

impl Origins {
    async fn allows(&self, state: &web::Data<AppState>, origin: &str) -> bool {
        let at = now();
        let ttl = state.tokens.settings().cache_seconds;
        if let Ok(cached) = self.cached.read() {
            if let Some((loaded, origins)) = cached.as_ref() {
                if at.0 - loaded.0 < ttl {
                    return origins.contains(origin);
                }
            }
        }
        let store = state.store.clone();
        let loaded = match blocking(move || store.redirect_origins()).await {
            Ok(Ok(origins)) => origins,
            _ => {
                tracing::warn!("could not load the registered origins for CORS");
                return false;
            }
        };
        let allowed = loaded.contains(origin);
        if let Ok(mut cached) = self.cached.write() {
            *cached = Some((at, loaded));
        }
        allowed
    }
}

/// Does this path serve browser apps across origins?
fn cross_origin_path(path: &str) -> bool {
    if path.starts_with("/fhir/") || path.starts_with("/.well-known/oauth-authorization-server/") {
        return true;
    }
    let Some(rest) = path.strip_prefix("/realms/") else {
        return false;
    };
    let Some((_, tail)) = rest.split_once('/') else {
        return false;
    };
    if tail == ".well-known/openid-configuration" {
        return true;
    }
    let endpoint = tail
        .strip_prefix(tessera_iam::metadata::ENDPOINTS)
        .and_then(|rest| rest.strip_prefix('/'));
    matches!(endpoint, Some("token" | "revoke" | "userinfo" | "certs"))
}

const ALLOW_HEADERS: &str =
    "authorization, content-type, accept, if-match, if-none-match, if-modified-since, prefer";
const EXPOSE_HEADERS: &str =
    "location, content-location, etag, last-modified, www-authenticate, retry-after";

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (Some(origin), true) = (origin, cross_origin_path(req.path())) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let allowed = state.cors.allows(&state, &origin).await;
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let response = if allowed {
            HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                ))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                .insert_header((header::VARY, "Origin"))
                .finish()
        } else {
            HttpResponse::Forbidden()
                .insert_header((header::VARY, "Origin"))
                .finish()
        };
        return Ok(req.into_response(response));
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if allowed {
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cross_origin_paths() {
        for yes in [
            "/fhir/p1/Observation",
            "/fhir/p1/metadata",
            "/fhir/p1/.well-known/smart-configuration",
            "/realms/cara/protocol/openid-connect/token",
            "/realms/cara/protocol/openid-connect/userinfo",
            "/realms/cara/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server/realms/cara",
        ] {
            assert!(cross_origin_path(yes), "{yes}");
        }
        for no in [
            "/realms/cara/protocol/openid-connect/auth",
            "/realms/cara/login-actions/authenticate",
            "/realms/cara/account",
            "/realms/cara/protocol/openid-connect/token/introspect",
            "/audit/fhir/AuditEvent",
            "/aim/api/v1/query/get-account-urn-from-mpi-id-urn",
            "/metrics",
        ] {
            assert!(!cross_origin_path(no), "{no}");
        }
    }
}
