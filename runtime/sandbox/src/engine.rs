//! The wasmtime engine, its epoch ticker, and the compiled-artifact cache.

use crate::bindings::wit::BundlePre;
use crate::bundle::{BundleError, LoadedBundle};
use crate::host::HostState;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How the sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled artifacts are cached (`<data-dir>/compiled`).
    pub cache_dir: PathBuf,
    /// How many instances may exist at once (the pooling allocator's size).
    pub max_instances: u32,
    /// How often the epoch advances: the granularity of time limits,
    /// cancellation and CPU-share throttling.
    pub epoch_tick: Duration,
    /// Meter fuel (instructions) so tests can count the work a guest does.
    /// Off in production: it slows compute by 10–36 %.
    pub fuel: bool,
    /// How many unused instance slots keep their memory resident for the
    /// next instance of the same bundle; the others give theirs back. Each
    /// bundle loaded (every deploy, every version a run wakes on) touches a
    /// slot, so without this bound the resident memory of idle slots grows
    /// with the number of versions loaded.
    pub warm_slots: u32,
}

impl SandboxConfig {
    /// Defaults with the cache in `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Self {
        SandboxConfig {
            cache_dir,
            max_instances: 256,
            epoch_tick: Duration::from_millis(10),
            fuel: false,
            warm_slots: 8,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: SandboxConfig,
    /// One turn per core for compiling bundles.
    pub(crate) compiling: tokio::sync::Semaphore,
}

/// The sandbox: one wasmtime engine shared by every bundle and attempt.
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .total_stacks(config.max_instances)
            .max_memories_per_component(2)
            .max_memory_size(4 << 30)
            .linear_memory_keep_resident(64 << 20)
            .max_unused_warm_slots(config.warm_slots);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .consume_fuel(config.fuel)
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(anyhow::Error::from)?;
        let mut linker = Linker::new(&engine);
        crate::bindings::wit::Bundle::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .map_err(anyhow::Error::from)?;
        std::fs::create_dir_all(&config.cache_dir)?;

        let ticker = engine.weak();
        let tick = config.epoch_tick;
        std::thread::Builder::new()
            .name("kiln-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(tick);
                }
            })?;
        Ok(Sandbox {
            inner: Arc::new(Inner {
                engine,
                linker,
                config,
                compiling: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                ),
            }),
        })
    }

    /// The epoch tick.
    pub fn epoch_tick(&self) -> Duration {
        self.inner.config.epoch_tick
    }

    /// Refuses a bundle whose state a snapshot of its memory would miss
    /// (see `snapshot_safety`). Checked at deploy, before [`load`]
    /// (Self::load): a bundle deployed by an earlier Kiln still loads.
    pub fn check_snapshot_safety(bytes: &[u8]) -> Result<(), BundleError> {
        crate::snapshot_safety::check(bytes).map_err(BundleError::SnapshotUnsafe)
    }

    /// Validates and loads a bundle: compiles it (or reads its cached
    /// artifact), links it against the Kiln world and reads its manifest.
    ///
    /// Compiling takes seconds of CPU: it runs on the blocking pool, at most
    /// as many at once as there are cores, never on a runtime worker that
    /// other requests are waiting for.
    pub async fn load(&self, bytes: &[u8]) -> Result<LoadedBundle, BundleError> {
        crate::bundle::check_header(bytes)?;
        let _turn = self.inner.compiling.acquire().await;
        let sandbox = self.clone();
        let bytes = bytes.to_vec();
        let (hash, pre) = tokio::task::spawn_blocking(move || {
            let hash = crate::bundle::content_hash(&bytes);
            let component = sandbox.compile_cached(&hash, &bytes)?;
            crate::bundle::check_world(&sandbox.inner.engine, &component)?;
            let pre = sandbox
                .inner
                .linker
                .instantiate_pre(&component)
                .map_err(|e| BundleError::Link(format!("{e:#}")))?;
            let pre = BundlePre::new(pre).map_err(|e| BundleError::Link(format!("{e:#}")))?;
            Ok::<_, BundleError>((hash, pre))
        })
        .await
        .map_err(|e| BundleError::Invalid(format!("compiling was cut short: {e}")))??;
        LoadedBundle::new(self.clone(), hash, pre).await
    }

    /// Compiles `bytes`, or deserialises the artifact cached under `hash`.
    fn compile_cached(&self, hash: &str, bytes: &[u8]) -> Result<Component, BundleError> {
        let path = self.inner.config.cache_dir.join(format!("{hash}.cwasm"));
        if path.exists() {
            // SAFETY: artifacts in the cache directory are written only by
            // `Component::serialize` below, from this engine's configuration;
            // wasmtime checks the engine version and settings on load and we
            // recompile on any mismatch.
            match unsafe { Component::deserialize_file(&self.inner.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "recompiling a stale artifact")
                }
            }
        }
        let component = Component::new(&self.inner.engine, bytes)
            .map_err(|e| BundleError::Invalid(format!("{e:#}")))?;
        match component.serialize() {
            Ok(artifact) => {
                let tmp = path.with_extension("tmp");
                if let Err(error) =
                    std::fs::write(&tmp, artifact).and_then(|()| std::fs::rename(&tmp, &path))
                {
                    tracing::warn!(%error, "could not cache a compiled artifact");
                }
            }
            Err(error) => tracing::warn!(%error, "could not serialise a compiled artifact"),
        }
        Ok(component)
    }

    /// Deletes the compiled artifact cached for the bundle with content
    /// hash `hash` (retention collecting a version). A later load of the
    /// same bundle compiles it again. An artifact that is not there is no
    /// error.
    pub fn forget_artifact(&self, hash: &str) -> std::io::Result<()> {
        if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(std::io::Error::other(format!(
                "`{hash}` is not a bundle's content hash"
            )));
        }
        let path = self.inner.config.cache_dir.join(format!("{hash}.cwasm"));
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Compiles a bundle without the cache (for benchmarks).
    pub fn compile_uncached(&self, bytes: &[u8]) -> anyhow::Result<()> {
        Component::new(&self.inner.engine, bytes).map_err(anyhow::Error::from)?;
        Ok(())
    }

    /// Loads a cached artifact (for benchmarks): the cost a restart pays.
    pub fn load_cached_artifact(&self, hash: &str) -> anyhow::Result<()> {
        let path = self.inner.config.cache_dir.join(format!("{hash}.cwasm"));
        // SAFETY: as in `compile_cached`.
        unsafe { Component::deserialize_file(&self.inner.engine, &path) }
            .map_err(anyhow::Error::from)?;
        Ok(())
    }
}
