//! Search index entries of a resource: for each supported search parameter of its
//! type, the values its expression reaches, in the form search compares them.

use serde_json::Value;

use crate::dates::{self, DateRange};
use crate::decimal::Decimal;
use crate::registry::{ParamKind, Registry, SearchParam};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexValue {
    /// A coded value: `system|code` (no system: `None`).
    Token {
        system: Option<String>,
        code: String,
    },
    /// A string as written, and its normalised form (lower case) for default matching.
    String {
        exact: String,
        normalized: String,
    },
    Date(DateRange),
    /// `Type/id` for a relative reference (or the URL as written), and the bare id.
    Reference {
        reference: String,
        id: String,
    },
    Uri(String),
    /// A number's order-preserving key ([`Decimal::key`]).
    Number(String),
    /// A quantity: its number's key and its unit, `system|code` (the `unit` text when it
    /// has no code).
    Quantity {
        key: String,
        system: Option<String>,
        code: Option<String>,
    },
    /// A composite: one value of each component, of one element (see
    /// [`crate::registry`] for the shapes).
    Composite(Vec<IndexValue>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub param: String,
    pub value: IndexValue,
}

/// Lower case, for FHIR's case-insensitive string matching.
pub fn normalize(text: &str) -> String {
    text.to_lowercase()
}

/// ContactPoint.system codes: a token on a ContactPoint is its value alone.
const CONTACT_SYSTEMS: [&str; 7] = ["phone", "fax", "email", "pager", "url", "sms", "other"];

fn str_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn tokens(value: &Value, out: &mut Vec<IndexValue>) {
    let token = |system: Option<&str>, code: &str| IndexValue::Token {
        system: system.map(str::to_owned),
        code: code.to_owned(),
    };
    match value {
        Value::String(code) => out.push(token(None, code)),
        Value::Bool(b) => out.push(token(None, if *b { "true" } else { "false" })),
        Value::Object(_) => {
            if let Some(codings) = value.get("coding").and_then(Value::as_array) {
                for coding in codings {
                    tokens(coding, out);
                }
            } else if let Some(code) = str_of(value, "code") {
                out.push(token(str_of(value, "system"), code));
            } else if let Some(v) = str_of(value, "value") {
                let system = str_of(value, "system").filter(|s| !CONTACT_SYSTEMS.contains(s));
                out.push(token(system, v));
            }
        }
        _ => {}
    }
}

fn strings(value: &Value, out: &mut Vec<IndexValue>) {
    match value {
        Value::String(text) => out.push(IndexValue::String {
            exact: text.clone(),
            normalized: normalize(text),
        }),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        // HumanName, Address, ...: every string part.
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "use" | "period" | "extension" | "id"))
            .for_each(|(_, v)| strings(v, out)),
        _ => {}
    }
}

fn date_of(value: &Value) -> Option<DateRange> {
    match value {
        Value::String(text) => dates::parse(text),
        Value::Object(_) => {
            let start = str_of(value, "start").map(dates::parse);
            let end = str_of(value, "end").map(dates::parse);
            if start.is_none() && end.is_none() {
                return None;
            }
            Some(DateRange {
                lo: match start {
                    Some(range) => range?.lo,
                    None => dates::MIN,
                },
                hi: match end {
                    Some(range) => range?.hi,
                    None => dates::MAX,
                },
            })
        }
        _ => None,
    }
}

/// `Patient/1`, `https://host/fhir/p/Patient/1/_history/2` -> (`Patient/1`, `1`).
/// A reference to this vault by absolute URL is stored relative, so both forms match.
pub fn reference_parts(reference: &str, base: &str) -> (String, String) {
    let local = reference
        .strip_prefix(base)
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or(reference);
    let local = local.split("/_history/").next().unwrap_or(local);
    let id = local.rsplit('/').next().unwrap_or(local).to_owned();
    (local.to_owned(), id)
}

fn extract(
    param: &SearchParam,
    node: &Value,
    resource: &Value,
    base: &str,
    out: &mut Vec<IndexValue>,
) {
    if param.kind == ParamKind::Composite {
        // Every combination of the components' values under the same node.
        let mut combinations: Vec<Vec<IndexValue>> = vec![Vec::new()];
        for component in &param.components {
            let from = if component.from_resource {
                resource
            } else {
                node
            };
            let mut values = Vec::new();
            for path in &component.paths {
                for reached in path.evaluate(from) {
                    extract_kind(component.kind, reached.value, base, &mut values);
                }
            }
            combinations = combinations
                .into_iter()
                .flat_map(|done| {
                    values.iter().map(move |value| {
                        let mut more = done.clone();
                        more.push(value.clone());
                        more
                    })
                })
                .collect();
        }
        out.extend(
            combinations
                .into_iter()
                .filter(|c| !c.is_empty())
                .map(IndexValue::Composite),
        );
        return;
    }
    extract_kind(param.kind, node, base, out);
}

