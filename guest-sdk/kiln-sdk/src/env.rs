//! Environment variables: the values set for the run's project environment
//! with `kiln env set`, the official SDK's `envvars` API or the HTTP API
//! (API keys, database URLs), read at run time rather than compiled into
//! the bundle or passed in payloads.
//!
//! ```ignore
//! use kiln_sdk::env;
//!
//! let key = env::var("STRIPE_KEY")?;
//! let region = env::var_opt("REGION")?.unwrap_or_else(|| "eu".into());
//! ```
//!
//! A read is journaled with its value sealed by the server's master key,
//! never in plain text. A replay (after a crash) answers each read with the
//! value it first returned, so a task sees one value per call however often
//! it is resumed; a rotation is seen by reads made after it, and by every
//! read of a new attempt. Secret values are masked as `<redacted>` from the
//! run's logs, errors, output, metadata, stream chunks and the journaled
//! copies of its fetches. Declare the variables a task needs with
//! `#[task(env = ["STRIPE_KEY"])]` so a deploy to an environment that lacks
//! one warns (or, with `--strict`, refuses).

use crate::TaskError;
use crate::bindings::kiln::task::host;

/// The value of `name`, or an error (`MissingEnvironmentVariable`, not
/// retried) naming the variable when it is not set.
pub fn var(name: &str) -> Result<String, TaskError> {
    var_opt(name)?.ok_or_else(|| {
        TaskError::abort(format!(
            "the environment variable `{name}` is not set in this run's environment"
        ))
        .with_name("MissingEnvironmentVariable")
    })
}

/// The value of `name`, or `None` when it is not set.
pub fn var_opt(name: &str) -> Result<Option<String>, TaskError> {
    host::env_var(name)
        .map_err(|e| TaskError::from_host("reading an environment variable", "EnvError", e))
}
