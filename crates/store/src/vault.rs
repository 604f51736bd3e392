//! The FHIR Vault's tables: current resources, every version, and the search index.
//!
//! Search is SQL ([`crate::search`]): the database filters, counts, sorts and cuts the
//! page; only the page's resources are read.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tessera_vault::dates::DateRange;
use tessera_vault::index::{IndexEntry, IndexValue};
use tessera_vault::search::{Criterion, SortKey};
use tessera_vault::{
    id_criterion, Prepared, Stored, VaultError, VaultStore, WriteKind, WriteOp, WriteOutcome,
};

use crate::schema::{fhir_index, fhir_resources, fhir_versions, partitions};
use crate::search::{Plan, Search};
use crate::{DbConnection, Store};

type Row = (String, String, i64, i64, bool, String);

/// The columns of a current resource, in [`Row`]'s order.
const CURRENT_ROW: (
    fhir_resources::resource_type,
    fhir_resources::id,
    fhir_resources::version,
    fhir_resources::last_updated,
    fhir_resources::deleted,
    fhir_resources::content,
) = (
    fhir_resources::resource_type,
    fhir_resources::id,
    fhir_resources::version,
    fhir_resources::last_updated,
    fhir_resources::deleted,
    fhir_resources::content,
);

/// The columns of a version, in [`Row`]'s order.
const VERSION_ROW: (
    fhir_versions::resource_type,
    fhir_versions::id,
    fhir_versions::version,
    fhir_versions::last_updated,
    fhir_versions::deleted,
    fhir_versions::content,
) = (
    fhir_versions::resource_type,
    fhir_versions::id,
    fhir_versions::version,
    fhir_versions::last_updated,
    fhir_versions::deleted,
    fhir_versions::content,
);

fn stored((resource_type, id, version, last_updated, deleted, content): Row) -> Stored {
    Stored {
        resource_type,
        id,
        version,
        last_updated,
        deleted,
        content,
    }
}

