//! SMART Bulk Data export over HTTP (Bulk Data Access IG 2.0, the asynchronous request
//! pattern): a kick-off (`$export` at a partition, `Patient/$export`,
//! `Group/[id]/$export`) answers 202 with the status URL in `Content-Location`; the
//! status URL answers 202 with `X-Progress` and `Retry-After` while the job runs, then
//! 200 with the manifest; `DELETE` on it cancels (or discards) the job; each file is
//! NDJSON at its own URL. Every one needs a vault token of the client (and user) that
//! made the kick-off. A worker per server runs the queued jobs ([`spawn_worker`]); what
//! a job holds is decided by `tessera_vault::export`.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use tessera_iam::VerifiedToken;
use tessera_store::{ExportFile, ExportJob, ExportStatus, NewExport};
use tessera_vault::export::{self, ExportRequest, ExportSink, Level, Requester};
use tessera_vault::{operation_outcome, Grant, VaultError};

use crate::vault_routes::{call, new_id, partition_base, query_pairs, token, FHIR_JSON};
use crate::{blocking, now_ms, ApiError, AppState};

/// Queued or running exports a client may have at once.
const ACTIVE_PER_CLIENT: i64 = 3;
/// A worker holds its job this long past its last file; a job whose worker stopped is
/// taken over after it.
const LEASE_MS: i64 = 120_000;
/// A job is tried this many times before it is reported failed.
const MAX_ATTEMPTS: i32 = 3;
/// How often a worker looks for jobs queued at another server of a cluster (or left by
/// a stopped one); a kick-off at its own server wakes it at once.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// A file holds about this many bytes at most (and at most
/// [`ExportSettings::file_resources`] resources).
const FILE_BYTES: usize = 16 * 1024 * 1024;
/// What the status URL suggests between polls, in seconds.
const RETRY_AFTER: &str = "2";

const NDJSON: &str = "application/fhir+ndjson";

/// Bulk Data settings, and the worker's wake-up call.
#[derive(Debug)]
pub struct ExportSettings {
    /// A finished job (its manifest and files) is kept this long.
    pub retention_seconds: i64,
    /// Does this server run queued jobs? (In a cluster, some instances may leave them
    /// to others.)
    pub worker: bool,
    /// A file holds at most this many resources.
    pub file_resources: i64,
    wake: tokio::sync::Notify,
}

impl ExportSettings {
    pub fn new(retention_seconds: i64, worker: bool, file_resources: i64) -> Self {
        Self {
            retention_seconds,
            worker,
            file_resources: file_resources.max(1),
            wake: tokio::sync::Notify::new(),
        }
    }
}

/// A database failure at a vault endpoint: 500 with an OperationOutcome (the detail
/// only in the log).
fn store_failed(error: tessera_iam::StoreError) -> ApiError {
    ApiError::Vault(VaultError::Store(error.0))
}

/// The kick-off's client and user.
fn requester(token: &VerifiedToken) -> Requester<'_> {
    Requester {
        client_id: &token.claims.client_id,
        subject: &token.claims.sub,
    }
}

/// The status URL of a job.
fn status_url(base: &str, id: &str) -> String {
    format!("{base}/$export-status/{id}")
}

fn file_url(base: &str, id: &str, seq: i32) -> String {
    format!("{base}/$export-file/{id}/{seq}")
}

/// `GET|POST [base]/$export`.
pub(crate) async fn kickoff_system(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let partition = path.into_inner();
    kickoff(
        req,
        state,
        partition,
        Level::System,
        "/$export".into(),
        body,
    )
    .await
}

/// `GET|POST [base]/Patient/$export`.
pub(crate) async fn kickoff_type(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (partition, ty) = path.into_inner();
    if ty != "Patient" {
        return Err(ApiError::Vault(VaultError::NotSupported(format!(
            "$export is an operation on the server, Patient and Group, not on {ty}"
        ))));
    }
    kickoff(
        req,
        state,
        partition,
        Level::Patient,
        "/Patient/$export".into(),
        body,
    )
    .await
}

/// `GET|POST [base]/Group/[id]/$export`.
pub(crate) async fn kickoff_instance(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (partition, ty, id) = path.into_inner();
    if ty != "Group" {
        return Err(ApiError::Vault(VaultError::NotSupported(format!(
            "$export is an operation on the server, Patient and Group, not on {ty}/[id]"
        ))));
    }
    let operation = format!("/Group/{id}/$export");
    kickoff(req, state, partition, Level::Group(id), operation, body).await
}

