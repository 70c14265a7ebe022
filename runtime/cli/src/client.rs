//! A small HTTP client for the Kiln API, configured from `KILN_API_URL` and
//! `KILN_SECRET_KEY`.

use anyhow::{Context as _, bail};
use serde_json::Value;
use std::time::Duration;

/// The API's address unless `KILN_API_URL` says otherwise.
const DEFAULT_URL: &str = "http://127.0.0.1:3030";

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    /// Reads `KILN_API_URL` and `KILN_SECRET_KEY` (falling back to the key a
    /// local `kiln serve` keeps in `.kiln/secret-key`).
    pub fn from_env() -> anyhow::Result<Self> {
        let base = std::env::var("KILN_API_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.into())
            .trim_end_matches('/')
            .to_string();
        let key = match std::env::var("KILN_SECRET_KEY").ok().filter(|k| !k.is_empty()) {
            Some(key) => key,
            None => std::fs::read_to_string(".kiln/secret-key")
                .map(|k| k.trim().to_string())
                .map_err(|_| {
                    anyhow::anyhow!(
                        "set KILN_SECRET_KEY to the API key `kiln serve` printed (or run from the directory that holds .kiln/)"
                    )
                })?,
        };
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            base,
            key,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("could not reach the Kiln server at {}", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = body["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(body)
    }

    /// Opens a server-sent event stream (`GET path`), failing on an error
    /// status.
    pub async fn events(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("could not reach the Kiln server at {}", self.base))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            bail!("{text} (HTTP {status})");
        }
        Ok(response)
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/wasm")
                .body(body),
        )
        .await
    }

    /// Long-polls the run until it reaches a final status.
    pub async fn wait_for_run(&self, id: &str) -> anyhow::Result<Value> {
        loop {
            let run = self.run(&format!("{id}?wait=30000")).await?;
            if run["isCompleted"].as_bool().unwrap_or(false) {
                return Ok(run);
            }
        }
    }

    /// Retrieves a run (`id` may carry a query), with a large payload or
    /// output read from the presigned URL the server gives for it.
    pub async fn run(&self, id: &str) -> anyhow::Result<Value> {
        let mut run = self.get_json(&format!("/api/v3/runs/{id}")).await?;
        for field in ["payload", "output"] {
            let Some(url) = run[format!("{field}PresignedUrl")]
                .as_str()
                .map(str::to_string)
            else {
                continue;
            };
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .with_context(|| format!("could not read the run's {field}"))?;
            let text = response.text().await?;
            run[field] = serde_json::from_str(&text).unwrap_or(Value::String(text));
        }
        Ok(run)
    }
}

/// Percent-encodes a value for a URL path segment or query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
