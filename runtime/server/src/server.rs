//! Opening the data directory, recovering, serving.

use crate::api::router;
use crate::config::ServerConfig;
use crate::environments::Hub;
use kiln_sandbox::{Sandbox, SandboxConfig};
use kiln_store::{PostgresBackend, SledBackend};
use std::net::SocketAddr;
use std::sync::Arc;

/// A running Kiln server.
pub struct Server {
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    generated_key: bool,
}

impl Server {
    /// Opens the store, loads each environment's deployment, re-queues
    /// unfinished runs and binds the listener.
    pub async fn open(config: ServerConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let (secret_key, generated_key) = match config.secret_key.clone() {
            Some(key) => (key, false),
            None => crate::secret::load_or_create(&config.data_dir)?,
        };
        let backend: Arc<dyn kiln_store::Backend> = match config.store_url.clone() {
            Some(url) => {
                let backend =
                    tokio::task::spawn_blocking(move || PostgresBackend::open(&url)).await??;
                tracing::info!("the store is in PostgreSQL");
                Arc::new(backend)
            }
            None => Arc::new(open_sled(config.data_dir.join("store")).await?),
        };
        let sealed_before = kiln_store::Store::new(backend.clone())
            .sealed_before()
            .map_err(|e| anyhow::anyhow!(e))?;
        let seal = crate::master_key::load_or_create(
            &config.data_dir,
            config.master_key.as_deref(),
            sealed_before,
        )?;
        let cache =
            (config.compile_cache.clone()).unwrap_or_else(|| config.data_dir.join("compiled"));
        let mut sandbox_config = SandboxConfig::new(cache);
        sandbox_config.release_idle_after = config.release_idle_after;
        let sandbox = Sandbox::new(sandbox_config)?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let public_url = match &config.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", listener.local_addr()?),
        };
        let hub = Hub::open(
            backend,
            Arc::new(seal),
            sandbox,
            config,
            public_url,
            secret_key,
        )
        .await?;
        Ok(Server {
            listener,
            hub,
            generated_key,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The API key clients must send.
    pub fn secret_key(&self) -> &str {
        self.hub.admin_key()
    }

    /// The environment's base limit (runs of one queue at once) and burst
    /// limit (runs at once in all).
    pub fn concurrency_limits(&self) -> (u32, u32) {
        self.hub.default_environment().executor.environment_limits()
    }

    /// Triggers and awaits runs of the default environment in-process,
    /// without HTTP; usable while [`Server::serve`] runs.
    pub fn local_runs(&self) -> crate::LocalRuns {
        crate::LocalRuns::new(self.hub.default_environment().clone())
    }

    /// Whether the key was generated (and stored) by this start.
    pub fn generated_key(&self) -> bool {
        self.generated_key
    }

    /// Serves until the process is stopped.
    pub async fn serve(self) -> anyhow::Result<()> {
        axum::serve(self.listener, router(self.hub)).await?;
        Ok(())
    }
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
