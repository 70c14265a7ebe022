//! The compatibility suite: Node scripts in `tests/sdk/scripts` drive a live
//! Kiln server with the official `@trigger.dev/sdk` (pinned in
//! `tests/sdk/package.json`, installed by `scripts/sdk-deps`, which the test
//! command runs first).

use crate::harness::{KEY, Kiln, data_dir};
use std::path::PathBuf;
use std::process::Command;

/// The compatibility package: `tests/sdk`.
fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk")
}

/// Runs `tests/sdk/scripts/<script>` against `kiln` with `key`, asserting
/// that it exits 0; returns what it printed.
pub(crate) fn node(kiln: &Kiln, script: &str, key: &str, env: &[(&str, &str)]) -> String {
    let dir = sdk_dir();
    assert!(
        dir.join("node_modules/@trigger.dev/sdk/package.json")
            .exists(),
        "the official SDK is not installed in {}: run scripts/sdk-deps (the test command does)",
        dir.display()
    );
    let output = Command::new("node")
        .arg(format!("scripts/{script}"))
        .current_dir(&dir)
        .env("TRIGGER_API_URL", &kiln.url)
        .env("TRIGGER_SECRET_KEY", key)
        .envs(env.iter().copied())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    stdout
}

#[tokio::test]
async fn a_backend_drives_kiln_with_the_official_sdk() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let out = node(&kiln, "backend.mjs", KEY, &[]);
    assert!(out.contains("backend: all steps passed"), "{out}");
}

#[tokio::test]
async fn a_frontend_reads_subscribes_and_triggers_with_public_tokens() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let out = node(&kiln, "frontend.mjs", KEY, &[]);
    assert!(out.contains("frontend: all steps passed"), "{out}");
}

#[tokio::test]
async fn the_sdk_signs_public_tokens_itself_with_a_key_of_another_shape() {
    let dir = data_dir();
    let key = "kiln-root-key-of-another-shape-1234";
    let (child, url) = kiln_fixtures::spawn_kiln(crate::harness::kiln_bin(), dir.path(), key, &[]);
    let kiln = Kiln::adopt(child, url);
    let (status, body) = kiln
        .deploy_bytes_with_key(kiln_fixtures::read(kiln_fixtures::PROBE), key)
        .await;
    assert_eq!(status, 200, "{body}");
    let out = node(&kiln, "self-signed.mjs", key, &[]);
    assert!(out.contains("self-signed: all steps passed"), "{out}");
}

#[tokio::test]
async fn schedules_are_managed_with_the_official_sdk() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::DIGEST).await;
    let out = node(&kiln, "schedules.mjs", KEY, &[]);
    assert!(out.contains("schedules: all steps passed"), "{out}");
}

#[tokio::test]
async fn streams_read_follows_a_task_streaming_its_answer() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let out = node(&kiln, "streams.mjs", KEY, &[]);
    assert!(out.contains("streams: all steps passed"), "{out}");
}
