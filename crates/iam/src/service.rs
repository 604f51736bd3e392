//! ITI-71 `client_credentials`: authenticate the client, decide what the token may
//! carry, and mint it. Nothing here reads the clock or knows about HTTP or SQL: the
//! caller passes `now`, the storage comes in through [`IamStore`], remote JWKS
//! through [`JwksFetcher`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use ring::digest;
use serde_json::Value;
use tessera_types::{AccountUrn, ClientId, PartitionId, RealmName, UnixTime};

use crate::client::{CertBinding, Client, ClientAuth, JwksSource};
use crate::error::{OAuthError, StoreError};
use crate::grant::{authorization_code, CodeRecord, GrantRequest, Redeemed, RefreshRecord};
use crate::jose::{b64, Algorithm, JoseError, JwkSet, SigningKey, UnverifiedJws};
use crate::launch::LaunchContext;
use crate::request::{ClientAuthParams, Credentials, JWT_BEARER_ASSERTION};
use crate::token::{AccessTokenClaims, Confirmation, TokenResponse, ACCESS_TOKEN_TYP};
use crate::user::User;

/// A realm's settings as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realm {
    pub name: RealmName,
    pub token_lifetime_seconds: i64,
    pub signing_alg: Algorithm,
}

/// A signing key as stored: the private key and whether it signs new tokens.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub alg: Algorithm,
    pub pkcs8: Vec<u8>,
    pub active: bool,
    /// Signs OpenID Connect id_tokens (RS256) rather than access tokens.
    pub id_token: bool,
}

