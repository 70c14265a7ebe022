//! `kiln serve`.

use kiln_server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run the server.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where Kiln keeps its store, compiled bundles and API key.
    #[arg(long, default_value = ".kiln", env = "KILN_DATA_DIR")]
    data_dir: PathBuf,
    /// Where compiled bundles are cached (default: `compiled` in the data
    /// directory). Several servers may share one: artifacts are named by
    /// the bundle's content hash and written atomically.
    #[arg(long, env = "KILN_COMPILE_CACHE")]
    compile_cache: Option<PathBuf>,
    /// Where the store is: the embedded sled store in the data directory
    /// unless set, or a PostgreSQL database (`postgres://user@host/db`;
    /// `postgres://user@/db?host=/socket/dir` for a Unix socket; TLS as
    /// libpq's `sslmode` and `sslrootcert` ask, e.g.
    /// `?sslmode=verify-full&sslrootcert=ca.pem`). Several
    /// servers on one database form a cluster: one leads, the others
    /// forward to it and take over when it is gone.
    #[arg(long, env = "KILN_STORE")]
    store: Option<String>,
    /// On a PostgreSQL store: the URL the cluster's other nodes reach this
    /// node at (default: http://<listen address>).
    #[arg(long, env = "KILN_NODE_URL")]
    node_url: Option<String>,
    /// On a PostgreSQL store: an S3-compatible bucket for its large values
    /// (snapshots, bundles, packets, large payloads), as
    /// `s3://<bucket>/<prefix>?endpoint=<url>&region=<region>&min-size=<bytes>`;
    /// values of at least min-size (128 KiB) go there instead of the
    /// database. Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "KILN_BLOB_STORE")]
    blob_store: Option<String>,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:3030", env = "KILN_LISTEN")]
    listen: SocketAddr,
    /// The environment's base concurrency: at most this many runs of one
    /// queue execute at once (default: 4 per CPU core, 2 to 64).
    #[arg(long, env = "KILN_CONCURRENCY")]
    concurrency: Option<usize>,
    /// All queues together may run up to concurrency × this factor at once.
    #[arg(long, default_value_t = 2.0, env = "KILN_BURST_FACTOR")]
    burst_factor: f64,
    /// Timer waits at most this long (ms) keep the guest warm in memory;
    /// longer ones snapshot it and free its slot.
    #[arg(long, default_value_t = 5_000, env = "KILN_WARM_WAIT_MS")]
    warm_wait_ms: u64,
    /// The maxDuration of runs whose task and trigger set none: execution
    /// time, waits excluded (`30s`, `15m`, `1h`...).
    #[arg(long, default_value = "1h", env = "KILN_DEFAULT_MAX_DURATION")]
    default_max_duration: String,
    /// The URL clients reach this server at, used in wait tokens' callback
    /// URLs (default: http://<listen address>).
    #[arg(long, env = "KILN_PUBLIC_URL")]
    public_url: Option<String>,
    /// The environment runs belong to (`dev`, `staging`, `prod`...). In
    /// `dev`, tasks may fetch from loopback addresses.
    #[arg(long, default_value = "dev", env = "KILN_ENVIRONMENT")]
    environment: String,
    /// Hosts tasks may fetch from: `*`, `host`, `host:port` or `*.domain`,
    /// and internal addresses or networks (`10.0.0.0/8`), which no name
    /// pattern opens (repeat, or comma-separate). Nothing by default;
    /// loopback is always allowed in the dev environment.
    #[arg(long = "allow-fetch", env = "KILN_ALLOW_FETCH", value_delimiter = ',')]
    allow_fetch: Vec<String>,
    /// How long finished runs are kept, with their journals, logs,
    /// snapshots, and the keys, tokens, batches and packets that outlive
    /// them (`30d`, `12h`...); `forever` keeps everything.
    #[arg(long, default_value = "30d", env = "KILN_RETENTION")]
    retention: String,
    /// The memory all executing runs together may use, counted by their
    /// machines' caps (`8GiB`, `512MiB`; `unlimited` for no budget): a run
    /// whose machine does not fit waits in its queue. Half the machine's
    /// memory unless set.
    #[arg(long, env = "KILN_MEMORY_BUDGET")]
    memory_budget: Option<String>,
    /// Once no guest has run for this long (`60s`, `10m`...), the instance
    /// pool is renewed and the memory its idle slots kept resident for the
    /// next run goes back to the system.
    #[arg(long, default_value = "60s", env = "KILN_RELEASE_IDLE_AFTER")]
    release_idle_after: String,
    /// Export a trace of every finished run to this OpenTelemetry
    /// collector, over OTLP/HTTP with protobuf: its base URL
    /// (`http://localhost:4318`; `/v1/traces` is added). Off unless set.
    #[arg(long, env = "KILN_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// What one run may use, as NAME=VALUE (repeat, or comma-separate):
    /// journal-entries (100000), journal-bytes (256MiB), children (10000),
    /// batches (1000), tokens (10000), fetches (10000),
    /// fetch-request-bytes (10MiB), waits-per-step (1000), error-bytes
    /// (64KiB).
    #[arg(long = "limit", env = "KILN_LIMITS", value_delimiter = ',')]
    limits: Vec<String>,
    /// On SIGTERM, how long the runs executing may take to finish or reach
    /// a wait before the server stops (`25s`; `0s` to stop at once). No run
    /// starts meanwhile; what is cut short resumes on the next server from
    /// its snapshot and journal.
    #[arg(long, default_value = "25s", env = "KILN_DRAIN_TIMEOUT")]
    drain_timeout: String,
    /// For tests: schedules fire by a clock that runs RATE times faster than
    /// real time from the real instant ANCHOR_MS (`ANCHOR_MS:RATE`).
    #[arg(long, hide = true, env = "KILN_SCHEDULE_CLOCK")]
    schedule_clock: Option<String>,
}

