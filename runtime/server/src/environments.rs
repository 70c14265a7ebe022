//! Projects, environments and their keys: one server hosts many.
//!
//! Each environment of each project runs apart from the others: its own
//! store keyspace (a [`PrefixedBackend`] over the shared database, so one
//! group commit serves them all), its own deployments, executor, queues and
//! concurrency limits, schedules and realtime feed. Nothing one environment
//! reads can name another's records, so isolation holds by construction
//! rather than by a filter each route must remember.
//!
//! The server's first environment — the default project's, opened with the
//! key `kiln serve` starts with — keeps its records at the top level of the
//! store, where they were before projects existed. That key is also the
//! administrator's: it alone creates projects and keys.

use crate::api::AppState;
use crate::config::ServerConfig;
use crate::deployments::Deployments;
use crate::executor::{Executor, ExecutorConfig};
use crate::notify::Notifier;
use crate::schedules::Schedules;
use kiln_sandbox::Sandbox;
use kiln_store::{ApiKey, Backend, PrefixedBackend, Project, SealKey, Store};
use kiln_types::Timestamp;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The default project's reference.
pub const DEFAULT_PROJECT: &str = "default";
/// The environments a project has, with their key prefixes.
pub const ENVIRONMENTS: [(&str, &str); 4] = [
    ("dev", "tr_dev_sk_"),
    ("staging", "tr_stg_sk_"),
    ("prod", "tr_prod_sk_"),
    ("preview", "tr_preview_sk_"),
];

/// The id of a project's environment: `<project>/<environment>`. It is the
/// `sub` of the environment's public access tokens.
pub(crate) fn environment_id(project: &str, environment: &str) -> String {
    format!("{project}/{environment}")
}

/// What a bearer key opens.
#[derive(Debug, Clone)]
pub(crate) enum KeyLookup {
    /// The server's own key: the default environment, and administration.
    Admin,
    /// A project's key for one environment.
    Key(ApiKey),
    /// No key of this server.
    Unknown,
}

/// Every environment the server hosts, opened on first use.
pub struct Hub {
    root: Store,
    backend: Arc<dyn Backend>,
    seal: Arc<SealKey>,
    sandbox: Sandbox,
    config: ServerConfig,
    public_url: String,
    admin_key: Arc<str>,
    default: AppState,
    opened: tokio::sync::Mutex<()>,
    /// Set once the server drains ([`Hub::drain`]).
    draining: std::sync::atomic::AtomicBool,
    /// Where finished runs' traces go, when the server exports them.
    traces: Option<crate::traces::Exporter>,
    /// The cluster's nodes that run guests for this one, when it leads.
    workers: Option<Arc<crate::cluster::Workers>>,
    environments: RwLock<HashMap<String, AppState>>,
    keys: RwLock<HashMap<String, ApiKey>>,
}

/// The shared parts an environment is opened with.
struct Parts<'a> {
    backend_store: Store,
    /// The whole store, every environment's keyspace in it.
    root: &'a Arc<dyn Backend>,
    sandbox: &'a Sandbox,
    config: &'a ServerConfig,
    public_url: &'a str,
    project: &'a str,
    environment: &'a str,
    signing: String,
    traces: Option<&'a crate::traces::Exporter>,
    /// Whether the server drains: the environment starts no run.
    draining: bool,
    /// The cluster's nodes that run guests for this one.
    workers: Option<Arc<crate::cluster::Workers>>,
}

