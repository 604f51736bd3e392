//! Search requests: parameters parsed and checked against the type's search parameters
//! with the FHIR R4 rules for each kind (token `system|code`, string prefix matching,
//! date prefixes over ranges, references by id or `Type/id`, uri), and the result
//! parameters `_count`, `_offset`, `_sort`, `_total`, `_summary`.
//! <https://hl7.org/fhir/R4/search.html>

use crate::dates::{self, DateRange};
use crate::index::{normalize, reference_parts};
use crate::registry::{ParamKind, Registry, SearchParam};

pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

/// The work one search may cause. Every criterion value is one pass over the search
/// index, so a request is bounded by its parameters, their values and its size; past
/// a bound it is refused (400 `too-costly`) before anything is read. Measured worst
/// case within the bounds: `bench/search-limits.sh`.
pub const MAX_PARAMETERS: usize = 16;
/// Values over all parameters (`a=x,y&b=z` is three).
pub const MAX_VALUES: usize = 32;
pub const MAX_SORT_KEYS: usize = 4;
/// Bytes of all parameter names and values.
pub const MAX_QUERY_BYTES: usize = 4096;

/// Date comparison prefixes (R4 search 3.1.1.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "gt" => Self::Gt,
            "lt" => Self::Lt,
            "ge" => Self::Ge,
            "le" => Self::Le,
            "sa" => Self::Sa,
            "eb" => Self::Eb,
            "ap" => Self::Ap,
            _ => return None,
        })
    }

    /// Does a resource value `[lo, hi)` satisfy `prefix` against the search range `q`?
    pub fn matches(self, lo: i64, hi: i64, q: DateRange) -> bool {
        let contained = lo >= q.lo && hi <= q.hi;
        match self {
            Self::Eq => contained,
            Self::Ne => !contained,
            Self::Gt => hi > q.hi,
            Self::Lt => lo < q.lo,
            Self::Ge => hi > q.hi || contained,
            Self::Le => lo < q.lo || contained,
            Self::Sa => lo >= q.hi,
            Self::Eb => hi <= q.lo,
            Self::Ap => lo < q.hi && hi > q.lo,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    /// Case-insensitive "starts with" (the default).
    Starts,
    Exact,
    Contains,
}

/// What one value of a search parameter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `code`, `system|code`, `|code` (no system), `system|` (any code).
    Token {
        system: Option<Option<String>>,
        code: Option<String>,
    },
    String {
        value: String,
        mode: StringMode,
    },
    Date {
        prefix: Prefix,
        range: DateRange,
    },
    /// `Type/id` when the type is known, else any reference ending in `id`.
    Reference {
        reference: Option<String>,
        id: String,
    },
    Uri(String),
}

/// One search parameter of a request: matches if any of its values matches (`,` is OR);
/// the criteria of a request must all match (`&` is AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criterion {
    pub param: String,
    pub any_of: Vec<Match>,
    /// `:not` (tokens): the resources that do NOT match.
    pub negate: bool,
    /// `:missing=true|false`: whether the resource has no value for the parameter.
    pub missing: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub param: String,
    pub kind: ParamKind,
    pub descending: bool,
    /// The type's ordering date ([`Registry::ordering_date`]), carried by every index
    /// row of a resource.
    pub ordering: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub criteria: Vec<Criterion>,
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub offset: usize,
    /// `_total=none` leaves the total out.
    pub total: bool,
    /// `_summary=count`: the total only.
    pub summary_count: bool,
    /// The parameters used, as they go into the `self` and paging links.
    pub used: Vec<(String, String)>,
    /// Parameters ignored under lenient handling.
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("unknown search parameter '{0}' for this resource type")]
    UnknownParameter(String),
    #[error("{0}")]
    Invalid(String),
    /// The request asks for more work than one search may cause.
    #[error("{0}")]
    TooCostly(String),
    /// A FHIR search feature this server does not implement: refused, since ignoring it
    /// would answer with more than was asked for.
    #[error("{0}")]
    NotSupported(String),
}

/// The search result parameters and features of FHIR R4 the vault does not implement.
const UNSUPPORTED_RESULT_PARAMETERS: [&str; 11] = [
    "_include",
    "_revinclude",
    "_elements",
    "_contained",
    "_containedType",
    "_has",
    "_list",
    "_text",
    "_content",
    "_filter",
    "_query",
];

