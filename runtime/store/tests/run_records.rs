//! Run records as the store keeps them: MessagePack with numbered fields,
//! read back as they were written, and records written with named fields
//! or as JSON by earlier versions of Kiln still read back.

use kiln_manifest::Machine;
use kiln_store::{Backend, Batch, MemoryBackend, Op, Store};
use kiln_types::{
    Attempt, AttemptOutcome, DeploymentId, LogLine, ParentRun, Run, RunError, RunId, RunStatus,
    Timestamp, TraceContext,
};
use std::sync::Arc;

/// A finished run with most of its optional fields set, metadata of every
/// JSON kind among them.
fn rich_run() -> Run {
    let id = RunId::generate(7);
    let mut run = Run::queued(
        id.clone(),
        "email/send",
        DeploymentId::generate(3),
        "20261204.3",
        r#"{"to":"ada@example.com","n":3}"#,
        Timestamp(1_764_806_400_000),
    );
    run.status = RunStatus::Completed;
    run.output = Some(r#"{"sent":true}"#.into());
    run.tags = vec!["tenant:acme".into(), "vip".into()];
    run.metadata = Some(serde_json::json!({
        "progress": 0.75,
        "count": 18_446_744_073_709_551_615u64,
        "delta": -3,
        "nested": {"list": [1, "two", null, true, {"deep": []}]},
        "empty": {},
        "text": "ünïcödé \"quoted\"",
    }));
    run.machine = Machine::Small1x;
    run.max_attempts = 3;
    run.idempotency_key = Some("key-1".into());
    run.parent = Some(ParentRun {
        parent: RunId::generate(5),
        root: RunId::generate(4),
        depth: 2,
        trigger_function: "triggerAndWait".into(),
    });
    run.batch = Some("batch_1".into());
    run.concurrency_key = Some("acme".into());
    run.queue = "mail".into();
    run.priority_ms = 5_000;
    run.started_at = Some(Timestamp(1_764_806_400_010));
    run.finished_at = Some(Timestamp(1_764_806_400_900));
    run.updated_at = Timestamp(1_764_806_400_900);
    run.trace = Some(TraceContext {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        parent_span_id: "00f067aa0ba902b7".into(),
        sampled: false,
    });
    let mut failed = Attempt::started(1, Machine::Small1x, Timestamp(1_764_806_400_010));
    failed.finished_at = Some(Timestamp(1_764_806_400_400));
    failed.outcome = Some(AttemptOutcome::Failed);
    failed.error = Some(RunError {
        name: Some("TypeError".into()),
        message: "boom".into(),
        stack_trace: Some("at send (task.rs:3)".into()),
    });
    failed.usage_ms = 12;
    failed.logs = vec![LogLine {
        at: Timestamp(1_764_806_400_020),
        level: "warn".into(),
        message: "retrying".into(),
        fields: vec![("attempt".into(), "1".into())],
    }];
    failed.logs_dropped = 2;
    let mut succeeded = Attempt::started(2, Machine::Small1x, Timestamp(1_764_806_400_500));
    succeeded.finished_at = Some(Timestamp(1_764_806_400_900));
    succeeded.outcome = Some(AttemptOutcome::Succeeded);
    run.attempts = vec![failed, succeeded];
    run
}

fn run_key(id: &RunId) -> Vec<u8> {
    [b"run/".as_slice(), id.as_str().as_bytes()].concat()
}

#[tokio::test]
async fn a_run_reads_back_as_written_and_is_stored_compactly() {
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(backend.clone());
    let rich = rich_run();
    for run in [
        rich.clone(),
        Run::queued(
            RunId::generate(8),
            "t",
            DeploymentId::generate(1),
            "1",
            "{}",
            Timestamp(1),
        ),
    ] {
        store.put_run(&run).await.expect("a commit");
        assert_eq!(store.run(&run.id).expect("a read"), Some(run.clone()));
        // Its status alone, the rest of the record skipped.
        assert_eq!(store.run_status(&run.id).expect("a read"), Some(run.status));

        let stored = backend
            .get(&run_key(&run.id))
            .expect("a read")
            .expect("the record");
        assert!(
            matches!(stored[0], 0x80..=0x8f | 0xde | 0xdf),
            "a run's record is a MessagePack map, not {:?}",
            String::from_utf8_lossy(&stored[..8.min(stored.len())])
        );
        let json = serde_json::to_vec(&run).expect("JSON");
        assert!(
            stored.len() < json.len(),
            "{} bytes stored, {} as JSON",
            stored.len(),
            json.len()
        );
    }
    // The listing reads the same records.
    let listed = store.runs().expect("a scan");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().find(|r| r.id == rich.id), Some(&rich));
}

#[tokio::test]
async fn a_run_written_by_an_earlier_kiln_reads_back() {
    let run = rich_run();
    let json = serde_json::to_vec(&run).expect("JSON");
    let named = rmp_serde::to_vec_named(&run).expect("MessagePack");
    for earlier in [json, named] {
        let backend = Arc::new(MemoryBackend::new());
        let store = Store::new(backend.clone());
        backend
            .commit(vec![Op::Put(run_key(&run.id), earlier.clone())])
            .await
            .expect("a commit");
        assert_eq!(store.run(&run.id).expect("a read"), Some(run.clone()));
        assert_eq!(
            store.run_status(&run.id).expect("a read"),
            Some(RunStatus::Completed)
        );
        assert_eq!(
            store.run_status(&RunId::generate(10)).expect("a read"),
            None
        );

        // Its next change is written in the store's own form, numbered,
        // and smaller.
        let mut changed = run.clone();
        changed.tags.push("again".into());
        let mut batch = Batch::default();
        batch.put_run(&changed);
        store.commit(batch).await.expect("a commit");
        assert_eq!(store.run(&run.id).expect("a read"), Some(changed.clone()));
        let stored = backend
            .get(&run_key(&run.id))
            .expect("a read")
            .expect("the record");
        assert_eq!(stored, kiln_store::run_record(&changed).expect("encodes"));
        assert!(
            stored.len() < earlier.len(),
            "{} against {}",
            stored.len(),
            earlier.len()
        );
    }
}

#[tokio::test]
async fn a_corrupt_run_record_is_reported_with_its_key() {
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(backend.clone());
    let id = RunId::generate(9);
    // A MessagePack map that ends in the middle of its first key.
    backend
        .commit(vec![Op::Put(run_key(&id), vec![0x83, 0xa2, b'i'])])
        .await
        .expect("a commit");
    let error = store.run(&id).expect_err("a corrupt record");
    assert!(error.to_string().contains(id.as_str()), "{error}");
    let error = store.run_status(&id).expect_err("a corrupt record");
    assert!(error.to_string().contains(id.as_str()), "{error}");
}