async fn kickoff(
    req: HttpRequest,
    state: web::Data<AppState>,
    partition: String,
    level: Level,
    operation: String,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req, &state).await?;
    let invalid = |text: &str| ApiError::Vault(VaultError::Invalid(text.to_owned()));
    if !prefers_async(&req) {
        return Err(invalid(
            "$export answers asynchronously: send Prefer: respond-async",
        ));
    }
    if let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    {
        let fits = accept.split(',').any(|m| {
            let m = m.split(';').next().unwrap_or_default().trim();
            matches!(m, FHIR_JSON | "application/json" | "*/*" | "application/*")
        });
        if !fits {
            return Err(ApiError::Vault(VaultError::NotSupported(format!(
                "$export answers in {FHIR_JSON}, not {accept}"
            ))));
        }
    }
    let mut pairs = query_pairs(req.query_string());
    if req.method() == actix_web::http::Method::POST && !body.is_empty() {
        crate::vault_routes::check_content_type(&req)?;
        pairs.extend(export::parameters(&body).map_err(ApiError::Vault)?);
    }
    let base = partition_base(&state, &partition);
    let request_url = match req.query_string() {
        "" => format!("{base}{operation}"),
        query => format!("{base}{operation}?{query}"),
    };
    let id = new_id()?;
    let location = status_url(&base, &id);
    let job = id.clone();
    let owner = token.clone();
    call(&state, token, partition, move |st, ctx| {
        let request = st
            .vault
            .fhir
            .export_request(&st.store, ctx, level, &pairs, request_url)?;
        let request =
            serde_json::to_string(&request).map_err(|e| VaultError::Store(e.to_string()))?;
        let who = requester(&owner);
        let queued = st
            .store
            .export_enqueue(
                &NewExport {
                    id: &job,
                    partition: ctx.partition,
                    client_id: who.client_id,
                    subject: who.subject,
                    scope: &owner.claims.scope,
                    partitions: &owner.claims.partitions,
                    request: &request,
                    created: ctx.now_ms,
                },
                ACTIVE_PER_CLIENT,
            )
            .map_err(|e| VaultError::Store(e.0))?;
        if queued {
            Ok(())
        } else {
            Err(VaultError::Busy(format!(
                "this client has {ACTIVE_PER_CLIENT} exports queued or running; wait for one to finish or cancel one"
            )))
        }
    })
    .await?;
    state.vault.exports.wake.notify_one();
    let mut response = HttpResponse::Accepted();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.insert_header((header::CONTENT_LOCATION, value));
    }
    Ok(response.content_type(FHIR_JSON).json(operation_outcome(
        "information",
        "informational",
        &format!("export queued; poll {location} for its progress and manifest"),
    )))
}

