//! Durable waits: while a task waits, its run holds no memory on the server
//! and no concurrency slot.

use crate::TaskError;
use crate::bindings::kiln::task::types::{WaitKind, WakeValue};
use crate::executor::WaitFuture;
use std::time::{Duration, SystemTime};

/// Waits for `duration`.
pub async fn for_duration(duration: Duration) -> Result<(), TaskError> {
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    expect_timer(WaitFuture::new(WaitKind::Duration(ms)).await)
}

/// Waits until `at` (returns at once if it has passed).
pub async fn until(at: SystemTime) -> Result<(), TaskError> {
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    expect_timer(WaitFuture::new(WaitKind::Until(ms)).await)
}

fn expect_timer(value: WakeValue) -> Result<(), TaskError> {
    match value {
        WakeValue::Timer => Ok(()),
        _ => Err(
            TaskError::new("a timer wait woke with something other than its timer")
                .with_name("KilnProtocolError"),
        ),
    }
}
