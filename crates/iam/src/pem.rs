//! Public keys between PEM (SubjectPublicKeyInfo) and JWK, and the key id rule of the
//! SMART backend-services client the project was specified with: `kid` = the first 16 characters of base64url(SHA-256(SPKI PEM)), where the
//! PEM is the canonical form Python's `cryptography` writes (64-character lines).
//!
//! The DER handled here is the tiny fixed subset SPKI needs, so a full ASN.1 library
//! is not worth its weight.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::digest;

use crate::jose::{b64, b64_decode, Algorithm, JoseError, Jwk};

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

fn bad(reason: &'static str) -> JoseError {
    JoseError::InvalidKey(reason)
}

/// Returns the DER inside the first PEM block labelled `label`.
pub fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop].split_whitespace().collect();
    STANDARD.decode(body).ok()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A DER reader over one level of TLVs.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn read(&mut self, tag: u8) -> Result<&'a [u8], JoseError> {
        let (&t, rest) = self.0.split_first().ok_or(bad("truncated DER"))?;
        if t != tag {
            return Err(bad("unexpected DER tag"));
        }
        let (&first, mut rest) = rest.split_first().ok_or(bad("truncated DER"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 3 || rest.len() < count {
                return Err(bad("bad DER length"));
            }
            let len = rest[..count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            rest = &rest[count..];
            len
        };
        if rest.len() < len {
            return Err(bad("truncated DER"));
        }
        let (value, tail) = rest.split_at(len);
        self.0 = tail;
        Ok(value)
    }

    fn finish(&self) -> Result<(), JoseError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad("trailing DER bytes"))
        }
    }
}

fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

fn der_unsigned(value: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = {
        let first = value.iter().position(|b| *b != 0).unwrap_or(value.len());
        &value[first..]
    };
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(trimmed);
    der_tlv(0x02, &body)
}

fn strip_integer(value: &[u8]) -> &[u8] {
    let first = value.iter().position(|b| *b != 0).unwrap_or(value.len());
    &value[first..]
}

/// The modulus and exponent of a DER RSAPublicKey (PKCS#1), without leading zeros.
pub(crate) fn rsa_components(rsa_public_key: &[u8]) -> Result<(Vec<u8>, Vec<u8>), JoseError> {
    let mut outer = Der(rsa_public_key);
    let mut seq = Der(outer.read(0x30)?);
    outer.finish()?;
    let n = strip_integer(seq.read(0x02)?).to_vec();
    let e = strip_integer(seq.read(0x02)?).to_vec();
    seq.finish()?;
    Ok((n, e))
}

fn rsa_jwk(rsa_public_key: &[u8]) -> Result<Jwk, JoseError> {
    let (n, e) = rsa_components(rsa_public_key)?;
    Ok(Jwk {
        kty: "RSA".into(),
        n: Some(b64(&n)),
        e: Some(b64(&e)),
        ..empty_jwk()
    })
}

fn empty_jwk() -> Jwk {
    Jwk {
        kty: String::new(),
        kid: None,
        alg: None,
        use_: None,
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
    }
}

/// Parses DER SubjectPublicKeyInfo into a JWK (without `kid`, `alg` or `use`).
pub fn spki_to_jwk(spki: &[u8]) -> Result<Jwk, JoseError> {
    let mut outer = Der(spki);
    let mut seq = Der(outer.read(0x30)?);
    outer.finish()?;
    let mut alg = Der(seq.read(0x30)?);
    let bits = seq.read(0x03)?;
    seq.finish()?;
    let (&unused, key) = bits.split_first().ok_or(bad("empty key"))?;
    if unused != 0 {
        return Err(bad("key bit string has unused bits"));
    }
    let oid = alg.read(0x06)?;
    if oid == OID_RSA {
        return rsa_jwk(key);
    }
    if oid != OID_EC_PUBLIC_KEY {
        return Err(bad(
            "only EC (P-256, P-384) and RSA public keys are supported",
        ));
    }
    let curve = alg.read(0x06)?;
    let (crv, len) = if curve == OID_P256 {
        ("P-256", 32)
    } else if curve == OID_P384 {
        ("P-384", 48)
    } else {
        return Err(bad("only the P-256 and P-384 curves are supported"));
    };
    if key.len() != 1 + 2 * len || key[0] != 4 {
        return Err(bad("EC keys must be uncompressed points"));
    }
    Ok(Jwk {
        kty: "EC".into(),
        crv: Some(crv.into()),
        x: Some(b64(&key[1..1 + len])),
        y: Some(b64(&key[1 + len..])),
        ..empty_jwk()
    })
}

