//! Bundle validation and the loaded, pre-linked bundle.

use crate::bindings::wit::{BundleIndices, BundlePre};
use crate::limits::Limits;
use kiln_manifest::{Machine, Manifest};
use sha2::{Digest, Sha256};
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::ComponentExportIndex;

/// The interfaces a bundle may import: Kiln's own, never WASI.
const ALLOWED_IMPORT_PREFIX: &str = "kiln:task/";
/// The exports every bundle must have.
const REQUIRED_EXPORTS: [&str; 7] = [
    "describe",
    "start",
    "resume",
    "cancel",
    "snapshot-grow",
    "snapshot-read",
    "snapshot-write",
];
/// How long `describe` may run at deploy time.
const DESCRIBE_TIME_LIMIT: Duration = Duration::from_secs(2);

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The bytes are not WebAssembly at all.
    #[error("the bundle is not a WebAssembly binary ({0})")]
    NotWasm(String),
    /// A core module was uploaded instead of a component.
    #[error(
        "the bundle is a core WebAssembly module, not a component; build it with `kiln build`, which turns the module into a Kiln component"
    )]
    CoreModule,
    /// The component failed validation or compilation.
    #[error("the bundle is not a valid component: {0}")]
    Invalid(String),
    /// The component imports something outside the Kiln world.
    #[error(
        "the bundle imports `{0}`, which is outside the Kiln world: a bundle may import kiln:task interfaces and WASI 0.2's io, clocks, random, cli and filesystem; build it with `kiln build`"
    )]
    ForeignImport(String),
    /// The component imports a WASI interface Kiln does not provide.
    #[error("the bundle imports `{0}`, which Kiln does not provide: {1}")]
    WasiImport(String, String),
    /// The component lacks an export of the Kiln world.
    #[error("the bundle does not export `{0}`; is it built with kiln-sdk and `kiln_sdk::bundle!`?")]
    MissingExport(String),
    /// The component's imports or exports have the wrong types.
    #[error("the bundle does not match the kiln:task/bundle world: {0}")]
    Link(String),
    /// The bundle keeps state that a snapshot of its memory would miss.
    #[error(
        "the bundle keeps state a snapshot would miss: {0}; Kiln snapshots a guest's one linear memory at each wait, as kiln-sdk bundles expect"
    )]
    SnapshotUnsafe(String),
    /// `describe` failed or returned a bad manifest.
    #[error("the bundle's manifest could not be read: {0}")]
    Manifest(String),
}

/// The SHA-256 of a bundle's bytes, in hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Tells components, core modules and non-WebAssembly apart.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), BundleError> {
    if wasmparser::Parser::is_component(bytes) {
        return Ok(());
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(BundleError::CoreModule);
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(BundleError::NotWasm(if bytes.is_empty() {
        "it is empty".into()
    } else {
        format!(
            "it starts with {} instead of the magic 00 61 73 6d",
            head.join(" ")
        )
    }))
}

/// Checks that the component imports only Kiln interfaces and has every
/// export of the world.
pub(crate) fn check_world(engine: &Engine, component: &Component) -> Result<(), BundleError> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if name.starts_with(ALLOWED_IMPORT_PREFIX) {
            continue;
        }
        if crate::wasi::is_wasi(name) {
            crate::wasi::check_import(name)
                .map_err(|why| BundleError::WasiImport(name.to_string(), why))?;
            continue;
        }
        return Err(BundleError::ForeignImport(name.to_string()));
    }
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    if let Some(missing) = REQUIRED_EXPORTS.iter().find(|e| !exports.contains(e)) {
        return Err(BundleError::MissingExport((*missing).to_string()));
    }
    Ok(())
}

/// Whether a component's bytes import any WASI interface (such a bundle
/// resumes by replay, never from a snapshot).
pub(crate) fn imports_wasi(bytes: &[u8]) -> bool {
    use wasmparser::{Parser, Payload};
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(Payload::ModuleSection { .. } | Payload::ComponentSection { .. }) => depth += 1,
            Ok(Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(Payload::ComponentImportSection(imports)) if depth == 0 => {
                for import in imports.into_iter().flatten() {
                    if crate::wasi::is_wasi(import.name.name) {
                        return true;
                    }
                }
            }
            Err(_) => return false,
            _ => {}
        }
    }
    false
}

