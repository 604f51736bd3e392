//! SMART on FHIR scope syntax (v1 `read`/`write`/`*` and v2 `cruds`), so that a scope
//! registered for a client can be compared with one a client asks for.
//! See <https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html>.

use crate::Scope;

/// The resource type of the audit trail. A `*` scope never covers it: the audit trail
/// (ITI-81 reads, ITI-20 feeds) is granted only by a scope that names it.
pub const AUDIT_EVENT: &str = "AuditEvent";

/// `patient/`, `user/` or `system/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Patient,
    User,
    System,
}

/// A parsed SMART resource scope such as `system/Observation.rs?category=laboratory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartScope {
    pub context: Context,
    /// A FHIR resource type, or `*`.
    pub resource_type: String,
    /// Permitted interactions as a subset of `c r u d s`, v1 names translated.
    pub permissions: Permissions,
    /// The query restriction after `?`, if any (v2 only).
    pub query: Option<String>,
}

/// Bit set of the SMART v2 interactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions(u8);

impl Permissions {
    pub const CREATE: Permissions = Permissions(1);
    pub const READ: Permissions = Permissions(2);
    pub const UPDATE: Permissions = Permissions(4);
    pub const DELETE: Permissions = Permissions(8);
    pub const SEARCH: Permissions = Permissions(16);

    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// Only `r` and `s`: nothing that changes data.
    pub fn reads_only(self) -> bool {
        self.0 & !(Self::READ.0 | Self::SEARCH.0) == 0
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            // SMART v1 names, mapped as the v2 spec maps them.
            "read" => return Some(Permissions(2 | 16)),
            "write" => return Some(Permissions(1 | 4 | 8)),
            "*" => return Some(Permissions(31)),
            _ => {}
        }
        // v2: letters in the order c r u d s, each at most once, at least one.
        let mut bits = 0u8;
        let mut last = None;
        for ch in text.chars() {
            let index = "cruds".find(ch)?;
            if last.is_some_and(|l| index <= l) {
                return None;
            }
            last = Some(index);
            bits |= 1 << index;
        }
        (bits != 0).then_some(Permissions(bits))
    }
}

impl SmartScope {
    /// Parses a SMART resource scope; `None` for anything else (`openid`, `launch`, ...).
    pub fn parse(scope: &Scope) -> Option<Self> {
        let text = scope.as_str();
        let (context, rest) = text.split_once('/')?;
        let context = match context {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return None,
        };
        let (resource, query) = match rest.split_once('?') {
            Some((r, q)) if !q.is_empty() => (r, Some(q.to_owned())),
            Some(_) => return None,
            None => (rest, None),
        };
        let (resource_type, permissions) = resource.split_once('.')?;
        let valid_type = resource_type == "*"
            || (resource_type.starts_with(|c: char| c.is_ascii_uppercase())
                && resource_type.chars().all(|c| c.is_ascii_alphanumeric()));
        if !valid_type {
            return None;
        }
        let permissions = Permissions::parse(permissions)?;
        Some(Self {
            context,
            resource_type: resource_type.to_owned(),
            permissions,
            query,
        })
    }

    /// Does this (granted) scope allow everything `wanted` asks for? A `*` type covers
    /// every type but [`AUDIT_EVENT`].
    pub fn covers(&self, wanted: &SmartScope) -> bool {
        let type_covered = self.resource_type == wanted.resource_type
            || (self.resource_type == "*" && wanted.resource_type != AUDIT_EVENT);
        self.context == wanted.context
            && type_covered
            && self.permissions.contains(wanted.permissions)
            && (self.query.is_none() || self.query == wanted.query)
    }
}

/// May a client that was granted `granted` receive `wanted`? Exact equality for
/// non-SMART scopes, SMART containment for SMART resource scopes.
pub fn scope_allowed<'a>(wanted: &Scope, mut granted: impl Iterator<Item = &'a Scope>) -> bool {
    let wanted_smart = SmartScope::parse(wanted);
    granted.any(|g| {
        g == wanted
            || match (&wanted_smart, SmartScope::parse(g)) {
                (Some(w), Some(g)) => g.covers(w),
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Scope {
        Scope::try_from(text).unwrap()
    }

    fn smart(text: &str) -> SmartScope {
        SmartScope::parse(&s(text)).unwrap()
    }

    #[test]
    fn v1_and_v2_forms_parse() {
        assert_eq!(
            smart("system/Patient.read").permissions,
            smart("system/Patient.rs").permissions
        );
        assert_eq!(
            smart("user/*.write").permissions,
            smart("user/*.cud").permissions
        );
        assert_eq!(
            smart("patient/*.*").permissions,
            smart("patient/*.cruds").permissions
        );
        assert_eq!(
            smart("patient/Observation.rs?category=laboratory")
                .query
                .as_deref(),
            Some("category=laboratory")
        );
    }

    #[test]
    fn malformed_smart_scopes_are_not_smart() {
        for bad in [
            "system/Patient.sr",
            "system/Patient.rr",
            "system/Patient.x",
            "system/patient.rs",
            "admin/Patient.rs",
            "system/Patient.rs?",
            "openid",
            "launch/patient",
        ] {
            assert!(SmartScope::parse(&s(bad)).is_none(), "{bad}");
        }
    }

    #[test]
    fn containment_follows_context_type_permissions_and_query() {
        let table = [
            ("system/*.rs", "system/Observation.rs", true),
            ("system/*.rs", "system/Observation.r", true),
            ("system/*.read", "system/Observation.rs", true),
            ("system/*.rs", "system/Observation.cruds", false),
            ("system/*.rs", "patient/Observation.rs", false),
            ("system/Patient.rs", "system/Observation.rs", false),
            (
                "system/Observation.rs?category=laboratory",
                "system/Observation.rs",
                false,
            ),
            (
                "system/Observation.rs",
                "system/Observation.rs?category=laboratory",
                true,
            ),
            ("openid", "openid", true),
            ("openid", "profile", false),
            // The audit trail is granted only by name.
            ("system/*.cruds", "system/AuditEvent.rs", false),
            ("system/*.cruds", "system/AuditEvent.c", false),
            ("user/*.*", "user/AuditEvent.rs", false),
            ("system/AuditEvent.cs", "system/AuditEvent.c", true),
        ];
        for (granted, wanted, expected) in table {
            assert_eq!(
                scope_allowed(&s(wanted), [s(granted)].iter()),
                expected,
                "{granted} vs {wanted}"
            );
        }
    }
}
