//! Environment variables and secrets: set with the official SDK and the
//! CLI, read by a task through the host, used in a durable fetch, and found
//! in plain text nowhere Kiln keeps or shows what a run did: no API
//! response, log line, journal entry or file of the data directory.

use crate::harness::{KEY, Kiln, data_dir};
use crate::sdk::node;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the checking server received: each request's `Authorization`
/// header, `Idempotency-Key` header and body, and how many have arrived.
#[derive(Default)]
struct Requests {
    log: Mutex<Vec<(String, String, String)>>,
    arrived: tokio::sync::watch::Sender<usize>,
}

impl Requests {
    fn lock(
        &self,
    ) -> std::sync::LockResult<std::sync::MutexGuard<'_, Vec<(String, String, String)>>> {
        self.log.lock()
    }

    /// Waits (at most 30 s) until a request has arrived.
    async fn first(&self) {
        let mut arrived = self.arrived.subscribe();
        tokio::time::timeout(Duration::from_secs(30), arrived.wait_for(|n| *n > 0))
            .await
            .expect("a request arrives within 30 s")
            .expect("the server is up");
    }
}

type Seen = Arc<Requests>;

/// What the checking server does with the first request it receives.
#[derive(Clone)]
enum First {
    /// Answers it like any other.
    Answer,
    /// Never answers it (the server under test is killed meanwhile).
    Hold,
    /// Answers it once notified.
    HoldUntil(Arc<tokio::sync::Notify>),
}

/// A local API that answers 200 to requests whose `Authorization` is
/// `Bearer <one of accepted>` and 401 to others.
async fn checking_server(accepted: Vec<String>, first: First) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/charge", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (log, accepted, hold) = (log.clone(), accepted.clone(), first.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let length: usize = header("content-length").parse().unwrap_or(0);
                while request.len() < head_end + length {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = String::from_utf8_lossy(&request[head_end..]).to_string();
                let (authorization, key) = (header("authorization"), header("idempotency-key"));
                let first = {
                    let mut requests = log.lock().unwrap();
                    requests.push((authorization.clone(), key, body));
                    log.arrived.send_replace(requests.len());
                    requests.len() == 1
                };
                match (first, hold) {
                    (true, First::Hold) => {
                        // Held until the server under test is killed.
                        let _ = socket.read(&mut buf).await;
                        return;
                    }
                    (true, First::HoldUntil(release)) => release.notified().await,
                    _ => {}
                }
                let ok = accepted
                    .iter()
                    .any(|a| authorization == format!("Bearer {a}"));
                let status = if ok { "200 OK" } else { "401 Unauthorized" };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// A value no test data holds by chance.
fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sk_{label}_{nanos:x}Zq")
}

async fn get_text(kiln: &Kiln, key: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut request = reqwest::Client::new()
        .get(format!("{}{path}", kiln.url))
        .bearer_auth(key);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the server answers");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.text().await.unwrap_or_default()
}

/// Every API response about `runs` (retrieve, journal, runs list, stream,
/// variables), as text.
async fn responses(kiln: &Kiln, runs: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut paths = vec![
        "/api/v1/runs".to_string(),
        "/api/v1/projects/default/envvars/dev".to_string(),
        "/api/v1/projects/default/envvars/dev/PROBE_SECRET".to_string(),
    ];
    for run in runs {
        paths.push(format!("/api/v3/runs/{run}"));
        paths.push(format!("/api/v1/runs/{run}/journal"));
    }
    for path in paths {
        let text = get_text(kiln, KEY, &path, &[]).await;
        out.push((path, text));
    }
    for run in runs {
        let path = format!("/realtime/v1/streams/{run}/keys");
        let text = get_text(kiln, KEY, &path, &[("Timeout-Seconds", "1")]).await;
        out.push((path, text));
    }
    out
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(path.display().to_string());
        }
    }
    found
}

fn env_reads(journal: &[Value]) -> Vec<&Value> {
    journal
        .iter()
        .filter(|e| e["type"] == "HOST_CALL" && e["call"] == "env-var")
        .collect()
}

