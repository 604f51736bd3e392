//! The audit console at `/console`: auditors read the whole trail, patients and their
//! representatives the events about the account they signed in for. Server-rendered
//! HTML that works without JavaScript.
//!
//! The console is a registered public client of the audit repository's realm
//! ([`CLIENT_ID`]): signing in is Tessera's own authorization code flow with PKCE,
//! and the access token it gets is kept in an HttpOnly, Secure, SameSite=Lax cookie
//! scoped to `/console`. Every page checks that token as ITI-81 checks its Bearer
//! token, and what it shows is what `tessera_atna::repository_access` allows that token.
//! Every query, event view, export and chain check is audited like an ITI-81 query.

use std::sync::Arc;

use actix_web::cookie::Cookie;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde_json::Value;
use tessera_atna::plain::{summarize, when, Summary};
use tessera_atna::{repository_access, RepositoryAccess};
use tessera_iam::grant::authorization_code::s256;
use tessera_iam::metadata::endpoint_path;
use tessera_iam::service::{random_b64, secret_hash};
use tessera_iam::VerifiedToken;
use tessera_store::EventRef;
use tessera_types::UnixTime;
use tessera_vault::authz::Interaction;
use tessera_vault::dates::format_instant;
use tessera_vault::VaultError;

use crate::audit_routes::{record_request, search_repository};
use crate::chain_check::Run;
use crate::pages::{
    constant_time_eq, cookie_on, field, form_pairs, html, message, query_pairs, record_label,
    redirect,
};
use crate::{blocking, now, realm_state, ApiError, AppState};

/// The console's client id in the audit repository's realm.
pub const CLIENT_ID: &str = "tessera-console";
/// What the console may ask for: the whole trail (auditors) or a patient's part of it.
pub const CLIENT_SCOPES: &str = "openid user/AuditEvent.rs patient/AuditEvent.rs";
const TOKEN_COOKIE: &str = "tessera_console";
const LOGIN_COOKIE: &str = "tessera_console_login";
const FORM_LIMIT: usize = 16 * 1024;
const PAGE_SIZE: usize = 50;
/// The most events one export holds; a wider range is exported in parts.
pub const EXPORT_LIMIT: usize = 100_000;
/// The days a search covers when the form names no range.
const DEFAULT_DAYS: i64 = 7;

pub fn configure(cfg: &mut web::ServiceConfig) {
    let form =
        |path: &str| web::resource(path.to_owned()).app_data(web::PayloadConfig::new(FORM_LIMIT));
    cfg.route("/console", web::get().to(start))
        .route("/console/", web::get().to(start))
        .route("/console/login", web::get().to(login))
        .route("/console/callback", web::get().to(callback))
        .route("/console/events", web::get().to(events))
        .route("/console/events/{id}", web::get().to(event))
        .route("/console/export", web::get().to(export))
        .route("/console/trail", web::get().to(trail))
        .service(form("/console/trail/verify").route(web::post().to(verify)))
        .service(form("/console/logout").route(web::post().to(logout)));
}

/// The console's redirect URI under this installation's public URL.
pub fn redirect_uri(public_url: &str) -> String {
    format!("{}/console/callback", public_url.trim_end_matches('/'))
}

// ---------------------------------------------------------------------------------
// Who is looking

/// A signed-in console user: their token and what it lets them see.
struct Viewer {
    token: Arc<VerifiedToken>,
    access: RepositoryAccess,
    /// The form token of POSTs: derived from the session's access token.
    csrf: String,
}

impl Viewer {
    fn auditor(&self) -> bool {
        self.access == RepositoryAccess::All
    }
}

fn csrf_of(token: &str) -> String {
    secret_hash(&format!("tessera-console-csrf:{token}"))
}