fn extract_kind(kind: ParamKind, node: &Value, base: &str, out: &mut Vec<IndexValue>) {
    match kind {
        ParamKind::Token => tokens(node, out),
        ParamKind::String => strings(node, out),
        ParamKind::Date => out.extend(date_of(node).map(IndexValue::Date)),
        ParamKind::Reference => {
            let reference = match node {
                Value::String(canonical) => Some(canonical.as_str()),
                _ => str_of(node, "reference"),
            };
            if let Some(reference) = reference {
                let (reference, id) = reference_parts(reference, base);
                out.push(IndexValue::Reference { reference, id });
            }
        }
        ParamKind::Uri => {
            if let Value::String(uri) = node {
                out.push(IndexValue::Uri(uri.clone()));
            }
        }
        ParamKind::Number => {
            if let Some(number) = number_key(node) {
                out.push(IndexValue::Number(number));
            }
        }
        ParamKind::Composite => {}
        ParamKind::Quantity => {
            // A Quantity (Money has `currency` for its unit); a Range or SampledData is
            // not one value and is not indexed.
            if let Some(key) = node.get("value").and_then(number_key) {
                let code = str_of(node, "code")
                    .or_else(|| str_of(node, "currency"))
                    .or_else(|| str_of(node, "unit"));
                let system = str_of(node, "system")
                    .or_else(|| node.get("currency").map(|_| "urn:iso:std:iso:4217"));
                out.push(IndexValue::Quantity {
                    key,
                    system: system.map(str::to_owned),
                    code: code.map(str::to_owned),
                });
            }
        }
    }
}

/// The key of a JSON number, as written (its digits are kept: `arbitrary_precision`).
fn number_key(node: &Value) -> Option<String> {
    match node {
        Value::Number(n) => Decimal::parse(&n.to_string()).map(|d| d.key()),
        _ => None,
    }
}

/// The values of one search parameter of `resource` (none when the type has no such
/// supported parameter), as the index holds them.
pub fn values_of(
    registry: &Registry,
    resource_type: &str,
    code: &str,
    resource: &Value,
    base: &str,
) -> Vec<IndexValue> {
    let mut values = Vec::new();
    if let Some(param) = registry.param(resource_type, code) {
        for path in &param.paths {
            for node in path.evaluate(resource) {
                extract(param, node.value, resource, base, &mut values);
            }
        }
    }
    values
}

/// The index entries of `resource` (its type's supported parameters). `base` is this
/// partition's FHIR base URL, so absolute references to it index as relative ones.
pub fn entries(
    registry: &Registry,
    resource_type: &str,
    resource: &Value,
    base: &str,
) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    for param in registry.params(resource_type) {
        let mut values = Vec::new();
        for path in &param.paths {
            for node in path.evaluate(resource) {
                extract(param, node.value, resource, base, &mut values);
            }
        }
        // One row per distinct value: a search walking a value's rows meets each
        // resource once.
        let mut distinct: Vec<IndexValue> = Vec::with_capacity(values.len());
        for value in values {
            if !distinct.contains(&value) {
                distinct.push(value);
            }
        }
        out.extend(distinct.into_iter().map(|value| IndexEntry {
            param: param.code.clone(),
            value,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn of(entries: &[IndexEntry], param: &str) -> Vec<IndexValue> {
        entries
            .iter()
            .filter(|e| e.param == param)
            .map(|e| e.value.clone())
            .collect()
    }

    #[test]
    fn an_observation_is_indexed_as_the_spec_defines() {
        let registry = Registry::load().unwrap();
        let obs = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "meta": {"lastUpdated": "2021-06-15T10:00:00.000Z"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}], "text": "HbA1c"},
            "subject": {"reference": "https://h/fhir/p1/Patient/pat1"},
            "effectiveDateTime": "2021-06-15",
        });
        let entries = entries(&registry, "Observation", &obs, "https://h/fhir/p1");
        assert_eq!(
            of(&entries, "code"),
            vec![IndexValue::Token {
                system: Some("http://loinc.org".into()),
                code: "4548-4".into()
            }]
        );
        assert_eq!(
            of(&entries, "status"),
            vec![IndexValue::Token {
                system: None,
                code: "final".into()
            }]
        );
        let patient = IndexValue::Reference {
            reference: "Patient/pat1".into(),
            id: "pat1".into(),
        };
        assert_eq!(of(&entries, "patient"), vec![patient.clone()]);
        assert_eq!(of(&entries, "subject"), vec![patient]);
        assert_eq!(
            of(&entries, "date"),
            vec![IndexValue::Date(dates::parse("2021-06-15").unwrap())]
        );
        assert_eq!(
            of(&entries, "_id"),
            vec![IndexValue::Token {
                system: None,
                code: "o1".into()
            }]
        );
        assert_eq!(of(&entries, "_lastUpdated").len(), 1);
    }

    #[test]
    fn names_identifiers_and_telecoms() {
        let registry = Registry::load().unwrap();
        let patient = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:2.16.756.5.32", "value": "7560000000001"}],
            "name": [{"use": "official", "family": "Müller", "given": ["Anna", "Maria"]}],
            "telecom": [{"system": "email", "value": "anna@example.org"}],
            "birthDate": "1980-02-29",
        });
        let entries = entries(&registry, "Patient", &patient, "");
        assert_eq!(
            of(&entries, "identifier"),
            vec![IndexValue::Token {
                system: Some("urn:oid:2.16.756.5.32".into()),
                code: "7560000000001".into()
            }]
        );
        assert!(of(&entries, "family").contains(&IndexValue::String {
            exact: "Müller".into(),
            normalized: "müller".into()
        }));
        assert_eq!(of(&entries, "given").len(), 2);
        assert_eq!(of(&entries, "name").len(), 3);
        assert_eq!(
            of(&entries, "email"),
            vec![IndexValue::Token {
                system: None,
                code: "anna@example.org".into()
            }]
        );
        assert!(of(&entries, "phone").is_empty());
    }

    #[test]
    fn periods_keep_open_ends() {
        let registry = Registry::load().unwrap();
        let encounter = json!({"resourceType": "Encounter", "period": {"start": "2021-01-01"}});
        let entries = entries(&registry, "Encounter", &encounter, "");
        assert_eq!(
            of(&entries, "date"),
            vec![IndexValue::Date(DateRange {
                lo: dates::parse("2021-01-01").unwrap().lo,
                hi: dates::MAX
            })]
        );
    }
}
