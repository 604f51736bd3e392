//! Registering a client: what an operator asks for (the CLI's `client add`, or an admin
//! API), checked and turned into a [`Client`] and, for a secret client, its secret.
//! Reading files is the caller's job; every rule about the values is here.

use tessera_types::{ClientId, PartitionId, RealmName, ScopeSet};

use crate::client::{CertBinding, Client, ClientAuth, Coding, IuaAttributes, JwksSource};
use crate::jose::{Algorithm, JwkSet};
use crate::pem::{certificate_thumbprint, public_pem_to_jwk};
use crate::service::{random_b64, secret_hash};

/// A registration as asked for; text as the operator gave it.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub realm: Option<RealmName>,
    pub client_id: String,
    /// Space-separated scopes the client may ask for.
    pub scope: String,
    pub partitions: Vec<String>,
    pub credential: Credential,
    pub redirect_uris: Vec<String>,
    pub launch_url: Option<String>,
    pub principal_id: Option<String>,
    pub principal_name: Option<String>,
    pub person_ids: Vec<String>,
    pub resource_servers: Vec<String>,
    pub accounts: Vec<String>,
    pub subject_name: Option<String>,
    pub subject_organization: Option<String>,
    pub subject_organization_id: Option<String>,
    /// `system|code`.
    pub subject_role: Option<String>,
    /// `system|code`.
    pub purpose_of_use: Option<String>,
    pub home_community_id: Option<String>,
    pub national_provider_identifier: Option<String>,
}

/// How the client will authenticate, and what it registers for that.
#[derive(Debug, Clone, Default)]
pub enum Credential {
    /// `tls_client_auth` with this PEM certificate (bound by its thumbprint).
    Certificate(Vec<u8>),
    /// `tls_client_auth` by subject DN, issued by `issuer`.
    CertificateSubject { subject: String, issuer: String },
    /// `private_key_jwt` with an inline JWK Set (its JSON text).
    Jwks(String),
    /// `private_key_jwt` with keys fetched from this URL.
    JwksUri(String),
    /// `private_key_jwt` with one PEM public key, for `alg` (or the key's default).
    PublicKey { pem: String, alg: Option<String> },
    /// `client_secret_basic` or (`post`) `client_secret_post`: a secret is generated.
    Secret { post: bool },
    /// A public client (PKCE); it needs a redirect URI.
    #[default]
    None,
}

/// A checked registration: the client to store and, once, its generated secret.
#[derive(Debug)]
pub struct Registered {
    pub client: Client,
    pub secret: Option<String>,
}

/// Why a registration is refused: the field (as the CLI's flag names it, without the
/// dashes) and the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct RegistrationError {
    pub field: &'static str,
    pub reason: String,
}

fn refuse(field: &'static str, reason: impl Into<String>) -> RegistrationError {
    RegistrationError {
        field,
        reason: reason.into(),
    }
}

