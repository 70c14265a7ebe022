//! Newtype ids with Trigger.dev's prefixes (`run_`, `deploy_`, `sched_`).
//!
//! An id is its prefix followed by 25 lowercase base-32 characters: 10 encode
//! the creation time in milliseconds, 15 are random. Ids therefore sort by
//! creation time, and they are path-safe (the official SDK puts them into URL
//! paths without encoding).

use rand::Rng;
use serde::{Deserialize, Serialize};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const BODY_LEN: usize = 25;
/// The latest time an id can hold: 10 base-32 characters, 50 bits.
const MAX_ID_MS: u64 = (1 << 50) - 1;

/// An id that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{id}` is not a valid {kind} id")]
pub struct IdError {
    /// The kind of id expected.
    pub kind: &'static str,
    /// What was given.
    pub id: String,
}

fn generate(prefix: &str, now_ms: u64) -> String {
    let mut out = String::with_capacity(prefix.len() + BODY_LEN);
    out.push_str(prefix);
    for i in (0..10).rev() {
        out.push(ALPHABET[((now_ms >> (i * 5)) & 31) as usize] as char);
    }
    let mut rng = rand::rng();
    for _ in 0..15 {
        out.push(ALPHABET[rng.random_range(0..32)] as char);
    }
    out
}

/// When an id with `prefix` was made, in milliseconds, read from its first
/// ten characters; `None` if it does not start as an id does.
fn made_ms(prefix: &str, id: &str) -> Option<u64> {
    let time = id.strip_prefix(prefix)?.as_bytes().get(..10)?;
    time.iter().try_fold(0u64, |ms, &b| {
        let digit = ALPHABET.iter().position(|&a| a == b)?;
        Some(ms << 5 | digit as u64)
    })
}

/// Whether `b` is one of [`ALPHABET`]'s characters (a range test, not a
/// walk of the alphabet: every run id the API and the engine are handed is
/// checked).
fn in_alphabet(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'h' | b'j' | b'k' | b'm' | b'n' | b'p'..=b't' | b'v'..=b'z')
}

fn check(prefix: &str, kind: &'static str, id: &str) -> Result<(), IdError> {
    let ok = id
        .strip_prefix(prefix)
        .is_some_and(|body| body.len() == BODY_LEN && body.bytes().all(in_alphabet));
    if ok {
        Ok(())
    } else {
        Err(IdError {
            kind,
            id: id.chars().take(80).collect(),
        })
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id's prefix.
            pub const PREFIX: &'static str = $prefix;

            /// A new id for something created at `now_ms`.
            pub fn generate(now_ms: u64) -> Self {
                $name(generate($prefix, now_ms))
            }

            /// The lowest id something created at `ms` can have: every id
            /// below it was made earlier. An id holds 50 bits of
            /// milliseconds (until the year 37648); a later `ms` gives the
            /// highest such id, above every id made.
            pub fn lowest_at(ms: u64) -> Self {
                let mut id = generate($prefix, ms.min(MAX_ID_MS));
                id.truncate($prefix.len() + 10);
                id.push_str(&"0".repeat(BODY_LEN - 10));
                $name(id)
            }

            /// When the id was made, in milliseconds since the Unix epoch
            /// (the time it was generated with); `None` if it does not
            /// start as an id does (one read from a record is not checked).
            pub fn made_ms(&self) -> Option<u64> {
                made_ms($prefix, &self.0)
            }

            /// Parses an id, checking its prefix and characters.
            pub fn parse(id: &str) -> Result<Self, IdError> {
                check($prefix, $kind, id)?;
                Ok($name(id.to_string()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A run's id (`run_...`).
    RunId,
    "run_",
    "run"
);
id_type!(
    /// A deployment's id (`deploy_...`).
    DeploymentId,
    "deploy_",
    "deployment"
);
impl DeploymentId {
    /// No deployment: what a `PENDING_VERSION` run is pinned to until a
    /// deploy brings its task.
    pub fn none() -> Self {
        DeploymentId(String::new())
    }

    /// Whether this is [`DeploymentId::none`].
    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }
}

id_type!(
    /// A batch's id (`batch_...`).
    BatchId,
    "batch_",
    "batch"
);
id_type!(
    /// A wait token's id (`waitpoint_...`).
    TokenId,
    "waitpoint_",
    "wait token"
);
id_type!(
    /// A schedule's id (`sched_...`).
    ScheduleId,
    "sched_",
    "schedule"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_test_takes_exactly_the_alphabets_characters() {
        for b in 0..=u8::MAX {
            assert_eq!(in_alphabet(b), ALPHABET.contains(&b), "byte {b}");
        }
    }

    #[test]
    fn generated_ids_parse_and_sort_by_time() {
        let a = RunId::generate(1_700_000_000_000);
        let b = RunId::generate(1_700_000_000_001);
        assert!(a < b);
        assert_eq!(RunId::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.as_str().len(), 4 + BODY_LEN);
        assert_eq!(a.made_ms(), Some(1_700_000_000_000));
        assert_eq!(b.made_ms(), Some(1_700_000_000_001));
        assert_eq!(RunId::lowest_at(5).made_ms(), Some(5));
        assert_eq!(RunId("run_0i".into()).made_ms(), None);
        assert_eq!(RunId("run_000000000u000".into()).made_ms(), None);
        // The lowest id of a millisecond bounds every id made in it.
        let floor = RunId::lowest_at(1_700_000_000_001);
        assert!(a < floor && floor <= b);
        assert_eq!(RunId::parse(floor.as_str()).unwrap(), floor);
        // Past what an id holds, the bound stays above every id rather
        // than wrapping around below them.
        for ms in [MAX_ID_MS + 1, 9_007_199_254_740_991, u64::MAX] {
            assert!(RunId::lowest_at(ms) > b, "{ms}");
        }
    }

    #[test]
    fn parse_rejects_wrong_shapes() {
        assert!(RunId::parse("run_short").is_err());
        assert!(RunId::parse("batch_0000000000000000000000000").is_err());
        assert!(RunId::parse("run_000000000000000000000000/").is_err());
        let deploy = DeploymentId::generate(5);
        assert!(RunId::parse(deploy.as_str()).is_err());
    }
}
