//! Wait tokens: created by a backend or a task, completed through the API,
//! the callback URL or across a restart, and timing out.

use crate::harness::{Kiln, data_dir};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

async fn create_token(kiln: &Kiln, body: Value) -> Value {
    let (status, token) = kiln
        .request(
            Method::POST,
            "/api/v1/waitpoints/tokens",
            Some(body.to_string().into()),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    token
}

async fn wait_for_status(kiln: &Kiln, id: &str, status: &str) {
    for _ in 0..200 {
        if kiln.run(id).await["status"] == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {id} never reached {status}");
}

async fn complete(kiln: &Kiln, token: &str, body: Value) -> (u16, Value) {
    kiln.request(
        Method::POST,
        &format!("/api/v1/waitpoints/tokens/{token}/complete"),
        Some(body.to_string().into()),
    )
    .await
}

#[tokio::test]
async fn a_token_completed_across_a_restart_resumes_its_run_once() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let token = create_token(
        &kiln,
        json!({"timeout": "1h", "tags": ["approval"], "idempotencyKey": "draft-1"}),
    )
    .await;
    let id = token["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("waitpoint_"), "{token}");
    assert_eq!(token["isCached"], false);
    // The same idempotency key gives the same token.
    let again = create_token(&kiln, json!({"idempotencyKey": "draft-1"})).await;
    assert_eq!(
        (again["id"].clone(), again["isCached"].clone()),
        (json!(id), json!(true))
    );

    let run = kiln.trigger_ok("wait-token", json!({"token": id})).await;
    wait_for_status(&kiln, &run, "WAITING").await;
    kiln.kill();

    let kiln = Kiln::start(dir.path());
    let (status, body) = complete(&kiln, &id, json!({"data": {"approved": true}})).await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let done = kiln.finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["output"]["data"], json!({"approved": true}));
    let wakes = kiln
        .journal(&run)
        .await
        .iter()
        .filter(|e| e["type"] == "WAKE")
        .count();
    assert_eq!(wakes, 1);
    // Completing again changes nothing; the token shows its data.
    let (status, _) = complete(&kiln, &id, json!({"data": "late"})).await;
    assert_eq!(status, 200);
    let (_, got) = kiln
        .request(
            Method::GET,
            &format!("/api/v1/waitpoints/tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(got["status"], "COMPLETED");
    assert_eq!(got["output"], json!({"approved": true}).to_string());
    assert_eq!(got["tags"], json!(["approval"]));
    let (status, _) = complete(&kiln, "waitpoint_nope", json!({})).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_token_that_times_out_gives_the_timeout_error() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let run = kiln
        .trigger_ok("wait-token", json!({"timeout": "1s"}))
        .await;
    let done = kiln.finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let token = done["output"]["token"].as_str().unwrap();
    assert!(
        done["output"]["timeout"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{done}"
    );
    let (_, got) = kiln
        .request(
            Method::GET,
            &format!("/api/v1/waitpoints/tokens/{token}"),
            None,
        )
        .await;
    assert_eq!(got["status"], "TIMED_OUT");
    let (status, error) = complete(&kiln, token, json!({"data": 1})).await;
    assert_eq!(status, 422, "{error}");
}

#[tokio::test]
async fn a_token_made_by_a_task_completes_through_its_callback_url() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let run = kiln
        .trigger_ok("wait-token", json!({"timeout": "10m"}))
        .await;
    wait_for_status(&kiln, &run, "WAITING").await;
    let (status, list) = kiln
        .request(
            Method::GET,
            "/api/v1/waitpoints/tokens?filter%5Bstatus%5D=WAITING&filter%5Btags%5D=probe",
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let token = &list["data"][0];
    let url = token["url"].as_str().unwrap();
    assert!(url.starts_with(&kiln.url), "{url}");
    // A wrong signature is refused; the right one needs no API key.
    let forged = format!("{}x", url);
    let response = reqwest::Client::new()
        .post(&forged)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(json!({"choice": "ship it"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let done = kiln.finished(&run).await;
    assert_eq!(
        done["output"]["data"],
        json!({"choice": "ship it"}),
        "{done}"
    );
    assert_eq!(done["output"]["token"], token["id"]);
}
