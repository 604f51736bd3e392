//! People who log in: patients, their representatives, practitioners and auditors.
//! A user reaches FHIR partitions through the accounts their registration names; an
//! auditor reaches the audit repository instead. Passwords are kept as argon2id PHC
//! strings (RFC 9106 parameters of the `argon2` crate's defaults), never in clear.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use tessera_types::{AccountUrn, RealmName, Secret};

use crate::client::Coding;

/// What a user is, and so what they may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reaches the partitions of their own account(s).
    Patient,
    /// Acts for the patients whose accounts the registration names.
    Representative,
    /// A health professional, reaching the accounts the registration names.
    Practitioner,
    /// Reads the audit repository; reaches no partition.
    Auditor,
}

/// CH:EPR role codes (eCH / EPRA `2.16.756.5.30.1.127.3.10.6`), as IUA's `subject_role`.
const CH_EPR_ROLES: &str = "urn:oid:2.16.756.5.30.1.127.3.10.6";

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Patient,
        Role::Representative,
        Role::Practitioner,
        Role::Auditor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Representative => "representative",
            Role::Practitioner => "practitioner",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == text)
    }

    /// The IUA `subject_role` of a user in this role, where CH:EPR names one.
    pub fn subject_role(self) -> Option<Coding> {
        let code = match self {
            Role::Patient => "PAT",
            Role::Representative => "REP",
            Role::Practitioner => "HCP",
            Role::Auditor => return None,
        };
        Some(Coding {
            system: CH_EPR_ROLES.to_owned(),
            code: code.to_owned(),
        })
    }

    /// The FHIR resource type a `fhirUser` of this role may name.
    pub fn fhir_user_types(self) -> &'static [&'static str] {
        match self {
            Role::Patient => &["Patient"],
            Role::Representative => &["RelatedPerson", "Patient"],
            Role::Practitioner => &["Practitioner", "PractitionerRole"],
            Role::Auditor => &["Practitioner"],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub realm: RealmName,
    /// Stable and opaque: the `sub` of the user's tokens (never reused, never renamed).
    pub id: String,
    pub username: String,
    pub role: Role,
    /// The accounts whose partitions the user reaches (none for an auditor).
    pub accounts: Vec<AccountUrn>,
    /// `Patient/ID`, `Practitioner/ID` or `RelatedPerson/ID`: the user's own FHIR
    /// resource, relative to the FHIR base (the `fhirUser` claim makes it absolute).
    pub fhir_user: Option<String>,
    /// A practitioner's GLN: IUA `national_provider_identifier`.
    pub gln: Option<String>,
    pub enabled: bool,
    /// argon2id PHC string.
    pub password_hash: String,
}

/// Why a value given for a user is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUser {
    #[error("a username is 1 to 64 characters of letters, digits and . _ - @")]
    Username,
    #[error("fhirUser must be {0} followed by a resource id, e.g. {0}/123")]
    FhirUser(String),
    #[error("a GLN is 13 digits")]
    Gln,
    #[error("a {0} needs at least one --account")]
    NoAccount(Role),
    #[error("an auditor reaches the audit repository, not accounts")]
    AuditorAccount,
    #[error("a password needs at least {MIN_PASSWORD_CHARS} characters")]
    ShortPassword,
    #[error("the password could not be hashed")]
    Hash,
}

pub const MIN_PASSWORD_CHARS: usize = 10;

/// Failed logins are forgotten after this many quiet seconds.
pub const FAILURES_FORGOTTEN_AFTER: i64 = 15 * 60;

/// Seconds to wait before a login for a user (or from an address) with `failures`
/// recent failures, the last at `last_at`, is looked at: none for the first three,
/// then 2, 4, 8 ... up to `cap` seconds. Never a lockout: after `cap` seconds one more
/// attempt is always allowed, so nobody can lock a user out for good.
pub fn login_wait(failures: i64, last_at: i64, now: i64, cap: i64) -> i64 {
    if failures < 3 || now - last_at >= FAILURES_FORGOTTEN_AFTER {
        return 0;
    }
    let delay = 1i64
        .checked_shl(u32::try_from(failures - 2).unwrap_or(u32::MAX))
        .filter(|d| *d > 0)
        .map_or(cap, |d| d.min(cap));
    (last_at + delay - now).max(0)
}

pub fn check_username(name: &str) -> Result<(), InvalidUser> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    ok.then_some(()).ok_or(InvalidUser::Username)
}

