//! The audit repository over HTTP: ITI-81 Retrieve ATNA Audit Event
//! (`GET /audit/fhir/AuditEvent?date=...`) for auditors and for patients about their
//! own account, and the ITI-20 FHIR feed (`POST /audit/fhir/AuditEvent`, or a batch
//! Bundle to `/audit/fhir`) for other nodes. Tokens are the vault's (realm, audience);
//! what they permit is `tessera_atna::repository_access`. Every request is itself
//! audited before its answer.

use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage as _, HttpRequest, HttpResponse};
use serde_json::Value;
use tessera_atna::{repository_access, Event, RepositoryAccess, REPOSITORY_PARTITION};
use tessera_iam::VerifiedToken;
use tessera_vault::authz::Interaction;
use tessera_vault::bundle::{BatchOutcome, EntryResult};
use tessera_vault::search::parse_restriction;
use tessera_vault::{VaultError, WriteOutcome};

use crate::audit::{append, record, token_use};
use crate::error::{vault_status, BearerError};
use crate::{blocking, now_ms, ApiError, AppState};

pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.service(
        web::scope("/audit/fhir")
            .app_data(web::PayloadConfig::new(max_body_bytes))
            .route("/AuditEvent", web::get().to(query))
            .route("/AuditEvent", web::post().to(feed_one))
            .route("", web::post().to(feed_batch)),
    );
}

/// Query names ITI-81 and R4 chained forms use for the repository's parameters.
fn canonical_name(name: &str) -> &str {
    match name {
        "patient.identifier" => "patient",
        "entity.identifier" => "entity-id",
        "agent.identifier" => "agent",
        other => other,
    }
}

/// Where the audit repository is served and whose tokens it takes. Its realm and
/// audience are the vault's (`vault.realm`, the vault's audience): the same tokens reach
/// both, scoped by `AuditEvent` scopes.
pub struct RepositorySettings {
    pub realm: tessera_types::RealmName,
    pub audience: String,
    /// `{public_url}`, without a trailing slash.
    pub public_url: String,
    /// Gateway mode: tokens are checked by introspection, as the vault checks them.
    pub introspector: Option<std::sync::Arc<tessera_outbound::gateway::Introspector>>,
}

fn base(state: &AppState) -> String {
    format!("{}/audit/fhir", state.repository.public_url)
}

fn refused(state: &AppState) -> ApiError {
    ApiError::FhirBearer {
        realm: state.repository.realm.to_string(),
        error: BearerError::InsufficientScope,
    }
}

/// The caller's token. A refused one is answered here too, after its own audit record.
async fn caller(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    interaction: Interaction,
) -> Result<std::sync::Arc<VerifiedToken>, ApiError> {
    match repository_token(req, state).await {
        Ok(token) => Ok(token),
        Err(error) => match audited(req, state, interaction, None, Err(error)).await {
            Err(error) => Err(error),
            Ok(_) => Err(ApiError::Internal("a refused token was answered".into())),
        },
    }
}

/// Is the token meant for the audit repository? Its audience is the realm's FHIR
/// audience, or (a person's token for their own record) one of its partitions' bases:
/// a patient reads the events about their account with the token of their record.
pub(crate) fn meant_for_repository(token: &VerifiedToken, audience: &str) -> bool {
    let claims = &token.claims;
    claims.aud.iter().any(|aud| {
        aud == audience
            || claims.partitions.iter().any(|p| {
                aud.strip_prefix(audience)
                    .and_then(|rest| rest.strip_prefix('/'))
                    == Some(p.as_str())
            })
    })
}

/// The request's Bearer token, checked as the vault checks it, for the repository.
async fn repository_token(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<std::sync::Arc<VerifiedToken>, ApiError> {
    let repository = &state.repository;
    let token = crate::bearer::verify(
        req,
        state,
        &repository.realm,
        None,
        repository.introspector.clone(),
    )
    .await
    .map_err(ApiError::into_fhir)?;
    if !meant_for_repository(&token, &repository.audience) {
        return Err(ApiError::FhirBearer {
            realm: repository.realm.to_string(),
            error: BearerError::InvalidToken,
        });
    }
    req.extensions_mut()
        .insert(crate::audit::VaultToken(token.clone()));
    Ok(token)
}

/// Answers after the request's own audit record is durable.
async fn audited(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    interaction: Interaction,
    token: Option<&VerifiedToken>,
    result: Result<HttpResponse, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let status = match &result {
        Ok(response) => response.status().as_u16(),
        Err(error) => actix_web::ResponseError::status_code(error).as_u16(),
    };
    record_request(req, state, interaction, token, status).await?;
    result
}

/// Makes the record of a request to the repository durable: an ITI-81 query or feed
/// over HTTP, or a page of the audit console, with the URL asked and the status.
pub(crate) async fn record_request(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    interaction: Interaction,
    token: Option<&VerifiedToken>,
    status: u16,
) -> Result<(), ApiError> {
    let event = Event::RepositoryRequest {
        interaction: interaction.code().to_owned(),
        token: token.map(token_use),
        query: Some(req.query_string().to_owned()).filter(|q| !q.is_empty()),
        endpoint: format!("{}{}", state.repository.public_url, req.path()),
        status,
    };
    append(state, record(req, &base(state), status, event)?).await
}

async fn query(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let token = caller(&req, &state, Interaction::Search).await?;
    let result = query_inner(&req, &state, &token).await;
    audited(&req, &state, Interaction::Search, Some(&token), result).await
}

async fn query_inner(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    token: &VerifiedToken,
) -> Result<HttpResponse, ApiError> {
    let access = repository_access(&token.claims.scope, token.claims.account.as_deref(), false)
        .ok_or_else(|| refused(state))?;
    let mut pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(req.query_string().as_bytes())
            .map(|(k, v)| (canonical_name(&k).to_owned(), v.into_owned()))
            .collect();
    if !pairs.iter().any(|(k, _)| k == "date") {
        return Err(ApiError::Vault(VaultError::Invalid(
            "ITI-81 needs a date range: date=ge...&date=le...".into(),
        )));
    }
    if !pairs.iter().any(|(k, _)| k.starts_with("_sort")) {
        pairs.push(("_sort".into(), "-date".into()));
    }
    let strict = req
        .headers()
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("handling=strict"));
    let st = state.clone().into_inner();
    let bundle = blocking(move || search_repository(&st, access, &pairs, strict)).await??;
    Ok(HttpResponse::Ok()
        .content_type("application/fhir+json")
        .json(bundle))
}

