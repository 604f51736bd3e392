//! SMART EHR launch: an EHR (a registered client with the scope `launch`) registers the
//! context it opens an app in (the patient's partition, an encounter, further
//! `fhirContext`), and gets an opaque `launch` value for that one app. The app sends it
//! back in its authorization request; the context is used once, before it expires, and
//! comes back to the app in the token response.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tessera_types::{ClientId, PartitionId, UnixTime};

use crate::authorize::form_encode;
use crate::client::WILDCARD;
use crate::error::OAuthError;
use crate::request::{ClientAuthParams, Credentials, Form};
use crate::service::{random_b64, secret_hash, IamStore, RealmState, TokenService};

/// How long a launch value may wait for the app's authorization request.
pub const LAUNCH_LIFETIME_SECONDS: i64 = 300;

/// The scope an EHR's registration needs to register launches (and an app's request
/// needs to use one).
pub const LAUNCH_SCOPE: &str = "launch";

/// The context of one EHR launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchContext {
    /// The app the launch is for.
    pub client_id: String,
    pub partition: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// SMART `fhirContext`: a JSON array of objects with `reference`, `canonical` or
    /// `identifier`, and optionally `type` and `role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_context: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need_patient_banner: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_style_url: Option<String>,
}

/// What an EHR posts to register a launch, besides its client authentication.
#[derive(Debug)]
pub struct LaunchRequest {
    pub client: ClientAuthParams,
    /// The app (`app=` client_id).
    pub app: String,
    pub partition: String,
    pub encounter: Option<String>,
    pub fhir_context: Option<String>,
    pub need_patient_banner: Option<String>,
    pub smart_style_url: Option<String>,
}

impl LaunchRequest {
    pub fn from_form(pairs: Vec<(String, String)>) -> Result<Self, OAuthError> {
        let mut form = Form::parse(pairs)?;
        Ok(Self {
            client: form.client_auth(),
            app: form.require("app")?,
            partition: form.require("partition")?,
            encounter: form.take("encounter"),
            fhir_context: form.take("fhirContext"),
            need_patient_banner: form.take("need_patient_banner"),
            smart_style_url: form.take("smart_style_url"),
        })
    }
}

/// A registered launch: the value for the app and where to open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Launched {
    pub launch: String,
    pub expires_in: i64,
    /// The FHIR base URL the app is launched against (SMART's `iss`).
    pub iss: String,
    /// The app's launch URL with `iss` and `launch`, when the app registered one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_url: Option<String>,
}

fn fhir_context(text: &str) -> Result<Value, OAuthError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| OAuthError::invalid_request("fhirContext must be a JSON array"))?;
    let items = value
        .as_array()
        .ok_or_else(|| OAuthError::invalid_request("fhirContext must be a JSON array"))?;
    let ok = items.iter().all(|item| {
        item.as_object().is_some_and(|o| {
            ["reference", "canonical", "identifier"]
                .iter()
                .any(|k| o.contains_key(*k))
        })
    });
    if !ok {
        return Err(OAuthError::invalid_request(
            "each fhirContext item needs a reference, canonical or identifier",
        ));
    }
    Ok(value)
}

impl<S: IamStore> TokenService<S> {
    /// Registers an EHR launch. The EHR authenticates as a client whose registration has
    /// the scope `launch` and reaches the partition; the app must be registered.
    pub fn register_launch(
        &self,
        realm: &RealmState,
        request: LaunchRequest,
        credentials: &Credentials,
        fhir_base: &str,
        now: UnixTime,
    ) -> Result<Launched, OAuthError> {
        let name = &realm.realm.name;
        self.authenticate_then(realm, &request.client, credentials, now, |auth| {
            let ehr = &auth.client;
            if !ehr.scopes.iter().any(|s| s.as_str() == LAUNCH_SCOPE) {
                return Err(OAuthError::new(
                    crate::OAuthErrorCode::UnauthorizedClient,
                    "this client may not register launches (its registration lacks the scope launch)",
                ));
            }
            let partition = PartitionId::try_from(request.partition.as_str())
                .map_err(|e| OAuthError::invalid_request(format!("partition: {e}")))?;
            let reaches = ehr
                .partitions
                .iter()
                .any(|p| p.as_str() == WILDCARD || *p == partition);
            if !reaches || !self.store().partition_exists(partition.as_str())? {
                return Err(OAuthError::invalid_request(
                    "no such partition for this client",
                ));
            }
            let app_id = ClientId::try_from(request.app.as_str())
                .map_err(|_| OAuthError::invalid_request("app is not a client id"))?;
            let app = self
                .client(name, &app_id, now)?
                .filter(|a| a.enabled)
                .ok_or_else(|| OAuthError::invalid_request("app: no such application"))?;
            let context = LaunchContext {
                client_id: app.client_id.to_string(),
                partition: partition.to_string(),
                encounter: request.encounter.clone(),
                fhir_context: request.fhir_context.as_deref().map(fhir_context).transpose()?,
                need_patient_banner: match request.need_patient_banner.as_deref() {
                    None => None,
                    Some("true") => Some(true),
                    Some("false") => Some(false),
                    Some(_) => {
                        return Err(OAuthError::invalid_request(
                            "need_patient_banner must be true or false",
                        ))
                    }
                },
                smart_style_url: request.smart_style_url.clone(),
            };
            let launch = random_b64(32).ok_or_else(OAuthError::server_error)?;
            self.store().save_launch(
                name,
                &secret_hash(&launch),
                &context,
                now.plus_seconds(LAUNCH_LIFETIME_SECONDS),
            )?;
            let iss = format!("{fhir_base}/{partition}");
            let launch_url = app.launch_url.as_ref().map(|url| {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!(
                    "{url}{separator}iss={}&launch={}",
                    form_encode(&iss),
                    form_encode(&launch)
                )
            });
            Ok(Launched {
                launch,
                expires_in: LAUNCH_LIFETIME_SECONDS,
                iss,
                launch_url,
            })
        })
    }

    /// Marks a launch used once its code is issued; false if it was used meanwhile.
    pub fn use_launch(
        &self,
        realm: &RealmState,
        launch: &str,
        now: UnixTime,
    ) -> Result<bool, crate::StoreError> {
        self.store()
            .use_launch(&realm.realm.name, &secret_hash(launch), now)
    }

    /// The context of a launch value that is registered, unexpired and unused.
    pub fn launch_context(
        &self,
        realm: &RealmState,
        launch: &str,
        now: UnixTime,
    ) -> Result<Option<LaunchContext>, crate::StoreError> {
        self.store()
            .launch(&realm.realm.name, &secret_hash(launch), now)
    }
}
