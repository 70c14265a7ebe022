//! `kiln init NAME`: a new bundle crate, anywhere on disk, that builds
//! without Kiln's repository.
//!
//! The `kiln` binary carries the guest SDK's sources of its own version
//! (packed by `build.rs`). `init` writes them once to
//! `$KILN_HOME/sdk/<version>-<hash of the sources>` (`~/.kiln` unless
//! `KILN_HOME` says otherwise)
//! and points the new crate's `kiln-sdk` dependency at them; the crate gets
//! one example task, a unit test, the toolchain file that brings the
//! `wasm32-unknown-unknown` target, and the dependency versions Kiln's own
//! bundles are tested with (its `Cargo.lock`).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod sdk {
    include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));
}

/// The toolchain Kiln is built and tested with, with the guest target.
const TOOLCHAIN: &str = include_str!("../../../../rust-toolchain.toml");

/// The dependency versions Kiln's own bundles are built and tested with:
/// the new crate starts from them (cargo drops what it does not use).
const LOCK: &str = include_str!("../../../../Cargo.lock");

/// Make a new bundle crate with an example task.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The crate's name and directory (created; must not exist or be
    /// empty). The example task's id is the name too.
    name: PathBuf,
    /// Make a TypeScript project instead (`package.json`, `src/index.ts`),
    /// with tasks written against Kiln's `@trigger.dev/sdk`-shaped SDK.
    #[arg(long)]
    ts: bool,
}

/// Names the crate cannot take: Rust's keywords (the task's function is
/// named after the crate), crates cargo or the crate itself depends on,
/// and the example's own items.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "gen",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "test",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "serde",
    "serde_json",
    "schemars",
    "kiln_sdk",
    "greeting",
    "tests",
];

/// Whether `name` is a crate name and a task id Kiln takes: a lowercase
/// letter, then lowercase letters, digits, `-` and `_`, at most 64, and
/// not one of [`RESERVED`].
fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !RESERVED.contains(&name.replace('-', "_").as_str())
}

/// Where the guest SDK of this version lives: written there on first use.
fn sdk_home() -> anyhow::Result<PathBuf> {
    let home = match std::env::var_os("KILN_HOME") {
        Some(home) => PathBuf::from(home),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".kiln"))
            .context(
                "neither KILN_HOME nor HOME is set: say where the guest SDK goes with KILN_HOME",
            )?,
    };
    let dir = home
        .join("sdk")
        .join(format!("{}-{}", env!("CARGO_PKG_VERSION"), sdk::HASH));
    // The crate's manifest names it: relative to the crate, a relative
    // path would point elsewhere.
    std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))
}

/// Writes the SDK's files under `dir` unless a complete copy is there:
/// into a fresh directory beside it, renamed into place at the end, so a
/// copy cut short is never used.
fn install_sdk(dir: &Path) -> anyhow::Result<()> {
    let complete = dir.join(".complete");
    if complete.exists() {
        return Ok(());
    }
    let parent = dir.parent().context("the SDK directory has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    for (path, text) in sdk::FILES {
        let file = staging.join(path);
        if let Some(folder) = file.parent() {
            std::fs::create_dir_all(folder)?;
        }
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    std::fs::write(staging.join(".complete"), "")?;
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        // Another `kiln init` finished first: its copy is the same.
        Err(_) if complete.exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(e) => {
            // A copy cut short by an earlier crash: replace it.
            let _ = std::fs::remove_dir_all(dir);
            let moved = std::fs::rename(&staging, dir);
            if moved.is_err() && complete.exists() {
                let _ = std::fs::remove_dir_all(&staging);
                return Ok(());
            }
            moved.with_context(|| format!("moving the SDK into {}: {e}", dir.display()))
        }
    }
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    let kiln_sdk = sdk.join("guest-sdk").join("kiln-sdk");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# `cdylib` is the bundle `kiln build` makes; `rlib` lets `cargo test` run.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The guest SDK of Kiln {version}, written there by `kiln init`.
kiln-sdk = {{ path = {path:?} }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
schemars = "1"

# A crate of its own, even inside another workspace.
[workspace]
"#,
        version = env!("CARGO_PKG_VERSION"),
        path = kiln_sdk.to_string_lossy().replace('\\', "/"),
    )
}

fn lib_rs(name: &str) -> String {
    let function = name.replace('-', "_");
    format!(
        r#"//! The `{name}` bundle: its tasks, built with `kiln build` and deployed
//! with `kiln deploy`.

use kiln_sdk::{{Context, TaskError, task}};
use schemars::JsonSchema;
use serde::{{Deserialize, Serialize}};

/// What the task is triggered with (its JSON Schema is checked at trigger
/// time).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Hello {{
    /// Who to greet.
    pub name: String,
}}

/// What the task returns.
#[derive(Debug, Serialize)]
pub struct Greeting {{
    /// The greeting.
    pub message: String,
}}

/// The greeting for `name`.
pub fn greeting(name: &str) -> String {{
    format!("Hello, {{name}}!")
}}

/// Greets, and logs whom.
#[task(id = "{name}")]
pub async fn {function}(payload: Hello, ctx: &Context) -> Result<Greeting, TaskError> {{
    ctx.log.info("greeting", &[("name", &payload.name)]);
    Ok(Greeting {{
        message: greeting(&payload.name),
    }})
}}

kiln_sdk::bundle!({function});

