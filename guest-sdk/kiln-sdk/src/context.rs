//! What a task knows about its run, and the host calls it makes through it.

use crate::bindings::kiln::task::{host, types as wit};
use crate::log::Logger;
use std::time::{Duration, SystemTime};

/// The run a task is executing, and the host services it may use.
///
/// Time and randomness come from the host, never from the guest's own
/// environment, so that Kiln can journal them and replay a run exactly.
#[derive(Debug, Clone)]
pub struct Context {
    /// The run's id (`run_...`).
    pub run_id: String,
    /// The task's id.
    pub task_id: String,
    /// The attempt number, starting at 1.
    pub attempt: u32,
    /// Attempts the run may make in all.
    pub max_attempts: u32,
    /// The environment the run belongs to.
    pub environment: String,
    /// The deployment version the run is pinned to.
    pub version: String,
    /// The machine preset the attempt runs on.
    pub machine: String,
    /// The run's tags.
    pub tags: Vec<String>,
    /// The run's metadata, as it was when the attempt started.
    pub metadata: serde_json::Value,
    /// When the run was triggered, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The run's logger.
    pub log: Logger,
}

impl Context {
    pub(crate) fn from_wit(ctx: &wit::StartContext) -> Self {
        Context {
            run_id: ctx.run_id.clone(),
            task_id: ctx.task_id.clone(),
            attempt: ctx.attempt,
            max_attempts: ctx.max_attempts,
            environment: ctx.environment.clone(),
            version: ctx.version.clone(),
            machine: ctx.machine.clone(),
            tags: ctx.tags.clone(),
            metadata: serde_json::from_str(&ctx.metadata)
                .unwrap_or_else(|_| serde_json::Value::Object(Default::default())),
            created_at_ms: ctx.created_at_ms,
            log: Logger::new(),
        }
    }

    /// Whether this is the run's last attempt: if it fails, the run fails.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The current time in milliseconds since the Unix epoch, from the host.
    pub fn now_ms(&self) -> u64 {
        host::now_ms()
    }

    /// The current time, from the host.
    pub fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.now_ms())
    }

    /// `len` random bytes from the host's CSPRNG (at most 65,536).
    pub fn random_bytes(&self, len: u32) -> Vec<u8> {
        host::random_bytes(len)
    }

    /// A random `u64` from the host.
    pub fn random_u64(&self) -> u64 {
        let bytes = host::random_bytes(8);
        let mut buf = [0u8; 8];
        for (slot, byte) in buf.iter_mut().zip(bytes) {
            *slot = byte;
        }
        u64::from_le_bytes(buf)
    }

    /// A random number in `[0, 1)` from the host.
    pub fn random_f64(&self) -> f64 {
        (self.random_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
