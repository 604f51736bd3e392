//! Fetches clients' `jwks_uri` over HTTPS and caches each key set as its response's
//! `Cache-Control` allows (default 5 minutes, at most a day). A forced refresh, asked
//! for when an assertion names an unknown `kid`, happens at most once per
//! `min_refresh_seconds` per URI, so a client cannot make Tessera hammer a server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tessera_iam::jose::JwkSet;
use tessera_iam::JwksFetcher;
use tessera_types::UnixTime;

const DEFAULT_MAX_AGE: i64 = 300;
const LONGEST_MAX_AGE: i64 = 86_400;
const MAX_JWKS_BYTES: u64 = 64 * 1024;

struct Entry {
    keys: JwkSet,
    fetched_at: i64,
    max_age: i64,
}

pub struct HttpJwksFetcher {
    agent: ureq::Agent,
    min_refresh_seconds: i64,
    cache: Mutex<HashMap<String, Entry>>,
}

impl HttpJwksFetcher {
    /// `ca_file`: trust only these roots (e.g. a private CA); `None`: Mozilla's roots.
    pub fn new(ca_file: Option<&Path>, min_refresh_seconds: i64) -> anyhow::Result<Self> {
        let agent = crate::tls::https_agent(ca_file, Duration::from_secs(5), true)?;
        Ok(Self {
            agent,
            min_refresh_seconds,
            cache: Mutex::default(),
        })
    }

    fn fetch(&self, uri: &str, now: UnixTime) -> Result<JwkSet, String> {
        let mut response = self
            .agent
            .get(uri)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| e.to_string())?;
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .map(max_age)
            .unwrap_or(DEFAULT_MAX_AGE);
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_JWKS_BYTES)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let keys: JwkSet =
            serde_json::from_str(&body).map_err(|_| "the response is not a JWK Set".to_string())?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                uri.to_owned(),
                Entry {
                    keys: keys.clone(),
                    fetched_at: now.0,
                    max_age,
                },
            );
        }
        Ok(keys)
    }

    fn cached(&self, uri: &str, usable: impl Fn(&Entry) -> bool) -> Option<JwkSet> {
        let cache = self.cache.lock().ok()?;
        cache.get(uri).filter(|e| usable(e)).map(|e| e.keys.clone())
    }
}

/// Seconds a response may be cached: `no-store`/`no-cache` mean 0.
fn max_age(cache_control: &str) -> i64 {
    let mut age = DEFAULT_MAX_AGE;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return 0;
        }
        if let Some(value) = lower.strip_prefix("max-age=") {
            age = value.trim_matches('"').parse().unwrap_or(DEFAULT_MAX_AGE);
        }
    }
    age.clamp(0, LONGEST_MAX_AGE)
}

impl JwksFetcher for HttpJwksFetcher {
    fn keys(&self, uri: &str, now: UnixTime) -> Result<JwkSet, String> {
        match self.cached(uri, |e| now.0 - e.fetched_at < e.max_age) {
            Some(keys) => Ok(keys),
            None => self.fetch(uri, now),
        }
    }

    fn refresh(&self, uri: &str, now: UnixTime) -> Result<JwkSet, String> {
        match self.cached(uri, |e| now.0 - e.fetched_at < self.min_refresh_seconds) {
            Some(keys) => Ok(keys),
            None => self.fetch(uri, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::max_age;

    #[test]
    fn cache_control_is_honoured() {
        assert_eq!(max_age("public, max-age=60"), 60);
        assert_eq!(max_age("max-age=60, no-cache"), 0);
        assert_eq!(max_age("no-store"), 0);
        assert_eq!(max_age("max-age=999999999"), 86_400);
        assert_eq!(max_age("private"), 300);
        assert_eq!(max_age("max-age=abc"), 300);
    }
}
