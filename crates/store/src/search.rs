//! FHIR search in SQL: the criteria of `tessera_vault::search` become one statement over
//! `fhir_resources` and `fhir_index`, so the database filters, sorts and cuts the page,
//! and a search reads only the rows of its page (plus what the planner needs to count).
//!
//! Every criterion is an `id IN (ids of the index rows that match)` (or `NOT IN` for
//! `:not` and `:missing=true`), which both backends answer from the index on
//! (partition, type, param, value). A sort key is the least (ascending) or greatest
//! (descending) value of its parameter per resource; resources without one come last;
//! ties go to the oldest `lastUpdated`, then the id.
//!
//! A search sorted by its type's ordering date (the audit trail's `date`, otherwise
//! `_lastUpdated`) and filtered on it walks an index in that order and stops at the
//! page instead ([`Search::plan`]): the rows of its most selective code or reference
//! (each index row carries its resource's ordering date), or the date's own rows; ties
//! go to the period's end, then the id. Values are always bound, never spliced into the
//! text.

use diesel::backend::Backend;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType, Text};
use diesel::{QueryResult, QueryableByName, RunQueryDsl};
use tessera_vault::registry::ParamKind;
use tessera_vault::search::{Criterion, Match, NumberMatch, Prefix, SortKey, StringMode};

use crate::DbConnection;

/// The date every version of every resource has (`meta.lastUpdated`, stamped by the
/// vault): the order of a search that names none.
const LAST_UPDATED: &str = "_lastUpdated";

