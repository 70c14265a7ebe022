//! Environment variables: the values an environment's tasks read at run
//! time (`kiln_sdk::env::var`). Each is sealed with the server's master key
//! before it is stored ([`crate::seal`]), secret or not, so the store's
//! files never hold a value in plain text; a secret is marked so that the
//! API shows it masked and the executor redacts it from what runs leave
//! behind.

use crate::layout::ENV_VAR;
use crate::records::{decode, encode, key};
use crate::{Op, Result, Store, StoreError};
use kiln_types::Timestamp;
use serde::{Deserialize, Serialize};

/// The largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// One variable, opened.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// Its name (`STRIPE_KEY`).
    pub name: String,
    /// Its value.
    pub value: String,
    /// Whether it is a secret: write-only through the API and redacted from
    /// what runs leave behind.
    pub secret: bool,
    /// When it was first set.
    pub created_at: Timestamp,
    /// When it was last set.
    pub updated_at: Timestamp,
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvVar")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// A variable as stored: its value sealed.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredEnvVar {
    name: String,
    /// The sealed value, hex.
    sealed: String,
    secret: bool,
    created_at: Timestamp,
    updated_at: Timestamp,
}

pub use kiln_manifest::check_env_var_name as valid_name;

/// What a variable's value is sealed with: its name and whether it is a
/// secret, so neither can be changed in the store without the value
/// failing to open.
fn context(name: &str, secret: bool) -> Vec<u8> {
    let mut context = key(ENV_VAR, name.as_bytes());
    context.extend_from_slice(if secret { b"\0secret" } else { b"\0plain" });
    context
}

impl Store {
    /// The master key this store seals with.
    pub fn seal_key(&self) -> Result<&crate::seal::SealKey> {
        self.seal.as_deref().ok_or_else(|| {
            StoreError::Backend("this store has no master key to seal values with".into())
        })
    }

    fn open_env_var(&self, k: &[u8], v: &[u8]) -> Result<EnvVar> {
        let stored: StoredEnvVar = decode(k, v)?;
        let corrupt = |reason: String| StoreError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            reason,
        };
        let sealed = hex::decode(&stored.sealed).map_err(|e| corrupt(e.to_string()))?;
        let plain = self
            .seal_key()?
            .open(&context(&stored.name, stored.secret), &sealed)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(EnvVar {
            value: String::from_utf8(plain).map_err(|e| corrupt(e.to_string()))?,
            name: stored.name,
            secret: stored.secret,
            created_at: stored.created_at,
            updated_at: stored.updated_at,
        })
    }

    /// A number that changes whenever a variable is set or deleted through
    /// this store (what caches of the variables compare).
    pub fn env_version(&self) -> u64 {
        self.env_version.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every variable of this environment that opens, by name. One that
    /// does not (stored under another master key, or damaged) is left out
    /// with a warning: nobody can read it, so nothing of it can leak.
    pub fn env_vars(&self) -> Result<Vec<EnvVar>> {
        let mut vars = Vec::new();
        for (k, v) in self.backend.scan_prefix(ENV_VAR)? {
            match self.open_env_var(&k, &v) {
                Ok(var) => vars.push(var),
                Err(StoreError::Corrupt { key, reason }) => {
                    tracing::warn!(%key, %reason, "an environment variable does not open");
                }
                Err(other) => return Err(other),
            }
        }
        Ok(vars)
    }

    /// One variable.
    pub fn env_var(&self, name: &str) -> Result<Option<EnvVar>> {
        let k = key(ENV_VAR, name.as_bytes());
        self.backend
            .get(&k)?
            .map(|v| self.open_env_var(&k, &v))
            .transpose()
    }

    /// Sets variables in one durable commit. A variable that exists keeps
    /// its creation time, and stays secret once it was (a secret is never
    /// turned back into a readable value); its old value need not open.
    pub async fn set_env_vars(&self, vars: &[(String, String, bool)]) -> Result<()> {
        let seal = self.seal_key()?;
        let now = Timestamp::now();
        let mut ops = Vec::with_capacity(vars.len());
        for (name, value, secret) in vars {
            let k = key(ENV_VAR, name.as_bytes());
            let existing: Option<StoredEnvVar> =
                self.backend.get(&k)?.map(|v| decode(&k, &v)).transpose()?;
            let secret = *secret || existing.as_ref().is_some_and(|e| e.secret);
            let sealed = seal
                .seal(&context(name, secret), value.as_bytes())
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            let stored = StoredEnvVar {
                name: name.clone(),
                sealed: hex::encode(sealed),
                secret,
                created_at: existing.map_or(now, |e| e.created_at),
                updated_at: now,
            };
            ops.push(Op::Put(k, encode(&stored)?));
        }
        self.changed_env_vars(ops).await
    }

    /// Commits a change to the variables. The version moves before (the
    /// write is visible to readers as soon as it is applied) and after (a
    /// cache filled meanwhile is stale too).
    async fn changed_env_vars(&self, ops: Vec<Op>) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        self.env_version.fetch_add(1, SeqCst);
        let committed = self.backend.commit(ops).await;
        self.env_version.fetch_add(1, SeqCst);
        committed
    }

    /// Deletes a variable; false when there was none.
    pub async fn delete_env_var(&self, name: &str) -> Result<bool> {
        let k = key(ENV_VAR, name.as_bytes());
        if self.backend.get(&k)?.is_none() {
            return Ok(false);
        }
        self.changed_env_vars(vec![Op::Delete(k)]).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::SealKey;
    use crate::{Backend, MemoryBackend};
    use std::sync::Arc;

    #[tokio::test]
    async fn variables_are_stored_sealed_and_secrets_stay_secret() {
        let backend = Arc::new(MemoryBackend::new());
        let store = Store::new(backend.clone()).sealed(Arc::new(SealKey::from_bytes(&[1; 32])));
        store
            .set_env_vars(&[
                ("STRIPE_KEY".into(), "sk_live_abcdef".into(), true),
                ("GREETING".into(), "hello".into(), false),
            ])
            .await
            .unwrap();
        let raw = backend.scan_prefix(b"").unwrap();
        assert!(
            raw.iter()
                .all(|(_, v)| !v.windows(14).any(|w| w == b"sk_live_abcdef")),
            "no value is stored in plain text"
        );
        let names: Vec<_> = store
            .env_vars()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, vec!["GREETING", "STRIPE_KEY"]);
        // Setting a secret again without the flag keeps it secret.
        store
            .set_env_vars(&[("STRIPE_KEY".into(), "sk_live_rotated".into(), false)])
            .await
            .unwrap();
        let var = store.env_var("STRIPE_KEY").unwrap().unwrap();
        assert_eq!((var.value.as_str(), var.secret), ("sk_live_rotated", true));
        assert!(var.updated_at >= var.created_at);
        // Another master key opens nothing.
        let other = Store::new(backend.clone()).sealed(Arc::new(SealKey::from_bytes(&[2; 32])));
        assert!(other.env_var("STRIPE_KEY").is_err());
        assert!(store.delete_env_var("STRIPE_KEY").await.unwrap());
        assert!(!store.delete_env_var("STRIPE_KEY").await.unwrap());
        assert_eq!(store.env_var("STRIPE_KEY").unwrap(), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("STRIPE_KEY").is_ok());
        assert!(valid_name("a.b-c_1").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name("1ABC").is_err());
        assert!(valid_name("A B").is_err());
        assert!(valid_name("A/B").is_err());
        assert!(valid_name(&"A".repeat(257)).is_err());
    }
}
