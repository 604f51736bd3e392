//! `_summary` and `_elements`: resources returned with only some of their top-level
//! elements, tagged SUBSETTED so no client takes them for the whole record (R4
//! search.html#summary and #elements). Which elements are summary or mandatory comes
//! from the specification's StructureDefinitions (`data/elements.json`, made by
//! `scripts/fhir-elements.py`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::search::Summary;

const DATA: &str = include_str!("../data/elements.json");

/// The `meta.tag` of a subsetted resource.
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

#[derive(Debug, Deserialize)]
struct TypeElements {
    summary: BTreeSet<String>,
    mandatory: BTreeSet<String>,
}

#[derive(Debug, Deserialize)]
struct Data {
    types: BTreeMap<String, TypeElements>,
}

/// The summary and mandatory top-level elements of every resource type.
#[derive(Debug)]
pub struct Elements {
    types: BTreeMap<String, TypeElements>,
}

/// What to keep of each resource.
#[derive(Debug, Clone, Copy)]
pub enum Subset<'a> {
    Summary(Summary),
    /// `_elements`: these top-level elements (and the mandatory ones).
    Elements(&'a [String]),
}

/// The element a JSON member belongs to: `valueQuantity` is `value[x]`, `_birthDate`
/// (a primitive's extensions) is `birthDate`.
fn is_member_of(member: &str, element: &str) -> bool {
    let member = member.strip_prefix('_').unwrap_or(member);
    match element.strip_suffix("[x]") {
        Some(stem) => member
            .strip_prefix(stem)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
        None => member == element,
    }
}

impl Elements {
    pub fn load() -> Result<Self, String> {
        let data: Data = serde_json::from_str(DATA).map_err(|e| format!("element data: {e}"))?;
        Ok(Self { types: data.types })
    }

    /// Keeps in `resource` what `subset` asks for; `false` when that is the whole
    /// resource (`_summary=false`), which is then left as it is.
    pub fn apply(&self, resource: &mut Map<String, Value>, subset: Subset<'_>) -> bool {
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let Some(elements) = self.types.get(&resource_type) else {
            return false;
        };
        let mandatory = |member: &str| elements.mandatory.iter().any(|e| is_member_of(member, e));
        let keep: Box<dyn Fn(&str) -> bool + '_> = match subset {
            Subset::Summary(Summary::False | Summary::Count) => return false,
            Subset::Summary(Summary::True) => Box::new(|member: &str| {
                elements.summary.iter().any(|e| is_member_of(member, e)) || mandatory(member)
            }),
            Subset::Summary(Summary::Text) => Box::new(|member: &str| {
                matches!(member, "id" | "meta" | "text") || mandatory(member)
            }),
            Subset::Summary(Summary::Data) => Box::new(|member: &str| member != "text"),
            Subset::Elements(names) => Box::new(move |member: &str| {
                matches!(member, "id" | "meta")
                    // `value` names `value[x]` as well, as clients write it.
                    || names.iter().any(|e| {
                        is_member_of(member, e) || is_member_of(member, &format!("{e}[x]"))
                    })
                    || mandatory(member)
            }),
        };
        resource.retain(|member, _| member == "resourceType" || keep(member));
        tag_subsetted(resource);
        true
    }
}

fn tag_subsetted(resource: &mut Map<String, Value>) {
    let meta = resource
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        let tags = meta
            .entry("tag")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(tags) = tags {
            tags.push(json!({
                "system": SUBSETTED_SYSTEM,
                "code": "SUBSETTED",
                "display": "subsetted",
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation() -> Map<String, Value> {
        let value = json!({
            "resourceType": "Observation", "id": "o1", "meta": {"versionId": "1"},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "status": "final", "code": {"text": "HbA1c"},
            "subject": {"reference": "Patient/p"},
            "valueQuantity": {"value": 5.4}, "_status": {"extension": []},
            "note": [{"text": "fasting"}], "interpretation": [{"text": "high"}],
        });
        value.as_object().cloned().unwrap()
    }

    fn members(resource: &Map<String, Value>) -> Vec<&str> {
        resource.keys().map(String::as_str).collect()
    }

    fn subsetted(resource: &Map<String, Value>) -> bool {
        resource["meta"]["tag"]
            .as_array()
            .is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
    }

    #[test]
    fn each_summary_keeps_what_the_specification_says() {
        let elements = Elements::load().unwrap();
        let mut summary = observation();
        assert!(elements.apply(&mut summary, Subset::Summary(Summary::True)));
        let mut kept = members(&summary);
        kept.sort_unstable();
        assert_eq!(
            kept,
            [
                "_status",
                "code",
                "id",
                "meta",
                "resourceType",
                "status",
                "subject",
                "valueQuantity"
            ]
        );
        assert!(subsetted(&summary));

        let mut text = observation();
        elements.apply(&mut text, Subset::Summary(Summary::Text));
        let mut kept = members(&text);
        kept.sort_unstable();
        // Mandatory elements stay: status and code are 1..1.
        assert_eq!(
            kept,
            [
                "_status",
                "code",
                "id",
                "meta",
                "resourceType",
                "status",
                "text"
            ]
        );

        let mut data = observation();
        elements.apply(&mut data, Subset::Summary(Summary::Data));
        assert!(!data.contains_key("text") && data.contains_key("note"));
        assert!(subsetted(&data));

        let mut whole = observation();
        assert!(!elements.apply(&mut whole, Subset::Summary(Summary::False)));
        assert_eq!(whole, observation());
    }

    #[test]
    fn elements_keep_the_named_and_the_mandatory() {
        let elements = Elements::load().unwrap();
        let mut resource = observation();
        let names = vec!["value[x]".to_owned(), "note".to_owned()];
        elements.apply(&mut resource, Subset::Elements(&names));
        let mut kept = members(&resource);
        kept.sort_unstable();
        assert_eq!(
            kept,
            [
                "_status",
                "code",
                "id",
                "meta",
                "note",
                "resourceType",
                "status",
                "valueQuantity"
            ]
        );
        let mut resource = observation();
        elements.apply(
            &mut resource,
            Subset::Elements(&["valueQuantity".to_owned()]),
        );
        assert!(resource.contains_key("valueQuantity"));
        assert!(!resource.contains_key("note"));
        let mut resource = observation();
        elements.apply(&mut resource, Subset::Elements(&["value".to_owned()]));
        assert!(resource.contains_key("valueQuantity"));
        assert!(!resource.contains_key("note"));
    }
}
