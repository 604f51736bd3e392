//! AIM over HTTP: CARA's resolution call and the IHE PIXm query (ITI-83).

use actix_web::{web, HttpRequest, HttpResponse};
use tessera_aim::{
    parse_resolution_request, pix_query, resolution, AccountStore as _, PixOutcome, RESOLVE_SCOPE,
};

use std::sync::Arc;

use tessera_atna::{AimTransaction, Event, TokenUse};
use tessera_iam::VerifiedToken;

use crate::audit;
use crate::bearer::{authorize, Requirement};
use crate::error::FhirIssue;
use crate::{blocking, ApiError, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/aim/api/v1/query/get-account-urn-from-mpi-id-urn")
            .app_data(web::PayloadConfig::new(16 * 1024))
            .route(web::post().to(resolve)),
    )
    .route("/aim/fhir/Patient/$ihe-pix", web::get().to(pix));
}

async fn authorized(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<Arc<VerifiedToken>, ApiError> {
    let aim = &state.aim;
    authorize(
        req,
        state,
        Requirement {
            realm: &aim.realm,
            audience: &aim.audience,
            scope: RESOLVE_SCOPE,
        },
    )
    .await
}

/// The facts of an AIM lookup, filled in as the request is handled, recorded (durably,
/// before the answer) whatever its outcome.
struct Lookup {
    transaction: AimTransaction,
    token: Option<TokenUse>,
    queried: Option<String>,
    account: Option<String>,
}

impl Lookup {
    fn new(transaction: AimTransaction) -> Self {
        Self {
            transaction,
            token: None,
            queried: None,
            account: None,
        }
    }

    async fn answer(
        self,
        req: &HttpRequest,
        state: &web::Data<AppState>,
        result: Result<HttpResponse, ApiError>,
    ) -> Result<HttpResponse, ApiError> {
        let status = match &result {
            Ok(response) => response.status().as_u16(),
            Err(error) => actix_web::ResponseError::status_code(error).as_u16(),
        };
        let endpoint = format!("{}{}", state.aim.public_base, req.path());
        let event = Event::AccountLookup {
            transaction: self.transaction,
            token: self.token,
            queried: self.queried,
            account: self.account,
            endpoint,
            status,
        };
        let observer = format!("{}/aim", state.aim.public_base);
        audit::append(state, audit::record(req, &observer, status, event)?).await?;
        result
    }
}

async fn resolve(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut lookup = Lookup::new(AimTransaction::Resolution);
    let result = resolve_inner(&req, &body, &state, &mut lookup).await;
    lookup.answer(&req, &state, result).await
}

async fn resolve_inner(
    req: &HttpRequest,
    body: &[u8],
    state: &web::Data<AppState>,
    lookup: &mut Lookup,
) -> Result<HttpResponse, ApiError> {
    let token = authorized(req, state).await?;
    lookup.token = Some(audit::token_use(&token));
    let client = token.claims.client_id.clone();
    if crate::media_type(req).as_deref() != Some("application/json") {
        return Err(ApiError::BadRequest(
            "the body must be application/json".into(),
        ));
    }
    let mpi_id = parse_resolution_request(body).map_err(ApiError::BadRequest)?;
    lookup.queried = Some(mpi_id.to_string());
    let st = state.clone().into_inner();
    let search = mpi_id.clone();
    let account = blocking(move || {
        let (authority, patient) = search.authority_and_id();
        st.store.account_of_mpi_id(authority, patient)
    })
    .await??;
    match account {
        Some(account) => {
            tracing::info!(%client, account = %account.urn, "MPI-ID resolved");
            lookup.account = Some(account.urn.to_string());
            Ok(HttpResponse::Ok().json(resolution(&account)))
        }
        None => {
            tracing::info!(%client, "MPI-ID not found");
            Err(ApiError::NotFound(
                "no account is known for this MPI-ID".into(),
            ))
        }
    }
}

async fn pix(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut lookup = Lookup::new(AimTransaction::Pixm);
    let result = pix_inner(&req, &state, &mut lookup).await;
    lookup.answer(&req, &state, result).await
}

async fn pix_inner(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    lookup: &mut Lookup,
) -> Result<HttpResponse, ApiError> {
    let token = authorized(req, state).await?;
    lookup.token = Some(audit::token_use(&token));
    lookup.queried = Some(req.query_string().to_owned());
    let mut source = None;
    let mut targets = Vec::new();
    for (name, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match name.as_ref() {
            "sourceIdentifier" if source.is_none() => source = Some(value.into_owned()),
            "sourceIdentifier" => {
                return Err(ApiError::Fhir {
                    issue: FhirIssue::Invalid,
                    diagnostics: "sourceIdentifier is repeated".into(),
                })
            }
            // PIXm allows several targetSystem parameters, or one comma-separated list.
            "targetSystem" => targets.extend(
                value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    let st = state.clone().into_inner();
    let outcome = blocking(move || {
        pix_query(
            &st.store,
            &st.aim.account_prefix,
            source.as_deref(),
            &targets,
        )
    })
    .await??;
    match outcome {
        PixOutcome::Found(parameters) => {
            lookup.account = parameters["parameter"][0]["valueIdentifier"]["value"]
                .as_str()
                .map(str::to_owned);
            Ok(HttpResponse::Ok()
                .content_type("application/fhir+json")
                .json(parameters))
        }
        PixOutcome::Invalid(diagnostics) => Err(ApiError::Fhir {
            issue: FhirIssue::Invalid,
            diagnostics,
        }),
        PixOutcome::UnknownPatient => Err(ApiError::Fhir {
            issue: FhirIssue::NotFound,
            diagnostics: "sourceIdentifier Patient Identifier not found".into(),
        }),
        PixOutcome::UnknownTargetDomain(diagnostics) => Err(ApiError::Fhir {
            issue: FhirIssue::Forbidden,
            diagnostics,
        }),
    }
}
