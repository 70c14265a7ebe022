//! Run metadata operations, as Trigger.dev's `metadata.*` calls send them:
//! `set`, `delete`, `append`, `remove`, `increment`, `decrement` and
//! `update` (Kiln also reads `replace`), applied in order to a run's
//! metadata object.
//!
//! A key is a top-level field, or a path into nested objects written as
//! `$.a.b` (Trigger.dev's JSONPath form). Metadata is at most
//! [`MAX_METADATA_BYTES`] of JSON.

use serde::Deserialize;
use serde_json::{Map, Value};

/// The largest metadata object, as JSON text.
pub(crate) const MAX_METADATA_BYTES: usize = 256 * 1024;

/// One operation on a run's metadata.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Operation {
    /// Sets `key` to `value`.
    Set { key: String, value: Value },
    /// Removes `key`.
    Delete { key: String },
    /// Appends `value` to the list at `key` (a missing key becomes a list;
    /// a scalar becomes a list holding it and `value`).
    Append { key: String, value: Value },
    /// Removes every item equal to `value` from the list at `key`.
    Remove { key: String, value: Value },
    /// Adds `value` to the number at `key` (missing counts as 0).
    Increment { key: String, value: f64 },
    /// Subtracts `value` from the number at `key`.
    Decrement { key: String, value: f64 },
    /// Replaces the whole metadata object.
    #[serde(alias = "replace")]
    Update { value: Value },
}

/// Parses a JSON list of operations (or a single operation).
pub(crate) fn parse(json: &str) -> Result<Vec<Operation>, String> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("metadata operations: {e}"))?;
    operations(value)
}

/// Reads operations from a JSON value: a list, or a single operation.
pub(crate) fn operations(value: Value) -> Result<Vec<Operation>, String> {
    let list = match value {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        single => vec![single],
    };
    list.into_iter()
        .enumerate()
        .map(|(i, op)| {
            serde_json::from_value(op).map_err(|e| format!("metadata operation {i}: {e}"))
        })
        .collect()
}

/// Applies `ops` in order to `metadata` (absent means `{}`), returning the
/// new object, or why it cannot be applied. Nothing changes on an error.
pub(crate) fn apply(metadata: Option<&Value>, ops: &[Operation]) -> Result<Value, String> {
    let mut object = match metadata {
        Some(Value::Object(map)) => map.clone(),
        _ => Map::new(),
    };
    for op in ops {
        match op {
            Operation::Set { key, value } => *slot(&mut object, key)? = value.clone(),
            Operation::Delete { key } => delete(&mut object, key)?,
            Operation::Append { key, value } => {
                let slot = slot(&mut object, key)?;
                match slot {
                    Value::Array(items) => items.push(value.clone()),
                    Value::Null => *slot = Value::Array(vec![value.clone()]),
                    other => *other = Value::Array(vec![other.take(), value.clone()]),
                }
            }
            Operation::Remove { key, value } => {
                if let Some(Value::Array(items)) = find_mut(&mut object, key)? {
                    items.retain(|item| item != value);
                }
            }
            Operation::Increment { key, value } => add(&mut object, key, *value)?,
            Operation::Decrement { key, value } => add(&mut object, key, -*value)?,
            Operation::Update { value } => match value {
                Value::Object(map) => object = map.clone(),
                _ => return Err("`update` needs a JSON object".into()),
            },
        }
    }
    let object = Value::Object(object);
    let size = object.to_string().len();
    if size > MAX_METADATA_BYTES {
        return Err(format!(
            "metadata would be {size} bytes; the limit is {MAX_METADATA_BYTES} bytes (256 KiB)"
        ));
    }
    Ok(object)
}

