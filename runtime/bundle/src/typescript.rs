//! `kiln build` for a TypeScript task project (a directory with a
//! `package.json` and no `Cargo.toml`).
//!
//! The project is bundled with esbuild and made a component with
//! componentize-js, which embeds SpiderMonkey; the task side of the SDK
//! (`@kiln/sdk`, from `guest-sdk/ts/src`) and the build script are built
//! into `kiln` itself. The toolchain comes from npm, pinned by
//! `guest-sdk/ts/toolchain/package-lock.json`: it is installed with
//! `npm ci` once per lock, into `$KILN_TS_TOOLCHAIN` or a directory under
//! the user's cache.

use crate::{BuildError, BuildOptions};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The toolchain's package list and lock.
const TOOLCHAIN_PACKAGE: &str = include_str!("../../../guest-sdk/ts/toolchain/package.json");
const TOOLCHAIN_LOCK: &str = include_str!("../../../guest-sdk/ts/toolchain/package-lock.json");
/// The build script.
const BUILD_SCRIPT: &str = include_str!("../../../guest-sdk/ts/build.mjs");
/// Kiln's world.
const WIT: &str = include_str!("../../../wit/kiln.wit");
/// The SDK's sources.
const SDK: [(&str, &str); 13] = [
    (
        "index.ts",
        include_str!("../../../guest-sdk/ts/src/index.ts"),
    ),
    (
        "runtime.ts",
        include_str!("../../../guest-sdk/ts/src/runtime.ts"),
    ),
    (
        "registry.ts",
        include_str!("../../../guest-sdk/ts/src/registry.ts"),
    ),
    (
        "tasks.ts",
        include_str!("../../../guest-sdk/ts/src/tasks.ts"),
    ),
    ("wait.ts", include_str!("../../../guest-sdk/ts/src/wait.ts")),
    (
        "logger.ts",
        include_str!("../../../guest-sdk/ts/src/logger.ts"),
    ),
    (
        "metadata.ts",
        include_str!("../../../guest-sdk/ts/src/metadata.ts"),
    ),
    (
        "fetch.ts",
        include_str!("../../../guest-sdk/ts/src/fetch.ts"),
    ),
    (
        "retry.ts",
        include_str!("../../../guest-sdk/ts/src/retry.ts"),
    ),
    ("env.ts", include_str!("../../../guest-sdk/ts/src/env.ts")),
    (
        "errors.ts",
        include_str!("../../../guest-sdk/ts/src/errors.ts"),
    ),
    (
        "types.ts",
        include_str!("../../../guest-sdk/ts/src/types.ts"),
    ),
    (
        "world.d.ts",
        include_str!("../../../guest-sdk/ts/src/world.d.ts"),
    ),
];

/// The TypeScript SDK's sources (`guest-sdk/ts/src`), as `kiln` carries
/// them: file name and text.
pub fn sdk_sources() -> &'static [(&'static str, &'static str)] {
    &SDK
}

/// The version of the toolchain's zod (what `schemaTask` is tested with).
pub fn zod_version() -> String {
    serde_json::from_str::<serde_json::Value>(TOOLCHAIN_PACKAGE)
        .ok()
        .and_then(|p| p["dependencies"]["zod"].as_str().map(str::to_string))
        .unwrap_or_else(|| "4".into())
}

