//! The JSON shapes a run is shown in: the fields every view of a run has
//! (list items, related runs, realtime rows) and the full retrieve shape.
//!
//! Each shape is a [`Serialize`] impl that writes its fields straight into
//! the serializer, so the retrieve answer (the API's most frequent, read at
//! least once for every run a client awaits) is written into the response
//! without building a `serde_json::Value` of it first. Where a `Value` is
//! wanted, [`common_view`] and [`full_view`] make one from the same impls,
//! so each field is defined once.

use super::{ApiError, AppState};
use kiln_types::{Run, Timestamp};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use std::borrow::Borrow;

/// A timestamp as ISO 8601 text.
struct Iso(Timestamp);

impl Serialize for Iso {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_iso())
    }
}

/// Writes `key: value` if there is a value.
fn entry_opt<M: SerializeMap, V: Serialize>(
    map: &mut M,
    key: &'static str,
    value: Option<V>,
) -> Result<(), M::Error> {
    match value {
        Some(value) => map.serialize_entry(key, &value),
        None => Ok(()),
    }
}

/// The fields common to retrieve and list items.
fn common<M: SerializeMap>(map: &mut M, run: &Run) -> Result<(), M::Error> {
    let s = run.status;
    map.serialize_entry("id", &run.id)?;
    map.serialize_entry("status", s.as_str())?;
    map.serialize_entry("taskIdentifier", &run.task_id)?;
    map.serialize_entry("isQueued", &s.is_queued())?;
    map.serialize_entry("isExecuting", &s.is_executing())?;
    map.serialize_entry("isWaiting", &s.is_waiting())?;
    map.serialize_entry("isCompleted", &s.is_final())?;
    map.serialize_entry("isSuccess", &s.is_success())?;
    map.serialize_entry("isFailed", &s.is_failed())?;
    map.serialize_entry("isCancelled", &s.is_cancelled())?;
    map.serialize_entry("isTest", &run.is_test)?;
    map.serialize_entry("createdAt", &Iso(run.created_at))?;
    map.serialize_entry("updatedAt", &Iso(run.updated_at))?;
    map.serialize_entry("tags", &run.tags)?;
    map.serialize_entry("costInCents", &0)?;
    map.serialize_entry("baseCostInCents", &0)?;
    map.serialize_entry("durationMs", &run.usage_ms())?;
    if !run.version.is_empty() {
        map.serialize_entry("version", &run.version)?;
    }
    entry_opt(map, "idempotencyKey", run.idempotency_key.as_ref())?;
    entry_opt(map, "startedAt", run.started_at.map(Iso))?;
    entry_opt(map, "finishedAt", run.finished_at.map(Iso))?;
    entry_opt(map, "metadata", run.metadata.as_ref())?;
    entry_opt(map, "delayedUntil", run.delayed_until.map(Iso))?;
    entry_opt(map, "ttl", run.ttl.as_ref().map(|t| &t.text))?;
    entry_opt(map, "expiredAt", run.expired_at.map(Iso))?;
    let kind = if run.schedule.is_some() {
        "SCHEDULED"
    } else {
        "STANDARD"
    };
    map.serialize_entry("taskKind", kind)
}

/// `depth`, `triggerFunction`, `batchId` and, for child runs, `parentId` and
/// `rootId`.
fn lineage<M: SerializeMap>(map: &mut M, run: &Run) -> Result<(), M::Error> {
    entry_opt(map, "batchId", run.batch.as_ref())?;
    match &run.parent {
        Some(parent) => {
            map.serialize_entry("depth", &parent.depth)?;
            map.serialize_entry("triggerFunction", &parent.trigger_function)?;
            map.serialize_entry("parentId", &parent.parent)?;
            map.serialize_entry("rootId", &parent.root)
        }
        None => {
            map.serialize_entry("depth", &0)?;
            map.serialize_entry("triggerFunction", "trigger")
        }
    }
}

/// A run in brief: its common fields (what list items and realtime rows
/// show) and, for a related run, its lineage.
struct Brief<'a> {
    run: &'a Run,
    lineage: bool,
}