/// The path of a key: `$.a.b` is `[a, b]`, anything else one field.
fn path(key: &str) -> Result<Vec<&str>, String> {
    let parts: Vec<&str> = match key.strip_prefix("$.") {
        Some(rest) => rest.split('.').collect(),
        None => vec![key],
    };
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}` is not a metadata key"));
    }
    Ok(parts)
}

/// The value at `key`, created as `null` (with objects on the way) if
/// missing.
fn slot<'a>(object: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Value, String> {
    let parts = path(key)?;
    let (last, parents) = parts.split_last().ok_or("an empty metadata key")?;
    let mut current = object;
    for part in parents {
        let next = current
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        current = match next {
            Value::Object(map) => map,
            _ => {
                return Err(format!(
                    "`{key}` runs through a value that is not an object"
                ));
            }
        };
    }
    Ok(current.entry(last.to_string()).or_insert(Value::Null))
}

/// An object and a field name in it.
type Place<'a, 'k> = (&'a mut Map<String, Value>, &'k str);

/// The object holding `key`'s last part, if every object on the way exists.
fn parent_mut<'a, 'k>(
    object: &'a mut Map<String, Value>,
    key: &'k str,
) -> Result<Option<Place<'a, 'k>>, String> {
    let parts = path(key)?;
    let (last, parents) = parts.split_last().ok_or("an empty metadata key")?;
    let mut current = object;
    for part in parents {
        match current.get_mut(*part) {
            Some(Value::Object(map)) => current = map,
            _ => return Ok(None),
        }
    }
    Ok(Some((current, last)))
}

/// The value at `key`, if there is one.
fn find_mut<'a>(
    object: &'a mut Map<String, Value>,
    key: &str,
) -> Result<Option<&'a mut Value>, String> {
    Ok(parent_mut(object, key)?.and_then(|(parent, last)| parent.get_mut(last)))
}

fn delete(object: &mut Map<String, Value>, key: &str) -> Result<(), String> {
    if let Some((parent, last)) = parent_mut(object, key)? {
        parent.remove(last);
    }
    Ok(())
}

fn add(object: &mut Map<String, Value>, key: &str, by: f64) -> Result<(), String> {
    let slot = slot(object, key)?;
    let current = match slot {
        Value::Null => 0.0,
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        _ => return Err(format!("`{key}` holds a value that is not a number")),
    };
    let sum = current + by;
    *slot = if sum.fract() == 0.0 && sum.abs() < 9.0e15 {
        Value::from(sum as i64)
    } else {
        serde_json::Number::from_f64(sum)
            .map(Value::Number)
            .ok_or_else(|| format!("`{key}` would not be a finite number"))?
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(start: Value, ops: Value) -> Result<Value, String> {
        apply(Some(&start), &operations(ops)?)
    }

    #[test]
    fn every_operation_does_what_trigger_dev_does() {
        let out = run(
            json!({"n": 1, "list": [1, 2, 1], "gone": true, "scalar": "a"}),
            json!([
                {"type": "set", "key": "status", "value": "ok"},
                {"type": "set", "key": "$.progress.step", "value": 3},
                {"type": "delete", "key": "gone"},
                {"type": "append", "key": "list", "value": 3},
                {"type": "append", "key": "new", "value": "x"},
                {"type": "append", "key": "scalar", "value": "b"},
                {"type": "remove", "key": "list", "value": 1},
                {"type": "increment", "key": "n", "value": 2},
                {"type": "decrement", "key": "$.progress.step", "value": 1},
                {"type": "increment", "key": "half", "value": 0.5},
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({
                "n": 3,
                "list": [2, 3],
                "scalar": ["a", "b"],
                "new": ["x"],
                "status": "ok",
                "progress": {"step": 2},
                "half": 0.5,
            })
        );
        let out = run(
            json!({"a": 1}),
            json!({"type": "remove", "key": "none", "value": 1}),
        )
        .unwrap();
        assert_eq!(out, json!({"a": 1}));
        let out = run(
            json!({"a": 1}),
            json!({"type": "replace", "value": {"b": 2}}),
        )
        .unwrap();
        assert_eq!(out, json!({"b": 2}));
        assert_eq!(
            run(json!({"a": 1}), json!([{"type": "delete", "key": "$.x.y"}])).unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn bad_operations_and_oversized_metadata_are_refused() {
        assert!(
            run(
                json!({"s": "x"}),
                json!({"type": "increment", "key": "s", "value": 1})
            )
            .unwrap_err()
            .contains("not a number")
        );
        assert!(
            parse(r#"[{"type": "explode"}]"#)
                .unwrap_err()
                .contains("operation 0")
        );
        assert!(
            run(json!({}), json!({"type": "update", "value": [1]}))
                .unwrap_err()
                .contains("object")
        );
        let big = "x".repeat(MAX_METADATA_BYTES);
        assert!(
            run(json!({}), json!({"type": "set", "key": "k", "value": big}))
                .unwrap_err()
                .contains("256 KiB")
        );
        assert!(run(json!({}), json!({"type": "set", "key": "$.", "value": 1})).is_err());
    }
}
