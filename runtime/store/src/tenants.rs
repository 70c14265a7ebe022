//! Projects and their API keys: which project and environment each secret
//! key belongs to, and each environment's signing secret. Kept at the top
//! level of the store, beside the first environment's records.

use crate::layout::{API_KEY, ENV_SECRET, PROJECT};
use crate::records::{decode, encode, key};
use crate::{Op, Result, Store};
use kiln_types::Timestamp;
use serde::{Deserialize, Serialize};

/// A project: tasks, runs and schedules of its own in each environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    /// Its reference (`proj_...`), used in URLs and key listings.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its name.
    pub name: String,
    /// When it was made.
    pub created_at: Timestamp,
}

/// A secret API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// The key (`tr_<env>_sk_...`).
    pub key: String,
    /// The project it belongs to.
    pub project: String,
    /// The environment it belongs to (`dev`, `staging`, `prod`...).
    pub environment: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it was revoked; a revoked key opens nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

impl Store {
    /// Saves a project.
    pub async fn put_project(&self, project: &Project) -> Result<()> {
        let value = encode(project)?;
        self.backend
            .commit(vec![Op::Put(
                key(PROJECT, project.reference.as_bytes()),
                value,
            )])
            .await
    }

    /// Every project, by reference.
    pub fn projects(&self) -> Result<Vec<Project>> {
        self.backend
            .scan_prefix(PROJECT)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// One project.
    pub fn project(&self, reference: &str) -> Result<Option<Project>> {
        let k = key(PROJECT, reference.as_bytes());
        self.backend.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// Saves a key (a new one, or one revoked).
    pub async fn put_api_key(&self, api_key: &ApiKey) -> Result<()> {
        let value = encode(api_key)?;
        self.backend
            .commit(vec![Op::Put(key(API_KEY, api_key.key.as_bytes()), value)])
            .await
    }

    /// Every key, revoked ones included.
    pub fn api_keys(&self) -> Result<Vec<ApiKey>> {
        self.backend
            .scan_prefix(API_KEY)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// An environment's signing secret, made (and stored) with `make` the
    /// first time it is asked for.
    pub async fn environment_secret(
        &self,
        project: &str,
        environment: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String> {
        let k = key(ENV_SECRET, format!("{project}/{environment}").as_bytes());
        if let Some(v) = self.backend.get(&k)? {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
        let secret = make();
        self.backend
            .commit(vec![Op::Put(k, secret.clone().into_bytes())])
            .await?;
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use std::sync::Arc;

    #[tokio::test]
    async fn projects_keys_and_secrets_round_trip() {
        let store = Store::new(Arc::new(MemoryBackend::new()));
        let project = Project {
            reference: "proj_a".into(),
            name: "A".into(),
            created_at: Timestamp(1),
        };
        store.put_project(&project).await.unwrap();
        assert_eq!(store.project("proj_a").unwrap(), Some(project.clone()));
        assert_eq!(store.projects().unwrap(), vec![project]);
        let mut api_key = ApiKey {
            key: "tr_prod_sk_x".into(),
            project: "proj_a".into(),
            environment: "prod".into(),
            created_at: Timestamp(2),
            revoked_at: None,
        };
        store.put_api_key(&api_key).await.unwrap();
        api_key.revoked_at = Some(Timestamp(3));
        store.put_api_key(&api_key).await.unwrap();
        assert_eq!(store.api_keys().unwrap(), vec![api_key]);
        let first = store
            .environment_secret("proj_a", "prod", || "s1".into())
            .await
            .unwrap();
        let again = store
            .environment_secret("proj_a", "prod", || "s2".into())
            .await
            .unwrap();
        assert_eq!((first.as_str(), again.as_str()), ("s1", "s1"));
    }
}
