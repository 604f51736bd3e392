//! JSON Patch (RFC 6902) with JSON Pointers (RFC 6901): the body of FHIR's `patch`
//! interaction in `application/json-patch+json`. Operations apply in order to a copy;
//! the first that fails fails the whole patch and nothing is changed.

use serde_json::{Map, Value};

use crate::decimal::Decimal;

/// Why a patch could not be applied: malformed (400) or well formed but not applicable
/// to this resource (a failed `test`, a path that is not there: 422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchError {
    Malformed(String),
    NotApplicable(String),
}

/// `/a/b~1c/0` -> `["a", "b/c", "0"]`.
fn tokens(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer.strip_prefix('/').ok_or_else(|| {
        PatchError::Malformed(format!(
            "'{pointer}' is not a JSON Pointer (it starts with /)"
        ))
    })?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index(token: &str, len: usize, pointer: &str) -> Result<usize, PatchError> {
    let valid = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    match token.parse::<usize>() {
        Ok(i) if valid && i < len => Ok(i),
        _ => Err(PatchError::NotApplicable(format!(
            "{pointer}: no array element '{token}'"
        ))),
    }
}

fn get<'v>(doc: &'v Value, pointer: &str) -> Result<&'v Value, PatchError> {
    let mut node = doc;
    for token in tokens(pointer)? {
        node = match node {
            Value::Object(map) => map.get(&token),
            Value::Array(items) => items.get(index(&token, items.len(), pointer)?),
            _ => None,
        }
        .ok_or_else(|| PatchError::NotApplicable(format!("{pointer} is not in the resource")))?;
    }
    Ok(node)
}

/// The parent of `pointer`'s target and the last token.
fn parent<'v>(doc: &'v mut Value, pointer: &str) -> Result<(&'v mut Value, String), PatchError> {
    let mut tokens = tokens(pointer)?;
    let last = tokens.pop().ok_or_else(|| {
        PatchError::NotApplicable(
            "the whole resource cannot be replaced or removed by a patch".into(),
        )
    })?;
    let mut node = doc;
    for token in tokens {
        node = match node {
            Value::Object(map) => map.get_mut(&token),
            Value::Array(items) => {
                let i = index(&token, items.len(), pointer)?;
                items.get_mut(i)
            }
            _ => None,
        }
        .ok_or_else(|| {
            PatchError::NotApplicable(format!("{pointer}: its parent is not in the resource"))
        })?;
    }
    Ok((node, last))
}

fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), PatchError> {
    let (parent, last) = parent(doc, pointer)?;
    match parent {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(items) => {
            let at = if last == "-" {
                items.len()
            } else {
                index(&last, items.len() + 1, pointer)?
            };
            items.insert(at, value);
            Ok(())
        }
        _ => Err(PatchError::NotApplicable(format!(
            "{pointer}: its parent is neither an object nor an array"
        ))),
    }
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Value, PatchError> {
    let (parent, last) = parent(doc, pointer)?;
    let removed = match parent {
        Value::Object(map) => map.remove(&last),
        Value::Array(items) => {
            let i = index(&last, items.len(), pointer)?;
            Some(items.remove(i))
        }
        _ => None,
    };
    removed.ok_or_else(|| PatchError::NotApplicable(format!("{pointer} is not in the resource")))
}

fn member<'o>(op: &'o Map<String, Value>, name: &str, n: usize) -> Result<&'o Value, PatchError> {
    op.get(name)
        .ok_or_else(|| PatchError::Malformed(format!("operation {n} has no '{name}'")))
}

fn pointer_of<'o>(op: &'o Map<String, Value>, name: &str, n: usize) -> Result<&'o str, PatchError> {
    member(op, name, n)?
        .as_str()
        .ok_or_else(|| PatchError::Malformed(format!("operation {n}: '{name}' is not a string")))
}