/// The DER SubjectPublicKeyInfo of a JWK.
pub fn jwk_to_spki(jwk: &Jwk) -> Result<Vec<u8>, JoseError> {
    jwk.validate()?;
    let field = |v: &Option<String>| b64_decode(v.as_deref().unwrap_or_default());
    let (alg_id, key) = match jwk.kty.as_str() {
        "EC" => {
            let curve = match jwk.crv.as_deref() {
                Some("P-256") => OID_P256,
                _ => OID_P384,
            };
            let mut alg = der_tlv(0x06, OID_EC_PUBLIC_KEY);
            alg.extend(der_tlv(0x06, curve));
            let mut point = vec![4u8];
            point.extend(field(&jwk.x)?);
            point.extend(field(&jwk.y)?);
            (alg, point)
        }
        _ => {
            let mut alg = der_tlv(0x06, OID_RSA);
            alg.extend(der_tlv(0x05, &[]));
            let mut ints = der_unsigned(&field(&jwk.n)?);
            ints.extend(der_unsigned(&field(&jwk.e)?));
            (alg, der_tlv(0x30, &ints))
        }
    };
    let mut bits = vec![0u8];
    bits.extend(key);
    let mut body = der_tlv(0x30, &alg_id);
    body.extend(der_tlv(0x03, &bits));
    Ok(der_tlv(0x30, &body))
}

/// The canonical PEM (`PUBLIC KEY`, 64-character lines) of a JWK's public key.
pub fn jwk_to_pem(jwk: &Jwk) -> Result<String, JoseError> {
    Ok(pem_encode("PUBLIC KEY", &jwk_to_spki(jwk)?))
}

/// RFC 8705 3.1: a certificate's `x5t#S256` thumbprint, base64url of the SHA-256 of
/// its DER, as certificate-bound tokens carry it in `cnf`.
pub fn certificate_thumbprint(der: &[u8]) -> String {
    b64(digest::digest(&digest::SHA256, der).as_ref())
}

/// The key id rule (module docs), applied to the canonical PEM of the key.
pub fn kid_for_jwk(jwk: &Jwk) -> Result<String, JoseError> {
    let pem = jwk_to_pem(jwk)?;
    let hash = digest::digest(&digest::SHA256, pem.as_bytes());
    let mut kid = b64(hash.as_ref());
    kid.truncate(16);
    Ok(kid)
}

