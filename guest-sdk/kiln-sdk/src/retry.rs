//! Retrying a block inside a run, as Trigger.dev's `retry.onThrow`, and a
//! durable fetch with retries on status codes, as its `retry.fetch`.
//!
//! The backoff between tries is a durable wait, and its randomness comes from
//! the host, so the whole loop is journaled: a run that crashes between two
//! tries resumes where it was, without redoing the tries before.

use crate::wait;
use kiln_manifest::RetryPolicy;
use std::future::Future;
use std::time::Duration;

/// Runs `block` (given the try number, from 1) until it succeeds or
/// `policy.max_attempts` tries have failed; returns the last error then.
pub async fn on_throw<T, E, F, Fut>(policy: RetryPolicy, mut block: F) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match block(attempt).await {
            Ok(value) => return Ok(value),
            Err(error) if attempt >= policy.max_attempts.max(1) => return Err(error),
            Err(_) => {
                let random = if policy.randomize {
                    let bytes = crate::bindings::kiln::task::host::random_bytes(8);
                    let mut buf = [0u8; 8];
                    for (slot, byte) in buf.iter_mut().zip(bytes) {
                        *slot = byte;
                    }
                    (u64::from_le_bytes(buf) >> 11) as f64 / (1u64 << 53) as f64
                } else {
                    0.0
                };
                let delay = policy.delay_ms(attempt, random);
                // A wait that wakes wrongly is a protocol error the host
                // reports itself; the retry goes on either way.
                let _ = wait::for_duration(Duration::from_millis(delay)).await;
                attempt += 1;
            }
        }
    }
}

/// Sends `request` durably, retrying under `policy` while the request fails
/// or `retry_on(status)` says the response is worth another try (say, 429
/// and 5xx). Returns the first response not retried, the last response once
/// tries run out, or the last error. Every try and every backoff is
/// journaled: a run that crashes mid-way never repeats a try it made.
pub async fn fetch(
    policy: RetryPolicy,
    request: crate::fetch::Request,
    retry_on: impl Fn(u16) -> bool,
) -> Result<crate::fetch::Response, crate::fetch::FetchError> {
    let retry_on = &retry_on;
    let outcome = on_throw(policy, |_| {
        let request = request.clone();
        async move {
            match crate::fetch::fetch(request).await {
                Ok(response) if retry_on(response.status) => Err(Ok(response)),
                Ok(response) => Ok(response),
                Err(error) => Err(Err(error)),
            }
        }
    })
    .await;
    match outcome {
        Ok(response) | Err(Ok(response)) => Ok(response),
        Err(Err(error)) => Err(error),
    }
}
