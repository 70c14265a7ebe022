//! The HTTP client the OTLP exporter sends with: the server's own `reqwest`
//! client, on its tokio runtime.

use opentelemetry_http::{Bytes, HttpError, Request, Response};

/// The most bytes of a collector's answer read (an OTLP answer is a few
/// bytes of protobuf).
const MAX_ANSWER: usize = 1 << 20;

/// Sends OTLP requests through `reqwest`.
#[derive(Debug, Clone)]
pub(super) struct Client(reqwest::Client);

impl Client {
    /// A client with the exporter's time limit on each request.
    pub(super) fn new(timeout: std::time::Duration) -> reqwest::Result<Self> {
        Ok(Client(
            reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        ))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let mut response = self.0.execute(request).await?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err("the collector's answer is larger than 1 MiB".into());
            }
            body.extend_from_slice(&chunk);
        }
        let mut answer = Response::builder().status(status).body(Bytes::from(body))?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}
