//! Durable fetch: HTTP requests a task asks the host to make.
//!
//! A task's fetch is a wait (`wait-kind::fetch`). The request is journaled
//! with the step's waits; the host performs it while the guest stays warm,
//! and journals the response as the wake before the guest sees it. A replay
//! answers from the journal, so a request whose response was journaled is
//! never sent again (a crash while the request is in flight sends it again
//! on recovery: at least once for that window, exactly once after).
//!
//! Which hosts a task may reach is the server's allowlist (`kiln serve
//! --allow-fetch`): nothing by default, loopback too in the `dev`
//! environment. Redirects are not followed, so a redirect cannot lead
//! around the allowlist; the task sees the 3xx.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kiln_types::{FetchRequest, FetchResponse, WakeValue};
use std::time::Duration;

/// The largest response body a fetch accepts.
pub const MAX_FETCH_BODY: usize = 10 * 1024 * 1024;
/// How long a fetch may take unless the task says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout a task may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// Which hosts tasks may fetch from.
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    /// Patterns: `*` (anything), `host`, `host:port`, `*.domain`.
    pub allow: Vec<String>,
    /// Whether loopback addresses (`localhost`, `127.0.0.0/8`, `::1`) are
    /// allowed whatever the patterns say.
    pub loopback: bool,
}

impl FetchPolicy {
    /// The policy of a server: `allow` patterns, and loopback in `dev`.
    pub fn new(allow: Vec<String>, environment: &str) -> Self {
        FetchPolicy {
            allow,
            loopback: environment == "dev",
        }
    }