/// What IAM needs from the database.
pub trait IamStore: Send + Sync {
    fn realm(&self, name: &RealmName) -> Result<Option<Realm>, StoreError>;
    /// The realm's keys that are not retired at `now`, newest first.
    fn signing_keys(&self, realm: &RealmName, now: UnixTime) -> Result<Vec<StoredKey>, StoreError>;
    fn client(&self, realm: &RealmName, id: &ClientId) -> Result<Option<Client>, StoreError>;
    /// The partitions of an account, or `None` if there is no such account.
    fn account_partitions(
        &self,
        account: &AccountUrn,
    ) -> Result<Option<Vec<PartitionId>>, StoreError>;
    /// Records an assertion `jti` until `expires_at`. Returns false, changing nothing,
    /// when the same client already used it: the assertion is a replay.
    fn consume_assertion(
        &self,
        realm: &RealmName,
        client: &ClientId,
        jti: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError>;

    fn user_by_id(&self, realm: &RealmName, id: &str) -> Result<Option<User>, StoreError>;
    /// Stores an authorization code (by its hash) of `family`, valid until `expires_at`.
    fn save_code(
        &self,
        realm: &RealmName,
        code_hash: &str,
        family: &str,
        record: &CodeRecord,
        expires_at: UnixTime,
    ) -> Result<(), StoreError>;
    /// Marks a code used, atomically: only one caller ever gets it `Fresh`.
    fn redeem_code(
        &self,
        realm: &RealmName,
        code_hash: &str,
        now: UnixTime,
    ) -> Result<Redeemed<CodeRecord>, StoreError>;
    /// A refresh token that is unused, unrevoked and unexpired at `now`, without using it:
    /// its record, family and expiry.
    fn live_refresh(
        &self,
        realm: &RealmName,
        token_hash: &str,
        now: UnixTime,
    ) -> Result<Option<(RefreshRecord, String, i64)>, StoreError>;
    /// Marks a refresh token used (rotation), atomically.
    fn redeem_refresh(
        &self,
        realm: &RealmName,
        token_hash: &str,
        now: UnixTime,
    ) -> Result<Redeemed<RefreshRecord>, StoreError>;
    /// Records what a grant issued, in one transaction: the access token (to revoke it
    /// with its family) and the new refresh token (by its hash), if any.
    fn record_issued(
        &self,
        realm: &RealmName,
        family: &str,
        claims: &AccessTokenClaims,
        refresh: Option<NewRefresh<'_>>,
    ) -> Result<(), StoreError>;
    /// Revokes every refresh token and access token of a family.
    fn revoke_family(
        &self,
        realm: &RealmName,
        family: &str,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Is the browser session (by hash) still logged in at `now`?
    fn session_active(&self, session_hash: &str, now: UnixTime) -> Result<bool, StoreError>;
    fn partition_exists(&self, partition: &str) -> Result<bool, StoreError>;
    fn save_launch(
        &self,
        realm: &RealmName,
        launch_hash: &str,
        context: &LaunchContext,
        expires_at: UnixTime,
    ) -> Result<(), StoreError>;
    /// A launch that is registered, unexpired and unused.
    fn launch(
        &self,
        realm: &RealmName,
        launch_hash: &str,
        now: UnixTime,
    ) -> Result<Option<LaunchContext>, StoreError>;
    /// Marks a launch used, atomically; false if it was used (or expired) already.
    fn use_launch(
        &self,
        realm: &RealmName,
        launch_hash: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
}

/// A refresh token to store: its hash, what it stands for, until when.
#[derive(Debug, Clone, Copy)]
pub struct NewRefresh<'a> {
    pub token_hash: &'a str,
    pub record: &'a RefreshRecord,
    pub expires_at: UnixTime,
}

/// Fetches a client's `jwks_uri`, with whatever caching the transport allows.
pub trait JwksFetcher: Send + Sync {
    /// The key set, from cache when fresh.
    fn keys(&self, uri: &str, now: UnixTime) -> Result<JwkSet, String>;
    /// The key set fetched again, unless it was fetched very recently; used when an
    /// assertion names a `kid` the cached set lacks (the client rotated its keys).
    fn refresh(&self, uri: &str, now: UnixTime) -> Result<JwkSet, String>;
}

/// Settings the token service needs that are not per realm.
#[derive(Debug, Clone)]
pub struct IamSettings {
    /// `https://host:port`, without a trailing slash; issuers are `{base}/realms/{realm}`.
    pub public_base_url: String,
    /// Audiences a token may be issued for; the first ones are used when the request
    /// has no `resource`.
    pub audiences: Vec<String>,
    /// How far in the future a client assertion's `exp` may be (SMART: 5 minutes).
    pub max_assertion_lifetime_seconds: i64,
    /// Tolerated clock difference with clients.
    pub clock_skew_seconds: i64,
    /// How long realm keys and client registrations are cached before reloading.
    pub cache_seconds: i64,
    /// How long a refresh token may be used (each use replaces it).
    pub refresh_token_lifetime_seconds: i64,
}

/// A realm with its keys, ready to sign and publish.
#[derive(Debug)]
pub struct RealmState {
    pub realm: Realm,
    pub issuer: String,
    pub token_endpoint: String,
    pub signer: SigningKey,
    /// Signs id_tokens; `None` until the realm has an id_token key.
    pub id_signer: Option<SigningKey>,
    pub jwks: JwkSet,
    loaded_at: UnixTime,
}

struct Cached<T> {
    value: T,
    loaded_at: UnixTime,
}

/// Why an access token does not verify. Callers show at most "inactive".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    #[error("not a JWS with an accepted algorithm")]
    Malformed,
    #[error("typ is not at+jwt")]
    NotAnAccessToken,
    #[error("signed by no current key of the realm")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("issued by another realm")]
    WrongIssuer,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
}

/// An access token whose signature, issuer and validity period have been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// The key that signed it: a cache of verified tokens must drop those whose key the
    /// realm no longer publishes (an emergency rotation).
    pub kid: String,
    pub claims: AccessTokenClaims,
    /// The claims exactly as signed, for introspection responses.
    pub raw: Value,
    /// The introspection answer, made once (see [`Self::introspection_json`]).
    introspection: OnceLock<String>,
}

impl VerifiedToken {
    pub fn new(kid: String, claims: AccessTokenClaims, raw: Value) -> Self {
        Self {
            kid,
            claims,
            raw,
            introspection: OnceLock::new(),
        }
    }

    /// RFC 7662's answer for this token while it is active: its claims as signed, and
    /// `"active": true`. Made the first time it is asked for: a token verified once is
    /// kept (introspection's cache) and a gateway asks about it again and again.
    pub fn introspection_json(&self) -> &str {
        self.introspection.get_or_init(|| {
            let mut answer = self.raw.clone();
            if let Value::Object(map) = &mut answer {
                map.insert("active".into(), Value::Bool(true));
            }
            answer.to_string()
        })
    }
}

