//! Opening the data directory, recovering, serving.

use crate::api::{AppState, router};
use crate::config::ServerConfig;
use crate::deployments::Deployments;
use crate::executor::{Executor, ExecutorConfig};
use crate::notify::Notifier;
use crate::schedules::Schedules;
use kiln_sandbox::{Sandbox, SandboxConfig};
use kiln_store::{SledBackend, Store};
use std::net::SocketAddr;
use std::sync::Arc;

/// A running Kiln server.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: AppState,
    generated_key: bool,
}

impl Server {
    /// Opens the store, loads the current deployment, re-queues unfinished
    /// runs and binds the listener.
    pub async fn open(config: ServerConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let (secret_key, generated_key) = match config.secret_key.clone() {
            Some(key) => (key, false),
            None => crate::secret::load_or_create(&config.data_dir)?,
        };
        let store = Store::new(Arc::new(SledBackend::open(&config.data_dir.join("store"))?));
        // Realtime subscriptions hear of every run a durable commit wrote.
        let feed = Arc::new(crate::feed::Feed::new());
        let publisher = feed.clone();
        store.on_runs_changed(Box::new(move |runs| publisher.publish(runs)));
        let sandbox = Sandbox::new(SandboxConfig::new(config.data_dir.join("compiled")))?;
        let deployments = Arc::new(Deployments::new(sandbox, store.clone()));
        deployments.restore().await?;
        let notifier = Arc::new(Notifier::default());
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let public_url = match &config.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", listener.local_addr()?),
        };
        let executor = Executor::start(
            store.clone(),
            deployments.clone(),
            notifier.clone(),
            ExecutorConfig {
                concurrency: config.concurrency,
                burst: config.burst_limit(),
                environment: config.environment.clone(),
                warm_wait: config.warm_wait,
                public_url: public_url.clone(),
                secret: secret_key.clone(),
                fetch: crate::executor::FetchPolicy::new(
                    config.fetch_allow.clone(),
                    &config.environment,
                ),
            },
        );
        let recovered = executor.recover().await?;
        if recovered > 0 {
            tracing::info!(recovered, "re-queued unfinished runs");
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
        Ok(Server {
            listener,
            state: AppState {
                store,
                deployments,
                executor,
                schedules,
                notifier,
                feed,
                secret_key: secret_key.into(),
                environment: config.environment.into(),
                public_url: public_url.into(),
            },
            generated_key,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The API key clients must send.
    pub fn secret_key(&self) -> &str {
        &self.state.secret_key
    }

    /// The environment's base limit (runs of one queue at once) and burst
    /// limit (runs at once in all).
    pub fn concurrency_limits(&self) -> (u32, u32) {
        self.state.executor.environment_limits()
    }

    /// Whether the key was generated (and stored) by this start.
    pub fn generated_key(&self) -> bool {
        self.generated_key
    }

    /// Serves until the process is stopped.
    pub async fn serve(self) -> anyhow::Result<()> {
        axum::serve(self.listener, router(self.state)).await?;
        Ok(())
    }
}