/// The sort of a search: as asked, or, when it asks for none, oldest first by
/// `_lastUpdated` (the order R4 leaves to the server, and the one every index walk can
/// follow), except for AuditEvents, ordered by their own date.
pub(crate) fn effective_sort(resource_type: &str, sort: &[SortKey]) -> Vec<SortKey> {
    if sort.is_empty() && tessera_vault::Registry::ordering_date(resource_type) == LAST_UPDATED {
        vec![SortKey {
            param: LAST_UPDATED.to_owned(),
            kind: ParamKind::Date,
            descending: false,
            ordering: true,
        }]
    } else {
        sort.to_vec()
    }
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bind {
    Text(String),
    Int(i64),
}

/// SQL text and its bound values, for one backend's placeholder style.
#[derive(Debug)]
struct Sql {
    postgres: bool,
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    fn new(postgres: bool) -> Self {
        Self {
            postgres,
            text: String::new(),
            binds: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, value: Bind) -> &mut Self {
        self.binds.push(value);
        if self.postgres {
            let n = self.binds.len();
            self.text.push_str(&format!("${n}"));
        } else {
            self.text.push('?');
        }
        self
    }

    fn text(&mut self, value: &str) -> &mut Self {
        self.bind(Bind::Text(value.to_owned()))
    }

    fn int(&mut self, value: i64) -> &mut Self {
        self.bind(Bind::Int(value))
    }
}

/// One search: a partition and a resource type.
#[derive(Clone, Copy)]
pub(crate) struct Search<'a> {
    pub partition: &'a str,
    pub resource_type: &'a str,
    pub criteria: &'a [Criterion],
    /// At least one must be met, when given (the token's query restrictions).
    pub restrictions: Option<&'a [Vec<Criterion>]>,
}

/// How a search runs, decided once for its count and its page.
pub(crate) enum Plan<'k> {
    /// Over the resources, sorting every match.
    Sorted,
    /// Walking the ordering key's own index rows in order, with, per criterion,
    /// whether it is tested per row (`true`) or as a set of ids.
    Dated {
        key: &'k SortKey,
        widespread: Vec<bool>,
    },
    /// Walking the index rows of one value of the `driver`-th conjunct (a code or a
    /// reference) in the ordering key's order, which every row carries; the other
    /// conjuncts are tested per row.
    Filtered { key: &'k SortKey, driver: usize },
}

/// Is `criterion` one the driving key's own index row answers (the key being
/// single-valued): a positive criterion on the key's parameter?
fn on_driving_row(criterion: &Criterion, key: &SortKey) -> bool {
    criterion.param == key.param && criterion.missing.is_none() && !criterion.negate
}

/// Can a walk follow `criterion`'s index rows: one positive value compared for
/// equality in an indexed column (`fhir_index_code`, `fhir_index_reference`)?
fn can_drive(criterion: &Criterion, key: &SortKey) -> bool {
    let indexed = match criterion.any_of.as_slice() {
        [Match::Token { code, .. }] => code.is_some(),
        [Match::Reference { .. } | Match::Uri(_)] => true,
        [Match::String { mode, .. }] => *mode == StringMode::Exact,
        _ => false,
    };
    indexed && criterion.param != key.param && !criterion.negate && criterion.missing.is_none()
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    id: String,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl<'a> Search<'a> {
    /// The sort key a search can walk in order instead of sorting every match: the
    /// first key, when it is the type's ordering date (single-valued, carried by every
    /// index row) and every resource has one: `_lastUpdated`, which the vault stamps on
    /// every version, or a date a criterion on it requires (ITI-81 always has one). A
    /// page of the newest resources then reads about a page of index rows, however many
    /// match.
    fn driving<'k>(&self, sort: &'k [SortKey]) -> Option<&'k SortKey> {
        let key = sort
            .first()
            .filter(|k| k.kind == ParamKind::Date && k.ordering)?;
        (key.param == LAST_UPDATED || self.criteria.iter().any(|c| on_driving_row(c, key)))
            .then_some(key)
    }

    /// Every criterion the resources must meet: the search's, and the restriction's
    /// when there is exactly one (a patient's console: `patient=` their account);
    /// `true` when the restriction is among them.
    fn conjuncts(&self) -> (Vec<&'a Criterion>, bool) {
        let mut all: Vec<&Criterion> = self.criteria.iter().collect();
        match self.restrictions {
            Some([only]) => {
                all.extend(only);
                (all, true)
            }
            _ => (all, false),
        }
    }

    /// How to run the search sorted by `sort`. Sorted by the ordering date it filters
    /// on, it walks the rows of its most selective indexed value when it has one
    /// ([`Plan::Filtered`]: one bounded count per candidate decides), the date's own
    /// index otherwise ([`Plan::Dated`]: per criterion, whether it matches at least
    /// [`WIDESPREAD`] resources, so the walk meets a match soon and tests it per row,
    /// or fewer, collected as a set of ids first). Otherwise it sorts the matches.
    pub fn plan<'k>(&self, conn: &mut DbConnection, sort: &'k [SortKey]) -> QueryResult<Plan<'k>> {
        let Some(key) = self.driving(sort) else {
            return Ok(Plan::Sorted);
        };
        if sort.len() == 1 {
            let (conjuncts, _) = self.conjuncts();
            let candidates: Vec<usize> = (0..conjuncts.len())
                .filter(|&n| can_drive(conjuncts[n], key))
                .collect();
            let driver = match candidates.as_slice() {
                [] => None,
                // One candidate needs no count.
                [only] => Some(*only),
                several => {
                    let mut fewest: Option<(usize, i64)> = None;
                    for &n in several {
                        let rows = self.matching_rows(conn, conjuncts[n], SELECTIVE)?;
                        if fewest.is_none_or(|(_, least)| rows < least) {
                            fewest = Some((n, rows));
                        }
                    }
                    fewest.map(|(n, _)| n)
                }
            };
            if let Some(driver) = driver {
                return Ok(Plan::Filtered { key, driver });
            }
        }
        let mut widespread = Vec::with_capacity(self.criteria.len());
        for criterion in self.criteria {
            // Negations and `:missing` are never tested per row; the key's own criteria
            // test its row already.
            let probed =
                criterion.param != key.param && !criterion.negate && criterion.missing.is_none();
            widespread
                .push(probed && self.matching_rows(conn, criterion, WIDESPREAD)? >= WIDESPREAD);
        }
        Ok(Plan::Dated { key, widespread })
    }

    /// How many resources meet the search, run as `plan` says.
    pub fn count(&self, conn: &mut DbConnection, plan: &Plan<'_>) -> QueryResult<u64> {
        let mut sql = Sql::new(matches!(conn, DbConnection::Postgres(_)));
        match plan {
            Plan::Sorted => {
                sql.push("SELECT COUNT(*) AS n FROM fhir_resources r WHERE ");
                self.condition(&mut sql);
            }
            Plan::Dated { key, widespread } => {
                sql.push("SELECT COUNT(*) AS n FROM fhir_index d WHERE ");
                self.dated_condition(&mut sql, key, widespread);
            }
            Plan::Filtered { key, driver } => {
                sql.push("SELECT COUNT(*) AS n FROM fhir_index d WHERE ");
                self.filtered_condition(&mut sql, key, *driver);
            }
        }
        let rows: Vec<CountRow> = load(conn, &sql)?;
        Ok(rows
            .first()
            .map(|r| u64::try_from(r.n).unwrap_or_default())
            .unwrap_or_default())
    }

    /// The ids of one page of the resources meeting the search, in `sort` order, run
    /// as `plan` (the plan for `sort`) says.
    pub fn page(
        &self,
        conn: &mut DbConnection,
        plan: &Plan<'_>,
        sort: &[SortKey],
        offset: usize,
        count: usize,
    ) -> QueryResult<Vec<String>> {
        let postgres = matches!(conn, DbConnection::Postgres(_));
        let mut sql = Sql::new(postgres);
        let walked = match (plan, sort) {
            (Plan::Dated { key, widespread }, [_]) => {
                sql.push("SELECT d.resource_id AS id FROM fhir_index d WHERE ");
                self.dated_condition(&mut sql, key, widespread);
                // The key's own row: its value is the ordering date.
                Some((key, "d.lo", "d.hi"))
            }
            (Plan::Filtered { key, driver }, _) => {
                sql.push("SELECT d.resource_id AS id FROM fhir_index d WHERE ");
                self.filtered_condition(&mut sql, key, *driver);
                Some((key, "d.sort_lo", "d.sort_hi"))
            }
            _ => None,
        };
        if let Some((key, lo, hi)) = walked {
            // The index is the order: ties by the period's end, then the id, so the walk
            // stops at the page without sorting the events that share a second. Both
            // walks order ties so, so pages agree whichever plan each one takes.
            let direction = if key.descending { "DESC" } else { "ASC" };
            sql.push(&format!(
                " ORDER BY {lo} {direction}, {hi} {direction}, d.resource_id {direction} LIMIT "
            ))
            .int(i64::try_from(count).unwrap_or(i64::MAX))
            .push(" OFFSET ")
            .int(i64::try_from(offset).unwrap_or(i64::MAX));
            let rows: Vec<IdRow> = load(conn, &sql)?;
            return Ok(rows.into_iter().map(|r| r.id).collect());
        }
        let dated = match plan {
            Plan::Dated { key, widespread } => Some((key, widespread)),
            _ => None,
        };
        sql.push("SELECT t.id FROM (SELECT r.id, r.last_updated");
        if dated.is_some() {
            sql.push(", d.lo AS s0");
        }
        let skip = usize::from(dated.is_some());
        for (n, key) in sort.iter().enumerate().skip(skip) {
            sql.push(", (SELECT ")
                .push(if key.descending { "MAX" } else { "MIN" })
                .push("(")
                .push(sort_column(key.kind, postgres))
                .push(") FROM ")
                .push(own_rows(postgres))
                .push(" WHERE ")
                .push(CORRELATED)
                .push(" AND i.param = ")
                .text(&key.param)
                .push(&format!(") AS s{n}"));
        }
        match dated {
            Some((key, widespread)) => {
                sql.push(
                    " FROM fhir_index d JOIN fhir_resources r ON r.partition_id = d.partition_id \
                     AND r.resource_type = d.resource_type AND r.id = d.resource_id WHERE ",
                );
                self.dated_condition(&mut sql, key, widespread);
            }
            None => {
                sql.push(" FROM fhir_resources r WHERE ");
                self.condition(&mut sql);
            }
        }
        sql.push(") t ORDER BY ");
        for (n, key) in sort.iter().enumerate() {
            let direction = if key.descending { "DESC" } else { "ASC" };
            if n == 0 && dated.is_some() {
                // Never null: in the index's own order, so the walk stops at the page.
                sql.push(&format!("t.s0 {direction}, "));
            } else {
                sql.push(&format!("(t.s{n} IS NULL), t.s{n} {direction}, "));
            }
        }
        sql.push("t.last_updated, t.id LIMIT ")
            .int(i64::try_from(count).unwrap_or(i64::MAX))
            .push(" OFFSET ")
            .int(i64::try_from(offset).unwrap_or(i64::MAX));
        let rows: Vec<IdRow> = load(conn, &sql)?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// The ids of every resource meeting the search, in id order (no page: a Bulk Data
    /// export takes them all, then reads them a chunk at a time).
    pub fn ids(&self, conn: &mut DbConnection) -> QueryResult<Vec<String>> {
        let mut sql = Sql::new(matches!(conn, DbConnection::Postgres(_)));
        sql.push("SELECT r.id AS id FROM fhir_resources r WHERE ");
        self.condition(&mut sql);
        sql.push(" ORDER BY r.id");
        let rows: Vec<IdRow> = load(conn, &sql)?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// The WHERE condition on `r` (a `fhir_resources` row).
    fn condition(&self, sql: &mut Sql) {
        sql.push("r.partition_id = ")
            .text(self.partition)
            .push(" AND r.resource_type = ")
            .text(self.resource_type)
            .push(" AND NOT r.deleted");
        for criterion in self.criteria {
            sql.push(" AND ");
            self.criterion(sql, criterion, "r.id");
        }
        self.restrictions_on(sql, "r.id");
    }

    /// The WHERE condition on `d`, the driving key's index row of each resource: the
    /// key's own criteria test that one row (the key is single-valued), the others the
    /// resource's id: per row where `widespread` says so, otherwise as a set. Deleted
    /// resources have no index rows.
    fn dated_condition(&self, sql: &mut Sql, key: &SortKey, widespread: &[bool]) {
        sql.push("d.partition_id = ")
            .text(self.partition)
            .push(" AND d.resource_type = ")
            .text(self.resource_type)
            .push(" AND d.param = ")
            .text(&key.param)
            .push(" AND d.lo IS NOT NULL");
        for (n, criterion) in self.criteria.iter().enumerate() {
            if on_driving_row(criterion, key) {
                matches_any(sql, criterion, "d");
                continue;
            }
            sql.push(" AND ");
            if widespread.get(n) == Some(&true) {
                self.on_own_rows(sql, criterion);
            } else {
                self.criterion(sql, criterion, "d.resource_id");
            }
        }
        self.restrictions_on(sql, "d.resource_id");
    }

    /// The WHERE condition on `d`, the index rows of the driving conjunct's value: the
    /// ordering key's criteria test the date every row carries, the other conjuncts the
    /// row's resource, per row.
    fn filtered_condition(&self, sql: &mut Sql, key: &SortKey, driver: usize) {
        let (conjuncts, folded) = self.conjuncts();
        let lead = conjuncts[driver];
        sql.push("d.partition_id = ")
            .text(self.partition)
            .push(" AND d.resource_type = ")
            .text(self.resource_type)
            .push(" AND d.param = ")
            .text(&lead.param);
        matches_any(sql, lead, "d");
        sql.push(" AND d.sort_lo IS NOT NULL");
        if !one_row_per_resource(lead) {
            // A resource meets a bare code or id by several rows (`Device/x` and
            // `Patient/x`): only the first of them counts.
            let table = own_rows(sql.postgres);
            sql.push(" AND NOT EXISTS (SELECT 1 FROM ")
                .push(table)
                .push(" WHERE ")
                .push(CORRELATED_WALKED)
                .push(" AND i.param = d.param AND i.ordinal < d.ordinal");
            matches_any(sql, lead, "i");
            sql.push(")");
        }
        for (n, criterion) in conjuncts.iter().enumerate() {
            if n == driver {
                continue;
            }
            if on_driving_row(criterion, key) {
                matches_on(sql, criterion, "d", ("d.sort_lo", "d.sort_hi"));
            } else {
                sql.push(" AND ");
                self.on_own_rows(sql, criterion);
            }
        }
        if !folded {
            self.restrictions_on(sql, "d.resource_id");
        }
    }

    /// ` AND` one of the restrictions (when given) holds for the resource whose id is
    /// `id`.
    fn restrictions_on(&self, sql: &mut Sql, id: &str) {
        let Some(restrictions) = self.restrictions else {
            return;
        };
        sql.push(" AND (");
        if restrictions.is_empty() {
            sql.push("1 = 0");
        }
        for (n, restriction) in restrictions.iter().enumerate() {
            if n > 0 {
                sql.push(" OR ");
            }
            sql.push("(1 = 1");
            for criterion in restriction {
                sql.push(" AND ");
                self.criterion(sql, criterion, id);
            }
            sql.push(")");
        }
        sql.push(")");
    }

    /// How many index rows match `criterion`, counted up to `limit`.
    fn matching_rows(
        &self,
        conn: &mut DbConnection,
        criterion: &Criterion,
        limit: i64,
    ) -> QueryResult<i64> {
        let mut sql = Sql::new(matches!(conn, DbConnection::Postgres(_)));
        sql.push("SELECT COUNT(*) AS n FROM (SELECT 1 FROM fhir_index i WHERE i.partition_id = ")
            .text(self.partition)
            .push(" AND i.resource_type = ")
            .text(self.resource_type)
            .push(" AND i.param = ")
            .text(&criterion.param);
        matches_any(&mut sql, criterion, "i");
        sql.push(" LIMIT ").int(limit).push(") t");
        let rows: Vec<CountRow> = load(conn, &sql)?;
        Ok(rows.first().map_or(0, |r| r.n))
    }

    /// `criterion` tested on the resource of the walked row `d`, through its own index
    /// rows (`NOT EXISTS` for `:not` and `:missing=true`).
    fn on_own_rows(&self, sql: &mut Sql, criterion: &Criterion) {
        let excluded = criterion.missing.unwrap_or(criterion.negate);
        let table = own_rows(sql.postgres);
        sql.push(if excluded { "NOT EXISTS" } else { "EXISTS" })
            .push(" (SELECT 1 FROM ")
            .push(table)
            .push(" WHERE ")
            .push(CORRELATED_WALKED)
            .push(" AND i.param = ")
            .text(&criterion.param);
        if criterion.missing.is_none() {
            matches_any(sql, criterion, "i");
        }
        sql.push(")");
    }

    /// `criterion` tested on the resource whose id is `id`, as a set of ids.
    fn criterion(&self, sql: &mut Sql, criterion: &Criterion, id: &str) {
        let excluded = criterion.missing.unwrap_or(criterion.negate);
        sql.push(id)
            .push(if excluded { " NOT IN " } else { " IN " })
            .push("(SELECT i.resource_id FROM fhir_index i WHERE i.partition_id = ")
            .text(self.partition)
            .push(" AND i.resource_type = ")
            .text(self.resource_type)
            .push(" AND i.param = ")
            .text(&criterion.param);
        if criterion.missing.is_none() {
            matches_any(sql, criterion, "i");
        }
        sql.push(")");
    }
}

/// A candidate value with fewer rows than this is as good as any other: the bounded
/// count that ranks the candidates stops here.
const SELECTIVE: i64 = 10_000;

/// A criterion matching this many resources or more is tested per row of the driving
/// walk, which meets a match soon; one matching fewer is collected as a set of ids
/// first (measured on 1,000,000 audit events: the newest of a patient's 50,000 took
/// 19 s tested per row, under 1 s as a set; sorting those 50,000 instead took longer).
const WIDESPREAD: i64 = 100_000;

/// Does at most one index row of a resource match the criterion's one value? A
/// resource's values of a parameter are distinct, and these name a value whole; a bare
/// code (any system) or a bare id (any type) may match several.
fn one_row_per_resource(criterion: &Criterion) -> bool {
    match criterion.any_of.as_slice() {
        [Match::Token { system, .. }] => system.is_some(),
        [Match::Reference { reference, .. }] => reference.is_some(),
        [Match::Uri(_) | Match::String { .. }] => true,
        _ => false,
    }
}

/// ` AND (` one of the criterion's values matches the index row `alias` `)`.
fn matches_any(sql: &mut Sql, criterion: &Criterion, alias: &str) {
    let (lo, hi) = (format!("{alias}.lo"), format!("{alias}.hi"));
    matches_on(sql, criterion, alias, (&lo, &hi));
}

/// [`matches_any`], a date compared with the `dates` columns (the row's own value, or
/// the ordering date it carries).
fn matches_on(sql: &mut Sql, criterion: &Criterion, alias: &str, dates: (&str, &str)) {
    sql.push(" AND (");
    if criterion.any_of.is_empty() {
        sql.push("1 = 0");
    }
    for (n, m) in criterion.any_of.iter().enumerate() {
        if n > 0 {
            sql.push(" OR ");
        }
        value_match(sql, m, alias, dates);
    }
    sql.push(")");
}

/// `fhir_index i` read through its primary key (partition, type, resource, ordinal): a
/// correlated subquery wants one resource's own rows. Left to choose, SQLite takes a
/// parameter's index instead (`fhir_index_date` even covers the query) and reads every
/// resource's rows for each resource (measured: 57 s instead of 0.1 s for a date sort
/// over 10,000 Patients). PostgreSQL's planner chooses from statistics.
fn own_rows(postgres: bool) -> &'static str {
    if postgres {
        "fhir_index i"
    } else {
        "fhir_index i INDEXED BY sqlite_autoindex_fhir_index_1"
    }
}

