//! `kiln init`: a bundle crate made in an empty directory outside this
//! repository builds with `kiln build` (against the guest SDK the binary
//! carries), deploys, and runs its example task.

use crate::harness::{Kiln, data_dir, kiln_bin};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the CLI in `dir`, with the SDK written under `home`.
fn kiln_in(dir: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(kiln_bin())
        .args(args)
        .current_dir(dir)
        .env("KILN_HOME", home)
        // The fixtures' target directory: the dependencies Kiln's own
        // bundles were built with are compiled there already.
        .env(
            "CARGO_TARGET_DIR",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kiln-guests"),
        )
        .output()
        .expect("the CLI runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn a_crate_made_by_kiln_init_builds_deploys_and_runs() {
    let scratch = tempfile::tempdir().unwrap();
    let (dir, home) = (scratch.path().join("work"), scratch.path().join("home"));
    std::fs::create_dir_all(&dir).unwrap();

    let refused = kiln_in(&dir, &home, &["init", "2fast"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("cannot name a bundle"),
        "{}",
        text(&refused)
    );

    let made = kiln_in(&dir, &home, &["init", "hello-init"]);
    assert!(made.status.success(), "{}", text(&made));
    let manifest = std::fs::read_to_string(dir.join("hello-init/Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&home.join("sdk").to_string_lossy().into_owned()),
        "the crate points at the SDK the binary wrote: {manifest}"
    );
    assert!(dir.join("hello-init/rust-toolchain.toml").exists());
    let again = kiln_in(&dir, &home, &["init", "hello-init"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));

    let built = kiln_in(&dir, &home, &["build", "hello-init"]);
    assert!(built.status.success(), "{}", text(&built));
    let stdout = String::from_utf8_lossy(&built.stdout);
    let bundle = stdout.lines().last().expect("the bundle's path").trim();
    assert!(bundle.ends_with("hello_init.wasm"), "{stdout}");

    let data = data_dir();
    let kiln = Kiln::start(data.path());
    let (status, deployed) = kiln.deploy_bytes(std::fs::read(bundle).unwrap()).await;
    assert_eq!(status, 200, "{deployed}");
    let id = kiln.trigger_ok("hello-init", json!({"name": "Ada"})).await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["message"], "Hello, Ada!");
    // The example task is a schema task: a payload without `name` is
    // refused at trigger time.
    let (status, body) = kiln.trigger("hello-init", json!({}), json!({})).await;
    assert_eq!(status, 422, "{body}");
}