/// The console user of this request: a cookie holding a current token of the
/// repository's realm, meant for the repository (or, for a patient, for their own
/// partition), that reaches the audit trail. Anything else is nobody.
async fn viewer(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<Option<Viewer>, ApiError> {
    let Some(cookie) = req.cookie(TOKEN_COOKIE) else {
        return Ok(None);
    };
    let presented = cookie.value().to_owned();
    let repository = &state.repository;
    let token = match crate::bearer::verify_presented(
        req,
        state,
        &repository.realm,
        None,
        repository.introspector.clone(),
        presented.clone(),
    )
    .await
    {
        Ok(token) => token,
        Err(ApiError::Bearer { .. }) => return Ok(None),
        Err(other) => return Err(other),
    };
    let claims = &token.claims;
    let for_us = crate::audit_routes::meant_for_repository(&token, &repository.audience);
    let access = repository_access(&claims.scope, claims.account.as_deref(), false);
    Ok(match access {
        Some(access) if for_us => Some(Viewer {
            csrf: csrf_of(&presented),
            token,
            access,
        }),
        _ => None,
    })
}

/// A cookie for `/console` and every page under it (a path of `/console/` would not
/// reach `/console` itself).
fn console_cookie(name: &'static str, value: String, max_age: i64) -> Cookie<'static> {
    cookie_on("/console".to_owned(), name, value, max_age)
}

/// A redirect that also sets `cookies`.
fn redirect_with(location: &str, cookies: &[Cookie<'static>]) -> HttpResponse {
    let mut response = redirect(location);
    for cookie in cookies {
        // Only fails for a value no header can carry; these are base64url or empty.
        let _ = response.add_cookie(cookie);
    }
    response
}

fn realm_label(state: &AppState) -> String {
    format!("{} · audit console", state.repository.realm)
}

fn public_url(state: &AppState) -> &str {
    &state.repository.public_url
}

// ---------------------------------------------------------------------------------
// Signing in and out

#[derive(Template)]
#[template(path = "console_start.html")]
struct StartPage<'a> {
    realm: &'a str,
    error: Option<&'a str>,
}

async fn start(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if viewer(&req, &state).await?.is_some() {
        return Ok(redirect("/console/events"));
    }
    let realm = realm_label(&state);
    let page = StartPage {
        realm: &realm,
        error: None,
    };
    Ok(html(StatusCode::OK, page.render(), &[]))
}

fn start_with_error(state: &AppState, status: StatusCode, error: &str) -> HttpResponse {
    let realm = realm_label(state);
    let page = StartPage {
        realm: &realm,
        error: Some(error),
    };
    let mut response = html(status, page.render(), &[]);
    let _ = response.add_removal_cookie(&console_cookie(LOGIN_COOKIE, String::new(), 0));
    response
}

/// Starts the authorization code flow: a new `state` and PKCE verifier, kept in a
/// short-lived cookie, and the browser sent to the realm's authorization endpoint.
async fn login(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let scope = match field(&query_pairs(&req), "as") {
        Some("auditor") => "openid user/AuditEvent.rs",
        Some("patient") => "openid patient/AuditEvent.rs",
        _ => {
            return Ok(start_with_error(
                &state,
                StatusCode::BAD_REQUEST,
                "Choose how you sign in: as an auditor, or as a patient or representative.",
            ))
        }
    };
    let (Some(verifier), Some(nonce)) = (random_b64(32), random_b64(16)) else {
        return Err(ApiError::Internal("no randomness".into()));
    };
    let public = public_url(&state);
    let location = tessera_iam::authorize::append_query(
        &format!(
            "{public}{}",
            endpoint_path(state.repository.realm.as_str(), "auth")
        ),
        &[
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", &redirect_uri(public)),
            ("scope", scope),
            ("state", &nonce),
            ("code_challenge", &s256(&verifier)),
            ("code_challenge_method", "S256"),
            ("aud", &state.repository.audience),
        ],
    );
    Ok(redirect_with(
        &location,
        &[console_cookie(
            LOGIN_COOKIE,
            format!("{nonce}.{verifier}"),
            600,
        )],
    ))
}

/// The end of the flow: the `state` must be the one this browser started with; the
/// code is exchanged in-process (audited as any ITI-71 request) for the access token
/// the console keeps.
async fn callback(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&req);
    let field = |name: &str| field(&pairs, name).map(str::to_owned);
    let started = req.cookie(LOGIN_COOKIE).and_then(|c| {
        c.value()
            .split_once('.')
            .map(|(s, v)| (s.to_owned(), v.to_owned()))
    });
    let Some((_, verifier)) = started.filter(|(expected, _)| {
        field("state").is_some_and(|given| constant_time_eq(&given, expected))
    }) else {
        return Ok(start_with_error(
            &state,
            StatusCode::BAD_REQUEST,
            "This sign-in was not started from this browser, or took too long. Please start again.",
        ));
    };
    if let Some(error) = field("error") {
        let text = match field("error_description") {
            Some(description) => format!("The sign-in was refused: {description}."),
            None => format!("The sign-in was refused ({error})."),
        };
        return Ok(start_with_error(&state, StatusCode::FORBIDDEN, &text));
    }
    let Some(code) = field("code") else {
        return Ok(start_with_error(
            &state,
            StatusCode::BAD_REQUEST,
            "The sign-in came back without a code. Please start again.",
        ));
    };
    let realm = realm_state(&state, state.repository.realm.as_str()).await?;
    let exchange = vec![
        ("grant_type".to_owned(), "authorization_code".to_owned()),
        ("code".to_owned(), code),
        ("redirect_uri".to_owned(), redirect_uri(public_url(&state))),
        ("client_id".to_owned(), CLIENT_ID.to_owned()),
        ("code_verifier".to_owned(), verifier),
    ];
    match crate::iam_routes::issue_for_page(&req, &state, realm, exchange).await? {
        Ok(issued) => {
            let lifetime = issued.response.expires_in.max(1);
            Ok(redirect_with(
                "/console/events",
                &[
                    console_cookie(TOKEN_COOKIE, issued.response.access_token, lifetime),
                    console_cookie(LOGIN_COOKIE, String::new(), 0),
                ],
            ))
        }
        Err(error) => Ok(start_with_error(
            &state,
            StatusCode::BAD_REQUEST,
            &format!("The sign-in failed: {}.", error.description),
        )),
    }
}

/// Forgets the console's token and sends the browser to the realm's logout page,
/// which ends the login session too.
async fn logout(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let viewer = viewer(&req, &state).await.ok().flatten();
    if let Some(viewer) = &viewer {
        if !posted_csrf_matches(&req, &body, viewer) {
            return message(
                &realm_label(&state),
                StatusCode::FORBIDDEN,
                "Not signed out",
                "The form was not this console's. Use the Sign out button.",
            );
        }
    }
    redirect_with(
        &endpoint_path(state.repository.realm.as_str(), "logout"),
        &[console_cookie(TOKEN_COOKIE, String::new(), 0)],
    )
}

fn posted_csrf_matches(req: &HttpRequest, body: &[u8], viewer: &Viewer) -> bool {
    form_pairs(req, body).is_some_and(|pairs| {
        field(&pairs, "csrf").is_some_and(|csrf| constant_time_eq(csrf, &viewer.csrf))
    })
}

// ---------------------------------------------------------------------------------
// Searching

/// The search form: ITI-81's filters, as people type them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Filters {
    from: String,
    to: String,
    patient: String,
    agent: String,
    kind: String,
    subtype: String,
    outcome: String,
    action: String,
    page: usize,
}

