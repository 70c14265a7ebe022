//! Builds a Kiln guest crate, or a TypeScript task project, into a
//! component bundle.
//!
//! `kiln build PATH` and the test fixtures' build script both come here:
//! [`build`] runs `cargo build --release --target wasm32-unknown-unknown` on the
//! crate, finds the `cdylib` it produced, gives its heap room in the initial
//! memory ([`reserve_heap`]), and [`componentize`] wraps that core module into
//! a WebAssembly component with `wit-component`, using the `kiln:task/bundle`
//! world that `wit-bindgen` embedded in the module.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod heap;
mod typescript;

pub use heap::{HEAP_RESERVE, reserve as reserve_heap};

pub use typescript::{sdk_sources as ts_sdk_sources, zod_version as ts_zod_version};

/// The target guests are compiled for: no WASI, only Kiln's own imports.
pub const GUEST_TARGET: &str = "wasm32-unknown-unknown";

/// Why a bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `cargo` could not be started.
    #[error("could not run cargo: {0}")]
    Spawn(#[source] std::io::Error),
    /// The crate did not compile.
    #[error("cargo build failed for {manifest} (see the compiler's messages above)")]
    Compile {
        /// The crate's manifest path.
        manifest: PathBuf,
    },
    /// The crate compiled but produced no `cdylib`.
    #[error(
        "{manifest} produced no .wasm library; a Kiln bundle crate needs `crate-type = [\"cdylib\"]` in its [lib] section"
    )]
    NoLibrary {
        /// The crate's manifest path.
        manifest: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A TypeScript project could not be bundled, or its toolchain set up.
    #[error("{0}")]
    Toolchain(String),
    /// The module could not be turned into a component.
    #[error("could not make a component of {module}: {reason}")]
    Componentize {
        /// The core module.
        module: PathBuf,
        /// What `wit-component` (or, reserving heap room, the module's
        /// parser) said.
        reason: String,
    },
}

/// Options for [`build`].
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The cargo to run (`$CARGO`, else `cargo`).
    pub cargo: Option<PathBuf>,
    /// Where cargo puts its output; cargo's own default when `None`.
    pub target_dir: Option<PathBuf>,
    /// Build only this package of a workspace.
    pub package: Option<String>,
    /// Drop the environment a surrounding cargo build script sets, so a build
    /// started from `build.rs` compiles for the guest target cleanly.
    pub clean_env: bool,
    /// Show cargo's progress on stderr (otherwise only its diagnostics).
    pub quiet: bool,
    /// Where the TypeScript toolchain is installed (`$KILN_TS_TOOLCHAIN`,
    /// else under the user's cache, when `None`).
    pub ts_toolchain: Option<PathBuf>,
}

