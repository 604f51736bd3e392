//! Client registrations: who a client is, how it authenticates, what it may ask for.

use serde::{Deserialize, Serialize};
use tessera_types::{ClientId, PartitionId, RealmName, ScopeSet};

use crate::jose::JwkSet;

/// A FHIR Coding as IUA carries `subject_role` and `purpose_of_use`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coding {
    pub system: String,
    pub code: String,
}

impl Coding {
    /// Parses the FHIR token form `system|code`.
    pub fn parse(text: &str) -> Option<Self> {
        let (system, code) = text.split_once('|')?;
        (!system.is_empty() && !code.is_empty() && !code.contains('|')).then(|| Self {
            system: system.to_owned(),
            code: code.to_owned(),
        })
    }
}

/// The IUA attributes a registration fixes for every token of the client
/// (IHE IUA 3.71.4.2.2.1.2, `extensions.ihe_iua`). No `deny_unknown_fields`: the token's
/// [`crate::token::IheIua`] flattens these beside `person_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IuaAttributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_organization_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_role: Option<Coding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_of_use: Option<Coding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_community_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub national_provider_identifier: Option<String>,
}

/// How a registered certificate is recognised (RFC 8705 section 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertBinding {
    /// The exact certificate: base64url SHA-256 of its DER, as in `x5t#S256`.
    Thumbprint(String),
    /// Any certificate with this subject DN from this issuer DN (survives renewal).
    SubjectDn { subject: String, issuer: String },
}

/// Where a `private_key_jwt` client's public keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JwksSource {
    Inline(JwkSet),
    Uri(String),
}

/// The token endpoint authentication methods of RFC 7591 / RFC 8705 Tessera supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    TlsClientAuth(CertBinding),
    PrivateKeyJwt(JwksSource),
    /// A shared secret: the hex SHA-256 of it, and how the client registered to send it
    /// (either way is accepted; registrations stored before `post` existed read as
    /// `client_secret_basic`).
    ClientSecret {
        secret_sha256: String,
        #[serde(default)]
        post: bool,
    },
    /// A public client (RFC 6749 2.1, a browser or native app): it names itself with
    /// `client_id` only and proves the authorization code with PKCE.
    None,
}

impl ClientAuth {
    pub fn method_name(&self) -> &'static str {
        match self {
            ClientAuth::TlsClientAuth(_) => "tls_client_auth",
            ClientAuth::PrivateKeyJwt(_) => "private_key_jwt",
            ClientAuth::ClientSecret { post: false, .. } => "client_secret_basic",
            ClientAuth::ClientSecret { post: true, .. } => "client_secret_post",
            ClientAuth::None => "none",
        }
    }

    pub fn is_public(&self) -> bool {
        matches!(self, ClientAuth::None)
    }
}

/// In a registration's list of person ids or accounts: any of them.
pub const WILDCARD: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub realm: RealmName,
    pub client_id: ClientId,
    pub enabled: bool,
    pub auth: ClientAuth,
    pub scopes: ScopeSet,
    pub partitions: Vec<PartitionId>,
    /// CH:IUA `principal_id` (e.g. a GLN) the client acts for, if any.
    pub principal_id: Option<String>,
    /// CH:IUA `principal`: the name of that principal.
    pub principal_name: Option<String>,
    /// `person_id` values the client may ask for; [`WILDCARD`] allows every one.
    pub person_ids: Vec<String>,
    /// When the client is a resource server: the audiences that name it. Introspection
    /// reports a token as active to it only if the token's `aud` names one of them.
    pub resource_servers: Vec<String>,
    /// Account URNs the client may ask a token for (`account` parameter); [`WILDCARD`]
    /// (`*`) allows every account.
    pub accounts: Vec<String>,
    pub iua: IuaAttributes,
    /// Where the authorization endpoint may send the user back (exact match).
    pub redirect_uris: Vec<String>,
    /// The app's SMART launch URL, where an EHR opens it.
    pub launch_url: Option<String>,
}

impl Client {
    pub fn has_redirect_uri(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|r| r == uri)
    }

    /// The origins (`scheme://host[:port]`) of the registered redirect URIs: the
    /// browser origins this client's pages run on (CORS).
    pub fn origins(&self) -> Vec<String> {
        let mut origins: Vec<String> = self
            .redirect_uris
            .iter()
            .filter_map(|uri| origin_of(uri))
            .collect();
        origins.sort();
        origins.dedup();
        origins
    }
}

/// `scheme://authority` of an absolute http(s) URL.
pub fn origin_of(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

/// A public client (no secret: PKCE protects its codes) that Tessera itself runs in the
/// browser, such as the audit console: registered by Tessera, with exactly the scopes
/// and the one redirect URI given.
pub fn first_party_public(
    realm: RealmName,
    client_id: ClientId,
    scopes: ScopeSet,
    redirect_uri: String,
) -> Client {
    Client {
        realm,
        client_id,
        enabled: true,
        auth: ClientAuth::None,
        scopes,
        partitions: Vec::new(),
        principal_id: None,
        principal_name: None,
        person_ids: Vec::new(),
        resource_servers: Vec::new(),
        accounts: Vec::new(),
        iua: IuaAttributes::default(),
        redirect_uris: vec![redirect_uri],
        launch_url: None,
    }
}
