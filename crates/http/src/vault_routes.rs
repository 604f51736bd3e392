//! The FHIR Vault over HTTP (ITI-72): `/fhir/{partition}/...`. Every interaction but
//! the discovery documents needs a Bearer token for this vault's audience; what the
//! token permits is decided by `tessera_vault::authz`. Handlers parse the request, call
//! the vault on the blocking pool (reads by key where `crate::read` says), and format
//! the FHIR response.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{guard, web, HttpRequest, HttpResponse};
use tessera_iam::VerifiedToken;
use tessera_vault::bundle::EntryResult;
use tessera_vault::capability::AuthServer;
use tessera_vault::{dates, Ctx, Grant, Stored, Vault, VaultError, WriteOutcome};

use actix_web::HttpMessage as _;

use crate::audit::{BatchEntries, SearchBody, VaultToken};
use crate::bearer::verify;
use crate::error::vault_status;
use crate::export_routes;
use crate::{blocking, now_ms, ApiError, AppState};

/// What the vault needs besides the store.
pub struct VaultState {
    /// The FHIR server itself (its semantics; this state adds where it is served).
    pub fhir: Vault,
    pub realm: tessera_types::RealmName,
    pub audience: String,
    /// `{public_url}/fhir`: a partition's base is this plus `/{partition}`.
    pub base: String,
    pub auth: AuthServer,
    pub max_body_bytes: usize,
    /// Gateway mode: tokens are checked by introspection at an authorization server.
    pub introspector: Option<Arc<tessera_outbound::gateway::Introspector>>,
    /// Bulk Data export.
    pub exports: crate::export_routes::ExportSettings,
}

/// The vault's routes: one resource per path, each method a route of it (a path matched
/// with a method it does not take is `unsupported`). actix matches resources in order,
/// each dynamic path by a regex: one resource per path and the reads' paths first keep
/// a read from trying every other path's regex (10% of a vault read's time when each
/// method was a resource of its own). `{id}` is never `_history`, `_search`,
/// `$everything` or `$export` (those paths come first).
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    let at = |path: &str| web::resource(path).default_service(web::to(unsupported));
    cfg.service(
        web::scope("/fhir/{partition}")
            .wrap(actix_web::middleware::from_fn(
                crate::audit::vault_middleware,
            ))
            .app_data(web::PayloadConfig::new(max_body_bytes))
            .service(at("/metadata").route(web::get().to(metadata)))
            .service(
                at("/.well-known/smart-configuration").route(web::get().to(smart_configuration)),
            )
            .service(at("").route(web::post().to(batch)))
            .service(at("/").route(web::post().to(batch)))
            .service(
                at("/$export")
                    .route(web::get().to(export_routes::kickoff_system))
                    .route(web::post().to(export_routes::kickoff_system)),
            )
            .service(
                at("/$export-status/{job}")
                    .route(web::get().to(export_routes::status))
                    .route(web::delete().to(export_routes::cancel)),
            )
            .service(at("/$export-file/{job}/{file}").route(web::get().to(export_routes::file)))
            .service(
                at("/{type}/{id}")
                    .guard(guard::fn_guard(|ctx| is_id(ctx.head().uri.path())))
                    .route(web::get().to(read))
                    .route(web::put().to(update))
                    .route(web::patch().to(patch))
                    .route(web::delete().to(delete)),
            )
            .service(
                at("/{type}")
                    .route(web::get().to(search))
                    .route(web::post().to(create))
                    .route(web::put().to(conditional_update))
                    .route(web::delete().to(conditional_delete)),
            )
            .service(
                at("/{type}/$export")
                    .route(web::get().to(export_routes::kickoff_type))
                    .route(web::post().to(export_routes::kickoff_type)),
            )
            .service(
                at("/{type}/{id}/$export")
                    .route(web::get().to(export_routes::kickoff_instance))
                    .route(web::post().to(export_routes::kickoff_instance)),
            )
            .service(at("/{type}/_search").route(web::post().to(search_post)))
            .service(at("/{type}/_history").route(web::get().to(history_type)))
            .service(at("/{type}/{id}/_history/{vid}").route(web::get().to(vread)))
            .service(at("/{type}/{id}/_history").route(web::get().to(history_instance)))
            .service(at("/{type}/{id}/$everything").route(web::get().to(everything)))
            .default_service(web::to(unsupported)),
    );
}

/// Whether the path's last segment is a resource id rather than one of the names the
/// vault's other paths end in (`_history`, `_search`, `$export`, ...): those start with
/// `_` or `$`, which a FHIR id cannot.
fn is_id(path: &str) -> bool {
    !path
        .rsplit('/')
        .next()
        .is_some_and(|last| last.starts_with('_') || last.starts_with('$'))
}

pub(crate) const FHIR_JSON: &str = "application/fhir+json";

