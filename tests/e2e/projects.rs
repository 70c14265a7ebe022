//! Projects, environments and keys: one server hosting two projects, each
//! with its own deployment, runs and schedules.

use crate::harness::{KEY, Kiln, data_dir};
use crate::sdk::node;
use serde_json::Value;

fn stdout(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

async fn get(kiln: &Kiln, key: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", kiln.url))
        .bearer_auth(key)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn two_projects_share_a_server_and_see_only_their_own() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    // The default project keeps working with the server's key, no flags.
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;

    let project_a = stdout(kiln.cli(&["projects", "create", "Acme", "--ref", "proj_acme"]));
    assert_eq!(project_a, "proj_acme");
    let project_b = stdout(kiln.cli(&["projects", "create", "Beta"]));
    assert!(project_b.starts_with("proj_"), "{project_b}");
    let listed = stdout(kiln.cli(&["projects", "list"]));
    assert!(
        listed.contains("proj_acme") && listed.contains(&project_b),
        "{listed}"
    );
    let key_a = stdout(kiln.cli(&["keys", "create", "--project", "proj_acme", "--env", "prod"]));
    assert!(
        kiln_server::is_secret_key(&key_a) && key_a.starts_with("tr_prod_sk_"),
        "{key_a}"
    );
    let spare_a = stdout(kiln.cli(&["keys", "create", "--project", "proj_acme", "--env", "prod"]));
    let key_b = stdout(kiln.cli(&["keys", "create", "--project", &project_b, "--env", "dev"]));
    let keys = stdout(kiln.cli(&["keys", "list", "--project", "proj_acme"]));
    assert_eq!(keys.lines().count(), 2, "{keys}");
    assert!(!keys.contains(&key_a), "keys are listed masked: {keys}");

    let (status, body) = kiln
        .deploy_bytes_with_key(kiln_fixtures::read(kiln_fixtures::PROBE), &key_a)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = kiln
        .deploy_bytes_with_key(kiln_fixtures::read(kiln_fixtures::DIGEST), &key_b)
        .await;
    assert_eq!(status, 200, "{body}");
    // Each environment lists its own deployment; the default one kept its own.
    for (key, task) in [
        (&key_a, "echo"),
        (&key_b, "daily-digest"),
        (&KEY.to_string(), "hello-world"),
    ] {
        let (status, list) = get(&kiln, key, "/api/v1/deployments").await;
        assert_eq!(status, 200, "{list}");
        let text = list.to_string();
        assert!(text.contains(task), "{task} missing from {text}");
        assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    }

    node(
        &kiln,
        "projects.mjs",
        KEY,
        &[
            ("KEY_A", &key_a),
            ("KEY_B", &key_b),
            ("ADMIN_KEY", KEY),
            ("PROJECT_A", "proj_acme"),
        ],
    );

    // After a restart, projects, keys and runs are where they were: the
    // revoked key stays revoked, the spare key reads project A's runs.
    drop(kiln);
    let kiln = Kiln::start(dir.path());
    let (status, _) = get(&kiln, &key_a, "/api/v1/runs").await;
    assert_eq!(status, 401);
    let (status, runs) = get(&kiln, &spare_a, "/api/v1/runs").await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs["data"].as_array().map(Vec::len), Some(1), "{runs}");
    let (_, runs_b) = get(&kiln, &key_b, "/api/v1/runs").await;
    assert_eq!(runs_b["data"].as_array().map(Vec::len), Some(0), "{runs_b}");
    let (_, runs_default) = get(&kiln, KEY, "/api/v1/runs").await;
    assert_eq!(
        runs_default["data"].as_array().map(Vec::len),
        Some(0),
        "{runs_default}"
    );
}
