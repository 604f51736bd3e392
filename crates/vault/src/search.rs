//! Search requests: parameters parsed and checked against the type's search parameters
//! with the FHIR R4 rules for each kind (token `system|code`, string prefix matching,
//! date prefixes over ranges, references by id or `Type/id`, uri), chained parameters
//! and `_has` (resolved by the vault, [`crate::related`]), and the result parameters
//! `_count`, `_offset`, `_sort`, `_total`, `_summary`, `_elements`, `_include` and
//! `_revinclude`.
//! <https://hl7.org/fhir/R4/search.html>

use crate::dates::{self, DateRange};
use crate::decimal::Decimal;
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
/// `_include` and `_revinclude` parameters in one search.
pub const MAX_INCLUDES: usize = 8;
/// Chains and `_has` nest at most this deep (`subject.organization.name` is two).
pub const MAX_LINK_DEPTH: usize = 3;
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
    Number(NumberMatch),
    /// `[prefix]number[|system|code]`: the number, and the unit when given (`system`
    /// `None`: any system).
    Quantity {
        number: NumberMatch,
        system: Option<String>,
        code: Option<String>,
    },
    /// A value for each of a composite's components, met by one element together.
    Composite(Vec<Match>),
}

/// A number compared with a prefix, as order-preserving keys ([`Decimal::key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberMatch {
    pub prefix: Prefix,
    /// The value searched for.
    pub value: String,
    /// The range its precision implies (`eq`, `ne`, `sa`, `eb`), or 10% either side
    /// (`ap`): a resource value `v` is in it when `lo <= v < hi`.
    pub lo: String,
    pub hi: String,
}

impl NumberMatch {
    fn parse(raw: &str, code: &str) -> Result<Self, SearchError> {
        let (prefix, number) = match raw.get(..2).and_then(Prefix::parse) {
            Some(prefix) => (prefix, &raw[2..]),
            None => (Prefix::Eq, raw),
        };
        let decimal = Decimal::parse(number)
            .ok_or_else(|| invalid(format!("'{code}': '{raw}' is not a number")))?;
        let (lo, hi) = if prefix == Prefix::Ap {
            decimal.approximate_range()
        } else {
            decimal.precision_range()
        };
        Ok(Self {
            prefix,
            value: decimal.key(),
            lo: lo.key(),
            hi: hi.key(),
        })
    }
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

/// A criterion on other resources, which the vault resolves into a criterion on this
/// type's own index before the store searches ([`crate::related`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// `subject:Patient.name=peter`: the reference parameter `param` points to a
    /// resource of one of `targets` that meets `key=value` (`key` may chain further).
    Chain {
        param: String,
        targets: Vec<String>,
        key: String,
        value: String,
    },
    /// `_has:Observation:patient:code=1234`: a `source` resource whose reference
    /// parameter `param` points to this one meets `key=value` (`key` may be `_has` again).
    Has {
        source: String,
        param: String,
        key: String,
        value: String,
    },
}

/// `_include=Observation:subject[:Patient]` (`reverse`: `_revinclude=Provenance:target`):
/// the resources a `source` resource's reference parameter `param` points to (or, in
/// reverse, the `source` resources pointing to a result), limited to `target` when given;
/// `:iterate` follows the included resources too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub reverse: bool,
    pub iterate: bool,
    pub source: String,
    pub param: String,
    pub target: Option<String>,
}

/// `_summary` (R4 search.html#summary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Summary {
    #[default]
    False,
    /// The elements the specification marks as summary.
    True,
    /// `text`, `id`, `meta` and the mandatory elements.
    Text,
    /// Everything but `text`.
    Data,
    /// The total only.
    Count,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub criteria: Vec<Criterion>,
    /// Chains and `_has`, each becoming one more criterion once resolved.
    pub links: Vec<Link>,
    pub includes: Vec<Include>,
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub offset: usize,
    /// `_total=none` leaves the total out.
    pub total: bool,
    pub summary: Summary,
    /// `_elements`: the top-level elements to return (with the mandatory ones).
    pub elements: Vec<String>,
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
const UNSUPPORTED_RESULT_PARAMETERS: [&str; 7] = [
    "_contained",
    "_containedType",
    "_list",
    "_text",
    "_content",
    "_filter",
    "_query",
];