/// Why a parameter the vault has no index for is refused, when FHIR defines it: a
/// chain, a result parameter, or a parameter of the type the vault does not support.
/// `None`: FHIR does not know it either (ignored, or refused when strict).
fn unsupported(registry: &Registry, resource_type: &str, name: &str) -> Option<String> {
    if UNSUPPORTED_RESULT_PARAMETERS.contains(&name) {
        return Some(format!("{name} is not supported by this server"));
    }
    if let Some((first, _)) = name.split_once('.') {
        return Some(format!(
            "chained parameters ({name}) are not supported by this server; search {first} by reference instead"
        ));
    }
    registry.defined_kind(resource_type, name).map(|kind| {
        format!("the {kind} search parameter '{name}' of {resource_type} is not supported by this server")
    })
}

/// Splits on `sep` where it is not escaped with `\`, and unescapes `\,` `\|` `\$` `\\`.
fn split_escaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    if let Some(last) = parts.last_mut() {
                        if next != sep {
                            last.push('\\');
                        }
                        last.push(next);
                    }
                }
            }
            c if c == sep => parts.push(String::new()),
            c => {
                if let Some(last) = parts.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    parts
}

fn invalid(text: String) -> SearchError {
    SearchError::Invalid(text)
}

fn parse_value(
    kind: ParamKind,
    modifier: Option<&str>,
    targets: &[String],
    raw: &str,
    base: &str,
    code: &str,
) -> Result<Match, SearchError> {
    if raw.is_empty() {
        return Err(invalid(format!("empty value for '{code}'")));
    }
    Ok(match kind {
        ParamKind::Token => {
            let parts = split_escaped(raw, '|');
            match parts.as_slice() {
                [code] => Match::Token {
                    system: None,
                    code: Some(code.clone()),
                },
                [system, code] => Match::Token {
                    system: Some((!system.is_empty()).then(|| system.clone())),
                    code: (!code.is_empty()).then(|| code.clone()),
                },
                _ => return Err(invalid(format!("'{code}': a token is [system]|[code]"))),
            }
        }
        ParamKind::String => Match::String {
            value: match modifier {
                Some("exact") => raw.to_owned(),
                _ => normalize(raw),
            },
            mode: match modifier {
                Some("exact") => StringMode::Exact,
                Some("contains") => StringMode::Contains,
                _ => StringMode::Starts,
            },
        },
        ParamKind::Date => {
            let (prefix, date) = match raw.get(..2).and_then(Prefix::parse) {
                Some(prefix) => (prefix, &raw[2..]),
                None => (Prefix::Eq, raw),
            };
            let range = dates::parse(date)
                .ok_or_else(|| invalid(format!("'{code}': '{raw}' is not a FHIR date")))?;
            Match::Date { prefix, range }
        }
        ParamKind::Reference => {
            let (local, id) = reference_parts(raw, base);
            let reference = match modifier {
                Some(ty) => Some(format!("{ty}/{id}")),
                None if local.contains('/') => Some(local),
                None if targets.len() == 1 => Some(format!("{}/{id}", targets[0])),
                None => None,
            };
            Match::Reference { reference, id }
        }
        ParamKind::Uri => Match::Uri(raw.to_owned()),
    })
}

/// Which modifiers each kind accepts (besides `missing`).
fn modifier_allowed(kind: ParamKind, modifier: &str, targets: &[String]) -> bool {
    match kind {
        ParamKind::Token => modifier == "not",
        ParamKind::String => matches!(modifier, "exact" | "contains"),
        ParamKind::Reference => targets.iter().any(|t| t == modifier),
        ParamKind::Date | ParamKind::Uri => false,
    }
}

