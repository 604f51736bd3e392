//! AIM over HTTP: CARA's resolution call and the IHE PIXm query (ITI-83).

use actix_web::{web, HttpRequest, HttpResponse};
use tessera_aim::{
    parse_resolution_request, pix_query, resolution, AccountStore as _, AimError, PixOutcome,
    RESOLVE_SCOPE,
};

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

impl From<AimError> for ApiError {
    fn from(err: AimError) -> Self {
        ApiError::Internal(err.to_string())
    }
}

async fn authorized(req: &HttpRequest, state: &web::Data<AppState>) -> Result<String, ApiError> {
    let aim = &state.aim;
    let token = authorize(
        req,
        state,
        Requirement {
            realm: &aim.realm,
            audience: &aim.audience,
            scope: RESOLVE_SCOPE,
        },
    )
    .await?;
    Ok(token.claims.client_id.clone())
}

async fn resolve(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let client = authorized(&req, &state).await?;
    let mpi_id = parse_resolution_request(&body).map_err(ApiError::BadRequest)?;
    let st = state.clone().into_inner();
    let lookup = mpi_id.clone();
    let account = blocking(move || {
        let (authority, patient) = lookup.authority_and_id();
        st.store.account_of_mpi_id(authority, patient)
    })
    .await??;
    match account {
        Some(account) => {
            tracing::info!(%client, account = %account.urn, "MPI-ID resolved");
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
    authorized(&req, &state).await?;
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
        PixOutcome::Found(parameters) => Ok(HttpResponse::Ok()
            .content_type("application/fhir+json")
            .json(parameters)),
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
