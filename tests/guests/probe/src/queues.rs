//! Tasks on declared queues, for the queue tests.

use kiln_sdk::{Context, Queue, RateLimit, TaskError, task};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// One run at a time per concurrency key.
pub const ONE: Queue = Queue::new("probe-one").concurrency_limit(1);

/// One run at a time in all, whatever the key: shows the order runs start in.
pub const FAIR: Queue = Queue::new("probe-fair")
    .concurrency_limit(1)
    .total_concurrency_limit(1);

/// Two starts per two seconds.
pub const RATE: Queue =
    Queue::new("probe-rate").rate_limit(RateLimit::new(2, Duration::from_secs(2)));

/// Declared in `bundle!` only: no task runs on it unless a trigger picks it.
pub const SPARE: Queue = Queue::new("probe-spare").concurrency_limit(3);

/// How long to hold the slot.
#[derive(Debug, Deserialize)]
pub struct Hold {
    /// Milliseconds, waited warm (the run keeps its slot).
    #[serde(default)]
    pub ms: u64,
}

async fn hold(payload: Hold, ctx: &Context) -> Result<Value, TaskError> {
    let started = ctx.now_ms();
    if payload.ms > 0 {
        kiln_sdk::wait::for_duration(Duration::from_millis(payload.ms)).await?;
    }
    Ok(serde_json::json!({ "startedMs": started, "endedMs": ctx.now_ms() }))
}

/// Holds a slot of `probe-one` for `ms`.
#[task(id = "lane-hold", queue = ONE)]
pub async fn lane_hold(payload: Hold, ctx: &Context) -> Result<Value, TaskError> {
    hold(payload, ctx).await
}

/// Holds the single slot of `probe-fair` for `ms`.
#[task(id = "fair-hold", queue = FAIR)]
pub async fn fair_hold(payload: Hold, ctx: &Context) -> Result<Value, TaskError> {
    hold(payload, ctx).await
}

/// Starts under `probe-rate`'s rate limit.
#[task(id = "rated", queue = RATE)]
pub async fn rated(payload: Hold, ctx: &Context) -> Result<Value, TaskError> {
    hold(payload, ctx).await
}

/// On `probe-one` (limit 1), waits for a child on the same queue: the
/// parent must release its slot while it waits, or neither finishes.
#[task(id = "lane-parent", queue = ONE)]
pub async fn lane_parent(_payload: Value, _ctx: &Context) -> Result<Value, TaskError> {
    let child = kiln_sdk::tasks::trigger_and_wait::<_, Value>(
        "lane-hold",
        &serde_json::json!({ "ms": 10 }),
    )
    .await?
    .unwrap()?;
    Ok(serde_json::json!({ "child": child }))
}

/// A task with its own queue limited to 2.
#[task(id = "own-limit", concurrency_limit = 2)]
pub async fn own_limit(payload: Hold, ctx: &Context) -> Result<Value, TaskError> {
    hold(payload, ctx).await
}
