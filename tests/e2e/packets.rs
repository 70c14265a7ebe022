//! Large payloads: the packets flow of the official SDK (presigned upload,
//! then a trigger naming the packet), and payloads and outputs over the
//! inline limit kept apart from their run's record across a restart.

use crate::harness::{Kiln, data_dir};
use serde_json::{Value, json};

/// A JSON payload of about `bytes` bytes.
fn large_payload(bytes: usize) -> Value {
    json!({ "blob": "p".repeat(bytes), "n": 7 })
}

#[tokio::test]
async fn the_sdk_packets_flow_uploads_then_triggers_with_the_stored_payload() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let anonymous = reqwest::Client::new();

    // 1. The SDK asks for a presigned URL...
    let path = "payloads/echo/big.json";
    let (status, presigned) = kiln
        .request(
            reqwest::Method::PUT,
            &format!("/api/v1/packets/{path}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{presigned}");
    assert_eq!(presigned["storagePath"], path);
    let url = presigned["presignedUrl"].as_str().unwrap().to_string();

    // ... which refuses a tampered signature and works without an API key.
    let tampered = anonymous
        .put(url.replace("signature=", "signature=0"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status().as_u16(), 401);
    let payload = large_payload(2 * 1024 * 1024);
    let uploaded = anonymous
        .put(&url)
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status().as_u16(), 200);

    // 2. The trigger names the packet; the run gets the uploaded payload.
    let body = json!({
        "payload": path,
        "options": {"payloadType": "application/store"},
    });
    let (status, triggered) = kiln.post("/api/v1/tasks/echo/trigger", body).await;
    assert_eq!(status, 200, "{triggered}");
    let run = kiln.finished(triggered["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "COMPLETED", "{}", run["error"]);
    assert_eq!(run["output"]["payload"], payload);
    assert_eq!(run["payload"], payload);

    // The download URL hands the bytes back.
    let (status, download) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v2/packets/{path}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{download}");
    let got = anonymous
        .get(download["presignedUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.text().await.unwrap(), payload.to_string());

    // A packet that was never uploaded, or a path with other characters
    // than letters, digits and -_.~/, is a 400.
    let (status, missing) = kiln
        .post(
            "/api/v1/tasks/echo/trigger",
            json!({"payload": "payloads/none.json", "options": {"payloadType": "application/store"}}),
        )
        .await;
    assert_eq!(status, 400, "{missing}");
    assert!(
        missing["error"].as_str().unwrap().contains("No packet"),
        "{missing}"
    );
    let (status, bad) = kiln
        .request(reqwest::Method::PUT, "/api/v1/packets/a%20b", None)
        .await;
    assert_eq!(status, 400, "{bad}");

    // Packets are capped at 10 MB like payloads.
    let (_, presigned) = kiln
        .request(reqwest::Method::PUT, "/api/v1/packets/huge.json", None)
        .await;
    let huge = anonymous
        .put(presigned["presignedUrl"].as_str().unwrap())
        .body(vec![b'x'; 11 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status().as_u16(), 413);
    // The presign endpoints need the API key.
    let unauthorized = anonymous
        .put(format!("{}/api/v1/packets/x.json", kiln.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);
}

#[tokio::test]
async fn large_payloads_and_outputs_survive_a_restart_while_delayed() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let payload = large_payload(3 * 1024 * 1024);
    // Delayed past a SIGKILL, so the attempt reads the payload the record
    // keeps apart after a restart.
    let delayed = kiln
        .trigger_with("echo", payload.clone(), json!({"delay": "2s"}))
        .await;
    let big = kiln
        .trigger_with("big-output", json!({"bytes": 1024 * 1024}), json!({}))
        .await;
    let run = kiln.finished(&big).await;
    assert_eq!(run["status"], "COMPLETED", "{}", run["error"]);
    kiln.kill();

    let kiln = Kiln::start(dir.path());
    let run = kiln.finished(&delayed).await;
    assert_eq!(run["status"], "COMPLETED", "{}", run["error"]);
    assert_eq!(run["output"]["payload"], payload);
    // A large output is not inlined: the retrieve names a signed URL for it.
    let (_, raw) = kiln
        .request(reqwest::Method::GET, &format!("/api/v3/runs/{big}"), None)
        .await;
    assert!(raw.get("output").is_none(), "{}", raw["outputPresignedUrl"]);
    assert!(
        raw["outputPresignedUrl"]
            .as_str()
            .unwrap()
            .contains("signature=")
    );
    let run = kiln.run(&big).await;
    assert_eq!(run["output"].as_str().map(str::len), Some(1024 * 1024));
    // Replay reads the original payload back too.
    let (status, replay) = kiln
        .post(&format!("/api/v1/runs/{delayed}/replay"), json!({}))
        .await;
    assert_eq!(status, 200, "{replay}");
    let run = kiln.finished(replay["id"].as_str().unwrap()).await;
    assert_eq!(run["output"]["payload"], payload);
}

#[tokio::test]
async fn large_payloads_are_validated_and_large_outputs_read_whole() {
    // Over the size at which JSON work moves to the blocking pool: the
    // schema's complaint and the documents must come out the same.
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let blob = "b".repeat(1024 * 1024);
    let (status, body) = kiln
        .trigger("sleep", json!({"ms": "soon", "blob": blob}), json!({}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("payload/ms"), "{body}");
    let id = kiln
        .trigger_with("sleep", json!({"ms": 1, "blob": blob}), json!({}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{}", run["error"]);
    assert_eq!(
        run["payload"]["blob"].as_str().map(str::len),
        Some(blob.len())
    );
    let id = kiln
        .trigger_with("big-output", json!({"bytes": 300 * 1024}), json!({}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{}", run["error"]);
    assert_eq!(run["output"], Value::String("x".repeat(300 * 1024)));
}
