//! TLS for Tessera's outgoing calls: the ring provider, HTTPS agents trusting a given CA
//! (optionally presenting a client certificate), and PEM loading shared with the server.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls_pki_types::pem::PemObject as _;

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
pub fn basic_authorization(
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

pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a PEM private key from {}", path.display()))
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