/// The id of a new resource.
pub(crate) fn new_id() -> Result<String, ApiError> {
    crate::ids::time_ordered_id().map_err(|e| ApiError::Internal(e.to_string()))
}

pub(crate) fn partition_base(state: &AppState, partition: &str) -> String {
    format!("{}/{partition}", state.vault.base)
}

/// The request's access token for the vault (and the audit repository), verified; kept
/// in the request for its audit record.
pub(crate) async fn token(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<Arc<VerifiedToken>, ApiError> {
    let vault = &state.vault;
    // A token a person authorized names the partition's own base URL as its audience.
    let partition_base = req
        .match_info()
        .get("partition")
        .map(|p| format!("{}/{p}", vault.audience));
    let mut audiences = vec![vault.audience.as_str()];
    audiences.extend(partition_base.as_deref());
    let token = verify(
        req,
        state,
        &vault.realm,
        Some(&audiences),
        vault.introspector.clone(),
    )
    .await
    .map_err(ApiError::into_fhir)?;
    req.extensions_mut().insert(VaultToken(token.clone()));
    Ok(token)
}

/// Runs a vault call with the request's context on the blocking pool.
pub(crate) async fn call<T: Send + 'static>(
    state: &web::Data<AppState>,
    token: Arc<VerifiedToken>,
    partition: String,
    work: impl FnOnce(&AppState, &Ctx<'_>) -> Result<T, VaultError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(with_context(state, token, partition, work))
        .await?
        .map_err(ApiError::Vault)
}

/// [`call`] for a read of rows by key (read, vread): where [`crate::read`] runs it.
async fn call_read<T: Send + 'static>(
    state: &web::Data<AppState>,
    token: Arc<VerifiedToken>,
    partition: String,
    work: impl FnOnce(&AppState, &Ctx<'_>) -> Result<T, VaultError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::read(state, with_context(state, token, partition, work))
        .await?
        .map_err(ApiError::Vault)
}

fn with_context<T>(
    state: &web::Data<AppState>,
    token: Arc<VerifiedToken>,
    partition: String,
    work: impl FnOnce(&AppState, &Ctx<'_>) -> Result<T, VaultError>,
) -> impl FnOnce() -> Result<T, VaultError> {
    let st = state.clone().into_inner();
    move || {
        let base = partition_base(&st, &partition);
        let ctx = Ctx {
            grant: Grant {
                partitions: &token.claims.partitions,
                scope: &token.claims.scope,
            },
            partition: &partition,
            base: &base,
            now_ms: now_ms(),
        };
        work(&st, &ctx)
    }
}

pub(crate) fn http_date(ms: i64) -> Option<HeaderValue> {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).ok()?);
    HeaderValue::from_str(&header::HttpDate::from(time).to_string()).ok()
}

/// A resource response with its version headers; `Prefer: return=minimal` leaves out the body.
fn resource_response(
    req: &HttpRequest,
    status: StatusCode,
    stored: &Stored,
    base: &str,
) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.content_type(FHIR_JSON);
    if let Ok(etag) = HeaderValue::from_str(&stored.etag()) {
        response.insert_header((header::ETAG, etag));
    }
    if let Some(date) = http_date(stored.last_updated) {
        response.insert_header((header::LAST_MODIFIED, date));
    }
    if status == StatusCode::CREATED
        || status == StatusCode::OK && req.method() == actix_web::http::Method::PUT
    {
        let location = format!(
            "{base}/{}/{}/_history/{}",
            stored.resource_type, stored.id, stored.version
        );
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.insert_header((header::LOCATION, location.clone()));
            response.insert_header((header::CONTENT_LOCATION, location));
        }
    }
    if prefer(req, "return").as_deref() == Some("minimal") {
        return response.finish();
    }
    response.body(stored.content.clone())
}

fn json_response(value: &serde_json::Value) -> HttpResponse {
    HttpResponse::Ok().content_type(FHIR_JSON).json(value)
}

/// A token of the `Prefer` header (RFC 7240), e.g. `return` or `handling`.
fn prefer(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
        })
}

