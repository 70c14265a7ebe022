//! Machine presets, as Trigger.dev names them.

use serde::{Deserialize, Serialize};

/// A machine preset: the CPU share and memory cap an attempt runs with.
///
/// Memory is a hard cap on the guest's linear memory. A wasm32 memory tops out
/// at 4 GiB, so `large-1x` and `large-2x` differ from `medium-2x` in CPU share
/// only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Machine {
    /// 0.25 vCPU, 0.25 GB.
    #[serde(rename = "micro")]
    Micro,
    /// 0.5 vCPU, 0.5 GB (the default).
    #[default]
    #[serde(rename = "small-1x")]
    Small1x,
    /// 1 vCPU, 1 GB.
    #[serde(rename = "small-2x")]
    Small2x,
    /// 1 vCPU, 2 GB.
    #[serde(rename = "medium-1x")]
    Medium1x,
    /// 2 vCPU, 4 GB.
    #[serde(rename = "medium-2x")]
    Medium2x,
    /// 4 vCPU, 8 GB (memory capped at 4 GiB by wasm32).
    #[serde(rename = "large-1x")]
    Large1x,
    /// 8 vCPU, 16 GB (memory capped at 4 GiB by wasm32).
    #[serde(rename = "large-2x")]
    Large2x,
}

/// A machine name that is not one of the presets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMachine(pub String);

impl std::fmt::Display for UnknownMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown machine preset `{}`; use one of {}",
            self.0,
            Machine::ALL.map(|m| m.name()).join(", ")
        )
    }
}

impl std::error::Error for UnknownMachine {}

impl Machine {
    /// Every preset, smallest first.
    pub const ALL: [Machine; 7] = [
        Machine::Micro,
        Machine::Small1x,
        Machine::Small2x,
        Machine::Medium1x,
        Machine::Medium2x,
        Machine::Large1x,
        Machine::Large2x,
    ];

    /// The preset's name on the wire (`small-1x`).
    pub fn name(self) -> &'static str {
        match self {
            Machine::Micro => "micro",
            Machine::Small1x => "small-1x",
            Machine::Small2x => "small-2x",
            Machine::Medium1x => "medium-1x",
            Machine::Medium2x => "medium-2x",
            Machine::Large1x => "large-1x",
            Machine::Large2x => "large-2x",
        }
    }

    /// The preset's CPU share in vCPUs.
    pub fn cpu(self) -> f64 {
        match self {
            Machine::Micro => 0.25,
            Machine::Small1x => 0.5,
            Machine::Small2x | Machine::Medium1x => 1.0,
            Machine::Medium2x => 2.0,
            Machine::Large1x => 4.0,
            Machine::Large2x => 8.0,
        }
    }

    /// The preset's memory in GB, as Trigger.dev advertises it.
    pub fn memory_gb(self) -> f64 {
        match self {
            Machine::Micro => 0.25,
            Machine::Small1x => 0.5,
            Machine::Small2x => 1.0,
            Machine::Medium1x => 2.0,
            Machine::Medium2x => 4.0,
            Machine::Large1x => 8.0,
            Machine::Large2x => 16.0,
        }
    }

    /// The cap on the guest's linear memory, in bytes: the preset's memory in
    /// GiB, at most 4 GiB (the wasm32 limit).
    pub fn memory_limit_bytes(self) -> u64 {
        const GIB: f64 = (1u64 << 30) as f64;
        ((self.memory_gb() * GIB) as u64).min(4 << 30)
    }
}

impl std::str::FromStr for Machine {
    type Err = UnknownMachine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Machine::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMachine(s.to_string()))
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Machine::ALL {
            assert_eq!(m.name().parse::<Machine>().unwrap(), m);
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.name())
            );
        }
        let err = "huge".parse::<Machine>().unwrap_err().to_string();
        assert!(err.contains("micro, small-1x"), "{err}");
    }

    #[test]
    fn memory_is_capped_at_four_gib() {
        assert_eq!(Machine::Micro.memory_limit_bytes(), 256 << 20);
        assert_eq!(Machine::Small1x.memory_limit_bytes(), 512 << 20);
        assert_eq!(Machine::Medium2x.memory_limit_bytes(), 4 << 30);
        assert_eq!(Machine::Large2x.memory_limit_bytes(), 4 << 30);
    }
}
