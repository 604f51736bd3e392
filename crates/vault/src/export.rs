//! SMART Bulk Data export (`$export`, Bulk Data Access IG 2.0) over one partition: what a
//! kick-off asks for ([`ExportRequest`], checked against the token when it is made), what
//! a run writes ([`Vault::export`], resource by resource into an [`ExportSink`]), and who
//! may collect the result ([`may_collect`]).
//!
//! A partition is a FHIR base, so the three levels are the IG's, within it: the system
//! level exports every type, the Patient level the types of R4's Patient compartment,
//! as far as they belong to the partition's patients (or those of `patient`), the Group
//! level the same for a Group's members. Each type is exported as the kick-off token
//! may *search* it: its query restrictions apply, a type it does not grant is left out
//! and named in the error file. The job runs later, with the grant kept from the
//! kick-off; the files are then given only to the same client (and user), and only
//! while its token grants at least as much of each file's type.
//!
//! How jobs are queued, stored and served is the caller's; this module decides what
//! they contain.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authz::{self, Access, Denial, Grant, Interaction};
use crate::related::{self, Reach, Scope};
use crate::search::{self, Criterion, Match, Prefix};
use crate::{dates, index, operation_outcome, Ctx, Vault, VaultError, VaultStore};

/// The output formats the IG names for NDJSON (the only one it requires).
const NDJSON_FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Kick-off parameters of the IG that Tessera does not implement: refused by name,
/// never ignored (an ignored `_until` or `_elements` would export more than asked).
const UNSUPPORTED: [&str; 5] = [
    "_elements",
    "_until",
    "includeAssociatedData",
    "organizeOutputBy",
    "allowPartialManifests",
];

/// Patients taken in one query of a type's compartment parameters.
const PATIENTS_PER_QUERY: usize = 200;
/// Resources read from the store at a time.
const READ_CHUNK: usize = 500;

/// Where an export starts (Bulk Data's three kick-off endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// `[base]/$export`: every type.
    System,
    /// `[base]/Patient/$export`: the Patient compartment of every patient.
    Patient,
    /// `[base]/Group/[id]/$export`: the Patient compartment of the group's members.
    Group(String),
}

/// An accepted kick-off: what to export. Kept with the job as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub level: Level,
    /// The types to export, in order (`_type`, or every type of the level).
    pub types: Vec<String>,
    /// Only resources changed after this instant (`_since`, Unix milliseconds).
    pub since: Option<i64>,
    /// `_typeFilter`: per type, queries of which a resource must meet one.
    pub filters: Vec<(String, String)>,
    /// The patients whose compartments a Patient or Group export covers: the Group's
    /// members or `patient`; `None` for every Patient of the partition.
    pub patients: Option<Vec<String>>,
    /// The kick-off's URL, as the manifest repeats it.
    pub request: String,
}

/// Receives an export as it runs. `Break` stops the run (the job was cancelled).
pub trait ExportSink {
    /// One resource of `resource_type`, as one NDJSON line (no line break).
    fn resource(&mut self, resource_type: &str, line: &str) -> Result<ControlFlow<()>, VaultError>;
    /// One OperationOutcome for the error file.
    fn outcome(&mut self, outcome: &Value) -> Result<ControlFlow<()>, VaultError>;
    /// `done` of `total` types are exported.
    fn progress(&mut self, done: usize, total: usize) -> Result<ControlFlow<()>, VaultError>;
}

/// Who asked: a file goes only to the client (and the person using it) that made the
/// kick-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester<'a> {
    pub client_id: &'a str,
    pub subject: &'a str,
}

/// May the holder of `token` (as `requester`) have what an export made for `owner` with
/// `granted` holds of `resource_type` (`None`: the manifest or the error file)? Only
/// the same requester, with a token that still names the partition and grants at least
/// what the kick-off's did for that type: all of it, or every restriction it had.
pub fn may_collect(
    vault: &Vault,
    owner: &Requester<'_>,
    granted: Grant<'_>,
    requester: &Requester<'_>,
    token: Grant<'_>,
    partition: &str,
    resource_type: Option<&str>,
) -> Result<(), Denial> {
    if owner != requester {
        return Err(Denial::Requester);
    }
    authz::grants_partition(token, partition)?;
    let Some(resource_type) = resource_type else {
        return Ok(());
    };
    let now = authz::authorize(
        vault.registry(),
        token,
        partition,
        resource_type,
        Interaction::Search,
    )?;
    let then = authz::authorize(
        vault.registry(),
        granted,
        partition,
        resource_type,
        Interaction::Search,
    )?;
    match (now, then) {
        (Access::All, _) => Ok(()),
        (Access::Restricted(now), Access::Restricted(then))
            if then.iter().all(|r| now.contains(r)) =>
        {
            Ok(())
        }
        _ => Err(Denial::Scope),
    }
}

