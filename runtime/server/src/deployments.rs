//! Deployed bundles: each deploy is a new version; runs stay pinned to the
//! version they were triggered on.

use kiln_sandbox::{BundleError, LoadedBundle, Sandbox};
use kiln_store::{Store, StoreError};
use kiln_types::{Deployment, DeploymentId, Timestamp};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// A deployment with its loaded bundle and payload validators.
pub struct Deployed {
    /// The stored record.
    pub record: Deployment,
    /// The compiled, pre-linked bundles, in the order of the record's
    /// content hashes: most deployments have one.
    bundles: Vec<LoadedBundle>,
    /// Which bundle defines each task (an index into `bundles`).
    by_task: HashMap<String, usize>,
    validators: HashMap<String, Arc<jsonschema::Validator>>,
}

impl Deployed {
    fn new(record: Deployment, bundles: Vec<LoadedBundle>) -> Result<Self, DeployError> {
        let mut validators = HashMap::new();
        let mut by_task = HashMap::new();
        for (index, bundle) in bundles.iter().enumerate() {
            for task in &bundle.manifest().tasks {
                by_task.entry(task.id.clone()).or_insert(index);
            }
        }
        for task in &record.manifest.tasks {
            if let Some(cron) = &task.cron {
                kiln_cron::CronSchedule::parse(
                    &cron.pattern,
                    cron.timezone.as_deref().unwrap_or("UTC"),
                )
                .map_err(|e| {
                    DeployError::Bundle(BundleError::Manifest(format!(
                        "task `{}` declares a schedule Kiln cannot use: {e}",
                        task.id
                    )))
                })?;
            }
            if let Some(schema) = &task.payload_schema {
                let validator = jsonschema::options()
                    .should_validate_formats(true)
                    .build(schema)
                    .map_err(|e| {
                        DeployError::Bundle(BundleError::Manifest(format!(
                            "task `{}` has an invalid payload schema: {e}",
                            task.id
                        )))
                    })?;
                validators.insert(task.id.clone(), Arc::new(validator));
            }
        }
        if bundles.is_empty() {
            return Err(DeployError::Refused("a deployment needs a bundle".into()));
        }
        Ok(Deployed {
            record,
            bundles,
            by_task,
            validators,
        })
    }

    /// The bundle that defines `task` (the first bundle for a task none
    /// defines, which then fails to start as it always did).
    pub fn bundle_for(&self, task: &str) -> &LoadedBundle {
        let index = self.by_task.get(task).copied().unwrap_or(0);
        &self.bundles[index.min(self.bundles.len() - 1)]
    }

    /// Whether every bundle is loaded in the sandbox's newest generation.
    fn is_newest(&self) -> bool {
        self.bundles.iter().all(LoadedBundle::is_newest)
    }

    /// Checks a payload against the task's schema, if it has one. The error
    /// names every failing field by its JSON pointer.
    pub fn validate_payload(&self, task: &str, payload: &serde_json::Value) -> Result<(), String> {
        let Some(validator) = self.validators.get(task) else {
            return Ok(());
        };
        let problems: Vec<String> = validator
            .iter_errors(payload)
            .take(10)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    format!("payload: {e}")
                } else {
                    format!("payload{path}: {e}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "The payload does not match the schema of task `{task}`: {}",
                problems.join("; ")
            ))
        }
    }
}

