//! The server's TLS: rustls 0.23 with the ring provider, TLS 1.3 preferred and TLS 1.2
//! allowed (rustls offers only ECDHE AEAD suites for 1.2, all of them recommended by
//! BCP 195 / RFC 9325). Client certificates are optional at the handshake, so clients
//! that authenticate with a secret or an assertion share the port; a certificate that
//! is presented must chain to a configured CA and must not be expired or revoked, or
//! the handshake fails with the matching TLS alert.
//!
//! The CRL files are watched: a revocation written by `tessera pki revoke` takes effect
//! within `crl_refresh_seconds`, without a restart.
//!
//! A chain that verified is remembered by its exact bytes (see [`Remembered`]), so a
//! client that opens a connection per request costs one signature check a handshake,
//! not two: its certificate's signature by the CA is checked once, the proof that it
//! holds the key (TLS CertificateVerify) every time.

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

use crate::capped::Capped;

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
    current: RwLock<Arc<Remembered>>,
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
        let current = Remembered::new(build_verifier(&roots, load_crls(&settings.crl)?)?);
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
        // A new verifier starts with nothing remembered: a chain verified under the old
        // CRLs is verified again under the new ones.
        let verifier =
            Remembered::new(build_verifier(&self.roots, load_crls(&self.settings.crl)?)?);
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

    fn current(&self) -> Result<Arc<Remembered>, rustls::Error> {
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

/// A verifier that remembers the chains it accepted, by their exact DER, until the earliest
/// `notAfter` among them. webpki's answer for a chain depends on its bytes, the roots and
/// the CRLs (fixed for this verifier's life: a CRL reload builds a new one), and the time
/// only through the certificates' validity; so within that window, and not before the time
/// it was verified, the answer is the same and the CA's signature (a P-256 verification:
/// a median of 28% more new-handshake tokens a second without it, stop 31) need not be checked
/// again. Refusals are not remembered, nor is anything about the handshake's own signature,
/// which proves the client holds the key and is verified on every connection. At most
/// [`Self::CAPACITY`] chains; emptied when full.
#[derive(Debug)]
struct Remembered {
    verifier: Arc<dyn ClientCertVerifier>,
    chains: Capped<Window>,
}

/// When a chain was verified, and until when the answer holds (seconds since the epoch).
#[derive(Debug, Clone, Copy)]
struct Window {
    verified: u64,
    until: u64,
}

impl Remembered {
    const CAPACITY: usize = 1024;

    fn new(verifier: Arc<dyn ClientCertVerifier>) -> Arc<Self> {
        Arc::new(Self {
            verifier,
            chains: Capped::new(Self::CAPACITY),
        })
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = chain_key(end_entity, intermediates);
        let at = now.as_secs();
        let known = self.chains.get(&key);
        if known.is_some_and(|w| w.verified <= at && at < w.until) {
            return Ok(ClientCertVerified::assertion());
        }
        let verified = self
            .verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(until) = earliest_not_after(end_entity, intermediates) {
            let window = Window {
                verified: at,
                until,
            };
            self.chains.insert(key, window);
        }
        Ok(verified)
    }
}

/// The chain's bytes, each certificate after its length, so that no two chains share
/// a key.
fn chain_key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Box<[u8]> {
    let certificates = || std::iter::once(end_entity).chain(intermediates);
    let mut key = Vec::with_capacity(certificates().map(|c| c.len() + 4).sum());
    for certificate in certificates() {
        key.extend_from_slice(
            &u32::try_from(certificate.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        key.extend_from_slice(certificate);
    }
    key.into()
}

/// The earliest `notAfter` of the certificates presented (seconds since the epoch),
/// whichever of them webpki's path used: remembering for less is safe.
fn earliest_not_after(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<u64> {
    std::iter::once(end_entity)
        .chain(intermediates)
        .map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            u64::try_from(cert.validity().not_after.timestamp()).ok()
        })
        .try_fold(u64::MAX, |earliest, until| Some(earliest.min(until?)))
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
        self.current()?
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current()
            .map(|v| v.verifier.supported_verify_schemes())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// webpki's verifier, counting the chains it is asked to verify.
    #[derive(Debug)]
    struct Counting {
        webpki: Arc<dyn ClientCertVerifier>,
        asked: AtomicUsize,
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.webpki.root_hint_subjects()
        }

        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.webpki
                .verify_client_cert(end_entity, intermediates, now)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.webpki.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.webpki.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.webpki.supported_verify_schemes()
        }
    }

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A client certificate valid from 2020 to 2030.
    fn client(ca: &CertifiedIssuer<'static, KeyPair>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "client");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2030, 1, 1);
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, ca).unwrap().der().clone()
    }

    /// A verifier trusting `ca`, remembering, and webpki's beneath it.
    fn verifier(ca: &CertifiedIssuer<'static, KeyPair>) -> (Arc<Remembered>, Arc<Counting>) {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let counting = Arc::new(Counting {
            webpki: build_verifier(&Arc::new(roots), Vec::new()).unwrap(),
            asked: AtomicUsize::new(0),
        });
        (Remembered::new(counting.clone()), counting)
    }

    fn at(year: i32, month: u8, day: u8) -> UnixTime {
        let seconds = date_time_ymd(year, month, day).unix_timestamp();
        UnixTime::since_unix_epoch(Duration::from_secs(seconds.try_into().unwrap()))
    }

    fn asked(counting: &Counting) -> usize {
        counting.asked.load(Ordering::SeqCst)
    }

    #[test]
    fn a_chain_is_verified_once_and_remembered_until_its_certificate_expires() {
        let ca = ca("CA");
        let cert = client(&ca);
        let (remembered, counting) = verifier(&ca);
        for day in [1, 2, 3] {
            assert!(remembered
                .verify_client_cert(&cert, &[], at(2026, 3, day))
                .is_ok());
        }
        assert_eq!(asked(&counting), 1);
        // Before the time it was verified (a clock set back), webpki answers again.
        assert!(remembered
            .verify_client_cert(&cert, &[], at(2025, 1, 1))
            .is_ok());
        assert_eq!(asked(&counting), 2);
        // Expired: webpki's own refusal, although the chain was remembered.
        let expired = remembered.verify_client_cert(&cert, &[], at(2030, 1, 2));
        assert_eq!(
            expired.unwrap_err(),
            counting
                .webpki
                .verify_client_cert(&cert, &[], at(2030, 1, 2))
                .unwrap_err()
        );
        // The same certificate presented with another chain is another chain.
        let _ = remembered.verify_client_cert(&cert, &[ca.der().clone()], at(2026, 3, 4));
        assert_eq!(asked(&counting), 4);
    }

    #[test]
    fn a_refused_chain_is_verified_every_time() {
        let (trusted, foreign) = (ca("CA"), ca("CA"));
        let cert = client(&foreign);
        let (remembered, counting) = verifier(&trusted);
        for _ in 0..2 {
            assert!(remembered
                .verify_client_cert(&cert, &[], at(2026, 3, 1))
                .is_err());
        }
        assert_eq!(asked(&counting), 2);
        assert_eq!(remembered.chains.len(), 0);
    }

    #[test]
    fn the_remembered_chains_start_afresh_when_full() {
        let ca = ca("CA");
        let cert = client(&ca);
        let (remembered, counting) = verifier(&ca);
        for n in 0..Remembered::CAPACITY {
            let forever = Window {
                verified: 0,
                until: u64::MAX,
            };
            remembered
                .chains
                .insert(n.to_be_bytes().to_vec().into(), forever);
        }
        assert_eq!(remembered.chains.len(), Remembered::CAPACITY);
        assert!(remembered
            .verify_client_cert(&cert, &[], at(2026, 3, 1))
            .is_ok());
        assert_eq!(remembered.chains.len(), 1);
        assert!(remembered
            .verify_client_cert(&cert, &[], at(2026, 3, 1))
            .is_ok());
        assert_eq!(asked(&counting), 1);
    }

    #[test]
    fn chain_keys_differ_where_the_chains_do() {
        let (a, b) = (
            CertificateDer::from(vec![1, 2]),
            CertificateDer::from(vec![3]),
        );
        let ab = CertificateDer::from(vec![1, 2, 3]);
        let a_then_b = chain_key(&a, std::slice::from_ref(&b));
        assert_ne!(a_then_b, chain_key(&ab, &[]));
        assert_ne!(a_then_b, chain_key(&b, std::slice::from_ref(&a)));
        assert_eq!(a_then_b, chain_key(&a, &[b]));
    }
}
