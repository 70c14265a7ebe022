//! The distributed trace a run belongs to, in W3C Trace Context terms.

use serde::{Deserialize, Serialize};

/// Where a run's span sits in a distributed trace: the trace a backend's
/// `traceparent` header named at trigger time, or the trace of the parent
/// run for a child. A run without one starts a trace of its own.
///
/// Stored in a run's record by field number (see `kiln_store`'s
/// `numbered`): a new field goes after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceContext {
    /// The trace's id: 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// The span the run's own span is a child of: 16 lowercase hex digits,
    /// not all zero.
    pub parent_span_id: String,
    /// Whether the trace is recorded (the `sampled` flag): a caller that
    /// does not record it gets no spans of the run, nor of its children.
    #[serde(default = "recorded", skip_serializing_if = "is_recorded")]
    pub sampled: bool,
}

fn recorded() -> bool {
    true
}

fn is_recorded(sampled: &bool) -> bool {
    *sampled
}

impl TraceContext {
    /// Reads a W3C `traceparent` header (`00-<trace id>-<parent id>-<flags>`).
    /// `None` for anything the Trace Context specification says to ignore:
    /// a wrong shape, upper-case or non-hex digits, all-zero ids, version
    /// `ff`, or extra fields after a version-00 header.
    pub fn from_traceparent(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut fields = header.split('-');
        let version = fields.next()?;
        let trace_id = fields.next()?;
        let parent_span_id = fields.next()?;
        let flags = fields.next()?;
        let rest = fields.next();
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" || !hex(flags, 2) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add more.
        if version == "00" && rest.is_some() {
            return None;
        }
        if !hex(trace_id, 32) || !hex(parent_span_id, 16) {
            return None;
        }
        if trace_id.bytes().all(|b| b == b'0') || parent_span_id.bytes().all(|b| b == b'0') {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceContext {
            trace_id: trace_id.to_string(),
            parent_span_id: parent_span_id.to_string(),
            sampled: flags & 1 == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    #[test]
    fn reads_a_valid_traceparent() {
        let context = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .expect("valid");
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_span_id, "00f067aa0ba902b7");
        assert!(context.sampled);
        let unsampled = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .expect("valid");
        assert!(!unsampled.sampled);
        // Kept as stored: a recorded trace's flag is implied.
        let stored = serde_json::to_string(&context).unwrap();
        assert!(!stored.contains("sampled"), "{stored}");
        let back: TraceContext = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, context);
        let stored = serde_json::to_string(&unsampled).unwrap();
        assert_eq!(
            serde_json::from_str::<TraceContext>(&stored).unwrap(),
            unsampled
        );
        // A later version may carry more fields.
        assert!(
            TraceContext::from_traceparent(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more"
            )
            .is_some()
        );
    }

    #[test]
    fn ignores_what_the_specification_says_to_ignore() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(TraceContext::from_traceparent(bad), None, "{bad:?}");
        }
    }
}
