//! ITI-72 authorization: may the holder of a verified access token perform this FHIR
//! interaction on this partition? Decided from the token alone, by a pure function.
//!
//! - Partition: the token must name the partition (its account's partitions) or `*`.
//!   Otherwise the answer is [`Denial::Partition`], decided before anything is read,
//!   so it reveals nothing about what the partition holds.
//! - Scopes: SMART v1 (`read`, `write`, `*`) and v2 (`c r u d s`), in the `patient/`,
//!   `user/` and `system/` contexts, for one type or `*`, mapped to interactions as the
//!   SMART App Launch 2.x scopes page maps them: `c` create; `r` read, vread,
//!   history-instance; `u` update; `d` delete; `s` search-type and history-type. A
//!   partition is one patient's compartment, so the three contexts grant alike here.
//! - Query-restricted scopes (`patient/Observation.rs?category=laboratory`) grant only
//!   resources meeting the restriction: the decision carries the restrictions, OR-ed,
//!   and the caller enforces them on every resource it reads, lists or writes.

use tessera_types::smart::{Permissions, SmartScope};
use tessera_types::Scope;

use crate::registry::Registry;
use crate::search::{parse_restriction, Criterion};

/// A FHIR RESTful interaction (R4 http.html), as authorized, audited and advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Read,
    VRead,
    HistoryInstance,
    HistoryType,
    Search,
    Create,
    Update,
    /// `PATCH` with a JSON Patch: an update.
    Patch,
    Delete,
    /// A batch Bundle: each entry is authorized as what it is.
    Batch,
    /// A transaction Bundle: each entry is authorized as what it is, all or nothing.
    Transaction,
    /// Anything else (an unsupported operation, a request the vault refuses).
    Operation,
}

impl Interaction {
    /// The type-level interactions a CapabilityStatement lists for each resource.
    pub const ON_TYPES: [Interaction; 9] = [
        Self::Read,
        Self::VRead,
        Self::Update,
        Self::Patch,
        Self::Delete,
        Self::HistoryInstance,
        Self::HistoryType,
        Self::Create,
        Self::Search,
    ];

    /// The SMART v2 permission an interaction needs; `None` for a batch (its entries
    /// each need theirs) and an operation (never granted by a scope).
    pub fn permission(self) -> Option<Permissions> {
        Some(match self {
            Self::Read | Self::VRead | Self::HistoryInstance => Permissions::READ,
            Self::Search | Self::HistoryType => Permissions::SEARCH,
            Self::Create => Permissions::CREATE,
            Self::Update | Self::Patch => Permissions::UPDATE,
            Self::Delete => Permissions::DELETE,
            Self::Batch | Self::Transaction | Self::Operation => return None,
        })
    }

    /// The interaction's code in a CapabilityStatement / BALP.
    pub fn code(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::VRead => "vread",
            Self::HistoryInstance => "history-instance",
            Self::HistoryType => "history-type",
            Self::Search => "search-type",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::Batch => "batch",
            Self::Transaction => "transaction",
            Self::Operation => "operation",
        }
    }
}

/// What a verified token says about its holder, as the vault needs it.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// The token's `partitions` claim (`*`: all).
    pub partitions: &'a [String],
    /// The token's `scope` claim, space-separated.
    pub scope: &'a str,
}

/// The resources a permitted interaction may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every resource of the type.
    All,
    /// Only resources that meet at least one of these restrictions (each a list of
    /// criteria that must all hold).
    Restricted(Vec<Vec<Criterion>>),
}