/// The current versions of `ids` that exist, in the order of `ids`.
fn current_in_order(
    conn: &mut DbConnection,
    partition: &str,
    resource_type: &str,
    ids: &[String],
) -> Result<Vec<Stored>, VaultError> {
    let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    let rows = crate::search::resources_by_id(conn, partition, resource_type, &wanted)
        .map_err(store_error)?;
    let mut by_id: HashMap<String, Stored> = rows
        .into_iter()
        .map(|r| {
            let row = (
                r.resource_type,
                r.id,
                r.version,
                r.last_updated,
                r.deleted,
                r.content,
            );
            (row.1.clone(), stored(row))
        })
        .collect();
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

fn store_error(err: impl std::fmt::Display) -> VaultError {
    VaultError::Store(err.to_string())
}

/// Why a write transaction stopped.
enum TxError {
    Db(DieselError),
    Vault(usize, VaultError),
}

impl From<DieselError> for TxError {
    fn from(err: DieselError) -> Self {
        TxError::Db(err)
    }
}

/// The rows of one entry, in the index table's columns.
struct IndexColumns {
    system: Option<String>,
    code: Option<String>,
    text_value: Option<String>,
    lo: Option<i64>,
    hi: Option<i64>,
    reference: Option<String>,
    number: Option<String>,
}

fn columns(value: &IndexValue) -> IndexColumns {
    let mut c = IndexColumns {
        system: None,
        code: None,
        text_value: None,
        lo: None,
        hi: None,
        reference: None,
        number: None,
    };
    match value {
        IndexValue::Token { system, code } => {
            c.system = system.clone();
            c.code = Some(code.clone());
        }
        IndexValue::String { exact, normalized } => {
            c.code = Some(exact.clone());
            c.text_value = Some(normalized.clone());
        }
        IndexValue::Date(range) => {
            c.lo = Some(range.lo);
            c.hi = Some(range.hi);
        }
        IndexValue::Reference { reference, id } => {
            c.reference = Some(reference.clone());
            c.code = Some(id.clone());
        }
        IndexValue::Uri(uri) => c.code = Some(uri.clone()),
        IndexValue::Number(key) => c.number = Some(key.clone()),
        IndexValue::Quantity { key, system, code } => {
            c.number = Some(key.clone());
            c.system = system.clone();
            c.code = code.clone();
        }
        IndexValue::Composite(parts) => match parts.as_slice() {
            // A reference and a token: each where its kind goes, the reference's id
            // in text_value.
            [IndexValue::Reference { reference, id }, IndexValue::Token { system, code }] => {
                c.reference = Some(reference.clone());
                c.text_value = Some(id.clone());
                c.system = system.clone();
                c.code = Some(code.clone());
            }
            // A token and two numbers: the second number's key in text_value.
            [IndexValue::Token { system, code }, IndexValue::Number(start), IndexValue::Number(end)] =>
            {
                c.system = system.clone();
                c.code = Some(code.clone());
                c.number = Some(start.clone());
                c.text_value = Some(end.clone());
            }
            // A token first, where tokens go; the second in the columns left: a
            // token's or a unit's code in text_value and `system|code` in reference, a
            // number in number, a date in lo/hi, a string in text_value.
            [IndexValue::Token { system, code }, second] => {
                c.system = system.clone();
                c.code = Some(code.clone());
                match second {
                    IndexValue::Token { system, code } => {
                        c.text_value = Some(code.clone());
                        c.reference = Some(format!("{}|{code}", system.as_deref().unwrap_or("")));
                    }
                    IndexValue::Quantity { key, system, code } => {
                        c.number = Some(key.clone());
                        c.text_value = code.clone();
                        c.reference = Some(format!(
                            "{}|{}",
                            system.as_deref().unwrap_or(""),
                            code.as_deref().unwrap_or("")
                        ));
                    }
                    IndexValue::Date(range) => {
                        c.lo = Some(range.lo);
                        c.hi = Some(range.hi);
                    }
                    IndexValue::String { normalized, .. } => {
                        c.text_value = Some(normalized.clone())
                    }
                    _ => {}
                }
            }
            _ => {}
        },
    }
    c
}

fn load_current(
    conn: &mut DbConnection,
    partition: &str,
    resource_type: &str,
    id: &str,
) -> QueryResult<Option<Stored>> {
    let query = fhir_resources::table
        .filter(fhir_resources::partition_id.eq(partition))
        .filter(fhir_resources::resource_type.eq(resource_type))
        .filter(fhir_resources::id.eq(id))
        .select(CURRENT_ROW);
    on_backend!(conn, |db| query.first::<Row>(db))
        .optional()
        .map(|row| row.map(stored))
}

/// Does the resource meet one of the restrictions (as it is in this transaction)?
fn within(conn: &mut DbConnection, partition: &str, op: &WriteOp) -> QueryResult<bool> {
    let Some(restrictions) = &op.restrictions else {
        return Ok(true);
    };
    let criteria = [id_criterion(&op.id)];
    let search = Search {
        partition,
        resource_type: &op.resource_type,
        criteria: &criteria,
        restrictions: Some(restrictions),
    };
    Ok(search.count(conn, &Plan::Sorted)? > 0)
}

type IndexRow<'a> = (
    diesel::dsl::Eq<fhir_index::partition_id, &'a str>,
    diesel::dsl::Eq<fhir_index::resource_type, &'a str>,
    diesel::dsl::Eq<fhir_index::resource_id, String>,
    diesel::dsl::Eq<fhir_index::ordinal, i32>,
    diesel::dsl::Eq<fhir_index::param, String>,
    diesel::dsl::Eq<fhir_index::system, Option<String>>,
    diesel::dsl::Eq<fhir_index::code, Option<String>>,
    diesel::dsl::Eq<fhir_index::text_value, Option<String>>,
    diesel::dsl::Eq<fhir_index::lo, Option<i64>>,
    diesel::dsl::Eq<fhir_index::hi, Option<i64>>,
    diesel::dsl::Eq<fhir_index::reference, Option<String>>,
    diesel::dsl::Eq<fhir_index::sort_lo, Option<i64>>,
    diesel::dsl::Eq<fhir_index::sort_hi, Option<i64>>,
    diesel::dsl::Eq<fhir_index::number, Option<String>>,
);