    /// Whether `url` may be fetched, or why not.
    pub fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{url}` is not an http or https URL"));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default().unwrap_or(0);
        if self.loopback && is_loopback(host) {
            return Ok(());
        }
        let allowed = self.allow.iter().any(|pattern| {
            let pattern = pattern.trim().to_ascii_lowercase();
            if pattern == "*" {
                return true;
            }
            let (name, want_port) = match pattern.rsplit_once(':') {
                Some((name, p)) if p.parse::<u16>().is_ok() => (name.to_string(), p.parse().ok()),
                _ => (pattern.clone(), None),
            };
            let name_fits = match name.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => host == name,
            };
            name_fits && want_port.is_none_or(|p: u16| p == port)
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "fetching `{host}:{port}` is not allowed on this server; an operator allows it with `kiln serve --allow-fetch {host}`"
            ))
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The HTTP client fetches go through: no redirects, no proxy from the
/// environment.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// The `Idempotency-Key` a durable fetch carries: the run, the attempt and
/// the fetch's wait id (its place in the attempt, the same on every replay).
/// A request resent after a crash carries the same key, so a receiver that
/// deduplicates by key applies it once.
pub(crate) fn idempotency_key(run: &kiln_types::RunId, attempt: u32, wait_id: u64) -> String {
    format!("{run}-{attempt}-{wait_id}")
}

/// What a fetch's request is sealed with: it opens only as this run's,
/// this attempt's, this wait's.
fn context(run: &kiln_types::RunId, attempt: u32, wait_id: u64) -> Vec<u8> {
    format!("fetch/{run}/{attempt}/{wait_id}").into_bytes()
}

/// The request as journaled: with secret values masked in its URL, headers
/// and (text) body, and then the request as made sealed beside them, for
/// the host to send; unchanged when it holds no secret.
pub(crate) fn journaled(
    request: FetchRequest,
    redactor: &kiln_sandbox::Redactor,
    store: &kiln_store::Store,
    (run, attempt, wait_id): (&kiln_types::RunId, u32, u64),
) -> FetchRequest {
    if redactor.is_empty() {
        return request;
    }
    let body = request.body.as_ref().map(|body| {
        match BASE64
            .decode(body)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
        {
            Some(text) => match redactor.redact(&text) {
                std::borrow::Cow::Owned(masked) => BASE64.encode(masked),
                std::borrow::Cow::Borrowed(_) => body.clone(),
            },
            None => body.clone(),
        }
    });
    let masked = FetchRequest {
        method: request.method.clone(),
        url: redactor.redact(&request.url).into_owned(),
        headers: request
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), redactor.redact(value).into_owned()))
            .collect(),
        body,
        timeout_ms: request.timeout_ms,
        sealed: None,
    };
    if masked == request {
        return request;
    }
    let Ok(key) = store.seal_key() else {
        return masked;
    };
    let plain = serde_json::to_vec(&request).unwrap_or_default();
    FetchRequest {
        sealed: Some(hex::encode(
            key.seal(&context(run, attempt, wait_id), &plain),
        )),
        ..masked
    }
}

/// The request to send for a journaled one: the sealed original when it
/// has one.
pub(crate) fn unsealed(
    store: &kiln_store::Store,
    run: &kiln_types::RunId,
    attempt: u32,
    wait_id: u64,
    request: FetchRequest,
) -> Result<FetchRequest, String> {
    let Some(sealed) = &request.sealed else {
        return Ok(request);
    };
    let bytes =
        hex::decode(sealed).map_err(|e| format!("the journaled request is corrupt: {e}"))?;
    let plain = store
        .seal_key()
        .map_err(|e| e.to_string())?
        .open(&context(run, attempt, wait_id), &bytes)
        .map_err(|e| format!("the journaled request could not be opened: {e}"))?;
    serde_json::from_slice(&plain).map_err(|e| format!("the journaled request is corrupt: {e}"))
}

/// [`perform`] of a request [`unsealed`] gave, or the wake of its failure.
pub(crate) async fn perform_sealed(
    client: &reqwest::Client,
    policy: &FetchPolicy,
    request: Result<FetchRequest, String>,
    key: &str,
) -> WakeValue {
    match request {
        Ok(request) => perform(client, policy, &request, key).await,
        Err(error) => WakeValue::Fetch {
            response: None,
            error: Some(error),
        },
    }
}

/// Performs `request` under `policy` with `Idempotency-Key: key` (unless
/// the task set that header itself): the wake to journal.
pub(crate) async fn perform(
    client: &reqwest::Client,
    policy: &FetchPolicy,
    request: &FetchRequest,
    key: &str,
) -> WakeValue {
    match send(client, policy, request, key).await {
        Ok(response) => WakeValue::Fetch {
            response: Some(response),
            error: None,
        },
        Err(error) => WakeValue::Fetch {
            response: None,
            error: Some(error),
        },
    }
}

async fn send(
    client: &reqwest::Client,
    policy: &FetchPolicy,
    request: &FetchRequest,
    key: &str,
) -> Result<FetchResponse, String> {
    let url = reqwest::Url::parse(&request.url)
        .map_err(|e| format!("`{}` is not a URL: {e}", request.url))?;
    policy.check(&url)?;
    let method = reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", request.method))?;
    let timeout = request
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(MAX_TIMEOUT);
    let mut builder = client.request(method, url).timeout(timeout);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if !request
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"))
    {
        builder = builder.header("Idempotency-Key", key);
    }
    if let Some(body) = &request.body {
        let bytes = BASE64
            .decode(body)
            .map_err(|e| format!("the request body is not base64: {e}"))?;
        builder = builder.body(bytes);
    }
    let mut response = builder.send().await.map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > MAX_FETCH_BODY {
            return Err(format!("the response body is over {MAX_FETCH_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(FetchResponse {
        status,
        headers,
        body: BASE64.encode(body),
    })
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "the request timed out".into();
    }
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(policy: &FetchPolicy, url: &str) -> bool {
        policy.check(&reqwest::Url::parse(url).unwrap()).is_ok()
    }

    #[test]
    fn a_request_holding_a_secret_is_journaled_masked_and_sent_whole() {
        let store = kiln_store::Store::new(std::sync::Arc::new(kiln_store::MemoryBackend::new()))
            .sealed(std::sync::Arc::new(kiln_store::SealKey::from_bytes(
                &[3; 32],
            )));
        let run = kiln_types::RunId::generate(1);
        let request = FetchRequest {
            method: "POST".into(),
            url: "http://127.0.0.1:9/charge?key=sk_test_0123".into(),
            headers: vec![("Authorization".into(), "Bearer sk_test_0123".into())],
            body: Some(BASE64.encode(r#"{"key":"sk_test_0123"}"#)),
            timeout_ms: None,
            sealed: None,
        };
        let nothing = kiln_sandbox::Redactor::default();
        assert_eq!(
            journaled(request.clone(), &nothing, &store, (&run, 1, 4)),
            request
        );

        let redactor = kiln_sandbox::Redactor::new(["sk_test_0123".to_string()]);
        let masked = journaled(request.clone(), &redactor, &store, (&run, 1, 4));
        let text = serde_json::to_string(&masked).unwrap();
        assert!(!text.contains("sk_test_0123"), "{text}");
        assert_eq!(masked.headers[0].1, "Bearer <redacted>");
        assert_eq!(masked.url, "http://127.0.0.1:9/charge?key=<redacted>");
        assert_eq!(
            BASE64.decode(masked.body.as_ref().unwrap()).unwrap(),
            br#"{"key":"<redacted>"}"#
        );
        let sent = unsealed(&store, &run, 1, 4, masked.clone()).unwrap();
        assert_eq!(
            sent, request,
            "the host sends the request as the task made it"
        );
        assert!(
            unsealed(&store, &run, 1, 5, masked).is_err(),
            "bound to its wait"
        );
        // Unmasked requests pass through.
        let plain = FetchRequest {
            url: "http://127.0.0.1:9/".into(),
            headers: Vec::new(),
            body: None,
            ..request
        };
        assert_eq!(
            journaled(plain.clone(), &redactor, &store, (&run, 1, 6)),
            plain
        );
    }

    #[test]
    fn nothing_is_allowed_by_default_but_loopback_in_dev() {
        let prod = FetchPolicy::new(Vec::new(), "prod");
        assert!(!allows(&prod, "https://example.com/"));
        assert!(!allows(&prod, "http://127.0.0.1:8080/"));
        let dev = FetchPolicy::new(Vec::new(), "dev");
        assert!(allows(&dev, "http://127.0.0.1:8080/x"));
        assert!(allows(&dev, "http://localhost/"));
        assert!(allows(&dev, "http://[::1]:9/"));
        assert!(!allows(&dev, "https://example.com/"));
        assert!(!allows(&dev, "file:///etc/passwd"));
    }

    #[test]
    fn patterns_match_hosts_ports_and_subdomains() {
        let policy = FetchPolicy::new(
            vec![
                "api.stripe.com".into(),
                "*.example.com".into(),
                "hooks.internal:8443".into(),
            ],
            "prod",
        );
        assert!(allows(&policy, "https://api.stripe.com/v1/charges"));
        assert!(!allows(&policy, "https://stripe.com/"));
        assert!(allows(&policy, "https://a.b.example.com/"));
        assert!(!allows(&policy, "https://example.com.evil.net/"));
        assert!(allows(&policy, "https://hooks.internal:8443/"));
        assert!(!allows(&policy, "https://hooks.internal/"));
        let everything = FetchPolicy::new(vec!["*".into()], "prod");
        assert!(allows(&everything, "http://10.0.0.1/"));
    }
}