impl Filters {
    /// From the query string; the range defaults to the last [`DEFAULT_DAYS`] days.
    fn from_query(query: &str, today: UnixTime) -> Self {
        let mut filters = Filters::default();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let value = value.trim().to_owned();
            match name.as_ref() {
                "from" => filters.from = value,
                "to" => filters.to = value,
                "patient" => filters.patient = value,
                "agent" => filters.agent = value,
                "type" => filters.kind = value,
                "subtype" => filters.subtype = value,
                "outcome" => filters.outcome = value,
                "action" => filters.action = value,
                "page" => filters.page = value.parse().unwrap_or_default(),
                _ => {}
            }
        }
        if filters.from.is_empty() {
            filters.from = day(UnixTime(today.0 - DEFAULT_DAYS * 86_400));
        }
        if filters.to.is_empty() {
            filters.to = day(today);
        }
        filters
    }

    /// The filters given besides the range, by their ITI-81 (and form) names.
    fn filled(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("patient", &self.patient),
            ("agent", &self.agent),
            ("type", &self.kind),
            ("subtype", &self.subtype),
            ("outcome", &self.outcome),
            ("action", &self.action),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| (name, value.as_str()))
    }

    /// The ITI-81 parameters, newest first, for `count` events from `offset`.
    fn search_pairs(&self, offset: usize, count: usize) -> Vec<(String, String)> {
        let mut pairs = vec![
            ("date".to_owned(), format!("ge{}", self.from)),
            ("date".to_owned(), format!("le{}", self.to)),
        ];
        for (name, value) in self.filled() {
            pairs.push((name.to_owned(), value.to_owned()));
        }
        pairs.push(("_sort".into(), "-date".into()));
        // Counting a million matches costs more than the page: the pages say only
        // whether more follow.
        pairs.push(("_total".into(), "none".into()));
        pairs.push(("_count".into(), count.to_string()));
        pairs.push(("_offset".into(), offset.to_string()));
        pairs
    }

    /// The form's own query string, for links to another page or an export.
    fn query(&self, extra: &[(&str, &str)]) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        out.append_pair("from", &self.from)
            .append_pair("to", &self.to);
        for (name, value) in self.filled() {
            out.append_pair(name, value);
        }
        for (name, value) in extra {
            out.append_pair(name, value);
        }
        out.finish()
    }
}

