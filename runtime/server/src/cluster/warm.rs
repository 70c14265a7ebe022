//! A standby keeps its compile cache holding the bundles of every
//! environment's current deployment, so that when it takes over it loads
//! them from the cache instead of compiling them (seconds for a large
//! bundle, a TypeScript one most of all). It reads the store beside the
//! leader (`PostgresBackend::open_read_only`), every few seconds, until this
//! node leads.

use super::Cluster;
use kiln_sandbox::{Sandbox, SandboxConfig};
use kiln_store::{PostgresBackend, PrefixedBackend, Store};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a standby looks for a new deployment.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The bundles of each environment's current deployment: `(store, content
/// hash)` pairs, the store being the environment's keyspace.
fn current_bundles(
    root: &Arc<dyn kiln_store::Backend>,
) -> kiln_store::Result<Vec<(Store, String)>> {
    let top = Store::new(root.clone());
    let mut prefixes = vec![String::new()];
    prefixes.extend(
        top.api_keys()?
            .iter()
            .map(|k| format!("env/{}/{}/", k.project, k.environment)),
    );
    prefixes.sort();
    prefixes.dedup();
    let mut bundles = Vec::new();
    for prefix in prefixes {
        let store = match prefix.is_empty() {
            true => top.clone(),
            false => Store::new(Arc::new(PrefixedBackend::new(
                root.clone(),
                prefix.into_bytes(),
            ))),
        };
        if let Some(deployment) = store.latest_deployment()? {
            for hash in deployment.content_hashes() {
                bundles.push((store.clone(), hash.to_string()));
            }
        }
    }
    Ok(bundles)
}

/// Keeps `cache` warm with the store at `url` until `cluster` leads (or is
/// gone). A failure is logged and ends the warming: it only saves time.
pub(crate) fn spawn(url: String, cache: PathBuf, cluster: Weak<Cluster>) {
    tokio::spawn(async move {
        let opened =
            tokio::task::spawn_blocking(move || PostgresBackend::open_read_only(&url)).await;
        let root: Arc<dyn kiln_store::Backend> = match opened {
            Ok(Ok(backend)) => Arc::new(backend),
            Ok(Err(error)) => {
                tracing::warn!(%error, "a standby could not read the store to warm its compile cache");
                return;
            }
            Err(_) => return,
        };
        let sandbox = match Sandbox::new(SandboxConfig::new(cache)) {
            Ok(sandbox) => sandbox,
            Err(error) => {
                tracing::warn!(%error, "a standby could not start a sandbox to warm its compile cache");
                return;
            }
        };
        let mut warm: HashSet<String> = HashSet::new();
        loop {
            match cluster.upgrade() {
                Some(cluster) if !cluster.leads() => {}
                _ => return,
            }
            let reading = root.clone();
            let bundles = match tokio::task::spawn_blocking(move || current_bundles(&reading)).await
            {
                Ok(Ok(bundles)) => bundles,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "a standby could not read the deployments");
                    Vec::new()
                }
                Err(_) => return,
            };
            for (store, hash) in bundles {
                if warm.contains(&hash) {
                    continue;
                }
                let read = tokio::task::spawn_blocking({
                    let hash = hash.clone();
                    move || store.bundle(&hash)
                })
                .await;
                let Ok(Ok(Some(bytes))) = read else { continue };
                match sandbox.load(&bytes).await {
                    Ok(_) => {
                        tracing::info!(bundle = %hash, "compiled a deployed bundle ahead of a takeover");
                        warm.insert(hash);
                    }
                    Err(error) => {
                        tracing::warn!(bundle = %hash, %error, "a deployed bundle did not compile");
                        warm.insert(hash);
                    }
                }
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    });
}
