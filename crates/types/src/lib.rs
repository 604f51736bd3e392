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
