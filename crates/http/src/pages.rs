//! The pages people see: the authorization endpoint with its login and consent pages,
//! logout, and the account page where a user withdraws what they allowed. Server-rendered
//! HTML (askama) that works without JavaScript. Every form carries a CSRF token: the
//! login form a double-submit cookie (there is no session yet), the others the
//! session's own token. Sessions live in the database under the SHA-256 of their id, a
//! new id at every login. The decisions (what the request may ask, whether a login or
//! a consent is needed) are the domain's, in `tessera_iam::authorize`.

use std::sync::Arc;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use tessera_atna::Event;
use tessera_iam::authorize::{
    self, check_client_and_redirect, check_request, AuthorizationRequest, AuthorizeError,
    ConsentAnswer, Decision, Reachable, Step, Target, ValidRequest,
};
use tessera_iam::client::Client;
use tessera_iam::grant::authorization_code::LoggedIn;
use tessera_iam::metadata::{endpoint, endpoint_path};
use tessera_iam::service::{random_b64, secret_hash};
use tessera_iam::user::{login_wait, verify_password, User, FAILURES_FORGOTTEN_AFTER};
use tessera_iam::RealmState;
use tessera_store::Session;
use tessera_types::smart::{Context, SmartScope};
use tessera_types::{PartitionId, RealmName, Scope, Secret, UnixTime};

use crate::{blocking, now, realm_state, ApiError, AppState};

const SESSION_COOKIE: &str = "tessera_session";
const LOGIN_CSRF_COOKIE: &str = "tessera_login_csrf";
const FORM_LIMIT: usize = 64 * 1024;
/// How long a user's failed logins slow down the next attempt, at most (seconds).
const USER_WAIT_CAP: i64 = 30;
const ADDRESS_WAIT_CAP: i64 = 60;

pub fn configure(cfg: &mut web::ServiceConfig) {
    let form =
        |path: &str| web::resource(path.to_owned()).app_data(web::PayloadConfig::new(FORM_LIMIT));
    cfg.service(
        form(&endpoint_path("{realm}", "auth"))
            .route(web::get().to(authorize_get))
            .route(web::post().to(authorize_post)),
    )
    .service(form("/realms/{realm}/login-actions/authenticate").route(web::post().to(login)))
    .service(form("/realms/{realm}/login-actions/consent").route(web::post().to(consent)))
    .service(
        form(&endpoint_path("{realm}", "logout"))
            .route(web::get().to(logout_page))
            .route(web::post().to(logout)),
    )
    .route("/realms/{realm}/account", web::get().to(account))
    .service(form("/realms/{realm}/account/consents/revoke").route(web::post().to(withdraw)))
    .route("/static/tessera.css", web::get().to(stylesheet));
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(include_str!("../static/tessera.css"))
}

// ---------------------------------------------------------------------------------
// Templates

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    realm: &'a str,
    app: Option<&'a str>,
    error: Option<&'a str>,
    action: String,
    csrf: &'a str,
    carry: Vec<(String, String)>,
    username: &'a str,
}

struct ScopeItem {
    scope: String,
    text: String,
    categories: Vec<(&'static str, &'static str)>,
}

struct Choice {
    partition: String,
    label: String,
}

#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage<'a> {
    realm: &'a str,
    app: &'a str,
    username: &'a str,
    action: String,
    account: String,
    csrf: &'a str,
    carry: Vec<(String, String)>,
    /// The one record the app will use, when there is nothing to choose.
    record: Option<String>,
    /// The records to choose from, when there are several.
    choices: Vec<Choice>,
    scopes: Vec<ScopeItem>,
}

struct MessageForm {
    action: String,
    csrf: String,
    carry: Vec<(String, String)>,
    button: &'static str,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    realm: &'a str,
    heading: &'a str,
    text: &'a str,
    error: bool,
    form: Option<MessageForm>,
}

struct ConsentRow {
    client_id: String,
    scope: String,
    since: String,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage<'a> {
    realm: &'a str,
    username: &'a str,
    role: &'a str,
    notice: Option<&'a str>,
    consents: Vec<ConsentRow>,
    csrf: &'a str,
    revoke: String,
    logout: String,
}

/// An HTML response with the headers every page carries: no caching, no framing, no
/// referrer, and a CSP that allows only this origin's stylesheet and forms (plus the
/// app's origins, where a form's answer redirects to the app).
pub(crate) fn html(
    status: StatusCode,
    body: Result<String, askama::Error>,
    form_origins: &[String],
) -> HttpResponse {
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, "a page could not be rendered");
            return HttpResponse::InternalServerError().finish();
        }
    };
    let mut form_action = String::from("'self'");
    for origin in form_origins {
        form_action.push(' ');
        form_action.push_str(origin);
    }
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            format!(
                "default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
            ),
        ))
        .body(body)
}

