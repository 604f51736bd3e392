//! The server's TLS: rustls 0.23 with the ring provider, TLS 1.3 preferred and TLS 1.2
//! allowed (rustls offers only ECDHE AEAD suites for 1.2, all of them recommended by
//! BCP 195 / RFC 9325). Client certificates are optional at the handshake, so clients
//! that authenticate with a secret or an assertion share the port; a certificate that
//! is presented must chain to a configured CA and must not be expired or revoked, or
//! the handshake fails with the matching TLS alert.
//!
//! The CRL files are watched: a revocation written by `tessera pki revoke` takes effect
//! within `crl_refresh_seconds`, without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CAs whose client certificates are accepted.
    pub client_ca: Vec<PathBuf>,
    /// CRLs of those CAs.
    pub crl: Vec<PathBuf>,
    pub crl_refresh: Duration,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An HTTPS-only client trusting `ca_file` (PEM), or Mozilla's roots when `None`, for
/// Tessera's own outgoing calls (clients' `jwks_uri`, an introspection endpoint).
pub fn https_agent(
    ca_file: Option<&Path>,
    timeout: std::time::Duration,
    status_as_error: bool,
) -> anyhow::Result<ureq::Agent> {
    https_agent_with(ca_file, timeout, status_as_error, None)
}

/// [`https_agent`] that also presents a client certificate: `(cert, key)` PEM files.
pub fn https_agent_with(
    ca_file: Option<&Path>,
    timeout: std::time::Duration,
    status_as_error: bool,
    client_cert: Option<(&Path, &Path)>,
) -> anyhow::Result<ureq::Agent> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let roots = match ca_file {
        Some(path) => {
            let certs = load_certs(path)?
                .into_iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect::<Vec<_>>();
            RootCerts::new_with_certs(&certs)
        }
        None => RootCerts::WebPki,
    };
    let mut tls = TlsConfig::builder().root_certs(roots);
    if let Some((cert, key)) = client_cert {
        let chain = load_certs(cert)?
            .into_iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect::<Vec<_>>();
        let pem = std::fs::read(key)
            .with_context(|| format!("cannot read the private key {}", key.display()))?;
        let key = PrivateKey::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM private key", key.display()))?
            .to_owned();
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(ureq::Agent::config_builder()
        .https_only(true)
        .http_status_as_error(status_as_error)
        .timeout_global(Some(timeout))
        .tls_config(tls.build())
        .build()
        .new_agent())
}

/// The `Authorization` value with which Tessera's outgoing calls authenticate as a
/// client with a secret: RFC 6749 2.3.1's `Basic base64(urlencode(id):urlencode(secret))`
/// (an id or secret may hold `:`, `%` or non-ASCII characters).
pub(crate) fn basic_authorization(
    client_id: &str,
    secret: &tessera_types::Secret,
) -> tessera_types::Secret {
    use base64::Engine as _;
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret.expose()));
    tessera_types::Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{} contains no certificate", path.display()));
    }
    Ok(certs)
}

pub(crate) fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a PEM private key from {}", path.display()))
}

fn load_crls(paths: &[PathBuf]) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    let mut crls = Vec::new();
    for path in paths {
        for crl in CertificateRevocationListDer::pem_file_iter(path)
            .with_context(|| format!("cannot read the CRL {}", path.display()))?
        {
            crls.push(crl.with_context(|| format!("{} is not a PEM CRL", path.display()))?);
        }
    }
    Ok(crls)
}

/// Builds the server configuration and the verifier that keeps its CRLs current.
pub fn server_config(
    settings: &TlsSettings,
) -> anyhow::Result<(ServerConfig, Arc<ReloadingVerifier>)> {
    let verifier = Arc::new(ReloadingVerifier::new(settings.clone())?);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(load_certs(&settings.cert)?, load_key(&settings.key)?)
        .context("the server certificate does not match its key")?;
    // No session resumption: a resumed session carries the client certificate verified
    // at its full handshake, so a certificate revoked (or expired) since would still
    // authenticate. Every connection verifies its certificate against the current CRLs.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok((config, verifier))
}

/// A client-certificate verifier whose CRLs can be replaced while the server runs.
#[derive(Debug)]
pub struct ReloadingVerifier {
    settings: TlsSettings,
    roots: Arc<RootCertStore>,
    hints: Vec<DistinguishedName>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    crl_modified: RwLock<Vec<Option<SystemTime>>>,
}

impl ReloadingVerifier {
    fn new(settings: TlsSettings) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for path in &settings.client_ca {
            for cert in load_certs(path)? {
                roots.add(cert).with_context(|| {
                    format!("{} is not a usable CA certificate", path.display())
                })?;
            }
        }
        let roots = Arc::new(roots);
        let hints = roots.subjects();
        let current = build_verifier(&roots, load_crls(&settings.crl)?)?;
        let crl_modified = modified_times(&settings.crl);
        Ok(Self {
            settings,
            roots,
            hints,
            current: RwLock::new(current),
            crl_modified: RwLock::new(crl_modified),
        })
    }

    /// Reloads the CRLs if any file changed. A CRL that cannot be read keeps the
    /// previous one in force: failing open would un-revoke certificates.
    pub fn refresh(&self) -> anyhow::Result<bool> {
        let times = modified_times(&self.settings.crl);
        if self
            .crl_modified
            .read()
            .map(|t| *t == times)
            .unwrap_or(false)
        {
            return Ok(false);
        }
        let verifier = build_verifier(&self.roots, load_crls(&self.settings.crl)?)?;
        if let Ok(mut current) = self.current.write() {
            *current = verifier;
        }
        if let Ok(mut t) = self.crl_modified.write() {
            *t = times;
        }
        tracing::info!("certificate revocation lists reloaded");
        Ok(true)
    }

    pub fn refresh_interval(&self) -> Duration {
        self.settings.crl_refresh
    }

    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.current
            .read()
            .map(|v| v.clone())
            .map_err(|_| rustls::Error::General("verifier lock poisoned".into()))
    }
}

fn modified_times(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn build_verifier(
    roots: &Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        // A configured CA that publishes no CRL still authenticates its clients.
        .allow_unknown_revocation_status()
        .allow_unauthenticated()
        .build()
        .context("cannot build the client certificate verifier")
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current()
            .map(|v| v.supported_verify_schemes())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn outgoing_basic_credentials_are_form_urlencoded_before_base64() {
        let header = basic_authorization("gw:1 ü", &tessera_types::Secret::new("a%b+c:d".into()));
        let encoded = header.expose().strip_prefix("Basic ").unwrap();
        let pair = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(
            String::from_utf8(pair).unwrap(),
            "gw%3A1+%C3%BC:a%25b%2Bc%3Ad"
        );
        // A plain generated id and secret are unchanged.
        let plain = basic_authorization("gateway", &tessera_types::Secret::new("Zx-9_a".into()));
        assert_eq!(
            plain.expose(),
            &format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("gateway:Zx-9_a")
            )
        );
    }
}
