//! A standby keeps its compile cache holding the bundles of every
//! environment's current deployment, so that when it takes over it loads
//! them from the cache instead of compiling them (seconds for a large
//! bundle, a TypeScript one most of all). It reads the store beside the
//! leader (`PostgresBackend::open_read_only`), every few seconds, until this
//! node holds the store's lock. Only each environment's latest deployment
//! is compiled ahead; an older version a waiting run needs compiles when it
//! is first used, as on any server.

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

/// Whether `cluster` still stands by (it is there, and does not hold the
/// store's lock).
fn standing_by(cluster: &Weak<Cluster>) -> bool {
    cluster.upgrade().is_some_and(|c| !c.holds_lock())
}

/// Opens the store for reading, beside the leader.
async fn open(
    url: &str,
    blobs: Option<Arc<kiln_store::BlobStore>>,
) -> Option<Arc<dyn kiln_store::Backend>> {
    let url = url.to_string();
    match tokio::task::spawn_blocking(move || PostgresBackend::open_read_only(&url, blobs)).await {
        Ok(Ok(backend)) => Some(Arc::new(backend)),
        Ok(Err(error)) => {
            tracing::warn!(%error, "a standby could not read the store to compile ahead");
            None
        }
        Err(_) => None,
    }
}

/// Keeps `cache` warm with the store at `url` until `cluster` holds the
/// store's lock (or is gone). A failure is logged and tried again on the
/// next look: compiling ahead only saves time. The sandbox is made for a
/// look that finds something to compile, and dropped after it.
pub(crate) fn spawn(
    url: String,
    blobs: Option<Arc<kiln_store::BlobStore>>,
    cache: PathBuf,
    cluster: Weak<Cluster>,
) {
    tokio::spawn(async move {
        let mut root: Option<Arc<dyn kiln_store::Backend>> = None;
        let mut warm: HashSet<String> = HashSet::new();
        while standing_by(&cluster) {
            if root.is_none() {
                root = open(&url, blobs.clone()).await;
            }
            if let Some(reading) = root.clone() {
                match tokio::task::spawn_blocking(move || current_bundles(&reading)).await {
                    Ok(Ok(bundles)) => compile(&cache, &cluster, bundles, &mut warm).await,
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "a standby could not read the deployments");
                        // Its connection may be gone: open it again.
                        root = None;
                    }
                    Err(_) => return,
                }
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    });
}

/// Compiles into `cache` each of `bundles` not in `warm` yet, while
/// `cluster` stands by.
async fn compile(
    cache: &std::path::Path,
    cluster: &Weak<Cluster>,
    bundles: Vec<(Store, String)>,
    warm: &mut HashSet<String>,
) {
    let mut sandbox = None;
    for (store, hash) in bundles {
        if warm.contains(&hash) {
            continue;
        }
        if !standing_by(cluster) {
            return;
        }
        let read = tokio::task::spawn_blocking({
            let hash = hash.clone();
            move || store.bundle(&hash)
        })
        .await;
        let Ok(Ok(Some(bytes))) = read else { continue };
        if sandbox.is_none() {
            match Sandbox::new(SandboxConfig::new(cache.to_path_buf())) {
                Ok(made) => sandbox = Some(made),
                Err(error) => {
                    tracing::warn!(%error, "a standby could not start a sandbox to compile ahead");
                    return;
                }
            }
        }
        let Some(sandbox) = &sandbox else { return };
        match sandbox.load(&bytes).await {
            Ok(_) => {
                tracing::info!(bundle = %hash, "compiled a deployed bundle ahead of a takeover")
            }
            Err(error) => {
                tracing::warn!(bundle = %hash, %error, "a deployed bundle did not compile")
            }
        }
        warm.insert(hash);
    }
}