/// Checks `request` and makes the client, in `realm` unless the request names one.
pub fn register(request: Registration, realm: RealmName) -> Result<Registered, RegistrationError> {
    let realm = request.realm.clone().unwrap_or(realm);
    let client_id = ClientId::try_from(request.client_id.as_str())
        .map_err(|e| refuse("client-id", e.to_string()))?;
    let scopes = ScopeSet::parse(&request.scope).map_err(|e| refuse("scope", e.to_string()))?;
    let mut partitions = request
        .partitions
        .iter()
        .map(|p| PartitionId::try_from(p.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refuse("partition", e.to_string()))?;
    if partitions.iter().any(PartitionId::is_all) {
        partitions.retain(PartitionId::is_all);
        partitions.truncate(1);
    }
    let (auth, secret) = credential(request.credential, &request.redirect_uris)?;
    for uri in &request.redirect_uris {
        check_redirect_uri(uri).map_err(|why| refuse("redirect-uri", format!("{uri}: {why}")))?;
    }
    if let Some(url) = &request.launch_url {
        let local = url.starts_with("http://localhost") || url.starts_with("http://127.0.0.1");
        if !url.starts_with("https://") && !local {
            return Err(refuse(
                "launch-url",
                "must be an https URL (http only on localhost)",
            ));
        }
    }
    let client = Client {
        realm,
        client_id,
        enabled: true,
        auth,
        scopes,
        partitions,
        principal_id: request.principal_id,
        principal_name: request.principal_name,
        person_ids: request.person_ids,
        resource_servers: request.resource_servers,
        accounts: request.accounts,
        iua: IuaAttributes {
            subject_name: request.subject_name,
            subject_organization: request.subject_organization,
            subject_organization_id: request.subject_organization_id,
            subject_role: coding("subject-role", request.subject_role)?,
            purpose_of_use: coding("purpose-of-use", request.purpose_of_use)?,
            home_community_id: request.home_community_id,
            national_provider_identifier: request.national_provider_identifier,
        },
        redirect_uris: request.redirect_uris,
        launch_url: request.launch_url,
    };
    Ok(Registered { client, secret })
}

/// The registered credential, and the secret generated for a secret client.
fn credential(
    credential: Credential,
    redirect_uris: &[String],
) -> Result<(ClientAuth, Option<String>), RegistrationError> {
    Ok(match credential {
        Credential::Certificate(pem) => {
            let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
                .map_err(|_| refuse("cert", "not a PEM certificate"))?;
            pem.parse_x509()
                .map_err(|_| refuse("cert", "not a certificate"))?;
            let binding = CertBinding::Thumbprint(certificate_thumbprint(&pem.contents));
            (ClientAuth::TlsClientAuth(binding), None)
        }
        Credential::CertificateSubject { subject, issuer } => (
            ClientAuth::TlsClientAuth(CertBinding::SubjectDn { subject, issuer }),
            None,
        ),
        Credential::Jwks(text) => {
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| refuse("jwks", format!("not a JWK Set: {e}")))?;
            if set.keys.is_empty() {
                return Err(refuse("jwks", "the set has no keys"));
            }
            for key in &set.keys {
                key.validate().map_err(|e| refuse("jwks", e.to_string()))?;
                if key.kid.is_none() && set.keys.len() > 1 {
                    return Err(refuse("jwks", "with several keys, each needs a kid"));
                }
            }
            (ClientAuth::PrivateKeyJwt(JwksSource::Inline(set)), None)
        }
        Credential::JwksUri(uri) => {
            if !uri.starts_with("https://") {
                return Err(refuse("jwks-uri", "must be an https URL"));
            }
            (ClientAuth::PrivateKeyJwt(JwksSource::Uri(uri)), None)
        }
        Credential::PublicKey { pem, alg } => {
            let alg = alg
                .as_deref()
                .map(Algorithm::parse)
                .transpose()
                .map_err(|e| refuse("alg", e.to_string()))?;
            let jwk =
                public_pem_to_jwk(&pem, alg).map_err(|e| refuse("public-key", e.to_string()))?;
            let set = JwkSet { keys: vec![jwk] };
            (ClientAuth::PrivateKeyJwt(JwksSource::Inline(set)), None)
        }
        Credential::Secret { post } => {
            let generated = random_b64(32)
                .ok_or_else(|| refuse("auth", "the system random number generator failed"))?;
            let auth = ClientAuth::ClientSecret {
                secret_sha256: secret_hash(&generated),
                post,
            };
            (auth, Some(generated))
        }
        Credential::None => {
            if redirect_uris.is_empty() {
                return Err(refuse(
                    "redirect-uri",
                    "a public client (auth none) needs at least one",
                ));
            }
            (ClientAuth::None, None)
        }
    })
}

fn coding(field: &'static str, value: Option<String>) -> Result<Option<Coding>, RegistrationError> {
    value
        .map(|v| {
            Coding::parse(&v).ok_or_else(|| {
                refuse(
                    field,
                    "must be written system|code, e.g. urn:oid:2.16.756.5.30.1.127.3.10.5|NORM",
                )
            })
        })
        .transpose()
}