fn day(t: UnixTime) -> String {
    tessera_atna::timestamp(t).chars().take(10).collect()
}

/// One page of events the viewer may see, and whether more follow.
async fn find(
    state: &web::Data<AppState>,
    viewer: &Viewer,
    pairs: Vec<(String, String)>,
) -> Result<(bool, Vec<Value>), VaultError> {
    let st = state.clone().into_inner();
    let access = viewer.access.clone();
    let bundle = blocking(move || search_repository(&st, access, &pairs, false))
        .await
        .map_err(|e| VaultError::Store(e.to_string()))??;
    let more = bundle
        .get("link")
        .and_then(Value::as_array)
        .is_some_and(|links| links.iter().any(|l| l["relation"] == "next"));
    let resources = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("resource").cloned())
                .collect()
        })
        .unwrap_or_default();
    Ok((more, resources))
}

/// Records a console request in the trail before it is answered, as the repository
/// records its ITI-81 requests.
async fn audited(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    viewer: &Viewer,
    interaction: Interaction,
    status: StatusCode,
) -> Result<(), ApiError> {
    record_request(
        req,
        state,
        interaction,
        Some(&viewer.token),
        status.as_u16(),
    )
    .await
}

struct Row {
    id: String,
    recorded: String,
    when: String,
    kind: String,
    subtypes: String,
    action: String,
    who: String,
    user: String,
    address: String,
    what: String,
    outcome: String,
    succeeded: bool,
    sentence: String,
}

fn row(summary: Summary) -> Row {
    Row {
        sentence: summary.sentence_for_patient(),
        when: when(&summary.recorded),
        id: summary.id,
        recorded: summary.recorded,
        kind: summary.kind,
        subtypes: summary.subtypes.join(", "),
        action: summary.action,
        who: summary.who,
        user: summary.user.unwrap_or_default(),
        address: summary.address.unwrap_or_default(),
        what: summary.what.unwrap_or_default(),
        outcome: summary.outcome,
        succeeded: summary.succeeded,
    }
}

