//! Recording audit events from the HTTP layer: every transaction's record is committed
//! (through the durable audit writer) before its response leaves; if it cannot be, the
//! answer is 500 instead, so nothing happens unaudited.

use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{web, HttpMessage as _, HttpRequest, HttpResponse};
use tessera_atna::{outcome_of_status, Event, Outcome, Record, TokenUse};
use tessera_iam::VerifiedToken;
use tessera_types::UnixTime;
use tessera_vault::authz::Interaction;

use crate::ids::NoRandomness;
use crate::{blocking, now, ApiError, AppState};

/// A new record of `event`, made `at` with a fresh id: every record Tessera writes is
/// made here.
pub fn new_record(
    at: UnixTime,
    observer: &str,
    client_address: Option<String>,
    outcome: Outcome,
    event: Event,
) -> Result<Record, NoRandomness> {
    Ok(Record {
        id: crate::ids::time_ordered_id()?,
        recorded: at,
        observer: observer.to_owned(),
        client_address,
        outcome,
        event,
    })
}

/// A record of `event` observed by `observer` now, for the request's peer.
pub fn record(
    req: &HttpRequest,
    observer: &str,
    status: u16,
    event: Event,
) -> Result<Record, ApiError> {
    new_record(
        now(),
        observer,
        req.peer_addr().map(|a| a.ip().to_string()),
        outcome_of_status(status),
        event,
    )
    .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Makes the record durable before the caller answers (awaiting the journal's sync;
/// no thread is held meanwhile).
pub async fn append(state: &web::Data<AppState>, record: Record) -> Result<(), ApiError> {
    state.audit.submit(record).await?;
    Ok(())
}

/// Records several events of one request: all are submitted at once (one journal sync
/// takes them together), then each is awaited.
async fn append_all(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    events: Vec<(Event, u16)>,
) -> Result<(), ApiError> {
    let mut pending = Vec::with_capacity(events.len());
    for (event, status) in events {
        pending.push(
            state
                .audit
                .submit(record(req, &state.vault.base, status, event)?),
        );
    }
    for each in pending {
        each.await?;
    }
    Ok(())
}

/// How BALP records the access token a request was made with.
pub fn token_use(token: &VerifiedToken) -> TokenUse {
    let claims = &token.claims;
    TokenUse {
        jti: claims.jti.clone(),
        client_id: claims.client_id.clone(),
        sub: claims.sub.clone(),
        iss: claims.iss.clone(),
        subject_name: claims.extensions.ihe_iua.attributes.subject_name.clone(),
    }
}

/// Put in a request's extensions by the vault's handlers for its audit record.
#[derive(Clone)]
pub struct VaultToken(pub Arc<VerifiedToken>);

/// A posted Bundle as its handler ran it: a transaction or a batch (the route cannot
/// tell), and its entries with their statuses, each audited as the interaction it is,
/// beside the record of the whole.
#[derive(Clone)]
pub struct BatchEntries {
    pub transaction: bool,
    pub entries: Vec<(tessera_vault::bundle::EntryAudit, u16)>,
}

/// The search parameters of a `POST _search` (the middleware sees no body).
#[derive(Clone)]
pub struct SearchBody(pub String);

/// The FHIR interaction of a vault request, from its route and method; `None` for the
/// discovery documents, which are not audited.
fn interaction(req: &HttpRequest) -> Option<Interaction> {
    let pattern = req.match_pattern()?;
    let route = pattern.strip_prefix("/fhir/{partition}")?;
    let method = req.method().as_str();
    Some(match (method, route) {
        (_, "/metadata" | "/.well-known/smart-configuration") => return None,
        ("POST", "" | "/") => Interaction::Batch,
        ("POST", "/{type}/_search") | ("GET", "/{type}") => Interaction::Search,
        ("GET", "/{type}/_history") => Interaction::HistoryType,
        ("GET", "/{type}/{id}/_history/{vid}") => Interaction::VRead,
        ("GET", "/{type}/{id}/_history") => Interaction::HistoryInstance,
        ("POST", "/{type}") => Interaction::Create,
        ("GET", "/{type}/{id}") => Interaction::Read,
        ("PUT", "/{type}/{id}" | "/{type}") => Interaction::Update,
        ("PATCH", "/{type}/{id}") => Interaction::Patch,
        ("DELETE", "/{type}/{id}" | "/{type}") => Interaction::Delete,
        _ => Interaction::Operation,
    })
}

/// Middleware of the vault's scope: after the handler, records the interaction (allowed
/// or refused) durably, then lets the response go; 500 if it could not be recorded.
pub async fn vault_middleware(
    req: ServiceRequest,
    next: actix_web::middleware::Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let response = next.call(req).await?;
    let request = response.request().clone();
    let Some(interaction) = interaction(&request) else {
        return Ok(response);
    };
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(response);
    };
    match record_vault_request(&request, &response, &state, interaction).await {
        Ok(()) => Ok(response),
        Err(error) => {
            tracing::error!(%error, "the vault request could not be audited; answering 500");
            let failed = HttpResponse::from_error(ApiError::Vault(
                tessera_vault::VaultError::Store("audit record not committed".into()),
            ));
            Ok(response.into_response(failed))
        }
    }
}

/// Makes the records of a vault request durable: its own, and one per entry of a
/// posted Bundle, each naming the partition's patient account.
async fn record_vault_request(
    request: &HttpRequest,
    response: &ServiceResponse<BoxBody>,
    state: &web::Data<AppState>,
    interaction: Interaction,
) -> Result<(), ApiError> {
    let partition = request
        .match_info()
        .get("partition")
        .unwrap_or_default()
        .to_owned();
    let patient = match state.store.cached_account_of_partition(&partition) {
        Some(account) => Some(account),
        None => {
            let st = state.clone().into_inner();
            let lookup = partition.clone();
            blocking(move || st.store.account_of_partition(&lookup)).await??
        }
    };
    let endpoint = format!("{}/{partition}", state.vault.base);
    let info = request.match_info();
    let resource = match (info.get("type"), info.get("id"), info.get("vid")) {
        // An operation names its own URL (`Patient/x/$everything`, `$export-file/...`).
        _ if interaction == Interaction::Operation => request
            .path()
            .strip_prefix(&format!("/fhir/{partition}"))
            .map(|rest| format!("{endpoint}{rest}")),
        (Some(ty), Some(id), Some(vid)) => Some(format!("{endpoint}/{ty}/{id}/_history/{vid}")),
        (Some(ty), Some(id), None) => Some(format!("{endpoint}/{ty}/{id}")),
        // A create names its resource in Location.
        _ => response
            .headers()
            .get(actix_web::http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let query = match request.extensions().get::<SearchBody>() {
        Some(SearchBody(body)) => Some(body.clone()),
        None => Some(request.query_string().to_owned()).filter(|q| !q.is_empty()),
    };
    let token = request
        .extensions()
        .get::<VaultToken>()
        .map(|t| token_use(&t.0));
    let event = |interaction: Interaction, resource, query, status| Event::FhirRequest {
        interaction: interaction.code().to_owned(),
        token: token.clone(),
        partition: partition.clone(),
        patient: patient.clone(),
        resource,
        query,
        endpoint: endpoint.clone(),
        status,
    };
    let status = response.status().as_u16();
    let bundle = request.extensions().get::<BatchEntries>().cloned();
    let interaction = match &bundle {
        Some(b) if b.transaction => Interaction::Transaction,
        _ => interaction,
    };
    let mut events = vec![(event(interaction, resource, query, status), status)];
    for (entry, entry_status) in bundle.map(|b| b.entries).unwrap_or_default() {
        let resource = entry.resource.map(|r| format!("{endpoint}/{r}"));
        events.push((
            event(entry.interaction, resource, entry.query, entry_status),
            entry_status,
        ));
    }
    append_all(request, state, events).await
}