/// Builds the guest crate at `path` (a directory or a `Cargo.toml`), or the
/// TypeScript project at `path` (a directory with a `package.json`), and
/// returns the path of the component bundle it wrote.
pub fn build(path: &Path, options: &BuildOptions) -> Result<PathBuf, BuildError> {
    if typescript::is_project(path) {
        return typescript::build(path, options);
    }
    let manifest = if path.is_dir() {
        path.join("Cargo.toml")
    } else {
        path.to_path_buf()
    };
    // Cargo runs in the crate's directory, so rustup picks the toolchain
    // the crate's `rust-toolchain.toml` names (with the guest target), not
    // the one of wherever `kiln build` was started.
    let manifest = std::path::absolute(&manifest).unwrap_or(manifest);
    let cargo = options
        .cargo
        .clone()
        .or_else(|| std::env::var_os("CARGO").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cargo"));
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        .current_dir(manifest.parent().unwrap_or(Path::new(".")))
        // Bundles need no debug info; it would triple their size.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if options.quiet {
        command.arg("--quiet");
    }
    if let Some(package) = &options.package {
        command.arg("--package").arg(package);
    }
    if let Some(dir) = &options.target_dir {
        command.arg("--target-dir").arg(dir);
    }
    if options.clean_env {
        for var in [
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_MAKEFLAGS",
            "MAKEFLAGS",
            "MFLAGS",
        ] {
            command.env_remove(var);
        }
        for (key, _) in std::env::vars_os() {
            if key
                .to_str()
                .is_some_and(|k| k.starts_with("CARGO_FEATURE_") || k.starts_with("CARGO_CFG_"))
            {
                command.env_remove(key);
            }
        }
    }
    let output = command.output().map_err(BuildError::Spawn)?;
    if !output.status.success() {
        return Err(BuildError::Compile { manifest });
    }
    let module = find_cdylib(
        &String::from_utf8_lossy(&output.stdout),
        options.package.as_deref(),
    )
    .ok_or_else(|| BuildError::NoLibrary {
        manifest: manifest.clone(),
    })?;
    let bytes = std::fs::read(&module).map_err(|source| BuildError::Io {
        path: module.clone(),
        source,
    })?;
    // Room for the heap in the initial memory, so an attempt need not grow
    // it (see `heap`).
    let bytes = heap::reserve(&bytes, HEAP_RESERVE).map_err(|reason| BuildError::Componentize {
        module: module.clone(),
        reason,
    })?;
    let component = componentize(&bytes).map_err(|reason| BuildError::Componentize {
        module: module.clone(),
        reason,
    })?;
    let stem = module
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let out_dir = module
        .parent()
        .map(|p| p.join("kiln"))
        .unwrap_or_else(|| PathBuf::from("kiln"));
    std::fs::create_dir_all(&out_dir).map_err(|source| BuildError::Io {
        path: out_dir.clone(),
        source,
    })?;
    let out = out_dir.join(format!("{stem}.wasm"));
    std::fs::write(&out, component).map_err(|source| BuildError::Io {
        path: out.clone(),
        source,
    })?;
    Ok(out)
}

/// Finds the `.wasm` file of the last `cdylib` in cargo's JSON messages
/// (of `package` when given).
fn find_cdylib(messages: &str, package: Option<&str>) -> Option<PathBuf> {
    let mut found = None;
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = message["target"]["crate_types"]
            .as_array()
            .is_some_and(|types| types.iter().any(|t| t == "cdylib"));
        if !is_cdylib {
            continue;
        }
        if let Some(package) = package {
            let name = message["target"]["name"].as_str().unwrap_or_default();
            if name.replace('-', "_") != package.replace('-', "_") {
                continue;
            }
        }
        if let Some(files) = message["filenames"].as_array() {
            found = files
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
                .or(found);
        }
    }
    found
}

/// Turns a core module built with `kiln-sdk` into a component bundle.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .map_err(|e| format!("{e:#}"))?
        .validate(true)
        .encode()
        .map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cdylib_of_the_named_package() {
        let messages = r#"
{"reason":"compiler-artifact","target":{"name":"serde","crate_types":["lib"]},"filenames":["/t/libserde.rlib"]}
{"reason":"compiler-artifact","target":{"name":"hello_world","crate_types":["cdylib","rlib"]},"filenames":["/t/hello_world.wasm","/t/libhello_world.rlib"]}
{"reason":"compiler-artifact","target":{"name":"limits","crate_types":["cdylib"]},"filenames":["/t/limits.wasm"]}
{"reason":"build-finished","success":true}
"#;
        assert_eq!(
            find_cdylib(messages, Some("hello-world")),
            Some(PathBuf::from("/t/hello_world.wasm"))
        );
        assert_eq!(
            find_cdylib(messages, None),
            Some(PathBuf::from("/t/limits.wasm"))
        );
        assert_eq!(find_cdylib("not json\n", None), None);
    }

    #[test]
    fn componentize_refuses_bytes_that_are_not_a_module() {
        let err = componentize(b"not a module").unwrap_err();
        assert!(!err.is_empty());
    }
}
