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
use tessera_store::checkpoint_of;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
    };
    use std::collections::BTreeMap;
    use tessera_atna::Head;
    use tessera_types::UnixTime;

    /// A CA and a server certificate it issued, valid in 2020–2030, in `dir`.
    struct Pki {
        dir: PathBuf,
    }

    impl Pki {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("tessera-checkpoint-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.distinguished_name
                .push(DnType::CommonName, format!("{name} CA"));
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
            let key = KeyPair::generate().unwrap();
            let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            leaf.distinguished_name.push(DnType::CommonName, "node-1");
            leaf.not_before = date_time_ymd(2020, 1, 1);
            leaf.not_after = date_time_ymd(2030, 1, 1);
            let leaf = leaf.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
            std::fs::write(dir.join("node.crt"), leaf.pem()).unwrap();
            std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
            Self { dir }
        }

        fn signer(&self) -> CheckpointSigner {
            CheckpointSigner::load(&self.dir.join("node.crt"), &self.dir.join("node.key")).unwrap()
        }

        fn verifier(&self) -> CheckpointVerifier {
            CheckpointVerifier::load(&[self.dir.join("ca.crt")]).unwrap()
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn checkpoint(at: i64) -> Checkpoint {
        let heads = BTreeMap::from([(
            "node-1:8443".to_owned(),
            Head {
                seq: 3,
                hash: "ab".repeat(32),
            },
        )]);
        Checkpoint::next(None, heads, UnixTime(at)).unwrap()
    }

    const IN_2026: i64 = 1_790_000_000;

    #[test]
    fn a_checkpoint_verifies_against_the_ca_that_issued_its_signer() {
        let pki = Pki::new("ok");
        let signed = pki.signer().sign(&checkpoint(IN_2026)).unwrap();
        assert_eq!(pki.verifier().verify(&signed).unwrap(), "CN=node-1");
        assert_eq!(checkpoint_of(&signed).unwrap(), checkpoint(IN_2026));
    }

    #[test]
    fn a_forged_or_untrusted_checkpoint_is_refused_with_its_reason() {
        let (pki, other) = (Pki::new("mine"), Pki::new("theirs"));
        let signed = pki.signer().sign(&checkpoint(IN_2026)).unwrap();
        let refused = |text: &str| pki.verifier().verify(text).unwrap_err();

        // Another CA's verifier does not trust this signer.
        let untrusted = other.verifier().verify(&signed).unwrap_err();
        assert!(
            untrusted.contains("not trusted when it was written"),
            "{untrusted}"
        );
        // Written outside the certificate's validity.
        let late = pki.signer().sign(&checkpoint(1_900_000_000)).unwrap();
        assert!(refused(&late).contains("not trusted when it was written"));
        // Signed by another key while naming this certificate.
        let theirs = other.signer().sign(&checkpoint(IN_2026)).unwrap();
        let parts: Vec<&str> = signed.split('.').collect();
        let swapped = format!("{}.{}", parts[0], theirs.split_once('.').unwrap().1);
        assert!(refused(&swapped).contains("signature does not verify"));
        // No certificate, another typ, a certificate that is not base64, no signature.
        let header = |h: serde_json::Value| {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!("{}.{}.{}", b64.encode(h.to_string()), parts[1], parts[2])
        };
        let alg = serde_json::json!("ES256");
        let x5c = pki.signer().x5c;
        let bare = header(serde_json::json!({"alg": alg, "typ": TYP}));
        assert!(refused(&bare).contains("carries no signer certificate"));
        let typ = header(serde_json::json!({"alg": alg, "typ": "JWT", "x5c": x5c}));
        assert!(refused(&typ).contains("typ is not"));
        let garbled = header(serde_json::json!({"alg": alg, "typ": TYP, "x5c": ["%%%"]}));
        assert!(refused(&garbled).contains("not base64 DER"));
        let none = header(serde_json::json!({"alg": "none", "typ": TYP, "x5c": x5c}));
        assert!(refused(&none).contains("not a JWS"));
    }

    #[test]
    fn only_a_pkcs8_key_signs_and_the_error_says_how_to_convert_one() {
        let pki = Pki::new("sec1");
        let PrivateKeyDer::Pkcs8(der) = load_key(&pki.dir.join("node.key")).unwrap() else {
            panic!("rcgen writes PKCS#8");
        };
        // The same P-256 key as SEC1 (BEGIN EC PRIVATE KEY): the PKCS#8 wrapper's inner key.
        let sec1 = sec1_of(der.secret_pkcs8_der());
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            STANDARD.encode(sec1)
        );
        std::fs::write(pki.dir.join("sec1.key"), pem).unwrap();
        let error = CheckpointSigner::load(&pki.dir.join("node.crt"), &pki.dir.join("sec1.key"))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("openssl pkcs8 -topk8"), "{error}");
    }

    /// The ECPrivateKey inside a PKCS#8 PrivateKeyInfo: the OCTET STRING after the
    /// version and the algorithm identifier.
    fn sec1_of(pkcs8: &[u8]) -> Vec<u8> {
        fn read(der: &[u8]) -> (u8, &[u8], &[u8]) {
            let (tag, len, rest) = (der[0], der[1], &der[2..]);
            let (len, rest) = if len & 0x80 == 0 {
                (len as usize, rest)
            } else {
                let n = (len & 0x7f) as usize;
                (
                    rest[..n].iter().fold(0, |a, b| a << 8 | *b as usize),
                    &rest[n..],
                )
            };
            (tag, &rest[..len], &rest[len..])
        }
        let (_, info, _) = read(pkcs8);
        let (_, _, after_version) = read(info);
        let (_, _, after_algorithm) = read(after_version);
        let (tag, key, _) = read(after_algorithm);
        assert_eq!(tag, 0x04);
        key.to_vec()
    }
}
