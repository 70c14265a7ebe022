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
        // As a user's shell would: the cargo on the PATH, which the crate's
        // own `rust-toolchain.toml` steers, not the one running the tests.
        .env_remove("CARGO")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("KILN_HOME", home)
        // The fixtures' target directory: the dependencies Kiln's own
        // bundles were built with are compiled there already.
        .env(
            "CARGO_TARGET_DIR",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kiln-guests"),
        )
        // The TypeScript toolchain the fixtures installed from npm.
        .env(
            "KILN_TS_TOOLCHAIN",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kiln-ts-toolchain"),
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

#[tokio::test]
async fn a_typescript_project_made_by_kiln_init_builds_deploys_and_runs() {
    let scratch = tempfile::tempdir().unwrap();
    let (dir, home) = (scratch.path().join("work"), scratch.path().join("home"));
    std::fs::create_dir_all(&dir).unwrap();
    let made = kiln_in(&dir, &home, &["init", "--ts", "hello-ts-init"]);
    assert!(made.status.success(), "{}", text(&made));
    let project = dir.join("hello-ts-init");
    assert!(project.join("package.json").exists());
    let tsconfig = std::fs::read_to_string(project.join("tsconfig.json")).unwrap();
    assert!(
        tsconfig.contains("index.ts"),
        "editors find the SDK: {tsconfig}"
    );

    let built = kiln_in(&dir, &home, &["build", "hello-ts-init"]);
    assert!(built.status.success(), "{}", text(&built));
    let stdout = String::from_utf8_lossy(&built.stdout);
    let bundle = stdout.lines().last().expect("the bundle's path").trim();
    assert!(bundle.ends_with("hello-ts-init.wasm"), "{stdout}");

    let data = data_dir();
    let kiln = Kiln::start(data.path());
    let (status, deployed) = kiln.deploy_bytes(std::fs::read(bundle).unwrap()).await;
    assert_eq!(status, 200, "{deployed}");
    let id = kiln
        .trigger_ok("hello-ts-init", json!({"name": "Ada"}))
        .await;
    // A TypeScript run's first attempt loads a multi-MiB component: on a
    // loaded two-core machine that can take a while.
    let run = kiln.finished_within(&id, 8).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["message"], "Hello, Ada!");
    let (status, body) = kiln.trigger("hello-ts-init", json!({}), json!({})).await;
    assert_eq!(status, 422, "{body}");
}

/// The lines a `kiln dev` prints, read as they come.
struct Lines(tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>);

impl Lines {
    /// Reads until a line that contains `text` (at most `secs` seconds);
    /// returns everything read.
    async fn until(&mut self, text: &str, secs: u64) -> String {
        let mut seen = String::new();
        let found = tokio::time::timeout(std::time::Duration::from_secs(secs), async {
            while let Ok(Some(line)) = self.0.next_line().await {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(text) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "kiln dev never printed {text:?}; it printed:\n{seen}"
        );
        seen
    }
}

#[tokio::test]
async fn kiln_dev_deploys_a_new_crate_and_redeploys_it_on_every_save() {
    use tokio::io::AsyncBufReadExt;
    let scratch = tempfile::tempdir().unwrap();
    let (dir, home) = (scratch.path().join("work"), scratch.path().join("home"));
    std::fs::create_dir_all(&dir).unwrap();
    let made = kiln_in(&dir, &home, &["init", "hello-dev"]);
    assert!(made.status.success(), "{}", text(&made));

    let data = data_dir();
    let kiln = Kiln::start(data.path());
    let mut dev = tokio::process::Command::new(kiln_bin())
        .args(["dev", "hello-dev"])
        .current_dir(&dir)
        .env_remove("CARGO")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("KILN_HOME", &home)
        .env("KILN_API_URL", &kiln.url)
        .env("KILN_SECRET_KEY", crate::harness::KEY)
        .env(
            "CARGO_TARGET_DIR",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kiln-guests"),
        )
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kiln dev starts");
    let mut lines = Lines(tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines());
    lines.until("Deployed version", 600).await;
    lines.until("watching", 30).await;

    // A run shows up in the loop's output: its log line and its end.
    let id = kiln.trigger_ok("hello-dev", json!({"name": "Ada"})).await;
    assert_eq!(kiln.finished(&id).await["output"]["message"], "Hello, Ada!");
    let printed = lines.until(&format!("{id}  output"), 30).await;
    assert!(printed.contains("greeting name=Ada"), "{printed}");
    assert!(
        printed.contains(&format!("{id}  hello-dev  COMPLETED")),
        "{printed}"
    );

    // Saving the task redeploys it.
    let source = dir.join("hello-dev/src/lib.rs");
    let code = std::fs::read_to_string(&source).unwrap();
    assert!(code.contains("Hello, {name}!"));
    std::fs::write(&source, code.replace("Hello, {name}!", "Hi, {name}!")).unwrap();
    lines.until("a change; rebuilding", 30).await;
    lines.until("Deployed version", 600).await;
    let id = kiln.trigger_ok("hello-dev", json!({"name": "Ada"})).await;
    assert_eq!(kiln.finished(&id).await["output"]["message"], "Hi, Ada!");
    dev.kill().await.unwrap();
}
