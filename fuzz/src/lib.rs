//! What the fuzz targets share: a real store (SQLite in a temporary file, migrated), a
//! realm with its key, a `private_key_jwt` client, a partition, and the vault. Built once
//! per fuzzing process.

use std::sync::{Arc, OnceLock};

use tessera_aim::AccountStore as _;
use tessera_iam::client::{Client, ClientAuth, IuaAttributes, JwksSource};
use tessera_iam::jose::{Algorithm, JwkSet, SigningKey};
use tessera_iam::service::{IamSettings, JwksFetcher};
use tessera_iam::{RealmState, TokenService};
use tessera_store::{KeyUse, Store};
use tessera_types::{ClientId, RealmName, ScopeSet, UnixTime};

/// The fuzzing clock: fixed, so a run is repeatable.
pub const NOW: UnixTime = UnixTime(1_800_000_000);
pub const PARTITION: &str = "p1";
pub const BASE: &str = "https://fuzz.test/fhir/p1";
pub const CLIENT_ID: &str = "backend";

pub struct Harness {
    pub store: Store,
    pub tokens: TokenService<Store>,
    pub realm: Arc<RealmState>,
    /// The registered key of [`CLIENT_ID`], to sign assertions the fuzzer shapes.
    pub client_key: SigningKey,
    pub vault: tessera_vault::Vault,
}

/// No client registers a `jwks_uri` here; nothing is fetched while fuzzing.
struct NoFetch;

impl JwksFetcher for NoFetch {
    fn keys(&self, _: &str, _: UnixTime) -> Result<JwkSet, String> {
        Err("no network while fuzzing".into())
    }
    fn refresh(&self, _: &str, _: UnixTime) -> Result<JwkSet, String> {
        Err("no network while fuzzing".into())
    }
}

pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| build().expect("the fuzzing harness"))
}

fn build() -> Result<Harness, String> {
    let file = std::env::temp_dir().join(format!("tessera-fuzz-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let store = Store::open(&format!("sqlite://{}", file.display()), 2).map_err(|e| e.0)?;
    let realm = RealmName::try_from("cara").map_err(|e| e.to_string())?;
    store
        .ensure_realm(&realm, 300, Algorithm::ES256, NOW)
        .map_err(|e| e.0)?;
    let (key, pkcs8) = SigningKey::generate_ec(Algorithm::ES256).map_err(|e| e.to_string())?;
    store
        .add_signing_key(
            &realm,
            KeyUse::Access,
            key.kid(),
            Algorithm::ES256,
            &pkcs8,
            NOW,
            NOW,
        )
        .map_err(|e| e.0)?;
    let (client_key, _) = SigningKey::generate_ec(Algorithm::ES256).map_err(|e| e.to_string())?;
    let client = Client {
        realm: realm.clone(),
        client_id: ClientId::try_from(CLIENT_ID).map_err(|e| e.to_string())?,
        enabled: true,
        auth: ClientAuth::PrivateKeyJwt(JwksSource::Inline(JwkSet {
            keys: vec![client_key.public_jwk()],
        })),
        scopes: ScopeSet::parse("system/*.rs system/Observation.cruds")
            .map_err(|e| e.to_string())?,
        partitions: vec![PARTITION.try_into().map_err(|e| format!("{e:?}"))?],
        principal_id: None,
        principal_name: None,
        person_ids: vec![],
        resource_servers: vec![],
        accounts: vec![],
        iua: IuaAttributes::default(),
        redirect_uris: vec![],
        launch_url: None,
    };
    store
        .insert_client(&client, NOW)
        .map_err(|e| e.to_string())?;
    store
        .create_account(
            &"urn:tessera:account:fuzz"
                .try_into()
                .map_err(|e| format!("{e:?}"))?,
            &"urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1"
                .try_into()
                .map_err(|e| format!("{e:?}"))?,
            &PARTITION.try_into().map_err(|e| format!("{e:?}"))?,
            NOW,
        )
        .map_err(|e| e.to_string())?;
    let settings = IamSettings {
        public_base_url: "https://fuzz.test".into(),
        audiences: vec!["https://fuzz.test/fhir".into()],
        max_assertion_lifetime_seconds: 300,
        clock_skew_seconds: 30,
        cache_seconds: 3600,
        refresh_token_lifetime_seconds: 3600,
    };
    let tokens = TokenService::new(store.clone(), Arc::new(NoFetch), settings);
    let realm = tokens
        .realm(&realm, NOW)
        .map_err(|e| e.0)?
        .ok_or("the realm is missing")?;
    Ok(Harness {
        store,
        tokens,
        realm,
        client_key,
        vault: tessera_vault::Vault::new()?,
    })
}

/// Form pairs from raw bytes, as a server decodes a query or form body.
pub fn pairs(data: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(data).into_owned().collect()
}