/// `Prefer: respond-async` (a bare token, which `prefer` does not see as a pair).
fn prefers_async(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// The job of the path, when the token's holder asked for it (`resource_type`: the
/// file's, for a download).
async fn owned_job(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    partition: &str,
    id: String,
) -> Result<(Arc<VerifiedToken>, ExportJob), ApiError> {
    let token = token(req, state).await?;
    let st = state.clone().into_inner();
    let job = blocking(move || st.store.export_job(&id))
        .await?
        .map_err(store_failed)?
        .filter(|job| job.partition == partition)
        .ok_or_else(|| {
            ApiError::Vault(VaultError::NotFound(
                "no such export: never made, cancelled, or expired".into(),
            ))
        })?;
    collect(state, &token, &job, None)?;
    Ok((token, job))
}

/// May the token's holder have `resource_type`'s file of `job` (`None`: the job)?
fn collect(
    state: &web::Data<AppState>,
    token: &VerifiedToken,
    job: &ExportJob,
    resource_type: Option<&str>,
) -> Result<(), ApiError> {
    let owner = Requester {
        client_id: &job.client_id,
        subject: &job.subject,
    };
    export::may_collect(
        &state.vault.fhir,
        &owner,
        Grant {
            partitions: &job.partitions,
            scope: &job.scope,
        },
        &requester(token),
        Grant {
            partitions: &token.claims.partitions,
            scope: &token.claims.scope,
        },
        &job.partition,
        resource_type,
    )
    .map_err(|denial| ApiError::Vault(VaultError::Denied(denial)))
}

/// `GET [status URL]`: 202 while the job runs, 200 and the manifest once complete,
/// 500 and its OperationOutcome if it failed.
pub(crate) async fn status(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (partition, id) = path.into_inner();
    let (_, job) = owned_job(&req, &state, &partition, id).await?;
    match job.status {
        ExportStatus::Queued | ExportStatus::Running => {
            let progress = job.progress.as_deref().unwrap_or(match job.status {
                ExportStatus::Queued => "queued",
                _ => "started",
            });
            let mut response = HttpResponse::Accepted();
            response.insert_header((header::RETRY_AFTER, RETRY_AFTER));
            if let Ok(value) = HeaderValue::from_str(progress) {
                response.insert_header(("x-progress", value));
            }
            Ok(response.finish())
        }
        ExportStatus::Failed => Err(ApiError::Vault(VaultError::Failed(
            job.error.unwrap_or_else(|| "the export failed".into()),
        ))),
        ExportStatus::Completed => {
            let st = state.clone().into_inner();
            let job_id = job.id.clone();
            let files = blocking(move || st.store.export_files(&job_id))
                .await?
                .map_err(store_failed)?;
            let base = partition_base(&state, &partition);
            let request: ExportRequest = serde_json::from_str(&job.request)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let mut response = HttpResponse::Ok();
            let expires =
                job.finished.unwrap_or(job.created) + state.vault.exports.retention_seconds * 1000;
            if let Some(date) = crate::vault_routes::http_date(expires) {
                response.insert_header((header::EXPIRES, date));
            }
            Ok(response
                .content_type("application/json")
                .json(manifest(&base, &job, &request, &files)))
        }
    }
}

/// The complete status's body (Bulk Data IG, "Response - Complete Status").
fn manifest(base: &str, job: &ExportJob, request: &ExportRequest, files: &[ExportFile]) -> Value {
    let entry = |f: &ExportFile| {
        json!({
            "type": f.resource_type,
            "url": file_url(base, &job.id, f.seq),
            "count": f.count,
        })
    };
    json!({
        "transactionTime": tessera_vault::dates::format_instant(job.started.unwrap_or(job.created)),
        "request": request.request,
        "requiresAccessToken": true,
        "output": files.iter().filter(|f| !f.error).map(entry).collect::<Vec<_>>(),
        "error": files.iter().filter(|f| f.error).map(entry).collect::<Vec<_>>(),
    })
}

/// `DELETE [status URL]`: the job stops (or, done, is discarded) with its files.
pub(crate) async fn cancel(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (partition, id) = path.into_inner();
    let (_, job) = owned_job(&req, &state, &partition, id).await?;
    let st = state.clone().into_inner();
    blocking(move || st.store.export_delete(&job.id))
        .await?
        .map_err(store_failed)?;
    Ok(HttpResponse::Accepted()
        .content_type(FHIR_JSON)
        .json(operation_outcome(
            "information",
            "informational",
            "the export was cancelled and its files deleted",
        )))
}

/// `GET [file URL]`: one NDJSON file of the manifest.
pub(crate) async fn file(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (partition, id, seq) = path.into_inner();
    let (token, job) = owned_job(&req, &state, &partition, id).await?;
    let not_found = || ApiError::Vault(VaultError::NotFound("no such export file".into()));
    let seq: i32 = seq.parse().map_err(|_| not_found())?;
    let st = state.clone().into_inner();
    let job_id = job.id.clone();
    let (found, content) = blocking(move || st.store.export_file(&job_id, seq))
        .await?
        .map_err(store_failed)?
        .ok_or_else(not_found)?;
    if !found.error {
        collect(&state, &token, &job, Some(&found.resource_type))?;
    }
    Ok(HttpResponse::Ok().content_type(NDJSON).body(content))
}

/// Starts this server's export worker: it runs queued jobs one after another, woken by
/// a kick-off here or every [`LOOK_EVERY`], and purges expired ones.
pub(crate) fn spawn_worker(state: Arc<AppState>) {
    actix_web::rt::spawn(async move {
        loop {
            loop {
                let st = state.clone();
                match web::block(move || run_next(&st)).await {
                    Ok(Ok(true)) => continue,
                    Ok(Ok(false)) => break,
                    Ok(Err(error)) => {
                        tracing::error!(%error, "the export worker could not reach the database");
                        break;
                    }
                    Err(error) => {
                        tracing::error!(%error, "the export worker stopped unexpectedly");
                        break;
                    }
                }
            }
            let st = state.clone();
            let before = now_ms() - state.vault.exports.retention_seconds * 1000;
            if let Ok(Err(error)) = web::block(move || st.store.export_purge(before)).await {
                tracing::warn!(error = %error.0, "could not purge expired exports");
            }
            let _ =
                actix_web::rt::time::timeout(LOOK_EVERY, state.vault.exports.wake.notified()).await;
        }
    });
}

/// Claims and runs one job; `false` when there was none.
fn run_next(state: &AppState) -> Result<bool, String> {
    let now = now_ms();
    let Some(job) = state
        .store
        .export_claim(now, now + LEASE_MS, MAX_ATTEMPTS)
        .map_err(|e| e.0)?
    else {
        return Ok(false);
    };
    tracing::info!(job = %job.id, partition = %job.partition, attempt = job.attempt, "export started");
    let base = partition_base(state, &job.partition);
    let outcome = match serde_json::from_str::<ExportRequest>(&job.request) {
        Err(e) => Err(VaultError::Store(format!("the job's request: {e}"))),
        Ok(request) => {
            let mut sink = JobSink::new(state, &job);
            let grant = Grant {
                partitions: &job.partitions,
                scope: &job.scope,
            };
            match state.vault.fhir.export(
                &state.store,
                grant,
                &job.partition,
                &base,
                &request,
                &mut sink,
            ) {
                Ok(ControlFlow::Continue(())) => sink.finish(),
                other => other,
            }
        }
    };
    let error = match outcome {
        Ok(ControlFlow::Break(())) => {
            tracing::info!(job = %job.id, "export cancelled");
            return Ok(true);
        }
        Ok(ControlFlow::Continue(())) => None,
        Err(VaultError::Store(detail)) => {
            tracing::error!(job = %job.id, detail, "export failed");
            Some("internal error".to_owned())
        }
        Err(other) => Some(other.to_string()),
    };
    state
        .store
        .export_finish(&job.id, job.attempt, error.as_deref(), now_ms())
        .map_err(|e| e.0)?;
    tracing::info!(job = %job.id, failed = error.is_some(), "export finished");
    Ok(true)
}

/// Writes a running job's files: one type at a time, cut at the configured number of
/// resources or [`FILE_BYTES`], each committed with the job's progress; stops when the job is no
/// longer this attempt's (cancelled, or taken over).
struct JobSink<'a> {
    state: &'a AppState,
    job: &'a ExportJob,
    /// The type being written, its lines, and how many.
    current: Option<(String, String, i64)>,
    errors: (String, i64),
    next_seq: i32,
    exported: i64,
    progress: String,
}