/// Whether `path` is a TypeScript project `kiln build` should bundle.
pub(crate) fn is_project(path: &Path) -> bool {
    path.is_dir() && path.join("package.json").is_file() && !path.join("Cargo.toml").exists()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn short_hash(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex_prefix(&hash.finalize())
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Where the toolchain lives: `options.ts_toolchain`, `$KILN_TS_TOOLCHAIN`,
/// or the user's cache.
fn toolchain_dir(options: &BuildOptions) -> PathBuf {
    if let Some(dir) = &options.ts_toolchain {
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os("KILN_TS_TOOLCHAIN").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache
        .join("kiln")
        .join(format!("ts-toolchain-{}", short_hash(&[TOOLCHAIN_LOCK])))
}

/// Installs the toolchain into `dir` from npm, unless what is there was
/// installed from this lock. It is installed beside `dir` and moved into
/// place when complete, so a build never sees half an install, and two
/// builds installing at once both end with one complete copy.
fn install_toolchain(dir: &Path, quiet: bool) -> Result<(), BuildError> {
    let installed = |dir: &Path| {
        std::fs::read_to_string(dir.join("node_modules").join(".kiln-installed-lock"))
            .is_ok_and(|lock| lock == TOOLCHAIN_LOCK)
    };
    if installed(dir) {
        return Ok(());
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ts-toolchain".into());
    let staging = dir.with_file_name(format!(".{name}.staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let package = staging.join("package.json");
    std::fs::write(&package, TOOLCHAIN_PACKAGE).map_err(io(&package))?;
    let lock = staging.join("package-lock.json");
    std::fs::write(&lock, TOOLCHAIN_LOCK).map_err(io(&lock))?;
    if !quiet {
        eprintln!(
            "kiln build: installing the TypeScript toolchain (esbuild, componentize-js, zod) into {}",
            dir.display()
        );
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&staging)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| {
            BuildError::Toolchain(format!(
                "could not run npm ({e}); install Node.js 20 or later with npm"
            ))
        })?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(BuildError::Toolchain(
            "`npm ci` failed for the TypeScript toolchain (see npm's messages above)".into(),
        ));
    }
    let marker = staging.join("node_modules").join(".kiln-installed-lock");
    std::fs::write(&marker, TOOLCHAIN_LOCK).map_err(io(&marker))?;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if std::fs::rename(&staging, dir).is_err() {
        if installed(dir) {
            // Another build finished first: its copy is the same.
            let _ = std::fs::remove_dir_all(&staging);
            return Ok(());
        }
        // An install cut short, or one from another lock: replace it, if
        // it holds nothing but what an install puts there.
        if !holds_only_a_toolchain(dir) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(BuildError::Toolchain(format!(
                "{} holds files other than a TypeScript toolchain; point KILN_TS_TOOLCHAIN at an empty or new directory",
                dir.display()
            )));
        }
        let _ = std::fs::remove_dir_all(dir);
        if let Err(e) = std::fs::rename(&staging, dir) {
            let _ = std::fs::remove_dir_all(&staging);
            if !installed(dir) {
                return Err(io(dir)(e));
            }
        }
    }
    Ok(())
}

/// Whether `dir` holds only what installing the toolchain and building put
/// there (so it may be replaced).
fn holds_only_a_toolchain(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    entries.flatten().all(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        matches!(
            name.as_str(),
            "node_modules" | "package.json" | "package-lock.json"
        ) || name.starts_with("sdk-")
            || name.starts_with("kiln-build-")
    })
}

/// Writes `text` to `path` through a file of its own, renamed into place,
/// so a build running at the same time never reads half of it.
fn write_whole(path: &Path, text: &str) -> Result<(), BuildError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The module a project's tasks start from: `main` in its `package.json`,
/// else `src/index.ts`, else `index.ts`.
fn entry_of(project: &Path) -> Result<PathBuf, BuildError> {
    let package = project.join("package.json");
    let text = std::fs::read_to_string(&package).map_err(io(&package))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        BuildError::Toolchain(format!("{} is not valid JSON: {e}", package.display()))
    })?;
    if let Some(main) = json["main"].as_str() {
        let path = project.join(main);
        if path.is_file() {
            return Ok(path);
        }
        return Err(BuildError::Toolchain(format!(
            "{} names `{main}` as its main module, which does not exist",
            package.display()
        )));
    }
    for candidate in ["src/index.ts", "index.ts", "src/index.js", "index.js"] {
        let path = project.join(candidate);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(BuildError::Toolchain(format!(
        "{} has no `main` and no src/index.ts: where do its tasks start?",
        project.display()
    )))
}

/// The bundle's file name: the package's name, else the directory's.
fn bundle_name(project: &Path) -> String {
    let from_package = std::fs::read_to_string(project.join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|j| j["name"].as_str().map(str::to_string));
    let name = from_package
        .or_else(|| {
            project
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "bundle".into());
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

/// Builds the TypeScript project at `project` and returns the bundle's path:
/// `<target_dir>/kiln-ts/<name>.wasm`, or `<project>/dist/<name>.wasm`.
pub(crate) fn build(project: &Path, options: &BuildOptions) -> Result<PathBuf, BuildError> {
    let project = std::path::absolute(project).unwrap_or_else(|_| project.to_path_buf());
    let entry = entry_of(&project)?;
    let toolchain = toolchain_dir(options);
    install_toolchain(&toolchain, options.quiet)?;

    // The SDK, the script and the world, as this `kiln` has them.
    let mut parts: Vec<&str> = vec![BUILD_SCRIPT, WIT];
    parts.extend(SDK.iter().map(|(_, text)| *text));
    let sdk_dir = toolchain.join(format!("sdk-{}", short_hash(&parts)));
    let src = sdk_dir.join("src");
    std::fs::create_dir_all(&src).map_err(io(&src))?;
    for (name, text) in SDK {
        write_whole(&src.join(name), text)?;
    }
    let wit = sdk_dir.join("kiln.wit");
    write_whole(&wit, WIT)?;
    // Beside node_modules, so that Node finds the toolchain's packages.
    let script = toolchain.join(format!("kiln-build-{}.mjs", short_hash(&[BUILD_SCRIPT])));
    write_whole(&script, BUILD_SCRIPT)?;

    let out_dir = match &options.target_dir {
        Some(dir) => dir.join("kiln-ts"),
        None => project.join("dist"),
    };
    std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
    let out = out_dir.join(format!("{}.wasm", bundle_name(&project)));
    if !options.quiet {
        eprintln!(
            "kiln build: bundling {} with esbuild and componentize-js",
            entry.display()
        );
    }
    let status = Command::new("node")
        .arg(&script)
        .arg("--entry")
        .arg(&entry)
        .arg("--sdk")
        .arg(&src)
        .arg("--wit")
        .arg(&wit)
        .arg("--out")
        .arg(&out)
        .current_dir(&project)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| {
            BuildError::Toolchain(format!(
                "could not run node ({e}); install Node.js 20 or later"
            ))
        })?;
    if !status.success() {
        return Err(BuildError::Toolchain(format!(
            "bundling {} failed (see the messages above)",
            project.display()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_is_a_directory_with_a_package_json_and_no_cargo_toml() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_project(dir.path()));
        std::fs::write(
            dir.path().join("package.json"),
            r#"{"name":"@acme/Tasks!"}"#,
        )
        .unwrap();
        assert!(is_project(dir.path()));
        assert_eq!(bundle_name(dir.path()), "acme-Tasks");
        std::fs::write(dir.path().join("Cargo.toml"), "").unwrap();
        assert!(!is_project(dir.path()));
    }

    #[test]
    fn the_entry_is_main_or_src_index() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        let err = entry_of(dir.path()).unwrap_err().to_string();
        assert!(err.contains("src/index.ts"), "{err}");
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/index.ts"), "").unwrap();
        assert_eq!(
            entry_of(dir.path()).unwrap(),
            dir.path().join("src/index.ts")
        );
        std::fs::write(dir.path().join("package.json"), r#"{"main":"tasks.ts"}"#).unwrap();
        let err = entry_of(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
