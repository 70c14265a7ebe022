//! A test guest whose tasks probe how Kiln handles guests that misbehave or
//! reach for what is not there yet.

use kiln_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Returns its payload, with the run's context and a host clock and random
/// reading.
#[task(id = "echo")]
pub async fn echo(payload: Value, ctx: &Context) -> Result<Value, TaskError> {
    Ok(serde_json::json!({
        "payload": payload,
        "runId": ctx.run_id,
        "attempt": ctx.attempt,
        "version": ctx.version,
        "nowMs": ctx.now_ms(),
        "random": ctx.random_u64().to_string(),
    }))
}

/// Panics with the payload's `message`.
#[task(id = "panic", retry(max_attempts = 1))]
pub async fn panic(payload: Value, _ctx: &Context) -> Result<Value, TaskError> {
    let message = payload["message"].as_str().unwrap_or("boom").to_string();
    panic!("{message}");
}

/// Returns an error; `abort: true` asks for no retry.
#[derive(Debug, Deserialize)]
pub struct Fail {
    /// The error message.
    pub message: String,
    /// End the run without retrying.
    #[serde(default)]
    pub abort: bool,
}

/// Fails with the payload's message.
#[task(
    id = "fail",
    retry(max_attempts = 2, min_timeout_ms = 10, max_timeout_ms = 10)
)]
pub async fn fail(payload: Fail, _ctx: &Context) -> Result<Value, TaskError> {
    if payload.abort {
        Err(TaskError::abort(payload.message))
    } else {
        Err(TaskError::new(payload.message))
    }
}

/// What an import the server does not implement yet answered.
#[derive(Debug, Serialize)]
pub struct Unsupported {
    /// The host's error, as text.
    pub error: String,
}

/// Calls `trigger`, which this server does not support yet, and returns the
/// host's error as its output: the guest sees an error value, not a trap.
#[task(id = "unsupported")]
pub async fn unsupported(_payload: Value, _ctx: &Context) -> Result<Unsupported, TaskError> {
    use kiln_sdk::bindings::kiln::task::host;
    match host::trigger("echo", "{}", "{}") {
        Ok(id) => Err(TaskError::new(format!("trigger unexpectedly worked: {id}"))),
        Err(error) => Ok(Unsupported {
            error: format!("{error:?}"),
        }),
    }
}

/// Returns a string of `bytes` bytes.
#[derive(Debug, Deserialize)]
pub struct Big {
    /// The output's size in bytes.
    pub bytes: usize,
}

/// Returns an output of the requested size.
#[task(id = "big-output", retry(max_attempts = 1))]
pub async fn big_output(payload: Big, _ctx: &Context) -> Result<String, TaskError> {
    Ok("x".repeat(payload.bytes))
}

/// Waits on a short timer, then returns how long it waited by the host's clock.
#[derive(Debug, Deserialize)]
pub struct Sleep {
    /// Milliseconds to wait.
    pub ms: u64,
}

/// Sleeps through a Kiln wait.
#[task(id = "sleep")]
pub async fn sleep(payload: Sleep, ctx: &Context) -> Result<Value, TaskError> {
    let before = ctx.now_ms();
    kiln_sdk::wait::for_duration(std::time::Duration::from_millis(payload.ms)).await?;
    Ok(serde_json::json!({ "waitedMs": ctx.now_ms().saturating_sub(before) }))
}

kiln_sdk::bundle!(echo, panic, fail, unsupported, big_output, sleep);