/// Why a parameter the vault has no index for is refused, when FHIR defines it: a
/// result parameter, or a parameter of the type the vault does not support.
/// `None`: FHIR does not know it either (ignored, or refused when strict).
fn unsupported(registry: &Registry, resource_type: &str, name: &str) -> Option<String> {
    if UNSUPPORTED_RESULT_PARAMETERS.contains(&name) {
        return Some(format!("{name} is not supported by this server"));
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
    param: &SearchParam,
    modifier: Option<&str>,
    raw: &str,
    base: &str,
) -> Result<Match, SearchError> {
    let code = param.code.as_str();
    if raw.is_empty() {
        return Err(invalid(format!("empty value for '{code}'")));
    }
    let targets = &param.targets;
    Ok(match param.kind {
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
        ParamKind::Composite => composite_value(param, raw, base)?,
        ParamKind::Number => Match::Number(NumberMatch::parse(raw, code)?),
        ParamKind::Quantity => match split_escaped(raw, '|').as_slice() {
            [number] => Match::Quantity {
                number: NumberMatch::parse(number, code)?,
                system: None,
                code: None,
            },
            [number, system, unit] => Match::Quantity {
                number: NumberMatch::parse(number, code)?,
                system: (!system.is_empty()).then(|| system.clone()),
                code: (!unit.is_empty()).then(|| unit.clone()),
            },
            _ => {
                return Err(invalid(format!(
                    "'{code}': a quantity is [prefix]number or [prefix]number|[system]|[code]"
                )))
            }
        },
    })
}

/// `first$second[$third]` of a composite, each part as its component's kind parses it.
fn composite_value(param: &SearchParam, raw: &str, base: &str) -> Result<Match, SearchError> {
    let parts = split_escaped(raw, '$');
    if parts.len() != param.components.len() {
        let shape = if param.components.len() == 3 {
            "[first]$[second]$[third], as in 1$ge100$le200"
        } else {
            "[first]$[second], as in code$value"
        };
        return Err(invalid(format!(
            "'{}': a composite value is {shape}",
            param.code
        )));
    }
    parts
        .iter()
        .zip(&param.components)
        .map(|(text, component)| {
            let part = SearchParam {
                code: param.code.clone(),
                kind: component.kind,
                paths: Vec::new(),
                targets: Vec::new(),
                components: Vec::new(),
            };
            parse_value(&part, None, text, base)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Match::Composite)
}

/// Which modifiers each kind accepts (besides `missing`).
fn modifier_allowed(kind: ParamKind, modifier: &str, targets: &[String]) -> bool {
    match kind {
        ParamKind::Token => modifier == "not",
        ParamKind::String => matches!(modifier, "exact" | "contains"),
        ParamKind::Reference => targets.iter().any(|t| t == modifier),
        ParamKind::Date
        | ParamKind::Uri
        | ParamKind::Number
        | ParamKind::Quantity
        | ParamKind::Composite => false,
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
        summary: Summary::False,
        elements: Vec::new(),
        links: Vec::new(),
        includes: Vec::new(),
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
        if let Some(link) = link(registry, resource_type, key, value)? {
            query.links.push(link);
            values += 1;
            if query.criteria.len() + query.links.len() > MAX_PARAMETERS {
                return Err(SearchError::TooCostly(format!(
                    "at most {MAX_PARAMETERS} search parameters in one search"
                )));
            }
            query.used.push((key.clone(), value.clone()));
            continue;
        }
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
            ("_summary", None) => {
                query.summary = match value.as_str() {
                    "count" => Summary::Count,
                    "true" => Summary::True,
                    "text" => Summary::Text,
                    "data" => Summary::Data,
                    "false" => Summary::False,
                    other => {
                        return Err(invalid(format!(
                            "_summary must be true, false, text, data or count, not '{other}'"
                        )))
                    }
                }
            }
            ("_elements", None) => {
                for element in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    // `Patient.name` is how some clients write `name`.
                    let element = element
                        .strip_prefix(resource_type)
                        .and_then(|e| e.strip_prefix('.'))
                        .unwrap_or(element);
                    if element.contains('.') {
                        return Err(SearchError::NotSupported(format!(
                            "_elements names top-level elements; '{element}' is not one"
                        )));
                    }
                    query.elements.push(element.to_owned());
                }
            }
            ("_include" | "_revinclude", None | Some("iterate" | "recurse")) => {
                query.includes.push(include(
                    registry,
                    name == "_revinclude",
                    modifier.is_some(),
                    value,
                )?);
                if query.includes.len() > MAX_INCLUDES {
                    return Err(SearchError::TooCostly(format!(
                        "at most {MAX_INCLUDES} _include and _revinclude parameters in one search"
                    )));
                }
            }
            ("_include" | "_revinclude", Some(other)) => {
                return Err(invalid(format!("unknown {name} modifier ':{other}'")))
            }
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

/// A chained parameter (`subject:Patient.name`) or `_has` (`_has:Observation:patient:code`),
/// checked as far as this type's own parameters go; `None` for any other parameter.
fn link(
    registry: &Registry,
    resource_type: &str,
    key: &str,
    value: &str,
) -> Result<Option<Link>, SearchError> {
    if let Some(rest) = key.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(param), Some(inner)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(format!(
                "'{key}': _has is _has:[type]:[reference parameter]:[parameter]"
            )));
        };
        let reference = registry
            .param(source, param)
            .filter(|p| p.kind == ParamKind::Reference)
            .ok_or_else(|| {
                invalid(format!(
                    "'{key}': '{param}' is not a reference parameter of {source}"
                ))
            })?;
        if !reference.targets.is_empty() && !reference.targets.iter().any(|t| t == resource_type) {
            return Err(invalid(format!(
                "'{key}': {source}.{param} does not point to {resource_type}"
            )));
        }
        return Ok(Some(Link::Has {
            source: source.to_owned(),
            param: param.to_owned(),
            key: inner.to_owned(),
            value: value.to_owned(),
        }));
    }
    let Some((head, rest)) = key.split_once('.') else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Err(invalid(format!(
            "'{key}': a chain names a parameter after '.'"
        )));
    }
    let (name, target) = match head.split_once(':') {
        Some((name, target)) => (name, Some(target)),
        None => (head, None),
    };
    if registry.defined_kind(resource_type, name).is_none() {
        // Not a parameter FHIR defines: ignored like any unknown one (or refused when strict).
        return Ok(None);
    }
    let param = registry
        .param(resource_type, name)
        .filter(|p| p.kind == ParamKind::Reference)
        .ok_or_else(|| {
            invalid(format!(
                "'{key}': '{name}' is not a reference parameter of {resource_type}"
            ))
        })?;
    let targets: Vec<String> = match target {
        Some(target) if param.targets.iter().any(|t| t == target) => vec![target.to_owned()],
        Some(target) => {
            return Err(invalid(format!(
                "'{key}': {resource_type}.{name} does not point to {target}"
            )))
        }
        None => param.targets.clone(),
    };
    // The chained parameter must exist on some target; the vault checks each in turn.
    let chained = rest.split(['.', ':']).next().unwrap_or(rest);
    let known = |t: &String| chained == "_has" || registry.param(t, chained).is_some();
    let targets: Vec<String> = targets.into_iter().filter(known).collect();
    if targets.is_empty() {
        return Err(invalid(format!(
            "'{key}': no resource {resource_type}.{name} points to has a search parameter '{chained}'"
        )));
    }
    Ok(Some(Link::Chain {
        param: name.to_owned(),
        targets,
        key: rest.to_owned(),
        value: value.to_owned(),
    }))
}