#[tokio::test]
async fn a_secret_set_with_the_official_sdk_reaches_a_task_and_nothing_keeps_it_in_plain_text() {
    let dir = data_dir();
    // Every wait suspends: the guest is snapshotted holding the secret.
    let kiln = Kiln::start_with(dir.path(), &["--warm-wait-ms", "0"]);
    let deployed = kiln.deploy(kiln_fixtures::PROBE).await;
    let warnings = deployed["warnings"].to_string();
    assert!(
        warnings.contains("PROBE_SECRET") && warnings.contains("env-fetch"),
        "a deploy that lacks a declared variable warns: {deployed}"
    );
    let secret = unique("live");
    let out = node(
        &kiln,
        "envvars.mjs",
        KEY,
        &[("SECRET_VALUE", secret.as_str())],
    );
    assert!(out.contains("envvars: all steps passed"), "{out}");

    let (url, seen) = checking_server(vec![secret.clone()], First::Answer).await;
    let id = kiln
        .trigger_ok(
            "env-fetch",
            json!({"secret": "PROBE_SECRET", "public": "PROBE_GREETING", "url": url, "query": true, "pause_ms": 1500}),
        )
        .await;
    // While it waits, its snapshot is on disk: sealed, like everything else.
    kiln.until_status(&id, "WAITING").await;
    assert_eq!(
        files_holding(dir.path(), &secret),
        Vec::<String>::new(),
        "the data directory holds the secret in plain text while the run waits"
    );
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(
        run["output"]["statuses"],
        json!([200]),
        "the local API accepted the key"
    );
    assert_eq!(run["output"]["public"], "hello from dev");
    assert_eq!(run["output"]["missing"], Value::Null);
    assert_eq!(run["output"]["leaked"], "<redacted>", "{run}");
    assert_eq!(run["metadata"]["usedKey"], "<redacted>", "{run}");
    let logs = run["attempts"][0]["logs"].to_string();
    assert!(logs.contains("calling with <redacted>"), "{logs}");
    assert!(logs.contains("Bearer <redacted>"), "{logs}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, format!("Bearer {secret}"));
        assert!(seen[0].2.contains(&secret), "the body was sent whole");
    }

    let failed = kiln
        .trigger_ok("env-fetch", json!({"secret": "PROBE_SECRET", "fail": true}))
        .await;
    let failed_run = kiln.finished(&failed).await;
    assert_eq!(failed_run["status"], "FAILED", "{failed_run}");
    assert!(
        failed_run["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("refused key <redacted>"),
        "{failed_run}"
    );

    let journal = kiln.journal(&id).await;
    let reads = env_reads(&journal);
    assert_eq!(
        reads.len(),
        3,
        "PROBE_SECRET, PROBE_GREETING and PROBE_NEVER_SET"
    );
    assert!(
        reads[0]["sealed"].is_string() && reads[0]["secret"] == true,
        "{:?}",
        reads
    );
    assert!(
        reads[2]["sealed"].is_null(),
        "an unset variable reads as none"
    );
    assert!(
        journal.iter().any(|e| e["type"] == "SUSPENDED"),
        "the run was snapshotted while it held the secret"
    );
    let fetch = journal
        .iter()
        .find(|e| e["type"] == "WAITS" && e["waits"][0]["kind"] == "fetch")
        .expect("the fetch's wait");
    let request = &fetch["waits"][0]["request"];
    assert_eq!(request["headers"][0][1], "<redacted>", "{fetch}");
    assert!(
        request["url"]
            .as_str()
            .unwrap_or_default()
            .ends_with("?key=<redacted>"),
        "{fetch}"
    );
    assert!(
        request["sealed"].is_string(),
        "the request as made is kept sealed"
    );

    for (path, text) in responses(&kiln, &[&id, &failed]).await {
        assert!(!text.contains(&secret), "{path} shows the secret: {text}");
    }
    let stream = get_text(
        &kiln,
        KEY,
        &format!("/realtime/v1/streams/{id}/keys"),
        &[("Timeout-Seconds", "1")],
    )
    .await;
    assert!(stream.contains("<redacted>"), "{stream}");
    kiln.kill();
    assert_eq!(
        files_holding(dir.path(), &secret),
        Vec::<String>::new(),
        "the data directory holds the secret in plain text"
    );

    // The store was sealed with this data directory's key: another key,
    // or none, is refused at start, and no key is made in its place.
    let start = async |key: Option<&str>| {
        let mut command = tokio::process::Command::new(crate::harness::kiln_bin());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("KILN_SECRET_KEY", KEY)
            .env_remove("KILN_MASTER_KEY");
        if let Some(key) = key {
            command.env("KILN_MASTER_KEY", key);
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kiln serve runs");
        tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("kiln serve stops instead of starting with the wrong master key")
            .expect("kiln serve ends")
    };
    let wrong = start(Some(&"ab".repeat(32))).await;
    let complaint = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success(), "{complaint}");
    assert!(complaint.contains("master key"), "{complaint}");
    let kept = dir.path().join("master-key.kept");
    std::fs::rename(dir.path().join("master-key"), &kept).unwrap();
    let missing = start(None).await;
    let complaint = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "{complaint}");
    assert!(complaint.contains("restore"), "{complaint}");
    assert!(!dir.path().join("master-key").exists(), "no key was made");
    std::fs::rename(&kept, dir.path().join("master-key")).unwrap();
    let kiln = Kiln::start(dir.path());
    let kept = get_text(
        &kiln,
        KEY,
        "/api/v1/projects/default/envvars/dev/PROBE_SECRET",
        &[],
    )
    .await;
    assert!(
        kept.contains("\"isSecret\":true"),
        "the right key opens them: {kept}"
    );
}

