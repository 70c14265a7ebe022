//! Typed records over a backend, and the key layout.
//!
//! | key | value |
//! |---|---|
//! | `deploy/<seq: u64 BE>` | [`Deployment`] (JSON) |
//! | `bundle/<sha256 hex>` | the bundle's bytes |
//! | `run/<run id>` | [`Run`] (JSON) |
//! | `active/<run id>` | empty: the run is not final (read at start-up) |

use crate::backend::{Backend, Commit, Op};
use crate::{Result, StoreError};
use kiln_types::{Deployment, Run, RunId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

const DEPLOY: &[u8] = b"deploy/";
const BUNDLE: &[u8] = b"bundle/";
const RUN: &[u8] = b"run/";
const ACTIVE: &[u8] = b"active/";

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(format!("encoding a record: {e}")))
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Kiln's records, over any [`Backend`].
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// A store over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Store { backend }
    }

    /// Saves a deployment with its bundle. The write is handed to the
    /// committer at once; the returned future resolves when it is durable.
    pub fn put_deployment(&self, deployment: &Deployment, bundle: &[u8]) -> Commit {
        let record = match encode(deployment) {
            Ok(record) => record,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let ops = vec![
            Op::Put(
                key(BUNDLE, deployment.content_hash.as_bytes()),
                bundle.to_vec(),
            ),
            Op::Put(key(DEPLOY, &deployment.sequence.to_be_bytes()), record),
        ];
        self.backend.commit(ops)
    }

    /// Every deployment, oldest first.
    pub fn deployments(&self) -> Result<Vec<Deployment>> {
        self.backend
            .scan_prefix(DEPLOY)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// The newest deployment.
    pub fn latest_deployment(&self) -> Result<Option<Deployment>> {
        self.backend
            .last_with_prefix(DEPLOY)?
            .map(|(k, v)| decode(&k, &v))
            .transpose()
    }

    /// A bundle's bytes by content hash.
    pub fn bundle(&self, content_hash: &str) -> Result<Option<Vec<u8>>> {
        self.backend.get(&key(BUNDLE, content_hash.as_bytes()))
    }

    /// Saves a run, keeping the index of unfinished runs in step. The write
    /// is handed to the committer at once (so dropping the returned future
    /// does not cancel it); the future resolves when it is durable.
    pub fn put_run(&self, run: &Run) -> Commit {
        let record = match encode(run) {
            Ok(record) => record,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let id = run.id.as_str().as_bytes();
        let active = if run.status.is_final() {
            Op::Delete(key(ACTIVE, id))
        } else {
            Op::Put(key(ACTIVE, id), Vec::new())
        };
        self.backend
            .commit(vec![Op::Put(key(RUN, id), record), active])
    }

    /// A run by id.
    pub fn run(&self, id: &RunId) -> Result<Option<Run>> {
        let k = key(RUN, id.as_str().as_bytes());
        self.backend.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// Every run that is not final, in id (creation) order. Reads only the
    /// index of unfinished runs, not every run.
    pub fn active_runs(&self) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        for (k, _) in self.backend.scan_prefix(ACTIVE)? {
            let id = String::from_utf8_lossy(&k[ACTIVE.len()..]).into_owned();
            let run_key = key(RUN, id.as_bytes());
            if let Some(bytes) = self.backend.get(&run_key)? {
                runs.push(decode(&run_key, &bytes)?);
            }
        }
        Ok(runs)
    }
}
