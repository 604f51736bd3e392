//! The development PKI under `pki/`: a P-256 CA, the server certificate, client
//! certificates it issues, and its CRL. Files: `ca.crt`, `ca.key`, `server.crt`,
//! `server.key`, `ca.crl`. Private keys are written with mode 0600.
//!
//! This is for development and tests; production deployments bring their own CA and
//! point `[tls]` at it.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const CA_CRL: &str = "ca.crl";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";

pub struct Pki {
    dir: PathBuf,
}

/// How long a client certificate is valid, relative to now (negative: in the past).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub from_days: i64,
    pub to_days: i64,
}

impl Validity {
    pub fn days(days: i64) -> Self {
        Self {
            from_days: 0,
            to_days: days,
        }
    }
}

pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

fn random_serial() -> anyhow::Result<SerialNumber> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the system random number generator failed"))?;
    bytes[0] &= 0x7f; // a positive INTEGER
    Ok(SerialNumber::from_slice(&bytes))
}

/// A new RSA 2048 private key as PKCS#8 DER (ring, which signs, cannot generate RSA keys).
pub fn generate_rsa_pkcs8() -> anyhow::Result<Vec<u8>> {
    use rsa::pkcs8::EncodePrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
        .context("RSA key generation failed")?;
    Ok(key
        .to_pkcs8_der()
        .context("RSA key encoding failed")?
        .as_bytes()
        .to_vec())
}