/// The name/value pairs of a kick-off sent as a `Parameters` resource (POST): strings,
/// instants and codes as they are, `patient` references by their `reference`.
pub fn parameters(body: &[u8]) -> Result<Vec<(String, String)>, VaultError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| VaultError::Invalid(format!("the body is not JSON: {e}")))?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(VaultError::Invalid(
            "a POST $export takes a Parameters resource".into(),
        ));
    }
    let mut pairs = Vec::new();
    for parameter in value
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = parameter
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| VaultError::Invalid("a parameter has no name".into()))?;
        let value = ["valueString", "valueInstant", "valueCode", "valueDateTime"]
            .iter()
            .find_map(|k| parameter.get(*k).and_then(Value::as_str))
            .or_else(|| {
                parameter
                    .get("valueReference")
                    .and_then(|r| r.get("reference"))
                    .and_then(Value::as_str)
            })
            .ok_or_else(|| {
                VaultError::Invalid(format!(
                    "parameter '{name}' has no string, instant, code or reference value"
                ))
            })?;
        pairs.push((name.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

/// `_typeFilter` values: each `Type?query`; several may share one parameter, separated
/// by commas (a comma inside a query, between values, stays in it).
fn type_filters(value: &str) -> Result<Vec<(String, String)>, VaultError> {
    let mut filters: Vec<(String, String)> = Vec::new();
    for piece in value.split(',') {
        let starts_filter = piece.split_once('?').is_some_and(|(ty, _)| {
            ty.starts_with(|c: char| c.is_ascii_uppercase())
                && ty.chars().all(|c| c.is_ascii_alphanumeric())
        });
        match filters.last_mut() {
            Some(last) if !starts_filter => {
                last.1.push(',');
                last.1.push_str(piece);
            }
            _ => {
                let (ty, query) = piece.split_once('?').ok_or_else(|| {
                    VaultError::Invalid(format!(
                        "_typeFilter: '{piece}' is not [type]?[search parameters]"
                    ))
                })?;
                filters.push((ty.to_owned(), query.to_owned()));
            }
        }
    }
    Ok(filters)
}

/// A patient id from a `patient` reference (`Patient/x`, or absolute to this base).
fn patient_id(reference: &str, base: &str) -> Result<String, VaultError> {
    let (reference, id) = index::reference_parts(reference, base);
    if reference != format!("Patient/{id}") {
        return Err(VaultError::Invalid(format!(
            "patient: '{reference}' is not a reference to a Patient of this vault"
        )));
    }
    Ok(id)
}

impl Vault {
    /// Checks a kick-off at `level` with `pairs` for the token of `ctx`: every
    /// parameter understood, every type known (and, at the Patient and Group levels, in
    /// the Patient compartment), filters parsed, patients and group present, and at
    /// least one type granted. The export itself runs later ([`Vault::export`]).
    pub fn export_request<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        level: Level,
        pairs: &[(String, String)],
        request: String,
    ) -> Result<ExportRequest, VaultError> {
        authz::grants_partition(ctx.grant, ctx.partition).map_err(VaultError::Denied)?;
        if !store.partition_exists(ctx.partition)? {
            return Err(VaultError::NotFound(format!(
                "partition '{}' does not exist",
                ctx.partition
            )));
        }
        let compartment: Vec<&str> = std::iter::once("Patient")
            .chain(
                self.registry
                    .patient_compartment()
                    .map(|(t, _)| t)
                    .filter(|t| *t != "Patient"),
            )
            .collect();
        let mut types: Option<Vec<String>> = None;
        let mut since = None;
        let mut filters = Vec::new();
        let mut patients: Option<Vec<String>> = None;
        for (key, value) in pairs {
            match key.as_str() {
                "_outputFormat" => {
                    if !NDJSON_FORMATS.contains(&value.as_str()) {
                        return Err(VaultError::NotSupported(format!(
                            "_outputFormat: this vault exports NDJSON ({}), not '{value}'",
                            NDJSON_FORMATS[0]
                        )));
                    }
                }
                "_type" => {
                    let named = types.get_or_insert_with(Vec::new);
                    for ty in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if !self.registry.is_resource_type(ty) {
                            return Err(VaultError::Invalid(format!(
                                "_type: '{ty}' is not a FHIR R4 resource type"
                            )));
                        }
                        if level != Level::System && !compartment.contains(&ty) {
                            return Err(VaultError::Invalid(format!(
                                "_type: {ty} is not in the Patient compartment, which a Patient or Group export covers"
                            )));
                        }
                        if !named.iter().any(|n| n == ty) {
                            named.push(ty.to_owned());
                        }
                    }
                }
                "_since" => {
                    let zoned = value.ends_with('Z')
                        || value
                            .get(value.len().saturating_sub(6)..)
                            .is_some_and(|zone| zone.starts_with(['+', '-']));
                    let instant = value.contains('T') && zoned;
                    let range = dates::parse(value).filter(|_| instant).ok_or_else(|| {
                        VaultError::Invalid(format!(
                            "_since: '{value}' is not an instant (e.g. 2024-01-31T12:00:00Z)"
                        ))
                    })?;
                    since = Some(range.lo);
                }
                "_typeFilter" => filters.extend(type_filters(value)?),
                "patient" => {
                    if level == Level::System {
                        return Err(VaultError::Invalid(
                            "patient: a system-level export covers every resource; use Patient/$export".into(),
                        ));
                    }
                    for reference in value.split(',').map(str::trim) {
                        patients
                            .get_or_insert_with(Vec::new)
                            .push(patient_id(reference, ctx.base)?);
                    }
                }
                other if UNSUPPORTED.contains(&other) => {
                    return Err(VaultError::NotSupported(format!(
                        "$export parameter {other} is not supported"
                    )))
                }
                other => {
                    return Err(VaultError::Invalid(format!(
                        "'{other}' is not a parameter of $export"
                    )))
                }
            }
        }
        let types = match types {
            Some(named) => named,
            None if level == Level::System => {
                self.registry.resource_types().map(str::to_owned).collect()
            }
            None => compartment.iter().map(|t| (*t).to_owned()).collect(),
        };
        for (ty, query) in &filters {
            if !types.contains(ty) {
                return Err(VaultError::Invalid(format!(
                    "_typeFilter: {ty} is not among the types exported"
                )));
            }
            search::parse_filter(&self.registry, ty, query).map_err(|e| {
                let said = format!("_typeFilter {ty}?{query}: {e}");
                match related::search_error(e) {
                    VaultError::NotSupported(_) => VaultError::NotSupported(said),
                    VaultError::TooCostly(_) => VaultError::TooCostly(said),
                    _ => VaultError::Invalid(said),
                }
            })?;
        }
        // The token must grant something; what it does not grant is named in the error file.
        let mut granted = false;
        for ty in &types {
            granted |= self.search_access(ctx.grant, ctx.partition, ty)?.is_some();
        }
        if !granted {
            return Err(VaultError::Denied(Denial::Scope));
        }
        if let Level::Group(id) = &level {
            let group = self.read(store, ctx, "Group", id)?.json()?;
            let members = members(&group, ctx.base);
            patients = Some(match patients {
                Some(asked) => asked.into_iter().filter(|p| members.contains(p)).collect(),
                None => members.into_iter().collect(),
            });
        } else if let Some(asked) = &patients {
            // Each one a Patient the token may read (as a Group must be): whether another
            // exists is not the caller's to learn.
            for id in asked {
                match self.read(store, ctx, "Patient", id) {
                    Ok(_) => {}
                    Err(VaultError::NotFound(_) | VaultError::Gone(_)) => {
                        return Err(VaultError::NotFound(format!(
                            "patient: Patient/{id} is not known"
                        )))
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        Ok(ExportRequest {
            level,
            types,
            since,
            filters,
            patients,
            request,
        })
    }

    /// Runs an export for the kick-off's `grant` in `partition` (FHIR base `base`):
    /// each type in turn, its matches as they are now, into `sink`. A type the grant
    /// does not let it search is named in an OperationOutcome instead.
    pub fn export<S: VaultStore>(
        &self,
        store: &S,
        grant: Grant<'_>,
        partition: &str,
        base: &str,
        request: &ExportRequest,
        sink: &mut dyn ExportSink,
    ) -> Result<ControlFlow<()>, VaultError> {
        let scope = Scope {
            registry: &self.registry,
            store,
            partition,
            base,
            reach: Reach::Token(grant),
        };
        let criteria: Vec<Criterion> = request
            .since
            .map(|since| Criterion {
                param: "_lastUpdated".into(),
                // Changed after the instant: starting at its next millisecond.
                any_of: vec![Match::Date {
                    prefix: Prefix::Sa,
                    range: dates::DateRange {
                        lo: since,
                        hi: since + 1,
                    },
                }],
                negate: false,
                missing: None,
            })
            .into_iter()
            .collect();
        let patients: Option<Vec<String>> = match (&request.level, &request.patients) {
            (Level::System, _) => None,
            (_, Some(listed)) => Some(listed.clone()),
            (_, None) => Some(store.matching_ids(partition, "Patient", &[], None)?),
        };
        let total = request.types.len();
        let mut withheld = Vec::new();
        for (done, resource_type) in request.types.iter().enumerate() {
            let Some(access) = self.search_access(grant, partition, resource_type)? else {
                withheld.push(resource_type.as_str());
                continue;
            };
            let mut alternatives: Vec<Vec<Criterion>> = match access {
                Access::All => vec![Vec::new()],
                Access::Restricted(restrictions) => restrictions,
            };
            let filters: Vec<&String> = request
                .filters
                .iter()
                .filter(|(ty, _)| ty == resource_type)
                .map(|(_, query)| query)
                .collect();
            if !filters.is_empty() {
                let mut resolved = Vec::with_capacity(filters.len());
                for query in filters {
                    let mut parsed = search::parse_filter(&self.registry, resource_type, query)
                        .map_err(related::search_error)?;
                    scope.resolve_links(resource_type, &mut parsed, 1)?;
                    resolved.push(parsed.criteria);
                }
                alternatives = product(&alternatives, &resolved);
            }
            let mut ids = BTreeSet::new();
            match &patients {
                None => {
                    let restrictions = restrictions_of(&alternatives);
                    ids.extend(store.matching_ids(
                        partition,
                        resource_type,
                        &criteria,
                        restrictions,
                    )?);
                }
                Some(patients) => {
                    for group in patients.chunks(PATIENTS_PER_QUERY) {
                        let belonging = self.compartment(resource_type, group);
                        if belonging.is_empty() {
                            continue;
                        }
                        let combined = product(&alternatives, &belonging);
                        ids.extend(store.matching_ids(
                            partition,
                            resource_type,
                            &criteria,
                            Some(&combined),
                        )?);
                    }
                }
            }
            let ids: Vec<String> = ids.into_iter().collect();
            for chunk in ids.chunks(READ_CHUNK) {
                for stored in store.current_many(partition, resource_type, chunk)? {
                    let line = if stored.content.contains('\n') {
                        serde_json::to_string(&stored.json()?)
                            .map_err(|e| VaultError::Store(e.to_string()))?
                    } else {
                        stored.content
                    };
                    if sink.resource(resource_type, &line)?.is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
            }
            if sink.progress(done + 1, total)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        if withheld.is_empty() {
            return Ok(ControlFlow::Continue(()));
        }
        let outcome = operation_outcome(
            "information",
            "suppressed",
            &format!(
                "not exported, since the access token does not grant searching them: {}",
                withheld.join(", ")
            ),
        );
        sink.outcome(&outcome)
    }

    /// The ways a resource of `resource_type` belongs to one of `patients`: one
    /// criterion per compartment parameter (and, for a Patient, being one of them).
    fn compartment(&self, resource_type: &str, patients: &[String]) -> Vec<Vec<Criterion>> {
        let references = |param: &str| Criterion {
            param: param.to_owned(),
            any_of: patients
                .iter()
                .map(|id| Match::Reference {
                    reference: Some(format!("Patient/{id}")),
                    id: id.clone(),
                })
                .collect(),
            negate: false,
            missing: None,
        };
        let mut ways = Vec::new();
        if resource_type == "Patient" {
            ways.push(vec![crate::id_criteria(patients)]);
        }
        if let Some((_, params)) = self
            .registry
            .patient_compartment()
            .find(|(t, _)| *t == resource_type)
        {
            for param in params {
                let is_reference = self
                    .registry
                    .param(resource_type, param)
                    .is_some_and(|p| p.kind == crate::registry::ParamKind::Reference);
                if is_reference {
                    ways.push(vec![references(param)]);
                }
            }
        }
        ways
    }
}

/// A Group's members that are Patients of this vault (and not marked inactive).
fn members(group: &Value, base: &str) -> BTreeSet<String> {
    group
        .get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
        .filter_map(|m| m.get("entity")?.get("reference")?.as_str())
        .filter_map(|r| patient_id(r, base).ok())
        .collect()
}

/// Every way to meet one of `a` and one of `b` (a conjunction of two disjunctions).
fn product(a: &[Vec<Criterion>], b: &[Vec<Criterion>]) -> Vec<Vec<Criterion>> {
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            out.push(x.iter().chain(y).cloned().collect());
        }
    }
    out
}

/// `None` (everything) for the one empty alternative, else the alternatives.
fn restrictions_of(alternatives: &[Vec<Criterion>]) -> Option<&[Vec<Criterion>]> {
    match alternatives {
        [only] if only.is_empty() => None,
        all => Some(all),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_filters_split_on_commas_that_start_a_filter() {
        assert_eq!(
            type_filters("Observation?code=a,b&status=final,Condition?clinical-status=active")
                .unwrap(),
            vec![
                ("Observation".to_owned(), "code=a,b&status=final".to_owned()),
                ("Condition".to_owned(), "clinical-status=active".to_owned()),
            ]
        );
        assert!(type_filters("code=a").is_err());
    }

    #[test]
    fn the_product_of_alternatives_needs_one_of_each() {
        let c = |p: &str| crate::id_criterion(p);
        let a = vec![vec![c("1")], vec![c("2")]];
        let b = vec![vec![c("x")], vec![c("y")], vec![c("z")]];
        let both = product(&a, &b);
        assert_eq!(both.len(), 6);
        assert_eq!(both[0], vec![c("1"), c("x")]);
        assert_eq!(both[5], vec![c("2"), c("z")]);
        assert_eq!(restrictions_of(&[Vec::new()]), None);
        assert_eq!(restrictions_of(&both).map(<[_]>::len), Some(6));
    }

    #[test]
    fn group_members_are_active_patients_of_this_base() {
        let group = serde_json::json!({"member": [
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"reference": "https://h/fhir/p/Patient/b"}},
            {"entity": {"reference": "https://elsewhere/fhir/Patient/c"}},
            {"entity": {"reference": "Practitioner/d"}},
            {"entity": {"reference": "Patient/e"}, "inactive": true},
        ]});
        let found: Vec<String> = members(&group, "https://h/fhir/p").into_iter().collect();
        assert_eq!(found, ["a", "b"]);
    }

    fn grant<'a>(partitions: &'a [String], scope: &'a str) -> Grant<'a> {
        Grant { partitions, scope }
    }

    #[test]
    fn only_the_requester_collects_and_only_what_its_token_still_grants() {
        let vault = Vault::new().unwrap();
        let pa = vec!["pa".to_owned()];
        let owner = Requester {
            client_id: "app",
            subject: "alice",
        };
        let restricted = "system/Observation.rs?category=laboratory";
        let kicked = grant(&pa, restricted);
        let check = |who: &Requester<'_>, scope: &str, ty: Option<&str>| {
            may_collect(&vault, &owner, kicked, who, grant(&pa, scope), "pa", ty)
        };
        let ty = Some("Observation");
        assert_eq!(check(&owner, restricted, ty), Ok(()));
        assert_eq!(check(&owner, "system/*.rs", ty), Ok(()));
        let wider = format!("{restricted} system/Observation.rs?category=vital-signs");
        assert_eq!(check(&owner, &wider, ty), Ok(()));
        assert_eq!(check(&owner, restricted, None), Ok(()));
        let bob = Requester {
            client_id: "app",
            subject: "bob",
        };
        assert_eq!(check(&bob, restricted, ty), Err(Denial::Requester));
        let other = Requester {
            client_id: "other",
            subject: "alice",
        };
        assert_eq!(check(&other, "system/*.rs", None), Err(Denial::Requester));
        // Narrower, different, or none: refused.
        assert_eq!(
            check(&owner, "system/Observation.rs?category=vital-signs", ty),
            Err(Denial::Scope)
        );
        assert_eq!(check(&owner, "system/Patient.rs", ty), Err(Denial::Scope));
        let pb = vec!["pb".to_owned()];
        assert_eq!(
            may_collect(
                &vault,
                &owner,
                kicked,
                &owner,
                grant(&pb, "system/*.rs"),
                "pa",
                None
            ),
            Err(Denial::Partition)
        );
    }
}