/// The index row `i` belongs to the resource `r`.
const CORRELATED: &str = "i.partition_id = r.partition_id AND i.resource_type = r.resource_type AND i.resource_id = r.id";

/// The index row `i` belongs to the resource of the walked index row `d`.
const CORRELATED_WALKED: &str = "i.partition_id = d.partition_id AND i.resource_type = d.resource_type AND i.resource_id = d.resource_id";

/// The index column a sort key compares, compared byte-wise on both backends (as Rust
/// compares strings): PostgreSQL's default collation would not.
fn sort_column(kind: ParamKind, postgres: bool) -> &'static str {
    match (kind, postgres) {
        (ParamKind::Date, _) => "i.lo",
        (ParamKind::String, false) => "i.text_value",
        (ParamKind::String, true) => "i.text_value COLLATE \"C\"",
        (ParamKind::Reference, false) => "i.reference",
        (ParamKind::Reference, true) => "i.reference COLLATE \"C\"",
        // Created `COLLATE "C"` on PostgreSQL: the keys compare byte-wise on both.
        (ParamKind::Number | ParamKind::Quantity, _) => "i.number",
        (_, false) => "i.code",
        (_, true) => "i.code COLLATE \"C\"",
    }
}

/// Does the index row `i` match one value of a criterion? The same rules as
/// `tessera_vault::search` states for each kind (a date by `Prefix::matches`).
fn value_match(sql: &mut Sql, m: &Match, alias: &str, (lo, hi): (&str, &str)) {
    sql.push("(");
    match m {
        Match::Token { system, code } => {
            sql.push("1 = 1");
            if let Some(code) = code {
                sql.push(&format!(" AND {alias}.code = ")).text(code);
            }
            match system {
                None => {}
                Some(None) => {
                    sql.push(&format!(" AND {alias}.system IS NULL"));
                }
                Some(Some(system)) => {
                    sql.push(&format!(" AND {alias}.system = ")).text(system);
                }
            }
        }
        Match::Reference {
            reference: Some(reference),
            ..
        } => {
            sql.push(&format!("{alias}.reference = ")).text(reference);
        }
        Match::Reference {
            reference: None,
            id,
        } => {
            sql.push(&format!("{alias}.code = ")).text(id);
        }
        Match::Uri(uri) => {
            sql.push(&format!("{alias}.code = ")).text(uri);
        }
        Match::String { value, mode } => match mode {
            StringMode::Exact => {
                sql.push(&format!("{alias}.code = ")).text(value);
            }
            StringMode::Starts => {
                let chars = i64::try_from(value.chars().count()).unwrap_or(i64::MAX);
                // PostgreSQL's substr takes an int4 length; the bound value is int8.
                sql.push(&format!("substr({alias}.text_value, 1, CAST("))
                    .int(chars)
                    .push(" AS INTEGER)) = ")
                    .text(value);
            }
            StringMode::Contains => {
                let find = if sql.postgres { "strpos" } else { "instr" };
                sql.push(find)
                    .push(&format!("({alias}.text_value, "))
                    .text(value)
                    .push(") > 0");
            }
        },
        // The components as `crates/store/src/vault.rs` lays them out in one row.
        Match::Composite(parts) => match parts.as_slice() {
            [Match::Reference { reference, id }, token] => {
                match reference {
                    Some(reference) => sql.push(&format!("{alias}.reference = ")).text(reference),
                    None => sql.push(&format!("{alias}.text_value = ")).text(id),
                };
                sql.push(" AND ");
                value_match(sql, token, alias, (lo, hi));
            }
            [token, Match::Number(start), Match::Number(end)] => {
                value_match(sql, token, alias, (lo, hi));
                sql.push(" AND ");
                number_match(sql, start, &format!("{alias}.number"));
                sql.push(" AND ");
                // Keys compare byte by byte: PostgreSQL's text_value has the
                // database's collation, so the comparison names its own.
                let column = if sql.postgres {
                    format!("{alias}.text_value COLLATE \"C\"")
                } else {
                    format!("{alias}.text_value")
                };
                number_match(sql, end, &column);
            }
            [first, second] => {
                value_match(sql, first, alias, (lo, hi));
                sql.push(" AND ");
                composite_second(sql, second, alias, (lo, hi));
            }
            _ => {
                sql.push("1 = 0");
            }
        },
        Match::Number(number) => number_match(sql, number, &format!("{alias}.number")),
        Match::Quantity {
            number,
            system,
            code,
        } => {
            number_match(sql, number, &format!("{alias}.number"));
            if let Some(system) = system {
                sql.push(&format!(" AND {alias}.system = ")).text(system);
            }
            if let Some(code) = code {
                sql.push(&format!(" AND {alias}.code = ")).text(code);
            }
        }
        Match::Date { prefix, range } => {
            sql.push(&format!("{lo} IS NOT NULL AND {hi} IS NOT NULL AND "));
            let contained = |sql: &mut Sql| {
                sql.push(&format!("({lo} >= "))
                    .int(range.lo)
                    .push(&format!(" AND {hi} <= "))
                    .int(range.hi)
                    .push(")");
            };
            match prefix {
                Prefix::Eq => contained(sql),
                Prefix::Ne => {
                    sql.push("NOT ");
                    contained(sql);
                }
                Prefix::Gt => {
                    sql.push(&format!("{hi} > ")).int(range.hi);
                }
                Prefix::Lt => {
                    sql.push(&format!("{lo} < ")).int(range.lo);
                }
                Prefix::Ge => {
                    sql.push(&format!("({hi} > ")).int(range.hi).push(" OR ");
                    contained(sql);
                    sql.push(")");
                }
                Prefix::Le => {
                    sql.push(&format!("({lo} < ")).int(range.lo).push(" OR ");
                    contained(sql);
                    sql.push(")");
                }
                Prefix::Sa => {
                    sql.push(&format!("{lo} >= ")).int(range.hi);
                }
                Prefix::Eb => {
                    sql.push(&format!("{hi} <= ")).int(range.lo);
                }
                Prefix::Ap => {
                    sql.push(&format!("{lo} < "))
                        .int(range.hi)
                        .push(&format!(" AND {hi} > "))
                        .int(range.lo);
                }
            }
        }
    }
    sql.push(")");
}

