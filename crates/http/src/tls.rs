//! The server's TLS: rustls 0.23 with the ring provider, TLS 1.3 preferred and TLS 1.2
//! allowed (rustls offers only ECDHE AEAD suites for 1.2, all of them recommended by
//! BCP 195 / RFC 9325). Client certificates are optional at the handshake, so clients
//! that authenticate with a secret or an assertion share the port; a certificate that
//! is presented must chain to a configured CA and must not be expired or revoked, or
//! the handshake fails with the matching TLS alert.
//!
//! The CRL files are watched: a revocation written by `tessera pki revoke` takes effect
//! within `crl_refresh_seconds`, without a restart.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;
use tessera_outbound::tls::{load_certs, load_key, provider};

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
    let mut config = ServerConfig::builder_with_provider(server_provider())
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
    config.ignore_client_order = true;
    Ok((config, verifier))
}

/// The ring provider with the server's preference among its suites: those that hash with
/// SHA-256 first, in rustls' order otherwise. Many clients (rustls, OpenSSL, Java) list
/// the SHA-384 suite first, whose key schedule and transcript hash run on SHA-512: no
/// hardware path on x86-64 (ring has SHA-NI for SHA-256, and on AMD runs SHA-512 in
/// plain code), 30 µs of a 540 µs mutual-TLS handshake under perf on an AMD EPYC. Every
/// suite stays on offer; all are BCP 195's.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::hash::HashAlgorithm;
    use rustls::SupportedCipherSuite;
    let mut provider = Arc::unwrap_or_clone(provider());
    provider.cipher_suites.sort_by_key(|suite| {
        let common = match suite {
            SupportedCipherSuite::Tls13(suite) => &suite.common,
            SupportedCipherSuite::Tls12(suite) => &suite.common,
        };
        common.hash_provider.algorithm() != HashAlgorithm::SHA256
    });
    Arc::new(provider)
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