#[tokio::test]
async fn a_crash_mid_run_replays_the_value_read_and_a_rotation_is_seen_by_later_reads() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let (old, new) = (unique("old"), unique("new"));
    let set = kiln.cli(&["env", "set", "PROBE_SECRET", &old, "--secret"]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );

    let (url, seen) = checking_server(vec![old.clone(), new.clone()], First::Hold).await;
    let id = kiln
        .trigger_ok(
            "env-fetch",
            json!({"secret": "PROBE_SECRET", "url": url, "again": true, "query": true}),
        )
        .await;
    // The first request is in flight (and held): the read is journaled.
    seen.first().await;
    // Rotated mid-run (no --secret: a secret stays one), then a crash.
    let set = kiln.cli(&["env", "set", "PROBE_SECRET", &new]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    kiln.kill();

    let kiln = Kiln::start(dir.path());
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");
    assert_eq!(run["output"]["statuses"], json!([200, 200]), "{run}");
    assert_eq!(
        run["output"]["sameValue"], false,
        "the read after the rotation sees the new value"
    );
    {
        let seen = seen.lock().unwrap();
        let sent: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        let (old_auth, new_auth) = (format!("Bearer {old}"), format!("Bearer {new}"));
        assert_eq!(
            sent,
            vec![old_auth.as_str(), old_auth.as_str(), new_auth.as_str()],
            "the replay resends the unanswered request with the value first read"
        );
        assert_eq!(seen[0].1, seen[1].1, "with the same idempotency key");
    }
    let journal = kiln.journal(&id).await;
    assert_eq!(
        env_reads(&journal).len(),
        3,
        "two reads of the secret, one of PROBE_NEVER_SET"
    );
    let logs = run["attempts"][0]["logs"].to_string();
    assert!(logs.contains("calling with <redacted>"), "{logs}");
    for (path, text) in responses(&kiln, &[&id]).await {
        assert!(
            !text.contains(&old) && !text.contains(&new),
            "{path} shows a secret: {text}"
        );
    }
    kiln.kill();
    for value in [&old, &new] {
        assert_eq!(files_holding(dir.path(), value), Vec::<String>::new());
    }
}

#[tokio::test]
async fn a_retry_after_a_rotation_reads_the_new_value() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let (wrong, right) = (unique("wrong"), unique("right"));
    ok(kiln.cli(&["env", "set", "PROBE_SECRET", &wrong, "--secret"]));
    let release = Arc::new(tokio::sync::Notify::new());
    let (url, seen) = checking_server(vec![right.clone()], First::HoldUntil(release.clone())).await;
    let id = kiln
        .trigger_with(
            "env-fetch",
            json!({"secret": "PROBE_SECRET", "url": url, "check": true}),
            json!({"maxAttempts": 2}),
        )
        .await;
    // The first attempt sent the wrong key; fix it before it hears back.
    seen.first().await;
    ok(kiln.cli(&["env", "set", "PROBE_SECRET", &right]));
    release.notify_one();
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 2, "{run}");
    let sent: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(
        sent,
        vec![format!("Bearer {wrong}"), format!("Bearer {right}")],
        "the retry read the variable afresh"
    );
}

async fn send(
    kiln: &Kiln,
    method: reqwest::Method,
    key: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    kiln.request_as(key, method, path, body.map(Into::into))
        .await
}

