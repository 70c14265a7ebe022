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

/// The longest variable name.
pub const MAX_NAME_LEN: usize = 256;
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

/// Whether `name` may name a variable: 1 to 256 of `A-Z a-z 0-9 _ . -`,
/// not starting with a digit.
pub fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("a variable name is 1 to {MAX_NAME_LEN} characters"));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("`{name}` starts with a digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "`{name}` has `{c}`; a variable name is letters, digits, `_`, `.` and `-`"
        ));
    }
    Ok(())
}

fn context(name: &str) -> Vec<u8> {
    key(ENV_VAR, name.as_bytes())
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
            .open(&context(&stored.name), &sealed)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(EnvVar {
            value: String::from_utf8(plain).map_err(|e| corrupt(e.to_string()))?,
            name: stored.name,
            secret: stored.secret,
            created_at: stored.created_at,
            updated_at: stored.updated_at,
        })
    }

    /// Every variable of this environment, by name.
    pub fn env_vars(&self) -> Result<Vec<EnvVar>> {
        self.backend
            .scan_prefix(ENV_VAR)?
            .iter()
            .map(|(k, v)| self.open_env_var(k, v))
            .collect()
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
    /// turned back into a readable value).
    pub async fn set_env_vars(&self, vars: &[(String, String, bool)]) -> Result<()> {
        let seal = self.seal_key()?;
        let now = Timestamp::now();
        let mut ops = Vec::with_capacity(vars.len());
        for (name, value, secret) in vars {
            let existing = self.env_var(name)?;
            let stored = StoredEnvVar {
                name: name.clone(),
                sealed: hex::encode(seal.seal(&context(name), value.as_bytes())),
                secret: *secret || existing.as_ref().is_some_and(|e| e.secret),
                created_at: existing.map_or(now, |e| e.created_at),
                updated_at: now,
            };
            ops.push(Op::Put(key(ENV_VAR, name.as_bytes()), encode(&stored)?));
        }
        self.backend.commit(ops).await
    }

    /// Deletes a variable; false when there was none.
    pub async fn delete_env_var(&self, name: &str) -> Result<bool> {
        let k = key(ENV_VAR, name.as_bytes());
        if self.backend.get(&k)?.is_none() {
            return Ok(false);
        }
        self.backend.commit(vec![Op::Delete(k)]).await?;
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
