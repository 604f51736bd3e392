//! The client certificate of a TLS connection, read once when the connection opens and
//! kept with it, so requests on a kept-alive connection do not parse it again.

use std::any::Any;

use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use tessera_iam::request::PresentedCertificate;

use crate::capped::Capped;

/// Describes a DER certificate: its `x5t#S256` thumbprint and its subject and issuer
/// distinguished names (RFC 4514 form, as x509-parser prints them).
fn describe_certificate(der: &[u8]) -> Option<PresentedCertificate> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(PresentedCertificate {
        thumbprint: tessera_iam::pem::certificate_thumbprint(der),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
    })
}

/// Certificates described before, by their DER. A client that opens a connection per
/// request (as IHE actors often do) presents the same certificate every time; parsing it
/// and printing its names was 1% of such a connection's instructions (40,000). The description
/// depends on the DER alone, and rustls has verified the certificate (chain, validity,
/// CRL) at each handshake before it gets here. At most [`Self::CAPACITY`] entries;
/// emptied when full.
pub struct Described(Capped<PresentedCertificate>);

impl Default for Described {
    fn default() -> Self {
        Self(Capped::new(Self::CAPACITY))
    }
}

impl Described {
    const CAPACITY: usize = 1024;

    pub fn describe(&self, der: &[u8]) -> Option<PresentedCertificate> {
        if let Some(known) = self.0.get(der) {
            return Some(known);
        }
        let described = describe_certificate(der)?;
        self.0.insert(der.into(), described.clone());
        Some(described)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// `HttpServer::on_connect` hook. rustls has already verified the certificate chain,
/// validity and revocation; the first certificate is the client's own.
pub fn on_connect(described: &Described, connection: &dyn Any, data: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;
    if let Some(stream) = connection.downcast_ref::<Tls>() {
        let (_, session) = stream.get_ref();
        if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
            if let Some(described) = described.describe(cert.as_ref()) {
                data.insert(described);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn certificate(name: &str) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_is_described_as_parsing_it_does_from_the_first_time_on() {
        let described = Described::default();
        let (a, b) = (certificate("client a"), certificate("client b"));
        for der in [&a, &b, &a, &b] {
            assert_eq!(described.describe(der), describe_certificate(der));
        }
        assert_eq!(described.len(), 2);
        let a = described.describe(&a).unwrap();
        assert_eq!(a.subject, "CN=client a");
        assert_ne!(a.thumbprint, described.describe(&b).unwrap().thumbprint);
        assert_eq!(described.describe(b"not a certificate"), None);
        assert_eq!(described.len(), 2);
    }

    #[test]
    fn the_cache_starts_afresh_when_full() {
        let described = Described::default();
        let der = certificate("client");
        // Distinct keys without generating a thousand certificates: what is cached is
        // only what parses, so fill it directly.
        for n in 0..Described::CAPACITY {
            described.0.insert(
                n.to_be_bytes().to_vec().into(),
                describe_certificate(&der).unwrap(),
            );
        }
        assert_eq!(described.len(), Described::CAPACITY);
        assert_eq!(described.describe(&der), describe_certificate(&der));
        assert_eq!(described.len(), 1);
    }
}
