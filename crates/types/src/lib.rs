//! Validated newtypes shared by every Tessera crate.
//!
//! A value of one of these types has passed its `TryFrom<&str>` check, so code that
//! receives one never re-validates it. This crate depends on nothing but serde and
//! thiserror: no HTTP, no SQL, no crypto.

#![forbid(unsafe_code)]

pub mod smart;

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string was refused as one of the newtypes below.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct InvalidValue {
    pub kind: &'static str,
    pub reason: &'static str,
}

fn invalid(kind: &'static str, reason: &'static str) -> InvalidValue {
    InvalidValue { kind, reason }
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidValue;
            fn try_from(value: &str) -> Result<Self, InvalidValue> {
                let check: fn(&str) -> Result<(), &'static str> = $check;
                check(value).map_err(|reason| invalid($kind, reason))?;
                Ok(Self(value.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, InvalidValue> {
                Self::try_from(value.as_str())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                Self::try_from(s)
            }
        }
    };
}

fn bounded(value: &str, max: usize) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > max {
        return Err("too long");
    }
    Ok(())
}

/// RFC 6749 appendix A: VSCHAR = %x20-7E. We also refuse spaces and ':' is allowed
/// because client ids such as URNs are common.
fn client_id_rule(value: &str) -> Result<(), &'static str> {
    bounded(value, 255)?;
    if value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err("only printable ASCII without spaces is allowed")
    }
}

fn realm_rule(value: &str) -> Result<(), &'static str> {
    bounded(value, 64)?;
    if value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err("use lowercase letters, digits, '-' and '_'")
    }
}

/// RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
fn scope_rule(value: &str) -> Result<(), &'static str> {
    bounded(value, 256)?;
    if value
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    {
        Ok(())
    } else {
        Err("scope tokens are printable ASCII without spaces, '\"' or '\\'")
    }
}

/// A partition is a path segment of `/fhir/{partition}`: keep it URL-safe. The single
/// value `*` stands for every partition (a registration for all of them).
fn partition_rule(value: &str) -> Result<(), &'static str> {
    if value == PartitionId::ALL {
        return Ok(());
    }
    bounded(value, 64)?;
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        Ok(())
    } else {
        Err("use letters, digits, '-', '_' and '.'")
    }
}

fn jti_rule(value: &str) -> Result<(), &'static str> {
    bounded(value, 255)?;
    if value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err("only printable ASCII without spaces is allowed")
    }
}

string_newtype!(
    /// An OAuth client identifier, unique within a realm.
    ClientId,
    "client_id",
    client_id_rule
);
string_newtype!(
    /// A realm: an independent issuer with its own clients and keys (Keycloak's word).
    RealmName,
    "realm",
    realm_rule
);
string_newtype!(
    /// One scope token (RFC 6749 section 3.3).
    Scope,
    "scope",
    scope_rule
);
string_newtype!(
    /// The name of a FHIR Vault partition, as it appears in `/fhir/{partition}`.
    PartitionId,
    "partition",
    partition_rule
);
string_newtype!(
    /// A JWT ID (`jti`).
    Jti,
    "jti",
    jti_rule
);

impl PartitionId {
    /// The wildcard: every partition.
    pub const ALL: &'static str = "*";

    pub fn is_all(&self) -> bool {
        self.0 == Self::ALL
    }
}

/// CARA's MPI-ID URN: `urn:<namespace>:mpi_id:<OID>/<UUID>`, e.g.
/// `urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1`.
fn mpi_id_rule(value: &str) -> Result<(), &'static str> {
    bounded(value, 200)?;
    let parts = MpiIdUrn::split(value).ok_or("expected urn:<namespace>:mpi_id:<OID>/<UUID>")?;
    let (namespace, oid, uuid) = parts;
    if namespace.is_empty()
        || !namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("the namespace uses lowercase letters, digits and '-'");
    }
    let oid_ok = !oid.is_empty()
        && oid.split('.').all(|arc| {
            !arc.is_empty()
                && arc.bytes().all(|b| b.is_ascii_digit())
                && (arc == "0" || !arc.starts_with('0'))
        });
    if !oid_ok {
        return Err("the assigning authority must be an OID such as 2.16.756.5.30.1");
    }
    let groups: Vec<&str> = uuid.split('-').collect();
    let lengths_ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n);
    if !lengths_ok || !uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err("the patient id must be a UUID");
    }
    Ok(())
}

/// An Account URN: a URN whose last segment is the account id (letters, digits, '-').
fn account_urn_rule(value: &str) -> Result<(), &'static str> {
    bounded(value, 200)?;
    let rest = value
        .strip_prefix("urn:")
        .ok_or("an Account URN starts with urn:")?;
    let (_, id) = rest
        .rsplit_once(':')
        .ok_or("expected urn:<namespace>:...:<id>")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("the account id uses letters, digits and '-'");
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'-' || b == b'.')
    {
        return Err("an Account URN uses letters, digits, ':', '.' and '-'");
    }
    Ok(())
}

string_newtype!(
    /// A patient's MPI-ID in CARA's URN form.
    MpiIdUrn,
    "MPI-ID URN",
    mpi_id_rule
);
string_newtype!(
    /// The URN naming a patient's account (and so the data partitions of the account).
    AccountUrn,
    "Account URN",
    account_urn_rule
);

impl MpiIdUrn {
    /// (namespace, assigning authority OID, patient UUID) of an MPI-ID URN.
    fn split(value: &str) -> Option<(&str, &str, &str)> {
        let rest = value.strip_prefix("urn:")?;
        let (namespace, rest) = rest.split_once(":mpi_id:")?;
        let (oid, uuid) = rest.split_once('/')?;
        Some((namespace, oid, uuid))
    }