/// `[source]:[parameter][:target]` of `_include` or `_revinclude`.
fn include(
    registry: &Registry,
    reverse: bool,
    iterate: bool,
    value: &str,
) -> Result<Include, SearchError> {
    let name = if reverse { "_revinclude" } else { "_include" };
    let mut parts = value.split(':');
    let (Some(source), Some(param), target, None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!(
            "{name}={value}: write [type]:[reference parameter] or [type]:[parameter]:[target type]"
        )));
    };
    if param == "*" {
        return Err(SearchError::NotSupported(format!(
            "{name}={value}: the wildcard is not supported; name the reference parameter"
        )));
    }
    let reference = registry
        .param(source, param)
        .filter(|p| p.kind == ParamKind::Reference)
        .ok_or_else(|| {
            invalid(format!(
                "{name}={value}: '{param}' is not a reference parameter of {source}"
            ))
        })?;
    if let Some(target) = target {
        if !reference.targets.iter().any(|t| t == target) {
            return Err(invalid(format!(
                "{name}={value}: {source}.{param} does not point to {target}"
            )));
        }
    }
    Ok(Include {
        reverse,
        iterate,
        source: source.to_owned(),
        param: param.to_owned(),
        target: target.map(str::to_owned),
    })
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
            .filter(|p| p.kind != ParamKind::Composite)
            .ok_or_else(|| invalid(format!("cannot sort by '{code}'")))?;
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
        .map(|v| parse_value(param, modifier, v, base))
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
    let parsed = parse_filter(registry, resource_type, query).map_err(|_| {
        invalid(format!(
            "scope restriction '{query}' may only hold search parameters"
        ))
    })?;
    if !parsed.links.is_empty() {
        return Err(invalid(format!(
            "scope restriction '{query}' may only hold search parameters"
        )));
    }
    Ok(parsed.criteria)
}

