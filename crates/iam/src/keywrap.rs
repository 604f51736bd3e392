//! Realm private keys encrypted at rest (AES-256-GCM) with a key encryption key (KEK)
//! kept outside the database: a file or an environment variable the configuration names.
//!
//! A wrapped key is `enc1.{kek id}.{nonce}.{ciphertext}` (base64url), bound to its realm
//! and kid as associated data, so a row copied onto another key's row does not decrypt.
//! The KEK id (a hash of the KEK, never the KEK) says which KEK a key needs, so a wrong
//! or missing KEK is named in the error instead of failing as "corrupt".

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use crate::jose::{b64, b64_decode};

const PREFIX: &str = "enc1";

/// Why a stored key could not be unwrapped (or a KEK not read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyWrapError {
    #[error("the signing keys are encrypted (key encryption key {0}) and no key encryption key is configured: set iam.key_encryption_key_file or iam.key_encryption_key_env")]
    NoKek(String),
    #[error("a signing key is encrypted with key encryption key {stored}, not the configured {configured}: run `tessera keys rewrap --from-key-file OLD` with the old one")]
    OtherKek { stored: String, configured: String },
    #[error("a signing key does not decrypt with its key encryption key (altered, or moved to another realm or kid)")]
    Corrupt,
    #[error("a key encryption key is 32 random bytes in base64url (`tessera init` writes one); this one is not")]
    BadKek,
    #[error("no randomness for a nonce")]
    Random,
}

/// The key encryption key.
pub struct Kek {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek").field("id", &self.id).finish()
    }
}

impl Kek {
    /// A new random KEK, as its text form (base64url of 32 bytes) for a file.
    pub fn generate() -> Result<String, KeyWrapError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyWrapError::Random)?;
        Ok(b64(&bytes))
    }

    /// Reads the text form (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, KeyWrapError> {
        let bytes = b64_decode(text.trim()).map_err(|_| KeyWrapError::BadKek)?;
        if bytes.len() != 32 {
            return Err(KeyWrapError::BadKek);
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyWrapError::BadKek)?;
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(b"tessera key encryption key\0");
        context.update(&bytes);
        let id = b64(&context.finish().as_ref()[..9]);
        Ok(Self {
            key: LessSafeKey::new(key),
            id,
        })
    }

    /// Names the KEK without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Is `stored` already wrapped with this KEK?
    pub fn wrapped(&self, stored: &str) -> bool {
        stored
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.split('.').next())
            == Some(self.id.as_str())
    }

    /// Encrypts `pkcs8`, bound to `realm` and `kid`.
    pub fn wrap(&self, realm: &str, kid: &str, pkcs8: &[u8]) -> Result<String, KeyWrapError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyWrapError::Random)?;
        let mut sealed = pkcs8.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated(realm, kid)),
                &mut sealed,
            )
            .map_err(|_| KeyWrapError::Corrupt)?;
        Ok(format!(
            "{PREFIX}.{}.{}.{}",
            self.id,
            b64(&nonce),
            b64(&sealed)
        ))
    }

    fn open(
        &self,
        realm: &str,
        kid: &str,
        nonce: &str,
        sealed: &str,
    ) -> Result<Vec<u8>, KeyWrapError> {
        let nonce: [u8; NONCE_LEN] = b64_decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(KeyWrapError::Corrupt)?;
        let mut sealed = b64_decode(sealed).map_err(|_| KeyWrapError::Corrupt)?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated(realm, kid)),
                &mut sealed,
            )
            .map_err(|_| KeyWrapError::Corrupt)?;
        Ok(plain.to_vec())
    }
}

fn associated(realm: &str, kid: &str) -> Vec<u8> {
    format!("tessera signing key\0{realm}\0{kid}").into_bytes()
}

