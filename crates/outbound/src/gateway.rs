//! Gateway mode: the vault checks access tokens by asking an authorization
//! server's ITI-102 introspection endpoint instead of verifying them itself, as an API
//! gateway in front of a FHIR server does. Active answers are cached until the token's
//! `exp`, and at most `max_cache_seconds`, so a revocation reaches the vault within that
//! time; inactive answers are not cached. The vault authenticates to the endpoint with
//! its client id and secret (`client_secret_basic`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_iam::token::AccessTokenClaims;
use tessera_iam::VerifiedToken;
use tessera_types::{Secret, UnixTime};

/// Entries beyond this are dropped, oldest expiry first, so a flood of tokens cannot
/// grow the cache without bound.
const MAX_ENTRIES: usize = 100_000;

pub struct Introspector {
    url: String,
    authorization: Secret,
    agent: ureq::Agent,
    max_cache_seconds: i64,
    /// SHA-256 of the token -> (its claims, when the answer expires).
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

type Cached = (Arc<VerifiedToken>, i64);

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("url", &self.url)
            .finish()
    }
}

impl Introspector {
    pub fn new(
        url: String,
        client_id: &str,
        client_secret: &Secret,
        ca_file: Option<&Path>,
        max_cache_seconds: i64,
    ) -> anyhow::Result<Self> {
        let agent = crate::tls::https_agent(ca_file, Duration::from_secs(5), false)?;
        Ok(Self {
            url,
            authorization: crate::tls::basic_authorization(client_id, client_secret),
            agent,
            max_cache_seconds,
            cache: Mutex::default(),
        })
    }

    fn key(token: &str) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    /// The token's claims if the authorization server says it is active. An error is
    /// an unreachable or misbehaving server (the request then fails with 503).
    pub fn active(&self, token: &str, now: UnixTime) -> Result<Option<Arc<VerifiedToken>>, String> {
        let key = Self::key(token);
        if let Ok(cache) = self.cache.lock() {
            if let Some((verified, until)) = cache.get(&key) {
                if now.0 < *until {
                    return Ok(Some(verified.clone()));
                }
            }
        }
        let mut response = self
            .agent
            .post(&self.url)
            .header("Authorization", self.authorization.expose())
            .header("Accept", "application/json")
            .send_form([("token", token)])
            .map_err(|e| format!("introspection request failed: {e}"))?;
        if response.status() != 200 {
            return Err(format!(
                "the introspection endpoint answered {}",
                response.status()
            ));
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(256 * 1024)
            .read_to_string()
            .map_err(|e| format!("the introspection answer could not be read: {e}"))?;
        let body: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("the introspection answer is not JSON: {e}"))?;
        if body.get("active") != Some(&serde_json::Value::Bool(true)) {
            return Ok(None);
        }
        let mut claims_json = body.clone();
        if let Some(map) = claims_json.as_object_mut() {
            map.remove("active");
            map.remove("token_type");
        }
        let claims: AccessTokenClaims = serde_json::from_value(claims_json)
            .map_err(|e| format!("the introspection answer lacks the token's claims: {e}"))?;
        if claims.exp <= now.0 {
            return Ok(None);
        }
        let until = claims.exp.min(now.0.saturating_add(self.max_cache_seconds));
        let verified = Arc::new(VerifiedToken::new(String::new(), claims, body));
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_ENTRIES {
                cache.retain(|_, (_, until)| *until > now.0);
            }
            if cache.len() < MAX_ENTRIES {
                cache.insert(key, (verified.clone(), until));
            }
        }
        Ok(Some(verified))
    }
}