pub(crate) fn message(realm: &str, status: StatusCode, heading: &str, text: &str) -> HttpResponse {
    let page = MessagePage {
        realm,
        heading,
        text,
        error: status.is_client_error() || status.is_server_error(),
        form: None,
    };
    html(status, page.render(), &[])
}

pub(crate) fn redirect(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// A cookie only this realm's pages receive.
fn cookie(realm: &RealmName, name: &'static str, value: String, max_age: i64) -> Cookie<'static> {
    cookie_on(format!("/realms/{realm}/"), name, value, max_age)
}

/// A cookie only the pages under `path` receive, never readable by scripts, never sent
/// in clear, not on cross-site subrequests.
pub(crate) fn cookie_on(
    path: String,
    name: &'static str,
    value: String,
    max_age: i64,
) -> Cookie<'static> {
    Cookie::build(name, value)
        .path(path)
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::seconds(max_age))
        .finish()
}

pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

// ---------------------------------------------------------------------------------
// Request helpers

/// Decoded pairs of a form body; the content type must be exactly a form (parameters
/// such as `charset` allowed).
pub(crate) fn form_pairs(req: &HttpRequest, body: &[u8]) -> Option<Vec<(String, String)>> {
    crate::is_form(req).then(|| crate::form_pairs(body))
}

pub(crate) fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Where a page sends the browser after login: the authorization request it came from,
/// or the account page. Built here from the request's own parameters, never from a URL
/// the browser sent: there is no open redirect.
fn continue_url(realm: &RealmState, carry: &[(String, String)]) -> String {
    if field(carry, "next") == Some("account") {
        return format!("{}/account", realm_path(realm));
    }
    let pairs: Vec<(&str, &str)> = carry
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if pairs.is_empty() {
        return format!("{}/account", realm_path(realm));
    }
    authorize::append_query(&endpoint(&realm_path(realm), "auth"), &pairs)
}

/// A record as people see it named: its patient and its partition, on the consent
/// page's picker and in the audit console alike.
pub(crate) fn record_label(
    store: &tessera_store::Store,
    partition: &str,
) -> Result<String, tessera_iam::StoreError> {
    Ok(match store.partition_patient_name(partition)? {
        Some(name) => format!("{name} (record {partition})"),
        None => format!("Record {partition}"),
    })
}

fn realm_path(realm: &RealmState) -> String {
    tessera_iam::metadata::realm_path(realm.realm.name.as_str())
}

/// The logged-in user of this request, if the session cookie names a live session of
/// this realm and its user is enabled.
async fn logged_in(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    realm: &RealmState,
) -> Result<Option<(Session, User)>, ApiError> {
    let Some(cookie) = req.cookie(SESSION_COOKIE) else {
        return Ok(None);
    };
    let id_hash = secret_hash(cookie.value());
    let st = state.clone().into_inner();
    let realm_name = realm.realm.name.clone();
    let at = now();
    blocking(move || -> Result<_, ApiError> {
        let Some(session) = st.store.session(&id_hash, at)? else {
            return Ok(None);
        };
        if session.realm != realm_name {
            return Ok(None);
        }
        use tessera_iam::IamStore as _;
        let user = st.store.user_by_id(&realm_name, &session.user_id)?;
        Ok(user.filter(|u| u.enabled).map(|u| (session, u)))
    })
    .await?
}

/// Who posted a form that needs a login: the session and its user when the session is
/// live and the form carries the session's CSRF token.
enum Poster {
    User(Box<(Session, User)>),
    /// No live session (logged out or expired meanwhile).
    Nobody,
    /// A session, but the form lacks its token: forged, or from an old page.
    Forged,
}

async fn poster(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    realm: &RealmState,
    pairs: &[(String, String)],
) -> Result<Poster, ApiError> {
    let Some((session, user)) = logged_in(req, state, realm).await? else {
        return Ok(Poster::Nobody);
    };
    if !field(pairs, "csrf").is_some_and(|sent| constant_time_eq(sent, &session.csrf)) {
        return Ok(Poster::Forged);
    }
    Ok(Poster::User(Box::new((session, user))))
}

async fn realm_or_page(
    state: &web::Data<AppState>,
    name: &str,
) -> Result<Arc<RealmState>, HttpResponse> {
    match realm_state(state, name).await {
        Ok(realm) => Ok(realm),
        Err(ApiError::UnknownRealm(_)) => Err(message(
            name,
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such realm.",
        )),
        Err(e) => Err(actix_web::ResponseError::error_response(&e)),
    }
}

