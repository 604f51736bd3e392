//! The FHIR Vault (CARA's ITI-72 data store): a FHIR R4 server with one partition per patient account.
//! This crate owns the FHIR semantics: which resources are valid, how they are indexed
//! and searched (from the specification's SearchParameter data), versioning, Bundles
//! (searchset, history, batch and transaction) and the ITI-72 authorization decision.
//! Storage is behind [`VaultStore`]; the HTTP layer parses requests and formats
//! responses. This crate must not depend on a web framework or a database library, and
//! takes the current time as a parameter.

#![forbid(unsafe_code)]

pub mod authz;
pub mod bundle;
pub mod capability;
pub mod dates;
pub mod decimal;
pub mod export;
pub mod fhirpath;
pub mod index;
pub mod patch;
pub mod registry;
pub mod related;
pub mod resource;
pub mod search;
pub mod subset;
pub mod validate;

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

pub use crate::authz::{Access, Denial, Grant, Interaction};
pub use crate::bundle::BatchOutcome;
use crate::index::IndexEntry;
pub use crate::registry::Registry;
pub use crate::related::Reach;
use crate::related::Scope;
use crate::search::{Criterion, Match, SortKey, Summary};
use crate::subset::{Elements, Subset};
use crate::validate::{Issue, Structure};

/// A stored version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// Milliseconds since the Unix epoch.
    pub last_updated: i64,
    pub deleted: bool,
    /// The resource's JSON as stored (with `id` and `meta` set); empty when deleted.
    pub content: String,
}

impl Stored {
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }

    pub fn json(&self) -> Result<Value, VaultError> {
        serde_json::from_str(&self.content)
            .map_err(|e| VaultError::Store(format!("stored resource: {e}")))
    }
}

/// What the store writes for one version.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub content: String,
    pub index: Vec<IndexEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteKind {
    Create,
    /// `may_create`: the resource may be created with this id if it does not exist.
    Update {
        if_match: Option<i64>,
        may_create: bool,
    },
    Delete {
        if_match: Option<i64>,
    },
}

/// One write of a (possibly one-entry) atomic group.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub resource_type: String,
    pub id: String,
    pub kind: WriteKind,
    /// The resource for creates and updates (not yet stamped).
    pub resource: Option<Map<String, Value>>,
    /// Restrictions from query-restricted scopes: the resource before and after the
    /// write must meet one of them.
    pub restrictions: Option<Vec<Vec<Criterion>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Created(Stored),
    Updated(Stored),
    /// The deleted version, or `None` when there was nothing to delete.
    Deleted(Option<Stored>),
}

/// Everything that can go wrong in a FHIR interaction. The HTTP layer gives each
/// its status and an OperationOutcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    /// A precondition failed (412): `If-Match` did not match the current version, or a
    /// conditional interaction's criteria matched more than one resource.
    #[error("{0}")]
    VersionConflict(String),
    /// Valid JSON, but not what the R4 definitions of its type allow (422): each issue
    /// names its element.
    #[error("{}", describe(.0))]
    Nonconformant(Vec<Issue>),
    /// Well formed but not applicable (422): a JSON Patch whose `test` fails or whose
    /// path is not in the resource.
    #[error("{0}")]
    Unprocessable(String),
    /// A concurrent write won (409); the client may retry.
    #[error("{0}")]
    Conflict(String),
    #[error("access denied: {0:?}")]
    Denied(Denial),
    #[error("{0}")]
    NotSupported(String),
    /// More work than one request may cause (400 `too-costly`).
    #[error("{0}")]
    TooCostly(String),
    /// The client has as much running as it may (429 `throttled`): a Bulk Data
    /// kick-off beyond its concurrent exports.
    #[error("{0}")]
    Busy(String),
    /// Asynchronous work that failed (500 `exception`), said as the job recorded it.
    #[error("{0}")]
    Failed(String),
    #[error("storage error: {0}")]
    Store(String),
}

