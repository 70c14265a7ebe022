//! Server settings.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How a server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data directory (store, compiled artifacts, secret key).
    pub data_dir: PathBuf,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The API key; generated and kept in the data directory when `None`.
    pub secret_key: Option<String>,
    /// How many attempts execute at once.
    pub concurrency: usize,
    /// The environment runs belong to.
    pub environment: String,
    /// Timer waits at most this long keep the instance warm; longer ones
    /// snapshot it and free the slot (Trigger.dev's threshold: 5 s).
    pub warm_wait: std::time::Duration,
    /// The clock schedules fire by: the system clock, or for tests one that
    /// runs faster.
    pub schedule_clock: crate::ScheduleClock,
    /// The URL clients reach this server at, for wait tokens' callback URLs
    /// (`http://<listen address>` when `None`).
    pub public_url: Option<String>,
    /// Hosts tasks may fetch from (`*`, `host`, `host:port`, `*.domain`);
    /// loopback is allowed too in the `dev` environment.
    pub fetch_allow: Vec<String>,
}

impl ServerConfig {
    /// Defaults for a data directory and address.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        ServerConfig {
            data_dir,
            listen,
            secret_key: None,
            concurrency: (cores * 8).clamp(4, 128),
            environment: "dev".into(),
            warm_wait: std::time::Duration::from_secs(5),
            schedule_clock: crate::ScheduleClock::default(),
            public_url: None,
            fetch_allow: Vec::new(),
        }
    }
}