/// The resource's ordering date ([`tessera_vault::Registry::ordering_date`]) among its
/// index entries, which every one of its index rows carries.
fn ordering_of(resource_type: &str, entries: &[IndexEntry]) -> Option<DateRange> {
    let param = tessera_vault::Registry::ordering_date(resource_type);
    entries.iter().find_map(|e| match &e.value {
        IndexValue::Date(range) if e.param == param => Some(*range),
        _ => None,
    })
}

fn index_row<'a>(
    partition: &'a str,
    resource_type: &'a str,
    id: String,
    ordinal: usize,
    entry: &IndexEntry,
    ordering: Option<DateRange>,
) -> IndexRow<'a> {
    let c = columns(&entry.value);
    (
        fhir_index::partition_id.eq(partition),
        fhir_index::resource_type.eq(resource_type),
        fhir_index::resource_id.eq(id),
        fhir_index::ordinal.eq(i32::try_from(ordinal).unwrap_or(i32::MAX)),
        fhir_index::param.eq(entry.param.clone()),
        fhir_index::system.eq(c.system),
        fhir_index::code.eq(c.code),
        fhir_index::text_value.eq(c.text_value),
        fhir_index::lo.eq(c.lo),
        fhir_index::hi.eq(c.hi),
        fhir_index::reference.eq(c.reference),
        fhir_index::sort_lo.eq(ordering.map(|r| r.lo)),
        fhir_index::sort_hi.eq(ordering.map(|r| r.hi)),
        fhir_index::number.eq(c.number),
    )
}

/// Inserts index rows, many a statement (multi-row inserts are per backend: diesel's
/// MultiBackend has none). SQLite allows 32766 bound values a statement: 14 a row.
fn insert_index_rows(conn: &mut DbConnection, rows: &[IndexRow<'_>]) -> QueryResult<()> {
    for chunk in rows.chunks(2000) {
        let insert = diesel::insert_into(fhir_index::table).values(chunk);
        match conn {
            DbConnection::Sqlite(c) => insert.execute(c)?,
            DbConnection::Postgres(c) => insert.execute(c)?,
        };
    }
    Ok(())
}

/// The registry of search parameters, loaded once (for the audit repository's index).
fn registry() -> Option<&'static tessera_vault::Registry> {
    static REGISTRY: std::sync::OnceLock<Option<tessera_vault::Registry>> =
        std::sync::OnceLock::new();
    REGISTRY
        .get_or_init(|| match tessera_vault::Registry::load() {
            Ok(registry) => Some(registry),
            Err(e) => {
                tracing::error!(error = %e, "search parameters could not be loaded");
                None
            }
        })
        .as_ref()
}

/// Resources read per transaction while indexing what a new kind of search parameter
/// covers.
const REINDEX_PAGE: i64 = 500;

