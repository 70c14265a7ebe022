//! The wasmtime engine, its epoch ticker, and the compiled-artifact cache.

use crate::bindings::wit::BundlePre;
use crate::bundle::{BundleError, LoadedBundle};
use crate::host::HostState;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

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
    /// How long the sandbox must have run no instance before its instance
    /// pool is replaced by a fresh one, so the memory the idle slots kept
    /// resident goes back to the system (see [`Sandbox::renew_if_idle`]).
    pub release_idle_after: Duration,
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
            release_idle_after: Duration::from_secs(60),
        }
    }
}

/// One generation of the sandbox: a wasmtime engine with its instance
/// pool and linker. Bundles loaded in it instantiate in its pool; it lives
/// as long as any of them.
pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: SandboxConfig,
}

impl Inner {
    /// Builds a generation: the engine, its pool and linker, and the
    /// engine's epoch ticker (which stops when the engine is dropped).
    fn build(config: &SandboxConfig) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .total_stacks(config.max_instances)
            .max_memories_per_component(2)
            .max_memory_size(4 << 30)
            .linear_memory_keep_resident(64 << 20)
            // Tables are reset with `memset` too, rather than `madvise`,
            // whose TLB shootdown interrupts every core running Kiln.
            .table_keep_resident(1 << 20)
            // Only the pages an attempt dirtied are reset (Linux 6.7 and
            // later; elsewhere the resident part is reset whole, as before).
            .pagemap_scan(Enabled::Auto)
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
        crate::wasi::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;

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
        Ok(Inner {
            engine,
            linker,
            config: config.clone(),
        })
    }
}

/// What every generation shares.
struct Root {
    config: SandboxConfig,
    /// The generation new loads go to.
    newest: RwLock<Arc<Inner>>,
    /// One turn per core for compiling bundles.
    compiling: tokio::sync::Semaphore,
    /// Instances alive now, in any generation.
    live: AtomicUsize,
    /// When the last instance ended (or the sandbox started).
    last_active: Mutex<Instant>,
    /// Whether an instance ran in the newest generation: a generation no
    /// instance ran in has no slot memory to give back.
    used: AtomicBool,
}

/// The sandbox: the wasmtime engine shared by every bundle and attempt.
///
/// A handle is pinned to one generation of the engine (a loaded bundle's
/// handle to the generation it was loaded in); [`Sandbox::load`] always
/// loads into the newest. When no instance has run for
/// [`SandboxConfig::release_idle_after`], [`Sandbox::renew_if_idle`] starts
/// a new generation: once the bundles loaded in the old one are loaded
/// again (see `Deployments::renew` in the server), the old engine and its
/// instance pool are dropped, and with them the memory the pool's idle
/// slots kept resident for reuse.
#[derive(Clone)]
pub struct Sandbox {
    root: Arc<Root>,
}

/// A handle pinned to one generation: a loaded bundle's, which keeps the
/// generation's engine and pool alive.
#[derive(Clone)]
pub(crate) struct Pinned {
    pub(crate) inner: Arc<Inner>,
    root: Arc<Root>,
}

/// Counts an instance alive for as long as it is held.
pub(crate) struct LiveInstance(Arc<Root>);

impl Drop for LiveInstance {
    fn drop(&mut self) {
        *self.0.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.root.config)
            .finish_non_exhaustive()
    }
}