/// The manifest of a deployment of `bundles`: the first's, with the
/// others' tasks and queues added. A task id in two bundles, the same
/// bundle twice, or queues that disagree are refused.
fn merged(bundles: &[LoadedBundle]) -> Result<kiln_manifest::Manifest, DeployError> {
    let refuse = |why: String| Err(DeployError::Bundle(BundleError::Manifest(why)));
    let Some(first) = bundles.first() else {
        return refuse("a deployment needs a bundle".into());
    };
    let mut manifest = first.manifest().clone();
    for (index, bundle) in bundles.iter().enumerate().skip(1) {
        if bundles[..index]
            .iter()
            .any(|b| b.content_hash() == bundle.content_hash())
        {
            return refuse(format!("bundle {} is deployed twice", index + 1));
        }
        for task in &bundle.manifest().tasks {
            if manifest.tasks.iter().any(|t| t.id == task.id) {
                return refuse(format!(
                    "the task `{}` is in two of the bundles; a task id names one task of a deployment",
                    task.id
                ));
            }
            manifest.tasks.push(task.clone());
        }
        for queue in &bundle.manifest().queues {
            if !manifest.queues.contains(queue) {
                manifest.queues.push(queue.clone());
            }
        }
    }
    if bundles.len() > 1 {
        manifest
            .validate()
            .map_err(|e| DeployError::Bundle(BundleError::Manifest(e.to_string())))?;
    }
    Ok(manifest)
}

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The bundle was refused.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bundle is sound but the environment cannot run it (a strict
    /// deploy that lacks a variable its tasks need).
    #[error("{0}")]
    Refused(String),
    /// The version was retired by retention: it takes no new runs.
    #[error(
        "version `{0}` was retired: a newer version has been current for longer than the server's retention and no unfinished run was on it"
    )]
    Retired(String),
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<DeploymentId, Arc<Deployed>>,
    /// Loaded deployments the registry let go of while something still
    /// held them (an older sandbox generation's, replaced by
    /// [`Deployments::release_idle`]): whether a version is held is asked of
    /// these too.
    former: HashMap<DeploymentId, Vec<std::sync::Weak<Deployed>>>,
    current: Option<Arc<Deployed>>,
}

impl Registry {
    /// Whether anything outside the registry holds a loaded copy of `id`:
    /// a trigger between finding the version and storing its run, or a
    /// slice of a run executing on it.
    fn held(&mut self, id: &DeploymentId) -> bool {
        if let Some(former) = self.former.get_mut(id) {
            former.retain(|weak| weak.strong_count() > 0);
            if former.is_empty() {
                self.former.remove(id);
            } else {
                return true;
            }
        }
        self.by_id
            .get(id)
            .is_some_and(|loaded| Arc::strong_count(loaded) > 1)
    }

    /// Replaces (or removes, with `None`) the loaded copy of `id`,
    /// remembering the old one if something still holds it.
    fn replace(&mut self, id: &DeploymentId, with: Option<Arc<Deployed>>) {
        let old = match with {
            Some(new) => self.by_id.insert(id.clone(), new),
            None => self.by_id.remove(id),
        };
        if let Some(old) = old
            && Arc::strong_count(&old) > 1
        {
            let former = self.former.entry(id.clone()).or_default();
            former.retain(|weak| weak.strong_count() > 0);
            former.push(Arc::downgrade(&old));
        }
    }

    /// Forgets the former copies nothing holds any more.
    fn prune(&mut self) {
        self.former.retain(|_, former| {
            former.retain(|weak| weak.strong_count() > 0);
            !former.is_empty()
        });
    }
}

/// Every deployment this server knows, loaded on demand.
pub struct Deployments {
    sandbox: Sandbox,
    store: Store,
    registry: RwLock<Registry>,
    deploying: tokio::sync::Mutex<()>,
    /// Held while a version that is not loaded is loaded.
    loading: tokio::sync::Mutex<()>,
    /// Whether another environment keeps a bundle with this content hash
    /// (its compiled artifact is shared and must stay).
    shared_artifacts: Option<SharedArtifacts>,
}

