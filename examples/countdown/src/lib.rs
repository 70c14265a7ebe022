//! Kiln example: `countdown`, the simplest way to watch a run wait, survive a
//! restart and resume.
//!
//! For each step the task draws a random number through the host (journaled,
//! so a replay gets the same number), logs it, and waits `wait_ms`. While it
//! waits, the run is `WAITING`: its guest is snapshotted and dropped, so it
//! holds no memory and no concurrency slot. Kill the server during a wait,
//! start it again, and the run resumes where it was, with the same draws.
//!
//! ```text
//! kiln trigger countdown '{"steps": 3, "wait_ms": 10000}' --wait
//! ```

use kiln_sdk::{Context, TaskError, task, wait};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long to count down.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Countdown {
    /// How many steps.
    #[schemars(range(min = 0, max = 10000))]
    pub steps: u32,
    /// Milliseconds to wait after each step.
    pub wait_ms: u64,
}

/// What the countdown drew.
#[derive(Debug, Serialize)]
pub struct Drawn {
    /// How many steps ran.
    pub steps: u32,
    /// One random number per step, in order.
    pub draws: Vec<u32>,
}

/// Draws, logs and waits, `steps` times.
#[task(id = "countdown")]
pub async fn countdown(payload: Countdown, ctx: &Context) -> Result<Drawn, TaskError> {
    let mut draws = Vec::with_capacity(payload.steps as usize);
    for step in 0..payload.steps {
        let draw = (ctx.random_u64() % 1_000_000) as u32;
        draws.push(draw);
        let left = (payload.steps - step - 1).to_string();
        ctx.log.info(
            "drew",
            &[
                ("step", &(step + 1).to_string()),
                ("draw", &draw.to_string()),
                ("left", &left),
            ],
        );
        wait::for_duration(Duration::from_millis(payload.wait_ms)).await?;
    }
    Ok(Drawn {
        steps: payload.steps,
        draws,
    })
}

kiln_sdk::bundle!(countdown);
