//! Schedules: the wire API and CLI, declarative sync on deploy, and firing
//! each occurrence once across SIGKILL (with a schedule clock running 120
//! times faster than real time, so a minute passes in half a second).

use crate::harness::{Kiln, data_dir};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

async fn create(kiln: &Kiln, body: Value) -> (u16, Value) {
    kiln.request(
        Method::POST,
        "/api/v1/schedules",
        Some(body.to_string().into()),
    )
    .await
}

pub(crate) async fn create_ok(kiln: &Kiln, body: Value) -> Value {
    let (status, schedule) = create(kiln, body).await;
    assert_eq!(status, 200, "{schedule}");
    schedule
}

async fn list_all(kiln: &Kiln) -> Vec<Value> {
    let (status, list) = kiln
        .request(Method::GET, "/api/v1/schedules?perPage=100", None)
        .await;
    assert_eq!(status, 200, "{list}");
    list["data"].as_array().cloned().unwrap_or_default()
}

fn declarative(schedules: &[Value]) -> Vec<Value> {
    schedules
        .iter()
        .filter(|s| s["type"] == "DECLARATIVE")
        .cloned()
        .collect()
}

#[tokio::test]
async fn schedules_through_the_wire_api_and_the_cli() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::DIGEST).await;

    // The declarative schedule of daily-digest came with the deploy.
    let all = list_all(&kiln).await;
    let declared = declarative(&all);
    assert_eq!(declared.len(), 1, "{all:?}");
    let d = &declared[0];
    assert_eq!(d["task"], "daily-digest");
    assert_eq!(d["generator"]["expression"], "0 9 * * 1-5");
    assert_eq!(d["timezone"], "America/New_York");
    assert_eq!(d["active"], true);
    // 09:00 in New York is 13:00 or 14:00 UTC.
    let next = d["nextRun"].as_str().expect("a next run");
    assert!(
        next.contains("T13:00:00") || next.contains("T14:00:00"),
        "{next}"
    );

    // Create, then create again with the same deduplication key: an update.
    let body = json!({
        "task": "tenant-digest", "cron": "0 8 * * *", "timezone": "Europe/Paris",
        "externalId": "acme", "deduplicationKey": "digest:acme",
    });
    let first = create_ok(&kiln, body.clone()).await;
    let id = first["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sched_"), "{first}");
    assert_eq!(first["type"], "IMPERATIVE");
    assert_eq!(first["externalId"], "acme");
    assert_eq!(first["deduplicationKey"], "digest:acme");
    assert_eq!(first["generator"]["type"], "CRON");
    assert!(
        first["generator"]["description"]
            .as_str()
            .unwrap()
            .contains("08:00"),
        "{first}"
    );
    assert_eq!(first["environments"][0]["type"], "DEVELOPMENT");
    let mut again = body.clone();
    again["cron"] = json!("0 7 * * *");
    let second = create_ok(&kiln, again).await;
    assert_eq!(second["id"], first["id"], "the same key updates");
    assert_eq!(second["generator"]["expression"], "0 7 * * *");
    assert_ne!(second["nextRun"], first["nextRun"]);
    let mut other = body.clone();
    other["deduplicationKey"] = json!("digest:globex");
    other["externalId"] = json!("globex");
    let globex = create_ok(&kiln, other).await;
    assert_ne!(globex["id"], first["id"]);

    // Refusals name the problem.
    let refused = [
        (
            json!({"task": "preview-digest", "cron": "0 8 * * *"}),
            422,
            "not a scheduled task",
        ),
        (
            json!({"task": "nope", "cron": "0 8 * * *"}),
            422,
            "Task `nope` not found",
        ),
        (
            json!({"task": "tenant-digest", "cron": "0 8 * *"}),
            422,
            "5 fields",
        ),
        (
            json!({"task": "tenant-digest", "cron": "0 25 * * *"}),
            422,
            "invalid cron expression",
        ),
        (
            json!({"task": "tenant-digest", "cron": "0 8 * * *", "timezone": "Moon/Base"}),
            422,
            "unknown time zone `Moon/Base`",
        ),
        (
            json!({"task": "tenant-digest"}),
            400,
            "missing field `cron`",
        ),
    ];
    for (body, status, message) in refused {
        let (got, error) = create(&kiln, body.clone()).await;
        assert_eq!(got, status, "{body} -> {error}");
        assert!(
            error["error"].as_str().unwrap().contains(message),
            "{body} -> {error}"
        );
    }

    // Retrieve, update, deactivate, activate.
    let path = format!("/api/v1/schedules/{id}");
    let (status, got) = kiln.request(Method::GET, &path, None).await;
    assert_eq!((status, &got["id"]), (200, &json!(id)));
    let update = json!({"task": "tenant-digest", "cron": "15 6 * * 1", "externalId": "acme"});
    let (status, updated) = kiln
        .request(Method::PUT, &path, Some(update.to_string().into()))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["generator"]["expression"], "15 6 * * 1");
    assert_eq!(updated["timezone"], "UTC", "a zone left out is UTC");
    let (_, off) = kiln
        .request(Method::POST, &format!("{path}/deactivate"), None)
        .await;
    assert_eq!(off["active"], false);
    assert!(off.get("nextRun").is_none(), "{off}");
    let (_, on) = kiln
        .request(Method::POST, &format!("{path}/activate"), None)
        .await;
    assert_eq!(on["active"], true);
    assert!(
        on["nextRun"].as_str().unwrap().contains("T06:15:00"),
        "{on}"
    );

    // A declarative schedule changes only with the bundle.
    let declared_path = format!("/api/v1/schedules/{}", d["id"].as_str().unwrap());
    let (status, error) = kiln
        .request(Method::PUT, &declared_path, Some(update.to_string().into()))
        .await;
    assert_eq!(status, 422, "{error}");
    assert!(error["error"].as_str().unwrap().contains("declarative"));
    let (status, _) = kiln.request(Method::DELETE, &declared_path, None).await;
    assert_eq!(status, 422);

    // Paging and the external id filter.
    let (_, page) = kiln
        .request(Method::GET, "/api/v1/schedules?page=2&perPage=2", None)
        .await;
    assert_eq!(
        page["pagination"],
        json!({"currentPage": 2, "totalPages": 2, "count": 3})
    );
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let (_, acme) = kiln
        .request(Method::GET, "/api/v1/schedules?externalId=acme", None)
        .await;
    assert_eq!(acme["data"].as_array().unwrap().len(), 1);
    assert_eq!(acme["data"][0]["id"], json!(id));

    // The CLI speaks the same API.
    let out = kiln.cli(&[
        "schedules",
        "create",
        "--task",
        "tenant-digest",
        "--cron",
        "0 6 * * *",
        "--timezone",
        "Asia/Tokyo",
        "--external-id",
        "initech",
        "--dedup-key",
        "digest:initech",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sched_") && text.contains("Asia/Tokyo"),
        "{text}"
    );
    let out = kiln.cli(&["schedules", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("initech") && text.contains("(4 schedules)"),
        "{text}"
    );
    let out = kiln.cli(&["schedules", "timezones"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("America/New_York"));
    let out = kiln.cli(&[
        "schedules",
        "create",
        "--task",
        "preview-digest",
        "--cron",
        "0 6 * * *",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a scheduled task") && stderr.contains("(HTTP 422)"),
        "{stderr}"
    );

    // Delete.
    let (status, deleted) = kiln.request(Method::DELETE, &path, None).await;
    assert_eq!((status, deleted), (200, json!({"id": id})));
    let (status, _) = kiln.request(Method::GET, &path, None).await;
    assert_eq!(status, 404);
    let (status, _) = kiln.request(Method::DELETE, &path, None).await;
    assert_eq!(status, 404);

    // The time zone list needs no key.
    let zones: Value = reqwest::get(format!("{}/api/v1/timezones?excludeUtc=true", kiln.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let zones = zones["timezones"].as_array().unwrap();
    assert!(zones.contains(&json!("Europe/Paris")));
    assert!(!zones.contains(&json!("UTC")));
}

#[tokio::test]
async fn declarative_schedules_follow_each_deploy() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::DIGEST).await;
    let tenant = create_ok(
        &kiln,
        json!({"task": "tenant-digest", "cron": "0 8 * * *", "deduplicationKey": "t"}),
    )
    .await;
    let first = declarative(&list_all(&kiln).await);
    assert_eq!(first.len(), 1);
    let daily_id = first[0]["id"].clone();

    // v2 moves daily-digest to 07:30 Paris and adds hourly-cleanup.
    kiln.deploy(kiln_fixtures::DIGEST_V2).await;
    let all = list_all(&kiln).await;
    let v2 = declarative(&all);
    assert_eq!(v2.len(), 2, "{v2:?}");
    let daily = v2.iter().find(|s| s["task"] == "daily-digest").unwrap();
    assert_eq!(daily["id"], daily_id, "a changed cron keeps the schedule");
    assert_eq!(daily["generator"]["expression"], "30 7 * * *");
    assert_eq!(daily["timezone"], "Europe/Paris");
    let hourly = v2.iter().find(|s| s["task"] == "hourly-cleanup").unwrap();
    assert_eq!(hourly["timezone"], "UTC");
    assert!(hourly["nextRun"].as_str().unwrap().contains(":00:00"));
    // Imperative schedules are not touched by a deploy.
    assert!(all.iter().any(|s| s["id"] == tenant["id"]));

    // Back to v1: the cron returns, hourly-cleanup goes.
    kiln.deploy(kiln_fixtures::DIGEST).await;
    let back = declarative(&list_all(&kiln).await);
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0]["id"], daily_id);
    assert_eq!(back[0]["generator"]["expression"], "0 9 * * 1-5");
    assert_eq!(back[0]["timezone"], "America/New_York");

    // A bundle without scheduled tasks removes them all; a restart keeps that.
    kiln.deploy(kiln_fixtures::PROBE).await;
    assert!(declarative(&list_all(&kiln).await).is_empty());
    kiln.kill();
    let kiln = Kiln::start(dir.path());
    let all = list_all(&kiln).await;
    assert!(declarative(&all).is_empty());
    assert_eq!(all.len(), 1, "{all:?}");
}

/// Every run a schedule fired, oldest first, with its payload.
pub(crate) async fn fired_runs(kiln: &Kiln, schedule: &str) -> Vec<Value> {
    let mut ids = Vec::new();
    let mut path = format!("/api/v1/runs?filter%5Bschedule%5D={schedule}&page%5Bsize%5D=100");
    loop {
        let (status, page) = kiln.request(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        for item in page["data"].as_array().unwrap() {
            ids.push(item["id"].as_str().unwrap().to_string());
        }
        match page["pagination"]["next"].as_str() {
            Some(next) => {
                path = format!(
                    "/api/v1/runs?filter%5Bschedule%5D={schedule}&page%5Bsize%5D=100&page%5Bafter%5D={next}"
                )
            }
            None => break,
        }
    }
    ids.reverse();
    let mut runs = Vec::new();
    for id in ids {
        runs.push(kiln.run(&id).await);
    }
    runs
}

pub(crate) async fn wait_for_runs(kiln: &Kiln, schedule: &str, at_least: usize) -> Vec<Value> {
    for _ in 0..100 {
        let runs = fired_runs(kiln, schedule).await;
        if runs.len() >= at_least {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("schedule {schedule} fired fewer than {at_least} runs in 20 s");
}

pub(crate) fn ms(iso: &Value) -> u64 {
    let text = iso.as_str().expect("an ISO time");
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("a valid time");
    (t.unix_timestamp_nanos() / 1_000_000) as u64
}

#[tokio::test]
async fn each_occurrence_fires_exactly_once_across_sigkill() {
    let dir = data_dir();
    // A minute of schedule time passes in 0.5 s.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let clock = format!("{now_ms}:120");
    let args = ["--schedule-clock", clock.as_str()];
    let kiln = Kiln::start_with(dir.path(), &args);
    kiln.deploy(kiln_fixtures::DIGEST).await;
    let schedule = create_ok(
        &kiln,
        json!({"task": "tenant-digest", "cron": "* * * * *", "externalId": "acme", "deduplicationKey": "every-minute"}),
    )
    .await;
    let id = schedule["id"].as_str().unwrap().to_string();

    // SIGKILL at moments that fall anywhere in the firing cycle, then once
    // for 2 s (4 minutes of schedule time) to miss occurrences.
    let mut kiln = kiln;
    for (i, pause) in [730u64, 1_110, 420].into_iter().enumerate() {
        wait_for_runs(&kiln, &id, 2 * (i + 1)).await;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        kiln.kill();
        kiln = Kiln::start_with(dir.path(), &args);
    }
    let before_gap = wait_for_runs(&kiln, &id, 8).await.len();
    kiln.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kiln = Kiln::start_with(dir.path(), &args);
    wait_for_runs(&kiln, &id, before_gap + 3).await;

    // Deactivated, it fires nothing more.
    let path = format!("/api/v1/schedules/{id}");
    let (status, _) = kiln
        .request(Method::POST, &format!("{path}/deactivate"), None)
        .await;
    assert_eq!(status, 200);
    let stopped = fired_runs(&kiln, &id).await.len();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let runs = fired_runs(&kiln, &id).await;
    assert_eq!(runs.len(), stopped, "a deactivated schedule fired");

    // Each occurrence made one run: distinct whole-minute timestamps, each
    // run's lastTimestamp is the previous run's timestamp, and the missed
    // minutes while the server was down fired once, for the latest of them.
    let mut seen = BTreeSet::new();
    let mut gaps = 0;
    for (i, run) in runs.iter().enumerate() {
        let payload = &run["payload"];
        let at = ms(&payload["timestamp"]);
        assert_eq!(at % 60_000, 0, "{payload}");
        assert!(
            seen.insert(at),
            "occurrence {} fired twice",
            payload["timestamp"]
        );
        assert_eq!(payload["scheduleId"], json!(id));
        assert_eq!(payload["externalId"], "acme");
        assert_eq!(payload["type"], "IMPERATIVE");
        assert_eq!(payload["upcoming"].as_array().unwrap().len(), 5);
        assert_eq!(run["schedule"]["id"], json!(id), "{run}");
        assert_eq!(run["schedule"]["generator"]["expression"], "* * * * *");
        assert_eq!(run["taskKind"], "SCHEDULED");
        if i == 0 {
            assert!(payload.get("lastTimestamp").is_none(), "{payload}");
        } else {
            let previous = ms(&runs[i - 1]["payload"]["timestamp"]);
            assert_eq!(ms(&payload["lastTimestamp"]), previous, "{payload}");
            if at - previous >= 3 * 60_000 {
                gaps += 1;
            }
        }
        let done = kiln.finished(run["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(done["output"]["tenant"], "acme");
    }
    assert!(
        gaps >= 1,
        "the 2 s outage should skip occurrences: {seen:?}"
    );

    // Activated again, it carries on from after now.
    let (_, on) = kiln
        .request(Method::POST, &format!("{path}/activate"), None)
        .await;
    assert_eq!(on["active"], true);
    let more = wait_for_runs(&kiln, &id, runs.len() + 1).await;
    let resumed = ms(&more[runs.len()]["payload"]["timestamp"]);
    assert!(resumed > *seen.last().unwrap());
}

#[tokio::test]
async fn runs_list_pages_and_filters() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = kiln
            .trigger_ok("hello-world", json!({"name": format!("n{n}")}))
            .await;
        kiln.finished(&id).await;
        ids.push(id);
    }
    let (status, first) = kiln
        .request(Method::GET, "/api/v1/runs?page%5Bsize%5D=2", None)
        .await;
    assert_eq!(status, 200, "{first}");
    let page_ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(page_ids(&first), vec![ids[4].clone(), ids[3].clone()]);
    assert!(first["pagination"].get("previous").is_none());
    assert_eq!(first["data"][0]["env"]["name"], "dev");
    let next = first["pagination"]["next"].as_str().unwrap();
    let (_, second) = kiln
        .request(
            Method::GET,
            &format!("/api/v1/runs?page%5Bsize%5D=2&page%5Bafter%5D={next}"),
            None,
        )
        .await;
    assert_eq!(page_ids(&second), vec![ids[2].clone(), ids[1].clone()]);
    let previous = second["pagination"]["previous"].as_str().unwrap();
    let (_, back) = kiln
        .request(
            Method::GET,
            &format!("/api/v1/runs?page%5Bsize%5D=2&page%5Bbefore%5D={previous}"),
            None,
        )
        .await;
    assert_eq!(page_ids(&back), page_ids(&first));
    let next = second["pagination"]["next"].as_str().unwrap();
    let (_, last) = kiln
        .request(
            Method::GET,
            &format!("/api/v1/runs?page%5Bsize%5D=2&page%5Bafter%5D={next}"),
            None,
        )
        .await;
    assert_eq!(page_ids(&last), vec![ids[0].clone()]);
    assert!(last["pagination"].get("next").is_none(), "{last}");

    for (query, expected) in [
        ("filter%5Bstatus%5D=COMPLETED,FAILED", 5),
        ("filter%5Bstatus%5D=FAILED", 0),
        ("filter%5BtaskIdentifier%5D=hello-world", 5),
        ("filter%5BtaskIdentifier%5D=other", 0),
        ("filter%5BcreatedAt%5D%5Bperiod%5D=1h", 5),
        ("filter%5BisTest%5D=false", 5),
    ] {
        let (status, page) = kiln
            .request(Method::GET, &format!("/api/v1/runs?{query}"), None)
            .await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(page["data"].as_array().unwrap().len(), expected, "{query}");
    }
    let (status, error) = kiln
        .request(Method::GET, "/api/v1/runs?filter%5Bstatus%5D=DONE", None)
        .await;
    assert_eq!(status, 400);
    assert!(error["error"].as_str().unwrap().contains("`DONE`"));
    let out = kiln.cli(&["runs", "list", "--task", "hello-world", "--limit", "3"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}
