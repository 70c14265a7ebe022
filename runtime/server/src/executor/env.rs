//! Environment variables in runs: reading them for a task, journaling what
//! was read without its value in plain text, and the redactor that keeps
//! secret values out of what the run leaves behind.
//!
//! A read is journaled with the value sealed by the master key, bound to
//! the run, the attempt and the name. A replay (after a crash) opens it
//! again instead of reading the variable, so the task sees the same value
//! at the same call however often it is resumed: replay stays deterministic
//! and a rotation never turns a crash into a failed run. A rotation is seen
//! by reads made after it, and by every read of a later attempt (whose
//! journal starts empty). This is the value a restored snapshot holds too:
//! a guest at rest keeps what it read in its memory.

use super::Executor;
use super::children::AttemptSink;
use kiln_sandbox::{HostFuture, Redactor};
use kiln_store::envvars::valid_name;
use kiln_types::{HostCall, JournalEntry, JournalRecord, RunId};

/// What a journaled value is sealed with: it opens only as this run's,
/// this attempt's, this variable's.
fn context(run: &RunId, attempt: u32, name: &str) -> Vec<u8> {
    format!("env-var/{run}/{attempt}/{name}").into_bytes()
}

impl AttemptSink {
    /// `env-var(name)` made live.
    pub(crate) fn env_call(&self, name: String) -> HostFuture<Option<(String, bool)>> {
        let store = self.executor.shared.store.clone();
        let writer = self.writer.clone();
        let redactor = self.redactor.clone();
        let context = context(&self.parent, self.attempt, &name);
        Box::pin(async move {
            let read = valid_name(&name).and_then(|()| {
                let var = store.env_var(&name).map_err(|e| e.to_string())?;
                let key = store.seal_key().map_err(|e| e.to_string())?;
                var.map(|var| {
                    let sealed = key
                        .seal(&context, var.value.as_bytes())
                        .map_err(|e| e.to_string())?;
                    Ok((var, hex::encode(sealed)))
                })
                .transpose()
            });
            let call = match &read {
                Ok(Some((var, sealed))) => HostCall::EnvVar {
                    name,
                    sealed: Some(sealed.clone()),
                    secret: var.secret,
                    error: None,
                },
                Ok(None) => HostCall::EnvVar {
                    name,
                    sealed: None,
                    secret: false,
                    error: None,
                },
                Err(error) => HostCall::EnvVar {
                    name,
                    sealed: None,
                    secret: false,
                    error: Some(error.clone()),
                },
            };
            writer.append(JournalEntry::HostCall(call));
            let found = read?;
            Ok(found.map(|(var, _)| {
                if var.secret {
                    // Masked from this attempt's metadata and chunks now
                    // (the host masks it from logs itself).
                    redactor.add(&var.value);
                }
                (var.value, var.secret)
            }))
        })
    }

    /// Opens a value an `env-var` call of this attempt journaled.
    pub(crate) fn open_env(&self, name: &str, sealed: &str) -> Result<String, String> {
        let bytes =
            hex::decode(sealed).map_err(|e| format!("the journaled value is corrupt: {e}"))?;
        let key = self
            .executor
            .shared
            .store
            .seal_key()
            .map_err(|e| e.to_string())?;
        let plain = key
            .open(&context(&self.parent, self.attempt, name), &bytes)
            .map_err(|e| format!("reading `{name}` again for the replay failed: {e}"))?;
        String::from_utf8(plain).map_err(|e| format!("the journaled value is corrupt: {e}"))
    }
}

impl Executor {
    /// A redactor of its own holding the environment's secret values,
    /// from a cache kept until a variable changes (building one opens every
    /// variable and compiles the patterns: about 0.1 ms for 20).
    fn environment_secrets(&self) -> Result<Redactor, String> {
        let store = &self.shared.store;
        // Read before the variables, so a change made meanwhile is seen by
        // the next slice.
        let version = store.env_version();
        let mut cache = self
            .shared
            .secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((cached, redactor)) = cache.as_ref()
            && *cached == version
        {
            return Ok(redactor.fork());
        }
        let current = store
            .env_vars()
            .map_err(|e| format!("reading the environment's secrets failed: {e}"))?;
        let redactor = Redactor::new(current.into_iter().filter(|v| v.secret).map(|v| v.value));
        *cache = Some((version, redactor.fork()));
        Ok(redactor)
    }

    /// The redactor of a slice of `run`'s attempt `attempt`: the
    /// environment's secret values now, and every secret value the attempt
    /// read before (a rotation since may have replaced them, but the guest
    /// may still hold them). Fails when the store cannot be read: a slice
    /// that does not know the secrets to mask does not run.
    pub(crate) fn redactor(
        &self,
        run: &RunId,
        attempt: u32,
        records: &[JournalRecord],
    ) -> Result<Redactor, String> {
        let store = &self.shared.store;
        let redactor = self.environment_secrets()?;
        let Ok(key) = store.seal_key() else {
            return Ok(redactor);
        };
        for record in records {
            if let JournalEntry::HostCall(HostCall::EnvVar {
                name,
                sealed: Some(sealed),
                secret: true,
                ..
            }) = &record.entry
                && let Ok(bytes) = hex::decode(sealed)
                && let Ok(plain) = key.open(&context(run, attempt, name), &bytes)
            {
                redactor.add(&String::from_utf8_lossy(&plain));
            }
        }
        Ok(redactor)
    }
}