/// Asks whether any environment keeps a bundle with a content hash.
pub type SharedArtifacts = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl Deployments {
    /// The registry over a store; call [`Deployments::restore`] at start-up.
    pub fn new(sandbox: Sandbox, store: Store) -> Self {
        Deployments {
            sandbox,
            store,
            registry: RwLock::default(),
            deploying: tokio::sync::Mutex::new(()),
            loading: tokio::sync::Mutex::new(()),
            shared_artifacts: None,
        }
    }

    /// Deletes a collected bundle's compiled artifact only when `check`
    /// says no environment keeps that bundle (the artifacts directory is
    /// the whole server's).
    pub fn with_shared_artifacts(mut self, check: SharedArtifacts) -> Self {
        self.shared_artifacts = Some(check);
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the latest deployment (from the compiled-artifact cache when it
    /// is there) so the first trigger after a restart is fast.
    pub async fn restore(&self) -> Result<(), DeployError> {
        if let Some(latest) = self.store.latest_deployment()? {
            let deployed = self.load_record(latest).await?;
            self.write().current = Some(deployed);
        }
        Ok(())
    }

    /// The deployment of `version`, if there is one.
    pub async fn by_version(&self, version: &str) -> Result<Option<Arc<Deployed>>, DeployError> {
        let found = self.list()?.into_iter().find(|d| d.version == version);
        match found {
            Some(record) if record.retired_at.is_some() => {
                Err(DeployError::Retired(record.version))
            }
            Some(record) => {
                let deployed = self.get(&record.id).await?;
                // Retention may have retired it while it loaded. Read again
                // while holding it: a version held before it was retired is
                // not collected while held, and one retired first is
                // refused here.
                let retired = self
                    .list()?
                    .into_iter()
                    .any(|d| d.id == record.id && d.retired_at.is_some());
                if retired {
                    return Err(DeployError::Retired(record.version));
                }
                Ok(deployed)
            }
            None => Ok(None),
        }
    }

    /// The current (latest) deployment.
    pub fn current(&self) -> Option<Arc<Deployed>> {
        self.read().current.clone()
    }

    /// A deployment by id, loading its bundle if needed.
    pub async fn get(&self, id: &DeploymentId) -> Result<Option<Arc<Deployed>>, DeployError> {
        if let Some(d) = self.read().by_id.get(id) {
            return Ok(Some(d.clone()));
        }
        // One load at a time: runs of an unloaded version that wake
        // together wait for the first load instead of each making its own.
        let _loading = self.loading.lock().await;
        if let Some(d) = self.read().by_id.get(id) {
            return Ok(Some(d.clone()));
        }
        let Some(record) = self.store.deployments()?.into_iter().find(|d| &d.id == id) else {
            return Ok(None);
        };
        if record.collected {
            return Err(DeployError::Retired(record.version));
        }
        Ok(Some(self.load_record(record).await?))
    }

    async fn load_record(&self, record: Deployment) -> Result<Arc<Deployed>, DeployError> {
        let mut bundles = Vec::new();
        for hash in record.content_hashes() {
            let bytes = self
                .store
                .bundle(hash)?
                .ok_or_else(|| StoreError::Corrupt {
                    key: format!("bundle/{hash}"),
                    reason: "the bundle of a deployment is missing".into(),
                })?;
            bundles.push(self.sandbox.load(&bytes).await?);
        }
        let deployed = Arc::new(Deployed::new(record, bundles)?);
        self.write()
            .replace(&deployed.record.id, Some(deployed.clone()));
        Ok(deployed)
    }

    /// Validates, compiles and stores one or more bundles as the new
    /// current version, once `check` accepts the manifest (a refusal is
    /// [`DeployError::Refused`], and nothing is stored). Several bundles
    /// (a Rust one and a TypeScript one, say) make one version whose tasks
    /// are all of theirs: each task runs in the bundle that defines it, and
    /// a task of one may trigger and wait on a task of another. A task id
    /// in two of them is refused.
    pub async fn deploy(
        &self,
        all: &[&[u8]],
        check: impl FnOnce(&kiln_manifest::Manifest) -> Result<(), String>,
    ) -> Result<Arc<Deployed>, DeployError> {
        let mut bundles = Vec::with_capacity(all.len());
        for bytes in all {
            kiln_sandbox::Sandbox::check_snapshot_safety(bytes)?;
            bundles.push(self.sandbox.load(bytes).await?);
        }
        let manifest = merged(&bundles)?;
        check(&manifest).map_err(DeployError::Refused)?;
        let _one_at_a_time = self.deploying.lock().await;
        let previous = self.store.deployments()?;
        let now = Timestamp::now();
        let date = now.date_stamp();
        let same_day = previous
            .iter()
            .filter(|d| d.version.split('.').next() == Some(date.as_str()))
            .count();
        let record = Deployment {
            id: DeploymentId::generate(now.as_millis()),
            version: format!("{date}.{}", same_day + 1),
            sequence: previous.last().map(|d| d.sequence + 1).unwrap_or(1),
            content_hash: bundles[0].content_hash().to_string(),
            size_bytes: all.iter().map(|b| b.len() as u64).sum(),
            more_bundles: bundles[1..]
                .iter()
                .map(|b| b.content_hash().to_string())
                .collect(),
            manifest,
            created_at: now,
            retired_at: None,
            collected: false,
        };
        let deployed = Arc::new(Deployed::new(record, bundles)?);
        self.store.put_deployment(&deployed.record, all).await?;
        let mut registry = self.write();
        registry
            .by_id
            .insert(deployed.record.id.clone(), deployed.clone());
        registry.current = Some(deployed.clone());
        Ok(deployed)
    }

    /// Every deployment, oldest first.
    pub fn list(&self) -> Result<Vec<Deployment>, StoreError> {
        self.store.deployments()
    }

    /// Forgets the loaded bundles of versions that are not current and that
    /// nothing uses now (no slice of a run holds them): their compiled code
    /// and instance pool go. A later run of such a version loads it again
    /// from its cached artifact. Returns how many were dropped.
    pub fn evict_unused(&self) -> usize {
        let mut registry = self.write();
        registry.prune();
        let current = registry.current.as_ref().map(|d| d.record.id.clone());
        let before = registry.by_id.len();
        registry
            .by_id
            .retain(|id, deployed| Some(id) == current.as_ref() || Arc::strong_count(deployed) > 1);
        before - registry.by_id.len()
    }

    /// The retired versions nothing holds now: those a retention pass may
    /// collect if the runs that have not finished show none on them. Taken
    /// before the pass reads those runs: a trigger that found a version
    /// before it was retired holds it until its run is stored, and a run
    /// stored before then is one the pass reads.
    pub fn collectable(&self) -> Result<Vec<DeploymentId>, StoreError> {
        let records = self.store.deployments()?;
        let mut registry = self.write();
        Ok(records
            .into_iter()
            .filter(|d| d.retired_at.is_some() && !d.collected)
            .filter(|d| !registry.held(&d.id))
            .map(|d| d.id)
            .collect())
    }

    /// Retention's part for versions, after a pass read the runs that have
    /// not finished and found them on `in_use`: collects the `collectable`
    /// versions no unfinished run is on (their bundles and compiled
    /// artifacts are deleted, unless a version kept has the same bundle),
    /// then retires the versions that a newer one replaced before `cutoff`
    /// and that no unfinished run is on. The current version is never
    /// retired. Returns how many versions were retired or collected.
    pub async fn sweep(
        &self,
        collectable: &[DeploymentId],
        in_use: &BTreeSet<DeploymentId>,
        cutoff: Timestamp,
    ) -> Result<usize, StoreError> {
        let _one_at_a_time = self.deploying.lock().await;
        let all = self.store.deployments()?;
        let now = Timestamp::now();
        let mut changed = Vec::new();
        for (i, record) in all.iter().enumerate() {
            let mut record = record.clone();
            if in_use.contains(&record.id) || record.collected {
                continue;
            }
            if record.retired_at.is_some() {
                if collectable.contains(&record.id) {
                    record.collected = true;
                    changed.push(record);
                }
                continue;
            }
            // A version replaced by a newer one before the cutoff.
            if all.get(i + 1).is_some_and(|next| next.created_at < cutoff) {
                record.retired_at = Some(now);
                changed.push(record);
            }
        }
        if changed.is_empty() {
            return Ok(0);
        }
        let collected: BTreeSet<&str> = changed
            .iter()
            .filter(|d| d.collected)
            .flat_map(|d| d.content_hashes())
            .collect();
        let kept: BTreeSet<&str> = all
            .iter()
            .filter(|d| !d.collected && !changed.iter().any(|c| c.collected && c.id == d.id))
            .flat_map(|d| d.content_hashes())
            .collect();
        let bundles: Vec<String> = collected
            .difference(&kept)
            .map(|hash| hash.to_string())
            .collect();
        self.store.update_deployments(&changed, &bundles).await?;
        {
            let mut registry = self.write();
            for record in changed.iter().filter(|d| d.collected) {
                registry.replace(&record.id, None);
            }
        }
        for hash in &bundles {
            if self
                .shared_artifacts
                .as_ref()
                .is_some_and(|kept| kept(hash))
            {
                continue;
            }
            if let Err(error) = self.sandbox.forget_artifact(hash) {
                tracing::warn!(%error, hash, "could not delete a collected version's compiled artifact");
            }
        }
        Ok(changed.len())
    }

    /// How long an idle sandbox waits before it renews its instance pool.
    pub fn release_idle_after(&self) -> std::time::Duration {
        self.sandbox.release_idle_after()
    }

    /// Gives back the memory an idle instance pool keeps resident: renews
    /// the sandbox if no guest has run for a while (see
    /// `Sandbox::renew_if_idle`), then loads the current version again in
    /// the new pool and forgets the other versions loaded in the old one
    /// (they load again when a run asks for them). The old pool goes once
    /// nothing else holds its bundles. Returns how many versions were
    /// loaded again or forgotten.
    pub async fn release_idle(&self) -> Result<usize, DeployError> {
        self.sandbox.renew_if_idle();
        let stale: Vec<DeploymentId> = self
            .read()
            .by_id
            .iter()
            .filter(|(_, d)| !d.is_newest())
            .map(|(id, _)| id.clone())
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        let _loading = self.loading.lock().await;
        let mut renewed = 0;
        for id in &stale {
            let current = self
                .current()
                .filter(|current| &current.record.id == id && !current.is_newest());
            if let Some(current) = current {
                // Loading replaces the registry's copy; the old one is
                // remembered while something holds it.
                let fresh = self.load_record(current.record.clone()).await?;
                let mut registry = self.write();
                // A deploy meanwhile made another version current: it stays.
                if registry
                    .current
                    .as_ref()
                    .is_some_and(|now| Arc::ptr_eq(now, &current))
                {
                    registry.current = Some(fresh);
                }
                renewed += 1;
            } else {
                // Another version is forgotten only once nothing holds it;
                // a run of it loads it again in the new generation.
                let mut registry = self.write();
                let unheld = registry
                    .by_id
                    .get(id)
                    .is_some_and(|d| !d.is_newest() && Arc::strong_count(d) == 1);
                let is_current = registry
                    .current
                    .as_ref()
                    .is_some_and(|c| &c.record.id == id);
                if unheld && !is_current {
                    registry.replace(id, None);
                    renewed += 1;
                }
            }
        }
        Ok(renewed)
    }

    /// How many versions are loaded now.
    #[cfg(test)]
    fn loaded(&self) -> usize {
        self.read().by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Deployments;
    use kiln_sandbox::{Sandbox, SandboxConfig};
    use kiln_store::{MemoryBackend, Store};
    use std::sync::Arc;

    #[tokio::test]
    async fn versions_nothing_uses_are_evicted_and_load_again_when_asked_for() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let sandbox =
            Sandbox::new(SandboxConfig::new(dir.path().join("compiled"))).expect("a sandbox");
        let deployments = Deployments::new(sandbox, Store::new(Arc::new(MemoryBackend::new())));
        let bundle = kiln_fixtures::read(kiln_fixtures::HELLO_WORLD);
        let first = deployments
            .deploy(&[&bundle[..]], |_| Ok(()))
            .await
            .expect("deploys");
        let second = deployments
            .deploy(&[&bundle[..]], |_| Ok(()))
            .await
            .expect("deploys");
        let old = first.record.id.clone();
        assert_eq!(deployments.loaded(), 2);
        // A run of the old version holds it: it stays.
        assert_eq!(deployments.evict_unused(), 0);
        drop(first);
        drop(second);
        // Nothing holds it now; the current version always stays.
        assert_eq!(deployments.evict_unused(), 1);
        assert_eq!(deployments.loaded(), 1);
        let again = deployments
            .get(&old)
            .await
            .expect("loads")
            .expect("is stored");
        assert_eq!(again.record.id, old);
        assert_eq!(deployments.loaded(), 2);
    }

    #[tokio::test]
    async fn retention_retires_then_collects_versions_no_unfinished_run_is_on() {
        use super::DeployError;
        use kiln_types::{DeploymentId, Timestamp};
        use std::collections::BTreeSet;
        let dir = tempfile::tempdir().expect("a temp dir");
        let compiled = dir.path().join("compiled");
        let sandbox = Sandbox::new(SandboxConfig::new(compiled.clone())).expect("a sandbox");
        let store = Store::new(Arc::new(MemoryBackend::new()));
        let deployments = Deployments::new(sandbox, store.clone());
        let hello = kiln_fixtures::read(kiln_fixtures::HELLO_WORLD);
        let probe = kiln_fixtures::read(kiln_fixtures::PROBE);
        let mut records = Vec::new();
        for bundle in [&hello, &probe, &hello] {
            let deployed = deployments
                .deploy(&[&bundle[..]], |_| Ok(()))
                .await
                .expect("deploys");
            records.push(deployed.record.clone());
        }
        let [a, b, c] = <[_; 3]>::try_from(records).expect("three versions");
        let artifact = |hash: &str| compiled.join(format!("{hash}.cwasm"));
        assert!(artifact(&b.content_hash).exists());
        let none = BTreeSet::<DeploymentId>::new();

        // Replaced after a cutoff in the past: nothing is retired.
        assert_eq!(
            deployments.sweep(&[], &none, Timestamp(1)).await.unwrap(),
            0
        );
        // Replaced before the cutoff: the two old versions are retired, the
        // current one never; a retired version takes no new runs.
        let later = Timestamp(Timestamp::now().as_millis() + 60_000);
        assert_eq!(deployments.sweep(&[], &none, later).await.unwrap(), 2);
        assert!(matches!(
            deployments.by_version(&b.version).await,
            Err(DeployError::Retired(_))
        ));
        assert!(deployments.by_version(&c.version).await.unwrap().is_some());

        // A loaded retired version something holds is not collectable.
        let held = deployments.get(&b.id).await.unwrap().unwrap();
        assert_eq!(deployments.collectable().unwrap(), vec![a.id.clone()]);
        drop(held);
        let collectable = deployments.collectable().unwrap();
        assert_eq!(collectable, vec![a.id.clone(), b.id.clone()]);

        // An unfinished run on `b` keeps it; `a` is collected, but its
        // bundle is the current version's too and stays.
        let on_b = BTreeSet::from([b.id.clone()]);
        assert_eq!(
            deployments.sweep(&collectable, &on_b, later).await.unwrap(),
            1
        );
        assert!(store.bundle(&a.content_hash).unwrap().is_some());
        assert!(artifact(&a.content_hash).exists());
        assert!(store.bundle(&b.content_hash).unwrap().is_some());
        assert!(matches!(
            deployments.get(&a.id).await,
            Err(DeployError::Retired(_))
        ));

        // Once no run is on `b`, its bundle and artifact go.
        assert_eq!(
            deployments.sweep(&collectable, &none, later).await.unwrap(),
            1
        );
        assert!(store.bundle(&b.content_hash).unwrap().is_none());
        assert!(!artifact(&b.content_hash).exists());
        let listed = deployments.list().unwrap();
        assert!(listed[0].collected && listed[1].collected && !listed[2].collected);
        assert!(listed[2].retired_at.is_none());
        // The current version still runs.
        assert!(deployments.get(&c.id).await.unwrap().is_some());
    }
}
