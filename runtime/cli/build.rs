//! Packs the guest SDK's sources into the `kiln` binary, for `kiln init`:
//! `kiln-sdk`, `kiln-sdk-macros`, `kiln-manifest` and `wit/`, laid out as in
//! this repository, with each `Cargo.toml` made standalone (the workspace's
//! inherited versions and dependencies written out), so a crate made by
//! `kiln init` builds anywhere without this repository.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The SDK's crates and files, relative to the repository's root.
const ROOTS: &[&str] = &[
    "guest-sdk/kiln-sdk",
    "guest-sdk/kiln-sdk-macros",
    "runtime/manifest",
    "wit",
];

/// Internal crates: path dependencies, relative to a crate's directory.
const INTERNAL: &[(&str, &str)] = &[
    ("kiln-manifest", "../../runtime/manifest"),
    ("kiln-sdk-macros", "../kiln-sdk-macros"),
];

fn main() {
    let repo = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("../..")
        .canonicalize()
        .expect("the repository");
    let workspace = std::fs::read_to_string(repo.join("Cargo.toml")).expect("the workspace");
    println!(
        "cargo:rerun-if-changed={}",
        repo.join("Cargo.toml").display()
    );
    let mut files = Vec::new();
    for root in ROOTS {
        collect(&repo.join(root), &mut files);
    }
    files.sort();
    let mut out = String::from(
        "/// The guest SDK's files: path, contents.\npub const FILES: &[(&str, &str)] = &[\n",
    );
    for path in &files {
        let relative = path
            .strip_prefix(&repo)
            .expect("inside the repository")
            .to_string_lossy()
            .replace('\\', "/");
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(path).expect("a text file");
        let text = if relative.ends_with("Cargo.toml") {
            standalone(&text, &workspace)
        } else {
            text
        };
        let _ = writeln!(out, "    ({relative:?}, {text:?}),");
    }
    out.push_str("];\n");
    // Which SDK this is: a new `kiln` whose SDK changed writes its own copy
    // rather than reuse an older one of the same version.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in out.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let _ = writeln!(
        out,
        "/// A hash of the files above (FNV-1a).\npub const HASH: &str = \"{:08x}\";",
        hash >> 32
    );
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("sdk_files.rs");
    std::fs::write(dest, out).expect("written");
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "target" || name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(&path, files);
        } else if name.ends_with(".rs") || name.ends_with(".wit") || name == "Cargo.toml" {
            files.push(path);
        }
    }
}

/// The value of `key` in the workspace's `[workspace.package]` or
/// `[workspace.dependencies]` section.
fn workspace_value(workspace: &str, section: &str, key: &str) -> String {
    let mut in_section = false;
    for line in workspace.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_section = trimmed == section;
            continue;
        }
        if in_section
            && let Some((k, v)) = trimmed.split_once('=')
            && k.trim() == key
        {
            return v.trim().to_string();
        }
    }
    panic!("{key} is not in {section}");
}

/// A member's `Cargo.toml` with every `.workspace = true` written out.
fn standalone(manifest: &str, workspace: &str) -> String {
    let mut out = String::new();
    for line in manifest.lines() {
        let trimmed = line.trim();
        match trimmed.strip_suffix(".workspace = true") {
            Some(key) if ["version", "edition", "license"].contains(&key) => {
                let value = workspace_value(workspace, "[workspace.package]", key);
                let _ = writeln!(out, "{key} = {value}");
            }
            Some(key) => match INTERNAL.iter().find(|(name, _)| *name == key) {
                Some((_, path)) => {
                    let _ = writeln!(out, "{key} = {{ path = {path:?} }}");
                }
                None => {
                    let value = workspace_value(workspace, "[workspace.dependencies]", key);
                    let _ = writeln!(out, "{key} = {value}");
                }
            },
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}
