//! JWS compact serialization (RFC 7515) and JWK (RFC 7517), limited to the asymmetric
//! algorithms Tessera accepts. There is no code path for `alg: none` or HMAC: an
//! algorithm name outside [`Algorithm`] fails to parse, so it can never be verified.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64_decode(text: &str) -> Result<Vec<u8>, JoseError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| JoseError::Malformed("invalid base64url"))
}

/// Signature algorithms (RFC 7518 section 3.1) that Tessera signs or verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    ES256,
    ES384,
    RS256,
    RS384,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::RS256,
        Algorithm::RS384,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
        }
    }

    pub fn parse(name: &str) -> Result<Self, JoseError> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.name() == name)
            .ok_or(JoseError::UnsupportedAlgorithm)
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, Algorithm::RS256 | Algorithm::RS384)
    }

    fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
            Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        }
    }

    fn curve(self) -> Option<&'static str> {
        match self {
            Algorithm::ES256 => Some("P-256"),
            Algorithm::ES384 => Some("P-384"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoseError {
    #[error("malformed JWS: {0}")]
    Malformed(&'static str),
    #[error("the JWS algorithm is not accepted (only ES256, ES384, RS256, RS384)")]
    UnsupportedAlgorithm,
    #[error("no key matches the JWS header")]
    UnknownKey,
    #[error("more than one key matches the JWS header")]
    AmbiguousKey,
    #[error("the JWS signature does not verify")]
    BadSignature,
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
}

/// A public JSON Web Key. Only the members Tessera needs are kept; `alg` and `use`
/// restrict how the key may be used when present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl Jwk {
    /// Can this key verify a signature made with `alg`? A JWK that names an `alg` is
    /// bound to it; `use` other than `sig` rules the key out.
    fn fits(&self, alg: Algorithm) -> bool {
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return false;
        }
        if self.alg.as_deref().is_some_and(|a| a != alg.name()) {
            return false;
        }
        match alg.curve() {
            Some(curve) => self.kty == "EC" && self.crv.as_deref() == Some(curve),
            None => self.kty == "RSA",
        }
    }

    /// Checks that the key has the members its type needs and that they decode.
    pub fn validate(&self) -> Result<(), JoseError> {
        match self.kty.as_str() {
            "EC" => {
                let len = match self.crv.as_deref() {
                    Some("P-256") => 32,
                    Some("P-384") => 48,
                    _ => return Err(JoseError::InvalidKey("EC keys must use P-256 or P-384")),
                };
                let x = b64_decode(self.x.as_deref().unwrap_or_default())?;
                let y = b64_decode(self.y.as_deref().unwrap_or_default())?;
                if x.len() != len || y.len() != len {
                    return Err(JoseError::InvalidKey(
                        "EC coordinates have the wrong length",
                    ));
                }
            }
            "RSA" => {
                let n = b64_decode(self.n.as_deref().unwrap_or_default())?;
                let e = b64_decode(self.e.as_deref().unwrap_or_default())?;
                if n.len() < 256 || e.is_empty() {
                    return Err(JoseError::InvalidKey(
                        "RSA keys must have at least 2048 bits",
                    ));
                }
            }
            _ => return Err(JoseError::InvalidKey("kty must be EC or RSA")),
        }
        if let Some(alg) = &self.alg {
            let alg = Algorithm::parse(alg)?;
            if !self.fits(alg) {
                return Err(JoseError::InvalidKey("alg does not match the key type"));
            }
        }
        Ok(())
    }

    fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> Result<(), JoseError> {
        let decode = |v: &Option<String>| b64_decode(v.as_deref().unwrap_or_default());
        if alg.is_rsa() {
            let key = signature::RsaPublicKeyComponents {
                n: decode(&self.n)?,
                e: decode(&self.e)?,
            };
            let params = match alg {
                Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                _ => &signature::RSA_PKCS1_2048_8192_SHA384,
            };
            key.verify(params, message, sig)
                .map_err(|_| JoseError::BadSignature)
        } else {
            let mut point = vec![4u8];
            point.extend(decode(&self.x)?);
            point.extend(decode(&self.y)?);
            signature::UnparsedPublicKey::new(alg.verification(), point)
                .verify(message, sig)
                .map_err(|_| JoseError::BadSignature)
        }
    }
}

/// The protected header members Tessera reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// The JWK Set URL the signer names (RFC 7515 4.1.2); never fetched, only compared
    /// with the one registered.
    pub jku: Option<String>,
    /// The signer's certificate chain, leaf first, each base64 (not base64url) DER
    /// (RFC 7515 4.1.6); for the caller to validate, never trusted by itself.
    pub x5c: Option<Vec<String>>,
}