/// What the vault needs from the database. `write` applies its operations in one
/// transaction: all of them, or (on the first error, returned with its index) none.
pub trait VaultStore: Send + Sync {
    fn partition_exists(&self, partition: &str) -> Result<bool, VaultError>;
    /// The current version (possibly a deletion) of a resource.
    fn current(
        &self,
        partition: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Stored>, VaultError>;
    fn version(
        &self,
        partition: &str,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<Stored>, VaultError>;
    /// Versions, newest first, of the partition, a type or one resource; with the total.
    fn history(
        &self,
        partition: &str,
        resource_type: Option<&str>,
        id: Option<&str>,
        since: Option<i64>,
        offset: usize,
        count: usize,
    ) -> Result<(u64, Vec<Stored>), VaultError>;
    /// Current, not deleted resources of a type meeting every criterion and, when given,
    /// at least one of the restrictions; sorted, then one page; with the total. Without
    /// `exact_total` the matches are not counted: the total is then `offset` plus the
    /// page, plus one when more follow (enough for the paging links).
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        partition: &str,
        resource_type: &str,
        criteria: &[Criterion],
        restrictions: Option<&[Vec<Criterion>]>,
        sort: &[SortKey],
        offset: usize,
        count: usize,
        exact_total: bool,
    ) -> Result<(u64, Vec<Stored>), VaultError>;
    /// The ids, in order, of the current, not deleted resources of a type meeting
    /// every criterion and, when given, at least one of the restrictions: all of them,
    /// as one snapshot (Bulk Data export walks them afterwards).
    fn matching_ids(
        &self,
        partition: &str,
        resource_type: &str,
        criteria: &[Criterion],
        restrictions: Option<&[Vec<Criterion>]>,
    ) -> Result<Vec<String>, VaultError>;
    /// The current, not deleted versions of those of `ids` that still have one, in
    /// the order of `ids`.
    fn current_many(
        &self,
        partition: &str,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<Stored>, VaultError>;
    fn write(
        &self,
        partition: &str,
        ops: &[WriteOp],
        now_ms: i64,
        prepare: &dyn Fn(&WriteOp, i64) -> Result<Prepared, VaultError>,
    ) -> Result<Vec<WriteOutcome>, (usize, VaultError)>;
}

/// One request's context: who asks, where, and when.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub grant: Grant<'a>,
    pub partition: &'a str,
    /// This partition's FHIR base URL (`https://host/fhir/{partition}`).
    pub base: &'a str,
    pub now_ms: i64,
}

/// A search or history result Bundle, or just its count.
pub type BundleJson = Value;

/// The vault's FHIR semantics over a store.
#[derive(Debug)]
pub struct Vault {
    registry: Registry,
    elements: Elements,
    structure: Structure,
}

/// An `_id` criterion, to check one resource against restrictions.
pub fn id_criterion(id: &str) -> Criterion {
    Criterion {
        param: "_id".into(),
        any_of: vec![Match::Token {
            system: None,
            code: Some(id.to_owned()),
        }],
        negate: false,
        missing: None,
    }
}

/// An `_id` criterion met by any of `ids`.
pub fn id_criteria(ids: &[String]) -> Criterion {
    Criterion {
        param: "_id".into(),
        any_of: ids
            .iter()
            .map(|id| Match::Token {
                system: None,
                code: Some(id.clone()),
            })
            .collect(),
        negate: false,
        missing: None,
    }
}

impl Vault {
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            registry: Registry::load()?,
            elements: Elements::load()?,
            structure: Structure::load()?,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// `resource` if it conforms to its type's R4 definition; otherwise 422 naming each
    /// element that does not.
    pub fn conformant(
        &self,
        resource: Map<String, Value>,
    ) -> Result<Map<String, Value>, VaultError> {
        let issues = self.structure.validate(&resource);
        if issues.is_empty() {
            Ok(resource)
        } else {
            Err(VaultError::Nonconformant(issues))
        }
    }

    fn known_type(&self, resource_type: &str) -> Result<(), VaultError> {
        if self.registry.is_resource_type(resource_type) {
            Ok(())
        } else {
            Err(VaultError::NotFound(format!(
                "'{resource_type}' is not a FHIR R4 resource type"
            )))
        }
    }