/// A query of search parameters only (criteria, chains and `_has`), as Bulk Data's
/// `_typeFilter` gives one: no sorting, paging, includes or subsetting, and nothing
/// ignored.
pub fn parse_filter(
    registry: &Registry,
    resource_type: &str,
    query: &str,
) -> Result<SearchQuery, SearchError> {
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect();
    let parsed = parse(registry, resource_type, &pairs, true, "")?;
    if !parsed.sort.is_empty() || parsed.criteria.len() + parsed.links.len() != pairs.len() {
        return Err(invalid(format!(
            "'{query}' may only hold search parameters, not _sort, _count, _include or the like"
        )));
    }
    Ok(parsed)
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
        let near = [("near".to_owned(), "42.25|-83.69|10|km".to_owned())];
        assert!(matches!(
            parse(&registry, "Location", &near, false, ""),
            Err(SearchError::NotSupported(why)) if why.contains("special")
        ));
        assert!(refused(&[("_include", "Observation:*")]).contains("wildcard"));
        assert!(refused(&[("_elements", "code.coding")]).contains("top-level"));
        assert!(refused(&[("_list", "x")]).contains("_list"));
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
    fn chains_has_and_includes_are_checked_against_the_types_they_name() {
        let query = q(&[
            ("subject:Patient.name", "peter"),
            ("subject.organization.name", "acme"),
            ("_has:AuditEvent:entity:agent", "x"),
            ("_include", "Observation:subject"),
            ("_revinclude:iterate", "Provenance:target:Observation"),
            ("_summary", "true"),
        ])
        .unwrap();
        assert_eq!(
            query.links[0],
            Link::Chain {
                param: "subject".into(),
                targets: vec!["Patient".into()],
                key: "name".into(),
                value: "peter".into()
            }
        );
        // Only the targets that have the chained parameter are searched.
        let Link::Chain { targets, key, .. } = &query.links[1] else {
            panic!("{:?}", query.links[1]);
        };
        assert_eq!(targets, &["Device", "Patient", "Location"]);
        assert_eq!(key, "organization.name");
        assert_eq!(
            query.links[2],
            Link::Has {
                source: "AuditEvent".into(),
                param: "entity".into(),
                key: "agent".into(),
                value: "x".into()
            }
        );
        assert_eq!(
            query.includes,
            vec![
                Include {
                    reverse: false,
                    iterate: false,
                    source: "Observation".into(),
                    param: "subject".into(),
                    target: None
                },
                Include {
                    reverse: true,
                    iterate: true,
                    source: "Provenance".into(),
                    param: "target".into(),
                    target: Some("Observation".into())
                },
            ]
        );
        assert_eq!(query.summary, Summary::True);
        assert_eq!(query.used.len(), 6, "every one goes into the links");
        let invalid = |pairs: &[(&str, &str)]| matches!(q(pairs), Err(SearchError::Invalid(_)));
        assert!(invalid(&[("subject:Medication.code", "x")]), "not a target");
        assert!(invalid(&[("status.name", "x")]), "not a reference");
        assert!(invalid(&[("subject.nonsense", "x")]), "no target has it");
        assert!(
            invalid(&[("_has:Observation:code:status", "final")]),
            "not a reference"
        );
        assert!(
            invalid(&[("_has:Patient:link:name", "x")]),
            "does not point here"
        );
        assert!(invalid(&[("_has:Observation", "x")]));
        assert!(invalid(&[("_include", "Observation")]));
        assert!(invalid(&[("_include", "Observation:subject:Medication")]));
        assert!(invalid(&[("_include:deep", "Observation:subject")]));
        assert!(invalid(&[("_summary", "short")]));
        // A dotted name FHIR does not define is an unknown parameter, ignored.
        assert_eq!(q(&[("colour.red", "x")]).unwrap().ignored, ["colour.red"]);
    }

    #[test]
    fn restrictions_must_be_fully_understood() {
        let registry = Registry::load().unwrap();
        let criteria = parse_restriction(&registry, "Observation", "category=laboratory").unwrap();
        assert_eq!(criteria.len(), 1);
        assert!(parse_restriction(&registry, "Observation", "nonsense=1").is_err());
        assert!(parse_restriction(&registry, "Observation", "_count=1").is_err());
        // A chain in a restriction cannot be enforced on a write: it grants nothing.
        assert!(parse_restriction(&registry, "Observation", "subject.name=x").is_err());
        assert_eq!(percent_decode("a%7Cb%2"), "a|b%2");
    }
}