impl RealmState {
    /// Signs access token claims with the realm's current key.
    pub fn sign_access_token(&self, claims: &AccessTokenClaims) -> Result<String, OAuthError> {
        self.signer.sign(ACCESS_TOKEN_TYP, claims).map_err(|e| {
            tracing::error!(error = %e, "could not sign an access token");
            OAuthError::server_error()
        })
    }

    /// Does the realm still publish (and so accept) the key `kid`?
    pub fn has_key(&self, kid: &str) -> bool {
        self.jwks.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Verifies one of this realm's access tokens (RFC 9068 section 4): `typ` at+jwt, a
    /// signature by a current or not yet retired realm key, this realm as `iss`, and
    /// `iat`/`nbf` not in the future beyond `skew`, `exp` not reached.
    pub fn verify_access_token(
        &self,
        token: &str,
        now: UnixTime,
        skew: i64,
    ) -> Result<VerifiedToken, InvalidToken> {
        let jws = UnverifiedJws::parse(token).map_err(|_| InvalidToken::Malformed)?;
        if jws.header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(InvalidToken::NotAnAccessToken);
        }
        let kid = jws.header.kid.clone().ok_or(InvalidToken::UnknownKey)?;
        let raw = jws.verify(&self.jwks.keys).map_err(|e| match e {
            JoseError::UnknownKey | JoseError::AmbiguousKey => InvalidToken::UnknownKey,
            JoseError::BadSignature => InvalidToken::BadSignature,
            _ => InvalidToken::Malformed,
        })?;
        let claims: AccessTokenClaims =
            serde_json::from_value(raw.clone()).map_err(|_| InvalidToken::Malformed)?;
        if claims.iss != self.issuer {
            return Err(InvalidToken::WrongIssuer);
        }
        if claims.exp <= now.0 {
            return Err(InvalidToken::Expired);
        }
        let nbf = raw.get("nbf").and_then(Value::as_i64).unwrap_or(claims.iat);
        if claims.iat > now.0 + skew || nbf > now.0 + skew {
            return Err(InvalidToken::NotYetValid);
        }
        Ok(VerifiedToken::new(kid, claims, raw))
    }
}

/// A token that was issued, with its claims for the caller's metrics and audit.
#[derive(Debug, Clone)]
pub struct Issued {
    pub response: TokenResponse,
    pub claims: AccessTokenClaims,
    pub auth_method: &'static str,
}

pub struct TokenService<S> {
    store: S,
    fetcher: Arc<dyn JwksFetcher>,
    settings: IamSettings,
    realms: RwLock<HashMap<RealmName, Arc<RealmState>>>,
    clients: RwLock<ClientCache>,
}

type ClientCache = HashMap<(RealmName, ClientId), Cached<Arc<Client>>>;

/// A client that has authenticated at an OAuth endpoint.
pub struct Authenticated {
    pub client: Arc<Client>,
    /// RFC 8705 confirmation, when the client proved a certificate.
    pub cnf: Option<Confirmation>,
    /// The assertion `jti` and its expiry, to record once the whole request passes.
    pending_jti: Option<(String, UnixTime)>,
}

fn fresh(loaded_at: UnixTime, now: UnixTime, ttl: i64) -> bool {
    now.0 >= loaded_at.0 && now.0 - loaded_at.0 < ttl
}

pub(crate) fn invalid_client(detail: &str) -> OAuthError {
    OAuthError::invalid_client(detail)
}