/// `Type/id` with a type the role allows and a FHIR id (R4: `[A-Za-z0-9\-\.]{1,64}`).
pub fn check_fhir_user(role: Role, reference: &str) -> Result<(), InvalidUser> {
    let types = role.fhir_user_types();
    let invalid = || InvalidUser::FhirUser(types.join(" or "));
    let (ty, id) = reference.split_once('/').ok_or_else(invalid)?;
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    (types.contains(&ty) && id_ok)
        .then_some(())
        .ok_or_else(invalid)
}

pub fn check_gln(gln: &str) -> Result<(), InvalidUser> {
    (gln.len() == 13 && gln.chars().all(|c| c.is_ascii_digit()))
        .then_some(())
        .ok_or(InvalidUser::Gln)
}

/// Accounts a role needs: patients, representatives and practitioners reach patients'
/// data only through accounts; auditors have none.
pub fn check_accounts(role: Role, accounts: &[AccountUrn]) -> Result<(), InvalidUser> {
    match role {
        Role::Auditor if !accounts.is_empty() => Err(InvalidUser::AuditorAccount),
        Role::Patient | Role::Representative | Role::Practitioner if accounts.is_empty() => {
            Err(InvalidUser::NoAccount(role))
        }
        _ => Ok(()),
    }
}

/// An argon2id hash of `password` with a fresh random salt.
pub fn hash_password(password: &Secret) -> Result<String, InvalidUser> {
    if password.expose().chars().count() < MIN_PASSWORD_CHARS {
        return Err(InvalidUser::ShortPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| InvalidUser::Hash)
}

/// Does `password` match the stored hash? A hash that does not parse matches nothing.
pub fn verify_password(password: &Secret, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.expose().as_bytes(), &hash)
            .is_ok()
    })
}

/// A hash of a random password nobody knows, checked when the username is unknown so
/// that a failed login takes as long whether or not the user exists.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let unknown = SaltString::generate(&mut OsRng);
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(unknown.as_str().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let secret = Secret::new("correct horse battery".into());
        let hash = hash_password(&secret).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&secret, &hash));
        assert!(!verify_password(
            &Secret::new("wrong horse battery".into()),
            &hash
        ));
        assert!(!verify_password(&secret, "not a hash"));
        assert!(!verify_password(&secret, decoy_hash()));
        assert_ne!(hash, hash_password(&secret).unwrap(), "salted");
        assert_eq!(
            hash_password(&Secret::new("short".into())),
            Err(InvalidUser::ShortPassword)
        );
    }

    #[test]
    fn failed_logins_slow_down_but_never_lock_out() {
        let cap = 30;
        assert_eq!(login_wait(0, 100, 100, cap), 0);
        assert_eq!(login_wait(2, 100, 100, cap), 0);
        assert_eq!(login_wait(3, 100, 100, cap), 2);
        assert_eq!(login_wait(4, 100, 101, cap), 3);
        assert_eq!(login_wait(6, 100, 100, cap), 16);
        assert_eq!(login_wait(7, 100, 100, cap), 30);
        assert_eq!(login_wait(1000, 100, 100, cap), 30);
        assert_eq!(login_wait(1000, 100, 130, cap), 0, "the cap passes");
        assert_eq!(login_wait(9, 100, 100 + FAILURES_FORGOTTEN_AFTER, cap), 0);
    }

    #[test]
    fn registrations_are_checked() {
        assert!(check_username("anna.muster@example.ch").is_ok());
        assert!(check_username("").is_err());
        assert!(check_username("anna muster").is_err());
        assert!(check_fhir_user(Role::Patient, "Patient/p-1").is_ok());
        assert!(check_fhir_user(Role::Patient, "Practitioner/1").is_err());
        assert!(check_fhir_user(Role::Practitioner, "Practitioner/").is_err());
        assert!(check_fhir_user(Role::Representative, "RelatedPerson/r1").is_ok());
        assert!(check_gln("7601000000000").is_ok());
        assert!(check_gln("76010000000").is_err());
        let some = vec![AccountUrn::try_from("urn:tessera:account:1").unwrap()];
        assert_eq!(
            check_accounts(Role::Patient, &[]),
            Err(InvalidUser::NoAccount(Role::Patient))
        );
        assert_eq!(
            check_accounts(Role::Auditor, &some),
            Err(InvalidUser::AuditorAccount)
        );
        assert!(check_accounts(Role::Patient, &some).is_ok());
        assert!(check_accounts(Role::Auditor, &[]).is_ok());
    }
}