/// The audience of an `aud`: one of the realm's FHIR audiences, or the base URL of a
/// partition under one of them.
fn target_of(state: &AppState, aud: &str) -> Option<Target> {
    let audiences = &state.tokens.settings().audiences;
    if audiences.iter().any(|a| a == aud) {
        return Some(Target::Any {
            audience: aud.to_owned(),
        });
    }
    for audience in audiences {
        let Some(rest) = aud
            .strip_prefix(audience.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        let partition = PartitionId::try_from(rest).ok()?;
        if partition.is_all() {
            return None;
        }
        return match state.store.account_of_partition(partition.as_str()) {
            Ok(Some(_)) => Some(Target::Partition {
                audience: aud.to_owned(),
                partition,
            }),
            _ => None,
        };
    }
    None
}

/// Checks an authorization request from its pairs.
fn validate(
    state: &AppState,
    realm: &RealmState,
    pairs: &[(String, String)],
    at: UnixTime,
) -> Result<ValidRequest, AuthorizeError> {
    let request = AuthorizationRequest::from_pairs(pairs).map_err(AuthorizeError::Page)?;
    let client = match request
        .client_id
        .as_deref()
        .map(tessera_types::ClientId::try_from)
    {
        Some(Ok(id)) => state
            .tokens
            .client(&realm.realm.name, &id, at)
            .map_err(|_| {
                AuthorizeError::Page("The server could not look up the application.".into())
            })?,
        _ => None,
    };
    let redirect_uri = check_client_and_redirect(&request, client.as_deref())?;
    let client = client.ok_or_else(|| AuthorizeError::Page("Unknown application.".into()))?;
    check_request(
        request,
        client,
        redirect_uri,
        |aud| target_of(state, aud),
        |launch| {
            state
                .tokens
                .launch_context(realm, launch, at)
                .ok()
                .flatten()
        },
    )
}

fn refusal(realm: &RealmState, error: AuthorizeError) -> HttpResponse {
    match error {
        AuthorizeError::Page(text) => message(
            realm.realm.name.as_str(),
            StatusCode::BAD_REQUEST,
            "This request cannot be completed",
            &text,
        ),
        AuthorizeError::Redirect {
            redirect_uri,
            state,
            error,
        } => redirect(&authorize::error_redirect(
            &redirect_uri,
            &error,
            state.as_deref(),
            &realm.issuer,
        )),
    }
}

// ---------------------------------------------------------------------------------
// The authorization endpoint

async fn authorize_get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let pairs = query_pairs(&req);
    authorization(&req, &path, &state, pairs).await
}

/// SMART `authorize-post`: the same request as a form.
async fn authorize_post(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    match form_pairs(&req, &body) {
        Some(pairs) => authorization(&req, &path, &state, pairs).await,
        None => message(
            &path,
            StatusCode::BAD_REQUEST,
            "This request cannot be completed",
            "An authorization request by POST must be a form.",
        ),
    }
}

