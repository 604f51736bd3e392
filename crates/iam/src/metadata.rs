//! Authorization server metadata: RFC 8414 as IHE ITI-103 profiles it, and the same
//! document for OpenID discovery.

use serde_json::{json, Value};

use crate::jose::Algorithm;

/// Where a realm's OpenID Connect endpoints live under its issuer.
pub const ENDPOINTS: &str = "protocol/openid-connect";

/// The URL of one of a realm's OpenID Connect endpoints (`token`, `auth`, `certs`, ...):
/// the one place these paths are built.
pub fn endpoint(issuer: &str, name: &str) -> String {
    format!("{issuer}/{ENDPOINTS}/{name}")
}

/// The path of a realm under the server's root (its issuer is the public URL and this).
pub fn realm_path(realm: &str) -> String {
    format!("/realms/{realm}")
}

/// The path of a realm's endpoint under the server's root; with the realm `{realm}`,
/// the route pattern that serves it.
pub fn endpoint_path(realm: &str, name: &str) -> String {
    endpoint(&realm_path(realm), name)
}

/// The metadata of the realm whose issuer is `issuer`.
pub fn authorization_server_metadata(issuer: &str, token_signing_alg: Algorithm) -> Value {
    let endpoint = |name: &str| endpoint(issuer, name);
    let assertion_algs: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    json!({
        "issuer": issuer,
        "authorization_endpoint": endpoint("auth"),
        "token_endpoint": endpoint("token"),
        "jwks_uri": endpoint("certs"),
        "end_session_endpoint": endpoint("logout"),
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "none"
        ],
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "access_token_signing_alg_values_supported": [token_signing_alg.name()],
        "tls_client_certificate_bound_access_tokens": true,
        "scopes_supported": [
            "openid", "fhirUser", "profile", "launch", "launch/patient", "offline_access",
            "online_access",
            "patient/*.cruds", "patient/*.rs", "user/*.cruds", "user/*.rs",
            "system/*.cruds", "system/*.rs"
        ],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "userinfo_endpoint": endpoint("userinfo"),
        "claims_supported": [
            "iss", "sub", "aud", "azp", "exp", "iat", "auth_time", "nonce", "fhirUser",
            "preferred_username"
        ],
        "mtls_endpoint_aliases": {
            "token_endpoint": endpoint("token"),
            "introspection_endpoint": endpoint("token/introspect"),
            "revocation_endpoint": endpoint("revoke"),
        },
        "introspection_endpoint": endpoint("token/introspect"),
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "Bearer"
        ],
        "introspection_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "revocation_endpoint": endpoint("revoke"),
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth"
        ],
        "revocation_endpoint_auth_signing_alg_values_supported": assertion_algs,
    })
}