impl Access {
    /// The restrictions a search must apply: `None` for every resource.
    pub fn restrictions(&self) -> Option<&[Vec<Criterion>]> {
        match self {
            Self::All => None,
            Self::Restricted(r) => Some(r),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The token is not for this partition.
    Partition,
    /// No scope grants this interaction on this type.
    Scope,
    /// What was made for another client (or another user of it): a Bulk Data export.
    Requester,
}

/// Does `grant` name `partition` (or every partition)? The first question of every
/// request, and the whole answer for a Bundle sent to a partition the token lacks.
pub fn grants_partition(grant: Grant<'_>, partition: &str) -> Result<(), Denial> {
    if grant.partitions.iter().any(|p| p == partition || p == "*") {
        Ok(())
    } else {
        Err(Denial::Partition)
    }
}

/// Decides whether `grant` allows `interaction` on `resource_type` in `partition`.
pub fn authorize(
    registry: &Registry,
    grant: Grant<'_>,
    partition: &str,
    resource_type: &str,
    interaction: Interaction,
) -> Result<Access, Denial> {
    grants_partition(grant, partition)?;
    let need = interaction.permission().ok_or(Denial::Scope)?;
    let mut restrictions = Vec::new();
    for scope in grant.scope.split(' ').filter(|s| !s.is_empty()) {
        let Some(smart) = Scope::try_from(scope)
            .ok()
            .and_then(|s| SmartScope::parse(&s))
        else {
            continue;
        };
        if !(smart.resource_type == "*" || smart.resource_type == resource_type)
            || !smart.permissions.contains(need)
        {
            continue;
        }
        match &smart.query {
            None => return Ok(Access::All),
            Some(query) => {
                // A restriction Tessera cannot enforce grants nothing.
                if let Ok(criteria) = parse_restriction(registry, resource_type, query) {
                    restrictions.push(criteria);
                }
            }
        }
    }
    if restrictions.is_empty() {
        Err(Denial::Scope)
    } else {
        Ok(Access::Restricted(restrictions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(
        partitions: &[&str],
        scope: &str,
        partition: &str,
        ty: &str,
        i: Interaction,
    ) -> Result<usize, Denial> {
        let registry = Registry::load().unwrap();
        let partitions: Vec<String> = partitions.iter().map(|p| p.to_string()).collect();
        authorize(
            &registry,
            Grant {
                partitions: &partitions,
                scope,
            },
            partition,
            ty,
            i,
        )
        .map(|a| match a {
            Access::All => 0,
            Access::Restricted(r) => r.len(),
        })
    }

    #[test]
    fn the_smart_table() {
        use Interaction::*;
        let all = Ok(0);
        let scope = Err(Denial::Scope);
        let table: &[(&str, &str, Interaction, Result<usize, Denial>)] = &[
            // v2 letters, one per interaction
            ("system/Observation.r", "Observation", Read, all.clone()),
            ("system/Observation.r", "Observation", VRead, all.clone()),
            ("system/Observation.r", "Observation", HistoryInstance, all.clone()),
            ("system/Observation.r", "Observation", Search, scope.clone()),
            ("system/Observation.s", "Observation", Search, all.clone()),
            ("system/Observation.s", "Observation", HistoryType, all.clone()),
            ("system/Observation.s", "Observation", Read, scope.clone()),
            ("system/Observation.c", "Observation", Create, all.clone()),
            ("system/Observation.c", "Observation", Update, scope.clone()),
            ("system/Observation.u", "Observation", Update, all.clone()),
            ("system/Observation.d", "Observation", Delete, all.clone()),
            ("system/Observation.rs", "Observation", Delete, scope.clone()),
            // v1 names
            ("system/Observation.read", "Observation", Search, all.clone()),
            ("system/Observation.read", "Observation", Create, scope.clone()),
            ("system/Observation.write", "Observation", Update, all.clone()),
            ("system/Observation.write", "Observation", Read, scope.clone()),
            ("user/*.*", "Patient", Delete, all.clone()),
            // types and contexts
            ("patient/*.rs", "Condition", Read, all.clone()),
            ("system/Patient.rs", "Observation", Read, scope.clone()),
            ("user/Observation.cruds", "Observation", Create, all.clone()),
            // not SMART resource scopes
            ("openid fhirUser launch/patient", "Patient", Read, scope.clone()),
            ("introspection aim/resolve", "Patient", Read, scope.clone()),
            // query restrictions
            ("patient/Observation.rs?category=laboratory", "Observation", Search, Ok(1)),
            (
                "patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs",
                "Observation",
                Read,
                Ok(2),
            ),
            ("patient/Observation.rs?category=laboratory system/Observation.rs", "Observation", Read, all.clone()),
            ("patient/Observation.rs?nonsense=1", "Observation", Read, scope.clone()),
            // a Bundle's entries are authorized one by one; no scope grants the Bundle
            // itself or an operation
            ("user/*.*", "Observation", Batch, scope.clone()),
            ("system/*.cruds", "Observation", Operation, scope.clone()),
        ];
        for (scope, ty, interaction, expected) in table {
            assert_eq!(
                &decide(&["p1"], scope, "p1", ty, *interaction),
                expected,
                "{scope} {ty} {interaction:?}"
            );
        }
    }

    #[test]
    fn the_partition_comes_first() {
        use Interaction::*;
        assert_eq!(
            decide(&["p1"], "system/*.*", "p2", "Patient", Read),
            Err(Denial::Partition)
        );
        assert_eq!(
            decide(&[], "system/*.*", "p1", "Patient", Read),
            Err(Denial::Partition)
        );
        assert_eq!(
            decide(&["p1"], "openid", "p2", "Patient", Read),
            Err(Denial::Partition)
        );
        assert_eq!(decide(&["*"], "system/*.rs", "p2", "Patient", Read), Ok(0));
        assert_eq!(
            decide(&["p1", "p2"], "system/*.rs", "p2", "Patient", Search),
            Ok(0)
        );
    }
}
