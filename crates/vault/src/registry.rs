//! The search parameters the vault knows, loaded from the FHIR R4 specification's own
//! SearchParameter definitions (`data/search-parameters.json`, made by
//! `scripts/fhir-search-parameters.py` from the npm package `hl7.fhir.r4.examples`).
//! A parameter is supported when its kind is one the vault indexes and its expression
//! is within [`crate::fhirpath`]; the CapabilityStatement lists exactly those.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::fhirpath::{paths_for, Path};

const DATA: &str = include_str!("../data/search-parameters.json");

/// Search parameters of the audit repository (ITI-81) beyond R4's, or replacing R4's where
/// Tessera's events name agents and patients by identifier, not by reference:
/// (type, code, kind, expression).
const ITI_81: [(&str, &str, &str, &str); 3] = [
    (
        "AuditEvent",
        "entity-id",
        "token",
        "AuditEvent.entity.what.identifier",
    ),
    (
        "AuditEvent",
        "patient",
        "token",
        "AuditEvent.entity.where(role.code='1').what.identifier",
    ),
    (
        "AuditEvent",
        "agent",
        "token",
        "AuditEvent.agent.who.identifier",
    ),
];

/// The kinds of search parameter the vault indexes and searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    String,
    Token,
    Date,
    Reference,
    Uri,
    /// A decimal or integer, compared exactly ([`crate::decimal`]).
    Number,
    /// A Quantity (or Money, Duration, ...): a number with `system|code` units.
    Quantity,
    /// Two values of one element, searched together (`code-value-quantity=loinc|x$gt5`):
    /// a token, then a token, quantity, date or string ([`SearchParam::components`]).
    Composite,
}

impl ParamKind {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "string" => Self::String,
            "token" => Self::Token,
            "date" => Self::Date,
            "reference" => Self::Reference,
            "uri" => Self::Uri,
            "number" => Self::Number,
            "quantity" => Self::Quantity,
            "composite" => Self::Composite,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Token => "token",
            Self::Date => "date",
            Self::Reference => "reference",
            Self::Uri => "uri",
            Self::Number => "number",
            Self::Quantity => "quantity",
            Self::Composite => "composite",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: String,
    pub kind: ParamKind,
    pub paths: Vec<Path>,
    /// Resource types a reference parameter may point to.
    pub targets: Vec<String>,
    /// A composite's components: each one's kind and paths, relative to a node the
    /// composite's own paths reach.
    pub components: Vec<Component>,
}

#[derive(Debug, Clone)]
pub struct Component {
    pub kind: ParamKind,
    pub paths: Vec<Path>,
    /// Evaluated from the resource (`%resource.x`), not from the composite's element.
    pub from_resource: bool,
}

#[derive(Deserialize)]
struct ComponentDefinition {
    code: String,
    expression: String,
}

#[derive(Deserialize)]
struct Definition {
    code: String,
    #[serde(rename = "type")]
    kind: String,
    base: Vec<String>,
    expression: String,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<ComponentDefinition>,
}