/// The second component of a composite row: a token's code in `text_value` and
/// `system|code` in `reference` (a quantity's unit likewise, its number in `number`), a
/// date in `lo`/`hi`, a string in `text_value`.
fn composite_second(sql: &mut Sql, m: &Match, alias: &str, dates: (&str, &str)) {
    let unit = |sql: &mut Sql, system: &Option<String>, code: &Option<String>| match (system, code)
    {
        (Some(system), Some(code)) => {
            sql.push(&format!(" AND {alias}.reference = "))
                .text(&format!("{system}|{code}"));
        }
        (Some(system), None) => {
            let prefix = format!("{system}|");
            let chars = i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX);
            sql.push(&format!(" AND substr({alias}.reference, 1, CAST("))
                .int(chars)
                .push(" AS INTEGER)) = ")
                .text(&prefix);
        }
        (None, Some(code)) => {
            sql.push(&format!(" AND {alias}.text_value = ")).text(code);
        }
        (None, None) => {}
    };
    sql.push("(");
    match m {
        Match::Token { system, code } => {
            sql.push("1 = 1");
            match system {
                None => unit(sql, &None, code),
                Some(None) => {
                    sql.push(&format!(" AND {alias}.reference = "))
                        .text(&format!("|{}", code.as_deref().unwrap_or("")));
                }
                Some(system) => unit(sql, system, code),
            }
        }
        Match::Quantity {
            number,
            system,
            code,
        } => {
            number_match(sql, number, &format!("{alias}.number"));
            unit(sql, system, code);
        }
        Match::Date { .. } | Match::String { .. } => {
            sql.push("1 = 1 AND ");
            value_match(sql, m, alias, dates);
        }
        _ => {
            sql.push("1 = 0");
        }
    }
    sql.push(")");
}

