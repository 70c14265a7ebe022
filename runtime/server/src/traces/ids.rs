//! Trace and span ids derived from what the store keeps.
//!
//! A run's spans are built after the fact, possibly by another process than
//! the one that ran it, so their ids cannot be random: each is a hash of
//! the run's id and the fact the span stands for (its attempt's number, its
//! journal entry's position). The same run always gets the same ids, and a
//! child run, made while its parent's attempt ran, can name that attempt's
//! span as its parent before the parent's spans exist.

use kiln_types::{Run, RunId, TraceContext};
use opentelemetry::trace::{SpanId, TraceId};
use sha2::{Digest, Sha256};

/// The first `N` bytes of a SHA-256 of the parts, never all zero (an
/// all-zero id is invalid in OpenTelemetry).
fn digest<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    let full = hash.finalize();
    let mut out = [0u8; N];
    out.copy_from_slice(&full[..N]);
    if out.iter().all(|b| *b == 0) {
        out[N - 1] = 1;
    }
    out
}

/// The trace a run's spans belong to: the one its trigger named, or one of
/// its own derived from its id.
pub(crate) fn trace_id(run: &Run) -> TraceId {
    trace_id_of(&run.id, run.trace.as_ref())
}

/// The trace of run `id` whose trigger named `trace` (if any).
fn trace_id_of(id: &RunId, trace: Option<&TraceContext>) -> TraceId {
    trace
        .and_then(|t| TraceId::from_hex(&t.trace_id).ok())
        .filter(|id| *id != TraceId::INVALID)
        .unwrap_or_else(|| TraceId::from_bytes(digest(&[b"trace", id.as_str().as_bytes()])))
}

/// The span the run's own span is a child of, if any.
pub(crate) fn parent_span(run: &Run) -> SpanId {
    run.trace
        .as_ref()
        .and_then(|t| SpanId::from_hex(&t.parent_span_id).ok())
        .unwrap_or(SpanId::INVALID)
}

/// The run's own span, from its creation to its end.
pub(crate) fn run_span(run: &RunId) -> SpanId {
    SpanId::from_bytes(digest(&[b"run", run.as_str().as_bytes()]))
}

/// The span of one attempt of a run.
pub(crate) fn attempt_span(run: &RunId, attempt: u32) -> SpanId {
    SpanId::from_bytes(digest(&[
        b"attempt",
        run.as_str().as_bytes(),
        &attempt.to_le_bytes(),
    ]))
}

/// The span of the journal entry at `seq` (a host call), or of wait `id`
/// registered by the entry at `seq`.
pub(crate) fn entry_span(run: &RunId, seq: u64, wait: Option<u64>) -> SpanId {
    let wait = wait.map(u64::to_le_bytes);
    SpanId::from_bytes(digest(&[
        b"entry",
        run.as_str().as_bytes(),
        &seq.to_le_bytes(),
        wait.as_ref().map_or(&[][..], |w| &w[..]),
    ]))
}

/// The trace context a child run triggered by `attempt` of `run` (whose
/// trigger named `trace`) carries: the run's trace, under that attempt's
/// span.
pub(crate) fn child_context(
    run: &RunId,
    trace: Option<&TraceContext>,
    attempt: u32,
) -> TraceContext {
    TraceContext {
        trace_id: trace_id_of(run, trace).to_string(),
        parent_span_id: attempt_span(run, attempt).to_string(),
        sampled: trace.is_none_or(|t| t.sampled),
    }
}

/// Whether the run's trace is recorded: unless its trigger said not.
pub(crate) fn sampled(run: &Run) -> bool {
    run.trace.as_ref().is_none_or(|t| t.sampled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_types::{DeploymentId, Timestamp};

    fn run() -> Run {
        Run::queued(
            RunId::generate(1),
            "task",
            DeploymentId::none(),
            "1",
            "{}",
            Timestamp(1),
        )
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = run();
        let b = run();
        // Derived from the id alone: the same run read again gets them.
        let mut read_again = b.clone();
        read_again.status = kiln_types::RunStatus::Completed;
        read_again.attempts.clear();
        assert_eq!(trace_id(&read_again), trace_id(&b));
        assert_eq!(run_span(&read_again.id), run_span(&b.id));
        assert_ne!(trace_id(&a), trace_id(&b));
        assert_ne!(run_span(&a.id), run_span(&b.id));
        assert_ne!(run_span(&a.id), attempt_span(&a.id, 1));
        assert_ne!(attempt_span(&a.id, 1), attempt_span(&a.id, 2));
        assert_ne!(entry_span(&a.id, 3, None), entry_span(&a.id, 3, Some(0)));
        assert_ne!(entry_span(&a.id, 3, Some(0)), entry_span(&a.id, 3, Some(1)));
        assert_eq!(parent_span(&a), SpanId::INVALID);
    }

    #[test]
    fn a_child_continues_its_parents_trace_under_the_attempt() {
        let mut parent = run();
        parent.trace = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(
            trace_id(&parent).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent_span(&parent).to_string(), "00f067aa0ba902b7");
        let mut child = run();
        child.trace = Some(child_context(&parent.id, parent.trace.as_ref(), 2));
        assert_eq!(trace_id(&child), trace_id(&parent));
        assert_eq!(parent_span(&child), attempt_span(&parent.id, 2));
        assert!(sampled(&child));
        // A trace its caller does not record stays unrecorded below.
        parent.trace = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        );
        child.trace = Some(child_context(&parent.id, parent.trace.as_ref(), 1));
        assert!(!sampled(&parent) && !sampled(&child));
    }
}