/// Is the stored form encrypted (rather than the plain base64 of keys written before
/// encryption at rest, or without a KEK)?
pub fn is_wrapped(stored: &str) -> bool {
    stored
        .strip_prefix(PREFIX)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// The PKCS#8 bytes of a stored key: unwrapped with `kek` when it is encrypted, decoded
/// when it is a plain (legacy) key.
pub fn unwrap(
    kek: Option<&Kek>,
    realm: &str,
    kid: &str,
    stored: &str,
) -> Result<Vec<u8>, KeyWrapError> {
    if !is_wrapped(stored) {
        use base64::Engine as _;
        return base64::engine::general_purpose::STANDARD
            .decode(stored)
            .map_err(|_| KeyWrapError::Corrupt);
    }
    let mut parts = stored.split('.');
    let (Some(_), Some(id), Some(nonce), Some(sealed), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(KeyWrapError::Corrupt);
    };
    let kek = kek.ok_or_else(|| KeyWrapError::NoKek(id.to_owned()))?;
    if kek.id != id {
        return Err(KeyWrapError::OtherKek {
            stored: id.to_owned(),
            configured: kek.id.clone(),
        });
    }
    kek.open(realm, kid, nonce, sealed)
}

/// The stored form of a key: wrapped with `kek`, or plain base64 without one.
pub fn store(
    kek: Option<&Kek>,
    realm: &str,
    kid: &str,
    pkcs8: &[u8],
) -> Result<String, KeyWrapError> {
    match kek {
        Some(kek) => kek.wrap(realm, kid, pkcs8),
        None => {
            use base64::Engine as _;
            Ok(base64::engine::general_purpose::STANDARD.encode(pkcs8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::parse(&Kek::generate().unwrap()).unwrap()
    }

    #[test]
    fn a_wrapped_key_opens_only_with_its_kek_realm_and_kid() {
        let (a, b) = (kek(), kek());
        let stored = store(Some(&a), "cara", "k1", b"secret pkcs8").unwrap();
        assert!(is_wrapped(&stored));
        assert!(a.wrapped(&stored) && !b.wrapped(&stored));
        assert!(!stored.contains(&b64(b"secret pkcs8")));
        assert_eq!(
            unwrap(Some(&a), "cara", "k1", &stored).unwrap(),
            b"secret pkcs8"
        );
        assert_eq!(
            unwrap(Some(&a), "other", "k1", &stored).unwrap_err(),
            KeyWrapError::Corrupt
        );
        assert_eq!(
            unwrap(Some(&a), "cara", "k2", &stored).unwrap_err(),
            KeyWrapError::Corrupt
        );
        assert!(matches!(
            unwrap(Some(&b), "cara", "k1", &stored),
            Err(KeyWrapError::OtherKek { .. })
        ));
        assert!(matches!(
            unwrap(None, "cara", "k1", &stored),
            Err(KeyWrapError::NoKek(id)) if id == a.id()
        ));
        // One flipped character of the ciphertext.
        let mut altered = stored.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(
            unwrap(Some(&a), "cara", "k1", &altered).unwrap_err(),
            KeyWrapError::Corrupt
        );
        // Two wraps of one key differ (a fresh nonce each).
        assert_ne!(
            stored,
            store(Some(&a), "cara", "k1", b"secret pkcs8").unwrap()
        );
    }

    #[test]
    fn plain_keys_of_older_installations_still_read() {
        let plain = store(None, "cara", "k1", b"pkcs8").unwrap();
        assert!(!is_wrapped(&plain));
        assert_eq!(unwrap(None, "cara", "k1", &plain).unwrap(), b"pkcs8");
        assert_eq!(
            unwrap(Some(&kek()), "cara", "k1", &plain).unwrap(),
            b"pkcs8"
        );
    }

    #[test]
    fn a_kek_is_32_bytes_of_base64url() {
        assert_eq!(Kek::parse("short").unwrap_err(), KeyWrapError::BadKek);
        assert_eq!(
            Kek::parse(&b64(&[1u8; 31])).unwrap_err(),
            KeyWrapError::BadKek
        );
        let text = Kek::generate().unwrap();
        assert_eq!(
            Kek::parse(&format!("{text}\n")).unwrap().id(),
            Kek::parse(&text).unwrap().id()
        );
        assert!(!format!("{:?}", Kek::parse(&text).unwrap()).contains(&text));
    }
}