/// A number index row (`column`, a [`tessera_vault::decimal::Decimal`] key, a point)
/// against a search value: `eq` within the range of its precision, `gt lt ge le`
/// against the value itself, `sa`/`eb` beyond its range, `ap` within 10%.
fn number_match(sql: &mut Sql, m: &NumberMatch, column: &str) {
    sql.push(&format!("{column} IS NOT NULL AND "));
    let within = |sql: &mut Sql| {
        sql.push(&format!("({column} >= "))
            .text(&m.lo)
            .push(&format!(" AND {column} < "))
            .text(&m.hi)
            .push(")");
    };
    match m.prefix {
        Prefix::Eq | Prefix::Ap => within(sql),
        Prefix::Ne => {
            sql.push("NOT ");
            within(sql);
        }
        Prefix::Gt => {
            sql.push(&format!("{column} > ")).text(&m.value);
        }
        Prefix::Lt => {
            sql.push(&format!("{column} < ")).text(&m.value);
        }
        Prefix::Ge => {
            sql.push(&format!("{column} >= ")).text(&m.value);
        }
        Prefix::Le => {
            sql.push(&format!("{column} <= ")).text(&m.value);
        }
        Prefix::Sa => {
            sql.push(&format!("{column} >= ")).text(&m.hi);
        }
        Prefix::Eb => {
            sql.push(&format!("{column} < ")).text(&m.lo);
        }
    }
}