/// A JWS whose structure and header are valid but whose signature is not yet checked.
#[derive(Debug)]
pub struct UnverifiedJws<'a> {
    pub header: Header,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> UnverifiedJws<'a> {
    pub fn parse(token: &'a str) -> Result<Self, JoseError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoseError::Malformed("a JWS has three dot-separated parts"));
        };
        let raw_header: Value = serde_json::from_slice(&b64_decode(h)?)
            .map_err(|_| JoseError::Malformed("header is not JSON"))?;
        let alg = raw_header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JoseError::Malformed("header has no alg"))?;
        let alg = Algorithm::parse(alg)?;
        // RFC 7515 4.1.11: we understand no critical extensions, so any `crit` is fatal.
        if raw_header.get("crit").is_some() {
            return Err(JoseError::Malformed("unsupported crit header"));
        }
        // RFC 7515 4.1: these members are strings; any other JSON type is malformed, not
        // absent (a numeric `kid` must not fall back to "the only key").
        let text = |name: &'static str| match raw_header.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(JoseError::Malformed("kid, typ and jku must be strings")),
        };
        let header = Header {
            alg,
            kid: text("kid")?,
            typ: text("typ")?,
            jku: text("jku")?,
            x5c: match raw_header.get("x5c") {
                None => None,
                Some(Value::Array(certs)) => Some(
                    certs
                        .iter()
                        .map(|c| c.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or(JoseError::Malformed("x5c must be an array of strings"))?,
                ),
                Some(_) => return Err(JoseError::Malformed("x5c must be an array of strings")),
            },
        };
        let signing_input = &token[..h.len() + 1 + p.len()];
        Ok(Self {
            header,
            signing_input,
            payload: b64_decode(p)?,
            signature: b64_decode(s)?,
        })
    }

    /// The payload, before verification. Only for choosing which keys to verify with
    /// (e.g. the client named by `iss`); never trust it otherwise.
    pub fn unverified_claims(&self) -> Result<Value, JoseError> {
        serde_json::from_slice(&self.payload)
            .map_err(|_| JoseError::Malformed("payload is not JSON"))
    }

    /// Verifies with the one key of `keys` that fits the header: the key whose `kid`
    /// matches when the header has one, otherwise the only key of the right type.
    pub fn verify(self, keys: &[Jwk]) -> Result<Value, JoseError> {
        let alg = self.header.alg;
        let mut candidates =
            keys.iter()
                .filter(|k| k.fits(alg))
                .filter(|k| match &self.header.kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                });
        let key = candidates.next().ok_or(JoseError::UnknownKey)?;
        if candidates.next().is_some() {
            return Err(JoseError::AmbiguousKey);
        }
        key.verify(alg, self.signing_input.as_bytes(), &self.signature)?;
        self.unverified_claims()
    }
}