#[derive(Template)]
#[template(path = "console_events.html")]
struct EventsPage<'a> {
    realm: &'a str,
    auditor: bool,
    who: &'a str,
    csrf: &'a str,
    filters: &'a Filters,
    error: Option<String>,
    first: usize,
    last: usize,
    rows: Vec<Row>,
    previous: Option<String>,
    next: Option<String>,
    export_ndjson: String,
    export_csv: String,
    /// A patient's or representative's: whose record the page shows.
    record: Option<RecordView>,
}

/// The record a patient or representative is looking at, and whether they reach
/// others (signing in again offers the choice: the login session is still there, so
/// only the consent page's picker is shown).
struct RecordView {
    label: String,
    switchable: bool,
}

async fn record_view(
    state: &web::Data<AppState>,
    viewer: &Viewer,
    account: &str,
) -> Result<RecordView, ApiError> {
    let st = state.clone().into_inner();
    let (sub, account) = (viewer.token.claims.sub.clone(), account.to_owned());
    blocking(move || -> Result<RecordView, ApiError> {
        use tessera_iam::IamStore as _;
        let user = st.store.user_by_id(&st.repository.realm, &sub)?;
        let reachable = match &user {
            Some(user) => st.store.reachable(user)?,
            None => Vec::new(),
        };
        let label = match reachable.iter().find(|r| r.account.as_str() == account) {
            Some(r) => record_label(&st.store, r.partition.as_str())?,
            None => account,
        };
        Ok(RecordView {
            label,
            switchable: reachable.len() > 1,
        })
    })
    .await?
}

fn viewer_name(viewer: &Viewer) -> String {
    let claims = &viewer.token.claims;
    claims
        .extensions
        .ihe_iua
        .attributes
        .subject_name
        .clone()
        .unwrap_or_else(|| claims.sub.clone())
}

async fn events(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some(viewer) = viewer(&req, &state).await? else {
        return Ok(redirect("/console"));
    };
    let filters = Filters::from_query(req.query_string(), now());
    let offset = filters.page.saturating_mul(PAGE_SIZE);
    let found = find(&state, &viewer, filters.search_pairs(offset, PAGE_SIZE)).await;
    let (status, error, more, resources) = match found {
        Ok((more, resources)) => (StatusCode::OK, None, more, resources),
        Err(VaultError::Invalid(text) | VaultError::TooCostly(text)) => {
            (StatusCode::BAD_REQUEST, Some(text), false, Vec::new())
        }
        Err(other) => return Err(ApiError::Vault(other)),
    };
    audited(&req, &state, &viewer, Interaction::Search, status).await?;
    let rows: Vec<Row> = resources.iter().map(|r| row(summarize(r))).collect();
    let shown = rows.len();
    let page_link = |page: usize| {
        format!(
            "/console/events?{}",
            filters.query(&[("page", &page.to_string())])
        )
    };
    let record = match &viewer.access {
        RepositoryAccess::Patient(account) => Some(record_view(&state, &viewer, account).await?),
        RepositoryAccess::All => None,
    };
    let realm = realm_label(&state);
    let who = viewer_name(&viewer);
    let page = EventsPage {
        record,
        realm: &realm,
        auditor: viewer.auditor(),
        who: &who,
        csrf: &viewer.csrf,
        filters: &filters,
        error,
        first: if shown == 0 { 0 } else { offset + 1 },
        last: offset + shown,
        previous: (filters.page > 0).then(|| page_link(filters.page - 1)),
        next: more.then(|| page_link(filters.page + 1)),
        export_ndjson: format!("/console/export?{}", filters.query(&[("format", "ndjson")])),
        export_csv: format!("/console/export?{}", filters.query(&[("format", "csv")])),
        rows,
    };
    Ok(html(status, page.render(), &[]))
}

// ---------------------------------------------------------------------------------
// One event