impl Pinned {
    /// Whether this handle (a loaded bundle's) is pinned to the newest
    /// generation; a bundle that is not should be loaded again so the old
    /// generation can go.
    pub fn is_newest(&self) -> bool {
        Arc::ptr_eq(
            &self.inner,
            &self.root.newest.read().unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Counts an instance about to be made, until the guard drops; one
    /// that runs a task (`run`) marks the pool as used.
    pub(crate) fn live_instance(&self, run: bool) -> LiveInstance {
        self.root.live.fetch_add(1, Ordering::SeqCst);
        if run && self.is_newest() {
            self.root.used.store(true, Ordering::SeqCst);
        }
        LiveInstance(self.root.clone())
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
                Ok(component) => {
                    // Used now: a standby pruning a compile cache it shares
                    // leaves recently used artifacts alone.
                    let _ = std::fs::File::open(&path)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    return Ok(component);
                }
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "recompiling a stale artifact")
                }
            }
        }
        let component = Component::new(&self.inner.engine, bytes)
            .map_err(|e| BundleError::Invalid(format!("{e:#}")))?;
        match component.serialize() {
            Ok(artifact) => {
                // A name of its own, so that servers sharing a cache never
                // write into each other's file.
                static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
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
}

impl Sandbox {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.cache_dir)?;
        let generation = Arc::new(Inner::build(&config)?);
        Ok(Sandbox {
            root: Arc::new(Root {
                config,
                newest: RwLock::new(generation),
                compiling: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                ),
                live: AtomicUsize::new(0),
                last_active: Mutex::new(Instant::now()),
                used: AtomicBool::new(false),
            }),
        })
    }

    /// A handle pinned to the newest generation.
    pub(crate) fn newest(&self) -> Pinned {
        Pinned {
            inner: self
                .root
                .newest
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            root: self.root.clone(),
        }
    }

    /// Starts a new generation if an instance ran in the newest one, none
    /// is alive now, and none has been for
    /// [`SandboxConfig::release_idle_after`]. Returns whether it did.
    /// Bundles loaded in the old generation keep it (and its pool) alive
    /// until they are dropped.
    pub fn renew_if_idle(&self) -> bool {
        let root = &self.root;
        let idle = root
            .last_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if idle < root.config.release_idle_after
            || root.live.load(Ordering::SeqCst) > 0
            || !root.used.load(Ordering::SeqCst)
        {
            return false;
        }
        let generation = match Inner::build(&root.config) {
            Ok(generation) => Arc::new(generation),
            Err(error) => {
                tracing::warn!(%error, "could not start a new sandbox generation");
                return false;
            }
        };
        *root.newest.write().unwrap_or_else(|p| p.into_inner()) = generation;
        root.used.store(false, Ordering::SeqCst);
        crate::snapshot::release_buffers();
        true
    }

    /// How long an idle sandbox waits before [`Sandbox::renew_if_idle`]
    /// renews it.
    pub fn release_idle_after(&self) -> Duration {
        self.root.config.release_idle_after
    }

    /// The epoch tick.
    pub fn epoch_tick(&self) -> Duration {
        self.root.config.epoch_tick
    }

    /// Refuses a bundle whose state a snapshot of its memory would miss
    /// (see `snapshot_safety`). Checked at deploy, before [`load`]
    /// (Self::load): a bundle deployed by an earlier Kiln still loads.
    pub fn check_snapshot_safety(bytes: &[u8]) -> Result<(), BundleError> {
        if crate::bundle::imports_wasi(bytes) {
            // Never snapshotted: it resumes by replay (see `wasi`).
            return Ok(());
        }
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
        let _turn = self.root.compiling.acquire().await;
        let pinned = self.newest();
        let sandbox = pinned.clone();
        let bytes = bytes.to_vec();
        let (hash, pre) = tokio::task::spawn_blocking(move || {
            crate::cpu::blocking(|| {
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
        })
        .await
        .map_err(|e| BundleError::Invalid(format!("compiling was cut short: {e}")))??;
        LoadedBundle::new(pinned, hash, pre).await
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
        let path = self.root.config.cache_dir.join(format!("{hash}.cwasm"));
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Compiles a bundle without the cache (for benchmarks).
    pub fn compile_uncached(&self, bytes: &[u8]) -> anyhow::Result<()> {
        Component::new(&self.newest().inner.engine, bytes).map_err(anyhow::Error::from)?;
        Ok(())
    }

    /// Loads a cached artifact (for benchmarks): the cost a restart pays.
    pub fn load_cached_artifact(&self, hash: &str) -> anyhow::Result<()> {
        let path = self.root.config.cache_dir.join(format!("{hash}.cwasm"));
        // SAFETY: as in `compile_cached`.
        unsafe { Component::deserialize_file(&self.newest().inner.engine, &path) }
            .map_err(anyhow::Error::from)?;
        Ok(())
    }
}