/// An ITI-81 search of the repository, within what `access` lets the caller see (the
/// console's searches too). The repository is caught up with the trail first, so a
/// search sees every event recorded before it.
pub(crate) fn search_repository(
    st: &AppState,
    access: RepositoryAccess,
    pairs: &[(String, String)],
    strict: bool,
) -> Result<tessera_vault::BundleJson, VaultError> {
    st.store
        .catch_up_audit_repository()
        .map_err(|e| VaultError::Store(e.0))?;
    let vault = &st.vault.fhir;
    let restriction = match access {
        RepositoryAccess::All => None,
        RepositoryAccess::Patient(account) => Some(vec![parse_restriction(
            vault.registry(),
            "AuditEvent",
            &format!(
                "patient={}",
                account.replace('%', "%25").replace('&', "%26")
            ),
        )
        .map_err(|e| VaultError::Invalid(e.to_string()))?]),
    };
    vault.search_in(
        &st.store,
        REPOSITORY_PARTITION,
        &base(st),
        "AuditEvent",
        pairs,
        strict,
        restriction.as_deref(),
        tessera_vault::Reach::Own,
    )
}

/// Stores events another node sends; each must be an AuditEvent.
fn store_events(state: &AppState, resources: Vec<Value>) -> Vec<EntryResult> {
    let base = base(state);
    resources
        .into_iter()
        .map(|resource| {
            let result = match resource {
                Value::Object(map)
                    if map.get("resourceType").and_then(Value::as_str) == Some("AuditEvent") =>
                {
                    let id =
                        crate::ids::time_ordered_id().map_err(|e| VaultError::Store(e.to_string()));
                    id.and_then(|id| {
                        state.vault.fhir.store_in(
                            &state.store,
                            REPOSITORY_PARTITION,
                            &base,
                            map,
                            id,
                            now_ms(),
                        )
                    })
                }
                _ => Err(VaultError::Invalid(
                    "the audit repository takes AuditEvent resources".into(),
                )),
            };
            match result {
                Ok(outcome) => EntryResult::Written(outcome),
                Err(e) => EntryResult::Failed(e),
            }
        })
        .collect()
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::Vault(VaultError::Invalid(format!(
            "the body is not valid JSON: {e}"
        )))
    })
}

async fn feed_one(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = caller(&req, &state, Interaction::Create).await?;
    let result = async {
        repository_access(&token.claims.scope, None, true).ok_or_else(|| refused(&state))?;
        let resource = parse_body(&body)?;
        let st = state.clone().into_inner();
        let mut results = blocking(move || store_events(&st, vec![resource])).await?;
        match results.pop() {
            Some(EntryResult::Written(WriteOutcome::Created(stored))) => {
                Ok(HttpResponse::Created()
                    .insert_header((
                        actix_web::http::header::LOCATION,
                        format!("{}/AuditEvent/{}/_history/1", base(&state), stored.id),
                    ))
                    .content_type("application/fhir+json")
                    .body(stored.content))
            }
            // Already held (a repeated delivery): the stored event, as a read answers.
            Some(EntryResult::Written(WriteOutcome::Updated(stored))) => Ok(HttpResponse::Ok()
                .content_type("application/fhir+json")
                .body(stored.content)),
            Some(EntryResult::Failed(error)) => Err(ApiError::Vault(error)),
            _ => Err(ApiError::Internal("no outcome".into())),
        }
    }
    .await;
    audited(&req, &state, Interaction::Create, Some(&token), result).await
}

async fn feed_batch(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = caller(&req, &state, Interaction::Create).await?;
    let result = async {
        repository_access(&token.claims.scope, None, true).ok_or_else(|| refused(&state))?;
        let bundle = parse_body(&body)?;
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle")
            || bundle.get("type").and_then(Value::as_str) != Some("batch")
        {
            return Err(ApiError::Vault(VaultError::Invalid(
                "post a batch Bundle of AuditEvents to /audit/fhir".into(),
            )));
        }
        let resources: Vec<Value> = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| e.get("resource").cloned().unwrap_or(Value::Null))
                    .collect()
            })
            .unwrap_or_default();
        let st = state.clone().into_inner();
        let entries = blocking(move || store_events(&st, resources)).await?;
        let outcome = BatchOutcome {
            transaction: false,
            entries,
            // The repository's feed is audited as one request (a RepositoryRequest).
            audits: Vec::new(),
        };
        let status = |entry: &EntryResult| match entry {
            EntryResult::Failed(error) => vault_status(error).as_u16(),
            EntryResult::Written(WriteOutcome::Updated(_)) => StatusCode::OK.as_u16(),
            _ => StatusCode::CREATED.as_u16(),
        };
        let response = outcome
            .to_bundle(&base(&state), &status)
            .map_err(ApiError::Vault)?;
        Ok(HttpResponse::Ok()
            .content_type("application/fhir+json")
            .json(response))
    }
    .await;
    audited(&req, &state, Interaction::Create, Some(&token), result).await
}
