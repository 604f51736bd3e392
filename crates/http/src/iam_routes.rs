//! The OAuth endpoints of a realm: ITI-71 token, ITI-102 introspection, RFC 7009
//! revocation, JWKS and ITI-103 metadata.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use tessera_atna::{redact_token_request, Event, Outcome, Record};
use tessera_iam::grant::GrantRequest;
use tessera_iam::metadata::{authorization_server_metadata, endpoint_path, realm_path};
use tessera_iam::request::{Credentials, PresentedCertificate, TokenQuery};
use tessera_iam::{Issued, OAuthError, RealmState};
use tessera_introspection::{IntrospectionError, IntrospectionRequest};
use tessera_types::Secret;

use crate::error::BearerError;
use crate::{blocking, now, realm_state, ApiError, AppState};

const FORM_LIMIT: usize = 64 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    let form_endpoint =
        |path: &str| web::resource(path.to_owned()).app_data(web::PayloadConfig::new(FORM_LIMIT));
    let endpoint = |name: &str| endpoint_path("{realm}", name);
    cfg.service(form_endpoint(&endpoint("token")).route(web::post().to(token)))
        .service(form_endpoint(&endpoint("token/introspect")).route(web::post().to(introspect)))
        .service(form_endpoint(&endpoint("revoke")).route(web::post().to(revoke)))
        .service(form_endpoint("/realms/{realm}/launch").route(web::post().to(launch)))
        .route(&endpoint("certs"), web::get().to(certs))
        .route(&endpoint("userinfo"), web::get().to(userinfo))
        .route(&endpoint("userinfo"), web::post().to(userinfo))
        .route(
            "/realms/{realm}/.well-known/openid-configuration",
            web::get().to(metadata),
        )
        .route(
            "/.well-known/oauth-authorization-server/realms/{realm}",
            web::get().to(metadata),
        );
}

/// The `Authorization` header of a request to an OAuth endpoint.
enum Authorization {
    None,
    /// RFC 6749 2.3.1: `Basic base64(urlencode(id):urlencode(secret))`.
    Basic(String, Secret),
    /// RFC 6750 2.1: the caller's own access token (introspection only).
    Bearer(String),
}

fn authorization(req: &HttpRequest) -> Result<Authorization, OAuthError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(Authorization::None);
    };
    let bad = || OAuthError::invalid_request("malformed Authorization header");
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(bad)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Authorization::Bearer(rest.trim().to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_request(
            "Authorization must be Basic or Bearer",
        ));
    }
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let form_decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| bad())
    };
    Ok(Authorization::Basic(
        form_decode(id)?,
        Secret::new(form_decode(secret)?),
    ))
}

