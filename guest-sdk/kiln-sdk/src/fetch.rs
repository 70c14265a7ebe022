//! Durable HTTP requests: the host makes them and journals each response,
//! so a run that replays after a crash gets the response it had and never
//! sends the request again.
//!
//! ```ignore
//! use kiln_sdk::fetch::{fetch, Request};
//!
//! let response = fetch(Request::post("https://api.example.com/charges").json(&charge)?).await?;
//! if response.is_success() {
//!     let receipt: Receipt = response.json()?;
//! }
//! ```
//!
//! The server's allowlist decides which hosts a task may reach (`kiln
//! serve --allow-fetch`); a refused request is a [`FetchError`]. Redirects
//! are not followed. For retries on status codes, see [`crate::retry::fetch`].

use crate::TaskError;
use crate::bindings::kiln::task::types::{HttpRequest, WaitKind, WakeValue};
use crate::executor::WaitFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// An HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`...
    pub method: String,
    /// The URL (http or https).
    pub url: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Option<Vec<u8>>,
    /// Give up after this long (the server's default is 30 s, at most 5 min).
    pub timeout: Option<Duration>,
}

impl Request {
    /// A request with this method and URL.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout: None,
        }
    }

    /// A `GET`.
    pub fn get(url: impl Into<String>) -> Self {
        Request::new("GET", url)
    }

    /// A `POST`.
    pub fn post(url: impl Into<String>) -> Self {
        Request::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets a JSON body and its content type.
    pub fn json(self, value: &impl Serialize) -> Result<Self, TaskError> {
        let body = serde_json::to_vec(value).map_err(|e| {
            TaskError::abort(format!("a request body cannot be serialised: {e}"))
                .with_name("FetchError")
        })?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, in order (names in lower case).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            TaskError::new(format!("the response body is not the expected JSON: {e}"))
                .with_name("FetchError")
        })
    }
}

/// A request that got no response: refused by the server's allowlist, a
/// network error, a timeout, or a body over 10 MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FetchError {}

/// Sends `request` through the host; journaled, so a replay returns the
/// same response without sending it again.
pub async fn fetch(request: Request) -> Result<Response, FetchError> {
    let request = HttpRequest {
        method: request.method,
        url: request.url,
        headers: request.headers,
        body: request.body,
        timeout_ms: request.timeout.map(|t| t.as_millis() as u64),
    };
    match WaitFuture::new(WaitKind::Fetch(request)).await {
        WakeValue::Fetch(Ok(response)) => Ok(Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        }),
        WakeValue::Fetch(Err(message)) => Err(FetchError { message }),
        _ => Err(FetchError {
            message: "a fetch woke with something other than its response".into(),
        }),
    }
}