/// Indexes the resources already held on the kinds of search parameter a migration
/// added (`fhir_reindex`: `number`, `quantity`, or one parameter as `param:Type.code`), so a
/// search never misses a resource for
/// having been stored before the vault searched that kind; then forgets those kinds.
/// Runs when the store opens, page by page; the audit repository's events are indexed
/// on its own parameters only and are left alone. Returns the resources indexed.
pub(crate) fn reindex_pending(conn: &mut DbConnection) -> QueryResult<u64> {
    use crate::schema::fhir_reindex;
    let kinds: Vec<String> = fhir_reindex::table.select(fhir_reindex::kind).load(conn)?;
    if kinds.is_empty() {
        return Ok(0);
    }
    let Some(registry) = registry() else {
        return Err(DieselError::QueryBuilderError(
            "no search parameter registry".into(),
        ));
    };
    let mut after = (String::new(), String::new(), String::new());
    let mut indexed = 0;
    loop {
        let page: Vec<(String, String, String, String)> = fhir_resources::table
            .filter(fhir_resources::deleted.eq(false))
            .filter(fhir_resources::partition_id.ne(tessera_atna::REPOSITORY_PARTITION))
            .filter(
                fhir_resources::partition_id
                    .gt(&after.0)
                    .or(fhir_resources::partition_id
                        .eq(&after.0)
                        .and(fhir_resources::resource_type.gt(&after.1)))
                    .or(fhir_resources::partition_id
                        .eq(&after.0)
                        .and(fhir_resources::resource_type.eq(&after.1))
                        .and(fhir_resources::id.gt(&after.2))),
            )
            .order((
                fhir_resources::partition_id,
                fhir_resources::resource_type,
                fhir_resources::id,
            ))
            .limit(REINDEX_PAGE)
            .select((
                fhir_resources::partition_id,
                fhir_resources::resource_type,
                fhir_resources::id,
                fhir_resources::content,
            ))
            .load(conn)?;
        let Some(last) = page.last() else { break };
        after = (last.0.clone(), last.1.clone(), last.2.clone());
        conn.transaction(|conn| {
            for (partition, resource_type, id, content) in &page {
                let Ok(resource) = serde_json::from_str::<serde_json::Value>(content) else {
                    continue;
                };
                let entries = tessera_vault::index::entries(registry, resource_type, &resource, "");
                let ordering = ordering_of(resource_type, &entries);
                let added: Vec<&IndexEntry> = entries
                    .iter()
                    .filter(|e| {
                        registry.param(resource_type, &e.param).is_some_and(|p| {
                            kinds.iter().any(|k| {
                                k == p.kind.name()
                                    || k.strip_prefix("param:")
                                        == Some(&format!("{resource_type}.{}", p.code))
                            })
                        })
                    })
                    .collect();
                if added.is_empty() {
                    continue;
                }
                let next: Option<i32> = fhir_index::table
                    .filter(fhir_index::partition_id.eq(partition))
                    .filter(fhir_index::resource_type.eq(resource_type))
                    .filter(fhir_index::resource_id.eq(id))
                    .select(diesel::dsl::max(fhir_index::ordinal))
                    .first(conn)?;
                let first = next.map_or(0, |n| n as usize + 1);
                let rows: Vec<_> = added
                    .iter()
                    .enumerate()
                    .map(|(n, entry)| {
                        index_row(
                            partition,
                            resource_type,
                            id.clone(),
                            first + n,
                            entry,
                            ordering,
                        )
                    })
                    .collect();
                insert_index_rows(conn, &rows)?;
                indexed += 1;
            }
            QueryResult::Ok(())
        })?;
    }
    diesel::delete(fhir_reindex::table).execute(conn)?;
    Ok(indexed)
}

/// Adds audit records to the audit repository (ITI-81): each as a FHIR AuditEvent in
/// the repository partition, indexed on the repository's parameters, in bulk. Called by
/// [`Store::catch_up_audit_repository`] in the transaction that moves its cursor.
pub(crate) fn index_repository(
    conn: &mut DbConnection,
    records: &[tessera_atna::Record],
) -> QueryResult<()> {
    let Some(registry) = registry() else {
        return Err(DieselError::QueryBuilderError(
            "no search parameter registry".into(),
        ));
    };
    let partition = tessera_atna::REPOSITORY_PARTITION;
    // An event this node also received through the feed (its own, sent back by a
    // repository in a loop, say) is held once.
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let held: std::collections::HashSet<String> =
        crate::search::resources_by_id(conn, partition, "AuditEvent", &ids)?
            .into_iter()
            .map(|r| r.id)
            .collect();
    let mut resources = Vec::with_capacity(records.len());
    let mut rows = Vec::new();
    for record in records.iter().filter(|r| !held.contains(&r.id)) {
        let (event, last_updated) = tessera_atna::repository_copy(record);
        let entries = tessera_vault::index::entries(registry, "AuditEvent", &event, "");
        let ordering = ordering_of("AuditEvent", &entries);
        rows.extend(
            entries
                .iter()
                .filter(|e| tessera_atna::REPOSITORY_PARAMS.contains(&e.param.as_str()))
                .enumerate()
                .map(|(ordinal, entry)| {
                    index_row(
                        partition,
                        "AuditEvent",
                        record.id.clone(),
                        ordinal,
                        entry,
                        ordering,
                    )
                }),
        );
        resources.push((
            fhir_resources::partition_id.eq(partition),
            fhir_resources::resource_type.eq("AuditEvent"),
            fhir_resources::id.eq(record.id.clone()),
            fhir_resources::version.eq(1i64),
            fhir_resources::last_updated.eq(last_updated),
            fhir_resources::deleted.eq(false),
            fhir_resources::content.eq(event.to_string()),
        ));
    }
    for chunk in resources.chunks(1000) {
        let insert = diesel::insert_into(fhir_resources::table).values(chunk);
        match conn {
            DbConnection::Sqlite(c) => insert.execute(c)?,
            DbConnection::Postgres(c) => insert.execute(c)?,
        };
    }
    insert_index_rows(conn, &rows)
}