#[derive(Template)]
#[template(path = "console_event.html")]
struct EventPage<'a> {
    realm: &'a str,
    auditor: bool,
    who: &'a str,
    csrf: &'a str,
    row: Row,
    query: String,
    fhir: String,
    dicom: Option<String>,
}

async fn event(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(viewer) = viewer(&req, &state).await? else {
        return Ok(redirect("/console"));
    };
    let id = path.into_inner();
    let pairs = vec![("_id".to_owned(), id.clone())];
    let found = match find(&state, &viewer, pairs).await {
        Ok((_, mut resources)) => resources.pop(),
        Err(VaultError::Invalid(_)) => None,
        Err(other) => return Err(ApiError::Vault(other)),
    };
    let realm = realm_label(&state);
    let Some(resource) = found else {
        audited(
            &req,
            &state,
            &viewer,
            Interaction::Read,
            StatusCode::NOT_FOUND,
        )
        .await?;
        return Ok(message(
            &realm,
            StatusCode::NOT_FOUND,
            "No such event",
            "There is no event with this id that you may see.",
        ));
    };
    let summary = summarize(&resource);
    let recorded =
        tessera_vault::dates::parse(&summary.recorded).map(|r| UnixTime(r.lo.div_euclid(1000)));
    let st = state.clone().into_inner();
    let own = match recorded {
        Some(at) => {
            let id = id.clone();
            blocking(move || st.store.audit_record(&id, at)).await??
        }
        None => None,
    };
    audited(&req, &state, &viewer, Interaction::Read, StatusCode::OK).await?;
    let who = viewer_name(&viewer);
    let page = EventPage {
        realm: &realm,
        auditor: viewer.auditor(),
        who: &who,
        csrf: &viewer.csrf,
        query: summary.query.clone().unwrap_or_default(),
        row: row(summary),
        fhir: serde_json::to_string_pretty(&resource).unwrap_or_default(),
        dicom: own.map(|record| tessera_atna::to_dicom_xml(&record)),
    };
    Ok(html(StatusCode::OK, page.render(), &[]))
}

// ---------------------------------------------------------------------------------
// Export

/// RFC 4180 field; a cell a spreadsheet would run as a formula starts with `'`.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

const CSV_HEADER: &str =
    "id,recorded,type,subtype,action,outcome,application,user,address,object,query\r\n";

fn csv_line(summary: &Summary) -> String {
    let fields = [
        summary.id.as_str(),
        summary.recorded.as_str(),
        summary.kind.as_str(),
        &summary.subtypes.join(" "),
        summary.action.as_str(),
        summary.outcome.as_str(),
        summary.who.as_str(),
        summary.user.as_deref().unwrap_or_default(),
        summary.address.as_deref().unwrap_or_default(),
        summary.what.as_deref().unwrap_or_default(),
        summary.query.as_deref().unwrap_or_default(),
    ];
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// The filtered range as NDJSON (FHIR AuditEvents, one a line) or CSV, newest first, up
/// to [`EXPORT_LIMIT`] events. Auditors only.
async fn export(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some(viewer) = viewer(&req, &state).await? else {
        return Ok(redirect("/console"));
    };
    let realm = realm_label(&state);
    if !viewer.auditor() {
        audited(
            &req,
            &state,
            &viewer,
            Interaction::Search,
            StatusCode::FORBIDDEN,
        )
        .await?;
        return Ok(message(
            &realm,
            StatusCode::FORBIDDEN,
            "Not available",
            "Exports are for auditors.",
        ));
    }
    let csv = req.query_string().split('&').any(|p| p == "format=csv");
    let filters = Filters::from_query(req.query_string(), now());
    let mut body = String::new();
    if csv {
        body.push_str(CSV_HEADER);
    }
    let mut offset = 0;
    let status = loop {
        let pairs = filters.search_pairs(offset, tessera_vault::search::MAX_COUNT);
        match find(&state, &viewer, pairs).await {
            Ok((more, resources)) => {
                let done = !more;
                offset += resources.len();
                for resource in &resources {
                    if csv {
                        body.push_str(&csv_line(&summarize(resource)));
                    } else {
                        body.push_str(&resource.to_string());
                        body.push('\n');
                    }
                }
                if done || offset >= EXPORT_LIMIT {
                    break StatusCode::OK;
                }
            }
            Err(VaultError::Invalid(_) | VaultError::TooCostly(_)) => {
                break StatusCode::BAD_REQUEST
            }
            Err(other) => return Err(ApiError::Vault(other)),
        }
    };
    audited(&req, &state, &viewer, Interaction::Search, status).await?;
    if status != StatusCode::OK {
        return Ok(message(
            &realm,
            status,
            "Nothing exported",
            "The filters are not valid; correct them on the events page.",
        ));
    }
    let (content_type, name) = if csv {
        ("text/csv; charset=utf-8", "audit-events.csv")
    } else {
        ("application/fhir+ndjson", "audit-events.ndjson")
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body))
}

