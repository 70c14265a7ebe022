//! Opening the data directory, recovering, serving.

use crate::api::router;
use crate::cluster::{Cluster, fingerprint};
use crate::config::ServerConfig;
use crate::environments::Hub;
use kiln_sandbox::{Sandbox, SandboxConfig};
use kiln_store::{Backend, BlobStore, Membership, OwnerWait, PostgresBackend, SledBackend};
use std::net::SocketAddr;
use std::sync::Arc;

/// A running Kiln server.
pub struct Server {
    listener: tokio::net::TcpListener,
    /// The server's state; `None` on a cluster's standby node until it
    /// takes over.
    hub: Option<Arc<Hub>>,
    /// This node's part in a cluster, on a PostgreSQL store.
    cluster: Option<Arc<Cluster>>,
    secret_key: String,
    generated_key: bool,
    limits: (u32, u32),
}

/// What a server that leads needs to open its state.
struct Opening {
    config: ServerConfig,
    public_url: String,
    secret_key: String,
}

impl Opening {
    /// Loads the master key, starts the sandbox and opens the state on
    /// `backend`: each environment's deployment loaded, unfinished runs
    /// re-queued. Returns it with the fingerprint of the keys it opened
    /// with.
    /// On a cluster's node, `cluster` checks the keys against the last
    /// leader's before anything starts.
    async fn open(
        self,
        backend: Arc<dyn Backend>,
        cluster: Option<&Cluster>,
    ) -> anyhow::Result<(Arc<Hub>, String)> {
        let config = self.config;
        let sealed_before = kiln_store::Store::new(backend.clone())
            .sealed_before()
            .map_err(|e| anyhow::anyhow!(e))?;
        let seal = crate::master_key::load_or_create(
            &config.data_dir,
            config.master_key.as_deref(),
            sealed_before,
        )?;
        let keys = fingerprint(&self.secret_key, master_key_text(&config).as_deref());
        if let Some(cluster) = cluster {
            // The keys the store is opened with must be the cluster's:
            // checked at join against the leader then, and again now, before
            // any run starts.
            cluster
                .check_keys(&keys)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        let cache =
            (config.compile_cache.clone()).unwrap_or_else(|| config.data_dir.join("compiled"));
        let mut sandbox_config = SandboxConfig::new(cache);
        sandbox_config.release_idle_after = config.release_idle_after;
        let sandbox = Sandbox::new(sandbox_config)?;
        let hub = Hub::open(
            backend,
            Arc::new(seal),
            sandbox,
            config,
            self.public_url,
            self.secret_key,
            cluster.map(Cluster::workers),
        )
        .await?;
        Ok((hub, keys))
    }
}

impl Server {
    /// Opens the store, loads each environment's deployment, re-queues
    /// unfinished runs and binds the listener. On a PostgreSQL store that
    /// another node leads, joins the cluster as a standby instead.
    pub async fn open(config: ServerConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let (secret_key, generated_key) = match config.secret_key.clone() {
            Some(key) => (key, false),
            None => crate::secret::load_or_create(&config.data_dir)?,
        };
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let local = listener.local_addr()?;
        let public_url = match &config.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{local}"),
        };
        let limits = (config.concurrency as u32, config.burst_limit() as u32);
        let opening = Opening {
            config: config.clone(),
            public_url,
            secret_key: secret_key.clone(),
        };
        let (hub, cluster) = match config.store_url.clone() {
            None => {
                if config.blob_store.is_some() {
                    anyhow::bail!("a blob store needs a PostgreSQL store");
                }
                let backend = Arc::new(open_sled(config.data_dir.join("store")).await?);
                (Some(opening.open(backend, None).await?.0), None)
            }
            Some(url) => {
                let (hub, cluster) = join(&config, &url, local, opening).await?;
                (hub, Some(cluster))
            }
        };
        Ok(Server {
            listener,
            hub,
            cluster,
            secret_key,
            generated_key,
            limits,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The API key clients must send.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The environment's base limit (runs of one queue at once) and burst
    /// limit (runs at once in all).
    pub fn concurrency_limits(&self) -> (u32, u32) {
        match &self.hub {
            Some(hub) => hub.default_environment().executor.environment_limits(),
            None => self.limits,
        }
    }

    /// Triggers and awaits runs of the default environment in-process,
    /// without HTTP; usable while [`Server::serve`] runs. `None` on a
    /// cluster's standby node, which runs nothing itself.
    pub fn local_runs(&self) -> Option<crate::LocalRuns> {
        let hub = self.hub.as_ref()?;
        Some(crate::LocalRuns::new(hub.default_environment().clone()))
    }

    /// Whether the key was generated (and stored) by this start.
    pub fn generated_key(&self) -> bool {
        self.generated_key
    }

    /// On a PostgreSQL store: this node's id in the cluster, and the id of
    /// the node that leads it when this one stands by.
    pub fn cluster_role(&self) -> Option<(String, Option<String>)> {
        let cluster = self.cluster.as_ref()?;
        let leader = match cluster.leads() {
            true => None,
            false => Some(cluster.leader().map_or_else(String::new, |l| l.node)),
        };
        Some((cluster.node().to_string(), leader))
    }

    /// Serves until `SIGTERM`, then drains: no run starts any more, the
    /// slices under way get up to `grace` to finish or suspend at a wait,
    /// everything committed is made durable, and the node leaves its
    /// cluster. Returns how many slices were cut short (the next server
    /// replays them); the caller then exits, which lets go of the store (on
    /// PostgreSQL, a standby takes over at once).
    pub async fn serve_until_terminated(self, grace: std::time::Duration) -> anyhow::Result<usize> {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let hub = self.hub.clone();
        let cluster = self.cluster.clone();
        // The API goes on serving while the server drains: triggers are
        // still taken (and queued for the next server), polls answered.
        let drained = async move {
            terminate.recv().await;
            tracing::info!("SIGTERM: draining (a second SIGTERM stops at once)");
            // An operator who will not wait: stopping now is as safe as a
            // crash (nothing acknowledged is lost; running attempts resume
            // from their snapshots and journals).
            // A supervisor that signals both the process and its group
            // sends two at once: a second within a second is that one.
            let first = std::time::Instant::now();
            tokio::spawn(async move {
                loop {
                    terminate.recv().await;
                    if first.elapsed() >= std::time::Duration::from_secs(1) {
                        break;
                    }
                }
                tracing::warn!("a second SIGTERM: stopping at once, without draining");
                std::process::exit(143);
            });
            // A standby that took over meanwhile drains as a leader.
            let hub = hub.or_else(|| cluster.as_ref().and_then(|c| c.hub()));
            let left = match (hub, &cluster) {
                (Some(hub), _) => hub.drain(grace).await,
                // A standby finishes the guests it runs for the leader.
                (None, Some(cluster)) => cluster.guests().drain(grace).await,
                (None, None) => 0,
            };
            if let Some(cluster) = cluster {
                let leaving = cluster.leave();
                if tokio::time::timeout(std::time::Duration::from_secs(5), leaving)
                    .await
                    .is_err()
                {
                    tracing::warn!("leaving the cluster took over 5 s; its row stays");
                }
            }
            left
        };
        tokio::select! {
            served = self.serve() => served.map(|()| 0),
            left = drained => Ok(left),
        }
    }

    /// Serves until the process is stopped.
    pub async fn serve(self) -> anyhow::Result<()> {
        let app = match (&self.cluster, self.hub) {
            (Some(cluster), _) => cluster.router(),
            (None, Some(hub)) => router(hub),
            (None, None) => anyhow::bail!("a server without a store cannot serve"),
        };
        // Answers leave at once rather than wait for the client's delayed
        // acknowledgement of a previous write (Nagle's algorithm): a
        // worker's connection to the leader carries many small frames.
        use axum::serve::ListenerExt;
        let listener = self.listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY was refused");
            }
        });
        axum::serve(listener, app).await?;
        Ok(())
    }
}