/// A current resource's row, as [`resources_by_id`] reads it.
#[derive(QueryableByName)]
pub(crate) struct ResourceRow {
    #[diesel(sql_type = Text)]
    pub resource_type: String,
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = BigInt)]
    pub version: i64,
    #[diesel(sql_type = BigInt)]
    pub last_updated: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub deleted: bool,
    #[diesel(sql_type = Text)]
    pub content: String,
}

/// The current rows of `ids` in one partition and type, by a statement planned for its
/// own values every time (an `IN` list, not a cached statement with `= ANY`): partitions
/// differ in size by orders of magnitude, and PostgreSQL's generic plan for the cached
/// form, made for an average partition, read every row of a large one to find a page
/// (measured: 57 ms a query instead of 0.1 ms; searches of a 100,000-resource partition
/// beside 10,000 small ones at 50/s instead of 1,800/s).
pub(crate) fn resources_by_id(
    conn: &mut DbConnection,
    partition: &str,
    resource_type: &str,
    ids: &[&str],
) -> QueryResult<Vec<ResourceRow>> {
    let mut rows = Vec::with_capacity(ids.len());
    // SQLite binds at most 32,766 values a statement.
    for chunk in ids.chunks(1000) {
        let mut sql = Sql::new(matches!(conn, DbConnection::Postgres(_)));
        sql.push(
            "SELECT resource_type, id, version, last_updated, deleted, content \
             FROM fhir_resources WHERE partition_id = ",
        )
        .text(partition)
        .push(" AND resource_type = ")
        .text(resource_type)
        .push(" AND id IN (");
        for (n, id) in chunk.iter().enumerate() {
            if n > 0 {
                sql.push(", ");
            }
            sql.text(id);
        }
        sql.push(")");
        rows.extend(load::<ResourceRow>(conn, &sql)?);
    }
    Ok(rows)
}

