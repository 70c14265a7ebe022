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
    /// The environment's base concurrency: how many runs of one queue
    /// execute at once at most (declared limits above it are cut to it).
    pub concurrency: usize,
    /// How far all queues together may go above the base: at most
    /// `concurrency × burst_factor` runs execute at once (Trigger.dev's
    /// default is 2.0).
    pub burst_factor: f64,
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
    /// The `maxDuration` of runs whose task and trigger set none (execution
    /// time, waits excluded; Trigger.dev's project default), so a busy loop
    /// never holds a core for ever.
    pub default_max_duration: std::time::Duration,
    /// The master key (64 hex digits) environment variables and snapshots
    /// are sealed with; generated and kept in the data directory when
    /// `None`.
    pub master_key: Option<String>,
    /// What one run may use of the server: journal, child runs, tokens,
    /// fetches, waits per step, error size.
    pub budgets: crate::executor::Budgets,
    /// How long finished runs, and what belongs to them, are kept (30 days
    /// unless set); `None` keeps them for ever.
    pub retention: Option<std::time::Duration>,
    /// The memory all executing runs of an environment together may use,
    /// in MiB, counted by their machines' caps; a run whose machine does not
    /// fit waits in its queue. Half the machine's memory unless set;
    /// `None`: no budget.
    pub memory_budget_mib: Option<u64>,
    /// How long no guest must have run before the instance pool is
    /// renewed, giving back the memory its idle slots kept resident.
    pub release_idle_after: std::time::Duration,
    /// Where compiled bundles are cached; `compiled` in the data directory
    /// unless set.
    pub compile_cache: Option<PathBuf>,
    /// The OpenTelemetry collector (its OTLP/HTTP base URL) finished runs'
    /// traces are exported to; `None`: no traces.
    pub otlp_endpoint: Option<String>,
    /// Where the store is: `None` for the embedded sled store in the data
    /// directory (`store`), or a PostgreSQL URL (`postgres://…`).
    pub store_url: Option<String>,
    /// On a PostgreSQL store, the URL the cluster's other nodes reach this
    /// node at, to forward requests to it when it leads
    /// (`http://<listen address>` when `None`).
    pub node_url: Option<String>,
    /// On a PostgreSQL store, the S3-compatible bucket its large values
    /// go to (`s3://bucket/prefix?endpoint=…`); `None`: they stay in the
    /// database.
    pub blob_store: Option<String>,
}

impl ServerConfig {
    /// How many runs execute at once in all: the base times the burst
    /// factor, at least the base.
    pub fn burst_limit(&self) -> usize {
        let burst = (self.concurrency as f64 * self.burst_factor.max(1.0)).ceil();
        (burst as usize).max(self.concurrency).max(1)
    }

    /// Defaults for a data directory and address.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        ServerConfig {
            data_dir,
            listen,
            secret_key: None,
            concurrency: (cores * 4).clamp(2, 64),
            burst_factor: 2.0,
            environment: "dev".into(),
            warm_wait: std::time::Duration::from_secs(5),
            schedule_clock: crate::ScheduleClock::default(),
            public_url: None,
            fetch_allow: Vec::new(),
            master_key: None,
            default_max_duration: std::time::Duration::from_secs(3_600),
            budgets: crate::executor::Budgets::default(),
            retention: Some(std::time::Duration::from_secs(30 * 86_400)),
            memory_budget_mib: physical_memory_mib().map(|mib| mib / 2),
            release_idle_after: std::time::Duration::from_secs(60),
            compile_cache: None,
            otlp_endpoint: None,
            store_url: None,
            node_url: None,
            blob_store: None,
        }
    }
}

/// The memory this process may use in MiB: the machine's (`/proc/meminfo`),
/// or a container's limit (cgroup v2 `memory.max`) when that is lower.
/// `None` where neither can be read.
fn physical_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let machine = kib / 1024;
    let container = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|max| max.trim().parse::<u64>().ok())
        .map(|bytes| bytes >> 20);
    Some(container.map_or(machine, |c| c.min(machine)))
}