async fn run_in(kiln: &Kiln, key: &str, payload: Value) -> Value {
    let body =
        json!({ "payload": payload.to_string(), "options": { "payloadType": "application/json" } });
    let (status, created) = send(
        kiln,
        reqwest::Method::POST,
        key,
        "/api/v1/tasks/env-fetch/trigger",
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    for _ in 0..4 {
        let (status, run) = send(
            kiln,
            reqwest::Method::GET,
            key,
            &format!("/api/v3/runs/{id}?wait=15000"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{run}");
        if run["isCompleted"] == true {
            return run;
        }
    }
    panic!("run {id} did not finish");
}

fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn each_environment_sees_its_own_values_and_a_strict_deploy_needs_them() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--allow-fetch", "127.0.0.1"]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let (dev_secret, prod_secret) = (unique("dev"), unique("prod"));
    let dotenv = dir.path().join("dev.env");
    std::fs::write(
        &dotenv,
        format!("# dev\nexport PROBE_SECRET=\"{dev_secret}\"\n"),
    )
    .unwrap();
    let imported = ok(kiln.cli(&["env", "import", dotenv.to_str().unwrap(), "--secret"]));
    assert!(imported.contains("Imported 1 variable"), "{imported}");
    // Without a value on the command line, `env set` reads standard input.
    let mut set = std::process::Command::new(crate::harness::kiln_bin())
        .args(["env", "set", "PROBE_GREETING"])
        .env("KILN_API_URL", &kiln.url)
        .env("KILN_SECRET_KEY", KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the CLI runs");
    std::io::Write::write_all(&mut set.stdin.take().unwrap(), b"dev-hello\n").unwrap();
    assert!(set.wait().unwrap().success());

    ok(kiln.cli(&["projects", "create", "Envs", "--ref", "proj_envs"]));
    let prod_key = ok(kiln.cli(&["keys", "create", "--project", "proj_envs", "--env", "prod"]))
        .trim()
        .to_string();
    let bundle = kiln_fixtures::read(kiln_fixtures::PROBE);
    let (status, refused) = send(
        &kiln,
        reqwest::Method::POST,
        &prod_key,
        "/api/v1/deployments?strict=true",
        Some(bundle.clone()),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"].to_string().contains("PROBE_SECRET"),
        "{refused}"
    );
    let (_, deployments) = send(
        &kiln,
        reqwest::Method::GET,
        &prod_key,
        "/api/v1/deployments",
        None,
    )
    .await;
    assert_eq!(
        deployments["data"],
        json!([]),
        "a refused deploy stores nothing"
    );

    let prod = ["--project", "proj_envs", "--env", "prod"];
    ok(kiln.cli(
        &[
            &["env", "set", "PROBE_SECRET", &prod_secret, "--secret"][..],
            &prod[..],
        ]
        .concat(),
    ));
    ok(kiln.cli(
        &[
            &["env", "set", "PROBE_GREETING", "prod-hello"][..],
            &prod[..],
        ]
        .concat(),
    ));
    let listed = ok(kiln.cli(&[&["env", "list"][..], &prod[..]].concat()));
    assert!(
        listed.contains("PROBE_SECRET=<redacted>  (secret)"),
        "{listed}"
    );
    assert!(listed.contains("PROBE_GREETING=prod-hello"), "{listed}");
    assert!(!listed.contains(&prod_secret), "{listed}");
    let (status, deployed) = send(
        &kiln,
        reqwest::Method::POST,
        &prod_key,
        "/api/v1/deployments?strict=true",
        Some(bundle),
    )
    .await;
    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["warnings"], json!([]));

    // A project key manages its own environment's variables only.
    let (status, body) = send(
        &kiln,
        reqwest::Method::GET,
        &prod_key,
        "/api/v1/projects/default/envvars/dev",
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = send(
        &kiln,
        reqwest::Method::GET,
        &prod_key,
        "/api/v1/projects/proj_envs/envvars/prod/PROBE_GREETING",
        None,
    )
    .await;
    assert_eq!(
        (status, body["value"].as_str()),
        (200, Some("prod-hello")),
        "{body}"
    );

    let (url, seen) =
        checking_server(vec![dev_secret.clone(), prod_secret.clone()], First::Answer).await;
    let payload = json!({"secret": "PROBE_SECRET", "public": "PROBE_GREETING", "url": url});
    let dev_run = run_in(&kiln, KEY, payload.clone()).await;
    assert_eq!(dev_run["output"]["public"], "dev-hello", "{dev_run}");
    assert_eq!(
        seen.lock().unwrap().last().unwrap().0,
        format!("Bearer {dev_secret}")
    );
    let prod_run = run_in(&kiln, &prod_key, payload).await;
    assert_eq!(prod_run["output"]["public"], "prod-hello", "{prod_run}");
    assert_eq!(prod_run["output"]["statuses"], json!([200]), "{prod_run}");
    assert_eq!(
        seen.lock().unwrap().last().unwrap().0,
        format!("Bearer {prod_secret}")
    );
    assert_eq!(prod_run["output"]["leaked"], "<redacted>");

    ok(kiln.cli(&[&["env", "unset", "PROBE_GREETING"][..], &prod[..]].concat()));
    let listed = ok(kiln.cli(&[&["env", "list"][..], &prod[..]].concat()));
    assert!(!listed.contains("PROBE_GREETING"), "{listed}");
}