/// The composites the vault searches (all 46 of R4's): a token, then a token, quantity,
/// date or string; a reference, then a token (DocumentReference's `relationship`); a
/// token, then two numbers (MolecularSequence's coordinates).
fn components(
    definition: &Definition,
    kinds: &BTreeMap<&str, ParamKind>,
) -> Option<Vec<Component>> {
    let parts: Vec<(ParamKind, &str)> = definition
        .component
        .iter()
        .map(|c| Some((*kinds.get(c.code.as_str())?, c.expression.as_str())))
        .collect::<Option<_>>()?;
    use ParamKind::{Date, Number, Quantity, Reference, String as Text, Token};
    let kinds: Vec<ParamKind> = parts.iter().map(|(k, _)| *k).collect();
    let expressions: Vec<&str> = match kinds.as_slice() {
        [Token, Token | Quantity | Date | Text] | [Token, Number, Number] => {
            parts.iter().map(|(_, e)| *e).collect()
        }
        // R4 gives `relatesto` (a reference) the expression `code` and `relation` (a
        // token) `target`, the wrong way round (corrected in R5): each component takes
        // the element of its kind.
        [Reference, Token] if parts[0].1 == "code" && parts[1].1 == "target" => {
            vec!["target", "code"]
        }
        [Reference, Token] => parts.iter().map(|(_, e)| *e).collect(),
        _ => return None,
    };
    let component = |kind: ParamKind, expression: &str| {
        // `%resource.x` is evaluated from the resource; anything else from the
        // composite's node (`value.as(Quantity) | value.as(Range)`).
        if let Some(path) = expression.strip_prefix("%resource.") {
            let paths = paths_for(&format!("Resource.{path}"), "Resource")?;
            return (!paths.is_empty()).then_some(Component {
                kind,
                paths,
                from_resource: true,
            });
        }
        let rooted: Vec<String> = expression
            .split('|')
            .map(|branch| format!("Node.{}", branch.trim()))
            .collect();
        let paths = paths_for(&rooted.join(" | "), "Node")?;
        (!paths.is_empty()).then_some(Component {
            kind,
            paths,
            from_resource: false,
        })
    };
    kinds
        .iter()
        .zip(expressions)
        .map(|(kind, expression)| component(*kind, expression))
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    resource_types: Vec<String>,
    parameters: Vec<Definition>,
    patient_compartment: BTreeMap<String, Vec<String>>,
}

/// Every resource type of FHIR R4 and the search parameters supported on each.
#[derive(Debug)]
pub struct Registry {
    types: BTreeSet<String>,
    params: BTreeMap<String, BTreeMap<String, SearchParam>>,
    /// Every parameter the specification defines on each type, supported or not, with
    /// its kind: a search naming one the vault does not support is refused, never
    /// answered as if it were not there.
    defined: BTreeMap<String, BTreeMap<String, String>>,
    /// R4's Patient compartment: per type, the reference parameters that make a
    /// resource part of a patient's record.
    patient_compartment: BTreeMap<String, Vec<String>>,
}

impl Registry {
    /// Builds the registry from the embedded specification data.
    pub fn load() -> Result<Self, String> {
        let mut data: Data =
            serde_json::from_str(DATA).map_err(|e| format!("search parameter data: {e}"))?;
        for (base, code, kind, expression) in ITI_81 {
            data.parameters
                .retain(|p| !(p.code == code && p.base.len() == 1 && p.base[0] == base));
            data.parameters.push(Definition {
                code: code.to_owned(),
                kind: kind.to_owned(),
                base: vec![base.to_owned()],
                expression: expression.to_owned(),
                target: Vec::new(),
                component: Vec::new(),
            });
        }
        let types: BTreeSet<String> = data.resource_types.into_iter().collect();
        // Every parameter's kind by code: a composite names its components by code (a
        // component's parameter has the same kind on every type that defines it).
        let kinds: BTreeMap<&str, ParamKind> = data
            .parameters
            .iter()
            .filter_map(|d| Some((d.code.as_str(), ParamKind::parse(&d.kind)?)))
            .collect();
        let mut params: BTreeMap<String, BTreeMap<String, SearchParam>> = BTreeMap::new();
        let mut defined: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for definition in &data.parameters {
            let bases: Vec<&String> = if definition
                .base
                .iter()
                .any(|b| b == "Resource" || b == "DomainResource")
            {
                types.iter().collect()
            } else {
                definition.base.iter().collect()
            };
            for base in &bases {
                defined
                    .entry((*base).clone())
                    .or_default()
                    .insert(definition.code.clone(), definition.kind.clone());
            }
            let Some(kind) = ParamKind::parse(&definition.kind) else {
                continue;
            };
            let components = if kind == ParamKind::Composite {
                let Some(components) = components(definition, &kinds) else {
                    continue;
                };
                components
            } else {
                Vec::new()
            };
            for base in bases {
                let Some(paths) = paths_for(&definition.expression, base) else {
                    continue;
                };
                if paths.is_empty() {
                    continue;
                }
                // `Observation.subject.where(resolve() is Patient)` can only reach Patients,
                // whatever the definition's shared target list says.
                let narrowed: Option<Vec<String>> = paths
                    .iter()
                    .map(|p| p.resolves_to().map(str::to_owned))
                    .collect();
                let mut targets = narrowed.unwrap_or_else(|| definition.target.clone());
                targets.dedup();
                params.entry(base.clone()).or_default().insert(
                    definition.code.clone(),
                    SearchParam {
                        code: definition.code.clone(),
                        kind,
                        paths,
                        targets,
                        components: components.clone(),
                    },
                );
            }
        }
        Ok(Self {
            types,
            params,
            defined,
            patient_compartment: data.patient_compartment,
        })
    }

