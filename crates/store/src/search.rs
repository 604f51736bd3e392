//! FHIR search in SQL: the criteria of `tessera_vault::search` become one statement over
//! `fhir_resources` and `fhir_index`, so the database filters, sorts and cuts the page,
//! and a search reads only the rows of its page (plus what the planner needs to count).
//!
//! Every criterion is an `id IN (ids of the index rows that match)` (or `NOT IN` for
//! `:not` and `:missing=true`), which both backends answer from the index on
//! (partition, type, param, value). A sort key is the least (ascending) or greatest
//! (descending) value of its parameter per resource; resources without one come last;
//! ties go to the oldest `lastUpdated`, then the id. A search sorted only by a
//! single-valued date it also filters on walks that date's index instead ([`Search::plan`]),
//! ties going to the period's end, then the id. Values are always bound, never spliced
//! into the text.

use diesel::backend::Backend;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType, Text};
use diesel::{QueryResult, QueryableByName, RunQueryDsl};
use tessera_vault::registry::ParamKind;
use tessera_vault::search::{Criterion, Match, Prefix, SortKey, StringMode};

use crate::DbConnection;

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

/// How a search runs: walking a driving key's index, with, per criterion, whether it
/// is tested per driving row; or (`None`) over the resources, sorting the matches.
pub(crate) type Plan<'k> = Option<(&'k SortKey, Vec<bool>)>;