/// Joins the cluster on the PostgreSQL database at `url`: leads it if no
/// other node does, or stands by, forwarding requests to the leader and
/// taking over when it is gone.
async fn join(
    config: &ServerConfig,
    url: &str,
    local: SocketAddr,
    opening: Opening,
) -> anyhow::Result<(Option<Arc<Hub>>, Arc<Cluster>)> {
    let node_url = match &config.node_url {
        Some(url) => {
            let parsed =
                reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("--node-url `{url}`: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                anyhow::bail!("--node-url `{url}`: an http:// or https:// URL with a host");
            }
            url.trim_end_matches('/').to_string()
        }
        None if local.ip().is_unspecified() => anyhow::bail!(
            "--node-url: listening on {local}, this node cannot tell the cluster's other \
             nodes where to reach it; set --node-url (KILN_NODE_URL)"
        ),
        None => format!("http://{local}"),
    };
    let node = format!(
        "node-{}",
        crate::secret::random_alphanumeric(8).to_lowercase()
    );
    // The keys this node would open the store with: its API key, and its
    // master key if it has one already (a leader's is checked again once
    // it is loaded).
    let keys = fingerprint(&opening.secret_key, master_key_text(config).as_deref());
    let membership = Membership::join(url, &node, &node_url, &keys)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    // A leader that just stopped may still hold the lock for a moment;
    // with a live leader, stand by at once.
    let wait = match membership.leader().await.map_err(|e| anyhow::anyhow!(e))? {
        Some(_) => OwnerWait::Never,
        None => OwnerWait::Briefly,
    };
    let blobs = match &config.blob_store {
        Some(blob_url) => Some(Arc::new(
            BlobStore::from_url(blob_url).map_err(|e| anyhow::anyhow!(e))?,
        )),
        None => None,
    };
    let capacity = config.burst_limit().min(u32::MAX as usize) as u32;
    let cluster = Cluster::start(
        membership,
        opening.secret_key.clone(),
        keys.clone(),
        capacity,
    );
    let owned = open_postgres(url, wait, blobs.clone()).await?;
    match owned {
        Some(backend) => {
            let hub = take_over(&cluster, backend, opening).await?;
            Ok((Some(hub), cluster))
        }
        None => {
            tracing::info!(node = %node, "another node leads the cluster: standing by");
            cluster.read_leader().await;
            let cache =
                (config.compile_cache.clone()).unwrap_or_else(|| config.data_dir.join("compiled"));
            let mut sandbox = SandboxConfig::new(cache.clone());
            sandbox.release_idle_after = config.release_idle_after;
            crate::cluster::warm::spawn(
                url.to_string(),
                blobs.clone(),
                cache,
                Arc::downgrade(&cluster),
            );
            // Until it takes over, the node runs the guests the leader
            // places on it.
            crate::cluster::worker::spawn(
                Arc::downgrade(&cluster),
                crate::cluster::worker::WorkerConfig {
                    sandbox,
                    capacity,
                    key: opening.secret_key.clone(),
                    guests: cluster.guests(),
                },
            );
            let standby = cluster.clone();
            let url = url.to_string();
            tokio::spawn(async move {
                let taken = match open_postgres(&url, OwnerWait::UntilFree, blobs).await {
                    Ok(Some(backend)) => take_over(&standby, backend, opening).await,
                    Ok(None) => Err(anyhow::anyhow!("the owner lock was not granted")),
                    Err(error) => Err(error),
                };
                match taken {
                    Ok(_) => {
                        tracing::info!(node = %standby.node(), "this node leads the cluster now")
                    }
                    Err(error) => {
                        // A standby that cannot take over stops, so its
                        // supervisor sees it rather than a node that
                        // forwards to nobody.
                        tracing::error!(%error, "taking over the cluster failed; Kiln stops");
                        std::process::exit(1);
                    }
                }
            });
            Ok((None, cluster))
        }
    }
}