    /// Authorizes, then makes sure the partition exists (only an authorized caller
    /// learns whether it does).
    pub fn authorize<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        interaction: Interaction,
    ) -> Result<Access, VaultError> {
        let access = authz::authorize(
            &self.registry,
            ctx.grant,
            ctx.partition,
            resource_type,
            interaction,
        )
        .map_err(VaultError::Denied)?;
        self.known_type(resource_type)?;
        if !store.partition_exists(ctx.partition)? {
            return Err(VaultError::NotFound(format!(
                "partition '{}' does not exist",
                ctx.partition
            )));
        }
        Ok(access)
    }

    /// What `grant` may search of `resource_type` in `partition`: `None` when no scope
    /// grants it (the type is left out and said to be, as `$everything` and an export
    /// do), an error when the partition is not granted at all.
    fn search_access(
        &self,
        grant: Grant<'_>,
        partition: &str,
        resource_type: &str,
    ) -> Result<Option<Access>, VaultError> {
        match authz::authorize(
            &self.registry,
            grant,
            partition,
            resource_type,
            Interaction::Search,
        ) {
            Ok(access) => Ok(Some(access)),
            Err(Denial::Scope) => Ok(None),
            Err(denial) => Err(VaultError::Denied(denial)),
        }
    }

    /// Is `stored` within the restrictions of `access`?
    fn visible<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        access: &Access,
        stored: &Stored,
    ) -> Result<bool, VaultError> {
        related::visible(store, ctx.partition, access, stored)
    }

    fn not_found(resource_type: &str, id: &str) -> VaultError {
        VaultError::NotFound(format!("{resource_type}/{id} is not known"))
    }

    /// `read`: the current version; 410 when deleted.
    pub fn read<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        id: &str,
    ) -> Result<Stored, VaultError> {
        let access = self.authorize(store, ctx, resource_type, Interaction::Read)?;
        let stored = store
            .current(ctx.partition, resource_type, id)?
            .ok_or_else(|| Self::not_found(resource_type, id))?;
        if stored.deleted {
            return Err(VaultError::Gone(format!(
                "{resource_type}/{id} was deleted"
            )));
        }
        if !self.visible(store, ctx, &access, &stored)? {
            return Err(Self::not_found(resource_type, id));
        }
        Ok(stored)
    }

    /// `vread`: one version; 410 for the version that recorded a deletion.
    pub fn vread<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<Stored, VaultError> {
        let access = self.authorize(store, ctx, resource_type, Interaction::VRead)?;
        let number: i64 = version
            .parse()
            .map_err(|_| Self::not_found(resource_type, &format!("{id}/_history/{version}")))?;
        let stored = store
            .version(ctx.partition, resource_type, id, number)?
            .ok_or_else(|| Self::not_found(resource_type, &format!("{id}/_history/{version}")))?;
        if stored.deleted {
            return Err(VaultError::Gone(format!(
                "{resource_type}/{id}/_history/{version} is a deletion"
            )));
        }
        if let Access::Restricted(_) = access {
            // The restriction applies to what the resource is now.
            let current = store.current(ctx.partition, resource_type, id)?;
            if !current.is_some_and(|c| {
                !c.deleted && self.visible(store, ctx, &access, &c).unwrap_or(false)
            }) {
                return Err(Self::not_found(resource_type, id));
            }
        }
        Ok(stored)
    }

    /// `search-type`: a searchset Bundle (or only its total for `_summary=count`).
    pub fn search<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        pairs: &[(String, String)],
        strict: bool,
    ) -> Result<BundleJson, VaultError> {
        let access = self.authorize(store, ctx, resource_type, Interaction::Search)?;
        let restrictions = access.restrictions();
        self.search_in(
            store,
            ctx.partition,
            ctx.base,
            resource_type,
            pairs,
            strict,
            restrictions,
            Reach::Token(ctx.grant),
        )
    }

    /// A search in `partition` for a caller already authorized (with `restrictions`
    /// still to apply, and `reach` deciding what it sees of other types): the vault's
    /// search, and the audit repository's (ITI-81).
    #[allow(clippy::too_many_arguments)]
    pub fn search_in<S: VaultStore>(
        &self,
        store: &S,
        partition: &str,
        base: &str,
        resource_type: &str,
        pairs: &[(String, String)],
        strict: bool,
        restrictions: Option<&[Vec<Criterion>]>,
        reach: Reach<'_>,
    ) -> Result<BundleJson, VaultError> {
        let mut query = search::parse(&self.registry, resource_type, pairs, strict, base)
            .map_err(related::search_error)?;
        if query.summary != Summary::False && !query.elements.is_empty() {
            return Err(VaultError::Invalid(
                "_summary and _elements cannot be used together".into(),
            ));
        }
        let scope = Scope {
            registry: &self.registry,
            store,
            partition,
            base,
            reach,
        };
        scope.resolve_links(resource_type, &mut query, 1)?;
        let counting = query.summary == Summary::Count;
        let (total, found) = store.search(
            partition,
            resource_type,
            &query.criteria,
            restrictions,
            &query.sort,
            query.offset,
            if counting { 0 } else { query.count },
            query.total || counting,
        )?;
        let included = if counting || query.includes.is_empty() {
            related::Included::default()
        } else {
            scope.include(&query.includes, &found)?
        };
        let subset = if query.elements.is_empty() {
            Subset::Summary(query.summary)
        } else {
            Subset::Elements(&query.elements)
        };
        bundle::searchset(
            base,
            resource_type,
            &query,
            total,
            &found,
            &included,
            &|resource| self.elements.apply(resource, subset),
        )
    }

    /// Stores a new resource in `partition` for a caller already authorized (the audit
    /// repository's feed): checked as any resource. It keeps the id it carries when that
    /// is a valid id, else gets `new_id`. A resource whose id the partition already holds
    /// is not stored again: the answer is `Updated` with the stored one, so a sender that
    /// delivers at least once can repeat itself harmlessly.
    pub fn store_in<S: VaultStore>(
        &self,
        store: &S,
        partition: &str,
        base: &str,
        resource: Map<String, Value>,
        new_id: String,
        now_ms: i64,
    ) -> Result<WriteOutcome, VaultError> {
        let given = resource
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| resource::valid_id(id))
            .map(str::to_owned);
        let resource = self.conformant(resource::check(&self.registry, resource, None)?)?;
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(id) = &given {
            if let Some(stored) = store.current(partition, &resource_type, id)? {
                return Ok(WriteOutcome::Updated(stored));
            }
        }
        let op = WriteOp {
            resource_type,
            id: given.unwrap_or(new_id),
            kind: WriteKind::Create,
            resource: Some(resource),
            restrictions: None,
        };
        let outcomes = store
            .write(
                partition,
                std::slice::from_ref(&op),
                now_ms,
                &|op, version| self.prepare(op, version, now_ms, base),
            )
            .map_err(|(_, e)| e)?;
        match outcomes.into_iter().next() {
            Some(created @ WriteOutcome::Created(_)) => Ok(created),
            other => Err(VaultError::Store(format!("unexpected outcome {other:?}"))),
        }
    }

    /// `Patient/{id}/$everything`: every current resource of the partition (one
    /// patient's record) that the token may search, its restrictions applied, by type
    /// and then as stored, one page at a time (`_count`, `_offset`); `_type` and
    /// `_since` narrow it. The Patient must be one the token may read.
    pub fn everything<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        id: &str,
        pairs: &[(String, String)],
    ) -> Result<BundleJson, VaultError> {
        self.read(store, ctx, "Patient", id)?;
        let (offset, count) = paging(pairs)?;
        let mut types: Option<Vec<&str>> = None;
        let mut criteria = Vec::new();
        for (key, value) in pairs {
            match key.as_str() {
                "_count" | "_offset" | "_format" | "_pretty" => {}
                "_type" => {
                    let named: Vec<&str> = value.split(',').map(str::trim).collect();
                    if let Some(unknown) = named.iter().find(|t| !self.registry.is_resource_type(t))
                    {
                        return Err(VaultError::Invalid(format!(
                            "_type: '{unknown}' is not a FHIR R4 resource type"
                        )));
                    }
                    types.get_or_insert_with(Vec::new).extend(named);
                }
                "_since" => {
                    let pairs = [("_lastUpdated".to_owned(), format!("ge{value}"))];
                    let query = search::parse(&self.registry, "Patient", &pairs, true, ctx.base)
                        .map_err(|_| {
                            VaultError::Invalid(format!("_since: '{value}' is not an instant"))
                        })?;
                    criteria.extend(query.criteria);
                }
                other => {
                    return Err(VaultError::NotSupported(format!(
                        "$everything takes _type, _since, _count and _offset, not {other}"
                    )))
                }
            }
        }
        let mut total = 0u64;
        let mut page = Vec::new();
        let mut withheld = BTreeSet::new();
        let all: Vec<&str> = self.registry.resource_types().collect();
        for resource_type in types.unwrap_or(all) {
            let Some(access) = self.search_access(ctx.grant, ctx.partition, resource_type)? else {
                withheld.insert(resource_type.to_owned());
                continue;
            };
            let restrictions = access.restrictions();
            let (matches, _) = store.search(
                ctx.partition,
                resource_type,
                &criteria,
                restrictions,
                &[],
                0,
                0,
                true,
            )?;
            // The part of this type's matches that falls on the page.
            let start = (offset as u64).saturating_sub(total);
            let wanted = (count - page.len()) as u64;
            if matches > start && wanted > 0 {
                let (_, found) = store.search(
                    ctx.partition,
                    resource_type,
                    &criteria,
                    restrictions,
                    &[],
                    start as usize,
                    wanted.min(matches - start) as usize,
                    false,
                )?;
                page.extend(found);
            }
            total += matches;
        }
        bundle::everything(ctx.base, id, pairs, total, offset, count, &page, &withheld)
    }

    /// `history-instance` (with `id`) or `history-type`.
    pub fn history<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        id: Option<&str>,
        pairs: &[(String, String)],
    ) -> Result<BundleJson, VaultError> {
        let interaction = if id.is_some() {
            Interaction::HistoryInstance
        } else {
            Interaction::HistoryType
        };
        let access = self.authorize(store, ctx, resource_type, interaction)?;
        if !matches!(access, Access::All) {
            // Past versions cannot be checked against today's restriction one by one.
            return Err(VaultError::Denied(Denial::Scope));
        }
        let (offset, count) = paging(pairs)?;
        let mut since = None;
        for (key, value) in pairs {
            if key == "_since" {
                since = Some(
                    dates::parse(value)
                        .ok_or_else(|| {
                            VaultError::Invalid(format!("_since: '{value}' is not an instant"))
                        })?
                        .lo,
                )
            }
        }
        if let Some(id) = id {
            if store.current(ctx.partition, resource_type, id)?.is_none() {
                return Err(Self::not_found(resource_type, id));
            }
        }
        let (total, versions) =
            store.history(ctx.partition, Some(resource_type), id, since, offset, count)?;
        let path = match id {
            Some(id) => format!("{resource_type}/{id}/_history"),
            None => format!("{resource_type}/_history"),
        };
        bundle::history(ctx.base, &path, pairs, total, offset, count, &versions)
    }

    /// Builds what the store writes for `op` at `version`.
    fn prepare(
        &self,
        op: &WriteOp,
        version: i64,
        now_ms: i64,
        base: &str,
    ) -> Result<Prepared, VaultError> {
        let Some(resource) = &op.resource else {
            return Ok(Prepared {
                content: String::new(),
                index: Vec::new(),
            });
        };
        let mut resource = resource.clone();
        resource::stamp(&mut resource, &op.id, version, now_ms);
        let value = Value::Object(resource);
        let index = index::entries(&self.registry, &op.resource_type, &value, base);
        let content =
            serde_json::to_string(&value).map_err(|e| VaultError::Store(e.to_string()))?;
        Ok(Prepared { content, index })
    }

    fn write_op(
        &self,
        store: &impl VaultStore,
        ctx: &Ctx<'_>,
        mut op: WriteOp,
    ) -> Result<WriteOp, VaultError> {
        let interaction = match op.kind {
            WriteKind::Create => Interaction::Create,
            WriteKind::Update { .. } => Interaction::Update,
            WriteKind::Delete { .. } => Interaction::Delete,
        };
        let access = self.authorize(store, ctx, &op.resource_type, interaction)?;
        if !resource::valid_id(&op.id) {
            return Err(VaultError::Invalid(format!(
                "'{}' is not a valid id",
                op.id
            )));
        }
        if let WriteKind::Update { may_create, .. } = &mut op.kind {
            // An update that creates is a create too: it needs `c` (the written resource
            // still has to meet the update's restrictions, checked in the store).
            *may_create = authz::authorize(
                &self.registry,
                ctx.grant,
                ctx.partition,
                &op.resource_type,
                Interaction::Create,
            )
            .is_ok();
        }
        if let Access::Restricted(r) = access {
            op.restrictions = Some(r);
        }
        Ok(op)
    }

    fn apply<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        ops: &[WriteOp],
    ) -> Result<Vec<WriteOutcome>, (usize, VaultError)> {
        let base = ctx.base.to_owned();
        let now = ctx.now_ms;
        store.write(ctx.partition, ops, now, &|op, version| {
            self.prepare(op, version, now, &base)
        })
    }

    fn single<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        op: WriteOp,
    ) -> Result<WriteOutcome, VaultError> {
        let op = self.write_op(store, ctx, op)?;
        let mut outcomes = self
            .apply(store, ctx, std::slice::from_ref(&op))
            .map_err(|(_, e)| e)?;
        outcomes
            .pop()
            .ok_or_else(|| VaultError::Store("the store returned no outcome".into()))
    }

    /// `create`: the server assigns `new_id` (a client's `id` is ignored, as R4 says).
    /// With `if_none_exist` (conditional create) nothing is created when one resource
    /// meets those criteria: that one is returned, with `false`.
    pub fn create<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        body: &[u8],
        new_id: String,
        if_none_exist: Option<&[(String, String)]>,
    ) -> Result<(Stored, bool), VaultError> {
        self.known_type(resource_type)?;
        let resource =
            self.conformant(resource::parse(&self.registry, body, Some(resource_type))?)?;
        self.authorize(store, ctx, resource_type, Interaction::Create)?;
        if let Some(criteria) = if_none_exist {
            if let Some(existing) = self.find_one(store, ctx, resource_type, criteria)? {
                return Ok((existing, false));
            }
        }
        let op = WriteOp {
            resource_type: resource_type.to_owned(),
            id: new_id,
            kind: WriteKind::Create,
            resource: Some(resource),
            restrictions: None,
        };
        match self.single(store, ctx, op)? {
            WriteOutcome::Created(stored) => Ok((stored, true)),
            other => Err(VaultError::Store(format!("unexpected outcome {other:?}"))),
        }
    }

    /// The one resource of `resource_type` meeting `criteria` (a conditional
    /// interaction's search), `None` when none does, 412 when several do. The token must
    /// grant searching the type; its restrictions apply. Every parameter must be a
    /// search criterion the vault understands: one it ignored would widen the condition.
    pub fn find_one<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        criteria: &[(String, String)],
    ) -> Result<Option<Stored>, VaultError> {
        let access = self.authorize(store, ctx, resource_type, Interaction::Search)?;
        let mut query = search::parse(&self.registry, resource_type, criteria, true, ctx.base)
            .map_err(related::search_error)?;
        let condition = criteria
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        if criteria.is_empty() || query.criteria.len() + query.links.len() != criteria.len() {
            return Err(VaultError::Invalid(format!(
                "the condition '{condition}' must be search criteria only (no _count, _sort, _include...)"
            )));
        }
        let scope = Scope {
            registry: &self.registry,
            store,
            partition: ctx.partition,
            base: ctx.base,
            reach: Reach::Token(ctx.grant),
        };
        scope.resolve_links(resource_type, &mut query, 1)?;
        let restrictions = access.restrictions();
        let (_, mut found) = store.search(
            ctx.partition,
            resource_type,
            &query.criteria,
            restrictions,
            &[],
            0,
            2,
            false,
        )?;
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err(VaultError::VersionConflict(format!(
                "the condition '{condition}' matches more than one {resource_type}"
            ))),
        }
    }

    /// `update` (or create with the client's id, within this partition).
    /// Returns the new version and whether it was created.
    pub fn update<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        id: &str,
        body: &[u8],
        if_match: Option<&str>,
    ) -> Result<(Stored, bool), VaultError> {
        self.known_type(resource_type)?;
        let resource =
            self.conformant(resource::parse(&self.registry, body, Some(resource_type))?)?;
        match resource.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            Some(body_id) => {
                return Err(VaultError::Invalid(format!(
                    "the resource's id '{body_id}' is not the URL's '{id}'"
                )))
            }
            None => {
                return Err(VaultError::Invalid(
                    "an update must carry the resource's id".into(),
                ))
            }
        }
        self.write_update(store, ctx, resource_type, id, resource, if_match)
    }

    /// Writes `resource`, already checked, as the new version of `id` (or creates it).
    fn write_update<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        id: &str,
        resource: Map<String, Value>,
        if_match: Option<&str>,
    ) -> Result<(Stored, bool), VaultError> {
        let op = WriteOp {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            kind: WriteKind::Update {
                if_match: parse_if_match(if_match)?,
                may_create: false,
            },
            resource: Some(resource),
            restrictions: None,
        };
        match self.single(store, ctx, op)? {
            WriteOutcome::Created(stored) => Ok((stored, true)),
            WriteOutcome::Updated(stored) => Ok((stored, false)),
            other => Err(VaultError::Store(format!("unexpected outcome {other:?}"))),
        }
    }

    /// `delete` (logical: a new version records it). Deleting what does not exist, or
    /// is deleted already, succeeds and changes nothing.
    pub fn delete<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<Option<Stored>, VaultError> {
        if !resource::valid_id(id) {
            return Err(Self::not_found(resource_type, id));
        }
        let op = WriteOp {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            kind: WriteKind::Delete {
                if_match: parse_if_match(if_match)?,
            },
            resource: None,
            restrictions: None,
        };
        match self.single(store, ctx, op)? {
            WriteOutcome::Deleted(stored) => Ok(stored),
            other => Err(VaultError::Store(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Conditional update (`PUT [type]?[criteria]`): the one matching resource is
    /// updated (the body's id, if any, must be its id); with no match the resource is
    /// created, with the body's id or else `new_id` (an id that exists but did not match
    /// is a conflict); several matches: 412.
    #[allow(clippy::too_many_arguments)]
    pub fn conditional_update<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        criteria: &[(String, String)],
        body: &[u8],
        if_match: Option<&str>,
        new_id: String,
    ) -> Result<(Stored, bool), VaultError> {
        self.known_type(resource_type)?;
        let mut resource =
            self.conformant(resource::parse(&self.registry, body, Some(resource_type))?)?;
        let body_id = resource.get("id").and_then(Value::as_str);
        let id = self.conditional_id(store, ctx, resource_type, criteria, body_id, || new_id)?;
        resource.insert("id".into(), Value::String(id.clone()));
        self.write_update(store, ctx, resource_type, &id, resource, if_match)
    }

    /// The id a conditional update writes: the one matching resource's (the body's id,
    /// if any, must be it); with no match the body's id, unless a resource that did not
    /// match holds it (409), or else `new_id`; several matches: 412.
    pub(crate) fn conditional_id<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        criteria: &[(String, String)],
        body_id: Option<&str>,
        new_id: impl FnOnce() -> String,
    ) -> Result<String, VaultError> {
        Ok(match (self.find_one(store, ctx, resource_type, criteria)?, body_id) {
            (Some(found), Some(body_id)) if body_id != found.id => {
                return Err(VaultError::Invalid(format!(
                    "the resource's id '{body_id}' is not the id of the one matching resource, '{}'",
                    found.id
                )))
            }
            (Some(found), _) => found.id,
            (None, Some(body_id)) => {
                if store.current(ctx.partition, resource_type, body_id)?.is_some() {
                    return Err(VaultError::Conflict(format!(
                        "{resource_type}/{body_id} exists but does not meet the condition"
                    )));
                }
                body_id.to_owned()
            }
            (None, None) => new_id(),
        })
    }

    /// Conditional delete (`DELETE [type]?[criteria]`): the one matching resource;
    /// nothing when none matches; 412 when several do.
    pub fn conditional_delete<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        criteria: &[(String, String)],
        if_match: Option<&str>,
    ) -> Result<Option<Stored>, VaultError> {
        self.authorize(store, ctx, resource_type, Interaction::Delete)?;
        match self.find_one(store, ctx, resource_type, criteria)? {
            Some(found) => self.delete(store, ctx, resource_type, &found.id, if_match),
            None => Ok(None),
        }
    }

    /// `patch` with a JSON Patch (RFC 6902): applied to the current version, the result
    /// checked as any update and written only if no other write came in between (the
    /// version read is the `If-Match`, unless the client gave its own).
    pub fn patch<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        resource_type: &str,
        id: &str,
        body: &[u8],
        if_match: Option<&str>,
    ) -> Result<Stored, VaultError> {
        self.authorize(store, ctx, resource_type, Interaction::Patch)?;
        let operations: Value = serde_json::from_slice(body)
            .map_err(|e| VaultError::Invalid(format!("the JSON Patch is not JSON: {e}")))?;
        let current = store
            .current(ctx.partition, resource_type, id)?
            .ok_or_else(|| Self::not_found(resource_type, id))?;
        if current.deleted {
            return Err(VaultError::Gone(format!(
                "{resource_type}/{id} was deleted"
            )));
        }
        let before = current.json()?;
        let patched = patch::apply(&before, &operations).map_err(|e| match e {
            patch::PatchError::Malformed(text) => VaultError::Invalid(text),
            patch::PatchError::NotApplicable(text) => VaultError::Unprocessable(text),
        })?;
        if patched.get("resourceType") != before.get("resourceType")
            || patched.get("id").and_then(Value::as_str) != Some(id)
        {
            return Err(VaultError::Unprocessable(
                "a patch may not change the resource's type or id".into(),
            ));
        }
        let Value::Object(patched) = patched else {
            return Err(VaultError::Invalid(
                "a patched resource is a JSON object".into(),
            ));
        };
        let resource = self.conformant(resource::check(
            &self.registry,
            patched,
            Some(resource_type),
        )?)?;
        let version = if_match
            .map(str::to_owned)
            .unwrap_or_else(|| current.etag());
        let (stored, _) =
            self.write_update(store, ctx, resource_type, id, resource, Some(&version))?;
        Ok(stored)
    }

    /// `batch` or `transaction` (POST of a Bundle to the partition's base).
    pub fn batch<S: VaultStore>(
        &self,
        store: &S,
        ctx: &Ctx<'_>,
        body: &[u8],
        new_id: &mut dyn FnMut() -> String,
    ) -> Result<BatchOutcome, VaultError> {
        // A batch's entries fail one by one, but a partition the token does not name
        // fails the whole request, as for a transaction (and before the body is read).
        authz::grants_partition(ctx.grant, ctx.partition).map_err(VaultError::Denied)?;
        bundle::run(self, store, ctx, body, new_id)
    }
}

/// `_offset` and `_count` (at most [`search::MAX_COUNT`]) of a history or an operation.
fn paging(pairs: &[(String, String)]) -> Result<(usize, usize), VaultError> {
    let mut offset = 0;
    let mut count = search::DEFAULT_COUNT;
    for (key, value) in pairs {
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| VaultError::Invalid(format!("{key} must be a whole number")))
        };
        match key.as_str() {
            "_count" => count = number()?.min(search::MAX_COUNT),
            "_offset" => offset = number()?,
            _ => {}
        }
    }
    Ok((offset, count))
}

/// The issues of a nonconformant resource as one sentence.
fn describe(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("{}: {}", i.location, i.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `If-Match: W/"3"` (or `"3"`) -> 3.
pub fn parse_if_match(header: Option<&str>) -> Result<Option<i64>, VaultError> {
    let Some(header) = header else {
        return Ok(None);
    };
    let tag = header.trim().trim_start_matches("W/").trim_matches('"');
    tag.parse().map(Some).map_err(|_| {
        VaultError::Invalid(format!(
            "If-Match '{header}' is not a version ETag such as W/\"1\""
        ))
    })
}

/// An OperationOutcome for an error (or information).
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }],
    })
}