impl<'a> JobSink<'a> {
    fn new(state: &'a AppState, job: &'a ExportJob) -> Self {
        Self {
            state,
            job,
            current: None,
            errors: (String::new(), 0),
            next_seq: 1,
            exported: 0,
            progress: "started".into(),
        }
    }

    fn store_error(e: tessera_iam::StoreError) -> VaultError {
        VaultError::Store(e.0)
    }

    /// Commits one file; `Break` if the job is gone.
    fn write(
        &mut self,
        resource_type: &str,
        error: bool,
        content: &str,
        count: i64,
    ) -> Result<ControlFlow<()>, VaultError> {
        let file = ExportFile {
            seq: self.next_seq,
            error,
            resource_type: resource_type.to_owned(),
            count,
        };
        self.next_seq += 1;
        let ours = self
            .state
            .store
            .export_add_file(
                &self.job.id,
                self.job.attempt,
                &file,
                content,
                &self.progress,
                now_ms() + LEASE_MS,
            )
            .map_err(Self::store_error)?;
        Ok(still_held(ours))
    }

    /// Commits the type being written.
    fn flush(&mut self) -> Result<ControlFlow<()>, VaultError> {
        match self.current.take() {
            Some((ty, lines, count)) if count > 0 => self.write(&ty, false, &lines, count),
            _ => Ok(ControlFlow::Continue(())),
        }
    }

    /// Commits what is left, the error file last.
    fn finish(&mut self) -> Result<ControlFlow<()>, VaultError> {
        if self.flush()?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        let (lines, count) = std::mem::take(&mut self.errors);
        if count > 0 {
            return self.write("OperationOutcome", true, &lines, count);
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// Go on while the job is still this attempt's; stop once it was cancelled or taken over.
fn still_held(ours: bool) -> ControlFlow<()> {
    if ours {
        ControlFlow::Continue(())
    } else {
        ControlFlow::Break(())
    }
}

impl ExportSink for JobSink<'_> {
    fn resource(&mut self, resource_type: &str, line: &str) -> Result<ControlFlow<()>, VaultError> {
        if self.current.as_ref().is_some_and(|(ty, lines, count)| {
            ty != resource_type
                || *count >= self.state.vault.exports.file_resources
                || lines.len() >= FILE_BYTES
        }) && self.flush()?.is_break()
        {
            return Ok(ControlFlow::Break(()));
        }
        let (_, lines, count) = self
            .current
            .get_or_insert_with(|| (resource_type.to_owned(), String::new(), 0));
        lines.push_str(line);
        lines.push('\n');
        *count += 1;
        self.exported += 1;
        Ok(ControlFlow::Continue(()))
    }

    fn outcome(&mut self, outcome: &Value) -> Result<ControlFlow<()>, VaultError> {
        self.errors.0.push_str(&outcome.to_string());
        self.errors.0.push('\n');
        self.errors.1 += 1;
        Ok(ControlFlow::Continue(()))
    }

    fn progress(&mut self, done: usize, total: usize) -> Result<ControlFlow<()>, VaultError> {
        self.progress = format!("{done} of {total} types, {} resources", self.exported);
        let ours = self
            .state
            .store
            .export_renew(
                &self.job.id,
                self.job.attempt,
                &self.progress,
                now_ms() + LEASE_MS,
            )
            .map_err(Self::store_error)?;
        Ok(still_held(ours))
    }
}