// ---------------------------------------------------------------------------------
// The trail's integrity and delivery

struct Delivery {
    destination: String,
    acknowledged: i64,
    behind: i64,
}

#[derive(Template)]
#[template(path = "console_trail.html")]
struct TrailPage<'a> {
    realm: &'a str,
    auditor: bool,
    who: &'a str,
    csrf: &'a str,
    head: i64,
    /// How many hash chains (one per instance) hold the trail.
    chains: usize,
    /// The newest signed checkpoint, as its content says (the check verifies it).
    checkpoint: Option<CheckpointView>,
    deliveries: Vec<Delivery>,
    /// The latest chain check of this server.
    check: Option<CheckView>,
    /// While it runs, the page reloads itself every `refresh` seconds (no script).
    refresh: u32,
}

impl TrailPage<'_> {
    fn check_running(&self) -> bool {
        self.check.as_ref().is_some_and(|c| c.ended.is_none())
    }
}

/// The newest checkpoint: its number, when it was signed, how many events it covers.
struct CheckpointView {
    n: i64,
    at: String,
    events: i64,
}

/// A time as the trail page shows it.
fn shown(t: UnixTime) -> String {
    when(&format_instant(t.0.saturating_mul(1000)))
}

/// A chain check as the trail page tells it.
struct CheckView {
    started: String,
    by: String,
    of: i64,
    checked: u64,
    /// Of `of`, for the progress bar.
    percent: u64,
    /// When it ended; `None` while it runs (the page then refreshes itself).
    ended: Option<String>,
    failed: Option<String>,
    broken: Option<String>,
    /// Why the signed checkpoints do not vouch for the chains.
    checkpoint: Option<String>,
    altered: Option<String>,
}

impl CheckView {
    fn of(run: &Run) -> Self {
        let describe = |found: &Option<EventRef>| found.as_ref().map(|r| format!("event {r}"));
        let checked = run.checked();
        let ended = run.ended();
        let report = ended.as_ref().and_then(|(_, r)| r.as_ref().ok());
        Self {
            started: shown(run.started),
            by: run.by.clone(),
            of: run.of,
            checked,
            percent: match u64::try_from(run.of) {
                Ok(of) if of > 0 => (checked.saturating_mul(100) / of).min(100),
                _ => 100,
            },
            ended: ended.as_ref().map(|(t, _)| shown(*t)),
            failed: ended.as_ref().and_then(|(_, r)| r.as_ref().err().cloned()),
            broken: report.and_then(|r| describe(&r.first_broken)),
            checkpoint: report.and_then(|r| r.checkpoint_broken.clone()),
            altered: report.and_then(|r| describe(&r.first_altered_copy)),
        }
    }
}

