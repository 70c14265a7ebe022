//! Run metadata and tags, changed from inside a task.
//!
//! Metadata is a JSON object on the run that backends read with the run
//! (and change with `PUT /api/v1/runs/{id}/metadata`). Each call here is
//! applied by the host and journaled with its result, so a replay after a
//! crash returns the same result and never applies an `increment` twice.
//!
//! ```ignore
//! use kiln_sdk::metadata;
//!
//! metadata::set("status", "exporting")?;
//! metadata::increment("$.progress.rows", 500.0)?;
//! metadata::parent().append("done", "part-3")?;
//! kiln_sdk::metadata::add_tags(&["exported"])?;
//! ```
//!
//! A key is a top-level field or a path like `$.progress.rows`. Metadata is
//! at most 256 KiB of JSON; a change past that is refused.

use crate::TaskError;
use crate::bindings::kiln::task::{host, types::MetadataTarget};
use serde::Serialize;
use serde_json::{Value, json};

/// Whose metadata changes: the current run's, its parent's or its root's.
#[derive(Debug, Clone, Copy)]
pub struct Target(MetadataTarget);

/// The current run's metadata.
pub fn current() -> Target {
    Target(MetadataTarget::Current)
}

/// The metadata of the run that triggered this one (this run's own, for a
/// run no task triggered).
pub fn parent() -> Target {
    Target(MetadataTarget::Parent)
}

/// The metadata of the root of this run's tree (this run's own, for a root).
pub fn root() -> Target {
    Target(MetadataTarget::Root)
}

fn to_json(value: impl Serialize) -> Result<Value, TaskError> {
    serde_json::to_value(value).map_err(|e| {
        TaskError::abort(format!("a metadata value cannot be serialised: {e}"))
            .with_name("MetadataError")
    })
}

impl Target {
    /// Applies raw operations (Trigger.dev's `{type, key, value}` objects)
    /// in order; returns the metadata afterwards.
    pub fn apply(self, operations: &[Value]) -> Result<Value, TaskError> {
        let ops = Value::from(operations.to_vec()).to_string();
        let updated = host::update_metadata(self.0, &ops)
            .map_err(|e| TaskError::from_host("updating metadata", "MetadataError", e))?;
        serde_json::from_str(&updated).map_err(|e| {
            TaskError::new(format!("the host sent metadata that is not JSON: {e}"))
                .with_name("KilnProtocolError")
        })
    }

    /// Sets `key` to `value`.
    pub fn set(self, key: &str, value: impl Serialize) -> Result<Value, TaskError> {
        let value = to_json(value)?;
        self.apply(&[json!({"type": "set", "key": key, "value": value})])
    }

    /// Removes `key`.
    pub fn delete(self, key: &str) -> Result<Value, TaskError> {
        self.apply(&[json!({"type": "delete", "key": key})])
    }

    /// Appends `value` to the list at `key`.
    pub fn append(self, key: &str, value: impl Serialize) -> Result<Value, TaskError> {
        let value = to_json(value)?;
        self.apply(&[json!({"type": "append", "key": key, "value": value})])
    }

    /// Removes every item equal to `value` from the list at `key`.
    pub fn remove(self, key: &str, value: impl Serialize) -> Result<Value, TaskError> {
        let value = to_json(value)?;
        self.apply(&[json!({"type": "remove", "key": key, "value": value})])
    }

    /// Adds `by` to the number at `key` (missing counts as 0).
    pub fn increment(self, key: &str, by: f64) -> Result<Value, TaskError> {
        self.apply(&[json!({"type": "increment", "key": key, "value": by})])
    }

    /// Subtracts `by` from the number at `key`.
    pub fn decrement(self, key: &str, by: f64) -> Result<Value, TaskError> {
        self.apply(&[json!({"type": "decrement", "key": key, "value": by})])
    }

    /// Replaces the whole metadata object.
    pub fn replace(self, value: impl Serialize) -> Result<Value, TaskError> {
        let value = to_json(value)?;
        self.apply(&[json!({"type": "update", "value": value})])
    }
}

/// Sets `key` on the current run. See [`Target::set`].
pub fn set(key: &str, value: impl Serialize) -> Result<Value, TaskError> {
    current().set(key, value)
}

/// Removes `key` from the current run. See [`Target::delete`].
pub fn delete(key: &str) -> Result<Value, TaskError> {
    current().delete(key)
}

/// Appends to a list on the current run. See [`Target::append`].
pub fn append(key: &str, value: impl Serialize) -> Result<Value, TaskError> {
    current().append(key, value)
}

/// Removes from a list on the current run. See [`Target::remove`].
pub fn remove(key: &str, value: impl Serialize) -> Result<Value, TaskError> {
    current().remove(key, value)
}

/// Adds to a number on the current run. See [`Target::increment`].
pub fn increment(key: &str, by: f64) -> Result<Value, TaskError> {
    current().increment(key, by)
}

/// Subtracts from a number on the current run. See [`Target::decrement`].
pub fn decrement(key: &str, by: f64) -> Result<Value, TaskError> {
    current().decrement(key, by)
}

/// Replaces the current run's metadata. See [`Target::replace`].
pub fn replace(value: impl Serialize) -> Result<Value, TaskError> {
    current().replace(value)
}

/// Adds tags to the current run (each at most 128 characters; a run has at
/// most 10).
pub fn add_tags(tags: &[&str]) -> Result<(), TaskError> {
    let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    host::add_tags(&tags).map_err(|e| TaskError::from_host("adding tags", "TagsError", e))
}
