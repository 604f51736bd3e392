//! What the vault tells clients about itself: the CapabilityStatement at
//! `/fhir/{partition}/metadata` (what is really supported: every R4 type, the
//! interactions, the search parameters the registry supports) and SMART discovery at
//! `/fhir/{partition}/.well-known/smart-configuration`.

use serde_json::{json, Value};

use crate::authz::Interaction;
use crate::registry::{ParamKind, Registry};

/// Where the vault's tokens come from.
#[derive(Debug, Clone)]
pub struct AuthServer {
    /// The realm's issuer URL.
    pub issuer: String,
    pub token_endpoint: String,
    pub introspection_endpoint: String,
    pub revocation_endpoint: String,
    pub authorization_endpoint: String,
    pub jwks_uri: String,
}

pub fn capability_statement(
    registry: &Registry,
    base: &str,
    auth: &AuthServer,
    software_version: &str,
    date: &str,
) -> Value {
    let resources: Vec<Value> = registry
        .resource_types()
        .map(|ty| {
            let params: Vec<Value> = registry
                .params(ty)
                .map(|p| json!({ "name": p.code, "type": p.kind.name() }))
                .collect();
            let mut resource = json!({
                "type": ty,
                "interaction": Interaction::ON_TYPES.iter().map(|i| json!({ "code": i.code() })).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalUpdate": true,
                "conditionalDelete": "single",
            });
            let includes: Vec<String> = registry
                .params(ty)
                .filter(|p| p.kind == ParamKind::Reference)
                .map(|p| format!("{ty}:{}", p.code))
                .collect();
            if !includes.is_empty() {
                resource["searchInclude"] = json!(includes);
            }
            if ty == "Patient" {
                resource["operation"] = json!([
                    {
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    },
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
                    },
                ]);
            }
            if ty == "Group" {
                resource["operation"] = json!([{
                    "name": "export",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
                }]);
            }
            if !params.is_empty() {
                resource["searchParam"] = Value::Array(params);
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "Tessera",
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": { "name": "Tessera FHIR Vault", "version": software_version },
        "implementation": { "description": "Tessera FHIR Vault partition", "url": base },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [
                    {
                        "coding": [{
                            "system": "http://profiles.ihe.net/fhir/ihe.securityTypes/CodeSystem/securityTypes",
                            "code": "IUA",
                            "display": "IHE IUA"
                        }]
                    },
                    {
                        "coding": [{
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR"
                        }]
                    }
                ],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        { "url": "authorize", "valueUri": auth.authorization_endpoint },
                        { "url": "token", "valueUri": auth.token_endpoint },
                        { "url": "introspect", "valueUri": auth.introspection_endpoint },
                        { "url": "revoke", "valueUri": auth.revocation_endpoint }
                    ]
                }],
                "description": "ITI-72: an IUA access token (RFC 9068 JWT, ES256) from the token endpoint, in the Authorization header as a Bearer token. Tokens bound to a certificate (cnf x5t#S256) are accepted only over mutual TLS with that certificate."
            },
            "resource": resources,
            "interaction": [{ "code": Interaction::Batch.code() }, { "code": Interaction::Transaction.code() }],
            // SMART Bulk Data Access 2.0, over this partition.
            "operation": [{
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
            }],
        }],
    })
}

/// SMART App Launch 2.x discovery document.
pub fn smart_configuration(auth: &AuthServer) -> Value {
    json!({
        "issuer": auth.issuer,
        "jwks_uri": auth.jwks_uri,
        "authorization_endpoint": auth.authorization_endpoint,
        "token_endpoint": auth.token_endpoint,
        "introspection_endpoint": auth.introspection_endpoint,
        "revocation_endpoint": auth.revocation_endpoint,
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "tls_client_auth", "client_secret_basic", "client_secret_post", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "ES384", "RS256", "RS384"],
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "scopes_supported": ["openid", "fhirUser", "profile", "launch", "launch/patient", "offline_access", "online_access", "system/*.cruds", "system/*.rs", "user/*.cruds", "user/*.rs", "patient/*.cruds", "patient/*.rs", "system/*.read", "system/*.write"],
        "response_types_supported": ["code"],
        "capabilities": [
            "launch-standalone", "launch-ehr", "authorize-post",
            "client-public", "client-confidential-symmetric", "client-confidential-asymmetric",
            "sso-openid-connect",
            "context-standalone-patient", "context-ehr-patient", "context-ehr-encounter",
            "context-banner", "context-style",
            "permission-offline", "permission-online", "permission-patient", "permission-user",
            "permission-v1", "permission-v2"
        ],
        "code_challenge_methods_supported": ["S256"],
    })
}