impl Serialize for Brief<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        common(&mut map, self.run)?;
        if self.lineage {
            lineage(&mut map, self.run)?;
        }
        map.end()
    }
}

/// A related run: the common fields and its lineage.
fn related(run: &Run) -> Brief<'_> {
    Brief { run, lineage: true }
}

/// The fields common to retrieve and list items, as a JSON object.
pub(crate) fn common_view(run: &Run) -> Map<String, Value> {
    let brief = Brief {
        run,
        lineage: false,
    };
    match serde_json::to_value(brief) {
        Ok(Value::Object(map)) => map,
        // Serializing into a `Value` fails only for map keys that are not
        // strings, and every key above is one.
        other => {
            tracing::error!(run = %run.id, ?other, "a run's common view is not an object");
            Map::new()
        }
    }
}

/// The full retrieve shape of a run (owned, or borrowed as `&Run`), with
/// what it needs from the store read beforehand.
pub(crate) struct FullView<R> {
    run: R,
    /// `relatedRuns`: the run's root and parent, and the runs it triggered.
    related: RelatedRuns,
    /// Where the payload can be read, when it is kept apart from the record.
    payload_url: Option<String>,
    /// Where the output can be read, when it is kept apart from the record.
    output_url: Option<String>,
}

/// The full retrieve shape, with `relatedRuns` read from the store.
///
/// A payload or output kept apart from the run's record (over the store's
/// inline limit) is not inlined: `payloadPresignedUrl` / `outputPresignedUrl`
/// name a signed URL it can be read from, as Trigger.dev does for large
/// packets (the official SDK follows them).
pub(crate) fn full<R: Borrow<Run>>(state: &AppState, run: R) -> Result<FullView<R>, ApiError> {
    let r = run.borrow();
    let store = &state.store;
    let mut related = RelatedRuns::default();
    if let Some(parent) = &r.parent {
        related.root = store.run(&parent.root)?;
        related.parent = store.run(&parent.parent)?;
    }
    let children = store.children(&r.id)?;
    if !children.is_empty() {
        let mut runs = Vec::with_capacity(children.len());
        for child in children {
            if let Some(child) = store.run(&child)? {
                runs.push(child);
            }
        }
        related.children = Some(runs);
    }
    let payload_url = r
        .payload_blob
        .is_some()
        .then(|| super::packets::run_packet_url(state, &r.id, "payload"));
    let output_url = (r.output_blob.is_some() && r.output.is_some())
        .then(|| super::packets::run_packet_url(state, &r.id, "output"));
    Ok(FullView {
        run,
        related,
        payload_url,
        output_url,
    })
}

/// [`full`] as a JSON value.
pub(crate) fn full_view(state: &AppState, run: &Run) -> Result<Value, ApiError> {
    serde_json::to_value(full(state, run)?)
        .map_err(|e| ApiError::internal(format!("showing the run failed: {e}")))
}

/// `relatedRuns`: the run's root and parent, and the runs it triggered
/// (`children` only when the run triggered any), each a run in brief with
/// its lineage.
#[derive(Default)]
struct RelatedRuns {
    root: Option<Run>,
    parent: Option<Run>,
    children: Option<Vec<Run>>,
}

impl Serialize for RelatedRuns {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        entry_opt(&mut map, "root", self.root.as_ref().map(related))?;
        entry_opt(&mut map, "parent", self.parent.as_ref().map(related))?;
        if let Some(children) = &self.children {
            let views: Vec<Brief> = children.iter().map(related).collect();
            map.serialize_entry("children", &views)?;
        }
        map.end()
    }
}

/// A run's `schedule`: the schedule that fired it.
struct ScheduleView<'a>(&'a kiln_types::RunSchedule);

impl Serialize for ScheduleView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let s = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &s.id)?;
        entry_opt(&mut map, "externalId", s.external_id.as_ref())?;
        entry_opt(&mut map, "deduplicationKey", s.deduplication_key.as_ref())?;
        map.serialize_entry("generator", &super::schedules::generator(&s.cron))?;
        map.end()
    }
}