fn if_match(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub(crate) fn query_pairs(text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

/// JSON only: a body in another format is refused before it is read as a resource.
pub(crate) fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(mime) = crate::media_type(req) else {
        return Ok(());
    };
    if mime == FHIR_JSON || mime == "application/json" || mime == "application/json+fhir" {
        Ok(())
    } else {
        Err(ApiError::Vault(VaultError::NotSupported(format!(
            "this vault speaks FHIR JSON ({FHIR_JSON}), not {mime}"
        ))))
    }
}

async fn metadata(path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    let base = partition_base(&state, &path.into_inner());
    let date = dates::format_instant(now_ms());
    let statement = tessera_vault::capability::capability_statement(
        state.vault.fhir.registry(),
        &base,
        &state.vault.auth,
        env!("CARGO_PKG_VERSION"),
        &date[..10],
    );
    json_response(&statement)
}

async fn smart_configuration(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(tessera_vault::capability::smart_configuration(
        &state.vault.auth,
    ))
}

async fn read(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    let (partition, ty, id) = path.into_inner();
    let base = partition_base(&state, &partition);
    let stored = call_read(&state, token, partition, move |st, ctx| {
        st.vault.fhir.read(&st.store, ctx, &ty, &id)
    })
    .await?;
    Ok(resource_response(&req, StatusCode::OK, &stored, &base))
}

async fn vread(
    req: HttpRequest,
    path: web::Path<(String, String, String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    let (partition, ty, id, vid) = path.into_inner();
    let base = partition_base(&state, &partition);
    let stored = call_read(&state, token, partition, move |st, ctx| {
        st.vault.fhir.vread(&st.store, ctx, &ty, &id, &vid)
    })
    .await?;
    Ok(resource_response(&req, StatusCode::OK, &stored, &base))
}

async fn run_search(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    partition: String,
    ty: String,
    pairs: Vec<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let token = token(req, state).await?;
    let strict = prefer(req, "handling").as_deref() == Some("strict");
    let bundle = call(state, token, partition, move |st, ctx| {
        st.vault.fhir.search(&st.store, ctx, &ty, &pairs, strict)
    })
    .await?;
    Ok(json_response(&bundle))
}

async fn search(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (partition, ty) = path.into_inner();
    let pairs = query_pairs(req.query_string());
    run_search(&req, &state, partition, ty, pairs).await
}

/// `POST [type]/_search` with `application/x-www-form-urlencoded` parameters (and any in the URL).
async fn search_post(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (partition, ty) = path.into_inner();
    if !body.is_empty() && !crate::is_form(&req) {
        return Err(ApiError::Vault(VaultError::Invalid(
            "_search takes its parameters as application/x-www-form-urlencoded".into(),
        )));
    }
    let form_text = String::from_utf8_lossy(&body).into_owned();
    let mut pairs = query_pairs(req.query_string());
    pairs.extend(query_pairs(&form_text));
    req.extensions_mut().insert(SearchBody(form_text));
    run_search(&req, &state, partition, ty, pairs).await
}

async fn history_type(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    let (partition, ty) = path.into_inner();
    let pairs = query_pairs(req.query_string());
    let bundle = call(&state, token, partition, move |st, ctx| {
        st.vault.fhir.history(&st.store, ctx, &ty, None, &pairs)
    })
    .await?;
    Ok(json_response(&bundle))
}

async fn history_instance(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    let (partition, ty, id) = path.into_inner();
    let pairs = query_pairs(req.query_string());
    let bundle = call(&state, token, partition, move |st, ctx| {
        st.vault
            .fhir
            .history(&st.store, ctx, &ty, Some(&id), &pairs)
    })
    .await?;
    Ok(json_response(&bundle))
}

/// `Patient/{id}/$everything`.
async fn everything(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    let (partition, ty, id) = path.into_inner();
    if ty != "Patient" {
        return Err(ApiError::Vault(VaultError::NotSupported(format!(
            "$everything is an operation on Patient, not {ty}"
        ))));
    }
    let pairs = query_pairs(req.query_string());
    let bundle = call(&state, token, partition, move |st, ctx| {
        st.vault.fhir.everything(&st.store, ctx, &id, &pairs)
    })
    .await?;
    Ok(json_response(&bundle))
}

async fn create(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    check_content_type(&req)?;
    // Conditional create: `If-None-Exist: identifier=x` (the criteria, as a query).
    let condition = req
        .headers()
        .get("if-none-exist")
        .map(|v| {
            v.to_str().map(query_pairs).map_err(|_| {
                ApiError::Vault(VaultError::Invalid("If-None-Exist is not text".into()))
            })
        })
        .transpose()?;
    let (partition, ty) = path.into_inner();
    let base = partition_base(&state, &partition);
    let id = new_id()?;
    let (stored, created) = call(&state, token, partition, move |st, ctx| {
        st.vault
            .fhir
            .create(&st.store, ctx, &ty, &body, id, condition.as_deref())
    })
    .await?;
    Ok(written(&req, created, &stored, &base))
}

async fn update(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    check_content_type(&req)?;
    let (partition, ty, id) = path.into_inner();
    let base = partition_base(&state, &partition);
    let precondition = if_match(&req);
    let (stored, created) = call(&state, token, partition, move |st, ctx| {
        st.vault
            .fhir
            .update(&st.store, ctx, &ty, &id, &body, precondition.as_deref())
    })
    .await?;
    Ok(written(&req, created, &stored, &base))
}

/// 201 for a resource a write created, else 200.
fn written(req: &HttpRequest, created: bool, stored: &Stored, base: &str) -> HttpResponse {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    resource_response(req, status, stored, base)
}

/// The criteria of a conditional update or delete (`[type]?criteria`); none is an error,
/// since it would name every resource of the type.
fn conditional_criteria(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    let criteria = query_pairs(req.query_string());
    if criteria.is_empty() {
        return Err(ApiError::Vault(VaultError::Invalid(format!(
            "{} of a whole type needs search criteria ([type]?[criteria]) naming one resource",
            req.method()
        ))));
    }
    Ok(criteria)
}

/// Conditional update: `PUT [type]?[criteria]`.
async fn conditional_update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    check_content_type(&req)?;
    let criteria = conditional_criteria(&req)?;
    let (partition, ty) = path.into_inner();
    let base = partition_base(&state, &partition);
    let precondition = if_match(&req);
    let id = new_id()?;
    let (stored, created) = call(&state, token, partition, move |st, ctx| {
        st.vault.fhir.conditional_update(
            &st.store,
            ctx,
            &ty,
            &criteria,
            &body,
            precondition.as_deref(),
            id,
        )
    })
    .await?;
    Ok(written(&req, created, &stored, &base))
}

/// `PATCH [type]/[id]` with a JSON Patch (`application/json-patch+json`).
async fn patch(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    let mime = crate::media_type(&req);
    if mime.as_deref() != Some("application/json-patch+json") {
        return Err(ApiError::Vault(VaultError::NotSupported(format!(
            "this vault patches with JSON Patch (application/json-patch+json), not {}",
            mime.as_deref().unwrap_or("a body without Content-Type")
        ))));
    }
    let (partition, ty, id) = path.into_inner();
    let base = partition_base(&state, &partition);
    let precondition = if_match(&req);
    let stored = call(&state, token, partition, move |st, ctx| {
        st.vault
            .fhir
            .patch(&st.store, ctx, &ty, &id, &body, precondition.as_deref())
    })
    .await?;
    Ok(resource_response(&req, StatusCode::OK, &stored, &base))
}

fn deleted_response(deleted: Option<Stored>) -> HttpResponse {
    let mut response = HttpResponse::NoContent();
    if let Some(etag) = deleted.and_then(|d| HeaderValue::from_str(&d.etag()).ok()) {
        response.insert_header((header::ETAG, etag));
    }
    response.finish()
}

async fn delete(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    let (partition, ty, id) = path.into_inner();
    let precondition = if_match(&req);
    let deleted = call(&state, token, partition, move |st, ctx| {
        st.vault
            .fhir
            .delete(&st.store, ctx, &ty, &id, precondition.as_deref())
    })
    .await?;
    Ok(deleted_response(deleted))
}

/// Conditional delete: `DELETE [type]?[criteria]`.
async fn conditional_delete(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    let criteria = conditional_criteria(&req)?;
    let (partition, ty) = path.into_inner();
    let precondition = if_match(&req);
    let deleted = call(&state, token, partition, move |st, ctx| {
        st.vault
            .fhir
            .conditional_delete(&st.store, ctx, &ty, &criteria, precondition.as_deref())
    })
    .await?;
    Ok(deleted_response(deleted))
}

/// The HTTP status of a batch or transaction entry, from the one mapping in error.rs.
fn entry_status(result: &EntryResult) -> u16 {
    match result {
        EntryResult::Read(_) | EntryResult::Searched(_) => StatusCode::OK,
        EntryResult::Written(WriteOutcome::Created(_)) => StatusCode::CREATED,
        EntryResult::Written(WriteOutcome::Updated(_)) => StatusCode::OK,
        EntryResult::Written(WriteOutcome::Deleted(_)) => StatusCode::NO_CONTENT,
        EntryResult::Failed(error) => vault_status(error),
    }
    .as_u16()
}

async fn batch(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    check_content_type(&req)?;
    let partition = path.into_inner();
    let base = partition_base(&state, &partition);
    let outcome = call(&state, token, partition, move |st, ctx| {
        let mut ids = || new_id().unwrap_or_default();
        st.vault.fhir.batch(&st.store, ctx, &body, &mut ids)
    })
    .await?;
    // Each entry is audited as the interaction it is (the middleware records them).
    let entries = outcome
        .audits
        .iter()
        .cloned()
        .zip(outcome.entries.iter().map(entry_status))
        .collect();
    req.extensions_mut().insert(BatchEntries {
        transaction: outcome.transaction,
        entries,
    });
    Ok(json_response(
        &outcome
            .to_bundle(&base, &entry_status)
            .map_err(ApiError::Vault)?,
    ))
}

async fn unsupported(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::Vault(VaultError::NotSupported(format!(
        "{} {} is not an interaction this vault supports",
        req.method(),
        req.path()
    ))))
}
