//! A run as a realtime row: the columns of Trigger.dev's `TaskRun` table
//! that the official SDK's `runs.subscribeTo*` reads, with Trigger.dev's
//! internal status names and Postgres-style timestamps (UTC, no zone).

use kiln_types::{Run, RunStatus, Timestamp};
use serde_json::{Map, Value, json};

/// Columns a subscriber may leave out (`skipColumns`); the rest are always
/// sent.
const SKIPPABLE: &[&str] = &[
    "startedAt",
    "delayUntil",
    "queuedAt",
    "expiredAt",
    "completedAt",
    "number",
    "isTest",
    "usageDurationMs",
    "costInCents",
    "baseCostInCents",
    "ttl",
    "payload",
    "payloadType",
    "metadata",
    "output",
    "outputType",
    "runTags",
    "error",
];

/// Trigger.dev's internal name of a status, which the SDK maps back to the
/// public one.
pub(super) fn internal_status(status: RunStatus) -> &'static str {
    match status {
        RunStatus::PendingVersion => "PENDING_VERSION",
        RunStatus::Delayed => "DELAYED",
        RunStatus::Queued => "PENDING",
        RunStatus::Dequeued => "DEQUEUED",
        RunStatus::Executing => "EXECUTING",
        RunStatus::Waiting => "WAITING_TO_RESUME",
        RunStatus::Completed => "COMPLETED_SUCCESSFULLY",
        RunStatus::Canceled => "CANCELED",
        RunStatus::Failed => "COMPLETED_WITH_ERRORS",
        RunStatus::Crashed => "CRASHED",
        RunStatus::SystemFailure => "SYSTEM_FAILURE",
        RunStatus::Expired => "EXPIRED",
        RunStatus::TimedOut => "TIMED_OUT",
    }
}

/// `2026-12-01 09:30:00.123`: how Postgres writes a `timestamp(3)`, which
/// the SDK reads as UTC.
fn pg_time(t: Timestamp) -> String {
    let iso = t.to_iso();
    iso.strip_suffix('Z').unwrap_or(&iso).replacen('T', " ", 1)
}

fn opt_time(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| json!(pg_time(t)))
}

/// The row of `run`, without the columns in `skip`.
/// `streams` are the keys of the run's realtime streams
/// (`runs.subscribeToRun(...).withStreams()` reads them).
pub(super) fn row(run: &Run, streams: &[String], skip: &[String]) -> Map<String, Value> {
    let keep = |column: &str| !(SKIPPABLE.contains(&column) && skip.iter().any(|s| s == column));
    let mut row = Map::new();
    row.insert("id".into(), json!(run.id));
    row.insert("friendlyId".into(), json!(run.id));
    row.insert("taskIdentifier".into(), json!(run.task_id));
    row.insert("status".into(), json!(internal_status(run.status)));
    row.insert("createdAt".into(), json!(pg_time(run.created_at)));
    row.insert("updatedAt".into(), json!(pg_time(run.updated_at)));
    let mut put = |column: &str, value: Value| {
        if keep(column) {
            row.insert(column.into(), value);
        }
    };
    put("startedAt", opt_time(run.started_at));
    put("delayUntil", opt_time(run.delayed_until));
    put("queuedAt", opt_time(Some(run.created_at)));
    put("expiredAt", opt_time(run.expired_at));
    // The SDK ends `subscribeToRun` once `completedAt` is set: every final
    // status has it.
    let completed = match (run.status.is_final(), run.finished_at) {
        (true, at) => Some(at.unwrap_or(run.updated_at)),
        (false, _) => None,
    };
    put("completedAt", opt_time(completed));
    put(
        "number",
        json!(u32::try_from(run.attempts.len()).unwrap_or(u32::MAX)),
    );
    put("isTest", json!(run.is_test));
    put("usageDurationMs", json!(run.usage_ms()));
    put("costInCents", json!(0));
    put("baseCostInCents", json!(0));
    put(
        "ttl",
        run.ttl.as_ref().map_or(Value::Null, |t| json!(t.text)),
    );
    put(
        "idempotencyKey",
        run.idempotency_key
            .as_ref()
            .map_or(Value::Null, |k| json!(k)),
    );
    put("runTags", json!(run.tags));
    // A payload or output kept apart from the record is sent as a stored
    // packet: the SDK asks `GET /api/v1/runs/{id}/packets/{field}` for a
    // presigned URL and reads it from there.
    if run.payload_blob.is_some() {
        put("payload", json!(format!("runs/{}/payload", run.id)));
        put("payloadType", json!("application/store"));
    } else {
        if keep("payload") {
            put("payload", json!(run.payload));
        }
        put("payloadType", json!(run.payload_type));
    }
    match &run.metadata {
        Some(metadata) => {
            put("metadata", json!(metadata.to_string()));
            put("metadataType", json!("application/json"));
        }
        None => {
            put("metadata", Value::Null);
            put("metadataType", Value::Null);
        }
    }
    if run.output_blob.is_some() && run.output.is_some() {
        put("output", json!(format!("runs/{}/output", run.id)));
        put("outputType", json!("application/store"));
    } else if keep("output") {
        match run.output.clone() {
            Some(output) => {
                put("output", json!(output));
                put("outputType", json!("application/json"));
            }
            None => {
                put("output", Value::Null);
                put("outputType", Value::Null);
            }
        }
    }
    put(
        "error",
        run.error.as_ref().map_or(Value::Null, |e| {
            json!({
                "type": "BUILT_IN_ERROR",
                "name": e.name.clone().unwrap_or_else(|| "Error".into()),
                "message": e.message,
                "stackTrace": e.stack_trace.clone().unwrap_or_default(),
            })
        }),
    );
    row.insert("realtimeStreams".into(), json!(streams));
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_postgres_text_in_utc() {
        assert_eq!(pg_time(Timestamp(0)), "1970-01-01 00:00:00.000");
        assert_eq!(
            pg_time(Timestamp(1_700_000_000_123)),
            "2023-11-14 22:13:20.123"
        );
    }

    #[test]
    fn every_status_has_an_internal_name_the_sdk_maps_back() {
        for status in RunStatus::ALL {
            let name = internal_status(status);
            let public = match name {
                "PENDING" => "QUEUED",
                "WAITING_TO_RESUME" => "WAITING",
                "COMPLETED_SUCCESSFULLY" => "COMPLETED",
                "COMPLETED_WITH_ERRORS" => "FAILED",
                other => other,
            };
            assert_eq!(public, status.as_str());
        }
    }
}
