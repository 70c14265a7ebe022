//! The orchestration examples, end to end: `onboarding` (waits) and
//! `approval` (a wait token completed by a "human").

use crate::harness::{Kiln, data_dir};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn onboarding_sends_welcome_tips_and_offer_in_order_across_suspensions() {
    let dir = data_dir();
    // No warm waits: every wait suspends the run.
    let kiln = Kiln::start_with(dir.path(), &["--warm-wait-ms", "0"]);
    kiln.deploy(kiln_fixtures::ONBOARDING).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let id = kiln
        .trigger_ok(
            "onboarding",
            json!({"email": "ada@example.com", "name": "Ada", "day_ms": 400, "offer_at_ms": now + 1_200}),
        )
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let sent = run["output"]["sent"].as_array().unwrap();
    let messages: Vec<&str> = sent
        .iter()
        .map(|s| s["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["welcome", "tips", "offer"]);
    let at: Vec<u64> = sent.iter().map(|s| s["at_ms"].as_u64().unwrap()).collect();
    assert!(
        at[1] - at[0] >= 400,
        "a day (400 ms) between welcome and tips: {at:?}"
    );
    assert!(at[2] >= now + 1_200, "the offer waits for its date: {at:?}");
    let suspended = kiln
        .journal(&id)
        .await
        .iter()
        .filter(|e| e["type"] == "SUSPENDED")
        .count();
    assert_eq!(suspended, 2);
    // A bad email is refused at trigger time by the payload's schema.
    let (status, body) = kiln
        .trigger(
            "onboarding",
            json!({"email": "nope", "name": "X"}),
            json!({}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn approval_waits_for_a_reviewer_and_publishes() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::APPROVAL).await;
    let approve = kiln
        .trigger_ok(
            "draft-approval",
            json!({"title": "Launch Day", "body": "We ship today."}),
        )
        .await;
    let reject = kiln
        .trigger_ok(
            "draft-approval",
            json!({"title": "Hot take", "body": "..."}),
        )
        .await;
    let expire = kiln
        .trigger_ok(
            "draft-approval",
            json!({"title": "Old news", "body": "...", "review_timeout": "1s"}),
        )
        .await;
    // The reviewer reads each run's log line for its token's URL.
    let mut urls = Vec::new();
    for id in [&approve, &reject] {
        let mut url = None;
        for _ in 0..200 {
            let run = kiln.run(id).await;
            url = run["attempts"][0]["logs"]
                .as_array()
                .and_then(|logs| logs.iter().find(|l| l["message"] == "review requested"))
                .and_then(|l| l["fields"]["url"].as_str().map(String::from));
            if url.is_some() && run["status"] == "WAITING" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        urls.push(url.expect("the run logged its review URL"));
    }
    let http = reqwest::Client::new();
    for (url, review) in urls.iter().zip([
        json!({"approved": true, "comment": "great"}),
        json!({"approved": false, "comment": "not now"}),
    ]) {
        let response = http
            .post(url)
            .header("content-type", "application/json")
            .body(review.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
    let run = kiln.finished(&approve).await;
    assert_eq!(
        run["output"],
        json!({"outcome": "published", "slug": "launch-day", "comment": "great"}),
        "{run}"
    );
    let run = kiln.finished(&reject).await;
    assert_eq!(
        run["output"],
        json!({"outcome": "rejected", "comment": "not now"})
    );
    let run = kiln.finished(&expire).await;
    assert_eq!(run["output"], json!({"outcome": "expired"}));
    let (_, tokens) = kiln
        .request(
            Method::GET,
            "/api/v1/waitpoints/tokens?filter%5Btags%5D=approval",
            None,
        )
        .await;
    assert_eq!(tokens["data"].as_array().unwrap().len(), 3);
}
