//! Deploying bundles: good ones list their tasks, bad ones are refused with a
//! reason.

use crate::harness::{Kiln, data_dir};
use reqwest::Method;

#[tokio::test]
async fn a_deploy_lists_its_version_and_tasks() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    let first = kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    assert_eq!(first["tasks"][0]["id"], "hello-world");
    assert!(
        first["version"].as_str().unwrap().ends_with(".1"),
        "{first}"
    );
    let second = kiln.deploy(kiln_fixtures::PROBE).await;
    assert!(
        second["version"].as_str().unwrap().ends_with(".2"),
        "{second}"
    );
    let (status, list) = kiln.request(Method::GET, "/api/v1/deployments", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["data"][0]["version"], second["version"]);
}

#[tokio::test]
async fn malformed_bundles_are_refused_with_a_reason() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    let (status, body) = kiln
        .deploy_bytes(b"random bytes, not a bundle".to_vec())
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly binary"),
        "{body}"
    );

    let core = wat::parse_str("(module (func (export \"start\")))").unwrap();
    let (status, body) = kiln.deploy_bytes(core).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module"),
        "{body}"
    );

    let wasi = wat::parse_str(
        r#"(component
             (import "wasi:http/outgoing-handler@0.2.0" (instance))
             (import "kiln:task/host@0.1.0" (instance)))"#,
    )
    .unwrap();
    let (status, body) = kiln.deploy_bytes(wasi).await;
    assert_eq!(status, 422);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("`wasi:http/outgoing-handler@0.2.0`") && error.contains("durable fetch"),
        "{body}"
    );

    // State a snapshot of the one linear memory would miss: a second
    // memory, a mutable global besides the stack pointer, a table the code
    // grows.
    for (core, names) in [
        ("(memory 1) (memory 1)", "2 memories"),
        (
            "(memory 1) (global $__stack_pointer (mut i32) (i32.const 0)) (global $hits (mut i32) (i32.const 0))",
            "`hits`",
        ),
        (
            "(table 1 funcref) (func (drop (table.grow (ref.null func) (i32.const 1))))",
            "table.grow",
        ),
    ] {
        let component = wat::parse_str(format!("(component (core module {core}))")).unwrap();
        let (status, body) = kiln.deploy_bytes(component).await;
        assert_eq!(status, 422, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("state a snapshot would miss") && error.contains(names),
            "{body}"
        );
    }

    // Nothing was deployed by the failures, and the server still serves.
    let (status, list) = kiln.request(Method::GET, "/api/v1/deployments", None).await;
    assert_eq!(status, 200);
    assert!(list["data"].as_array().unwrap().is_empty());
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
}

#[tokio::test]
async fn every_route_wants_the_api_key() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{}/api/v1/deployments", kiln.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Missing API key"));
    let response = client
        .post(format!("{}/api/v1/tasks/hello-world/trigger", kiln.url))
        .bearer_auth("tr_dev_sk_wrongwrongwrongwrongwron")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let health = client
        .get(format!("{}/healthz", kiln.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn kiln_build_prints_the_bundle_path_last() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    // Reuse the fixtures' guest build so this does not compile twice.
    let target = std::path::Path::new(kiln_fixtures::HELLO_WORLD)
        .ancestors()
        .nth(4)
        .unwrap()
        .to_path_buf();
    let output = std::process::Command::new(crate::harness::kiln_bin())
        .args(["build", &format!("{root}/examples/hello-world")])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let path = stdout.lines().last().unwrap();
    assert!(path.ends_with("hello_world.wasm"), "{stdout}");
    let bytes = std::fs::read(path).unwrap();
    assert!(wasmparser_is_component(&bytes));
}

fn wasmparser_is_component(bytes: &[u8]) -> bool {
    // A component's preamble: magic, then version 0x0d with layer 1.
    bytes.len() > 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}