async fn trail_page(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    viewer: &Viewer,
) -> Result<HttpResponse, ApiError> {
    let st = state.clone().into_inner();
    let (chains, checkpoint, acknowledged) = blocking(move || -> Result<_, ApiError> {
        Ok((
            st.store.audit_chains()?,
            st.store.latest_audit_checkpoint()?,
            st.store.deliveries()?,
        ))
    })
    .await??;
    let head: i64 = chains.values().sum();
    audited(req, state, viewer, Interaction::Read, StatusCode::OK).await?;
    let realm = realm_label(state);
    let who = viewer_name(viewer);
    let page = TrailPage {
        realm: &realm,
        auditor: true,
        who: &who,
        csrf: &viewer.csrf,
        head,
        chains: chains.len(),
        checkpoint: checkpoint.map(|c| CheckpointView {
            n: c.n,
            at: shown(c.at),
            events: c.heads.values().map(|h| h.seq).sum(),
        }),
        deliveries: acknowledged
            .into_iter()
            .map(|(destination, seq)| Delivery {
                destination,
                acknowledged: seq,
                behind: (head - seq).max(0),
            })
            .collect(),
        check: state.chain_check.latest().map(|run| CheckView::of(&run)),
        refresh: 2,
    };
    Ok(html(StatusCode::OK, page.render(), &[]))
}

async fn auditor_only(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<Result<Viewer, HttpResponse>, ApiError> {
    let Some(viewer) = viewer(req, state).await? else {
        return Ok(Err(redirect("/console")));
    };
    if !viewer.auditor() {
        audited(
            req,
            state,
            &viewer,
            Interaction::Read,
            StatusCode::FORBIDDEN,
        )
        .await?;
        return Ok(Err(message(
            &realm_label(state),
            StatusCode::FORBIDDEN,
            "Not available",
            "The trail's integrity and delivery are for auditors.",
        )));
    }
    Ok(Ok(viewer))
}

async fn trail(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match auditor_only(&req, &state).await? {
        Ok(viewer) => trail_page(&req, &state, &viewer).await,
        Err(response) => Ok(response),
    }
}

/// Starts `audit verify` over the whole trail in the background (unless a check is
/// running already) and sends the auditor to the trail page, which shows its progress
/// and then the first broken event.
async fn verify(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let viewer = match auditor_only(&req, &state).await? {
        Ok(viewer) => viewer,
        Err(response) => return Ok(response),
    };
    if !posted_csrf_matches(&req, &body, &viewer) {
        return Ok(message(
            &realm_label(&state),
            StatusCode::FORBIDDEN,
            "Not checked",
            "The form was not this console's. Use the Check button on the trail page.",
        ));
    }
    let st = state.clone().into_inner();
    let head = blocking(move || st.store.audit_head()).await??;
    state
        .chain_check
        .start(&state.store, viewer_name(&viewer), head, now(), now);
    audited(
        &req,
        &state,
        &viewer,
        Interaction::Operation,
        StatusCode::SEE_OTHER,
    )
    .await?;
    Ok(redirect("/console/trail"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_iti_81_parameters_with_a_default_week() {
        let today = UnixTime(1_796_119_323); // 2026-12-01
        let filters = Filters::from_query("agent=tcu&outcome=4&page=2&x=1", today);
        assert_eq!(filters.from, "2026-11-24");
        assert_eq!(filters.to, "2026-12-01");
        let pairs = filters.search_pairs(100, 50);
        let has = |n: &str, v: &str| pairs.iter().any(|(a, b)| a == n && b == v);
        assert!(has("date", "ge2026-11-24"));
        assert!(has("date", "le2026-12-01"));
        assert!(has("agent", "tcu"));
        assert!(has("outcome", "4"));
        assert!(has("_sort", "-date"));
        assert!(has("_offset", "100"));
        assert!(!pairs.iter().any(|(n, _)| n == "patient" || n == "x"));
        assert_eq!(
            filters.query(&[("page", "3")]),
            "from=2026-11-24&to=2026-12-01&agent=tcu&outcome=4&page=3"
        );
    }

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("-1+2"), "'-1+2");
    }
}