/// Converts a PEM public key (`PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`) to the JWK a
/// client is registered with: `use: sig`, `kid` by the module's key id rule, and `alg` set to
/// `alg` (RS384 or ES384 are what SMART backend services recommend).
pub fn public_pem_to_jwk(pem: &str, alg: Option<Algorithm>) -> Result<Jwk, JoseError> {
    let mut jwk = if let Some(der) = pem_block(pem, "PUBLIC KEY") {
        spki_to_jwk(&der)?
    } else if let Some(der) = pem_block(pem, "RSA PUBLIC KEY") {
        rsa_jwk(&der)?
    } else {
        return Err(bad("expected a PEM 'PUBLIC KEY' or 'RSA PUBLIC KEY' block"));
    };
    let alg = match (alg, jwk.kty.as_str(), jwk.crv.as_deref()) {
        (Some(alg), _, _) => alg,
        (None, "RSA", _) => Algorithm::RS384,
        (None, _, Some("P-256")) => Algorithm::ES256,
        (None, _, _) => Algorithm::ES384,
    };
    jwk.alg = Some(alg.name().into());
    jwk.use_ = Some("sig".into());
    jwk.validate()?;
    jwk.kid = Some(kid_for_jwk(&jwk)?);
    Ok(jwk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RSA public key of the reference backend-services client (`../shared/seeds`).
    const SEED_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwnNZRLN/bjgBLe5BujbS
zv0ehKr1txlNAZK2Bgr9BI1Y7HQjYM+8btv5KN5YEsF99Q49l4kz0eQjBF8pz3yw
xf9Dj0DBvF6i+tuUtn1tc80R2gV99+MK85kbic7odNHS/VMPMZr/wL3VMu7/4y+g
DOve4EWOWney532+kAla/L4xZxjGmoR7GiN2iuxx+2L4J7szIcWG6hdlA0sXPhTO
KZ6jmjzUngdihOrnTVkC9UKUBTD+DgL6FMcptiP4SKmIlE4glcWvVvgJfZ2miFp5
W3MYGJjd70KFAP6wVw+Axudcpus7NpZUoojtPjKVKVISvQ1bzH5OA3rqD5ZhulwO
tQIDAQAB
-----END PUBLIC KEY-----
";

    #[test]
    fn seed_key_converts_to_the_seed_jwk() {
        let jwk = public_pem_to_jwk(SEED_PEM, None).unwrap();
        assert_eq!(jwk.kty, "RSA");
        assert_eq!(jwk.e.as_deref(), Some("AQAB"));
        assert_eq!(jwk.alg.as_deref(), Some("RS384"));
        assert_eq!(
            jwk.n.as_deref(),
            Some("wnNZRLN_bjgBLe5BujbSzv0ehKr1txlNAZK2Bgr9BI1Y7HQjYM-8btv5KN5YEsF99Q49l4kz0eQjBF8pz3ywxf9Dj0DBvF6i-tuUtn1tc80R2gV99-MK85kbic7odNHS_VMPMZr_wL3VMu7_4y-gDOve4EWOWney532-kAla_L4xZxjGmoR7GiN2iuxx-2L4J7szIcWG6hdlA0sXPhTOKZ6jmjzUngdihOrnTVkC9UKUBTD-DgL6FMcptiP4SKmIlE4glcWvVvgJfZ2miFp5W3MYGJjd70KFAP6wVw-Axudcpus7NpZUoojtPjKVKVISvQ1bzH5OA3rqD5ZhulwOtQ")
        );
        // The seed's own rule, computed independently over the PEM text above.
        let hash = digest::digest(&digest::SHA256, SEED_PEM.as_bytes());
        assert_eq!(jwk.kid.as_deref(), Some(&b64(hash.as_ref())[..16]));
    }

    #[test]
    fn spki_round_trips_for_ec_and_rsa() {
        let der = pem_block(SEED_PEM, "PUBLIC KEY").unwrap();
        assert_eq!(jwk_to_spki(&spki_to_jwk(&der).unwrap()).unwrap(), der);
        let (key, _) = crate::jose::SigningKey::generate_ec(Algorithm::ES256).unwrap();
        let spki = jwk_to_spki(&key.public_jwk()).unwrap();
        let back = spki_to_jwk(&spki).unwrap();
        assert_eq!(back.x, key.public_jwk().x);
        assert_eq!(back.y, key.public_jwk().y);
    }

    #[test]
    fn kid_ignores_pem_line_layout() {
        let reflowed: String = SEED_PEM.replace('\n', "\r\n");
        let a = public_pem_to_jwk(SEED_PEM, None).unwrap();
        let b = public_pem_to_jwk(&reflowed, None).unwrap();
        assert_eq!(a.kid, b.kid);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(public_pem_to_jwk("hello", None).is_err());
        let bogus = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(public_pem_to_jwk(bogus, None).is_err());
    }
}