/// One of a run's attempts.
struct AttemptView<'a>(&'a kiln_types::Attempt);

impl Serialize for AttemptView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("number", &a.number)?;
        map.serialize_entry("machine", a.machine.name())?;
        map.serialize_entry("startedAt", &Iso(a.started_at))?;
        entry_opt(&mut map, "finishedAt", a.finished_at.map(Iso))?;
        entry_opt(&mut map, "outcome", a.outcome.as_ref())?;
        entry_opt(&mut map, "error", a.error.as_ref())?;
        map.serialize_entry("usageMs", &a.usage_ms)?;
        if a.logs_dropped > 0 {
            map.serialize_entry("logsDropped", &a.logs_dropped)?;
        }
        let logs: Vec<LogView> = a.logs.iter().map(LogView).collect();
        map.serialize_entry("logs", &logs)?;
        map.end()
    }
}

/// A log line an attempt kept.
struct LogView<'a>(&'a kiln_types::LogLine);

impl Serialize for LogView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let l = self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("at", &Iso(l.at))?;
        map.serialize_entry("level", &l.level)?;
        map.serialize_entry("message", &l.message)?;
        map.serialize_entry("fields", &Fields(&l.fields))?;
        map.end()
    }
}

/// A log line's fields as an object: a name given twice is shown once, in
/// its first place, with its last value.
struct Fields<'a>(&'a [(String, String)]);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = self.0;
        let mut map = serializer.serialize_map(None)?;
        for (i, (name, _)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(earlier, _)| earlier == name) {
                continue;
            }
            let last = fields.iter().rev().find(|(n, _)| n == name);
            if let Some((_, value)) = last {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

impl<R: Borrow<Run>> Serialize for FullView<R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let run = self.run.borrow();
        let mut map = serializer.serialize_map(None)?;
        common(&mut map, run)?;
        lineage(&mut map, run)?;
        map.serialize_entry("relatedRuns", &self.related)?;
        // Kiln's additions: where the run waits its turn.
        map.serialize_entry("queue", &QueueView(&run.queue_name()))?;
        entry_opt(&mut map, "concurrencyKey", run.concurrency_key.as_ref())?;
        if run.priority_ms > 0 {
            map.serialize_entry("priority", &(run.priority_ms as f64 / 1000.0))?;
        }
        map.serialize_entry("attemptCount", &run.attempts.len())?;
        map.serialize_entry("machine", run.machine.name())?;
        match &self.payload_url {
            Some(url) => map.serialize_entry("payloadPresignedUrl", url)?,
            None => {
                let payload = crate::payload::to_json(Some(&run.payload), &run.payload_type)
                    .unwrap_or(Value::Null);
                map.serialize_entry("payload", &payload)?;
            }
        }
        if let Some(output) = run.output.as_deref() {
            match &self.output_url {
                Some(url) => map.serialize_entry("outputPresignedUrl", url)?,
                None => {
                    let output: Value = serde_json::from_str(output).unwrap_or(Value::Null);
                    map.serialize_entry("output", &output)?;
                }
            }
            map.serialize_entry("outputType", "application/json")?;
        }
        entry_opt(&mut map, "error", run.error.as_ref())?;
        entry_opt(
            &mut map,
            "schedule",
            run.schedule.as_ref().map(ScheduleView),
        )?;
        let attempts: Vec<AttemptView> = run.attempts.iter().map(AttemptView).collect();
        map.serialize_entry("attempts", &attempts)?;
        map.end()
    }
}

/// `queue`: `{ "name": … }`.
struct QueueView<'a>(&'a str);