/// The decoded pairs of an `application/x-www-form-urlencoded` body.
fn form(req: &HttpRequest, body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    if !crate::is_form(req) {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    Ok(crate::form_pairs(body))
}

/// The first value of a form field, if the body was a form.
fn form_value(pairs: &Result<Vec<(String, String)>, OAuthError>, name: &str) -> Option<String> {
    let pairs = pairs.as_ref().ok()?;
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// Client credentials from the connection and a Basic header; a Bearer header is only
/// for introspection and is refused here.
fn client_credentials(req: &HttpRequest, auth: Authorization) -> Result<Credentials, OAuthError> {
    let basic = match auth {
        Authorization::None => None,
        Authorization::Basic(id, secret) => Some((id, secret)),
        Authorization::Bearer(_) => {
            return Err(OAuthError::invalid_request(
                "this endpoint needs client authentication, not a Bearer token",
            ))
        }
    };
    Ok(Credentials {
        basic,
        certificate: req.conn_data::<PresentedCertificate>().cloned(),
    })
}

fn no_store(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    response
}

/// How an OAuth endpoint answers an RFC 6749 error: with a Basic challenge when the
/// client authenticated with HTTP Basic (RFC 6749 5.2).
struct Challenge(Option<String>);

impl Challenge {
    fn error(&self, error: OAuthError) -> ApiError {
        ApiError::OAuth {
            error,
            basic_realm: self.0.clone(),
        }
    }
}

/// What every OAuth endpoint starts from: its realm, the Authorization header, and how to
/// answer errors.
async fn begin(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    realm: &str,
) -> Result<(Arc<RealmState>, Authorization, Challenge), ApiError> {
    let realm = realm_state(state, realm).await?;
    let auth = authorization(req)?;
    let challenge =
        Challenge(matches!(auth, Authorization::Basic(..)).then(|| realm.realm.name.to_string()));
    Ok((realm, auth, challenge))
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
    let pairs = form(req, body);
    // What the trail may keep of the request: no secret, no assertion signature.
    let redacted = pairs
        .as_ref()
        .map(|p| redact_token_request(p))
        .unwrap_or_default();
    let (realm, auth, challenge) = match begin(req, state, realm).await {
        Ok(begun) => begun,
        Err(error) => return refused_early(req, state, realm, &pairs, redacted, error).await,
    };
    let prepared = client_credentials(req, auth).and_then(|credentials| {
        let request = GrantRequest::from_form(pairs?)?;
        Ok((credentials, request))
    });
    let client_hint = prepared.as_ref().ok().and_then(|(credentials, request)| {
        request
            .client()
            .client_id
            .clone()
            .or_else(|| credentials.basic.as_ref().map(|(id, _)| id.clone()))
    });
    let audit = TokenAudit {
        observer: realm.issuer.clone(),
        token_endpoint: realm.token_endpoint.clone(),
        client_address: req.peer_addr().map(|a| a.ip().to_string()),
        request: redacted,
        client_hint: client_hint.clone(),
    };

    let realm_name = realm.realm.name.clone();
    match issue_recorded(state, realm, prepared, audit).await? {
        Ok(issued) => {
            tracing::info!(
                realm = %realm_name,
                client_id = %issued.claims.client_id,
                auth = issued.auth_method,
                jti = %issued.claims.jti,
                scope = %issued.claims.scope,
                "token issued"
            );
            Ok(no_store(HttpResponse::Ok()).json(issued.response))
        }
        Err(error) => {
            tracing::warn!(
                realm = %realm_name,
                client_id = client_hint.as_deref().unwrap_or("-"),
                error = error.code.as_str(),
                reason = %error.description,
                "token refused"
            );
            Err(challenge.error(error))
        }
    }
}

/// A token request Tessera's own pages make for a person (the audit console exchanging
/// its authorization code): the same grant rules and the same ITI-71 record as a
/// request over HTTP, made in-process. The inner error is the grant's refusal.
pub(crate) async fn issue_for_page(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    realm: Arc<RealmState>,
    pairs: Vec<(String, String)>,
) -> Result<Result<Issued, OAuthError>, ApiError> {
    let audit = TokenAudit {
        observer: realm.issuer.clone(),
        token_endpoint: realm.token_endpoint.clone(),
        client_address: req.peer_addr().map(|a| a.ip().to_string()),
        request: redact_token_request(&pairs),
        client_hint: form_value(&Ok(pairs.clone()), "client_id"),
    };
    let prepared = GrantRequest::from_form(pairs).map(|request| (Credentials::default(), request));
    issue_recorded(state, realm, prepared, audit).await
}

/// Runs a prepared grant and makes its ITI-71 record durable before anyone sees the
/// outcome; if the record cannot be kept, no token leaves the server.
async fn issue_recorded(
    state: &web::Data<AppState>,
    realm: Arc<RealmState>,
    prepared: Result<(Credentials, GrantRequest), OAuthError>,
    audit: TokenAudit,
) -> Result<Result<Issued, OAuthError>, ApiError> {
    let st = state.clone().into_inner();
    let at = now();
    // A grant the service answers from memory (a cached client, no database) runs here;
    // others on the blocking pool. The hop there and back cost the kept-alive
    // certificate and secret paths about a fifth of their rate (issue 17).
    let from_memory = prepared.as_ref().is_ok_and(|(credentials, request)| {
        st.tokens
            .answers_from_memory(&realm, request, credentials, at)
    });
    let work = move || {
        let result = prepared
            .and_then(|(credentials, request)| st.tokens.issue(&realm, request, &credentials, at));
        let record = audit.record(&result, at);
        (result, record)
    };
    let (result, record) = if from_memory {
        work()
    } else {
        blocking(work).await?
    };
    crate::audit::append(state, record?).await?;
    Ok(result)
}

/// A token request refused before its realm or credentials could be read (an unknown
/// realm, a malformed `Authorization` header) is audited like any other: every request
/// to a token endpoint leaves its ITI-71 record.
async fn refused_early(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    realm: &str,
    pairs: &Result<Vec<(String, String)>, OAuthError>,
    request: String,
    error: ApiError,
) -> Result<HttpResponse, ApiError> {
    let refusal = match &error {
        ApiError::OAuth { error, .. } => error.clone(),
        ApiError::UnknownRealm(name) => {
            OAuthError::invalid_request(format!("realm '{name}' does not exist"))
        }
        _ => return Err(error),
    };
    let issuer = format!(
        "{}{}",
        state.tokens.settings().public_base_url,
        realm_path(realm)
    );
    let audit = TokenAudit {
        token_endpoint: tessera_iam::metadata::endpoint(&issuer, "token"),
        observer: issuer,
        client_address: req.peer_addr().map(|a| a.ip().to_string()),
        request,
        client_hint: form_value(pairs, "client_id"),
    };
    crate::audit::append(state, audit.record(&Err(refusal), now())?).await?;
    Err(error)
}

/// What the audit record of a token request needs besides the outcome.
struct TokenAudit {
    observer: String,
    token_endpoint: String,
    client_address: Option<String>,
    request: String,
    client_hint: Option<String>,
}

impl TokenAudit {
    fn record(
        self,
        result: &Result<Issued, OAuthError>,
        at: tessera_types::UnixTime,
    ) -> Result<Record, tessera_iam::StoreError> {
        let (outcome, client_id, token_id, scope, error) = match result {
            Ok(issued) => (
                Outcome::Success,
                Some(issued.claims.client_id.clone()),
                Some(issued.claims.jti.clone()),
                Some(issued.claims.scope.clone()),
                None,
            ),
            Err(error) => (
                if error.code == tessera_iam::OAuthErrorCode::ServerError {
                    Outcome::SeriousFailure
                } else {
                    Outcome::MinorFailure
                },
                self.client_hint,
                None,
                None,
                Some(format!("{}: {}", error.code.as_str(), error.description)),
            ),
        };
        crate::audit::new_record(
            at,
            &self.observer,
            self.client_address,
            outcome,
            Event::TokenRequest {
                client_id,
                token_id,
                scope,
                token_endpoint: self.token_endpoint,
                request: self.request,
                error,
            },
        )
        .map_err(|e| tessera_iam::StoreError(e.to_string()))
    }
}

/// RFC 7662 / ITI-102.
async fn introspect(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (realm, auth, challenge) = begin(&req, &state, &path).await?;
    let oauth = |error: OAuthError| challenge.error(error);
    let (credentials, bearer) = match auth {
        Authorization::Bearer(token) => (
            Credentials {
                basic: None,
                certificate: req.conn_data::<PresentedCertificate>().cloned(),
            },
            Some(token),
        ),
        other => (client_credentials(&req, other).map_err(oauth)?, None),
    };
    let query = TokenQuery::from_form(form(&req, &body).map_err(oauth)?).map_err(oauth)?;
    let caller = introspection_caller(&query, &credentials, bearer.is_some());
    let endpoint = tessera_iam::metadata::endpoint(&realm.issuer, "token/introspect");
    let observer = realm.issuer.clone();

    let st = state.clone().into_inner();
    let at = now();
    let realm_name = realm.realm.name.to_string();
    // A caller known from memory (a Bearer token, or a cached client's certificate or
    // secret) costs the introspection only reads of revocations by key; an assertion's
    // jti is written down, on the blocking pool.
    let reads_only = bearer.is_some()
        || st
            .tokens
            .authenticates_from_memory(&realm, &query.client, &credentials, at);
    let work = move || {
        let request = IntrospectionRequest {
            query: &query,
            credentials: &credentials,
            bearer: bearer.as_deref(),
        };
        st.introspection
            .introspect(&st.tokens, &st.store, &realm, &request, at)
    };
    let result = if reads_only {
        crate::read(&state, work).await?
    } else {
        blocking(work).await?
    };
    // A refusal is decided here once: its status goes into the record, then out.
    let result = result.map_err(|error| {
        let description = error.to_string();
        (
            introspection_refusal(error, &realm_name, &challenge),
            description,
        )
    });
    let (status, token_id, error) = match &result {
        Ok(answer) => (200, answer.jti().map(str::to_owned), None),
        Err((refusal, description)) => (
            refusal.status_code().as_u16(),
            None,
            Some(description.clone()),
        ),
    };
    let event = tessera_atna::Event::Introspection {
        caller,
        token_id,
        endpoint,
        error,
    };
    crate::audit::append(
        &state,
        crate::audit::record(&req, &observer, status, event)?,
    )
    .await?;
    match result {
        Ok(answer) => {
            state.metrics.introspection(if answer.is_active() {
                "active"
            } else {
                "inactive"
            });
            Ok(no_store(HttpResponse::Ok())
                .content_type(actix_web::http::header::ContentType::json())
                .body(answer.json()))
        }
        Err((refusal, description)) => {
            state.metrics.introspection("refused");
            tracing::warn!(realm = %realm_name, error = %description, "introspection refused");
            Err(refusal)
        }
    }
}

/// The answer to a refused introspection: the caller's client authentication failed
/// (RFC 6749), or its own Bearer token is not valid or lacks the introspection scope
/// (401 both, as ITI-102 answers a caller without authority).
fn introspection_refusal(
    error: IntrospectionError,
    realm: &str,
    challenge: &Challenge,
) -> ApiError {
    match error {
        IntrospectionError::Client(error) => challenge.error(error),
        IntrospectionError::InvalidBearer => ApiError::Bearer {
            realm: realm.to_owned(),
            error: BearerError::InvalidToken,
        },
        IntrospectionError::InsufficientScope => ApiError::Bearer {
            realm: realm.to_owned(),
            error: BearerError::NotAllowedToIntrospect,
        },
    }
}

/// Who asked for an introspection, as far as the request says (the audit record's
/// requestor): the client id in the form or in Basic credentials, or a Bearer caller.
fn introspection_caller(
    query: &TokenQuery,
    credentials: &Credentials,
    bearer: bool,
) -> Option<String> {
    query
        .client
        .client_id
        .clone()
        .or_else(|| credentials.basic.as_ref().map(|(id, _)| id.clone()))
        .or_else(|| bearer.then(|| "bearer".to_owned()))
}

/// RFC 7009.
async fn revoke(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (realm, auth, challenge) = begin(&req, &state, &path).await?;
    let oauth = |error: OAuthError| challenge.error(error);
    let endpoint = tessera_iam::metadata::endpoint(&realm.issuer, "revoke");
    let observer = realm.issuer.clone();
    let pairs = form(&req, &body);
    // Who asked, as the request claims it (the record's requestor).
    let caller = form_value(&pairs, "client_id").or_else(|| match &auth {
        Authorization::Basic(id, _) => Some(id.clone()),
        _ => None,
    });
    let prepared = client_credentials(&req, auth)
        .and_then(|credentials| Ok((credentials, TokenQuery::from_form(pairs?)?)));

    let st = state.clone().into_inner();
    let at = now();
    let realm_name = realm.realm.name.to_string();
    let result = blocking(move || {
        let (credentials, query) = prepared?;
        st.introspection
            .revoke(&st.tokens, &st.store, &realm, &query, &credentials, at)
    })
    .await?;
    // Done or refused, the revocation is on record before the answer.
    let (status, token_id, error) = match &result {
        Ok(revoked) => (200, revoked.clone(), None),
        Err(error) => (
            crate::error::oauth_status(error.code).as_u16(),
            None,
            Some(format!("{}: {}", error.code.as_str(), error.description)),
        ),
    };
    let event = tessera_atna::Event::TokenRevocation {
        caller,
        token_id,
        endpoint,
        error,
    };
    crate::audit::append(
        &state,
        crate::audit::record(&req, &observer, status, event)?,
    )
    .await?;
    match result {
        Ok(revoked) => {
            if let Some(jti) = revoked {
                tracing::info!(realm = %realm_name, %jti, "token revoked");
            }
            Ok(no_store(HttpResponse::Ok()).finish())
        }
        Err(error) => {
            tracing::warn!(realm = %realm_name, error = error.code.as_str(), reason = %error.description, "revocation refused");
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

/// OpenID Connect UserInfo: who the person behind an access token with `openid` is.
async fn userinfo(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let realm = realm_state(&state, &path).await?;
    let refuse = |error| ApiError::Bearer {
        realm: realm.realm.name.to_string(),
        error,
    };
    let token = crate::bearer::verify(&req, &state, &realm.realm.name, None, None).await?;
    if !token.claims.scope.split(' ').any(|s| s == "openid") {
        return Err(refuse(BearerError::InsufficientScope));
    }
    let st = state.clone().into_inner();
    let realm_state = realm.clone();
    let info = blocking(move || st.tokens.userinfo(&realm_state, &token.claims)).await??;
    let info = info.ok_or_else(|| refuse(BearerError::InvalidToken))?;
    Ok(no_store(HttpResponse::Ok()).json(info))
}

/// SMART EHR launch: an EHR registers the context it opens an app in and gets the
/// app's `launch` value (see `tessera_iam::launch`).
async fn launch(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (realm, auth, challenge) = begin(&req, &state, &path).await?;
    let oauth = |error: OAuthError| challenge.error(error);
    let credentials = client_credentials(&req, auth).map_err(oauth)?;
    let request = tessera_iam::launch::LaunchRequest::from_form(form(&req, &body).map_err(oauth)?)
        .map_err(oauth)?;
    let st = state.clone().into_inner();
    let at = now();
    let realm_name = realm.realm.name.to_string();
    let result = blocking(move || {
        st.tokens
            .register_launch(&realm, request, &credentials, &st.vault.base, at)
    })
    .await?;
    match result {
        Ok(launched) => {
            tracing::info!(realm = %realm_name, iss = %launched.iss, "EHR launch registered");
            Ok(no_store(HttpResponse::Ok()).json(launched))
        }
        Err(error) => {
            tracing::warn!(realm = %realm_name, error = error.code.as_str(), reason = %error.description, "EHR launch refused");
            Err(oauth(error))
        }
    }
}