fn rsa_key_pair() -> anyhow::Result<KeyPair> {
    let der = generate_rsa_pkcs8()?;
    KeyPair::from_pkcs8_der_and_sign_algo(&der.as_slice().into(), &rcgen::PKCS_RSA_SHA256)
        .context("RSA key loading failed")
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates whatever is missing of CA, server certificate and CRL; returns what it
    /// created. Existing files are never replaced.
    pub fn ensure(&self, server_names: &[String]) -> anyhow::Result<Vec<PathBuf>> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let mut created = Vec::new();
        if !self.path(CA_CERT).exists() || !self.path(CA_KEY).exists() {
            self.create_ca()?;
            created.extend([self.path(CA_CERT), self.path(CA_KEY)]);
        }
        if !self.path(SERVER_CERT).exists() || !self.path(SERVER_KEY).exists() {
            self.create_server(server_names)?;
            created.extend([self.path(SERVER_CERT), self.path(SERVER_KEY)]);
        }
        if !self.path(CA_CRL).exists() {
            self.write_crl(Vec::new())?;
            created.push(self.path(CA_CRL));
        }
        Ok(created)
    }

    fn create_ca(&self) -> anyhow::Result<()> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Tessera Development CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tessera");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        write_public(&self.path(CA_CERT), &cert.pem())?;
        write_private(&self.path(CA_KEY), &key.serialize_pem())
    }

    fn issuer(&self) -> anyhow::Result<Issuer<'static, KeyPair>> {
        let key_pem = fs::read_to_string(self.path(CA_KEY)).with_context(|| {
            format!(
                "cannot read the CA key {}; run `tessera init` first",
                self.path(CA_KEY).display()
            )
        })?;
        let cert_pem = fs::read_to_string(self.path(CA_CERT)).with_context(|| {
            format!(
                "cannot read the CA certificate {}",
                self.path(CA_CERT).display()
            )
        })?;
        let key = KeyPair::from_pem(&key_pem).context("the CA key is not a PEM private key")?;
        Issuer::from_ca_cert_pem(&cert_pem, key).context("the CA certificate cannot be used")
    }

    fn create_server(&self, names: &[String]) -> anyhow::Result<()> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("localhost"),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(825);
        let cert = params.signed_by(&key, &issuer)?;
        write_public(&self.path(SERVER_CERT), &cert.pem())?;
        write_private(&self.path(SERVER_KEY), &key.serialize_pem())
    }

    /// Issues `out/NAME.crt` and `out/NAME.key` for a client (CN = NAME).
    pub fn issue_client(
        &self,
        name: &str,
        out: &Path,
        rsa: bool,
        validity: Validity,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "the client name '{name}' must use letters, digits, '-', '_' and '.'"
        );
        let issuer = self.issuer()?;
        let key = if rsa {
            rsa_key_pair()?
        } else {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?
        };
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tessera clients");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::days(validity.from_days) - Duration::minutes(5);
        params.not_after = now + Duration::days(validity.to_days);
        let cert = params.signed_by(&key, &issuer)?;
        fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let (crt, key_path) = (
            out.join(format!("{name}.crt")),
            out.join(format!("{name}.key")),
        );
        write_public(&crt, &cert.pem())?;
        write_private(&key_path, &key.serialize_pem())?;
        Ok((crt, key_path))
    }

    /// Adds the certificate to the CRL. Answers its serial (hex), its `x5t#S256`
    /// thumbprint, and whether it was not revoked before.
    pub fn revoke(&self, cert_file: &Path) -> anyhow::Result<(String, String, bool)> {
        let pem =
            fs::read(cert_file).with_context(|| format!("cannot read {}", cert_file.display()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
            .map_err(|_| anyhow!("{} is not a PEM certificate", cert_file.display()))?;
        let cert = pem
            .parse_x509()
            .map_err(|_| anyhow!("{} is not a certificate", cert_file.display()))?;
        let ca_pem = fs::read(self.path(CA_CERT))?;
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(&ca_pem)
            .map_err(|_| anyhow!("the CA certificate is not PEM"))?;
        let ca = ca_pem
            .parse_x509()
            .map_err(|_| anyhow!("the CA certificate cannot be parsed"))?;
        anyhow::ensure!(
            cert.issuer() == ca.subject(),
            "{} was not issued by this CA ({})",
            cert_file.display(),
            ca.subject()
        );
        let serial = cert.raw_serial().to_vec();
        let hex = tessera_types::hex(&serial);
        let thumbprint = tessera_iam::pem::certificate_thumbprint(&pem.contents);
        let mut revoked = self.revoked()?;
        if revoked
            .iter()
            .any(|r| r.serial_number.as_ref() == serial.as_slice())
        {
            return Ok((hex, thumbprint, false));
        }
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: Some(RevocationReason::Unspecified),
            invalidity_date: None,
        });
        self.write_crl(revoked)?;
        Ok((hex, thumbprint, true))
    }

    fn revoked(&self) -> anyhow::Result<Vec<RevokedCertParams>> {
        let path = self.path(CA_CRL);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let pem = fs::read(&path)?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
            .map_err(|_| anyhow!("{} is not PEM", path.display()))?;
        let (_, crl) = x509_parser::parse_x509_crl(&pem.contents)
            .map_err(|_| anyhow!("{} is not a CRL", path.display()))?;
        crl.iter_revoked_certificates()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(r.raw_serial()),
                    revocation_time: OffsetDateTime::from_unix_timestamp(
                        r.revocation_date.timestamp(),
                    )?,
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect()
    }

    fn write_crl(&self, revoked_certs: Vec<RevokedCertParams>) -> anyhow::Result<()> {
        let issuer = self.issuer()?;
        let now = OffsetDateTime::now_utc();
        let number = u64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or_default();
        let crl = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)?;
        // Write then rename, so the server never reads half a CRL.
        let tmp = self.path("ca.crl.tmp");
        write_public(&tmp, &crl.pem()?)?;
        fs::rename(&tmp, self.path(CA_CRL)).context("cannot replace the CRL")
    }
}

/// A certificate file as an audit record names it: serial and subject, or the path when
/// it cannot be read as a certificate.
pub fn describe(cert_file: &Path) -> String {
    let described = fs::read(cert_file).ok().and_then(|pem| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
        let cert = pem.parse_x509().ok()?;
        let serial = tessera_types::hex(cert.raw_serial());
        Some(format!("serial {serial}, subject {}", cert.subject()))
    });
    described.unwrap_or_else(|| cert_file.display().to_string())
}