#[cfg(test)]
mod tests {{
    #[test]
    fn greets_by_name() {{
        assert_eq!(super::greeting("Ada"), "Hello, Ada!");
    }}
}}
"#
    )
}

/// Makes the crate.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = std::path::absolute(&args.name)
        .with_context(|| format!("resolving {}", args.name.display()))?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .unwrap_or_default();
    if !valid_name(&name) {
        bail!(
            "`{name}` cannot name a bundle: use a lowercase letter, then lowercase letters, digits, `-` and `_` (64 at most), and not a Rust keyword or a crate the bundle uses"
        );
    }
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(true)
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    let sdk = sdk_home()?;
    if sdk.to_str().is_none_or(|s| s.contains('"')) {
        bail!(
            "the SDK's directory {} cannot be written in a Cargo.toml: set KILN_HOME to a plain path",
            sdk.display()
        );
    }
    install_sdk(&sdk)?;
    if args.ts {
        return init_ts(&dir, &name, &sdk);
    }
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("Cargo.toml"), cargo_toml(&name, &sdk))?;
    std::fs::write(dir.join("src/lib.rs"), lib_rs(&name))?;
    std::fs::write(dir.join("rust-toolchain.toml"), TOOLCHAIN)?;
    std::fs::write(dir.join("Cargo.lock"), LOCK)?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    created("the bundle crate", &dir, &name)
}

/// The example task of a TypeScript project.
fn index_ts(name: &str) -> String {
    format!(
        r#"// The `{name}` bundle's tasks: `kiln build` bundles this project into a
// WebAssembly component, and `kiln deploy` deploys it.

import {{ schemaTask, logger, wait }} from "@kiln/sdk";
import {{ z }} from "zod";

export const greet = schemaTask({{
  id: "{name}",
  // Checked when the run is triggered: a payload without `name` is refused.
  schema: z.object({{ name: z.string().min(1) }}),
  run: async ({{ name }}) => {{
    logger.info("greeting", {{ name }});
    // A durable wait: the run holds no memory or worker while it waits.
    await wait.for({{ seconds: 1 }});
    return {{ message: `Hello, ${{name}}!` }};
  }},
}});
"#
    )
}

/// Makes a TypeScript project: `package.json`, `src/index.ts`, and a
/// `tsconfig.json` whose paths point editors at the SDK written beside the
/// Rust one.
fn init_ts(dir: &Path, name: &str, sdk: &Path) -> anyhow::Result<ExitCode> {
    let ts_sdk = sdk.join("guest-sdk").join("ts").join("src");
    // Written again each time, so editors see the SDK this `kiln` builds
    // with.
    std::fs::create_dir_all(&ts_sdk)?;
    for (file, text) in kiln_bundle::ts_sdk_sources() {
        let path = ts_sdk.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let package = serde_json::json!({
        "name": name,
        "private": true,
        "type": "module",
        "main": "src/index.ts",
        "devDependencies": { "zod": kiln_bundle::ts_zod_version() },
    });
    std::fs::write(
        dir.join("package.json"),
        serde_json::to_string_pretty(&package)? + "\n",
    )?;
    let index = ts_sdk.join("index.ts").to_string_lossy().replace('\\', "/");
    let tsconfig = serde_json::json!({
        "compilerOptions": {
            "target": "es2022",
            "module": "es2022",
            "moduleResolution": "bundler",
            "strict": true,
            "noEmit": true,
            "paths": { "@kiln/sdk": [index] },
        },
        "include": ["src"],
    });
    std::fs::write(
        dir.join("tsconfig.json"),
        serde_json::to_string_pretty(&tsconfig)? + "\n",
    )?;
    std::fs::write(dir.join("src/index.ts"), index_ts(name))?;
    std::fs::write(dir.join(".gitignore"), "/dist\n/node_modules\n")?;
    created("the TypeScript project", dir, name)
}

/// Says what was made, and the commands that build, deploy and run it.
fn created(what: &str, dir: &Path, name: &str) -> anyhow::Result<ExitCode> {
    println!("Created {what} {} with the task `{name}`.", dir.display());
    println!(
        "  kiln build {}            # prints the bundle's path last",
        dir.display()
    );
    println!("  kiln deploy <bundle>");
    println!("  kiln trigger {name} --payload '{{\"name\":\"Ada\"}}' --wait");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_crate_names_and_task_ids() {
        assert!(valid_name("hello"));
        assert!(valid_name("my-task_2"));
        assert!(!valid_name("2fast"));
        assert!(!valid_name("has space"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(!valid_name("Hello"));
        assert!(!valid_name("type"));
        assert!(!valid_name("greeting"));
        assert!(!valid_name("serde-json"));
    }

    #[test]
    fn the_sdk_is_carried_whole_and_standalone() {
        let paths: Vec<&str> = sdk::FILES.iter().map(|(p, _)| *p).collect();
        for needed in [
            "guest-sdk/kiln-sdk/Cargo.toml",
            "guest-sdk/kiln-sdk/src/lib.rs",
            "guest-sdk/kiln-sdk/src/allocator.rs",
            "guest-sdk/kiln-sdk-macros/Cargo.toml",
            "runtime/manifest/Cargo.toml",
            "wit/kiln.wit",
        ] {
            assert!(paths.contains(&needed), "{needed} is carried");
        }
        for (path, text) in sdk::FILES {
            if path.ends_with("Cargo.toml") {
                assert!(!text.contains("workspace = true"), "{path}:\n{text}");
            }
        }
    }
}
