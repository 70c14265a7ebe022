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
//! environment. Whatever the name patterns allow, internal addresses
//! (loopback, private, link-local such as cloud metadata endpoints) are
//! refused unless a pattern names the address or its network, checked on
//! the addresses a name resolves to at connect time. Redirects are not
//! followed, so a redirect cannot lead around the allowlist; the task sees
//! the 3xx.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kiln_types::{FetchRequest, FetchResponse, WakeValue};
use std::net::IpAddr;
use std::time::Duration;

/// The largest response body a fetch accepts.
pub const MAX_FETCH_BODY: usize = 10 * 1024 * 1024;
/// How long a fetch may take unless the task says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout a task may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// Which hosts and addresses tasks may fetch from.
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    /// Patterns: `*` (anything), `host`, `host:port`, `*.domain`, and
    /// addresses or networks (`10.1.2.3`, `10.0.0.0/8`), which also allow
    /// those addresses past the guard on internal ones.
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

    /// The networks the patterns name explicitly.
    fn networks(&self) -> Vec<ipnet::IpNet> {
        self.allow
            .iter()
            .filter_map(|pattern| {
                let pattern = pattern.trim();
                pattern
                    .parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| pattern.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
            })
            .collect()
    }

    /// Whether a connection may go to `ip`: any public address; an internal
    /// one (loopback, private, link-local, shared, multicast, unspecified,
    /// broadcast) only when a pattern names it or its network, or loopback
    /// in `dev`.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if !is_internal(ip) {
            return true;
        }
        (self.loopback && ip.is_loopback()) || self.networks().iter().any(|n| n.contains(&ip))
    }

    /// Whether `url` may be fetched, or why not. A name is checked against
    /// the patterns here and its addresses when it is resolved
    /// ([`GuardedResolver`]); an address in the URL is checked here.
    pub fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{url}` is not an http or https URL"));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default().unwrap_or(0);
        if let Ok(ip) = host.parse::<IpAddr>()
            && !self.address_allowed(ip)
        {
            return Err(refused_address(host));
        }
        if self.loopback && is_loopback(host) {
            return Ok(());
        }
        let networks = self.networks();
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
        }) || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| networks.iter().any(|n| n.contains(&ip)));
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "fetching `{host}:{port}` is not allowed on this server; an operator allows it with `kiln serve --allow-fetch {host}`"
            ))
        }
    }
}

/// Whether `ip` is an address inside a network rather than on the public
/// internet (cloud metadata endpoints are link-local).
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

fn refused_address(host: &str) -> String {
    format!(
        "`{host}` is an internal address (loopback, private, link-local...): fetching it is not allowed on this server unless an operator names it with `kiln serve --allow-fetch <address or network>`"
    )
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Resolves the names durable fetches connect to and keeps only the
/// addresses the policy allows. The check is made on the very addresses
/// the connection then uses, so a name cannot pass a check with a public
/// address and connect to an internal one (DNS rebinding).
struct GuardedResolver {
    policy: FetchPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<std::net::SocketAddr> = resolved
                .filter(|address| policy.address_allowed(address.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(refused_address(&host).into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client an environment's fetches go through: no redirects, no
/// proxy from the environment, and names resolved under `policy`.
pub(crate) fn client(policy: &FetchPolicy) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(GuardedResolver {
            policy: policy.clone(),
        }))
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

/// Whether a header carries credentials whatever its value: its value is
/// journaled masked even when it holds no variable Kiln knows of (a key
/// compiled into the bundle, a token a login returned).
fn is_credential(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    ) || ["key", "token", "secret", "password", "signature"]
        .iter()
        .any(|part| name.contains(part))
}

/// A URL as journaled: secret values masked, and a password in it or the
/// value of a credential-named query parameter (`api_key`, `token`...)
/// masked whatever it is.
fn masked_url(url: &str, redactor: &kiln_sandbox::Redactor) -> String {
    let text = redactor.redact(url).into_owned();
    let Ok(mut parsed) = reqwest::Url::parse(&text) else {
        return text;
    };
    let mut changed = false;
    if parsed.password().is_some_and(|p| p != "redacted") {
        changed |= parsed.set_password(Some("redacted")).is_ok();
    }
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    if pairs
        .iter()
        .any(|(name, value)| is_credential(name) && value != kiln_sandbox::MASK)
    {
        let masked: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(name, value)| {
                if is_credential(&name) {
                    (name, kiln_sandbox::MASK.to_string())
                } else {
                    (name, value)
                }
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(masked);
        changed = true;
    }
    if changed { parsed.to_string() } else { text }
}

/// A base64 body with every secret masked, if it held one.
fn masked_body(body: &str, redactor: &kiln_sandbox::Redactor) -> Option<String> {
    let bytes = BASE64.decode(body).ok()?;
    match String::from_utf8(bytes) {
        Ok(text) => match redactor.redact(&text) {
            std::borrow::Cow::Owned(masked) => Some(BASE64.encode(masked)),
            std::borrow::Cow::Borrowed(_) => None,
        },
        Err(e) => redactor
            .redact_bytes(e.as_bytes())
            .map(|masked| BASE64.encode(masked)),
    }
}

/// The request as journaled: credential headers masked, secret values
/// masked in its URL, other headers and body (text or not), and then the
/// request as made sealed beside them, for the host to send; unchanged
/// when nothing was masked. Refused when something must be masked and the
/// store has no master key to seal the original with.
pub(crate) fn journaled(
    request: FetchRequest,
    redactor: &kiln_sandbox::Redactor,
    store: &kiln_store::Store,
    (run, attempt, wait_id): (&kiln_types::RunId, u32, u64),
) -> Result<FetchRequest, String> {
    let masked = FetchRequest {
        method: request.method.clone(),
        url: masked_url(&request.url, redactor),
        headers: request
            .headers
            .iter()
            .map(|(name, value)| {
                let value = if is_credential(name) {
                    kiln_sandbox::MASK.to_string()
                } else {
                    redactor.redact(value).into_owned()
                };
                (name.clone(), value)
            })
            .collect(),
        body: request
            .body
            .as_ref()
            .map(|body| masked_body(body, redactor).unwrap_or_else(|| body.clone())),
        timeout_ms: request.timeout_ms,
        sealed: None,
    };
    if masked == request {
        return Ok(request);
    }
    let key = store.seal_key().map_err(|_| {
        "the request holds credentials and the server has no master key to keep them sealed"
            .to_string()
    })?;
    let plain = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let sealed = key
        .seal(&context(run, attempt, wait_id), &plain)
        .map_err(|e| e.to_string())?;
    Ok(FetchRequest {
        sealed: Some(hex::encode(sealed)),
        ..masked
    })
}

/// What a response is sealed with: it opens only as this run's, this
/// attempt's, this wait's.
fn response_context(run: &kiln_types::RunId, attempt: u32, wait_id: u64) -> Vec<u8> {
    format!("fetch-response/{run}/{attempt}/{wait_id}").into_bytes()
}

/// A fetch's wake as journaled: a response that quotes a secret value (a
/// server that echoes the key) masked, with the response as received sealed
/// beside it, and an error that quotes one (a connection error naming the
/// URL) masked. The task gets the response as received, now and on every
/// replay ([`unmask_replay`]); an error reaches it masked, as journaled.
pub(crate) fn journaled_wake(
    value: WakeValue,
    redactor: &kiln_sandbox::Redactor,
    store: &kiln_store::Store,
    (run, attempt, wait_id): (&kiln_types::RunId, u32, u64),
) -> Result<WakeValue, String> {
    if redactor.is_empty() {
        return Ok(value);
    }
    let WakeValue::Fetch { response, error } = value else {
        return Ok(value);
    };
    let error = error.map(|e| redactor.redact_owned(e));
    let Some(response) = response else {
        return Ok(WakeValue::Fetch {
            response: None,
            error,
        });
    };
    let masked = FetchResponse {
        status: response.status,
        headers: response
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), redactor.redact(value).into_owned()))
            .collect(),
        body: masked_body(&response.body, redactor).unwrap_or_else(|| response.body.clone()),
        sealed: None,
    };
    if masked == response {
        return Ok(WakeValue::Fetch {
            response: Some(response),
            error,
        });
    }
    let sealed = seal_json(store, &response_context(run, attempt, wait_id), &response)?;
    Ok(WakeValue::Fetch {
        response: Some(FetchResponse {
            sealed: Some(sealed),
            ..masked
        }),
        error,
    })
}

/// The wake a task gets for a journaled one: the response as received
/// when it was sealed.
pub(crate) fn delivered_wake(
    value: WakeValue,
    store: &kiln_store::Store,
    (run, attempt, wait_id): (&kiln_types::RunId, u32, u64),
) -> Result<WakeValue, String> {
    let WakeValue::Fetch {
        response: Some(response),
        error,
    } = &value
    else {
        return Ok(value);
    };
    let Some(sealed) = &response.sealed else {
        return Ok(value);
    };
    let original: FetchResponse = open_json(
        store,
        &response_context(run, attempt, wait_id),
        sealed,
        "response",
    )?;
    Ok(WakeValue::Fetch {
        response: Some(original),
        error: error.clone(),
    })
}

/// Puts back, in the replay's copy of the journal only (never stored), the
/// URL each sealed fetch request was made with, so a replayed step is
/// compared with what the task asked for then whatever the secrets are now,
/// and each sealed response as received, for the task to get again.
/// Fails when a sealed response does not open: the task cannot be given
/// what it got the first time.
pub(crate) fn unmask_replay(
    replay: &mut std::collections::VecDeque<kiln_types::JournalEntry>,
    store: &kiln_store::Store,
    run: &kiln_types::RunId,
    attempt: u32,
) -> Result<(), String> {
    for entry in replay.iter_mut() {
        if let kiln_types::JournalEntry::Wake { id, value } = entry {
            // Only a response that was sealed is opened (and copied).
            if matches!(value, WakeValue::Fetch { response: Some(r), .. } if r.sealed.is_some()) {
                *value = delivered_wake(value.clone(), store, (run, attempt, *id))?;
            }
            continue;
        }
        let kiln_types::JournalEntry::Waits { waits } = entry else {
            continue;
        };
        for wait in waits.iter_mut() {
            if let kiln_types::WaitOn::Fetch { request } = &mut wait.on
                && request.sealed.is_some()
                && let Ok(original) = unsealed(store, run, attempt, wait.id, request.clone())
            {
                request.url = original.url;
            }
        }
    }
    Ok(())
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
    open_json(store, &context(run, attempt, wait_id), sealed, "request")
}

/// `value` as JSON, sealed with the store's master key under `context`
/// and hex-encoded.
fn seal_json(
    store: &kiln_store::Store,
    context: &[u8],
    value: &impl serde::Serialize,
) -> Result<String, String> {
    let plain = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let key = store.seal_key().map_err(|e| e.to_string())?;
    let sealed = key.seal(context, &plain).map_err(|e| e.to_string())?;
    Ok(hex::encode(sealed))
}

/// What [`seal_json`] sealed (`what` names it in errors).
fn open_json<T: serde::de::DeserializeOwned>(
    store: &kiln_store::Store,
    context: &[u8],
    sealed: &str,
    what: &str,
) -> Result<T, String> {
    let bytes = hex::decode(sealed).map_err(|e| format!("the journaled {what} is corrupt: {e}"))?;
    let plain = store
        .seal_key()
        .map_err(|e| e.to_string())?
        .open(context, &bytes)
        .map_err(|e| format!("the journaled {what} could not be opened: {e}"))?;
    serde_json::from_slice(&plain).map_err(|e| format!("the journaled {what} is corrupt: {e}"))
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
        sealed: None,
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

    /// A store in memory that seals with a key made of `byte`.
    fn sealed_store(byte: u8) -> kiln_store::Store {
        kiln_store::Store::new(std::sync::Arc::new(kiln_store::MemoryBackend::new())).sealed(
            std::sync::Arc::new(kiln_store::SealKey::from_bytes(&[byte; 32])),
        )
    }

    fn allows(policy: &FetchPolicy, url: &str) -> bool {
        policy.check(&reqwest::Url::parse(url).unwrap()).is_ok()
    }

    #[tokio::test]
    async fn a_failed_requests_error_names_no_credentials_of_its_url() {
        // Nothing listens on port 9 of loopback: the connection is refused.
        // reqwest names the URL in its error, but it has moved the URL's
        // credentials into a header by then: the journal (and a trace
        // built from it) never holds them.
        let error = reqwest::Client::new()
            .get("http://ada:hunter2@127.0.0.1:9/path")
            .send()
            .await
            .expect_err("refused");
        let described = describe(&error);
        assert!(described.contains("127.0.0.1:9/path"), "{described}");
        assert!(!described.contains("hunter2"), "{described}");
    }

    #[test]
    fn a_request_holding_a_secret_is_journaled_masked_and_sent_whole() {
        let store = sealed_store(3);
        let run = kiln_types::RunId::generate(1);
        let request = FetchRequest {
            method: "POST".into(),
            url: "http://127.0.0.1:9/charge?key=sk_test_0123".into(),
            headers: vec![("Authorization".into(), "Bearer sk_test_0123".into())],
            body: Some(BASE64.encode(r#"{"key":"sk_test_0123"}"#)),
            timeout_ms: None,
            sealed: None,
        };
        // A credential header is masked even with no secret known.
        let nothing = kiln_sandbox::Redactor::default();
        let masked = journaled(request.clone(), &nothing, &store, (&run, 1, 4)).unwrap();
        assert_eq!(masked.headers[0].1, "<redacted>");
        assert_eq!(
            masked.url, "http://127.0.0.1:9/charge?key=%3Credacted%3E",
            "a credential-named parameter is masked whatever it holds"
        );
        assert!(masked.sealed.is_some());

        let redactor = kiln_sandbox::Redactor::new(["sk_test_0123".to_string()]);
        let masked = journaled(request.clone(), &redactor, &store, (&run, 1, 4)).unwrap();
        let text = serde_json::to_string(&masked).unwrap();
        assert!(!text.contains("sk_test_0123"), "{text}");
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
            unsealed(&store, &run, 1, 5, masked.clone()).is_err(),
            "bound to its wait"
        );

        // A replay compares the URL the task asked for, not a masked one.
        let mut replay = std::collections::VecDeque::from([kiln_types::JournalEntry::Waits {
            waits: vec![kiln_types::WaitRecord {
                id: 4,
                on: kiln_types::WaitOn::Fetch { request: masked },
            }],
        }]);
        unmask_replay(&mut replay, &store, &run, 1).unwrap();
        let kiln_types::JournalEntry::Waits { waits } = &replay[0] else {
            unreachable!()
        };
        let kiln_types::WaitOn::Fetch { request: back } = &waits[0].on else {
            unreachable!()
        };
        assert_eq!(back.url, request.url);

        // A password in the URL and credential-named parameters are masked
        // whatever they hold.
        let hidden = FetchRequest {
            url: "https://user:pw123@api.x/v1?api_key=abc&page=2".into(),
            headers: Vec::new(),
            body: None,
            ..request.clone()
        };
        let masked = journaled(hidden.clone(), &nothing, &store, (&run, 1, 7)).unwrap();
        assert!(
            !masked.url.contains("pw123") && !masked.url.contains("abc"),
            "{}",
            masked.url
        );
        assert!(masked.url.contains("page=2"), "{}", masked.url);
        assert_eq!(unsealed(&store, &run, 1, 7, masked).unwrap(), hidden);

        // Requests with nothing to mask pass through, and need no key.
        let plain = FetchRequest {
            url: "http://127.0.0.1:9/".into(),
            headers: vec![("accept".into(), "text/plain".into())],
            body: None,
            ..request
        };
        let keyless = kiln_store::Store::new(std::sync::Arc::new(kiln_store::MemoryBackend::new()));
        assert_eq!(
            journaled(plain.clone(), &redactor, &keyless, (&run, 1, 6)).unwrap(),
            plain
        );
        let with_key = FetchRequest {
            headers: vec![("x-api-key".into(), "k".into())],
            ..plain
        };
        assert!(
            journaled(with_key, &redactor, &keyless, (&run, 1, 6)).is_err(),
            "nothing masked is journaled without a key to seal the original"
        );
    }

    #[test]
    fn a_wake_that_quotes_a_secret_is_journaled_masked_and_delivered_as_received() {
        let store = sealed_store(4);
        let run = kiln_types::RunId::generate(1);
        let redactor = kiln_sandbox::Redactor::new(["sk_test_0123".to_string()]);
        let received = FetchResponse {
            status: 200,
            headers: vec![("x-echo".into(), "sk_test_0123".into())],
            body: BASE64.encode("token=sk_test_0123"),
            sealed: None,
        };
        let wake = WakeValue::Fetch {
            response: Some(received.clone()),
            error: None,
        };
        let journaled = journaled_wake(wake, &redactor, &store, (&run, 1, 2)).unwrap();
        let text = serde_json::to_string(&journaled).unwrap();
        assert!(!text.contains("sk_test_0123"), "{text}");
        assert!(text.contains(&BASE64.encode("token=<redacted>")), "{text}");
        let mut replay = std::collections::VecDeque::from([kiln_types::JournalEntry::Wake {
            id: 2,
            value: journaled.clone(),
        }]);
        unmask_replay(&mut replay, &store, &run, 1).unwrap();
        let kiln_types::JournalEntry::Wake { value, .. } = &replay[0] else {
            unreachable!()
        };
        assert_eq!(
            *value,
            WakeValue::Fetch {
                response: Some(received),
                error: None
            },
            "the task gets the response as received"
        );
        let mut elsewhere = std::collections::VecDeque::from([kiln_types::JournalEntry::Wake {
            id: 3,
            value: journaled,
        }]);
        assert!(unmask_replay(&mut elsewhere, &store, &run, 1).is_err());

        // An error quoting the URL reaches the journal (and the task) masked.
        let failed = WakeValue::Fetch {
            response: None,
            error: Some("error sending request for url (http://x/?k=sk_test_0123)".into()),
        };
        let text = serde_json::to_string(
            &journaled_wake(failed, &redactor, &store, (&run, 1, 4)).unwrap(),
        )
        .unwrap();
        assert!(!text.contains("sk_test_0123"), "{text}");
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
        assert!(allows(&everything, "https://93.184.215.14/"));
        assert!(
            !allows(&everything, "http://10.0.0.1/"),
            "`*` is no internal address"
        );
    }

    #[test]
    fn internal_addresses_need_to_be_named() {
        let anything = FetchPolicy::new(vec!["*".into()], "prod");
        for url in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://224.0.0.1/",
        ] {
            assert!(!allows(&anything, url), "{url}");
        }
        let named = FetchPolicy::new(
            vec!["10.0.0.0/8".into(), "169.254.1.2".into(), "*".into()],
            "prod",
        );
        assert!(allows(&named, "http://10.9.8.7/"));
        assert!(allows(&named, "http://169.254.1.2/"));
        assert!(!allows(&named, "http://169.254.169.254/"));
        // A network alone allows its addresses, not every name.
        let only = FetchPolicy::new(vec!["10.0.0.0/8".into()], "prod");
        assert!(allows(&only, "http://10.0.0.5/"));
        assert!(!allows(&only, "https://example.com/"));
        assert!(only.address_allowed("93.184.215.14".parse().unwrap()));
        assert!(!only.address_allowed("127.0.0.1".parse().unwrap()));
        let dev = FetchPolicy::new(Vec::new(), "dev");
        assert!(dev.address_allowed("127.0.0.1".parse().unwrap()));
        assert!(!dev.address_allowed("10.0.0.1".parse().unwrap()));
    }
}