/// Parses a search request for `resource_type`. With `strict` (`Prefer: handling=strict`)
/// an unknown parameter is an error; otherwise it is ignored and left out of the links.
/// `base` is the partition's FHIR base URL (absolute references to it match relative ones).
pub fn parse(
    registry: &Registry,
    resource_type: &str,
    pairs: &[(String, String)],
    strict: bool,
    base: &str,
) -> Result<SearchQuery, SearchError> {
    let mut query = SearchQuery {
        criteria: Vec::new(),
        sort: Vec::new(),
        count: DEFAULT_COUNT,
        offset: 0,
        total: true,
        summary_count: false,
        used: Vec::new(),
        ignored: Vec::new(),
    };
    let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_QUERY_BYTES {
        return Err(SearchError::TooCostly(format!(
            "the search parameters are {bytes} bytes; at most {MAX_QUERY_BYTES} are searched"
        )));
    }
    let mut values = 0;
    for (key, value) in pairs {
        let number = |what: &str| {
            value
                .parse::<usize>()
                .map_err(|_| invalid(format!("{what} must be a whole number, not '{value}'")))
        };
        let (name, modifier) = match key.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (key.as_str(), None),
        };
        match (name, modifier) {
            ("_count", None) => query.count = number("_count")?.min(MAX_COUNT),
            ("_offset", None) => query.offset = number("_offset")?,
            ("_total", None) => match value.as_str() {
                "none" => query.total = false,
                "estimate" | "accurate" => query.total = true,
                _ => {
                    return Err(invalid(format!(
                        "_total must be none, estimate or accurate, not '{value}'"
                    )))
                }
            },
            ("_summary", None) => match value.as_str() {
                "count" => query.summary_count = true,
                "false" => {}
                other => {
                    return Err(SearchError::NotSupported(format!(
                        "_summary={other} is not supported by this server"
                    )))
                }
            },
            ("_format" | "_pretty", None) => continue,
            // `_sort=-date,code`, and `_sort:desc=date` as some clients write it.
            ("_sort", modifier) => {
                sort_keys(registry, resource_type, modifier, value, &mut query.sort)?;
                query.used.push((key.clone(), value.clone()));
                continue;
            }
            _ => {
                let Some(param) = registry.param(resource_type, name) else {
                    if let Some(reason) = unsupported(registry, resource_type, name) {
                        return Err(SearchError::NotSupported(reason));
                    }
                    if strict {
                        return Err(SearchError::UnknownParameter(key.clone()));
                    }
                    query.ignored.push(key.clone());
                    continue;
                };
                let criterion = criterion(param, key, name, modifier, value, base)?;
                values += criterion.any_of.len().max(1);
                query.criteria.push(criterion);
                if query.criteria.len() > MAX_PARAMETERS {
                    return Err(SearchError::TooCostly(format!(
                        "at most {MAX_PARAMETERS} search parameters in one search"
                    )));
                }
                if values > MAX_VALUES {
                    return Err(SearchError::TooCostly(format!(
                        "at most {MAX_VALUES} search values in one search (each comma-separated value counts)"
                    )));
                }
            }
        }
        query.used.push((key.clone(), value.clone()));
    }
    Ok(query)
}

/// Adds the keys of one `_sort` parameter (`-date,code`, or `_sort:desc=date` as some
/// clients write it) to `sort`.
fn sort_keys(
    registry: &Registry,
    resource_type: &str,
    modifier: Option<&str>,
    value: &str,
    sort: &mut Vec<SortKey>,
) -> Result<(), SearchError> {
    let descending_all = match modifier {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => return Err(invalid(format!("unknown _sort modifier ':{other}'"))),
    };
    for item in value.split(',').filter(|s| !s.is_empty()) {
        let (descending, code) = match item.strip_prefix('-') {
            Some(code) => (true, code),
            None => (descending_all, item),
        };
        let param = registry
            .param(resource_type, code)
            .ok_or_else(|| invalid(format!("cannot sort by unknown parameter '{code}'")))?;
        sort.push(SortKey {
            param: code.to_owned(),
            kind: param.kind,
            descending,
            ordering: Registry::ordering_date(resource_type) == code,
        });
        if sort.len() > MAX_SORT_KEYS {
            return Err(SearchError::TooCostly(format!(
                "at most {MAX_SORT_KEYS} sort keys"
            )));
        }
    }
    Ok(())
}

/// One search parameter `key` (`name` with its `modifier`) and its comma-separated
/// `value` as a criterion.
fn criterion(
    param: &SearchParam,
    key: &str,
    name: &str,
    modifier: Option<&str>,
    value: &str,
    base: &str,
) -> Result<Criterion, SearchError> {
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(invalid(format!("'{key}' takes true or false"))),
        };
        return Ok(Criterion {
            param: name.to_owned(),
            any_of: Vec::new(),
            negate: false,
            missing: Some(missing),
        });
    }
    if let Some(m) = modifier {
        if !modifier_allowed(param.kind, m, &param.targets) {
            return Err(invalid(format!(
                "modifier ':{m}' is not supported on {} parameter '{name}'",
                param.kind.name()
            )));
        }
    }
    let any_of = split_escaped(value, ',')
        .iter()
        .map(|v| parse_value(param.kind, modifier, &param.targets, v, base, name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Criterion {
        param: name.to_owned(),
        any_of,
        negate: modifier == Some("not"),
        missing: None,
    })
}

