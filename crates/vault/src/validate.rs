//! Validation of resources against the FHIR R4 StructureDefinitions (the base
//! specification, no profiles): every element known to its type, cardinality, the JSON
//! form of each primitive and its regular expression, nested data types, BackboneElements
//! and contained resources, and the codes of required bindings. The definitions are the
//! specification's own (`data/structure.json`, made by `scripts/fhir-structure.py`).
//! Invariants (FHIRPath constraints such as `ele-1`) are not evaluated.
//! <https://hl7.org/fhir/R4/validation.html>

use std::collections::{BTreeSet, HashMap};

use regex_lite::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

const DATA: &str = include_str!("../data/structure.json");
/// Issues reported at most for one resource.
const MAX_ISSUES: usize = 20;

/// One way a resource does not conform: where (a FHIRPath-like location such as
/// `Patient.name[0].given[1]`), what kind of problem (an OperationOutcome issue type)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub location: String,
    /// `structure`, `required`, `value` or `code-invalid`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Deserialize)]
struct RawType {
    kind: String,
    #[serde(rename = "abstract")]
    is_abstract: bool,
    elements: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct RawValueSet {
    systems: BTreeSet<String>,
    codes: BTreeSet<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    primitives: HashMap<String, Option<String>>,
    types: HashMap<String, RawType>,
    value_sets: HashMap<String, RawValueSet>,
}

#[derive(Debug)]
struct ElementDef {
    /// The last segment of the path (`value[x]`, `given`).
    name: String,
    /// The path below the type (`contact.name`).
    path: String,
    min: u64,
    /// `None`: `*`.
    max: Option<u64>,
    types: Vec<String>,
    binding: Option<String>,
    /// Defined like another element of the type (`Questionnaire.item.item`).
    content_reference: Option<String>,
}

#[derive(Debug)]
struct TypeDef {
    resource: bool,
    is_abstract: bool,
    elements: Vec<ElementDef>,
    /// The elements under each path ("" for the type's own).
    children: HashMap<String, Vec<usize>>,
}

/// The R4 definitions the vault validates with.
#[derive(Debug)]
pub struct Structure {
    primitives: HashMap<String, Option<Regex>>,
    types: HashMap<String, TypeDef>,
    value_sets: HashMap<String, RawValueSet>,
}

/// `dateTime` -> `DateTime`: how a type names a choice element (`valueDateTime`).
fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn element(raw: &Value) -> Option<ElementDef> {
    let item = raw.as_array()?;
    let path = item.first()?.as_str()?.to_owned();
    let max = match item.get(2)?.as_str()? {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    Some(ElementDef {
        name: path.rsplit('.').next().unwrap_or(&path).to_owned(),
        min: item.get(1)?.as_u64()?,
        max,
        types: item
            .get(3)?
            .as_array()?
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        binding: item.get(4).and_then(Value::as_str).map(str::to_owned),
        content_reference: item.get(5).and_then(Value::as_str).map(str::to_owned),
        path,
    })
}

impl Structure {
    pub fn load() -> Result<Self, String> {
        let data: Data = serde_json::from_str(DATA).map_err(|e| format!("structure data: {e}"))?;
        let mut primitives = HashMap::new();
        for (name, pattern) in data.primitives {
            let regex = match pattern {
                Some(p) => Some(
                    Regex::new(&format!("^(?:{p})$"))
                        .map_err(|e| format!("the regex of {name}: {e}"))?,
                ),
                None => None,
            };
            primitives.insert(name, regex);
        }
        let mut types = HashMap::new();
        for (name, raw) in data.types {
            let elements: Vec<ElementDef> = raw
                .elements
                .iter()
                .map(|e| element(e).ok_or_else(|| format!("{name}: element {e}")))
                .collect::<Result<_, _>>()?;
            let mut children: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, e) in elements.iter().enumerate() {
                let parent = e.path.rsplit_once('.').map_or("", |(p, _)| p);
                children.entry(parent.to_owned()).or_default().push(i);
            }
            types.insert(
                name,
                TypeDef {
                    resource: raw.kind == "resource",
                    is_abstract: raw.is_abstract,
                    elements,
                    children,
                },
            );
        }
        Ok(Self {
            primitives,
            types,
            value_sets: data.value_sets,
        })
    }

    /// The ways `resource` does not conform to its type's definition (none: it does).
    pub fn validate(&self, resource: &Map<String, Value>) -> Vec<Issue> {
        let mut walk = Walk {
            structure: self,
            issues: Vec::new(),
        };
        let name = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("Resource")
            .to_owned();
        walk.resource(resource, &name);
        walk.issues
    }
}

struct Walk<'s> {
    structure: &'s Structure,
    issues: Vec<Issue>,
}