enum KeyPair {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private signing key with its public JWK.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    pair: KeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a new EC key. RSA keys are generated outside this crate (ring cannot)
    /// and loaded with [`SigningKey::from_pkcs8`].
    pub fn generate_ec(alg: Algorithm) -> Result<(Self, Vec<u8>), JoseError> {
        let rng = SystemRandom::new();
        let fixed = ec_signing(alg).ok_or(JoseError::InvalidKey("not an EC algorithm"))?;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(fixed, &rng)
            .map_err(|_| JoseError::InvalidKey("key generation failed"))?;
        let key = Self::from_pkcs8(alg, pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Loads a PKCS#8 private key. The `kid` is derived from the public key with the
    /// rule of [`crate::pem::kid_for_spki`].
    pub fn from_pkcs8(alg: Algorithm, pkcs8: &[u8]) -> Result<Self, JoseError> {
        let rng = SystemRandom::new();
        let pair = match ec_signing(alg) {
            Some(fixed) => KeyPair::Ec(
                EcdsaKeyPair::from_pkcs8(fixed, pkcs8, &rng)
                    .map_err(|_| JoseError::InvalidKey("not a PKCS#8 key for this curve"))?,
            ),
            None => KeyPair::Rsa(
                RsaKeyPair::from_pkcs8(pkcs8)
                    .map_err(|_| JoseError::InvalidKey("not a PKCS#8 RSA key"))?,
            ),
        };
        let mut key = Self {
            alg,
            kid: String::new(),
            pair,
            rng,
        };
        key.kid = crate::pem::kid_for_jwk(&key.public_jwk_without_kid())?;
        Ok(key)
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn public_jwk_without_kid(&self) -> Jwk {
        let mut jwk = Jwk {
            kty: String::new(),
            kid: None,
            alg: Some(self.alg.name().to_owned()),
            use_: Some("sig".to_owned()),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
        };
        match &self.pair {
            KeyPair::Ec(pair) => {
                let point = pair.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                jwk.kty = "EC".into();
                jwk.crv = self.alg.curve().map(str::to_owned);
                jwk.x = Some(b64(&point[1..1 + half]));
                jwk.y = Some(b64(&point[1 + half..]));
            }
            KeyPair::Rsa(pair) => {
                // ring exposes the public key as a DER RSAPublicKey (PKCS#1).
                let (n, e) = crate::pem::rsa_components(pair.public().as_ref()).unwrap_or_default();
                jwk.kty = "RSA".into();
                jwk.n = Some(b64(&n));
                jwk.e = Some(b64(&e));
            }
        }
        jwk
    }

    pub fn public_jwk(&self) -> Jwk {
        let mut jwk = self.public_jwk_without_kid();
        jwk.kid = Some(self.kid.clone());
        jwk
    }

    /// Signs `claims` as a compact JWS with the given `typ`.
    pub fn sign(&self, typ: &str, claims: &impl Serialize) -> Result<String, JoseError> {
        self.sign_with_header(typ, serde_json::Map::new(), claims)
    }

    /// Signs with more protected header members (`jku`, ...); `extra` overrides `typ` and
    /// `kid`, so a caller can also send what a hostile signer would.
    pub fn sign_with_header(
        &self,
        typ: &str,
        extra: serde_json::Map<String, Value>,
        claims: &impl Serialize,
    ) -> Result<String, JoseError> {
        let mut header = serde_json::Map::new();
        header.insert("alg".into(), self.alg.name().into());
        header.insert("typ".into(), typ.into());
        header.insert("kid".into(), self.kid.clone().into());
        header.extend(extra);
        let header = serde_json::to_vec(&header).map_err(|_| JoseError::Malformed("header"))?;
        let payload = serde_json::to_vec(claims).map_err(|_| JoseError::Malformed("claims"))?;
        let mut token = b64(&header);
        token.push('.');
        token.push_str(&b64(&payload));
        let sig = match &self.pair {
            KeyPair::Ec(pair) => pair
                .sign(&self.rng, token.as_bytes())
                .map(|s| s.as_ref().to_vec()),
            KeyPair::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public().modulus_len()];
                let padding: &dyn signature::RsaEncoding = match self.alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
                    _ => &signature::RSA_PKCS1_SHA384,
                };
                pair.sign(padding, &self.rng, token.as_bytes(), &mut sig)
                    .map(|()| sig)
            }
        }
        .map_err(|_| JoseError::InvalidKey("signing failed"))?;
        token.push('.');
        token.push_str(&b64(&sig));
        Ok(token)
    }
}