/// The master key as configured or kept in the data directory, if there is
/// one yet.
fn master_key_text(config: &ServerConfig) -> Option<String> {
    match &config.master_key {
        Some(key) => Some(key.clone()),
        None => std::fs::read_to_string(config.data_dir.join("master-key")).ok(),
    }
}

/// Opens the PostgreSQL store, waiting for its owner as `wait` says, with
/// its large values in `blobs` if given.
async fn open_postgres(
    url: &str,
    wait: OwnerWait,
    blobs: Option<Arc<BlobStore>>,
) -> anyhow::Result<Option<PostgresBackend>> {
    let url = url.to_string();
    Ok(
        tokio::task::spawn_blocking(move || PostgresBackend::open_with(&url, wait, blobs))
            .await??,
    )
}

/// Opens the state on the store this node now owns and serves the API.
async fn take_over(
    cluster: &Arc<Cluster>,
    backend: PostgresBackend,
    opening: Opening,
) -> anyhow::Result<Arc<Hub>> {
    let session = backend.owner_session();
    tracing::info!("the store is in PostgreSQL");
    cluster.taking_over();
    let (hub, keys) = opening.open(Arc::new(backend), Some(cluster)).await?;
    cluster
        .lead(session, &keys, hub.clone(), router(hub.clone()))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(hub)
}

/// Opens the embedded sled store in `dir`, compacting it first if
/// retention asked for it.
async fn open_sled(dir: std::path::PathBuf) -> anyhow::Result<SledBackend> {
    let (backend, compacted) = tokio::task::spawn_blocking(move || {
        SledBackend::open_compacting(&dir, kiln_store::COMPACT_FROM)
    })
    .await??;
    if let Some(c) = compacted {
        tracing::info!(
            before = c.before,
            after = c.after,
            live = c.live,
            "compacted the store, as retention asked: its file was mostly space that deleted data had left"
        );
    }
    Ok(backend)
}