impl Hub {
    /// Opens the default environment over `backend`'s top level, then every
    /// environment that has a key (so their unfinished runs recover now).
    pub(crate) async fn open(
        backend: Arc<dyn Backend>,
        seal: Arc<SealKey>,
        sandbox: Sandbox,
        config: ServerConfig,
        public_url: String,
        admin_key: String,
        workers: Option<Arc<crate::cluster::Workers>>,
    ) -> anyhow::Result<Arc<Hub>> {
        let root = Store::new(backend.clone()).sealed(seal.clone());
        root.verify_seal_key().await.map_err(|e| {
            anyhow::anyhow!(
                "{e}: start with that key (KILN_MASTER_KEY, or the master-key file kept with this data directory)"
            )
        })?;
        let traces = config
            .otlp_endpoint
            .as_deref()
            .map(crate::traces::Exporter::start)
            .transpose()?;
        let default = open_environment(Parts {
            backend_store: root.clone(),
            root: &backend,
            sandbox: &sandbox,
            config: &config,
            public_url: &public_url,
            project: DEFAULT_PROJECT,
            environment: &config.environment,
            signing: admin_key.clone(),
            traces: traces.as_ref(),
            draining: false,
            workers: workers.clone(),
        })
        .await?;
        let keys: HashMap<String, ApiKey> = root
            .api_keys()?
            .into_iter()
            .map(|k| (k.key.clone(), k))
            .collect();
        let mut environments = HashMap::new();
        environments.insert(default.env_id.to_string(), default.clone());
        let hub = Arc::new(Hub {
            root,
            backend,
            seal,
            sandbox,
            config,
            public_url,
            admin_key: admin_key.into(),
            default,
            opened: tokio::sync::Mutex::new(()),
            draining: std::sync::atomic::AtomicBool::new(false),
            traces,
            workers,
            environments: RwLock::new(environments),
            keys: RwLock::new(keys),
        });
        let mut wanted: Vec<(String, String)> = hub
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|k| (k.project.clone(), k.environment.clone()))
            .collect();
        wanted.sort();
        wanted.dedup();
        for (project, environment) in wanted {
            hub.environment(&project, &environment).await?;
        }
        Ok(hub)
    }

    /// The default project's environment (the one `kiln serve` starts with).
    pub(crate) fn default_environment(&self) -> &AppState {
        &self.default
    }

    /// The whole store, every environment's keyspace in it.
    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// What `key` opens.
    pub(crate) fn lookup(&self, key: &str) -> KeyLookup {
        if crate::api::constant_time_eq(key.as_bytes(), self.admin_key.as_bytes()) {
            return KeyLookup::Admin;
        }
        match self.keys_read().get(key) {
            Some(found) => KeyLookup::Key(found.clone()),
            None => KeyLookup::Unknown,
        }
    }

    /// An environment that is open already, by id.
    pub(crate) fn opened(&self, env_id: &str) -> Option<AppState> {
        self.environments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(env_id)
            .cloned()
    }

    /// Drains every environment's executor: no run starts any more (nor in
    /// an environment opened from now on), and the slices under way finish
    /// or suspend at a wait, for up to `grace`; then everything committed,
    /// deferred writes included, is made durable. Returns how many slices
    /// were still under way (the next server replays them from their
    /// snapshots and journals).
    pub(crate) async fn drain(&self, grace: std::time::Duration) -> usize {
        let until = std::time::Instant::now() + grace;
        let environments = {
            let _one_at_a_time = self.opened.lock().await;
            self.draining
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let mut all = self.all();
            all.push(self.default.clone());
            all
        };
        for state in &environments {
            state.executor.stop_starting();
        }
        let mut left = 0;
        let mut waited = std::collections::HashSet::new();
        for state in &environments {
            if waited.insert(state.env_id.clone()) {
                left += state.executor.idle(until).await;
            }
        }
        // An empty commit carries the deferred writes with it.
        let durable = async {
            self.backend.commit(Vec::new()).await?;
            self.default.store.settled().await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), durable).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "making the last commits durable failed"),
            Err(_) => tracing::error!("the last commits were not durable within 10 s"),
        }
        left
    }

    /// Whether the server drains (no run starts any more).
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every open environment.
    pub(crate) fn all(&self) -> Vec<AppState> {
        self.environments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The secrets that may have signed a public token of `state`'s
    /// environment: its signing secret and its keys that are not revoked
    /// (the SDK signs tokens itself with keys not shaped `tr_<env>_sk_`).
    pub(crate) fn token_secrets(&self, state: &AppState) -> Vec<String> {
        let mut secrets = vec![state.signing_secret.to_string()];
        secrets.extend(
            self.keys_read()
                .values()
                .filter(|k| {
                    k.revoked_at.is_none()
                        && environment_id(&k.project, &k.environment) == *state.env_id
                })
                .map(|k| k.key.clone()),
        );
        secrets
    }

    /// A project's environment, opened (and recovered) if it is not yet.
    pub(crate) async fn environment(
        &self,
        project: &str,
        environment: &str,
    ) -> anyhow::Result<AppState> {
        let id = environment_id(project, environment);
        if let Some(state) = self.opened(&id) {
            return Ok(state);
        }
        let _one_at_a_time = self.opened.lock().await;
        if let Some(state) = self.opened(&id) {
            return Ok(state);
        }
        let prefix = format!("env/{project}/{environment}/").into_bytes();
        let store = Store::new(Arc::new(PrefixedBackend::new(self.backend.clone(), prefix)))
            .sealed(self.seal.clone());
        let signing = self
            .root
            .environment_secret(project, environment, crate::secret::generate_signing_secret)
            .await?;
        let state = open_environment(Parts {
            backend_store: store,
            root: &self.backend,
            sandbox: &self.sandbox,
            config: &self.config,
            public_url: &self.public_url,
            project,
            environment,
            signing,
            traces: self.traces.as_ref(),
            draining: self.draining(),
            workers: self.workers.clone(),
        })
        .await?;
        self.environments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, state.clone());
        Ok(state)
    }

    /// Every project: the default one first.
    pub(crate) fn projects(&self) -> kiln_store::Result<Vec<Project>> {
        let mut projects = vec![Project {
            reference: DEFAULT_PROJECT.into(),
            name: "Default project".into(),
            created_at: Timestamp(0),
        }];
        projects.extend(self.root.projects()?);
        Ok(projects)
    }

    /// One project.
    pub(crate) fn project(&self, reference: &str) -> kiln_store::Result<Option<Project>> {
        Ok(self
            .projects()?
            .into_iter()
            .find(|p| p.reference == reference))
    }

    /// Creates a project.
    pub(crate) async fn create_project(&self, project: &Project) -> kiln_store::Result<()> {
        self.root.put_project(project).await
    }

    /// Makes a key for a project's environment, and opens the environment.
    pub(crate) async fn create_key(
        &self,
        project: &str,
        environment: &str,
    ) -> anyhow::Result<ApiKey> {
        let prefix = ENVIRONMENTS
            .iter()
            .find(|(name, _)| *name == environment)
            .map(|(_, prefix)| *prefix)
            .ok_or_else(|| anyhow::anyhow!("unknown environment `{environment}`"))?;
        let api_key = ApiKey {
            key: crate::secret::generate_key_with(prefix),
            project: project.into(),
            environment: environment.into(),
            created_at: Timestamp::now(),
            revoked_at: None,
        };
        self.environment(project, environment).await?;
        self.root.put_api_key(&api_key).await?;
        self.keys_write()
            .insert(api_key.key.clone(), api_key.clone());
        Ok(api_key)
    }

    /// Whether the key with id `key_id` ([`crate::secret::key_id`]) has
    /// been revoked (an unknown id counts as revoked).
    pub(crate) fn key_revoked(&self, key_id: &str) -> bool {
        self.keys_read()
            .values()
            .find(|k| crate::secret::key_id(&k.key) == key_id)
            .is_none_or(|k| k.revoked_at.is_some())
    }

    /// A project's keys, revoked ones included.
    pub(crate) fn keys_of(&self, project: &str) -> Vec<ApiKey> {
        let mut keys: Vec<ApiKey> = self
            .keys_read()
            .values()
            .filter(|k| k.project == project)
            .cloned()
            .collect();
        keys.sort_by(|a, b| (a.created_at, &a.key).cmp(&(b.created_at, &b.key)));
        keys
    }

    /// Revokes a key of `project` named by its id; returns it.
    pub(crate) async fn revoke(
        &self,
        project: &str,
        key_id: &str,
    ) -> kiln_store::Result<Option<ApiKey>> {
        let Some(mut found) = self
            .keys_of(project)
            .into_iter()
            .find(|k| crate::secret::key_id(&k.key) == key_id || k.key == key_id)
        else {
            return Ok(None);
        };
        if found.revoked_at.is_none() {
            found.revoked_at = Some(Timestamp::now());
            self.root.put_api_key(&found).await?;
            self.keys_write().insert(found.key.clone(), found.clone());
        }
        Ok(Some(found))
    }

    fn keys_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ApiKey>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn keys_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, ApiKey>> {
        self.keys.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether any environment's keyspace in `root` still keeps the bundle
/// with content hash `hash` (the default environment's at the top level,
/// every other one's under `env/<project>/<environment>/`). A store that
/// cannot be read counts as keeping it.
fn bundle_kept_anywhere(root: &Arc<dyn Backend>, hash: &str) -> bool {
    let store = Store::new(root.clone());
    let Ok(keys) = store.api_keys() else {
        return true;
    };
    let mut prefixes = vec![String::new()];
    prefixes.extend(
        keys.iter()
            .map(|k| format!("env/{}/{}/", k.project, k.environment)),
    );
    prefixes.sort();
    prefixes.dedup();
    prefixes.iter().any(|prefix| {
        root.get(format!("{prefix}bundle/{hash}").as_bytes())
            .map_or(true, |bundle| bundle.is_some())
    })
}

/// Opens one environment over its store: loads its deployment, starts its
/// executor, recovers its unfinished runs and starts its schedules.
async fn open_environment(parts: Parts<'_>) -> anyhow::Result<AppState> {
    let Parts {
        backend_store: store,
        root,
        sandbox,
        config,
        public_url,
        project,
        environment,
        signing,
        traces,
        draining,
        workers,
    } = parts;
    // Realtime subscriptions hear of every run a durable commit wrote,
    // stream readers of every chunk appended, and whoever waits for a run
    // to finish (`?wait=`) of its end.
    let feed = Arc::new(crate::feed::Feed::new());
    let stream_feed = Arc::new(crate::feed::Feed::new());
    let notifier = Arc::new(Notifier::default());
    let (runs, streams, ended) = (feed.clone(), stream_feed.clone(), notifier.clone());
    store.on_runs_changed(Box::new(move |changes| {
        if !changes.runs.is_empty() {
            runs.publish(changes.runs);
        }
        if !changes.streams.is_empty() {
            streams.publish(changes.streams);
        }
        for run in changes.finished {
            ended.finished(run);
        }
    }));
    if let Some(traces) = traces {
        traces.follow(feed.clone(), store.clone(), project, environment);
    }
    // Compiled artifacts are shared by every environment: one is deleted
    // only when no environment keeps a bundle with its content hash.
    let whole = root.clone();
    let deployments = Arc::new(
        Deployments::new(sandbox.clone(), store.clone()).with_shared_artifacts(Arc::new(
            move |hash: &str| bundle_kept_anywhere(&whole, hash),
        )),
    );
    deployments.restore().await?;
    let executor = Executor::start(
        store.clone(),
        deployments.clone(),
        ExecutorConfig {
            concurrency: config.concurrency,
            burst: config.burst_limit(),
            environment: environment.to_string(),
            warm_wait: config.warm_wait,
            public_url: public_url.to_string(),
            secret: signing.clone(),
            fetch: crate::executor::FetchPolicy::new(config.fetch_allow.clone(), environment),
            default_max_duration: config.default_max_duration,
            budgets: config.budgets,
            memory_budget_mib: config.memory_budget_mib,
            workers,
        },
    );
    if draining {
        // Opened while the server drains: it starts nothing, recovered
        // runs included.
        executor.stop_starting();
    }
    let recovered = executor.recover().await?;
    if recovered > 0 {
        tracing::info!(recovered, project, environment, "re-queued unfinished runs");
    }
    // A deploy that stopped before releasing the runs waiting for it.
    if let Some(current) = deployments.current() {
        executor.release_pending(&current).await?;
    }
    let schedules = Schedules::new(
        store.clone(),
        deployments.clone(),
        executor.clone(),
        config.schedule_clock,
    );
    // A deploy that stopped between storing the bundle and syncing its
    // declarative schedules is finished here.
    schedules.sync().await?;
    // Only after recovery: a run fired now must not also be re-queued.
    schedules.start();
    if let Some(retention) = config.retention {
        executor.start_retention(retention);
    }
    // Versions no run uses give back their compiled code, and an idle
    // instance pool the memory its slots kept resident.
    let idle = Arc::downgrade(&deployments);
    let every = (deployments.release_idle_after() / 2).clamp(
        std::time::Duration::from_millis(250),
        std::time::Duration::from_secs(60),
    );
    tokio::spawn(async move {
        let mut every = tokio::time::interval(every);
        loop {
            every.tick().await;
            let Some(deployments) = idle.upgrade() else {
                return;
            };
            let evicted = deployments.evict_unused();
            if evicted > 0 {
                tracing::debug!(evicted, "unloaded versions no run uses");
            }
            match deployments.release_idle().await {
                Ok(0) => {}
                Ok(renewed) => {
                    tracing::debug!(renewed, "loaded versions again in a new instance pool")
                }
                Err(error) => tracing::warn!(%error, "renewing the instance pool failed"),
            }
        }
    });
    Ok(AppState {
        store,
        deployments,
        executor,
        schedules,
        notifier,
        feed,
        stream_feed,
        signing_secret: signing.into(),
        environment: environment.into(),
        env_id: environment_id(project, environment).into(),
        public_url: public_url.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::bundle_kept_anywhere;
    use kiln_store::{ApiKey, Backend, MemoryBackend, Op, Store};
    use kiln_types::Timestamp;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_bundle_is_kept_while_any_environment_keeps_it() {
        let root: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let store = Store::new(root.clone());
        store
            .put_api_key(&ApiKey {
                key: "tr_prod_sk_x".into(),
                project: "shop".into(),
                environment: "prod".into(),
                created_at: Timestamp(1),
                revoked_at: None,
            })
            .await
            .unwrap();
        assert!(!bundle_kept_anywhere(&root, "abc"));
        // Another environment's keyspace keeps it.
        let theirs = b"env/shop/prod/bundle/abc".to_vec();
        root.commit(vec![Op::Put(theirs.clone(), b"wasm".to_vec())])
            .await
            .unwrap();
        assert!(bundle_kept_anywhere(&root, "abc"));
        root.commit(vec![Op::Delete(theirs)]).await.unwrap();
        // The default environment's, at the top level.
        root.commit(vec![Op::Put(b"bundle/abc".to_vec(), b"wasm".to_vec())])
            .await
            .unwrap();
        assert!(bundle_kept_anywhere(&root, "abc"));
    }
}