    /// The assigning authority (an OID) and the patient's id within it.
    pub fn authority_and_id(&self) -> (&str, &str) {
        match Self::split(&self.0) {
            Some((_, oid, uuid)) => (oid, uuid),
            None => ("", ""),
        }
    }
}

/// A set of scope tokens, kept sorted so that its string form is stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses the space-delimited form of RFC 6749 section 3.3.
    pub fn parse(value: &str) -> Result<Self, InvalidValue> {
        value
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(Scope::try_from)
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// The scopes of `self` that are missing from `allowed`.
    pub fn not_in<'a>(&'a self, allowed: &'a ScopeSet) -> impl Iterator<Item = &'a Scope> {
        self.0.difference(&allowed.0)
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for scope in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
            first = false;
        }
        Ok(())
    }
}

/// A secret (client secret, private key material). Its `Debug` never shows the value,
/// so it cannot leak through a log line or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Formats 16 random bytes as a version 4 UUID (RFC 9562), setting the version and
/// variant bits. The caller brings the randomness (this crate has no RNG).
pub fn uuid_v4(bytes: [u8; 16]) -> String {
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// A version 7 UUID (RFC 9562): the milliseconds since the Unix epoch, then 74 random
/// bits from `random`. Ids made later sort later (to the millisecond), so an index on
/// them grows at its end instead of everywhere; the caller brings the time and the
/// randomness.
pub fn uuid_v7(unix_ms: u64, random: [u8; 10]) -> String {
    uuid::Builder::from_unix_timestamp_millis(unix_ms, &random)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Lower-case hexadecimal of `bytes` (digests, serials), written into one string: the
/// audit drainer hashes every record, and a `format!` per byte was 7% of its time.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    text
}

/// Seconds since the Unix epoch. Domain functions take the current time as one of these
/// instead of reading the clock, so tests can pin it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixTime(pub i64);

impl UnixTime {
    pub fn plus_seconds(self, seconds: i64) -> Self {
        Self(self.0.saturating_add(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_writes_every_byte_as_two_lower_case_digits() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff, 0x7b]), "000fa0ff7b");
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
    }

    #[test]
    fn scope_set_parses_sorts_and_deduplicates() {
        let set = ScopeSet::parse("system/Patient.rs  openid system/Patient.rs").unwrap();
        assert_eq!(set.to_string(), "openid system/Patient.rs");
    }

    #[test]
    fn scope_set_refuses_quotes_and_backslashes() {
        assert!(ScopeSet::parse("a\"b").is_err());
        assert!(ScopeSet::parse("a\\b").is_err());
        assert!(ScopeSet::parse("caf\u{e9}").is_err());
    }

    #[test]
    fn realm_names_are_restricted() {
        assert!(RealmName::try_from("cara").is_ok());
        assert!(RealmName::try_from("Cara").is_err());
        assert!(RealmName::try_from("../etc").is_err());
        assert!(RealmName::try_from("").is_err());
    }

    #[test]
    fn client_ids_refuse_spaces_and_control_characters() {
        assert!(ClientId::try_from("bestclinic-tcu").is_ok());
        assert!(ClientId::try_from("a b").is_err());
        assert!(ClientId::try_from("a\nb").is_err());
    }

    #[test]
    fn partition_is_a_safe_path_segment() {
        assert!(PartitionId::try_from("p-123_x.y").is_ok());
        assert!(PartitionId::try_from("a/b").is_err());
        assert!(PartitionId::try_from("*").unwrap().is_all());
        assert!(PartitionId::try_from("a*").is_err());
        assert!(PartitionId::try_from("..%2f").is_err());
    }

    #[test]
    fn mpi_ids_follow_the_cara_form() {
        let good =
            "urn:cara:mpi_id:2.16.756.5.30.1.191.1.0.2.1/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1";
        let mpi = MpiIdUrn::try_from(good).unwrap();
        assert_eq!(
            mpi.authority_and_id(),
            (
                "2.16.756.5.30.1.191.1.0.2.1",
                "1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1"
            )
        );
        for bad in [
            "urn:cara:mpi:2.16.756/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1",
            "urn:cara:mpi_id:2.16.756/not-a-uuid",
            "urn:cara:mpi_id:2..16/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1",
            "urn:cara:mpi_id:2.016/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1",
            "urn:Cara:mpi_id:2.16/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1",
            "urn:cara:mpi_id:2.16/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1x",
            "cara:mpi_id:2.16/1b8f5a07-4c5b-4bbd-bf35-5a10a2b6c2b1",
        ] {
            assert!(MpiIdUrn::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn account_urns_are_checked() {
        assert!(AccountUrn::try_from("urn:tessera:account:0f3a").is_ok());
        assert!(AccountUrn::try_from("urn:tessera:account:").is_err());
        assert!(AccountUrn::try_from("urn:tessera:account:a/b").is_err());
        assert!(AccountUrn::try_from("tessera:account:a").is_err());
    }

    #[test]
    fn uuids_carry_version_4_and_the_rfc_variant() {
        let id = uuid_v4([0xff; 16]);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn version_7_uuids_carry_the_millisecond_and_sort_by_it() {
        let id = uuid_v7(0x0123_4567_89ab, [0; 10]);
        assert_eq!(id, "01234567-89ab-7000-8000-000000000000");
        let earlier = uuid_v7(1_764_633_600_000, [0xff; 10]);
        let later = uuid_v7(1_764_633_600_001, [0; 10]);
        assert!(earlier < later, "{earlier} {later}");
        assert_eq!(&later[14..15], "7");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn newtypes_deserialize_through_validation() {
        let ok: Result<ClientId, _> = serde_json::from_str("\"abc\"");
        assert!(ok.is_ok());
        let bad: Result<ClientId, _> = serde_json::from_str("\"a b\"");
        assert!(bad.is_err());
    }
}
