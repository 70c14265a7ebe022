//! A standby keeps its compile cache holding the bundles of every
//! environment's current deployment, so that when it takes over it loads
//! them from the cache instead of compiling them (seconds for a large
//! bundle, a TypeScript one most of all). It reads the store beside the
//! leader (`PostgresBackend::open_read_only`) when the leader tells it a
//! deployment changed (PostgreSQL's `LISTEN`/`NOTIFY`), and every half
//! minute in any case, until this node holds the store's lock. Only each environment's latest deployment
//! is compiled ahead; an older version a waiting run needs compiles when it
//! is first used, as on any server. Every ten minutes it also deletes from
//! its cache the artifacts of bundles no deployment in the store names any
//! more (the leader's retention collected them), so a standby's cache does
//! not grow for ever.

use super::Cluster;
use kiln_sandbox::{Sandbox, SandboxConfig};
use kiln_store::{PostgresBackend, PrefixedBackend, Store};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a standby looks for a new deployment when it is not told of
/// one.
const LOOK_EVERY: Duration = Duration::from_secs(30);

/// How long a standby waits before it tries again to read the store, after
/// a first failure.
const FIRST_RETRY: Duration = Duration::from_secs(2);

/// The longest a standby waits before it tries again to read the store,
/// after failures.
const MOST_BETWEEN_TRIES: Duration = Duration::from_secs(60);

/// How often a standby prunes its compile cache.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How old an artifact no deployment names must be to be pruned: one
/// being compiled for a deploy not yet committed is younger.
const PRUNE_OLDER_THAN: Duration = Duration::from_secs(600);

/// Each environment's keyspace of the store at `root`.
fn environments(root: &Arc<dyn kiln_store::Backend>) -> kiln_store::Result<Vec<Store>> {
    let top = Store::new(root.clone());
    let mut prefixes = vec![String::new()];
    prefixes.extend(
        top.api_keys()?
            .iter()
            .map(|k| format!("env/{}/{}/", k.project, k.environment)),
    );
    prefixes.sort();
    prefixes.dedup();
    Ok(prefixes
        .into_iter()
        .map(|prefix| match prefix.is_empty() {
            true => top.clone(),
            false => Store::new(Arc::new(PrefixedBackend::new(
                root.clone(),
                prefix.into_bytes(),
            ))),
        })
        .collect())
}

/// The bundles of each environment's current deployment: `(store, content
/// hash)` pairs, the store being the environment's keyspace.
fn current_bundles(
    root: &Arc<dyn kiln_store::Backend>,
) -> kiln_store::Result<Vec<(Store, String)>> {
    let mut bundles = Vec::new();
    for store in environments(root)? {
        if let Some(deployment) = store.latest_deployment()? {
            for hash in deployment.content_hashes() {
                bundles.push((store.clone(), hash.to_string()));
            }
        }
    }
    Ok(bundles)
}

/// The content hashes of every bundle a deployment in the store names
/// and retention has not collected.
fn named_bundles(root: &Arc<dyn kiln_store::Backend>) -> kiln_store::Result<HashSet<String>> {
    let mut named = HashSet::new();
    for store in environments(root)? {
        for deployment in store.deployments()? {
            if !deployment.collected {
                named.extend(deployment.content_hashes().map(str::to_string));
            }
        }
    }
    Ok(named)
}

/// Deletes from `cache` the compiled artifacts (`<content hash>.cwasm`)
/// of bundles not in `named`, older than `older_than`; the hashes it
/// deleted. Anything else in the directory is left alone, so a cache
/// shared with the leader loses only what its retention collected.
fn prune(cache: &std::path::Path, named: &HashSet<String>, older_than: Duration) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut pruned = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(hash) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".cwasm"))
        else {
            continue;
        };
        let is_hash = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age >= older_than);
        if is_hash && old && !named.contains(hash) && std::fs::remove_file(&path).is_ok() {
            pruned.push(hash.to_string());
        }
    }
    pruned
}

/// Whether `cluster` still stands by (it is there, and does not hold the
/// store's lock).
fn standing_by(cluster: &Weak<Cluster>) -> bool {
    cluster.upgrade().is_some_and(|c| !c.holds_lock())
}

/// Opens the store for reading, beside the leader.
/// The store opened for reading, and the count of changed deployments the
/// leader told it of.
type Reading = (
    Arc<dyn kiln_store::Backend>,
    Option<tokio::sync::watch::Receiver<u64>>,
);