/// Where the bundle's exports are, looked up once per bundle (their types
/// are checked then too, by `BundleIndices::new`). An attempt takes from
/// its instance only the functions it calls (`Attempt::export`): loading
/// and type-checking all seven for every instance, as the bindings'
/// `BundleIndices::load` does, took 1.3 % of the `engine` bench group's
/// CPU for the one or two a run calls.
#[derive(Clone)]
pub(crate) struct Exports {
    pub(crate) describe: ComponentExportIndex,
    pub(crate) start: ComponentExportIndex,
    pub(crate) resume: ComponentExportIndex,
    pub(crate) cancel: ComponentExportIndex,
    pub(crate) grow: ComponentExportIndex,
    pub(crate) read: ComponentExportIndex,
    pub(crate) write: ComponentExportIndex,
}

/// A validated bundle, compiled and pre-linked, with its manifest.
#[derive(Clone)]
pub struct LoadedBundle {
    pub(crate) sandbox: crate::engine::Pinned,
    pub(crate) pre: BundlePre<crate::host::HostState>,
    pub(crate) exports: Exports,
    /// Whether the bundle imports WASI, and so resumes by replay.
    replays: bool,
    hash: String,
    manifest: Manifest,
}

impl std::fmt::Debug for LoadedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBundle")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl LoadedBundle {
    pub(crate) async fn new(
        sandbox: crate::engine::Pinned,
        hash: String,
        pre: BundlePre<crate::host::HostState>,
    ) -> Result<Self, BundleError> {
        // Checks every export's type.
        BundleIndices::new(pre.instance_pre()).map_err(|e| BundleError::Link(format!("{e:#}")))?;
        let component = pre.instance_pre().component();
        let export = |name: &str| {
            component
                .get_export_index(None, name)
                .ok_or_else(|| BundleError::MissingExport(name.to_string()))
        };
        let replays = component
            .component_type()
            .imports(pre.instance_pre().engine())
            .any(|(name, _)| crate::wasi::is_wasi(name));
        let exports = Exports {
            describe: export("describe")?,
            start: export("start")?,
            resume: export("resume")?,
            cancel: export("cancel")?,
            grow: export("snapshot-grow")?,
            read: export("snapshot-read")?,
            write: export("snapshot-write")?,
        };
        let mut bundle = LoadedBundle {
            sandbox,
            pre,
            exports,
            replays,
            hash,
            manifest: Manifest {
                manifest_version: 0,
                sdk_version: String::new(),
                tasks: Vec::new(),
                queues: Vec::new(),
            },
        };
        let limits = Limits {
            max_duration: Some(DESCRIBE_TIME_LIMIT),
            ..Limits::for_machine(Machine::Small2x, None)
        };
        // Reading the manifest is not a run: it does not keep the sandbox
        // from being renewed when idle.
        let mut attempt = bundle
            .instantiate_as(limits, false)
            .await
            .map_err(|e| BundleError::Manifest(e.to_string()))?;
        let text = attempt
            .describe()
            .await
            .map_err(|trap| BundleError::Manifest(format!("`describe` trapped: {trap}")))?;
        bundle.manifest =
            Manifest::from_json(&text).map_err(|e| BundleError::Manifest(e.to_string()))?;
        Ok(bundle)
    }

    /// Whether the bundle is loaded in the sandbox's newest generation (see
    /// [`crate::Sandbox::renew_if_idle`]).
    pub fn is_newest(&self) -> bool {
        self.sandbox.is_newest()
    }

    /// Whether the bundle imports WASI: its runs are never snapshotted, and
    /// resume by replaying their journal from the attempt's start.
    pub fn resumes_by_replay(&self) -> bool {
        self.replays
    }

    /// The bundle's content hash.
    pub fn content_hash(&self) -> &str {
        &self.hash
    }

    /// The bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}
