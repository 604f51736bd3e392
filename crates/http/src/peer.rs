//! The client certificate of a TLS connection, read once when the connection opens and
//! kept with it, so requests on a kept-alive connection do not parse it again.

use std::any::Any;

use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use tessera_iam::request::PresentedCertificate;

/// Describes a DER certificate: its `x5t#S256` thumbprint and its subject and issuer
/// distinguished names (RFC 4514 form, as x509-parser prints them).
pub fn describe_certificate(der: &[u8]) -> Option<PresentedCertificate> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(PresentedCertificate {
        thumbprint: tessera_iam::pem::certificate_thumbprint(der),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
    })
}

/// `HttpServer::on_connect` hook. rustls has already verified the certificate chain,
/// validity and revocation; the first certificate is the client's own.
pub fn on_connect(connection: &dyn Any, data: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;
    if let Some(stream) = connection.downcast_ref::<Tls>() {
        let (_, session) = stream.get_ref();
        if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
            if let Some(described) = describe_certificate(cert.as_ref()) {
                data.insert(described);
            }
        }
    }
}