async fn open(url: &str, blobs: Option<Arc<kiln_store::BlobStore>>) -> Option<Reading> {
    let url = url.to_string();
    match tokio::task::spawn_blocking(move || PostgresBackend::open_read_only(&url, blobs)).await {
        Ok(Ok(backend)) => {
            let changed = backend.deployments_changed();
            Some((Arc::new(backend), changed))
        }
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
        let mut changed: Option<tokio::sync::watch::Receiver<u64>> = None;
        let mut warm: HashSet<String> = HashSet::new();
        let mut pause = FIRST_RETRY;
        let mut pruned_at = std::time::Instant::now();
        while standing_by(&cluster) {
            if root.is_none()
                && let Some((opened, told)) = open(&url, blobs.clone()).await
            {
                root = Some(opened);
                changed = told;
            }
            let mut failed = root.is_none();
            if let Some(reading) = root.clone() {
                match tokio::task::spawn_blocking(move || current_bundles(&reading)).await {
                    Ok(Ok(bundles)) => compile(&cache, &cluster, bundles, &mut warm).await,
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "a standby could not read the deployments");
                        // Its connection may be gone: open it again.
                        root = None;
                        failed = true;
                    }
                    Err(_) => return,
                }
            }
            if let Some(reading) = root.clone()
                && pruned_at.elapsed() >= PRUNE_EVERY
            {
                pruned_at = std::time::Instant::now();
                let cache = cache.clone();
                let done = tokio::task::spawn_blocking(move || {
                    named_bundles(&reading).map(|named| prune(&cache, &named, PRUNE_OLDER_THAN))
                })
                .await;
                match done {
                    Ok(Ok(pruned)) => {
                        for hash in &pruned {
                            warm.remove(hash);
                            tracing::info!(bundle = %hash, "pruned a collected bundle's compiled artifact");
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "a standby could not read the deployments to prune its cache")
                    }
                    Err(_) => return,
                }
            }
            if failed {
                // Failures back off, up to a minute between tries.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MOST_BETWEEN_TRIES);
                continue;
            }
            pause = FIRST_RETRY;
            // Until the leader says a deployment changed, or a while.
            let told = async {
                match changed.as_mut() {
                    Some(changed) => changed.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                listening = told => {
                    if !listening {
                        // The listening connection is gone: open again.
                        tracing::warn!("a standby stopped hearing of new deployments; it reads the store again");
                        root = None;
                        changed = None;
                    }
                }
                () = tokio::time::sleep(LOOK_EVERY) => {}
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_manifest::Manifest;
    use kiln_types::{Deployment, DeploymentId, Timestamp};

    fn deployment(sequence: u64, hash: &str, collected: bool) -> Deployment {
        Deployment {
            id: DeploymentId::generate(sequence),
            version: format!("20261203.{sequence}"),
            sequence,
            content_hash: hash.to_string(),
            size_bytes: 4,
            more_bundles: Vec::new(),
            manifest: Manifest {
                manifest_version: 1,
                sdk_version: "0.1.0".into(),
                queues: Vec::new(),
                tasks: Vec::new(),
            },
            created_at: Timestamp(sequence),
            retired_at: None,
            collected,
        }
    }

    #[test]
    fn the_cache_loses_only_old_artifacts_of_bundles_no_deployment_names() {
        let root: Arc<dyn kiln_store::Backend> = Arc::new(kiln_store::MemoryBackend::new());
        let store = Store::new(root.clone());
        let named = "a".repeat(64);
        let collected = "b".repeat(64);
        for (n, (hash, gone)) in [(&collected, true), (&named, false)]
            .into_iter()
            .enumerate()
        {
            let stored = store.put_deployment(&deployment(n as u64 + 1, hash, gone), &[b"wasm"]);
            futures_util::FutureExt::now_or_never(stored)
                .expect("a memory commit is at once")
                .expect("the deployment is stored");
        }
        let cache = tempfile::tempdir().expect("a directory");
        for name in [
            format!("{named}.cwasm"),
            format!("{collected}.cwasm"),
            "notes.txt".to_string(),
            format!("{collected}.cwasm.tmp"),
        ] {
            std::fs::write(cache.path().join(name), b"artifact").expect("a file");
        }
        let names = named_bundles(&root).expect("the deployments");
        assert_eq!(names, HashSet::from([named.clone()]));
        // Too young to prune: perhaps compiled for a deploy in flight.
        assert!(prune(cache.path(), &names, Duration::from_secs(600)).is_empty());
        assert_eq!(
            prune(cache.path(), &names, Duration::ZERO),
            vec![collected.clone()]
        );
        let mut left: Vec<String> = std::fs::read_dir(cache.path())
            .expect("the cache")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                format!("{named}.cwasm"),
                format!("{collected}.cwasm.tmp"),
                "notes.txt".to_string()
            ]
        );
    }
}