impl Walk<'_> {
    fn issue(&mut self, location: &str, code: &'static str, message: String) {
        if self.issues.len() < MAX_ISSUES {
            self.issues.push(Issue {
                location: location.to_owned(),
                code,
                message,
            });
        }
    }

    fn resource(&mut self, object: &Map<String, Value>, location: &str) {
        let Some(name) = object.get("resourceType").and_then(Value::as_str) else {
            self.issue(
                location,
                "structure",
                "a resource needs its resourceType".into(),
            );
            return;
        };
        match self.structure.types.get(name) {
            Some(ty) if ty.resource && !ty.is_abstract => self.object(ty, "", object, location),
            _ => self.issue(
                location,
                "structure",
                format!("'{name}' is not a FHIR R4 resource type"),
            ),
        }
    }

    /// The members of `object`, an instance of the elements under `parent` in `ty`.
    fn object(&mut self, ty: &TypeDef, parent: &str, object: &Map<String, Value>, location: &str) {
        let empty = Vec::new();
        let children = ty.children.get(parent).unwrap_or(&empty);
        for (key, value) in object {
            if parent.is_empty() && ty.resource && key == "resourceType" {
                continue;
            }
            let (name, extension) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            let here = format!("{location}.{name}");
            let Some((index, chosen)) = children.iter().find_map(|&i| {
                let e = &ty.elements[i];
                match e.name.strip_suffix("[x]") {
                    None => (e.name == name).then(|| (i, e.types.first().cloned())),
                    Some(stem) => {
                        let suffix = name.strip_prefix(stem)?;
                        e.types
                            .iter()
                            .find(|t| capitalized(t) == suffix)
                            .map(|t| (i, Some(t.clone())))
                    }
                }
            }) else {
                self.issue(&here, "structure", format!("unknown element '{key}'"));
                continue;
            };
            let def = &ty.elements[index];
            let chosen = chosen.unwrap_or_default();
            if extension {
                if !self.structure.primitives.contains_key(&chosen) {
                    self.issue(
                        &here,
                        "structure",
                        format!("'{key}' is only for primitive elements"),
                    );
                    continue;
                }
                self.each(def, value, &here, true, |walk, item, at| {
                    if !item.is_null() {
                        walk.element_extensions(item, at);
                    }
                });
                continue;
            }
            self.each(def, value, &here, false, |walk, item, at| {
                walk.value(ty, def, &chosen, item, at);
            });
        }
        for &i in children {
            let def = &ty.elements[i];
            if def.min == 0 {
                continue;
            }
            let present = match def.name.strip_suffix("[x]") {
                Some(stem) => object.keys().any(|k| {
                    k.strip_prefix(stem)
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
                }),
                None => {
                    object.contains_key(&def.name) || object.contains_key(&format!("_{}", def.name))
                }
            };
            if !present {
                self.issue(
                    &format!("{location}.{}", def.name),
                    "required",
                    format!("'{}' is required (minimum {})", def.name, def.min),
                );
            }
        }
    }

    /// Calls `each` on the one value or every item of the array, after checking that the
    /// element's cardinality allows the form (a primitive's extensions may hold nulls).
    fn each(
        &mut self,
        def: &ElementDef,
        value: &Value,
        location: &str,
        extensions: bool,
        mut each: impl FnMut(&mut Self, &Value, &str),
    ) {
        let repeats = def.max != Some(1);
        match value {
            Value::Array(items) if repeats => {
                if let Some(max) = def.max {
                    if items.len() as u64 > max {
                        self.issue(
                            location,
                            "structure",
                            format!("at most {max} values, not {}", items.len()),
                        );
                    }
                }
                for (n, item) in items.iter().enumerate() {
                    if item.is_null() && !extensions {
                        self.issue(
                            &format!("{location}[{n}]"),
                            "structure",
                            "null in an array".into(),
                        );
                        continue;
                    }
                    each(self, item, &format!("{location}[{n}]"));
                }
            }
            Value::Array(_) => {
                self.issue(location, "structure", "a single value, not an array".into())
            }
            _ if repeats => self.issue(
                location,
                "structure",
                "an array (the element repeats)".into(),
            ),
            single => each(self, single, location),
        }
    }

    /// `_element`: a primitive's id and extensions.
    fn element_extensions(&mut self, value: &Value, location: &str) {
        let Value::Object(object) = value else {
            self.issue(
                location,
                "structure",
                "a primitive's extensions are an object".into(),
            );
            return;
        };
        for (key, item) in object {
            match key.as_str() {
                "id" => self.primitive("string", item, &format!("{location}.id"), None),
                "extension" => {
                    let Some(ty) = self.structure.types.get("Extension") else {
                        continue;
                    };
                    let Value::Array(items) = item else {
                        self.issue(
                            &format!("{location}.extension"),
                            "structure",
                            "an array (the element repeats)".into(),
                        );
                        continue;
                    };
                    for (n, extension) in items.iter().enumerate() {
                        let at = format!("{location}.extension[{n}]");
                        match extension {
                            Value::Object(map) => self.object(ty, "", map, &at),
                            _ => self.issue(&at, "structure", "an Extension is an object".into()),
                        }
                    }
                }
                other => self.issue(
                    &format!("{location}.{other}"),
                    "structure",
                    format!("unknown element '{other}'"),
                ),
            }
        }
    }

    fn value(
        &mut self,
        ty: &TypeDef,
        def: &ElementDef,
        chosen: &str,
        value: &Value,
        location: &str,
    ) {
        if let Some(reference) = &def.content_reference {
            match value {
                Value::Object(object) => self.object(ty, reference, object, location),
                _ => self.issue(location, "structure", "an object".into()),
            }
            return;
        }
        if self.structure.primitives.contains_key(chosen) || chosen == "xhtml" {
            self.primitive(chosen, value, location, def.binding.as_deref());
            return;
        }
        let Value::Object(object) = value else {
            self.issue(location, "structure", format!("a {chosen} is an object"));
            return;
        };
        if ty.children.contains_key(&def.path) {
            // BackboneElement (or Element) defined inline.
            self.object(ty, &def.path, object, location);
        } else if chosen == "Resource" {
            self.resource(object, location);
        } else if let Some(data_type) = self.structure.types.get(chosen) {
            self.object(data_type, "", object, location);
            if let Some(binding) = &def.binding {
                self.coded(chosen, object, binding, location);
            }
        } else {
            self.issue(
                location,
                "structure",
                format!("no definition of type {chosen}"),
            );
        }
    }

    fn primitive(&mut self, ty: &str, value: &Value, location: &str, binding: Option<&str>) {
        let text = match (ty, value) {
            ("boolean", Value::Bool(b)) => b.to_string(),
            ("integer" | "positiveInt" | "unsignedInt" | "decimal", Value::Number(n)) => {
                n.to_string()
            }
            ("boolean" | "integer" | "positiveInt" | "unsignedInt" | "decimal", _) => {
                let form = if ty == "boolean" {
                    "true or false"
                } else {
                    "a JSON number"
                };
                self.issue(location, "value", format!("a {ty} is {form}, not {value}"));
                return;
            }
            (_, Value::String(s)) => s.clone(),
            _ => {
                self.issue(
                    location,
                    "value",
                    format!("a {ty} is a JSON string, not {value}"),
                );
                return;
            }
        };
        if let Some(Some(regex)) = self.structure.primitives.get(ty) {
            if !regex.is_match(&text) {
                self.issue(
                    location,
                    "value",
                    format!("'{}' is not a valid {ty}", shorten(&text)),
                );
                return;
            }
        }
        if matches!(ty, "integer" | "positiveInt" | "unsignedInt") && text.parse::<i32>().is_err() {
            self.issue(
                location,
                "value",
                format!("{text} is out of the range of a {ty}"),
            );
            return;
        }
        if let Some(binding) = binding {
            if let Some(set) = self.structure.value_sets.get(binding) {
                if !set.codes.contains(&text) {
                    self.issue(
                        location,
                        "code-invalid",
                        format!("'{}' is not a code of {binding}", shorten(&text)),
                    );
                }
            }
        }
    }

    /// A Coding or CodeableConcept bound to a required value set: each coding of a
    /// system the value set draws from must be one of its codes.
    fn coded(&mut self, ty: &str, object: &Map<String, Value>, binding: &str, location: &str) {
        let Some(set) = self.structure.value_sets.get(binding) else {
            return;
        };
        let codings: Vec<(String, &Map<String, Value>)> = match ty {
            "Coding" => vec![(location.to_owned(), object)],
            "CodeableConcept" => object
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(n, c)| Some((format!("{location}.coding[{n}]"), c.as_object()?)))
                .collect(),
            _ => Vec::new(),
        };
        let mut bad = Vec::new();
        for (at, coding) in codings {
            let in_set_system = coding
                .get("system")
                .and_then(Value::as_str)
                .is_some_and(|s| set.systems.contains(s));
            if let (true, Some(code)) = (in_set_system, coding.get("code").and_then(Value::as_str))
            {
                if !set.codes.contains(code) {
                    bad.push((at, code.to_owned()));
                }
            }
        }
        for (at, code) in bad {
            self.issue(
                &format!("{at}.code"),
                "code-invalid",
                format!("'{}' is not a code of {binding}", shorten(&code)),
            );
        }
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(60).collect::<String>())
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(value: Value) -> Vec<Issue> {
        let structure = Structure::load().unwrap();
        structure.validate(value.as_object().unwrap())
    }

    fn locations(value: Value) -> Vec<String> {
        issues(value).into_iter().map(|i| i.location).collect()
    }

    #[test]
    fn the_issue_15_patient_is_refused_element_by_element() {
        let found = issues(json!({
            "resourceType": "Patient",
            "gender": "robot",
            "birthDate": "yesterday",
            "foo": 1,
            "name": {"family": "Muster"},
        }));
        let by = |location: &str| {
            found
                .iter()
                .find(|i| i.location == location)
                .unwrap_or_else(|| panic!("{location} in {found:?}"))
                .code
        };
        assert_eq!(by("Patient.gender"), "code-invalid");
        assert_eq!(by("Patient.birthDate"), "value");
        assert_eq!(by("Patient.foo"), "structure");
        assert_eq!(by("Patient.name"), "structure");
        assert_eq!(found.len(), 4, "{found:?}");
    }

    #[test]
    fn valid_resources_pass() {
        let none: Vec<String> = Vec::new();
        assert_eq!(
            locations(json!({
                "resourceType": "Observation", "id": "o1", "status": "final",
                "meta": {"lastUpdated": "2021-06-15T10:00:00.000Z", "tag": [{"code": "x"}]},
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}], "text": "HbA1c"},
                "subject": {"reference": "Patient/1"},
                "effectiveDateTime": "2021-06-15",
                "valueQuantity": {"value": 5.40, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
                "component": [{"code": {"text": "c"}, "valueString": "x"}],
                "_status": {"extension": [{"url": "http://example.org/x", "valueBoolean": true}]},
                "contained": [{"resourceType": "Patient", "id": "p", "gender": "female"}],
            })),
            none
        );
        // A recursive element (`item.item` is defined like `item`).
        assert_eq!(
            locations(json!({
                "resourceType": "Questionnaire", "status": "draft",
                "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}],
            })),
            none
        );
    }

    #[test]
    fn each_rule_is_checked() {
        let table = [
            (
                json!({"resourceType": "Observation", "code": {"text": "x"}}),
                "Observation.status",
            ),
            (
                json!({"resourceType": "Observation", "status": "final"}),
                "Observation.code",
            ),
            (
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueFoo": 1}),
                "Observation.valueFoo",
            ),
            (
                json!({"resourceType": "Patient", "active": "true"}),
                "Patient.active",
            ),
            (
                json!({"resourceType": "Patient", "multipleBirthInteger": 1.5}),
                "Patient.multipleBirthInteger",
            ),
            (
                json!({"resourceType": "Patient", "gender": ["male"]}),
                "Patient.gender",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"given": "Anna"}]}),
                "Patient.name[0].given",
            ),
            (
                json!({"resourceType": "Patient", "contact": [{"nonsense": 1}]}),
                "Patient.contact[0].nonsense",
            ),
            (
                json!({"resourceType": "Patient", "link": [{"type": "seealso"}]}),
                "Patient.link[0].other",
            ),
            (
                json!({"resourceType": "Patient", "_gender": {"foo": 1}}),
                "Patient.gender.foo",
            ),
            (
                json!({"resourceType": "Patient", "_name": {"id": "1"}}),
                "Patient.name",
            ),
            (
                json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/1"}, "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "gone"}]}}),
                "AllergyIntolerance.clinicalStatus.coding[0].code",
            ),
            (
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Nonsense"}]}),
                "Patient.contained[0]",
            ),
            (
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Basic"}]}),
                "Patient.contained[0].code",
            ),
            (
                json!({"resourceType": "Patient", "extension": [{"valueString": "x"}]}),
                "Patient.extension[0].url",
            ),
            (
                json!({"resourceType": "Patient", "birthDate": "2021-02-30T10:00:00Z"}),
                "Patient.birthDate",
            ),
            (
                json!({"resourceType": "Patient", "telecom": [{"rank": 0}]}),
                "Patient.telecom[0].rank",
            ),
        ];
        for (resource, location) in table {
            let found = locations(resource.clone());
            assert!(found.iter().any(|l| l == location), "{resource}: {found:?}");
        }
    }
}