/// Deletes one resource's index rows (before its new version's go in), by a statement
/// planned for its values every time. As a cached statement, PostgreSQL's generic plan
/// (made while the table was small and had no statistics) walked the reference index
/// of the whole partition and type for each resource: a load of 100,000 Observations
/// into one partition slowed to 100 resources/s after 18,000.
pub(crate) fn delete_index_rows(
    conn: &mut DbConnection,
    partition: &str,
    resource_type: &str,
    id: &str,
) -> QueryResult<usize> {
    let mut sql = Sql::new(matches!(conn, DbConnection::Postgres(_)));
    sql.push("DELETE FROM fhir_index WHERE partition_id = ")
        .text(partition)
        .push(" AND resource_type = ")
        .text(resource_type)
        .push(" AND resource_id = ")
        .text(id);
    match conn {
        DbConnection::Sqlite(c) => bound::<diesel::sqlite::Sqlite>(&sql).execute(c),
        DbConnection::Postgres(c) => bound::<diesel::pg::Pg>(&sql).execute(c),
    }
}

fn load<R>(conn: &mut DbConnection, sql: &Sql) -> QueryResult<Vec<R>>
where
    R: QueryableByName<diesel::sqlite::Sqlite> + QueryableByName<diesel::pg::Pg> + 'static,
{
    match conn {
        DbConnection::Sqlite(c) => bound::<diesel::sqlite::Sqlite>(sql).load(c),
        DbConnection::Postgres(c) => bound::<diesel::pg::Pg>(sql).load(c),
    }
}

