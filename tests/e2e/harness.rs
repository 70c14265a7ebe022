//! Starting and stopping real `kiln serve` processes.

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command};

/// The API key every test server uses.
pub const KEY: &str = "tr_dev_sk_e2eTestKey0000000000000";

/// The `kiln` binary under test.
pub fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// A `kiln serve` process on a free loopback port.
pub struct Kiln {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    http: reqwest::Client,
}

impl Kiln {
    /// Starts a server on `data_dir`.
    pub fn start(data_dir: &Path) -> Kiln {
        Kiln::start_with(data_dir, &[])
    }

    /// Starts a server on `data_dir` with extra `kiln serve` arguments.
    pub fn start_with(data_dir: &Path, args: &[&str]) -> Kiln {
        let (child, url) = kiln_fixtures::spawn_kiln(kiln_bin(), data_dir, KEY, args);
        Kiln {
            child,
            url,
            http: reqwest::Client::new(),
        }
    }

    /// Starts a server on `data_dir` with extra arguments and environment
    /// variables.
    pub fn start_with_env(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Kiln {
        let (child, url) =
            kiln_fixtures::spawn_kiln_with_env(kiln_bin(), data_dir, KEY, args, envs);
        Kiln {
            child,
            url,
            http: reqwest::Client::new(),
        }
    }

    /// Wraps a server started elsewhere (with its own key).
    pub fn adopt(child: Child, url: String) -> Kiln {
        Kiln {
            child,
            url,
            http: reqwest::Client::new(),
        }
    }

    /// Deploys a bundle's bytes with `key` instead of [`KEY`].
    pub async fn deploy_bytes_with_key(&self, bytes: Vec<u8>, key: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/v1/deployments", self.url))
            .bearer_auth(key)
            .body(bytes)
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `deadline` for the process to exit on its own; its
    /// status, or `None` if it still runs.
    pub fn exited_within(
        &mut self,
        deadline: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        exited_within(&mut self.child, deadline)
    }

    /// Sends the process SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the process `signal`, a name `kill` knows (`STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal}");
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a request with the API key; returns status and JSON body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<reqwest::Body>,
    ) -> (u16, Value) {
        self.request_as(KEY, method, path, body).await
    }

    /// Sends a request with `key`; returns status and JSON body.
    pub async fn request_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<reqwest::Body>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(key)
            .header("content-type", "application/json");
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("the server did not answer {path}: {error:?}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Deploys a bundle's bytes.
    pub async fn deploy_bytes(&self, bytes: Vec<u8>) -> (u16, Value) {
        self.request(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(bytes.into()),
        )
        .await
    }

    /// Deploys a fixture bundle, asserting success.
    pub async fn deploy(&self, bundle: &str) -> Value {
        let (status, body) = self.deploy_bytes(kiln_fixtures::read(bundle)).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Triggers a task with a JSON payload the way the official SDK does.
    pub async fn trigger(&self, task: &str, payload: Value, options: Value) -> (u16, Value) {
        let mut options = options;
        options["payloadType"] = json!("application/json");
        let body = json!({ "payload": payload.to_string(), "options": options });
        self.request(
            reqwest::Method::POST,
            &format!("/api/v1/tasks/{task}/trigger"),
            Some(body.to_string().into()),
        )
        .await
    }

    /// Triggers and returns the run id, asserting success.
    pub async fn trigger_ok(&self, task: &str, payload: Value) -> String {
        self.trigger_with(task, payload, json!({})).await
    }

    /// Triggers with options and returns the run id, asserting success.
    pub async fn trigger_with(&self, task: &str, payload: Value, options: Value) -> String {
        let (status, body) = self.trigger(task, payload, options).await;
        assert_eq!(status, 200, "{body}");
        body["id"].as_str().expect("an id").to_string()
    }

    /// POSTs a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body.to_string().into()))
            .await
    }

    /// Retrieves a run, with a large payload or output read from the
    /// presigned URL the server gives for it (as the official SDK does).
    pub async fn run(&self, id: &str) -> Value {
        let (status, body) = self
            .request(reqwest::Method::GET, &format!("/api/v3/runs/{id}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        self.resolve_packets(body).await
    }

    /// Replaces `payloadPresignedUrl` / `outputPresignedUrl` with what they
    /// hold, as `payload` / `output`.
    pub async fn resolve_packets(&self, mut run: Value) -> Value {
        for field in ["payload", "output"] {
            let Some(url) = run[format!("{field}PresignedUrl")]
                .as_str()
                .map(str::to_string)
            else {
                continue;
            };
            let text = self
                .http
                .get(&url)
                .send()
                .await
                .expect("the presigned URL answers")
                .text()
                .await
                .unwrap_or_default();
            run[field] = serde_json::from_str(&text).unwrap_or(Value::String(text));
        }
        run
    }

    /// A run's journal entries, oldest first.
    pub async fn journal(&self, id: &str) -> Vec<Value> {
        let (status, body) = self
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/runs/{id}/journal"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["entries"].as_array().cloned().unwrap_or_default()
    }

    /// Polls until `check` holds for the run's journal (at most 60 s).
    pub async fn until_journal(&self, id: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let entries = self.journal(id).await;
            if check(&entries) {
                return entries;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "journal never got there: {entries:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most 30 s) until the run's status is `status`, following
    /// its server-sent events (`/realtime/v1/events/runs/{id}`): no polling.
    pub async fn until_status(&self, id: &str, status: &str) -> Value {
        let mut response = self
            .http
            .get(format!("{}/realtime/v1/events/runs/{id}", self.url))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("the server answers");
        assert_eq!(response.status().as_u16(), 200, "events of {id}");
        let mut text = String::new();
        let mut last = Value::Null;
        let reached = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(chunk) = response.chunk().await.expect("a chunk") {
                text.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = text.find("\n\n") {
                    let event: String = text.drain(..end + 2).collect();
                    if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: "))
                        && let Ok(run) = serde_json::from_str::<Value>(data)
                    {
                        last = run;
                        if last["status"] == status {
                            return true;
                        }
                    }
                }
            }
            false
        })
        .await;
        assert_eq!(reached, Ok(true), "run {id} never reached {status}: {last}");
        last
    }

    /// Waits for a run to reach a final status (at most 60 s).
    pub async fn finished(&self, id: &str) -> Value {
        self.finished_within(id, 4).await
    }

    /// Waits until the run has finished, for at most `polls` waits of 15 s.
    pub async fn finished_within(&self, id: &str, polls: usize) -> Value {
        let mut last = Value::Null;
        for _ in 0..polls {
            let (status, run) = self
                .request(
                    reqwest::Method::GET,
                    &format!("/api/v3/runs/{id}?wait=15000"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{run}");
            if run["isCompleted"] == true {
                return self.resolve_packets(run).await;
            }
            last = run;
        }
        panic!(
            "run {id} did not finish within {} s; it was {last}",
            polls * 15
        );
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(kiln_bin())
            .args(args)
            .env("KILN_API_URL", &self.url)
            .env("KILN_SECRET_KEY", KEY)
            .output()
            .expect("the CLI runs")
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `deadline` for `child` to exit, checking every 20 ms; its
/// status, or `None` if it still runs.
pub fn exited_within(
    child: &mut Child,
    deadline: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let until = std::time::Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for kiln serve") {
            return Some(status);
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A fresh data directory.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

/// How many of a run's journal `entries` are host calls named `call`.
pub fn host_calls(entries: &[Value], call: &str) -> usize {
    entries
        .iter()
        .filter(|e| e["type"] == "HOST_CALL" && e["call"] == call)
        .count()
}
