//! The part of FHIRPath that the specification's search parameter expressions use:
//! paths with choice types (`Observation.effective`), unions (`|`), type filters
//! (`X as T`, `X.as(T)`, `ofType(T)`), `where(resolve() is T)` on references and
//! `where(field='literal')`. An expression using anything else does not parse, and its
//! search parameter is reported as unsupported rather than evaluated wrongly.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Child(String),
    OfType(String),
    ResolvesTo(String),
    /// `where(a.b='literal')`: the path below the node leads to that string.
    FieldEquals(Vec<String>, String),
}

/// One branch of a union, rooted at a resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    steps: Vec<Step>,
}

/// A value reached by a path, with the type named by a choice element's suffix
/// (`effectiveDateTime` -> `DateTime`) when it came from one.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub value: &'a Value,
    pub choice_type: Option<&'a str>,
}

/// Splits on `sep` outside parentheses and quotes.
fn split_top(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, ch) in text.char_indices() {
        match ch {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && depth == 0 && !quoted => {
                parts.push(&text[start..i]);
                start = i + ch.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn is_name(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_step(token: &str) -> Option<Step> {
    let token = token.trim();
    if is_name(token) {
        return Some(Step::Child(token.to_owned()));
    }
    let (function, args) = token.strip_suffix(')')?.split_once('(')?;
    let args = args.trim();
    match function {
        "as" | "ofType" if is_name(args) => Some(Step::OfType(args.to_owned())),
        "where" => {
            if let Some(target) = args.strip_prefix("resolve() is ") {
                return is_name(target.trim()).then(|| Step::ResolvesTo(target.trim().to_owned()));
            }
            let (field, literal) = args.split_once('=')?;
            let literal = literal.trim().strip_prefix('\'')?.strip_suffix('\'')?;
            let path: Vec<String> = field.trim().split('.').map(str::to_owned).collect();
            path.iter()
                .all(|p| is_name(p))
                .then(|| Step::FieldEquals(path, literal.to_owned()))
        }
        _ => None,
    }
}

/// Parses one union branch: `A.b.c`, `(A.b as T)`, `(A.b as T).c`, `A.b.where(...)`.
/// Returns the root name and the steps after it.
fn parse_branch(text: &str) -> Option<(String, Vec<Step>)> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('(') {
        let close = inner.find(')')?;
        let (cast, rest) = (&inner[..close], &inner[close + 1..]);
        let (path, ty) = cast.split_once(" as ")?;
        let (root, mut steps) = parse_branch(path)?;
        steps.push(Step::OfType(ty.trim().to_owned()));
        if !rest.is_empty() {
            for token in split_top(rest.strip_prefix('.')?, '.') {
                steps.push(parse_step(token)?);
            }
        }
        return Some((root, steps));
    }
    let mut tokens = split_top(text, '.').into_iter();
    let root = tokens.next()?.trim();
    if !is_name(root) {
        return None;
    }
    let steps = tokens.map(parse_step).collect::<Option<Vec<_>>>()?;
    Some((root.to_owned(), steps))
}

/// The branches of `expression` that apply to `resource_type` (rooted at it, or at
/// `Resource`/`DomainResource`). `None` if a branch for this type uses what this
/// subset does not evaluate; `Some(empty)` if no branch applies.
pub fn paths_for(expression: &str, resource_type: &str) -> Option<Vec<Path>> {
    let mut paths = Vec::new();
    for branch in split_top(expression, '|') {
        let root = branch
            .trim()
            .trim_start_matches('(')
            .split(['.', ' '])
            .next()
            .unwrap_or_default();
        if root != resource_type && root != "Resource" && root != "DomainResource" {
            continue;
        }
        let (_, steps) = parse_branch(branch)?;
        paths.push(Path { steps });
    }
    Some(paths)
}

fn push_values<'a>(out: &mut Vec<Node<'a>>, value: &'a Value, choice_type: Option<&'a str>) {
    match value {
        Value::Array(items) => out.extend(items.iter().map(|value| Node { value, choice_type })),
        value => out.push(Node { value, choice_type }),
    }
}

fn references_type(node: &Value, ty: &str) -> bool {
    let Some(reference) = node.get("reference").and_then(Value::as_str) else {
        return node.get("type").and_then(Value::as_str) == Some(ty);
    };
    let path = reference.split(['?', '#']).next().unwrap_or_default();
    let mut segments = path.rsplit('/');
    let (_id, kind) = (segments.next(), segments.next());
    // `Type/id` or `.../Type/id/_history/n`.
    kind == Some(ty) || path.contains(&format!("{ty}/")) && path.contains("/_history/")
}

impl Path {
    /// `T` when the path ends in `where(resolve() is T)`.
    pub fn resolves_to(&self) -> Option<&str> {
        match self.steps.last() {
            Some(Step::ResolvesTo(ty)) => Some(ty),
            _ => None,
        }
    }

    /// Evaluates the path on a resource.
    pub fn evaluate<'a>(&'a self, resource: &'a Value) -> Vec<Node<'a>> {
        let mut nodes = vec![Node {
            value: resource,
            choice_type: None,
        }];
        for step in &self.steps {
            let mut next = Vec::new();
            for node in nodes {
                match step {
                    Step::Child(name) => {
                        let Some(object) = node.value.as_object() else {
                            continue;
                        };
                        if let Some(value) = object.get(name) {
                            push_values(&mut next, value, None);
                            continue;
                        }
                        // A choice element: `effective` is `effectiveDateTime`, `effectivePeriod`, ...
                        for (key, value) in object {
                            if let Some(suffix) = key.strip_prefix(name.as_str()) {
                                if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                                    push_values(&mut next, value, Some(suffix));
                                }
                            }
                        }
                    }
                    Step::OfType(ty) => {
                        let keep = match node.choice_type {
                            Some(suffix) => suffix.eq_ignore_ascii_case(ty),
                            None => true,
                        };
                        if keep {
                            next.push(node);
                        }
                    }
                    Step::ResolvesTo(ty) => {
                        if references_type(node.value, ty) {
                            next.push(node);
                        }
                    }
                    Step::FieldEquals(path, literal) => {
                        let found = path
                            .iter()
                            .try_fold(node.value, |value, key| value.get(key))
                            .and_then(Value::as_str);
                        if found == Some(literal.as_str()) {
                            next.push(node);
                        }
                    }
                }
            }
            nodes = next;
        }
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(expression: &str, ty: &str, resource: &Value) -> Vec<Value> {
        paths_for(expression, ty)
            .unwrap()
            .iter()
            .flat_map(|p| {
                p.evaluate(resource)
                    .into_iter()
                    .map(|n| n.value.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn branches_are_chosen_by_root_type() {
        let expression = "AllergyIntolerance.code | Condition.code | Observation.code";
        assert_eq!(paths_for(expression, "Observation").unwrap().len(), 1);
        assert!(paths_for(expression, "Patient").unwrap().is_empty());
        assert_eq!(paths_for("Resource.id", "Patient").unwrap().len(), 1);
    }

    #[test]
    fn choice_types_and_casts() {
        let obs = json!({"resourceType": "Observation", "effectiveDateTime": "2021-06-15",
            "valueQuantity": {"value": 1}, "component": [{"valueCodeableConcept": {"text": "a"}}]});
        assert_eq!(
            eval("Observation.effective", "Observation", &obs),
            vec![json!("2021-06-15")]
        );
        assert_eq!(
            eval("(Observation.value as Quantity)", "Observation", &obs),
            vec![json!({"value": 1})]
        );
        assert!(eval(
            "(Observation.value as CodeableConcept)",
            "Observation",
            &obs
        )
        .is_empty());
        assert_eq!(
            eval(
                "(Observation.component.value as CodeableConcept).text",
                "Observation",
                &obs
            ),
            vec![json!("a")]
        );
        let condition = json!({"onsetPeriod": {"start": "2020"}});
        assert_eq!(
            eval("Condition.onset.as(Period)", "Condition", &condition).len(),
            1
        );
        assert!(eval("Condition.onset.as(dateTime)", "Condition", &condition).is_empty());
    }

    #[test]
    fn where_filters() {
        let obs = json!({"subject": {"reference": "Patient/1"}, "performer": [{"reference": "Practitioner/2"}]});
        assert_eq!(
            eval(
                "Observation.subject.where(resolve() is Patient)",
                "Observation",
                &obs
            )
            .len(),
            1
        );
        assert!(eval(
            "Observation.subject.where(resolve() is Group)",
            "Observation",
            &obs
        )
        .is_empty());
        let patient = json!({"telecom": [{"system": "email", "value": "a@b"}, {"system": "phone", "value": "1"}]});
        assert_eq!(
            eval("Patient.telecom.where(system='email')", "Patient", &patient),
            vec![json!({"system": "email", "value": "a@b"})]
        );
    }

    #[test]
    fn where_follows_a_field_path() {
        let event = json!({"entity": [
            {"role": {"code": "1"}, "what": {"identifier": {"value": "urn:a"}}},
            {"role": {"code": "4"}, "what": {"identifier": {"value": "Observation/1"}}},
        ]});
        assert_eq!(
            eval(
                "AuditEvent.entity.where(role.code='1').what.identifier",
                "AuditEvent",
                &event
            ),
            vec![json!({"value": "urn:a"})]
        );
    }

    #[test]
    fn unsupported_functions_do_not_parse() {
        assert_eq!(
            paths_for(
                "Patient.deceased.exists() and Patient.deceased != false",
                "Patient"
            ),
            None
        );
        assert_eq!(paths_for("Observation.code.first()", "Observation"), None);
    }
}