impl<S: IamStore> TokenService<S> {
    pub fn new(store: S, fetcher: Arc<dyn JwksFetcher>, settings: IamSettings) -> Self {
        Self {
            store,
            fetcher,
            settings,
            realms: RwLock::default(),
            clients: RwLock::default(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn settings(&self) -> &IamSettings {
        &self.settings
    }

    pub fn issuer(&self, realm: &RealmName) -> String {
        format!(
            "{}{}",
            self.settings.public_base_url,
            crate::metadata::realm_path(realm.as_str())
        )
    }

    /// The realm from cache if it is fresh, without touching storage: the hot path of
    /// every request, which then needs no trip to a blocking thread.
    pub fn cached_realm(&self, name: &RealmName, now: UnixTime) -> Option<Arc<RealmState>> {
        let realms = self.realms.read().ok()?;
        realms
            .get(name)
            .filter(|state| fresh(state.loaded_at, now, self.settings.cache_seconds))
            .cloned()
    }

    /// The realm with its keys, from cache while fresh; `None` if it does not exist.
    pub fn realm(
        &self,
        name: &RealmName,
        now: UnixTime,
    ) -> Result<Option<Arc<RealmState>>, StoreError> {
        if let Some(state) = self.cached_realm(name, now) {
            return Ok(Some(state));
        }
        let Some(realm) = self.store.realm(name)? else {
            self.realms.write().map_err(poisoned)?.remove(name);
            return Ok(None);
        };
        let mut signer = None;
        let mut id_signer = None;
        let mut jwks = JwkSet::default();
        for stored in self.store.signing_keys(name, now)? {
            let key = SigningKey::from_pkcs8(stored.alg, &stored.pkcs8)
                .map_err(|e| StoreError(format!("signing key of realm {name}: {e}")))?;
            jwks.keys.push(key.public_jwk());
            let slot = if stored.id_token {
                &mut id_signer
            } else {
                &mut signer
            };
            if stored.active && slot.is_none() {
                *slot = Some(key);
            }
        }
        let signer = signer.ok_or_else(|| {
            StoreError(format!(
                "realm {name} has no active signing key; run `tessera keys rotate`"
            ))
        })?;
        let issuer = self.issuer(name);
        let state = Arc::new(RealmState {
            token_endpoint: crate::metadata::endpoint(&issuer, "token"),
            issuer,
            realm,
            signer,
            id_signer,
            jwks,
            loaded_at: now,
        });
        self.realms
            .write()
            .map_err(poisoned)?
            .insert(name.clone(), state.clone());
        Ok(Some(state))
    }

    /// A client registration, from cache while fresh.
    pub fn client(
        &self,
        realm: &RealmName,
        id: &ClientId,
        now: UnixTime,
    ) -> Result<Option<Arc<Client>>, StoreError> {
        let key = (realm.clone(), id.clone());
        if let Some(entry) = self.clients.read().map_err(poisoned)?.get(&key) {
            if fresh(entry.loaded_at, now, self.settings.cache_seconds) {
                return Ok(Some(entry.value.clone()));
            }
        }
        let Some(client) = self.store.client(realm, id)? else {
            self.clients.write().map_err(poisoned)?.remove(&key);
            return Ok(None);
        };
        let client = Arc::new(client);
        self.clients.write().map_err(poisoned)?.insert(
            key,
            Cached {
                value: client.clone(),
                loaded_at: now,
            },
        );
        Ok(Some(client))
    }

    /// Would [`TokenService::issue`] answer this request from memory alone? A
    /// client-credentials grant authenticated by certificate or secret (an assertion's
    /// jti is written down), for no account (which is looked up), by a client whose
    /// registration is cached and fresh at `now`. The caller may run such a request
    /// where blocking is not allowed; any other reads or writes the database. (Should the
    /// cached entry go meanwhile, the issue reads the registration again: correct, only
    /// slower.)
    pub fn answers_from_memory(
        &self,
        realm: &RealmState,
        request: &GrantRequest,
        credentials: &Credentials,
        now: UnixTime,
    ) -> bool {
        let GrantRequest::ClientCredentials(request) = request else {
            return false;
        };
        request.account.is_none()
            && self.authenticates_from_memory(realm, &request.client, credentials, now)
    }

    /// Does authenticating this client need neither a read nor a write: a certificate or
    /// a secret (no assertion, whose jti is written down) of a client whose registration
    /// is cached and fresh at `now`?
    pub fn authenticates_from_memory(
        &self,
        realm: &RealmState,
        params: &ClientAuthParams,
        credentials: &Credentials,
        now: UnixTime,
    ) -> bool {
        if params.client_assertion.is_some() || params.client_assertion_type.is_some() {
            return false;
        }
        let id = match (&credentials.basic, &params.client_id) {
            (Some((id, _)), _) | (None, Some(id)) => id,
            (None, None) => return false,
        };
        let Ok(id) = ClientId::try_from(id.as_str()) else {
            return false;
        };
        let key = (realm.realm.name.clone(), id);
        self.clients.read().is_ok_and(|clients| {
            clients
                .get(&key)
                .is_some_and(|entry| fresh(entry.loaded_at, now, self.settings.cache_seconds))
        })
    }

    /// Handles a token request on `realm` (ITI-71), by its grant.
    pub fn issue(
        &self,
        realm: &RealmState,
        request: GrantRequest,
        credentials: &Credentials,
        now: UnixTime,
    ) -> Result<Issued, OAuthError> {
        match request {
            GrantRequest::ClientCredentials(request) => {
                self.client_credentials(realm, request, credentials, now)
            }
            GrantRequest::AuthorizationCode {
                client,
                code,
                redirect_uri,
                code_verifier,
            } => self.authorization_code(
                realm,
                &client,
                credentials,
                authorization_code::CodeExchange {
                    code: &code,
                    redirect_uri: redirect_uri.as_deref(),
                    code_verifier: code_verifier.as_deref(),
                },
                now,
            ),
            GrantRequest::RefreshToken {
                client,
                refresh_token,
                scope,
            } => self.refresh_token(
                realm,
                &client,
                credentials,
                &refresh_token,
                scope.as_deref(),
                now,
            ),
        }
    }

    /// Authenticates the client of a request to any OAuth endpoint, runs the endpoint's
    /// own `check`, and only when that passes too records the assertion `jti` (if the
    /// client used one): a refused request changes nothing.
    pub fn authenticate_then<T>(
        &self,
        realm: &RealmState,
        params: &ClientAuthParams,
        credentials: &Credentials,
        now: UnixTime,
        check: impl FnOnce(&Authenticated) -> Result<T, OAuthError>,
    ) -> Result<T, OAuthError> {
        let auth = self.authenticate(realm, params, credentials, now)?;
        if !auth.client.enabled {
            return Err(invalid_client("client authentication failed"));
        }
        let value = check(&auth)?;
        if let Some((jti, exp)) = &auth.pending_jti {
            let first_use = self.store.consume_assertion(
                &realm.realm.name,
                &auth.client.client_id,
                jti,
                *exp,
                now,
            )?;
            if !first_use {
                return Err(invalid_client("the client assertion jti was already used"));
            }
        }
        Ok(value)
    }

    /// RFC 6749 2.3, RFC 7523 3, RFC 8705 2: exactly one way of authenticating.
    fn authenticate(
        &self,
        realm: &RealmState,
        request: &ClientAuthParams,
        credentials: &Credentials,
        now: UnixTime,
    ) -> Result<Authenticated, OAuthError> {
        let methods = [
            request.client_assertion.is_some() || request.client_assertion_type.is_some(),
            credentials.basic.is_some(),
            request.client_secret.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(OAuthError::invalid_request(
                "use exactly one client authentication method",
            ));
        }
        let name = &realm.realm.name;

        if let Some((id, secret)) = &credentials.basic {
            let client = self.registered(name, id, now)?;
            verify_secret(&client, secret.expose(), request.client_id.as_deref(), id)?;
            return Ok(Authenticated {
                client,
                cnf: None,
                pending_jti: None,
            });
        }
        if let Some(secret) = &request.client_secret {
            let id = request
                .client_id
                .as_deref()
                .ok_or_else(|| OAuthError::invalid_request("client_secret requires client_id"))?;
            let client = self.registered(name, id, now)?;
            verify_secret(&client, secret.expose(), None, id)?;
            return Ok(Authenticated {
                client,
                cnf: None,
                pending_jti: None,
            });
        }
        if request.client_assertion.is_some() || request.client_assertion_type.is_some() {
            // SMART Backend Services answers any assertion it cannot use with
            // invalid_client, a wrong client_assertion_type included.
            if request.client_assertion_type.as_deref() != Some(JWT_BEARER_ASSERTION) {
                return Err(invalid_client(&format!(
                    "client_assertion_type must be {JWT_BEARER_ASSERTION}"
                )));
            }
            let assertion = request
                .client_assertion
                .as_deref()
                .ok_or_else(|| OAuthError::invalid_request("client_assertion is missing"))?;
            let (client, jti, exp) = self.verify_assertion(realm, assertion, request, now)?;
            return Ok(Authenticated {
                client,
                cnf: None,
                pending_jti: Some((jti, exp)),
            });
        }

        let id = request
            .client_id
            .as_deref()
            .ok_or_else(|| invalid_client("no client authentication was provided"))?;
        let client = self.registered(name, id, now)?;
        if client.auth.is_public() {
            // RFC 6749 2.1: a public client only names itself; PKCE proves the code.
            return Ok(Authenticated {
                client,
                cnf: None,
                pending_jti: None,
            });
        }
        let ClientAuth::TlsClientAuth(binding) = &client.auth else {
            return Err(invalid_client("client authentication failed"));
        };
        let cert = credentials.certificate.as_ref().ok_or_else(|| {
            invalid_client("this client must present its certificate over mutual TLS")
        })?;
        let matches = match binding {
            CertBinding::Thumbprint(expected) => {
                constant_time_eq(expected.as_bytes(), cert.thumbprint.as_bytes())
            }
            CertBinding::SubjectDn { subject, issuer } => {
                *subject == cert.subject && *issuer == cert.issuer
            }
        };
        if !matches {
            return Err(invalid_client(
                "the certificate is not the one registered for this client",
            ));
        }
        let cnf = Confirmation {
            x5t_s256: cert.thumbprint.clone(),
        };
        Ok(Authenticated {
            client,
            cnf: Some(cnf),
            pending_jti: None,
        })
    }

    fn registered(
        &self,
        realm: &RealmName,
        id: &str,
        now: UnixTime,
    ) -> Result<Arc<Client>, OAuthError> {
        let id =
            ClientId::try_from(id).map_err(|_| invalid_client("client authentication failed"))?;
        self.client(realm, &id, now)?
            .ok_or_else(|| invalid_client("client authentication failed"))
    }

    /// RFC 7523 section 3 and SMART Backend Services: the assertion checks.
    fn verify_assertion(
        &self,
        realm: &RealmState,
        assertion: &str,
        request: &ClientAuthParams,
        now: UnixTime,
    ) -> Result<(Arc<Client>, String, UnixTime), OAuthError> {
        let jws = UnverifiedJws::parse(assertion).map_err(|e| match e {
            JoseError::UnsupportedAlgorithm => invalid_client(
                "the assertion algorithm is not accepted (ES256, ES384, RS256, RS384)",
            ),
            _ => invalid_client("the client assertion is not a valid JWS"),
        })?;
        let unverified = jws
            .unverified_claims()
            .map_err(|_| invalid_client("the client assertion is not a valid JWS"))?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_client("the client assertion has no iss"))?;
        if request.client_id.as_deref().is_some_and(|id| id != iss) {
            return Err(invalid_client(
                "client_id does not match the assertion issuer",
            ));
        }
        let client = self.registered(&realm.realm.name, iss, now)?;
        let ClientAuth::PrivateKeyJwt(source) = &client.auth else {
            return Err(invalid_client("client authentication failed"));
        };
        // SMART Backend Services: a `jku` present SHALL match the registered JWKS URL;
        // it is compared, never fetched.
        if let Some(jku) = &jws.header.jku {
            if !matches!(source, JwksSource::Uri(uri) if uri == jku) {
                return Err(invalid_client(
                    "the assertion jku is not the JWKS URL registered for this client",
                ));
            }
        }
        let claims = self.verify_signature(jws, assertion, source, now)?;
        let (jti, until) = self.check_assertion_claims(realm, &claims, iss, now)?;
        Ok((client, jti, until))
    }

    /// The assertion's claims, once its signature verifies with one of the client's
    /// registered keys (fetched again once when a `jwks_uri` set lacks its `kid`).
    fn verify_signature(
        &self,
        jws: UnverifiedJws,
        assertion: &str,
        source: &JwksSource,
        now: UnixTime,
    ) -> Result<Value, OAuthError> {
        match source {
            JwksSource::Inline(set) => jws.verify(&set.keys),
            JwksSource::Uri(uri) => {
                let keys = self
                    .fetcher
                    .keys(uri, now)
                    .map_err(|e| jwks_unavailable(uri, &e))?;
                match UnverifiedJws::parse(assertion).and_then(|j| j.verify(&keys.keys)) {
                    Err(JoseError::UnknownKey) => {
                        let keys = self
                            .fetcher
                            .refresh(uri, now)
                            .map_err(|e| jwks_unavailable(uri, &e))?;
                        jws.verify(&keys.keys)
                    }
                    other => other,
                }
            }
        }
        .map_err(|e| match e {
            JoseError::UnknownKey => invalid_client("no registered key matches the assertion kid"),
            JoseError::AmbiguousKey => {
                invalid_client("several registered keys match the assertion")
            }
            _ => invalid_client("the client assertion signature does not verify"),
        })
    }

    /// RFC 7523 3's claim checks: `sub` is the client, `aud` this token endpoint, the
    /// times within the skew and the lifetime allowed, a usable `jti`; the `jti` and
    /// until when it must be remembered.
    fn check_assertion_claims(
        &self,
        realm: &RealmState,
        claims: &Value,
        iss: &str,
        now: UnixTime,
    ) -> Result<(String, UnixTime), OAuthError> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let number = |name: &str| claims.get(name).and_then(Value::as_i64);
        if text("sub") != Some(iss) {
            return Err(invalid_client(
                "the assertion sub must equal its iss (the client_id)",
            ));
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == &realm.token_endpoint || aud == &realm.issuer,
            Some(Value::Array(list)) => list.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| a == realm.token_endpoint || a == realm.issuer)
            }),
            _ => false,
        };
        if !audience_ok {
            return Err(invalid_client(
                "the assertion aud must be this token endpoint",
            ));
        }
        let skew = self.settings.clock_skew_seconds;
        let exp = number("exp").ok_or_else(|| invalid_client("the assertion has no exp"))?;
        if exp + skew <= now.0 {
            return Err(invalid_client("the client assertion has expired"));
        }
        if exp - now.0 > self.settings.max_assertion_lifetime_seconds + skew {
            return Err(invalid_client(
                "the assertion exp is more than 5 minutes ahead",
            ));
        }
        if number("nbf").is_some_and(|nbf| nbf > now.0 + skew) {
            return Err(invalid_client("the client assertion is not valid yet"));
        }
        if number("iat").is_some_and(|iat| iat > now.0 + skew) {
            return Err(invalid_client("the assertion was issued in the future"));
        }
        let jti = text("jti").ok_or_else(|| invalid_client("the assertion has no jti"))?;
        if jti.is_empty() || jti.len() > 255 {
            return Err(invalid_client("the assertion jti is not usable"));
        }
        Ok((jti.to_owned(), UnixTime(exp + skew)))
    }
}

