//! The web dashboard: signing in, paging and filtering runs, a run's page,
//! and, in a real browser (Debian's chromium driven by playwright-core from
//! `tests/sdk`), cancelling a waiting run and seeing it change live.

use crate::harness::{KEY, Kiln, data_dir};
use serde_json::json;
use std::path::PathBuf;

/// A client that keeps no cookies and follows no redirects, to see what the
/// server answers.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn session() -> String {
    format!("kiln_key={KEY}")
}

async fn page(kiln: &Kiln, path: &str) -> (u16, String) {
    page_as(kiln, crate::harness::KEY, path).await
}

/// A page as the session of `key` sees it.
async fn page_as(kiln: &Kiln, key: &str, path: &str) -> (u16, String) {
    let response = client()
        .get(format!("{}{path}", kiln.url))
        .header("cookie", format!("kiln_key={key}"))
        .send()
        .await
        .expect("the server answers");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// The run ids a runs page links to, in order.
fn linked_runs(html: &str) -> Vec<String> {
    html.split("<td><a href=\"/runs/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn the_dashboard_signs_in_with_a_key_and_pages_through_runs() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(
            kiln.trigger_ok("hello-world", json!({ "name": format!("n{n}") }))
                .await,
        );
    }
    for id in &ids {
        kiln.finished(id).await;
    }

    // Signed out: every page sends you to sign in; a wrong key is refused.
    let response = client()
        .get(format!("{}/runs", kiln.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/login");
    let refused = client()
        .post(format!("{}/login", kiln.url))
        .body("key=tr_dev_sk_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 200);
    assert!(refused.text().await.unwrap().contains("not an API key"));
    let signed_in = client()
        .post(format!("{}/login", kiln.url))
        .body(format!("key={KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with(&session()), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));

    // Pages may not be framed by another site.
    let framed = client()
        .get(format!("{}/runs", kiln.url))
        .header("cookie", session())
        .send()
        .await
        .unwrap();
    assert_eq!(framed.headers()["x-frame-options"], "DENY");
    assert_eq!(framed.headers()["x-content-type-options"], "nosniff");

    // 25 runs a page, newest first (ids sort by creation time; runs made
    // in the same millisecond sort by their ids' random part); the next
    // page starts after the last, and the two hold every run once.
    let (status, first) = page(&kiln, "/runs").await;
    assert_eq!(status, 200);
    let first_ids = linked_runs(&first);
    assert_eq!(first_ids.len(), 25);
    assert!(first_ids.windows(2).all(|w| w[0] > w[1]), "{first_ids:?}");
    let older = format!("/runs?older={}", first_ids[24]);
    assert!(first.contains(&older), "the first page links to the next");
    let (_, second) = page(&kiln, &older).await;
    let second_ids = linked_runs(&second);
    assert!(second_ids.windows(2).all(|w| w[0] > w[1]), "{second_ids:?}");
    assert!(second_ids.iter().all(|id| *id < first_ids[24]));
    assert!(
        !second.contains("Older runs"),
        "the last page links no further"
    );
    let mut all: Vec<String> = first_ids.into_iter().chain(second_ids).collect();
    all.sort();
    let mut made = ids.clone();
    made.sort();
    assert_eq!(all, made);
    // Filters select as the API's do.
    let (_, none) = page(&kiln, "/runs?status=FAILED").await;
    assert!(linked_runs(&none).is_empty() && none.contains("No runs match"));
    let (_, by_task) = page(&kiln, "/runs?task=hello-world&status=COMPLETED").await;
    assert_eq!(linked_runs(&by_task).len(), 25);
    let (_, by_batch) = page(&kiln, "/runs?batch=batch_none").await;
    assert!(linked_runs(&by_batch).is_empty());
    // The created range: a duration back from now, or dates.
    let (_, last_hour) = page(&kiln, "/runs?from=1h").await;
    assert_eq!(linked_runs(&last_hour).len(), 25);
    let (_, long_ago) = page(&kiln, "/runs?from=2020-01-01&to=2020-01-02").await;
    assert!(linked_runs(&long_ago).is_empty());
    let created = |n: usize| {
        let ids = &ids;
        let kiln = &kiln;
        async move {
            let run = kiln.run(&ids[n]).await;
            // An RFC 3339 time needs no escaping in a query.
            run["createdAt"].as_str().expect("createdAt").to_string()
        }
    };
    let (_, until_tenth) = page(&kiln, &format!("/runs?to={}", created(9).await)).await;
    let listed = linked_runs(&until_tenth);
    assert!(
        listed.contains(&ids[9]) && listed.contains(&ids[0]),
        "{listed:?}"
    );
    assert!(!listed.contains(&ids[29]), "{listed:?}");
    let (_, from_21st) = page(&kiln, &format!("/runs?from={}", created(20).await)).await;
    let listed = linked_runs(&from_21st);
    assert!(
        listed.contains(&ids[20]) && listed.contains(&ids[29]),
        "{listed:?}"
    );
    assert!(!listed.contains(&ids[0]), "{listed:?}");
    // The far ends of the calendar and of an id's clock select everything.
    let (status, far) = page(&kiln, "/runs?to=9999-12-31").await;
    assert_eq!(status, 200);
    assert_eq!(linked_runs(&far).len(), 25);
    let (status, listed) = kiln
        .request(
            reqwest::Method::GET,
            "/api/v1/runs?filter[createdAt][to]=9007199254740991",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        listed["data"].as_array().map(Vec::len),
        Some(25),
        "{listed}"
    );
    let (status, bad) = page(&kiln, "/runs?from=yesterday").await;
    assert_eq!(status, 400);
    assert!(bad.contains("neither a duration"), "{bad}");

    // A run's page shows its output, logs and journal.
    let (status, run) = page(&kiln, &format!("/runs/{}", ids[0])).await;
    assert_eq!(status, 200);
    assert!(run.contains("Hello, n0!"), "the output is shown");
    assert!(run.contains("greeting"), "the log line is shown");
    assert!(run.contains("attempt started") && run.contains("attempt ended"));

    // Tags filter, and what a trigger wrote is shown as text, never markup.
    let tagged = kiln
        .trigger_with(
            "hello-world",
            json!({"name": "tagged"}),
            json!({"tags": ["<script>alert(1)</script>"]}),
        )
        .await;
    kiln.finished(&tagged).await;
    let (_, by_tag) = page(&kiln, "/runs?tag=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(linked_runs(&by_tag), std::slice::from_ref(&tagged));
    assert!(!by_tag.contains("<script>alert"), "the tag is escaped");
    assert!(by_tag.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    // Posts come only from the dashboard's own pages, with a session.
    let cancel = format!("{}/runs/{tagged}/cancel", kiln.url);
    let forged = client()
        .post(&cancel)
        .header("cookie", session())
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let signed_out = client().post(&cancel).send().await.unwrap();
    assert_eq!(signed_out.status(), 401);
    let own = client()
        .post(&cancel)
        .header("cookie", session())
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 303);
    assert_eq!(own.headers()["x-frame-options"], "DENY");

    // A delayed run is rescheduled from its page.
    let delayed = kiln
        .trigger_with(
            "hello-world",
            json!({"name": "later"}),
            json!({"delay": "1h"}),
        )
        .await;
    let (_, before) = page(&kiln, &format!("/runs/{delayed}")).await;
    assert!(before.contains("Reschedule"), "a delayed run offers it");
    let first_due = kiln.run(&delayed).await["delayedUntil"].clone();
    let (status, _) = post_form(&kiln, &format!("/runs/{delayed}/reschedule"), "delay=3h").await;
    assert_eq!(status, 303);
    let moved = kiln.run(&delayed).await;
    assert_eq!(moved["status"], "DELAYED");
    assert!(
        moved["delayedUntil"].as_str() > first_due.as_str(),
        "{first_due} -> {}",
        moved["delayedUntil"]
    );
    let (status, refused) = post_form(
        &kiln,
        &format!("/runs/{delayed}/reschedule"),
        "delay=soonish",
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.contains("delay"), "{refused}");
    let (_, finished) = page(&kiln, &format!("/runs/{}", ids[0])).await;
    assert!(
        !finished.contains("Reschedule"),
        "only a delayed run offers it"
    );

    // Bad input gets a clear page, not a crash.
    let response = client()
        .get(format!("{}/runs?status=NOPE", kiln.url))
        .header("cookie", session())
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let (status, bad) = page(&kiln, "/runs?status=NOPE").await;
    assert_eq!(status, 400);
    assert!(bad.contains("not a run status"));
    let (status, _) = page(&kiln, "/runs/run_doesnotexist").await;
    assert_eq!(status, 404);
    let (status, _) = page(&kiln, "/runs?older=%3Cscript%3E").await;
    assert_eq!(status, 400);
}

/// The compatibility package, where playwright-core is installed.
fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk")
}

#[tokio::test]
async fn in_a_browser_a_waiting_run_is_canceled_and_changes_live() {
    let node = node_dir();
    assert!(
        node.join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in {}: run scripts/sdk-deps (the test command does)",
        node.display()
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed: run scripts/browser-deps (the test command does)"
    );
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--warm-wait-ms", "0"]);
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;
    let done = kiln
        .trigger_ok("countdown", json!({"steps": 1, "wait_ms": 10}))
        .await;
    assert_eq!(kiln.finished(&done).await["status"], "COMPLETED");
    let waiting = kiln
        .trigger_ok("countdown", json!({"steps": 2, "wait_ms": 600_000}))
        .await;
    kiln.until_status(&waiting, "WAITING").await;

    // `KILN_WRITE_SCREENSHOTS=1` keeps the screenshots in `docs/`.
    let keep = std::env::var_os("KILN_WRITE_SCREENSHOTS").is_some();
    let scratch = tempfile::tempdir().unwrap();
    let shots = if keep {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
    } else {
        scratch.path().to_path_buf()
    };
    std::fs::create_dir_all(&shots).unwrap();
    let shots_dir = shots.to_string_lossy().into_owned();
    crate::sdk::node(
        &kiln,
        "dashboard.mjs",
        KEY,
        &[
            ("WAITING_RUN", waiting.as_str()),
            ("DONE_RUN", done.as_str()),
            ("SCREENSHOTS", shots_dir.as_str()),
        ],
    );
    for shot in ["runs.png", "run.png", "queues.png"] {
        let bytes = std::fs::read(shots.join(shot)).expect("a screenshot");
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
    // What the browser saw is what the API says.
    assert_eq!(kiln.run(&waiting).await["status"], "CANCELED");
}

/// Posts a form as the dashboard's own page does.
async fn post_form(kiln: &Kiln, path: &str, form: &str) -> (u16, String) {
    let response = client()
        .post(format!("{}{path}", kiln.url))
        .header("cookie", session())
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string())
        .send()
        .await
        .expect("the server answers");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn the_dashboard_completes_tokens_and_manages_schedules_and_queues() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::DIGEST).await;

    // A wait token, completed from its page with JSON data.
    let (_, token) = kiln.post("/api/v1/waitpoints/tokens", json!({})).await;
    let token = token["id"].as_str().expect("a token id").to_string();
    let (status, tokens) = page(&kiln, "/tokens").await;
    assert_eq!(status, 200);
    assert!(tokens.contains(&token) && tokens.contains("WAITING"));
    let (status, refused) =
        post_form(&kiln, &format!("/tokens/{token}/complete"), "data=%7Bnope").await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.contains("not JSON"));
    let (status, _) = post_form(
        &kiln,
        &format!("/tokens/{token}/complete"),
        "data=%7B%22approved%22%3Atrue%7D",
    )
    .await;
    assert_eq!(status, 303);
    let (_, completed) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/waitpoints/tokens/{token}"),
            None,
        )
        .await;
    assert_eq!(completed["status"], "COMPLETED", "{completed}");
    assert_eq!(completed["output"], r#"{"approved":true}"#, "{completed}");

    // A schedule: created from the form, paused, resumed, deleted.
    let (status, bad) = post_form(&kiln, "/schedules", "task=tenant-digest&cron=not+a+cron").await;
    assert_eq!(status, 422, "{bad}");
    assert!(bad.contains("invalid cron expression"));
    let (status, _) = post_form(
        &kiln,
        "/schedules",
        "task=tenant-digest&cron=0+8+*+*+*&timezone=Europe%2FParis&externalId=acme",
    )
    .await;
    assert_eq!(status, 303);
    let (_, listed) = kiln
        .request(reqwest::Method::GET, "/api/v1/schedules", None)
        .await;
    let made = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["externalId"] == "acme")
        .expect("the schedule the form made")
        .clone();
    let id = made["id"].as_str().unwrap().to_string();
    assert_eq!(made["timezone"], "Europe/Paris");
    let (_, schedules) = page(&kiln, "/schedules").await;
    assert!(schedules.contains(&id) && schedules.contains("acme"));
    // Its row lists its next three runs, the first being its nextRun.
    let row = schedules
        .split("<tr>")
        .find(|row| row.contains(&id))
        .expect("the schedule's row");
    let next = made["nextRun"].as_str().expect("a next run");
    let next_ms = time::OffsetDateTime::parse(next, &time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 time")
        .unix_timestamp_nanos()
        / 1_000_000;
    let shown = |at: kiln_types::Timestamp| at.to_iso()[..19].replace('T', " ");
    let first = kiln_types::Timestamp(next_ms as u64);
    let cron = kiln_cron::CronSchedule::parse("0 8 * * *", "Europe/Paris").expect("a cron");
    let mut expected = vec![first];
    expected.extend(cron.upcoming(first, 2));
    let times: Vec<String> = expected.into_iter().map(shown).collect();
    let at: Vec<usize> = times
        .iter()
        .map(|t| {
            row.find(t.as_str())
                .unwrap_or_else(|| panic!("{t} not in {row}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "in order: {listed:?} in {row}"
    );
    assert_eq!(row.matches("<br>").count(), 2, "{row}");
    let (status, _) = post_form(&kiln, &format!("/schedules/{id}/deactivate"), "").await;
    assert_eq!(status, 303);
    let (_, paused) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/schedules/{id}"),
            None,
        )
        .await;
    assert_eq!(paused["active"], false);
    let (status, _) = post_form(&kiln, &format!("/schedules/{id}/activate"), "").await;
    assert_eq!(status, 303);
    let (_, active) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/schedules/{id}"),
            None,
        )
        .await;
    assert_eq!(active["active"], true);
    // The bundle's own (declarative) schedule is not deleted from here.
    let declarative = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "DECLARATIVE")
        .and_then(|s| s["id"].as_str())
        .expect("the digest bundle declares a schedule")
        .to_string();
    assert!(schedules.contains(&declarative));
    assert!(!schedules.contains(&format!("/schedules/{declarative}/delete")));
    let (status, _) = post_form(&kiln, &format!("/schedules/{id}/delete"), "").await;
    assert_eq!(status, 303);
    let (status, _) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/schedules/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // A queue: paused and resumed from its page.
    let (status, _) = post_form(&kiln, "/queues/pause", "queue=task%2Ftenant-digest").await;
    assert_eq!(status, 303);
    let (_, queue) = kiln
        .request(
            reqwest::Method::GET,
            "/api/v1/queues/tenant-digest?type=task",
            None,
        )
        .await;
    assert_eq!(queue["paused"], true, "{queue}");
    let (_, queues) = page(&kiln, "/queues").await;
    assert!(queues.contains("Resume"));
    let (status, _) = post_form(&kiln, "/queues/resume", "queue=task%2Ftenant-digest").await;
    assert_eq!(status, 303);
    let (status, _) = post_form(&kiln, "/queues/pause", "queue=no-such-queue").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_project_key_sees_only_its_own_environment() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    let default_run = kiln
        .trigger_ok("hello-world", json!({"name": "default"}))
        .await;
    kiln.finished(&default_run).await;

    let made = kiln.cli(&["projects", "create", "Acme", "--ref", "proj_acme"]);
    assert!(made.status.success());
    let key = kiln.cli(&["keys", "create", "--project", "proj_acme", "--env", "prod"]);
    assert!(key.status.success());
    let key = String::from_utf8_lossy(&key.stdout).trim().to_string();
    let (status, _) = kiln
        .deploy_bytes_with_key(kiln_fixtures::read(kiln_fixtures::HELLO_WORLD), &key)
        .await;
    assert_eq!(status, 200);
    let body = json!({
        "payload": json!({"name": "acme"}).to_string(),
        "options": {"payloadType": "application/json"},
    });
    let (status, made) = kiln
        .request_as(
            &key,
            reqwest::Method::POST,
            "/api/v1/tasks/hello-world/trigger",
            Some(body.to_string().into()),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    let acme_run = made["id"].as_str().unwrap().to_string();

    let (status, runs) = page_as(&kiln, &key, "/runs").await;
    assert_eq!(status, 200);
    assert_eq!(linked_runs(&runs), [acme_run]);
    assert!(
        runs.contains("proj_acme/prod"),
        "the page names its environment"
    );
    let (status, _) = page_as(&kiln, &key, &format!("/runs/{default_run}")).await;
    assert_eq!(status, 404, "another environment's run is not there");
    // And the server's key does not see the project's run either.
    let (_, default_runs) = page(&kiln, "/runs").await;
    assert_eq!(linked_runs(&default_runs), [default_run]);

    // A key revoked while its page listens for changes: the stream's next
    // event tells the page to reload, and the reload asks to sign in.
    let other = kiln.cli(&["keys", "create", "--project", "proj_acme", "--env", "prod"]);
    assert!(other.status.success());
    let other = String::from_utf8_lossy(&other.stdout).trim().to_string();
    let mut events = client()
        .get(format!("{}/events", kiln.url))
        .header("cookie", format!("kiln_key={key}"))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(events.status(), 200);
    let (status, revoked) = kiln
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/projects/proj_acme/keys/{key}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    // A change in the environment wakes the stream.
    let (status, made) = kiln
        .request_as(
            &other,
            reqwest::Method::POST,
            "/api/v1/tasks/hello-world/trigger",
            Some(body.to_string().into()),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains("event: refresh") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .unwrap_or_else(|_| panic!("no refresh after the key was revoked: {seen:?}"))
            .expect("the stream reads");
        match chunk {
            Some(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            None => panic!("the stream ended without a refresh: {seen:?}"),
        }
    }
    let ended = tokio::time::timeout_at(deadline, async {
        while events.chunk().await.ok().flatten().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ends after its last event");
    let (status, _) = page_as(&kiln, &key, "/runs").await;
    assert_eq!(status, 303, "a revoked key's session is over");
}