/// Is `criterion` one the driving key's own index row answers (the key being
/// single-valued): a positive criterion on the key's parameter?
fn on_driving_row(criterion: &Criterion, key: &SortKey) -> bool {
    criterion.param == key.param && criterion.missing.is_none() && !criterion.negate
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

impl Search<'_> {
    /// The sort key whose index a search can walk in order instead of sorting every
    /// match: the first key, when it is a date every resource has at most one value of
    /// (the audit repository's `date`) and a criterion on it excludes the resources
    /// without one (ITI-81 always has one). A page of the newest events then reads
    /// about a page of index rows, however many events match.
    fn driving<'k>(&self, sort: &'k [SortKey]) -> Option<&'k SortKey> {
        let key = sort
            .first()
            .filter(|k| k.kind == ParamKind::Date && k.single_valued)?;
        self.criteria
            .iter()
            .any(|c| on_driving_row(c, key))
            .then_some(key)
    }

    /// How many resources meet the search, run as `plan` says.
    pub fn count(&self, conn: &mut DbConnection, plan: &Plan<'_>) -> QueryResult<u64> {
        let mut sql = Sql::new(matches!(conn, DbConnection::Postgres(_)));
        match plan {
            Some((key, widespread)) => {
                sql.push("SELECT COUNT(*) AS n FROM fhir_index d WHERE ");
                self.driven_condition(&mut sql, key, widespread);
            }
            None => {
                sql.push("SELECT COUNT(*) AS n FROM fhir_resources r WHERE ");
                self.condition(&mut sql);
            }
        }
        let rows: Vec<CountRow> = load(conn, &sql)?;
        Ok(rows
            .first()
            .map(|r| u64::try_from(r.n).unwrap_or_default())
            .unwrap_or_default())
    }

    /// The ids of one page of the resources meeting the search, in `sort` order, run
    /// as `driving` (the plan for `sort`) says.
    pub fn page(
        &self,
        conn: &mut DbConnection,
        driving: &Plan<'_>,
        sort: &[SortKey],
        offset: usize,
        count: usize,
    ) -> QueryResult<Vec<String>> {
        let postgres = matches!(conn, DbConnection::Postgres(_));
        let mut sql = Sql::new(postgres);
        if let (Some((key, widespread)), [_]) = (driving, sort) {
            // The index is the order: ties by the period's end, then the id, so the walk
            // stops at the page without sorting the events that share a second.
            let direction = if key.descending { "DESC" } else { "ASC" };
            sql.push("SELECT d.resource_id AS id FROM fhir_index d WHERE ");
            self.driven_condition(&mut sql, key, widespread);
            sql.push(&format!(
                " ORDER BY d.lo {direction}, d.hi {direction}, d.resource_id {direction} LIMIT "
            ))
            .int(i64::try_from(count).unwrap_or(i64::MAX))
            .push(" OFFSET ")
            .int(i64::try_from(offset).unwrap_or(i64::MAX));
            let rows: Vec<IdRow> = load(conn, &sql)?;
            return Ok(rows.into_iter().map(|r| r.id).collect());
        }
        sql.push("SELECT t.id FROM (SELECT r.id, r.last_updated");
        if driving.is_some() {
            sql.push(", d.lo AS s0");
        }
        let skip = usize::from(driving.is_some());
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
        match driving {
            Some((key, widespread)) => {
                sql.push(
                    " FROM fhir_index d JOIN fhir_resources r ON r.partition_id = d.partition_id \
                     AND r.resource_type = d.resource_type AND r.id = d.resource_id WHERE ",
                );
                self.driven_condition(&mut sql, key, widespread);
            }
            None => {
                sql.push(" FROM fhir_resources r WHERE ");
                self.condition(&mut sql);
            }
        }
        sql.push(") t ORDER BY ");
        for (n, key) in sort.iter().enumerate() {
            let direction = if key.descending { "DESC" } else { "ASC" };
            if n == 0 && driving.is_some() {
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

    /// The WHERE condition on `r` (a `fhir_resources` row).
    fn condition(&self, sql: &mut Sql) {
        sql.push("r.partition_id = ")
            .text(self.partition)
            .push(" AND r.resource_type = ")
            .text(self.resource_type)
            .push(" AND NOT r.deleted");
        self.criteria_on(sql, "r.id", None);
    }

    /// The WHERE condition on `d`, the driving key's index row of each resource: the
    /// key's own criteria test that one row (the key is single-valued), the others the
    /// resource's id. Deleted resources have no index rows.
    fn driven_condition(&self, sql: &mut Sql, key: &SortKey, widespread: &[bool]) {
        sql.push("d.partition_id = ")
            .text(self.partition)
            .push(" AND d.resource_type = ")
            .text(self.resource_type)
            .push(" AND d.param = ")
            .text(&key.param)
            .push(" AND d.lo IS NOT NULL");
        for criterion in self.criteria.iter().filter(|c| on_driving_row(c, key)) {
            matches_any(sql, criterion, "d");
        }
        self.criteria_on(sql, "d.resource_id", Some((key, widespread)));
    }

    /// ` AND` each criterion (but those on the driving key's row) and the restrictions,
    /// on the resource whose id is `id`. A widespread criterion of a driven search is
    /// tested per driving row (`EXISTS`, which stops with the page); the others as a set.
    fn criteria_on(&self, sql: &mut Sql, id: &str, driving: Option<(&SortKey, &[bool])>) {
        for (n, criterion) in self.criteria.iter().enumerate() {
            if driving.is_some_and(|(key, _)| on_driving_row(criterion, key)) {
                continue;
            }
            sql.push(" AND ");
            if driving.is_some_and(|(_, widespread)| widespread.get(n) == Some(&true)) {
                self.exists_on_driving_row(sql, criterion);
            } else {
                self.criterion(sql, criterion, id);
            }
        }
        if let Some(restrictions) = self.restrictions {
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
    }

    /// How to run the search sorted by `sort`, decided once for its count and its page:
    /// walking the driving key's index, with, per criterion, whether it is tested per
    /// row (it matches at least [`WIDESPREAD`] resources, so the walk meets a match
    /// soon) or as a set of ids. One bounded count per criterion decides. `None`: no key
    /// drives; sort the matches.
    pub fn plan<'k>(&self, conn: &mut DbConnection, sort: &'k [SortKey]) -> QueryResult<Plan<'k>> {
        let Some(key) = self.driving(sort) else {
            return Ok(None);
        };
        let mut widespread = Vec::with_capacity(self.criteria.len());
        for criterion in self.criteria {
            // Negations and `:missing` are never tested per row; the key's own criteria
            // test its row already.
            let probed =
                criterion.param != key.param && !criterion.negate && criterion.missing.is_none();
            widespread.push(probed && self.matches_at_least(conn, criterion)?);
        }
        Ok(Some((key, widespread)))
    }

    /// Does `criterion` match at least [`WIDESPREAD`] index rows? A bounded count.
    fn matches_at_least(
        &self,
        conn: &mut DbConnection,
        criterion: &Criterion,
    ) -> QueryResult<bool> {
        let mut sql = Sql::new(matches!(conn, DbConnection::Postgres(_)));
        sql.push("SELECT COUNT(*) AS n FROM (SELECT 1 FROM fhir_index i WHERE i.partition_id = ")
            .text(self.partition)
            .push(" AND i.resource_type = ")
            .text(self.resource_type)
            .push(" AND i.param = ")
            .text(&criterion.param);
        matches_any(&mut sql, criterion, "i");
        sql.push(" LIMIT ").int(WIDESPREAD).push(") t");
        let rows: Vec<CountRow> = load(conn, &sql)?;
        Ok(rows.first().is_some_and(|r| r.n >= WIDESPREAD))
    }

    /// `criterion` tested on the driving row's resource, through its own index rows.
    fn exists_on_driving_row(&self, sql: &mut Sql, criterion: &Criterion) {
        let table = own_rows(sql.postgres);
        sql.push("EXISTS (SELECT 1 FROM ")
            .push(table)
            .push(
                " WHERE i.partition_id = d.partition_id AND i.resource_type = d.resource_type \
                 AND i.resource_id = d.resource_id AND i.param = ",
            )
            .text(&criterion.param);
        matches_any(sql, criterion, "i");
        sql.push(")");
    }

    fn criterion(&self, sql: &mut Sql, criterion: &Criterion, id: &str) {
        let excluded = match criterion.missing {
            Some(missing) => missing,
            None => criterion.negate,
        };
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

/// A criterion matching this many resources or more is tested per row of the driving
/// walk, which meets a match soon; one matching fewer is collected as a set of ids
/// first (measured on 1,000,000 audit events: the newest of a patient's 50,000 took
/// 19 s tested per row, under 1 s as a set; sorting those 50,000 instead took longer).
const WIDESPREAD: i64 = 100_000;

/// ` AND (` one of the criterion's values matches the index row `alias` `)`.
fn matches_any(sql: &mut Sql, criterion: &Criterion, alias: &str) {
    sql.push(" AND (");
    if criterion.any_of.is_empty() {
        sql.push("1 = 0");
    }
    for (n, m) in criterion.any_of.iter().enumerate() {
        if n > 0 {
            sql.push(" OR ");
        }
        value_match(sql, m, alias);
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

/// The index column a sort key compares, compared byte-wise on both backends (as Rust
/// compares strings): PostgreSQL's default collation would not.
fn sort_column(kind: ParamKind, postgres: bool) -> &'static str {
    match (kind, postgres) {
        (ParamKind::Date, _) => "i.lo",
        (ParamKind::String, false) => "i.text_value",
        (ParamKind::String, true) => "i.text_value COLLATE \"C\"",
        (ParamKind::Reference, false) => "i.reference",
        (ParamKind::Reference, true) => "i.reference COLLATE \"C\"",
        (_, false) => "i.code",
        (_, true) => "i.code COLLATE \"C\"",
    }
}

/// Does the index row `i` match one value of a criterion? The same rules as
/// `tessera_vault::search` states for each kind (a date by `Prefix::matches`).
fn value_match(sql: &mut Sql, m: &Match, alias: &str) {
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
        Match::Date { prefix, range } => {
            sql.push(&format!(
                "{alias}.lo IS NOT NULL AND {alias}.hi IS NOT NULL AND "
            ));
            let contained = |sql: &mut Sql| {
                sql.push(&format!("({alias}.lo >= "))
                    .int(range.lo)
                    .push(&format!(" AND {alias}.hi <= "))
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
                    sql.push(&format!("{alias}.hi > ")).int(range.hi);
                }
                Prefix::Lt => {
                    sql.push(&format!("{alias}.lo < ")).int(range.lo);
                }
                Prefix::Ge => {
                    sql.push(&format!("({alias}.hi > "))
                        .int(range.hi)
                        .push(" OR ");
                    contained(sql);
                    sql.push(")");
                }
                Prefix::Le => {
                    sql.push(&format!("({alias}.lo < "))
                        .int(range.lo)
                        .push(" OR ");
                    contained(sql);
                    sql.push(")");
                }
                Prefix::Sa => {
                    sql.push(&format!("{alias}.lo >= ")).int(range.hi);
                }
                Prefix::Eb => {
                    sql.push(&format!("{alias}.hi <= ")).int(range.lo);
                }
                Prefix::Ap => {
                    sql.push(&format!("{alias}.lo < "))
                        .int(range.hi)
                        .push(&format!(" AND {alias}.hi > "))
                        .int(range.lo);
                }
            }
        }
    }
    sql.push(")");
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

    #[test]
    fn only_a_single_valued_date_with_a_criterion_on_it_drives_the_search() {
        use tessera_vault::dates::DateRange;
        let date = |prefix| Criterion {
            param: "date".into(),
            any_of: vec![Match::Date {
                prefix,
                range: DateRange { lo: 0, hi: 1000 },
            }],
            negate: false,
            missing: None,
        };
        let key = |single_valued| SortKey {
            param: "date".into(),
            kind: ParamKind::Date,
            descending: true,
            single_valued,
        };
        let ranged = [date(Prefix::Ge), date(Prefix::Le)];
        let search = Search {
            partition: "$audit",
            resource_type: "AuditEvent",
            criteria: &ranged,
            restrictions: None,
        };
        assert!(search.driving(&[key(true)]).is_some());
        // Several values per resource: sorting by the greatest needs every value.
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
        // Driven: the key's criteria test the driving row itself, in one statement.
        let mut sql = Sql::new(false);
        search.driven_condition(&mut sql, &key(true), &[false, false]);
        assert!(!sql.text.contains("IN (SELECT"), "{}", sql.text);
        assert!(sql.text.contains("d.hi > ?"), "{}", sql.text);
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
