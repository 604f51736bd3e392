//! Signing and verifying the audit trail's checkpoints (issue 17): each instance signs
//! the checkpoints it writes with its TLS key and sends its certificate chain along
//! (`x5c`), so a checkpoint is checked against the configured CAs as they stood when it
//! was written, not against keys kept in the database it vouches for.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;
use tessera_atna::Checkpoint;
use tessera_iam::jose::{Algorithm, SigningKey, UnverifiedJws};
use tessera_iam::pem::spki_to_jwk;
use tessera_outbound::tls::{load_certs, load_key, provider};
use tessera_store::{checkpoint_of, ChainReport};
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The `typ` of a checkpoint's JWS.
const TYP: &str = "tessera-audit-checkpoint+jwt";

/// Signs checkpoints with an instance's TLS key.
pub struct CheckpointSigner {
    key: SigningKey,
    /// The instance's certificate chain, leaf first, as `x5c` sends it.
    x5c: Vec<String>,
}

impl CheckpointSigner {
    /// The signer of the instance whose TLS certificate chain and key are at `cert` and
    /// `key` (an EC P-256 or P-384 or an RSA key, PKCS#8).
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Self> {
        let chain = load_certs(cert)?;
        let PrivateKeyDer::Pkcs8(pkcs8) = load_key(key)? else {
            return Err(anyhow!(
                "{}: checkpoints are signed with a PKCS#8 key (BEGIN PRIVATE KEY); convert it \
                 with `openssl pkcs8 -topk8 -nocrypt -in KEY`, or set audit.checkpoint_seconds \
                 = 0 to leave the checkpoints to other instances",
                key.display()
            ));
        };
        let key = [Algorithm::ES256, Algorithm::ES384, Algorithm::RS256]
            .into_iter()
            .find_map(|alg| SigningKey::from_pkcs8(alg, pkcs8.secret_pkcs8_der()).ok())
            .ok_or_else(|| anyhow!("{}: not an EC P-256, P-384 or RSA key", key.display()))?;
        Ok(Self {
            key,
            x5c: chain.iter().map(|c| STANDARD.encode(c.as_ref())).collect(),
        })
    }

    /// The checkpoint as a compact JWS.
    pub fn sign(&self, checkpoint: &Checkpoint) -> Result<String, String> {
        let mut header = serde_json::Map::new();
        header.insert("x5c".into(), self.x5c.clone().into());
        self.key
            .sign_with_header(TYP, header, checkpoint)
            .map_err(|e| format!("cannot sign the checkpoint: {e}"))
    }
}

/// Checks checkpoints' signatures against trusted CAs.
pub struct CheckpointVerifier {
    roots: RootCertStore,
}

impl CheckpointVerifier {
    /// Trusts the CAs (PEM files) that issue the instances' TLS certificates.
    pub fn load(ca: &[PathBuf]) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for path in ca {
            for cert in load_certs(path)? {
                roots.add(cert).with_context(|| {
                    format!("{} is not a usable CA certificate", path.display())
                })?;
            }
        }
        Ok(Self { roots })
    }

    /// Verifies one checkpoint: signed by the key of the leaf certificate it carries,
    /// which chains to a trusted CA and was valid (for a TLS server) when the
    /// checkpoint says it was written. Answers the signer's subject.
    pub fn verify(&self, signed: &str) -> Result<String, String> {
        let jws = UnverifiedJws::parse(signed).map_err(|e| format!("not a JWS: {e}"))?;
        if jws.header.typ.as_deref() != Some(TYP) {
            return Err(format!("its typ is not {TYP}"));
        }
        let certs: Vec<CertificateDer<'static>> = jws
            .header
            .x5c
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|c| STANDARD.decode(c).map(CertificateDer::from))
            .collect::<Result<_, _>>()
            .map_err(|_| "its x5c is not base64 DER".to_owned())?;
        let (leaf, intermediates) = certs
            .split_first()
            .ok_or_else(|| "it carries no signer certificate (x5c)".to_owned())?;
        let at = checkpoint_of(signed)?.at;
        let when = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(at.0).unwrap_or(0),
        ));
        let parsed = ParsedCertificate::try_from(leaf)
            .map_err(|e| format!("its signer certificate: {e}"))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            when,
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| format!("its signer certificate is not trusted when it was written: {e}"))?;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|_| "its signer certificate is not X.509".to_owned())?;
        let mut jwk = spki_to_jwk(cert.public_key().raw).map_err(|e| e.to_string())?;
        jwk.kid.clone_from(&jws.header.kid);
        jws.verify(&[jwk])
            .map_err(|e| format!("its signature does not verify: {e}"))?;
        Ok(cert.subject().to_string())
    }

    /// Checks every checkpoint of `report` (the store checked that they link up and
    /// agree with the chains); the first that does not verify is named in the report.
    /// Answers the signers' subjects, each once.
    pub fn check(&self, report: &mut ChainReport) -> Vec<String> {
        let mut signers: Vec<String> = Vec::new();
        for (i, signed) in report.checkpoints.iter().enumerate() {
            match self.verify(signed) {
                Ok(subject) => {
                    if !signers.contains(&subject) {
                        signers.push(subject);
                    }
                }
                Err(e) => {
                    if report.checkpoint_broken.is_some() {
                        break;
                    }
                    let n = checkpoint_of(signed).map_or(i as i64 + 1, |c| c.n);
                    report.checkpoint_broken = Some(format!("checkpoint {n}: {e}"));
                    break;
                }
            }
        }
        signers
    }
}