/// Starts the server and serves until stopped.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = ServerConfig::new(args.data_dir.clone(), args.listen);
    config.secret_key = std::env::var("KILN_SECRET_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    config.master_key = std::env::var("KILN_MASTER_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    if let Some(n) = args.concurrency {
        config.concurrency = n.max(1);
    }
    if !(1.0..=100.0).contains(&args.burst_factor) {
        anyhow::bail!("--burst-factor must be between 1 and 100");
    }
    config.burst_factor = args.burst_factor;
    config.warm_wait = std::time::Duration::from_millis(args.warm_wait_ms);
    let default_max_duration = kiln_server::parse_duration_ms(&args.default_max_duration)
        .map_err(|e| anyhow::anyhow!("--default-max-duration: {e}"))?;
    if default_max_duration < 1_000 {
        anyhow::bail!("--default-max-duration must be at least 1s");
    }
    config.default_max_duration = std::time::Duration::from_millis(default_max_duration);
    config.public_url = args.public_url.clone();
    config.compile_cache = args.compile_cache.clone();
    config.store_url = match args.store.as_deref().map(str::trim) {
        None | Some("") | Some("sled") => None,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Some(url.to_string())
        }
        Some(other) => anyhow::bail!(
            "--store `{other}`: a PostgreSQL URL (postgres://…), or `sled` for the embedded store"
        ),
    };
    config.node_url = args.node_url.clone();
    config.blob_store = args
        .blob_store
        .as_deref()
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string);
    if config.blob_store.is_some() && config.store_url.is_none() {
        anyhow::bail!(
            "--blob-store keeps a PostgreSQL store's large values in a bucket; \
             it needs --store postgres://… (the embedded sled store keeps them itself)"
        );
    }
    config.fetch_allow = args.allow_fetch.clone();
    config.environment = args.environment.clone();
    config.retention = match args.retention.trim() {
        "forever" => None,
        text => {
            let ms = kiln_server::parse_duration_ms(text)
                .map_err(|e| anyhow::anyhow!("--retention: {e} (or `forever`)"))?;
            if ms < 1_000 {
                anyhow::bail!("--retention must be at least 1s");
            }
            Some(std::time::Duration::from_millis(ms))
        }
    };
    if let Some(budget) = &args.memory_budget {
        config.memory_budget_mib = match budget.trim() {
            "unlimited" => None,
            text => {
                let bytes = kiln_server::parse_size_bytes(text)
                    .map_err(|e| anyhow::anyhow!("--memory-budget: {e} (or `unlimited`)"))?;
                if bytes < 256 << 20 {
                    anyhow::bail!("--memory-budget must be at least 256MiB, the smallest machine");
                }
                Some(bytes >> 20)
            }
        };
    }
    let release_idle_after = kiln_server::parse_duration_ms(&args.release_idle_after)
        .map_err(|e| anyhow::anyhow!("--release-idle-after: {e}"))?;
    if release_idle_after < 1_000 {
        anyhow::bail!("--release-idle-after must be at least 1s");
    }
    config.release_idle_after = std::time::Duration::from_millis(release_idle_after);
    config.otlp_endpoint = args.otlp_endpoint.clone();
    for setting in &args.limits {
        config
            .budgets
            .set(setting)
            .map_err(|e| anyhow::anyhow!("--limit: {e}"))?;
    }
    if let Some(clock) = &args.schedule_clock {
        config.schedule_clock = kiln_server::ScheduleClock::parse(clock)
            .map_err(|e| anyhow::anyhow!("--schedule-clock: {e}"))?;
    }
    let drain_timeout = kiln_server::parse_duration_ms(&args.drain_timeout)
        .map_err(|e| anyhow::anyhow!("--drain-timeout: {e}"))?;
    let server = Server::open(config).await?;
    let addr = match server.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    if server.generated_key() {
        println!(
            "Generated an API key (kept in {}):",
            args.data_dir.join("secret-key").display()
        );
        println!("  export KILN_SECRET_KEY={}", server.secret_key());
    }
    let (base, burst) = server.concurrency_limits();
    match server.cluster_role() {
        Some((node, Some(leader))) => println!(
            "Kiln is listening on http://{addr} (node {node}, standing by: node {leader} leads \
             the cluster, and requests are forwarded to it)"
        ),
        role => println!(
            "Kiln is listening on http://{addr} (data in {}{}; at most {base} runs per queue, \
             {burst} in all)",
            args.data_dir.display(),
            role.map_or_else(String::new, |(node, _)| format!(
                ", node {node}, leading the cluster"
            )),
        ),
    }
    // From here every way out exits the process: on a cluster's standby a
    // blocking wait for the store's lock never returns, and a runtime shut
    // down normally would wait for it.
    let cut_short = match server
        .serve_until_terminated(std::time::Duration::from_millis(drain_timeout))
        .await
    {
        Ok(cut_short) => cut_short,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    };
    if cut_short > 0 {
        tracing::warn!(
            runs = cut_short,
            "stopped with runs still executing: they resume on the next server"
        );
    }
    tracing::info!("drained; Kiln stops");
    // Exiting closes the store's connections (on PostgreSQL, a standby
    // takes over the moment its session ends) without waiting on a standby's
    // wait for the lock, which never returns.
    std::process::exit(0)
}