fn bound<DB>(sql: &Sql) -> BoxedSqlQuery<'static, DB, SqlQuery>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt>,
    String: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
{
    let mut query = diesel::sql_query(sql.text.clone()).into_boxed::<DB>();
    for value in &sql.binds {
        query = match value {
            Bind::Text(text) => query.bind::<Text, _>(text.clone()),
            Bind::Int(n) => query.bind::<BigInt, _>(*n),
        };
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_backend_and_values_are_never_in_the_text() {
        let criteria = [Criterion {
            param: "family".into(),
            any_of: vec![Match::String {
                value: "o'brien".into(),
                mode: StringMode::Starts,
            }],
            negate: false,
            missing: None,
        }];
        let search = Search {
            partition: "p1",
            resource_type: "Patient",
            criteria: &criteria,
            restrictions: None,
        };
        for postgres in [false, true] {
            let mut sql = Sql::new(postgres);
            search.condition(&mut sql);
            assert!(!sql.text.contains("o'brien"), "{}", sql.text);
            assert!(!sql.text.contains("p1"), "{}", sql.text);
            assert_eq!(sql.binds.len(), 7, "{}", sql.text);
            assert_eq!(sql.text.contains("$7"), postgres, "{}", sql.text);
            assert_eq!(sql.text.contains('?'), !postgres, "{}", sql.text);
        }
    }

    fn date(prefix: Prefix) -> Criterion {
        use tessera_vault::dates::DateRange;
        Criterion {
            param: "date".into(),
            any_of: vec![Match::Date {
                prefix,
                range: DateRange { lo: 0, hi: 1000 },
            }],
            negate: false,
            missing: None,
        }
    }

    fn token(param: &str, code: &str) -> Criterion {
        Criterion {
            param: param.into(),
            any_of: vec![Match::Token {
                system: None,
                code: Some(code.into()),
            }],
            negate: false,
            missing: None,
        }
    }

    fn key(ordering: bool) -> SortKey {
        SortKey {
            param: "date".into(),
            kind: ParamKind::Date,
            descending: true,
            ordering,
        }
    }

    #[test]
    fn only_an_ordering_date_every_resource_has_drives_the_search() {
        let ranged = [date(Prefix::Ge), date(Prefix::Le)];
        let search = Search {
            partition: "$audit",
            resource_type: "AuditEvent",
            criteria: &ranged,
            restrictions: None,
        };
        assert!(search.driving(&[key(true)]).is_some());
        // Not the date every index row carries: sorting by it needs every value.
        assert!(search.driving(&[key(false)]).is_none());
        // No criterion on the key: resources without a date would be left out.
        let unranged = Search {
            criteria: &[],
            ..search
        };
        assert!(unranged.driving(&[key(true)]).is_none());
        let missing = [Criterion {
            missing: Some(true),
            ..date(Prefix::Eq)
        }];
        let without = Search {
            criteria: &missing,
            ..search
        };
        assert!(without.driving(&[key(true)]).is_none());
        // `_lastUpdated` is stamped on every version: it drives without a criterion, and
        // a search that names no sort is ordered by it (AuditEvents by their own date).
        let last_updated = SortKey {
            param: LAST_UPDATED.into(),
            ..key(true)
        };
        let observations = Search {
            resource_type: "Observation",
            ..unranged
        };
        assert!(observations
            .driving(std::slice::from_ref(&last_updated))
            .is_some());
        let implicit = effective_sort("Observation", &[]);
        assert_eq!(implicit.len(), 1);
        assert!(implicit[0].param == LAST_UPDATED && !implicit[0].descending);
        assert!(effective_sort("AuditEvent", &[]).is_empty());
        assert_eq!(effective_sort("Observation", &[key(true)]), [key(true)]);
        // Walking the date's rows: the key's criteria test the row itself.
        let mut sql = Sql::new(false);
        search.dated_condition(&mut sql, &key(true), &[false, false]);
        assert!(!sql.text.contains("IN (SELECT"), "{}", sql.text);
        assert!(sql.text.contains("d.hi > ?"), "{}", sql.text);
    }

    #[test]
    fn only_one_positive_indexed_value_can_lead_a_walk() {
        let key = key(true);
        assert!(can_drive(&token("outcome", "4"), &key));
        let either = Criterion {
            any_of: [token("outcome", "4"), token("outcome", "8")]
                .into_iter()
                .flat_map(|c| c.any_of)
                .collect(),
            ..token("outcome", "4")
        };
        assert!(!can_drive(&either, &key));
        let not = Criterion {
            negate: true,
            ..token("outcome", "4")
        };
        assert!(!can_drive(&not, &key));
        let system_only = Criterion {
            any_of: vec![Match::Token {
                system: Some(Some("http://x".into())),
                code: None,
            }],
            ..token("type", "x")
        };
        assert!(!can_drive(&system_only, &key));
        assert!(!can_drive(&date(Prefix::Eq), &key));
        let contains = Criterion {
            any_of: vec![Match::String {
                value: "x".into(),
                mode: StringMode::Contains,
            }],
            ..token("name", "x")
        };
        assert!(!can_drive(&contains, &key));
    }

    #[test]
    fn a_walk_led_by_a_value_tests_the_others_per_row_and_the_date_it_carries() {
        let criteria = [
            date(Prefix::Ge),
            token("agent", "Practitioner/1"),
            Criterion {
                negate: true,
                ..token("outcome", "0")
            },
        ];
        let patient = |id: &str| Criterion {
            param: "patient".into(),
            any_of: vec![Match::Reference {
                reference: Some(format!("Patient/{id}")),
                id: id.into(),
            }],
            negate: false,
            missing: None,
        };
        let restrictions = vec![vec![patient("p")]];
        let search = Search {
            partition: "$audit",
            resource_type: "AuditEvent",
            criteria: &criteria,
            restrictions: Some(&restrictions),
        };
        let (conjuncts, folded) = search.conjuncts();
        assert!(folded);
        assert_eq!(conjuncts.len(), 4);
        // Led by the restriction (the patient's console).
        let mut sql = Sql::new(true);
        search.filtered_condition(&mut sql, &key(true), 3);
        assert!(!sql.text.contains(" IN ("), "{}", sql.text);
        assert!(sql.text.contains("d.sort_hi > $"), "{}", sql.text);
        assert_eq!(sql.text.matches("NOT EXISTS").count(), 1, "{}", sql.text);
        assert_eq!(sql.text.matches("EXISTS").count(), 2, "{}", sql.text);
        assert_eq!(
            sql.binds.get(2),
            Some(&Bind::Text("patient".into())),
            "{}",
            sql.text
        );
        // Two alternatives: the restriction is not a conjunct; tested as sets.
        // A bare code may match several rows of one resource: the first one counts.
        assert!(!sql.text.contains("i.ordinal < d.ordinal"), "{}", sql.text);
        let mut sql = Sql::new(true);
        search.filtered_condition(&mut sql, &key(true), 1);
        assert!(sql.text.contains("i.ordinal < d.ordinal"), "{}", sql.text);
        let two = vec![vec![patient("p")], vec![patient("q")]];
        let either = Search {
            restrictions: Some(&two),
            ..search
        };
        assert_eq!(either.conjuncts().0.len(), 3);
        let mut sql = Sql::new(true);
        either.filtered_condition(&mut sql, &key(true), 1);
        assert_eq!(sql.text.matches(" IN (").count(), 2, "{}", sql.text);
    }

    #[test]
    fn no_restriction_met_means_nothing_and_an_empty_one_means_everything() {
        let none: Vec<Vec<Criterion>> = Vec::new();
        let search = Search {
            partition: "p",
            resource_type: "Patient",
            criteria: &[],
            restrictions: Some(&none),
        };
        let mut sql = Sql::new(false);
        search.condition(&mut sql);
        assert!(sql.text.ends_with("AND (1 = 0)"), "{}", sql.text);
        let open = vec![Vec::new()];
        let search = Search {
            restrictions: Some(&open),
            ..search
        };
        let mut sql = Sql::new(false);
        search.condition(&mut sql);
        assert!(sql.text.ends_with("AND ((1 = 1))"), "{}", sql.text);
    }
}