fn write_version(
    conn: &mut DbConnection,
    partition: &str,
    op: &WriteOp,
    version: i64,
    now_ms: i64,
    deleted: bool,
    prepared: &Prepared,
) -> QueryResult<Stored> {
    let key = (
        fhir_resources::partition_id.eq(partition),
        fhir_resources::resource_type.eq(&op.resource_type),
        fhir_resources::id.eq(&op.id),
    );
    let values = (
        fhir_resources::version.eq(version),
        fhir_resources::last_updated.eq(now_ms),
        fhir_resources::deleted.eq(deleted),
        fhir_resources::content.eq(&prepared.content),
    );
    if version == 1 {
        diesel::insert_into(fhir_resources::table)
            .values((key, values))
            .execute(conn)?;
    } else {
        diesel::update(
            fhir_resources::table
                .filter(fhir_resources::partition_id.eq(partition))
                .filter(fhir_resources::resource_type.eq(&op.resource_type))
                .filter(fhir_resources::id.eq(&op.id)),
        )
        .set(values)
        .execute(conn)?;
    }
    diesel::insert_into(fhir_versions::table)
        .values((
            fhir_versions::partition_id.eq(partition),
            fhir_versions::resource_type.eq(&op.resource_type),
            fhir_versions::id.eq(&op.id),
            fhir_versions::version.eq(version),
            fhir_versions::last_updated.eq(now_ms),
            fhir_versions::deleted.eq(deleted),
            fhir_versions::content.eq(&prepared.content),
        ))
        .execute(conn)?;
    // A first version has no index rows to replace.
    if version > 1 {
        crate::search::delete_index_rows(conn, partition, &op.resource_type, &op.id)?;
    }
    let ordering = ordering_of(&op.resource_type, &prepared.index);
    let rows: Vec<_> = prepared
        .index
        .iter()
        .enumerate()
        .map(|(ordinal, entry)| {
            index_row(
                partition,
                &op.resource_type,
                op.id.clone(),
                ordinal,
                entry,
                ordering,
            )
        })
        .collect();
    insert_index_rows(conn, &rows)?;
    Ok(Stored {
        resource_type: op.resource_type.clone(),
        id: op.id.clone(),
        version,
        last_updated: now_ms,
        deleted,
        content: prepared.content.clone(),
    })
}

fn apply_one(
    conn: &mut DbConnection,
    partition: &str,
    op: &WriteOp,
    now_ms: i64,
    prepare: &dyn Fn(&WriteOp, i64) -> Result<Prepared, VaultError>,
) -> Result<Result<WriteOutcome, VaultError>, DieselError> {
    let current = load_current(conn, partition, &op.resource_type, &op.id)?;
    let live = current.as_ref().filter(|c| !c.deleted);
    let if_match = match &op.kind {
        WriteKind::Update { if_match, .. } | WriteKind::Delete { if_match } => *if_match,
        WriteKind::Create => None,
    };
    if let Some(expected) = if_match {
        if live.map(|c| c.version) != Some(expected) {
            return Ok(Err(VaultError::VersionConflict(format!(
                "If-Match W/\"{expected}\" does not match the current version of {}/{}",
                op.resource_type, op.id
            ))));
        }
    }
    if live.is_some() && !within(conn, partition, op)? {
        return Ok(Err(VaultError::Denied(tessera_vault::Denial::Scope)));
    }
    let version = current.as_ref().map_or(1, |c| c.version + 1);
    let outcome = match &op.kind {
        WriteKind::Create if current.is_some() => {
            return Ok(Err(VaultError::Conflict(format!(
                "{}/{} exists already",
                op.resource_type, op.id
            ))))
        }
        WriteKind::Update {
            may_create: false, ..
        } if current.is_none() => return Ok(Err(VaultError::Denied(tessera_vault::Denial::Scope))),
        WriteKind::Delete { .. } => {
            if live.is_none() {
                return Ok(Ok(WriteOutcome::Deleted(None)));
            }
            let none = Prepared {
                content: String::new(),
                index: Vec::new(),
            };
            return Ok(Ok(WriteOutcome::Deleted(Some(write_version(
                conn, partition, op, version, now_ms, true, &none,
            )?))));
        }
        WriteKind::Create | WriteKind::Update { .. } => {
            let prepared = match prepare(op, version) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let written = write_version(conn, partition, op, version, now_ms, false, &prepared)?;
            if current.is_none() {
                WriteOutcome::Created(written)
            } else {
                WriteOutcome::Updated(written)
            }
        }
    };
    if !within(conn, partition, op)? {
        return Ok(Err(VaultError::Denied(tessera_vault::Denial::Scope)));
    }
    Ok(Ok(outcome))
}