fn jwks_unavailable(uri: &str, err: &str) -> OAuthError {
    tracing::warn!(
        jwks_uri = uri,
        error = err,
        "could not fetch a client's jwks_uri"
    );
    invalid_client("the client's jwks_uri could not be fetched")
}

fn verify_secret(
    client: &Client,
    secret: &str,
    form_id: Option<&str>,
    id: &str,
) -> Result<(), OAuthError> {
    if form_id.is_some_and(|f| f != id) {
        return Err(OAuthError::invalid_request(
            "client_id differs from the Basic credentials",
        ));
    }
    let ClientAuth::ClientSecret { secret_sha256, .. } = &client.auth else {
        return Err(invalid_client("client authentication failed"));
    };
    if !constant_time_eq(secret_hash(secret).as_bytes(), secret_sha256.as_bytes()) {
        return Err(invalid_client("client authentication failed"));
    }
    Ok(())
}

/// Client secrets, codes, refresh tokens and session ids are 256-bit random values
/// Tessera generates, never chosen by people, so a fast hash suffices: there is no
/// dictionary to search. Only the hash is stored: a copy of the database redeems nothing.
pub fn secret_hash(secret: &str) -> String {
    tessera_types::hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random identifier with 128 bits of entropy, base64url.
pub fn random_id() -> Option<String> {
    random_b64(16)
}

/// `bytes` random bytes, base64url; `None` if the system RNG fails, so that a caller
/// can never hand out a predictable value.
pub fn random_b64(bytes: usize) -> Option<String> {
    use ring::rand::SecureRandom as _;
    let mut buf = vec![0u8; bytes];
    match ring::rand::SystemRandom::new().fill(&mut buf) {
        Ok(()) => Some(b64(&buf)),
        Err(_) => {
            tracing::error!("the system random number generator failed");
            None
        }
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError("a cache lock was poisoned".into())
}
