//! The limits an attempt runs under, from its machine preset and run.

use kiln_manifest::Machine;
use std::time::Duration;

/// The limits of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// The cap on the guest's linear memory, in bytes.
    pub memory_bytes: u64,
    /// The guest's CPU share in vCPUs; below 1 the guest is paused between
    /// epoch ticks so that it uses at most this share of a core.
    pub cpu: f64,
    /// The most execution time the run may use, waits excluded.
    pub max_duration: Option<Duration>,
    /// Execution time the run already used in earlier steps.
    pub used: Duration,
}

impl Limits {
    /// The limits of a machine preset, with an optional `maxDuration`.
    pub fn for_machine(machine: Machine, max_duration: Option<Duration>) -> Self {
        Limits {
            memory_bytes: machine.memory_limit_bytes(),
            cpu: machine.cpu(),
            max_duration,
            used: Duration::ZERO,
        }
    }
}