    /// The kind the specification gives a parameter of the type (`quantity`, `number`,
    /// `composite`, ...), when it defines one, whether or not the vault supports it.
    pub fn defined_kind(&self, resource_type: &str, code: &str) -> Option<&str> {
        self.defined
            .get(resource_type)?
            .get(code)
            .map(String::as_str)
    }

    pub fn is_resource_type(&self, name: &str) -> bool {
        self.types.contains(name)
    }

    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(String::as_str)
    }

    /// The types in R4's Patient compartment, each with the reference parameters by
    /// which a resource of it belongs to a patient (`Observation`: `subject`,
    /// `performer`; `Patient`: `link`, besides the Patient itself).
    pub fn patient_compartment(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.patient_compartment
            .iter()
            .map(|(t, params)| (t.as_str(), params.as_slice()))
    }

    pub fn param(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        self.params.get(resource_type)?.get(code)
    }

    /// The date parameter a resource of the type is ordered by: one the specification
    /// makes single-valued (`AuditEvent.recorded` is 1..1, `meta.lastUpdated` 0..1 on
    /// every resource). Each of a resource's index rows carries its value, so a search
    /// sorted by it can walk any criterion's index rows in that order and stop at the
    /// page (`crates/store/src/search.rs`; the store's migrations name the same
    /// parameters to fill older rows).
    pub fn ordering_date(resource_type: &str) -> &'static str {
        if resource_type == "AuditEvent" {
            "date"
        } else {
            "_lastUpdated"
        }
    }

    /// The supported parameters of a type, by code.
    pub fn params(&self, resource_type: &str) -> impl Iterator<Item = &SearchParam> {
        self.params
            .get(resource_type)
            .into_iter()
            .flat_map(|m| m.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every parameter that puts a resource in a patient's compartment is a reference
    /// parameter the vault searches, so a Patient-level export can select by it; but
    /// for AuditEvent's `patient`, which ITI-81 makes a token (by identifier).
    #[test]
    fn the_patient_compartment_is_searchable() {
        let registry = Registry::load().unwrap();
        let compartment: Vec<_> = registry.patient_compartment().collect();
        assert_eq!(compartment.len(), 66);
        let mut not_references = Vec::new();
        for (resource_type, params) in compartment {
            assert!(registry.is_resource_type(resource_type), "{resource_type}");
            for code in params {
                let kind = registry.param(resource_type, code).map(|p| p.kind);
                if kind != Some(ParamKind::Reference) {
                    not_references.push(format!("{resource_type}.{code}"));
                }
            }
        }
        assert_eq!(not_references, ["AuditEvent.patient"]);
        let observation = registry
            .patient_compartment()
            .find(|(t, _)| *t == "Observation")
            .unwrap();
        assert_eq!(observation.1, ["subject", "performer"]);
    }

    /// The clinical search parameters the vault promises, on their types, come from the
    /// spec's data.
    #[test]
    fn the_clinical_parameters_are_supported() {
        let registry = Registry::load().unwrap();
        let expected: &[(&str, &[&str])] = &[
            (
                "Patient",
                &[
                    "_id",
                    "_lastUpdated",
                    "identifier",
                    "name",
                    "family",
                    "given",
                    "birthdate",
                    "gender",
                ],
            ),
            (
                "Observation",
                &[
                    "code",
                    "category",
                    "status",
                    "date",
                    "patient",
                    "subject",
                    "identifier",
                ],
            ),
            (
                "Immunization",
                &["vaccine-code", "patient", "date", "status"],
            ),
            (
                "Condition",
                &["clinical-status", "code", "category", "patient", "subject"],
            ),
            (
                "AllergyIntolerance",
                &["clinical-status", "code", "patient", "date"],
            ),
            (
                "MedicationStatement",
                &["code", "status", "patient", "effective"],
            ),
            (
                "MedicationRequest",
                &["code", "status", "patient", "authoredon"],
            ),
            ("Encounter", &["status", "patient", "date", "class"]),
            (
                "DocumentReference",
                &["status", "patient", "category", "date", "type"],
            ),
            (
                "DiagnosticReport",
                &["code", "category", "status", "patient", "date"],
            ),
            (
                "Procedure",
                &["code", "status", "patient", "date", "category"],
            ),
        ];
        for (ty, codes) in expected {
            for code in *codes {
                assert!(registry.param(ty, code).is_some(), "{ty}.{code}");
            }
        }
        let date = registry.param("Observation", "date").unwrap();
        assert_eq!(date.kind, ParamKind::Date);
        let patient = registry.param("Observation", "patient").unwrap();
        assert_eq!(patient.targets, vec!["Patient"]);
        assert!(registry.is_resource_type("Observation"));
        assert!(!registry.is_resource_type("Observations"));
    }

    #[test]
    fn expressions_outside_the_subset_are_not_supported() {
        let registry = Registry::load().unwrap();
        // `Patient.deceased.exists() and Patient.deceased != false`
        assert!(registry.param("Patient", "deceased").is_none());
        let composite = registry
            .param("Observation", "code-value-quantity")
            .unwrap();
        assert_eq!(composite.kind, ParamKind::Composite);
        assert_eq!(composite.components[1].kind, ParamKind::Quantity);
        // Three components, one taken from the resource (`%resource.referenceSeq...`).
        let variant = registry
            .param("MolecularSequence", "chromosome-variant-coordinate")
            .unwrap();
        let kinds: Vec<_> = variant
            .components
            .iter()
            .map(|c| (c.kind, c.from_resource))
            .collect();
        assert_eq!(
            kinds,
            [
                (ParamKind::Token, true),
                (ParamKind::Number, false),
                (ParamKind::Number, false)
            ]
        );
        // A reference first, its expressions as R5 corrected them.
        let relationship = registry.param("DocumentReference", "relationship").unwrap();
        let kinds: Vec<_> = relationship.components.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ParamKind::Reference, ParamKind::Token]);
        // Every composite R4 defines is searched.
        let defined = registry
            .resource_types()
            .flat_map(|t| {
                registry
                    .defined
                    .get(t)
                    .into_iter()
                    .flatten()
                    .filter(|(_, kind)| kind.as_str() == "composite")
                    .map(move |(code, _)| (t, code))
            })
            .filter(|(t, code)| registry.param(t, code).is_none())
            .collect::<Vec<_>>();
        assert_eq!(defined, Vec::<(&str, &String)>::new());
        let quantity = registry.param("Observation", "value-quantity").unwrap();
        assert_eq!(quantity.kind, ParamKind::Quantity);
        let number = registry.param("RiskAssessment", "probability").unwrap();
        assert_eq!(number.kind, ParamKind::Number);
    }
}