fn ec_signing(alg: Algorithm) -> Option<&'static signature::EcdsaSigningAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        Algorithm::ES384 => Some(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es256() -> SigningKey {
        SigningKey::generate_ec(Algorithm::ES256).unwrap().0
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let key = es256();
        let token = key.sign("JWT", &serde_json::json!({"a": 1})).unwrap();
        let jws = UnverifiedJws::parse(&token).unwrap();
        assert_eq!(jws.header.kid.as_deref(), Some(key.kid()));
        let claims = jws.verify(&[key.public_jwk()]).unwrap();
        assert_eq!(claims["a"], 1);
    }

    #[test]
    fn es384_round_trips() {
        let key = SigningKey::generate_ec(Algorithm::ES384).unwrap().0;
        let token = key.sign("JWT", &serde_json::json!({})).unwrap();
        assert!(UnverifiedJws::parse(&token)
            .unwrap()
            .verify(&[key.public_jwk()])
            .is_ok());
    }

    #[test]
    fn alg_none_and_hmac_do_not_parse() {
        for alg in ["none", "HS256", "HS384", "PS256", "EdDSA", "es256"] {
            let header = b64(format!("{{\"alg\":\"{alg}\"}}").as_bytes());
            let token = format!("{header}.{}.", b64(b"{}"));
            assert_eq!(
                UnverifiedJws::parse(&token).unwrap_err(),
                JoseError::UnsupportedAlgorithm,
                "{alg}"
            );
        }
    }

    #[test]
    fn header_members_that_are_not_strings_are_malformed() {
        for member in [
            r#""kid":7"#,
            r#""kid":null"#,
            r#""typ":["JWT"]"#,
            r#""jku":{}"#,
        ] {
            let header = b64(format!("{{\"alg\":\"ES256\",{member}}}").as_bytes());
            let token = format!("{header}.{}.{}", b64(b"{}"), b64(&[0u8; 64]));
            assert!(
                matches!(UnverifiedJws::parse(&token), Err(JoseError::Malformed(_))),
                "{member}"
            );
        }
        let header = b64(br#"{"alg":"ES256","jku":"https://a.example/jwks"}"#);
        let token = format!("{header}.{}.{}", b64(b"{}"), b64(&[0u8; 64]));
        assert_eq!(
            UnverifiedJws::parse(&token).unwrap().header.jku.as_deref(),
            Some("https://a.example/jwks")
        );
    }

    #[test]
    fn a_signature_from_another_key_fails() {
        let (a, b) = (es256(), es256());
        let token = a.sign("JWT", &serde_json::json!({})).unwrap();
        let mut jwk = b.public_jwk();
        jwk.kid = Some(a.kid().to_owned());
        let err = UnverifiedJws::parse(&token)
            .unwrap()
            .verify(&[jwk])
            .unwrap_err();
        assert_eq!(err, JoseError::BadSignature);
    }

    #[test]
    fn tampered_payload_fails() {
        let key = es256();
        let token = key.sign("JWT", &serde_json::json!({"scope": "a"})).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(b"{\"scope\":\"b\"}"), parts[2]);
        let err = UnverifiedJws::parse(&forged)
            .unwrap()
            .verify(&[key.public_jwk()]);
        assert_eq!(err.unwrap_err(), JoseError::BadSignature);
    }

    #[test]
    fn unknown_kid_and_wrong_key_type_are_unknown_keys() {
        let key = es256();
        let token = key.sign("JWT", &serde_json::json!({})).unwrap();
        let mut other = key.public_jwk();
        other.kid = Some("other".into());
        let err = UnverifiedJws::parse(&token)
            .unwrap()
            .verify(&[other])
            .unwrap_err();
        assert_eq!(err, JoseError::UnknownKey);
        let mut bound_to_rs = key.public_jwk();
        bound_to_rs.alg = Some("RS256".into());
        let err = UnverifiedJws::parse(&token)
            .unwrap()
            .verify(&[bound_to_rs])
            .unwrap_err();
        assert_eq!(err, JoseError::UnknownKey);
    }

    #[test]
    fn two_keys_without_kid_are_ambiguous() {
        let (a, b) = (es256(), es256());
        let header = b64(br#"{"alg":"ES256"}"#);
        let token = format!("{header}.{}.{}", b64(b"{}"), b64(&[0u8; 64]));
        let mut ja = a.public_jwk();
        ja.kid = None;
        let mut jb = b.public_jwk();
        jb.kid = None;
        let err = UnverifiedJws::parse(&token)
            .unwrap()
            .verify(&[ja, jb])
            .unwrap_err();
        assert_eq!(err, JoseError::AmbiguousKey);
    }

    #[test]
    fn crit_headers_are_refused() {
        let header = b64(br#"{"alg":"ES256","crit":["exp"]}"#);
        let token = format!("{header}.{}.{}", b64(b"{}"), b64(&[0u8; 64]));
        assert!(matches!(
            UnverifiedJws::parse(&token),
            Err(JoseError::Malformed(_))
        ));
    }

    #[test]
    fn jwk_validation_catches_bad_keys() {
        let mut jwk = es256().public_jwk();
        assert!(jwk.validate().is_ok());
        jwk.x = Some("AAAA".into());
        assert!(jwk.validate().is_err());
        let mut wrong_alg = es256().public_jwk();
        wrong_alg.alg = Some("RS384".into());
        assert!(wrong_alg.validate().is_err());
    }
}