/// JSON equality as RFC 6902 `test` defines it: numbers by value (`1.0` is `1.00`, which
/// the digits kept as written would tell apart), objects whatever their members' order.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (
                Decimal::parse(&x.to_string()),
                Decimal::parse(&y.to_string()),
            ) {
                (Some(x), Some(y)) => x.key() == y.key(),
                _ => x == y,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Applies `patch` (a JSON array of operations) to `doc`, all or nothing.
pub fn apply(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let operations = patch
        .as_array()
        .ok_or_else(|| PatchError::Malformed("a JSON Patch is an array of operations".into()))?;
    let mut out = doc.clone();
    for (n, operation) in operations.iter().enumerate() {
        let op = operation
            .as_object()
            .ok_or_else(|| PatchError::Malformed(format!("operation {n} is not an object")))?;
        let path = pointer_of(op, "path", n)?;
        match member(op, "op", n)?.as_str().unwrap_or_default() {
            "add" => add(&mut out, path, member(op, "value", n)?.clone())?,
            "remove" => {
                remove(&mut out, path)?;
            }
            "replace" => {
                remove(&mut out, path)?;
                add(&mut out, path, member(op, "value", n)?.clone())?;
            }
            "move" => {
                let from = pointer_of(op, "from", n)?;
                if path.starts_with(&format!("{from}/")) {
                    return Err(PatchError::Malformed(format!(
                        "operation {n}: cannot move {from} into itself"
                    )));
                }
                let value = remove(&mut out, from)?;
                add(&mut out, path, value)?;
            }
            "copy" => {
                let value = get(&out, pointer_of(op, "from", n)?)?.clone();
                add(&mut out, path, value)?;
            }
            "test" => {
                if !same(get(&out, path)?, member(op, "value", n)?) {
                    return Err(PatchError::NotApplicable(format!(
                        "operation {n}: test of {path} failed"
                    )));
                }
            }
            other => {
                return Err(PatchError::Malformed(format!(
                    "operation {n}: '{other}' is not a JSON Patch operation"
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rfc_6902_operations() {
        let doc = json!({"a": {"b": [1, 2]}, "c/d": "x", "e~f": 1});
        let patched = apply(
            &doc,
            &json!([
                {"op": "add", "path": "/a/b/1", "value": 9},
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "replace", "path": "/c~1d", "value": "y"},
                {"op": "remove", "path": "/e~0f"},
                {"op": "copy", "from": "/a/b/0", "path": "/g"},
                {"op": "move", "from": "/g", "path": "/h"},
                {"op": "test", "path": "/h", "value": 1},
            ]),
        )
        .unwrap();
        assert_eq!(
            patched,
            json!({"a": {"b": [1, 9, 2, 3]}, "c/d": "y", "h": 1})
        );
    }

    #[test]
    fn test_compares_numbers_by_value() {
        let doc =
            serde_json::from_str::<Value>(r#"{"v": 1.00, "o": {"a": 1, "b": [2.0]}}"#).unwrap();
        let ok = serde_json::from_str::<Value>(
            r#"[{"op": "test", "path": "/v", "value": 1}, {"op": "test", "path": "/o", "value": {"b": [2], "a": 1.0}}]"#,
        )
        .unwrap();
        assert!(apply(&doc, &ok).is_ok());
        let bad = json!([{"op": "test", "path": "/v", "value": 1.01}]);
        assert!(apply(&doc, &bad).is_err());
    }

    #[test]
    fn a_failing_operation_changes_nothing() {
        let doc = json!({"status": "final", "note": [{"text": "a"}]});
        let failing = [
            (
                json!([{"op": "test", "path": "/status", "value": "amended"}]),
                false,
            ),
            (json!([{"op": "remove", "path": "/note/1"}]), false),
            (
                json!([{"op": "replace", "path": "/missing", "value": 1}]),
                false,
            ),
            (
                json!([{"op": "add", "path": "/note/01", "value": {}}]),
                false,
            ),
            (json!([{"op": "remove", "path": ""}]), false),
            (json!([{"op": "jump", "path": "/status"}]), true),
            (json!([{"op": "add", "path": "status", "value": 1}]), true),
            (json!([{"op": "add", "path": "/x"}]), true),
            (
                json!([{"op": "move", "from": "/note", "path": "/note/0"}]),
                true,
            ),
            (json!({"op": "add"}), true),
        ];
        for (patch, malformed) in failing {
            match apply(&doc, &patch) {
                Err(PatchError::Malformed(_)) if malformed => {}
                Err(PatchError::NotApplicable(_)) if !malformed => {}
                other => panic!("{patch}: {other:?}"),
            }
        }
    }
}
