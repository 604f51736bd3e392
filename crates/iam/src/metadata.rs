//! Authorization server metadata: RFC 8414 as IHE ITI-103 profiles it, and the same
//! document for OpenID discovery.

use serde_json::{json, Value};

use crate::jose::Algorithm;

/// The metadata of the realm whose issuer is `issuer`.
pub fn authorization_server_metadata(issuer: &str, token_signing_alg: Algorithm) -> Value {
    let endpoint = |path: &str| format!("{issuer}/protocol/openid-connect/{path}");
    let assertion_algs: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    json!({
        "issuer": issuer,
        "token_endpoint": endpoint("token"),
        "jwks_uri": endpoint("certs"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["token"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth"
        ],
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "access_token_signing_alg_values_supported": [token_signing_alg.name()],
        "tls_client_certificate_bound_access_tokens": true,
        "scopes_supported": ["system/*.cruds", "system/*.rs"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [token_signing_alg.name()],
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