async fn authorization(
    req: &HttpRequest,
    realm_name: &str,
    state: &web::Data<AppState>,
    pairs: Vec<(String, String)>,
) -> HttpResponse {
    let realm = match realm_or_page(state, realm_name).await {
        Ok(realm) => realm,
        Err(page) => return page,
    };
    match proceed(req, state, &realm, pairs, None).await {
        Ok(response) => response,
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

/// Takes an authorization request as far as it can go: the login page, the consent
/// page, or the redirect with a code (or an error). `answer` is the consent form's.
async fn proceed(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    realm: &Arc<RealmState>,
    pairs: Vec<(String, String)>,
    answer: Option<ConsentAnswer>,
) -> Result<HttpResponse, ApiError> {
    let session = logged_in(req, state, realm).await?;
    let st = state.clone().into_inner();
    let realm_arc = realm.clone();
    let at = now();
    let carry_pairs = pairs.clone();
    let user_session = session.clone();
    let outcome = blocking(
        move || -> Result<Result<Outcome, AuthorizeError>, ApiError> {
            let valid = match validate(&st, &realm_arc, &carry_pairs, at) {
                Ok(valid) => valid,
                Err(e) => return Ok(Err(e)),
            };
            let Some((session, user)) = user_session else {
                return Ok(Ok(Outcome::Login(Box::new(valid))));
            };
            let reachable = st.store.reachable(&user)?;
            let remembered = match answer {
                Some(_) => None,
                None => st.store.consent(
                    &realm_arc.realm.name,
                    &user.id,
                    valid.client.client_id.as_str(),
                )?,
            };
            let step =
                match authorize::next_step(&valid, Some(&user), &reachable, remembered.as_ref()) {
                    Ok(step) => step,
                    Err(e) => return Ok(Err(e)),
                };
            let decision = match (step, answer) {
                (Step::Login, _) => return Ok(Ok(Outcome::Login(Box::new(valid)))),
                (Step::Grant(decision), _) => decision,
                (Step::Consent { choices }, None) => {
                    let labels = choices
                        .iter()
                        .map(|c| record_label(&st.store, c.partition.as_str()))
                        .collect::<Result<Vec<_>, _>>()?;
                    return Ok(Ok(Outcome::Consent(Box::new(ConsentNeeded {
                        valid,
                        choices,
                        labels,
                        user,
                        csrf: session.csrf,
                    }))));
                }
                (Step::Consent { choices }, Some(answer)) => {
                    match authorize::decide(&valid, &choices, &answer) {
                        Ok(decision) => {
                            st.store.save_consent(
                                &realm_arc.realm.name,
                                &user.id,
                                valid.client.client_id.as_str(),
                                &decision.scope,
                                at,
                            )?;
                            decision
                        }
                        Err(e) => return Ok(Err(e)),
                    }
                }
            };
            // An EHR launch is used once: by the first code issued for it.
            if let Some((launch, _)) = &valid.launch {
                if !st.tokens.use_launch(&realm_arc, launch, at)? {
                    return Ok(Err(valid.redirect_error(
                        tessera_iam::OAuthErrorCode::InvalidRequest,
                        "the launch was used meanwhile",
                    )));
                }
            }
            let location = grant_code(&st, &realm_arc, &valid, &decision, &session, &user, at)?;
            Ok(Ok(Outcome::Redirect(location)))
        },
    )
    .await??;
    let realm_label = realm.realm.name.as_str();
    Ok(match outcome {
        Err(error) => refusal(realm, error),
        Ok(Outcome::Redirect(location)) => redirect(&location),
        Ok(Outcome::Login(valid)) => {
            let carry = carry_of(&valid);
            login_page(
                req,
                realm,
                Some(valid.client.as_ref()),
                carry,
                None,
                "",
                StatusCode::OK,
            )
        }
        Ok(Outcome::Consent(needed)) => {
            let ConsentNeeded {
                valid,
                choices,
                labels,
                user,
                csrf,
            } = *needed;
            let page = ConsentPage {
                realm: realm_label,
                app: valid.client.client_id.as_str(),
                username: &user.username,
                action: format!("{}/login-actions/consent", realm_path(realm)),
                account: format!("{}/account", realm_path(realm)),
                csrf: &csrf,
                carry: carry_of(&valid),
                record: match labels.as_slice() {
                    [only] => Some(only.clone()),
                    _ => None,
                },
                choices: match choices.as_slice() {
                    [_] => Vec::new(),
                    several => several
                        .iter()
                        .zip(labels)
                        .map(|(c, label)| Choice {
                            partition: c.partition.to_string(),
                            label,
                        })
                        .collect(),
                },
                scopes: valid.scope.iter().map(scope_item).collect(),
            };
            html(StatusCode::OK, page.render(), &valid.client.origins())
        }
    })
}

enum Outcome {
    Login(Box<ValidRequest>),
    Consent(Box<ConsentNeeded>),
    Redirect(String),
}

struct ConsentNeeded {
    valid: ValidRequest,
    choices: Vec<Reachable>,
    /// What the picker shows for each choice.
    labels: Vec<String>,
    user: User,
    csrf: String,
}

fn carry_of(valid: &ValidRequest) -> Vec<(String, String)> {
    valid
        .request
        .to_pairs()
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// Issues the code and builds the redirect back to the app.
fn grant_code(
    st: &AppState,
    realm: &RealmState,
    valid: &ValidRequest,
    decision: &Decision,
    session: &Session,
    user: &User,
    at: UnixTime,
) -> Result<String, ApiError> {
    let patient = match &decision.partition {
        Some(chosen) => st.store.partition_patient(chosen.partition.as_str())?,
        None => None,
    };
    let login = LoggedIn {
        user,
        session: &session.id_hash,
        auth_time: session.auth_time,
    };
    let code = st
        .tokens
        .issue_code(&realm.realm.name, valid, decision, &login, patient, at)?;
    tracing::info!(
        realm = %realm.realm.name,
        client_id = %valid.client.client_id,
        user = %user.username,
        scope = %decision.scope,
        "authorization code issued"
    );
    Ok(authorize::code_redirect(
        &valid.redirect_uri,
        &code,
        valid.request.state.as_deref(),
        &realm.issuer,
    ))
}

const OBSERVATION_CATEGORIES: [(&str, &str); 9] = [
    ("laboratory", "Laboratory results"),
    ("vital-signs", "Vital signs"),
    ("social-history", "Social history"),
    ("imaging", "Imaging"),
    ("survey", "Surveys"),
    ("exam", "Examinations"),
    ("therapy", "Therapy"),
    ("activity", "Activity"),
    ("procedure", "Procedures"),
];

/// A scope in plain words, with the categories it can be narrowed to.
fn scope_item(scope: &Scope) -> ScopeItem {
    let text = match scope.as_str() {
        "openid" => "Know who you are (your user id)".to_owned(),
        "fhirUser" => "Know which person record is yours".to_owned(),
        "profile" => "See your name".to_owned(),
        "launch/patient" => "Know whose record you chose".to_owned(),
        "offline_access" => {
            "Keep access after you log out, until you withdraw it on your account page".to_owned()
        }
        "online_access" => "Keep access while you stay logged in".to_owned(),
        _ => match SmartScope::parse(scope) {
            Some(smart) => describe_smart(&smart),
            None => scope.to_string(),
        },
    };
    let categories = match SmartScope::parse(scope) {
        Some(smart) if smart.resource_type == "Observation" && smart.query.is_none() => {
            OBSERVATION_CATEGORIES.to_vec()
        }
        _ => Vec::new(),
    };
    ScopeItem {
        scope: scope.to_string(),
        text,
        categories,
    }
}

fn describe_smart(smart: &SmartScope) -> String {
    use tessera_types::smart::Permissions;
    let verbs: Vec<&str> = [
        (Permissions::READ, "read"),
        (Permissions::SEARCH, "search"),
        (Permissions::CREATE, "add to"),
        (Permissions::UPDATE, "change"),
        (Permissions::DELETE, "delete"),
    ]
    .iter()
    .filter(|(p, _)| smart.permissions.contains(*p))
    .map(|(_, verb)| *verb)
    .collect();
    let what = if smart.resource_type == "*" {
        "all health records".to_owned()
    } else {
        format!("{} records", smart.resource_type)
    };
    let whose = match smart.context {
        Context::Patient => "of the chosen patient",
        Context::User => "you can access",
        Context::System => "of the whole system",
    };
    let mut text = format!("{} {what} {whose}", capitalise(&verbs.join(", ")));
    if let Some(query) = &smart.query {
        text.push_str(&format!(" (only {query})"));
    }
    text
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------
// Login

fn login_page(
    req: &HttpRequest,
    realm: &RealmState,
    client: Option<&Client>,
    carry: Vec<(String, String)>,
    error: Option<&str>,
    username: &str,
    status: StatusCode,
) -> HttpResponse {
    // The double-submit token: kept if the browser has one, so that two open login
    // tabs both work.
    let csrf = req
        .cookie(LOGIN_CSRF_COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|v| v.len() >= 32)
        .or_else(|| random_b64(32));
    let Some(csrf) = csrf else {
        return HttpResponse::InternalServerError().finish();
    };
    let page = LoginPage {
        realm: realm.realm.name.as_str(),
        app: client.map(|c| c.client_id.as_str()),
        error,
        action: format!("{}/login-actions/authenticate", realm_path(realm)),
        csrf: &csrf,
        carry,
        username,
    };
    let origins = client.map(Client::origins).unwrap_or_default();
    let mut response = html(status, page.render(), &origins);
    let _ = response.add_cookie(&cookie(
        &realm.realm.name,
        LOGIN_CSRF_COOKIE,
        csrf.clone(),
        3600,
    ));
    response
}

/// The parameters a page carries along (the authorization request, or `next`).
fn carried(pairs: &[(String, String)]) -> Vec<(String, String)> {
    const NOT_CARRIED: [&str; 6] = [
        "csrf",
        "username",
        "password",
        "decision",
        "scope_granted",
        "partition",
    ];
    pairs
        .iter()
        .filter(|(n, _)| !NOT_CARRIED.contains(&n.as_str()) && !n.starts_with("narrow:"))
        .cloned()
        .collect()
}

async fn login(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let realm = match realm_or_page(&state, &path).await {
        Ok(realm) => realm,
        Err(page) => return Ok(page),
    };
    let Some(pairs) = form_pairs(&req, &body) else {
        return Ok(message(
            &path,
            StatusCode::BAD_REQUEST,
            "Log in",
            "The login form must be sent as a form.",
        ));
    };
    let carry = carried(&pairs);
    let username = field(&pairs, "username")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let password = Secret::new(field(&pairs, "password").unwrap_or_default().to_owned());
    let csrf_ok = match (req.cookie(LOGIN_CSRF_COOKIE), field(&pairs, "csrf")) {
        (Some(cookie), Some(sent)) => constant_time_eq(cookie.value(), sent),
        _ => false,
    };
    if !csrf_ok {
        let client = client_of_carry(&state, &realm, &carry).await;
        return Ok(login_page(
            &req,
            &realm,
            client.as_deref(),
            carry,
            Some("This form has expired or did not come from this site. Please log in again."),
            &username,
            StatusCode::BAD_REQUEST,
        ));
    }
    let address = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let keys = vec![
        format!("user:{}/{}", realm.realm.name, username.to_lowercase()),
        format!("addr:{address}"),
    ];
    let st = state.clone().into_inner();
    let realm_name = realm.realm.name.clone();
    let at = now();
    let lifetime = st.pages.session_lifetime_seconds;
    let (checked_name, attempt) = (username.clone(), keys.clone());
    let result = blocking(move || -> Result<LoginResult, ApiError> {
        let failures = st.store.login_failures(&attempt)?;
        let wait = failures
            .iter()
            .zip([USER_WAIT_CAP, ADDRESS_WAIT_CAP])
            .map(|((n, last), cap)| login_wait(*n, *last, at.0, cap))
            .max()
            .unwrap_or(0);
        if wait > 0 {
            return Ok(LoginResult::Throttled(wait));
        }
        let user = st.store.user(&realm_name, &checked_name)?;
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.as_str())
            .unwrap_or_else(|| tessera_iam::user::decoy_hash());
        let password_ok = verify_password(&password, hash);
        // A failure counts from when it was answered: the wait it earns must not pass
        // while the password hash is still being checked.
        let judged = now();
        match user {
            Some(user) if password_ok && user.enabled => {
                st.store.clear_login_failures(&attempt[..1])?;
                let id =
                    random_b64(32).ok_or_else(|| ApiError::Internal("no randomness".into()))?;
                let csrf =
                    random_b64(32).ok_or_else(|| ApiError::Internal("no randomness".into()))?;
                st.store.create_session(&Session {
                    id_hash: secret_hash(&id),
                    realm: realm_name.clone(),
                    user_id: user.id.clone(),
                    csrf,
                    auth_time: at.0,
                    expires_at: at.0 + lifetime,
                })?;
                Ok(LoginResult::Success(id))
            }
            Some(user) if password_ok && !user.enabled => {
                st.store
                    .record_login_failure(&attempt, judged, FAILURES_FORGOTTEN_AFTER)?;
                Ok(LoginResult::Failed("the user is disabled"))
            }
            _ => {
                st.store
                    .record_login_failure(&attempt, judged, FAILURES_FORGOTTEN_AFTER)?;
                Ok(LoginResult::Failed("wrong username or password"))
            }
        }
    })
    .await??;
    let (error, shown) = match &result {
        LoginResult::Success(_) => (None, None),
        LoginResult::Failed(reason) => (
            Some(reason.to_string()),
            Some("Wrong username or password.".to_owned()),
        ),
        LoginResult::Throttled(wait) => (
            Some(format!("throttled for {wait} s after failed logins")),
            Some(format!(
                "Too many failed logins. Please wait {wait} seconds and try again."
            )),
        ),
    };
    let status = match &result {
        LoginResult::Success(_) => 303,
        LoginResult::Failed(_) => 401,
        LoginResult::Throttled(_) => 429,
    };
    let event = Event::UserAuthentication {
        username: username.clone(),
        realm: realm.issuer.clone(),
        logout: false,
        error,
    };
    crate::audit::append(
        &state,
        crate::audit::record(&req, &realm.issuer, status, event)?,
    )
    .await?;
    Ok(match result {
        LoginResult::Success(id) => {
            tracing::info!(realm = %realm.realm.name, user = %username, "user logged in");
            let mut response = redirect(&continue_url(&realm, &carry));
            // The new session replaces whatever the browser had (no fixation), and the
            // login form's token is spent.
            if let Some(old) = req.cookie(SESSION_COOKIE) {
                let old_hash = secret_hash(old.value());
                let st = state.clone().into_inner();
                blocking(move || st.store.delete_session(&old_hash)).await??;
            }
            let _ = response.add_cookie(&cookie(&realm.realm.name, SESSION_COOKIE, id, lifetime));
            let _ = response.add_cookie(&cookie(
                &realm.realm.name,
                LOGIN_CSRF_COOKIE,
                String::new(),
                0,
            ));
            response
        }
        _ => {
            tracing::warn!(realm = %realm.realm.name, user = %username, "login failed");
            let client = client_of_carry(&state, &realm, &carry).await;
            login_page(
                &req,
                &realm,
                client.as_deref(),
                carry,
                shown.as_deref(),
                &username,
                StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
            )
        }
    })
}

enum LoginResult {
    Success(String),
    Failed(&'static str),
    Throttled(i64),
}

async fn client_of_carry(
    state: &web::Data<AppState>,
    realm: &RealmState,
    carry: &[(String, String)],
) -> Option<Arc<Client>> {
    let id = tessera_types::ClientId::try_from(field(carry, "client_id")?).ok()?;
    let st = state.clone().into_inner();
    let name = realm.realm.name.clone();
    let at = now();
    blocking(move || st.tokens.client(&name, &id, at).ok().flatten())
        .await
        .ok()
        .flatten()
}

// ---------------------------------------------------------------------------------
// Consent

async fn consent(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let realm = match realm_or_page(&state, &path).await {
        Ok(realm) => realm,
        Err(page) => return Ok(page),
    };
    let Some(pairs) = form_pairs(&req, &body) else {
        return Ok(message(
            &path,
            StatusCode::BAD_REQUEST,
            "Allow access",
            "The consent form must be sent as a form.",
        ));
    };
    match poster(&req, &state, &realm, &pairs).await? {
        Poster::User(_) => {}
        Poster::Nobody => {
            // The session ended meanwhile: log in again, then see the question again.
            return Ok(login_page(
                &req,
                &realm,
                None,
                carried(&pairs),
                Some("Your session ended. Please log in again."),
                "",
                StatusCode::UNAUTHORIZED,
            ));
        }
        Poster::Forged => {
            return Ok(message(
                &path,
                StatusCode::BAD_REQUEST,
                "This request cannot be completed",
                "This form has expired or did not come from this site. Start again from the application.",
            ))
        }
    }
    let mut scopes = Vec::new();
    for (name, value) in &pairs {
        if name != "scope_granted" {
            continue;
        }
        let narrowed = field(&pairs, &format!("narrow:{value}")).filter(|c| !c.is_empty());
        scopes.push(match narrowed {
            Some(category) => format!("{value}?category={category}"),
            None => value.clone(),
        });
    }
    let answer = ConsentAnswer {
        allow: field(&pairs, "decision") == Some("allow"),
        scopes,
        partition: field(&pairs, "partition").map(str::to_owned),
    };
    proceed(&req, &state, &realm, carried(&pairs), Some(answer)).await
}

// ---------------------------------------------------------------------------------
// Logout (OpenID Connect RP-Initiated Logout 1.0) and the account page

async fn logout_page(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let realm = match realm_or_page(&state, &path).await {
        Ok(realm) => realm,
        Err(page) => return Ok(page),
    };
    let carry: Vec<(String, String)> = query_pairs(&req)
        .into_iter()
        .filter(|(n, _)| ["post_logout_redirect_uri", "client_id", "state"].contains(&n.as_str()))
        .collect();
    let Some((session, _)) = logged_in(&req, &state, &realm).await? else {
        return Ok(after_logout(&state, &realm, &carry).await);
    };
    let page = MessagePage {
        realm: realm.realm.name.as_str(),
        heading: "Log out",
        text: "Do you want to log out of Tessera?",
        error: false,
        form: Some(MessageForm {
            action: endpoint(&realm_path(&realm), "logout"),
            csrf: session.csrf.clone(),
            carry,
            button: "Log out",
        }),
    };
    Ok(html(StatusCode::OK, page.render(), &[]))
}

async fn logout(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let realm = match realm_or_page(&state, &path).await {
        Ok(realm) => realm,
        Err(page) => return Ok(page),
    };
    let pairs = form_pairs(&req, &body).unwrap_or_default();
    let carry: Vec<(String, String)> = pairs
        .iter()
        .filter(|(n, _)| ["post_logout_redirect_uri", "client_id", "state"].contains(&n.as_str()))
        .cloned()
        .collect();
    let (session, user) =
        match poster(&req, &state, &realm, &pairs).await? {
            Poster::User(posted) => *posted,
            Poster::Nobody => return Ok(after_logout(&state, &realm, &carry).await),
            Poster::Forged => return Ok(message(
                &path,
                StatusCode::BAD_REQUEST,
                "Log out",
                "This form has expired or did not come from this site; you are still logged in.",
            )),
        };
    let st = state.clone().into_inner();
    let id_hash = session.id_hash.clone();
    blocking(move || st.store.delete_session(&id_hash)).await??;
    let event = Event::UserAuthentication {
        username: user.username.clone(),
        realm: realm.issuer.clone(),
        logout: true,
        error: None,
    };
    crate::audit::append(
        &state,
        crate::audit::record(&req, &realm.issuer, 200, event)?,
    )
    .await?;
    tracing::info!(realm = %realm.realm.name, user = %user.username, "user logged out");
    let mut response = after_logout(&state, &realm, &carry).await;
    let _ = response.add_cookie(&cookie(&realm.realm.name, SESSION_COOKIE, String::new(), 0));
    Ok(response)
}

/// Back to the app if it named a `post_logout_redirect_uri` it registered (as one of
/// its redirect URIs), else a page saying so.
async fn after_logout(
    state: &web::Data<AppState>,
    realm: &RealmState,
    carry: &[(String, String)],
) -> HttpResponse {
    if let Some(target) = field(carry, "post_logout_redirect_uri") {
        let client = client_of_carry(state, realm, carry).await;
        if client.is_some_and(|c| c.enabled && c.has_redirect_uri(target)) {
            let location = match field(carry, "state") {
                Some(s) => authorize::append_query(target, &[("state", s)]),
                None => target.to_owned(),
            };
            return redirect(&location);
        }
    }
    message(
        realm.realm.name.as_str(),
        StatusCode::OK,
        "Logged out",
        "You are logged out. You can close this window.",
    )
}

async fn account(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let realm = match realm_or_page(&state, &path).await {
        Ok(realm) => realm,
        Err(page) => return Ok(page),
    };
    let Some((session, user)) = logged_in(&req, &state, &realm).await? else {
        let carry = vec![("next".to_owned(), "account".to_owned())];
        return Ok(login_page(
            &req,
            &realm,
            None,
            carry,
            None,
            "",
            StatusCode::OK,
        ));
    };
    let notice =
        field(&query_pairs(&req), "withdrawn").map(|c| format!("Access for {c} was withdrawn."));
    account_page(&state, &realm, &session, &user, notice.as_deref()).await
}

async fn account_page(
    state: &web::Data<AppState>,
    realm: &RealmState,
    session: &Session,
    user: &User,
    notice: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let st = state.clone().into_inner();
    let (name, user_id) = (realm.realm.name.clone(), user.id.clone());
    let consents = blocking(move || st.store.consents(&name, &user_id)).await??;
    let page = AccountPage {
        realm: realm.realm.name.as_str(),
        username: &user.username,
        role: user.role.name(),
        notice,
        consents: consents
            .into_iter()
            .map(|c| ConsentRow {
                client_id: c.client_id,
                scope: c.scope.to_string(),
                since: tessera_atna::timestamp(UnixTime(c.granted_at)),
            })
            .collect(),
        csrf: &session.csrf,
        revoke: format!("{}/account/consents/revoke", realm_path(realm)),
        logout: endpoint(&realm_path(realm), "logout"),
    };
    Ok(html(StatusCode::OK, page.render(), &[]))
}

/// Withdraws a consent (and the app's refresh tokens from this user).
async fn withdraw(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let realm = match realm_or_page(&state, &path).await {
        Ok(realm) => realm,
        Err(page) => return Ok(page),
    };
    let pairs = form_pairs(&req, &body).unwrap_or_default();
    let user = match poster(&req, &state, &realm, &pairs).await? {
        Poster::User(posted) => posted.1,
        Poster::Nobody => {
            let carry = vec![("next".to_owned(), "account".to_owned())];
            return Ok(login_page(
                &req,
                &realm,
                None,
                carry,
                Some("Please log in first."),
                "",
                StatusCode::UNAUTHORIZED,
            ));
        }
        Poster::Forged => {
            return Ok(message(
                &path,
                StatusCode::BAD_REQUEST,
                "Your account",
                "This form has expired or did not come from this site; nothing was changed.",
            ))
        }
    };
    let Some(client_id) = field(&pairs, "client_id").map(str::to_owned) else {
        return Ok(message(
            &path,
            StatusCode::BAD_REQUEST,
            "Your account",
            "No application was named.",
        ));
    };
    let st = state.clone().into_inner();
    let (name, user_id, client) = (realm.realm.name.clone(), user.id.clone(), client_id.clone());
    let at = now();
    blocking(move || st.store.revoke_consent(&name, &user_id, &client, at)).await??;
    tracing::info!(realm = %realm.realm.name, user = %user.username, client_id = %client_id, "consent withdrawn");
    Ok(redirect(&authorize::append_query(
        &format!("{}/account", realm_path(&realm)),
        &[("withdrawn", &client_id)],
    )))
}