impl Serialize for QueueView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("name", self.0)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_manifest::Machine;
    use kiln_types::{
        Attempt, AttemptOutcome, DeploymentId, LogLine, ParentRun, RunError, RunId, RunSchedule,
        RunStatus, RunTtl, ScheduleId,
    };

    /// A finished child run with every optional field the views show set.
    fn rich_run() -> (Run, Run) {
        let at = |ms: u64| Timestamp(1_764_806_400_000 + ms);
        let id = |text: &str| RunId::parse(text).expect("a run id");
        let parent = Run::queued(
            id("run_01kbkah600gn4b9swrvdhznwr"),
            "parent-task",
            DeploymentId::generate(at(0).0),
            "20261204.1",
            "{}",
            at(0),
        );
        let mut run = Run::queued(
            id("run_01kbkah601ym13ja07chts4mn"),
            "hello-world",
            DeploymentId::generate(at(1).0),
            "20261204.2",
            r#"{"name":"Ada","n":[1,2]}"#,
            at(1),
        );
        run.status = RunStatus::Failed;
        run.output = Some(r#"{"greeting":"Hello, Ada!"}"#.into());
        run.error = Some(RunError {
            name: Some("Error".into()),
            message: "it broke".into(),
            stack_trace: None,
        });
        run.tags = vec!["a".into(), "b".into()];
        run.metadata = Some(serde_json::json!({ "progress": 0.5 }));
        run.idempotency_key = Some("key-1".into());
        run.started_at = Some(at(2));
        run.finished_at = Some(at(9));
        run.updated_at = at(9);
        run.delayed_until = Some(at(1));
        run.ttl = Some(RunTtl {
            text: "10m".into(),
            ms: 600_000,
        });
        run.concurrency_key = Some("tenant-7".into());
        run.priority_ms = 1_500;
        run.batch = Some("batch_1".into());
        run.parent = Some(ParentRun {
            parent: parent.id.clone(),
            root: parent.id.clone(),
            depth: 1,
            trigger_function: "triggerAndWait".into(),
        });
        run.schedule = Some(RunSchedule {
            id: ScheduleId::parse("sched_01kbkah600f509bbrgdqj8b64").expect("a schedule id"),
            external_id: Some("ext".into()),
            deduplication_key: None,
            cron: "0 * * * *".into(),
            timestamp: at(0),
        });
        let mut attempt = Attempt::started(1, Machine::Small1x, at(2));
        attempt.finished_at = Some(at(9));
        attempt.outcome = Some(AttemptOutcome::Failed);
        attempt.usage_ms = 7;
        attempt.logs_dropped = 2;
        attempt.logs.push(LogLine {
            at: at(3),
            level: "info".into(),
            message: "hello".into(),
            fields: vec![
                ("x".into(), "1".into()),
                ("y".into(), "2".into()),
                ("x".into(), "3".into()),
            ],
        });
        run.attempts.push(attempt);
        // A second attempt that ended in error, with no logs.
        let mut second = Attempt::started(2, Machine::Medium1x, at(10));
        second.finished_at = Some(at(12));
        second.outcome = Some(AttemptOutcome::Crashed);
        second.error = Some(RunError {
            name: None,
            message: "out of memory".into(),
            stack_trace: Some("at main".into()),
        });
        run.attempts.push(second);
        run.is_test = true;
        run.expired_at = Some(at(11));
        if let Some(schedule) = &mut run.schedule {
            schedule.deduplication_key = Some("dedup".into());
        }
        (run, parent)
    }

    /// A run `parent` triggered: no version, no output, a payload that is
    /// not JSON.
    fn child_of(parent: &Run) -> Run {
        let mut child = Run::queued(
            RunId::parse("run_01kbkah602x0x0x0x0x0x0x0x").expect("a run id"),
            "child-task",
            DeploymentId::generate(1),
            "",
            "not json",
            Timestamp(1_764_806_400_020),
        );
        child.parent = Some(ParentRun {
            parent: parent.id.clone(),
            root: parent.id.clone(),
            depth: 1,
            trigger_function: "trigger".into(),
        });
        child
    }

    /// The retrieve answers as Kiln wrote them when it built a
    /// `serde_json::Value` first (the text its earlier code wrote for these
    /// runs): the same fields, in the same order.
    const RETRIEVED: &str = r#"{"id":"run_01kbkah601ym13ja07chts4mn","status":"FAILED","taskIdentifier":"hello-world","isQueued":false,"isExecuting":false,"isWaiting":false,"isCompleted":true,"isSuccess":false,"isFailed":true,"isCancelled":false,"isTest":true,"createdAt":"2025-12-04T00:00:00.001Z","updatedAt":"2025-12-04T00:00:00.009Z","tags":["a","b"],"costInCents":0,"baseCostInCents":0,"durationMs":7,"version":"20261204.2","idempotencyKey":"key-1","startedAt":"2025-12-04T00:00:00.002Z","finishedAt":"2025-12-04T00:00:00.009Z","metadata":{"progress":0.5},"delayedUntil":"2025-12-04T00:00:00.001Z","ttl":"10m","expiredAt":"2025-12-04T00:00:00.011Z","taskKind":"SCHEDULED","batchId":"batch_1","depth":1,"triggerFunction":"triggerAndWait","parentId":"run_01kbkah600gn4b9swrvdhznwr","rootId":"run_01kbkah600gn4b9swrvdhznwr","relatedRuns":{"root":{"id":"run_01kbkah600gn4b9swrvdhznwr","status":"QUEUED","taskIdentifier":"parent-task","isQueued":true,"isExecuting":false,"isWaiting":false,"isCompleted":false,"isSuccess":false,"isFailed":false,"isCancelled":false,"isTest":false,"createdAt":"2025-12-04T00:00:00.000Z","updatedAt":"2025-12-04T00:00:00.000Z","tags":[],"costInCents":0,"baseCostInCents":0,"durationMs":0,"version":"20261204.1","taskKind":"STANDARD","depth":0,"triggerFunction":"trigger"},"parent":{"id":"run_01kbkah600gn4b9swrvdhznwr","status":"QUEUED","taskIdentifier":"parent-task","isQueued":true,"isExecuting":false,"isWaiting":false,"isCompleted":false,"isSuccess":false,"isFailed":false,"isCancelled":false,"isTest":false,"createdAt":"2025-12-04T00:00:00.000Z","updatedAt":"2025-12-04T00:00:00.000Z","tags":[],"costInCents":0,"baseCostInCents":0,"durationMs":0,"version":"20261204.1","taskKind":"STANDARD","depth":0,"triggerFunction":"trigger"},"children":[{"id":"run_01kbkah602x0x0x0x0x0x0x0x","status":"QUEUED","taskIdentifier":"child-task","isQueued":true,"isExecuting":false,"isWaiting":false,"isCompleted":false,"isSuccess":false,"isFailed":false,"isCancelled":false,"isTest":false,"createdAt":"2025-12-04T00:00:00.020Z","updatedAt":"2025-12-04T00:00:00.020Z","tags":[],"costInCents":0,"baseCostInCents":0,"durationMs":0,"taskKind":"STANDARD","depth":1,"triggerFunction":"trigger","parentId":"run_01kbkah601ym13ja07chts4mn","rootId":"run_01kbkah601ym13ja07chts4mn"}]},"queue":{"name":"task/hello-world"},"concurrencyKey":"tenant-7","priority":1.5,"attemptCount":2,"machine":"small-1x","payload":{"name":"Ada","n":[1,2]},"output":{"greeting":"Hello, Ada!"},"outputType":"application/json","error":{"name":"Error","message":"it broke"},"schedule":{"id":"sched_01kbkah600f509bbrgdqj8b64","externalId":"ext","deduplicationKey":"dedup","generator":{"type":"CRON","expression":"0 * * * *","description":"At minute 0 past every hour."}},"attempts":[{"number":1,"machine":"small-1x","startedAt":"2025-12-04T00:00:00.002Z","finishedAt":"2025-12-04T00:00:00.009Z","outcome":"FAILED","usageMs":7,"logsDropped":2,"logs":[{"at":"2025-12-04T00:00:00.003Z","level":"info","message":"hello","fields":{"x":"3","y":"2"}}]},{"number":2,"machine":"medium-1x","startedAt":"2025-12-04T00:00:00.010Z","finishedAt":"2025-12-04T00:00:00.012Z","outcome":"CRASHED","error":{"message":"out of memory","stackTrace":"at main"},"usageMs":0,"logs":[]}]}"#;
    const RETRIEVED_CHILD: &str = r#"{"id":"run_01kbkah602x0x0x0x0x0x0x0x","status":"QUEUED","taskIdentifier":"child-task","isQueued":true,"isExecuting":false,"isWaiting":false,"isCompleted":false,"isSuccess":false,"isFailed":false,"isCancelled":false,"isTest":false,"createdAt":"2025-12-04T00:00:00.020Z","updatedAt":"2025-12-04T00:00:00.020Z","tags":[],"costInCents":0,"baseCostInCents":0,"durationMs":0,"taskKind":"STANDARD","depth":1,"triggerFunction":"trigger","parentId":"run_01kbkah601ym13ja07chts4mn","rootId":"run_01kbkah601ym13ja07chts4mn","relatedRuns":{},"queue":{"name":"task/child-task"},"attemptCount":0,"machine":"small-1x","payload":null,"attempts":[]}"#;
    const COMMON: &str = r#"{"id":"run_01kbkah601ym13ja07chts4mn","status":"FAILED","taskIdentifier":"hello-world","isQueued":false,"isExecuting":false,"isWaiting":false,"isCompleted":true,"isSuccess":false,"isFailed":true,"isCancelled":false,"isTest":true,"createdAt":"2025-12-04T00:00:00.001Z","updatedAt":"2025-12-04T00:00:00.009Z","tags":["a","b"],"costInCents":0,"baseCostInCents":0,"durationMs":7,"version":"20261204.2","idempotencyKey":"key-1","startedAt":"2025-12-04T00:00:00.002Z","finishedAt":"2025-12-04T00:00:00.009Z","metadata":{"progress":0.5},"delayedUntil":"2025-12-04T00:00:00.001Z","ttl":"10m","expiredAt":"2025-12-04T00:00:00.011Z","taskKind":"SCHEDULED"}"#;

    #[test]
    fn the_retrieve_shape_is_written_field_for_field_as_before() {
        let (run, parent) = rich_run();
        let child = child_of(&run);
        let view = FullView {
            run: &run,
            related: RelatedRuns {
                root: Some(parent.clone()),
                parent: Some(parent),
                children: Some(vec![child.clone()]),
            },
            payload_url: None,
            output_url: None,
        };
        assert_eq!(serde_json::to_string(&view).unwrap(), RETRIEVED);
        let view = FullView {
            run: child,
            related: RelatedRuns::default(),
            payload_url: None,
            output_url: None,
        };
        assert_eq!(serde_json::to_string(&view).unwrap(), RETRIEVED_CHILD);
        // The common fields are the retrieve shape's first ones.
        let common = Value::Object(common_view(&run)).to_string();
        assert_eq!(common, COMMON);
        assert!(RETRIEVED.starts_with(common.trim_end_matches('}')));
    }

    #[test]
    fn a_payload_or_output_kept_apart_is_named_by_its_url_in_its_place() {
        let (run, _) = rich_run();
        let view = FullView {
            run: &run,
            related: RelatedRuns::default(),
            payload_url: Some("http://kiln/payload".into()),
            output_url: Some("http://kiln/output".into()),
        };
        let shown: Value = serde_json::from_str(&serde_json::to_string(&view).unwrap()).unwrap();
        assert_eq!(shown["payloadPresignedUrl"], "http://kiln/payload");
        assert_eq!(shown["outputPresignedUrl"], "http://kiln/output");
        assert_eq!(shown["outputType"], "application/json");
        assert!(shown.get("payload").is_none() && shown.get("output").is_none());
        assert_eq!(shown["relatedRuns"], serde_json::json!({}));
        assert_eq!(shown["attemptCount"], 2);
        // Each URL stands where the value it names would.
        let keys: Vec<&str> = shown
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let after = |key: &str| keys[keys.iter().position(|k| *k == key).unwrap() + 1];
        assert_eq!(after("machine"), "payloadPresignedUrl");
        assert_eq!(after("payloadPresignedUrl"), "outputPresignedUrl");
        assert_eq!(after("outputPresignedUrl"), "outputType");
        assert_eq!(keys.last(), Some(&"attempts"));
    }
}