/// RFC 6749 3.1.2 and the OAuth 2.0 Security BCP: absolute, no fragment, https (or
/// http on the loopback interface, or a private-use scheme for native apps), never a
/// wildcard: redirect URIs are compared exactly.
pub fn check_redirect_uri(uri: &str) -> Result<(), &'static str> {
    let (scheme, rest) = uri.split_once("://").ok_or("not an absolute URI")?;
    if uri.contains('#') {
        return Err("a redirect URI has no fragment");
    }
    if uri.contains('*') {
        return Err("wildcards are not allowed; register each URI");
    }
    let host = rest.split(['/', '?', ':']).next().unwrap_or_default();
    match scheme {
        "https" if !host.is_empty() => Ok(()),
        "http" if ["localhost", "127.0.0.1", "[::1]"].contains(&host) => Ok(()),
        "http" => Err("http is allowed only for localhost; use https"),
        "javascript" | "data" | "file" | "vbscript" => Err("not a redirect scheme"),
        _ if scheme.contains('.') => Ok(()),
        _ => Err("use https, or a private-use scheme in reverse domain form (com.example.app)"),
    }
}

/// The subject DN of a PEM certificate (the dev CA's, as the issuer of subject-bound
/// clients), as x509-parser prints it (RFC 4514 form).
pub fn certificate_subject(pem: &[u8]) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realm() -> RealmName {
        RealmName::try_from("cara").unwrap()
    }

    fn asking(credential: Credential) -> Registration {
        Registration {
            client_id: "app".into(),
            scope: "system/*.rs".into(),
            credential,
            ..Registration::default()
        }
    }

    #[test]
    fn a_secret_client_gets_a_secret_once_and_only_its_hash_is_kept() {
        let registered = register(asking(Credential::Secret { post: true }), realm()).unwrap();
        let secret = registered.secret.unwrap();
        assert!(secret.len() >= 43, "256 bits");
        assert_eq!(registered.client.auth.method_name(), "client_secret_post");
        assert!(!format!("{:?}", registered.client).contains(&secret));
        assert_eq!(registered.client.realm, realm());
        assert!(registered.client.enabled);
    }

    #[test]
    fn every_rule_names_the_field_it_refuses() {
        let field = |request: Registration| register(request, realm()).unwrap_err().field;
        assert_eq!(
            field(Registration {
                client_id: "bad id".into(),
                ..asking(Credential::Secret { post: false })
            }),
            "client-id"
        );
        assert_eq!(field(asking(Credential::None)), "redirect-uri");
        assert_eq!(
            field(asking(Credential::JwksUri("http://x".into()))),
            "jwks-uri"
        );
        assert_eq!(
            field(asking(Credential::Jwks(r#"{"keys":[]}"#.into()))),
            "jwks"
        );
        assert_eq!(
            field(asking(Credential::Certificate(b"junk".to_vec()))),
            "cert"
        );
        assert_eq!(
            field(asking(Credential::PublicKey {
                pem: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
                alg: None,
            })),
            "public-key"
        );
        assert_eq!(
            field(Registration {
                launch_url: Some("http://app.example/launch".into()),
                ..asking(Credential::Secret { post: false })
            }),
            "launch-url"
        );
        assert_eq!(
            field(Registration {
                subject_role: Some("NORM".into()),
                ..asking(Credential::Secret { post: false })
            }),
            "subject-role"
        );
    }

    #[test]
    fn redirect_uris_follow_the_security_bcp() {
        for good in [
            "https://app.example/cb",
            "http://localhost:8080/cb",
            "http://127.0.0.1/cb",
            "com.example.app://cb",
        ] {
            assert!(check_redirect_uri(good).is_ok(), "{good}");
        }
        for bad in [
            "https://app.example/cb#x",
            "https://*.example/cb",
            "http://app.example/cb",
            "javascript://alert",
            "app/cb",
            "myapp://cb",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
        let public = register(
            Registration {
                redirect_uris: vec!["https://app.example/cb".into()],
                ..asking(Credential::None)
            },
            realm(),
        )
        .unwrap();
        assert!(public.client.auth.is_public());
        assert!(public.secret.is_none());
    }

    #[test]
    fn all_partitions_is_one_wildcard() {
        let registered = register(
            Registration {
                partitions: vec!["p1".into(), "*".into(), "p2".into()],
                ..asking(Credential::Secret { post: false })
            },
            realm(),
        )
        .unwrap();
        assert_eq!(registered.client.partitions.len(), 1);
        assert!(registered.client.partitions[0].is_all());
    }
}
