//! Resources as the vault accepts them: FHIR R4 JSON (RFC 8259) whose `resourceType`
//! is a type of R4 and matches the URL, whose `id` follows the id datatype, and which
//! keeps the JSON representation's rules: no `null`, no empty string, array or object.

use serde_json::{Map, Value};

use crate::dates::format_instant;
use crate::registry::Registry;
use crate::VaultError;

/// FHIR `id`: 1 to 64 of `A-Z a-z 0-9 - .`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Finds the first place where the JSON representation's rules are broken.
fn check_json(value: &Value, path: &mut String) -> Result<(), String> {
    match value {
        Value::Null => Err(format!(
            "{path} is null; FHIR JSON leaves absent elements out"
        )),
        Value::String(s) if s.is_empty() => Err(format!("{path} is an empty string")),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(format!("{path} is an empty array"));
            }
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                // `[null]` is allowed in primitive extension arrays (`_given`), nowhere else.
                if !(item.is_null() && path.contains("._")) {
                    check_json(item, path)?;
                }
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            if map.is_empty() {
                return Err(format!("{path} is an empty object"));
            }
            for (key, item) in map {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                check_json(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Parses a request body as a resource. `expected` is the type the URL names.
pub fn parse(
    registry: &Registry,
    body: &[u8],
    expected: Option<&str>,
) -> Result<Map<String, Value>, VaultError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| VaultError::Invalid(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(VaultError::Invalid("a resource is a JSON object".into()));
    };
    check(registry, map, expected)
}

/// Checks a resource already parsed as JSON (a Bundle entry's).
pub fn check(
    registry: &Registry,
    map: Map<String, Value>,
    expected: Option<&str>,
) -> Result<Map<String, Value>, VaultError> {
    let ty = map
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| VaultError::Invalid("the resource has no resourceType".into()))?;
    if !registry.is_resource_type(ty) {
        return Err(VaultError::Invalid(format!(
            "'{ty}' is not a FHIR R4 resource type"
        )));
    }
    if let Some(expected) = expected {
        if ty != expected {
            return Err(VaultError::Invalid(format!(
                "the resource is a {ty}, but the URL is for {expected}"
            )));
        }
    }
    if let Some(id) = map.get("id") {
        if !id.as_str().is_some_and(valid_id) {
            return Err(VaultError::Invalid(
                "id must be 1 to 64 of A-Z a-z 0-9 - .".into(),
            ));
        }
    }
    let mut path = ty.to_owned();
    for (key, item) in &map {
        let len = path.len();
        path.push('.');
        path.push_str(key);
        check_json(item, &mut path).map_err(VaultError::Invalid)?;
        path.truncate(len);
    }
    Ok(map)
}

/// Sets the server-owned elements: `id`, `meta.versionId`, `meta.lastUpdated`.
pub fn stamp(resource: &mut Map<String, Value>, id: &str, version: i64, last_updated_ms: i64) {
    resource.insert("id".into(), Value::String(id.to_owned()));
    let meta = resource
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Value::Object(meta) = meta {
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert(
            "lastUpdated".into(),
            Value::String(format_instant(last_updated_ms)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str, expected: Option<&str>) -> Result<Map<String, Value>, VaultError> {
        parse(&Registry::load().unwrap(), text.as_bytes(), expected)
    }

    #[test]
    fn malformed_resources_are_refused_with_the_reason() {
        let table = [
            ("{", "not valid JSON"),
            ("[]", "JSON object"),
            ("{\"id\":\"1\"}", "no resourceType"),
            (
                "{\"resourceType\":\"Patientt\"}",
                "not a FHIR R4 resource type",
            ),
            ("{\"resourceType\":\"Observation\"}", "URL is for Patient"),
            (
                "{\"resourceType\":\"Patient\",\"id\":\"a/b\"}",
                "id must be",
            ),
            (
                "{\"resourceType\":\"Patient\",\"gender\":null}",
                "Patient.gender is null",
            ),
            (
                "{\"resourceType\":\"Patient\",\"name\":[]}",
                "Patient.name is an empty array",
            ),
            (
                "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"\"}]}",
                "Patient.name[0].family is an empty string",
            ),
            ("{\"resourceType\":\"Patient\",\"meta\":{}}", "empty object"),
        ];
        for (text, reason) in table {
            match parse_text(text, Some("Patient")) {
                Err(VaultError::Invalid(message)) => {
                    assert!(message.contains(reason), "{text}: {message}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn good_resources_pass_and_get_stamped() {
        let mut patient = parse_text(
            "{\"resourceType\":\"Patient\",\"id\":\"x\",\"name\":[{\"given\":[\"A\",\"B\"]}],\"_birthDate\":{\"extension\":[{\"url\":\"u\",\"valueString\":\"v\"}]}}",
            Some("Patient"),
        )
        .unwrap();
        stamp(&mut patient, "p-1", 3, 0);
        assert_eq!(patient["id"], "p-1");
        assert_eq!(patient["meta"]["versionId"], "3");
        assert_eq!(patient["meta"]["lastUpdated"], "1970-01-01T00:00:00.000Z");
        assert!(parse_text("{\"resourceType\":\"Patient\",\"name\":[{\"_given\":[null,{\"id\":\"1\"}],\"given\":[\"a\",\"b\"]}]}", None).is_ok());
    }
}