impl Store {
    /// The account of a partition already seen, without touching the database.
    pub fn cached_account_of_partition(&self, partition: &str) -> Option<String> {
        self.known_partitions
            .read()
            .ok()
            .and_then(|known| known.get(partition).cloned())
    }

    /// The Account URN a partition belongs to; `None` if there is no such partition.
    pub fn account_of_partition(
        &self,
        partition: &str,
    ) -> Result<Option<String>, tessera_iam::StoreError> {
        if let Some(account) = self.cached_account_of_partition(partition) {
            return Ok(Some(account));
        }
        let mut conn = self.conn()?;
        let account: Option<String> = partitions::table
            .filter(partitions::id.eq(partition))
            .select(partitions::account_urn)
            .first(&mut *conn)
            .optional()
            .map_err(crate::db_error)?;
        if let (Some(account), Ok(mut known)) = (&account, self.known_partitions.write()) {
            known.insert(partition.to_owned(), account.clone());
        }
        Ok(account)
    }
}

impl VaultStore for Store {
    fn partition_exists(&self, partition: &str) -> Result<bool, VaultError> {
        self.account_of_partition(partition)
            .map(|account| account.is_some())
            .map_err(store_error)
    }

    fn current(
        &self,
        partition: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Stored>, VaultError> {
        let mut conn = self.conn().map_err(store_error)?;
        load_current(&mut conn, partition, resource_type, id).map_err(store_error)
    }

    fn version(
        &self,
        partition: &str,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<Stored>, VaultError> {
        let mut conn = self.conn().map_err(store_error)?;
        let query = fhir_versions::table
            .filter(fhir_versions::partition_id.eq(partition))
            .filter(fhir_versions::resource_type.eq(resource_type))
            .filter(fhir_versions::id.eq(id))
            .filter(fhir_versions::version.eq(version))
            .select(VERSION_ROW);
        on_backend!(conn, |db| query.first::<Row>(db))
            .optional()
            .map(|row| row.map(stored))
            .map_err(store_error)
    }

    fn history(
        &self,
        partition: &str,
        resource_type: Option<&str>,
        id: Option<&str>,
        since: Option<i64>,
        offset: usize,
        count: usize,
    ) -> Result<(u64, Vec<Stored>), VaultError> {
        let mut conn = self.conn().map_err(store_error)?;
        let filtered = || {
            let mut query = fhir_versions::table
                .filter(fhir_versions::partition_id.eq(partition))
                .into_boxed();
            if let Some(ty) = resource_type {
                query = query.filter(fhir_versions::resource_type.eq(ty));
            }
            if let Some(id) = id {
                query = query.filter(fhir_versions::id.eq(id));
            }
            if let Some(since) = since {
                query = query.filter(fhir_versions::last_updated.ge(since));
            }
            query
        };
        let total: i64 = filtered()
            .count()
            .get_result(&mut *conn)
            .map_err(store_error)?;
        let rows: Vec<Row> = filtered()
            .order((
                fhir_versions::last_updated.desc(),
                fhir_versions::version.desc(),
                fhir_versions::id.asc(),
            ))
            .offset(i64::try_from(offset).unwrap_or(i64::MAX))
            .limit(i64::try_from(count).unwrap_or(i64::MAX))
            .select(VERSION_ROW)
            .load(&mut *conn)
            .map_err(store_error)?;
        Ok((
            u64::try_from(total).unwrap_or_default(),
            rows.into_iter().map(stored).collect(),
        ))
    }

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
    ) -> Result<(u64, Vec<Stored>), VaultError> {
        let mut conn = self.conn().map_err(store_error)?;
        let search = Search {
            partition,
            resource_type,
            criteria,
            restrictions,
        };
        let sort = &crate::search::effective_sort(resource_type, sort);
        let plan = search.plan(&mut conn, sort).map_err(store_error)?;
        let (total, mut page) = if exact_total {
            let total = search.count(&mut conn, &plan).map_err(store_error)?;
            if count == 0 || offset as u64 >= total {
                return Ok((total, Vec::new()));
            }
            let page = search
                .page(&mut conn, &plan, sort, offset, count)
                .map_err(store_error)?;
            (total, page)
        } else {
            // One more than the page says whether another follows.
            let page = search
                .page(&mut conn, &plan, sort, offset, count.saturating_add(1))
                .map_err(store_error)?;
            ((offset + page.len()) as u64, page)
        };
        page.truncate(count);
        Ok((
            total,
            current_in_order(&mut conn, partition, resource_type, &page)?,
        ))
    }

    fn matching_ids(
        &self,
        partition: &str,
        resource_type: &str,
        criteria: &[Criterion],
        restrictions: Option<&[Vec<Criterion>]>,
    ) -> Result<Vec<String>, VaultError> {
        let mut conn = self.conn().map_err(store_error)?;
        let search = Search {
            partition,
            resource_type,
            criteria,
            restrictions,
        };
        search.ids(&mut conn).map_err(store_error)
    }

    fn current_many(
        &self,
        partition: &str,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<Stored>, VaultError> {
        let mut conn = self.conn().map_err(store_error)?;
        let found = current_in_order(&mut conn, partition, resource_type, ids)?;
        Ok(found.into_iter().filter(|s| !s.deleted).collect())
    }

    fn write(
        &self,
        partition: &str,
        ops: &[WriteOp],
        now_ms: i64,
        prepare: &dyn Fn(&WriteOp, i64) -> Result<Prepared, VaultError>,
    ) -> Result<Vec<WriteOutcome>, (usize, VaultError)> {
        let mut conn = self.conn().map_err(|e| (0, store_error(e)))?;
        let result = conn.transaction::<_, TxError, _>(|conn| {
            // Take the write lock first: the partition's row lock on PostgreSQL serialises
            // writers of one partition, so versions follow one another; on SQLite it makes
            // this the writer at once instead of failing to upgrade a read later.
            diesel::update(partitions::table.filter(partitions::id.eq(partition)))
                .set(partitions::id.eq(partitions::id))
                .execute(conn)?;
            let mut outcomes = Vec::with_capacity(ops.len());
            for (i, op) in ops.iter().enumerate() {
                match apply_one(conn, partition, op, now_ms, prepare)? {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(e) => return Err(TxError::Vault(i, e)),
                }
            }
            Ok(outcomes)
        });
        result.map_err(|e| match e {
            TxError::Vault(i, e) => (i, e),
            TxError::Db(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => (
                0,
                VaultError::Conflict("the resource was changed at the same time; retry".into()),
            ),
            TxError::Db(e) => (0, store_error(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use tessera_atna::{Event, Outcome, Record};
    use tessera_types::UnixTime;

    /// The repository's copies written before this form moved into `tessera_atna` had
    /// their `lastUpdated` from the vault's instant formatter: `audit verify` compares
    /// against them, so both must write the same text.
    #[test]
    fn a_repository_copy_is_last_updated_as_the_vault_writes_instants() {
        for seconds in [0, 1_764_633_600, 1_796_119_323, 4_102_444_799] {
            let record = Record {
                id: "e".into(),
                recorded: UnixTime(seconds),
                observer: "https://tessera.example".into(),
                client_address: None,
                outcome: Outcome::Success,
                event: Event::AdminAction {
                    command: "user add".into(),
                    target: "audrey".into(),
                    operator: "root".into(),
                },
            };
            let (copy, ms) = tessera_atna::repository_copy(&record);
            assert_eq!(ms, seconds * 1000);
            assert_eq!(
                copy["meta"]["lastUpdated"],
                tessera_vault::dates::format_instant(ms)
            );
            assert_eq!(copy["meta"]["versionId"], "1");
        }
    }
}