/// Parses the query of a SMART scope such as `patient/Observation.rs?category=laboratory`
/// into the criteria every resource the scope grants must meet. Every parameter must be
/// known: a restriction that cannot be enforced grants nothing.
pub fn parse_restriction(
    registry: &Registry,
    resource_type: &str,
    query: &str,
) -> Result<Vec<Criterion>, SearchError> {
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect();
    let parsed = parse(registry, resource_type, &pairs, true, "")?;
    if !parsed.sort.is_empty() || parsed.criteria.len() != pairs.len() {
        return Err(invalid(format!(
            "scope restriction '{query}' may only hold search parameters"
        )));
    }
    Ok(parsed.criteria)
}

/// Decodes `%XX` escapes (and leaves anything malformed as it is).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<SearchQuery, SearchError> {
        let registry = Registry::load().unwrap();
        let pairs: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&registry, "Observation", &pairs, false, "https://h/fhir/p1")
    }

    #[test]
    fn the_work_of_one_search_is_bounded() {
        let too_costly = |pairs: Vec<(String, String)>| {
            let borrowed: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            matches!(q(&borrowed), Err(SearchError::TooCostly(_)))
        };
        let repeated = |n: usize| -> Vec<(String, String)> {
            (0..n)
                .map(|i| ("code".to_string(), format!("c{i}")))
                .collect()
        };
        assert!(!too_costly(repeated(MAX_PARAMETERS)));
        assert!(too_costly(repeated(MAX_PARAMETERS + 1)));
        let values = |n: usize| {
            let list: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
            vec![("code".to_string(), list.join(","))]
        };
        assert!(!too_costly(values(MAX_VALUES)));
        assert!(too_costly(values(MAX_VALUES + 1)));
        // Values count over all parameters.
        let mut spread = values(MAX_VALUES - 1);
        spread.push(("status".into(), "final,amended".into()));
        assert!(too_costly(spread));
        let sorts = vec![(
            "_sort".to_string(),
            "date,code,status,date,code".to_string(),
        )];
        assert!(too_costly(sorts));
        let long = vec![("code".to_string(), "x".repeat(MAX_QUERY_BYTES))];
        assert!(too_costly(long));
        // Unknown parameters (ignored) still count towards the bytes only.
        let ignored: Vec<(String, String)> = (0..100)
            .map(|i| (format!("unknown{i}"), "x".into()))
            .collect();
        assert!(!too_costly(ignored));
    }

    #[test]
    fn the_seed_002_query_parses() {
        let query = q(&[("code", "4548-4"), ("_sort:desc", "date"), ("_count", "10")]).unwrap();
        assert_eq!(query.count, 10);
        assert_eq!(
            query.sort,
            vec![SortKey {
                param: "date".into(),
                kind: ParamKind::Date,
                descending: true,
                ordering: false,
            }]
        );
        assert_eq!(
            query.criteria[0].any_of,
            vec![Match::Token {
                system: None,
                code: Some("4548-4".into())
            }]
        );
    }

    #[test]
    fn token_forms() {
        let c = q(&[("code", "http://loinc.org|4548-4,|x,http://loinc.org|")])
            .unwrap()
            .criteria
            .remove(0);
        assert_eq!(
            c.any_of,
            vec![
                Match::Token {
                    system: Some(Some("http://loinc.org".into())),
                    code: Some("4548-4".into())
                },
                Match::Token {
                    system: Some(None),
                    code: Some("x".into())
                },
                Match::Token {
                    system: Some(Some("http://loinc.org".into())),
                    code: None
                },
            ]
        );
        assert!(q(&[("status:not", "final")]).unwrap().criteria[0].negate);
        assert_eq!(q(&[("code", "a\\,b")]).unwrap().criteria[0].any_of.len(), 1);
    }

    #[test]
    fn references_use_the_single_target() {
        let c = q(&[("patient", "123")]).unwrap().criteria.remove(0);
        assert_eq!(
            c.any_of,
            vec![Match::Reference {
                reference: Some("Patient/123".into()),
                id: "123".into()
            }]
        );
        let c = q(&[("subject", "https://h/fhir/p1/Patient/9")])
            .unwrap()
            .criteria
            .remove(0);
        assert_eq!(
            c.any_of,
            vec![Match::Reference {
                reference: Some("Patient/9".into()),
                id: "9".into()
            }]
        );
        let c = q(&[("subject:Group", "9")]).unwrap().criteria.remove(0);
        assert_eq!(
            c.any_of,
            vec![Match::Reference {
                reference: Some("Group/9".into()),
                id: "9".into()
            }]
        );
        let c = q(&[("subject", "9")]).unwrap().criteria.remove(0);
        assert_eq!(
            c.any_of,
            vec![Match::Reference {
                reference: None,
                id: "9".into()
            }]
        );
    }

    #[test]
    fn dates_and_prefixes() {
        let c = q(&[("date", "ge2021-01-01")]).unwrap().criteria.remove(0);
        assert!(matches!(
            c.any_of[0],
            Match::Date {
                prefix: Prefix::Ge,
                ..
            }
        ));
        assert!(matches!(
            q(&[("date", "2021-13-01")]),
            Err(SearchError::Invalid(_))
        ));
        let day = dates::parse("2021-06-15").unwrap();
        let (lo, hi) = (day.lo, day.hi);
        let table = [
            (Prefix::Eq, "2021-06-15", true),
            (Prefix::Eq, "2021-06", true),
            (Prefix::Eq, "2021-06-15T10:00", false),
            (Prefix::Ne, "2021-06-16", true),
            (Prefix::Gt, "2021-06-14", true),
            (Prefix::Gt, "2021-06-15", false),
            (Prefix::Ge, "2021-06-15", true),
            (Prefix::Ge, "2021-06-16", false),
            (Prefix::Lt, "2021-06-16", true),
            (Prefix::Lt, "2021-06-15", false),
            (Prefix::Le, "2021-06-15", true),
            (Prefix::Le, "2021-06-14", false),
            (Prefix::Sa, "2021-06-14", true),
            (Prefix::Eb, "2021-06-16", true),
            (Prefix::Eb, "2021-06-15", false),
            (Prefix::Ap, "2021-06", true),
        ];
        for (prefix, value, expected) in table {
            assert_eq!(
                prefix.matches(lo, hi, dates::parse(value).unwrap()),
                expected,
                "{prefix:?}{value}"
            );
        }
    }

    #[test]
    fn unknown_parameters_follow_the_handling_preference() {
        let lenient = q(&[("nonsense", "1"), ("code", "x")]).unwrap();
        assert_eq!(lenient.ignored, vec!["nonsense".to_string()]);
        assert_eq!(lenient.used, vec![("code".to_string(), "x".to_string())]);
        let registry = Registry::load().unwrap();
        let strict = parse(
            &registry,
            "Observation",
            &[("nonsense".into(), "1".into())],
            true,
            "",
        );
        assert_eq!(
            strict,
            Err(SearchError::UnknownParameter("nonsense".into()))
        );
        assert!(matches!(
            q(&[("code:below", "x")]),
            Err(SearchError::Invalid(_))
        ));
        assert!(matches!(
            q(&[("_count", "many")]),
            Err(SearchError::Invalid(_))
        ));
    }

    #[test]
    fn what_fhir_defines_but_the_vault_cannot_do_is_refused_not_ignored() {
        let registry = Registry::load().unwrap();
        let refused = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            match parse(&registry, "Observation", &pairs, false, "") {
                Err(SearchError::NotSupported(why)) => why,
                other => panic!("{pairs:?}: {other:?}"),
            }
        };
        assert!(refused(&[("value-quantity", "gt100")]).contains("quantity"));
        assert!(refused(&[("component-value-quantity", "gt1")]).contains("quantity"));
        assert!(refused(&[("code-value-quantity", "1234-5$gt1")]).contains("composite"));
        assert!(refused(&[("subject.name", "peter")]).contains("chained"));
        assert!(refused(&[("_has:Observation:patient:code", "1234")]).contains("_has"));
        assert!(refused(&[("_include", "Observation:subject")]).contains("_include"));
        assert!(refused(&[("_revinclude", "Provenance:target")]).contains("_revinclude"));
        assert!(refused(&[("_elements", "status")]).contains("_elements"));
        assert!(refused(&[("_summary", "true")]).contains("_summary=true"));
        // What FHIR does not define is still ignored (or refused when strict).
        let lenient = parse(
            &registry,
            "Observation",
            &[("colour".to_owned(), "red".to_owned())],
            false,
            "",
        )
        .unwrap();
        assert_eq!(lenient.ignored, vec!["colour".to_owned()]);
    }

    #[test]
    fn restrictions_must_be_fully_understood() {
        let registry = Registry::load().unwrap();
        let criteria = parse_restriction(&registry, "Observation", "category=laboratory").unwrap();
        assert_eq!(criteria.len(), 1);
        assert!(parse_restriction(&registry, "Observation", "nonsense=1").is_err());
        assert!(parse_restriction(&registry, "Observation", "_count=1").is_err());
        assert_eq!(percent_decode("a%7Cb%2"), "a|b%2");
    }
}
