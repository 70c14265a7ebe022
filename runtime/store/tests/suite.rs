//! One test suite, run against every store implementation.

use kiln_manifest::{Machine, Manifest, RetryPolicy, TaskManifest};
#[path = "../../../tests/support/moto.rs"]
mod moto;
#[path = "../../../tests/support/postgres.rs"]
mod postgres;

use kiln_store::{
    Backend, Batch, MemoryBackend, Op, PostgresBackend, ScheduleKey, SledBackend, SnapshotLayer,
    Store, TimerKey,
};
use kiln_types::{
    Deployment, DeploymentId, HostCall, JournalEntry, JournalRecord, Run, RunId, RunStatus,
    Schedule, ScheduleId, ScheduleKind, Timestamp, TokenId, TokenStatus, WaitToken,
};
use std::sync::Arc;

fn deployment(sequence: u64) -> Deployment {
    Deployment {
        id: DeploymentId::generate(sequence),
        version: format!("20261122.{sequence}"),
        sequence,
        content_hash: format!("hash{sequence}"),
        size_bytes: 3,
        more_bundles: Vec::new(),
        manifest: Manifest {
            manifest_version: 1,
            sdk_version: "0.1.0".into(),
            queues: Vec::new(),
            tasks: vec![TaskManifest {
                id: "t".into(),
                payload_schema: None,
                queue: None,
                concurrency_limit: None,
                retry: RetryPolicy::default(),
                machine: Machine::Micro,
                max_duration_secs: None,
                source: None,
                scheduled: false,
                cron: None,
                env: Vec::new(),
            }],
        },
        created_at: Timestamp(sequence),
        retired_at: None,
        collected: false,
    }
}

fn run(status: RunStatus) -> Run {
    Run {
        status,
        ..Run::queued(
            RunId::generate(Timestamp::now().0),
            "t",
            DeploymentId::generate(1),
            "20261122.1",
            "{}",
            Timestamp(1),
        )
    }
}

/// A run with `status`, made at `made_ms` by its id.
fn run_made(status: RunStatus, made_ms: u64) -> Run {
    Run {
        id: RunId::generate(made_ms),
        ..run(status)
    }
}

/// A run gets a `finished/` entry only if it finished more than a second
/// after it was made; a run read in the runs' keyspace while it had not
/// finished gets one when it finishes, so a sweeper that read past it
/// finds it in the index.
async fn runs_that_finish_late_are_indexed(store: &Store) {
    let now = Timestamp::now();
    let made = now.0 - 120_000;
    let mut waiting = run_made(RunStatus::Waiting, made);
    let mut soon = run_made(RunStatus::Completed, made + 1);
    soon.finished_at = Some(Timestamp(made + 1 + 1_000));
    let mut batch = Batch::default();
    batch.put_new_run(&waiting).put_new_run(&soon);
    store.commit(batch).await.unwrap();
    // A sweeper whose cutoff is now reads both, and finds the one that
    // finished expired.
    let page = store.expired_unindexed(None, 100, now).unwrap();
    assert_eq!(
        page.expired.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&soon.id]
    );
    assert!(
        store
            .expired_runs(None, 100, now)
            .unwrap()
            .expired
            .is_empty()
    );
    // The waiting run finishes now, two minutes after it was made.
    waiting.status = RunStatus::Completed;
    waiting.finished_at = Some(now);
    store.put_run(&waiting).await.unwrap();
    let later = Timestamp(now.0 + 1);
    let indexed = store.expired_runs(None, 100, later).unwrap();
    assert_eq!(
        indexed.expired.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&waiting.id]
    );
    let read_past = store
        .expired_unindexed(page.last.as_deref(), 100, later)
        .unwrap();
    assert!(read_past.expired.is_empty());
}

async fn deployments_round_trip(store: &Store) {
    assert!(store.latest_deployment().unwrap().is_none());
    for seq in [1, 2, 10, 300] {
        store
            .put_deployment(&deployment(seq), &[b"abc"])
            .await
            .unwrap();
    }
    let all = store.deployments().unwrap();
    assert_eq!(
        all.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        [1, 2, 10, 300]
    );
    assert_eq!(store.latest_deployment().unwrap().unwrap().sequence, 300);
    assert_eq!(store.bundle("hash10").unwrap().unwrap(), b"abc");
    assert!(store.bundle("nope").unwrap().is_none());
    // Retention collects a version: its record says so, its bundle goes,
    // the others stay.
    let mut collected = all[1].clone();
    collected.retired_at = Some(Timestamp(5));
    collected.collected = true;
    store
        .update_deployments(std::slice::from_ref(&collected), &["hash2".to_string()])
        .await
        .unwrap();
    assert_eq!(store.deployments().unwrap()[1], collected);
    assert!(store.bundle("hash2").unwrap().is_none());
    assert_eq!(store.bundle("hash10").unwrap().unwrap(), b"abc");
}

async fn runs_keep_the_active_index(store: &Store) {
    let mut a = run(RunStatus::Queued);
    let b = run(RunStatus::Executing);
    store.put_run(&a).await.unwrap();
    store.put_run(&b).await.unwrap();
    assert_eq!(store.active_runs().unwrap().len(), 2);
    a.status = RunStatus::Completed;
    a.output = Some("1".into());
    store.put_run(&a).await.unwrap();
    let active = store.active_runs().unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, b.id);
    assert_eq!(
        store.run(&a.id).unwrap().unwrap().output.as_deref(),
        Some("1")
    );
}

async fn runs_page_newest_first(store: &Store) {
    let ids: Vec<RunId> = (0..7u64).map(|n| RunId::generate(1_000 + n)).collect();
    for id in &ids {
        let mut made = run(RunStatus::Queued);
        made.id = id.clone();
        store.put_run(&made).await.unwrap();
    }
    let page = |older: Option<&RunId>, limit| -> Vec<RunId> {
        store
            .runs_newest(older, limit)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(
        page(None, 3),
        vec![ids[6].clone(), ids[5].clone(), ids[4].clone()]
    );
    assert_eq!(
        page(Some(&ids[4]), 3),
        vec![ids[3].clone(), ids[2].clone(), ids[1].clone()]
    );
    assert_eq!(page(Some(&ids[1]), 3), vec![ids[0].clone()]);
    assert_eq!(page(Some(&ids[0]), 3), Vec::<RunId>::new());
    let newer = |than: &RunId, limit| -> Vec<RunId> {
        store
            .runs_oldest_after(than, limit)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(newer(&ids[1], 3), ids[2..5].to_vec());
    assert_eq!(newer(&ids[5], 3), vec![ids[6].clone()]);
    assert_eq!(newer(&ids[6], 3), Vec::<RunId>::new());
}

async fn tokens_page_newest_first(store: &Store) {
    let mut batch = Batch::default();
    let ids: Vec<TokenId> = (0..5u64).map(|n| TokenId::generate(1_000 + n)).collect();
    for id in &ids {
        batch.put_token(&WaitToken {
            id: id.clone(),
            status: TokenStatus::Waiting,
            tags: Vec::new(),
            timeout_at: None,
            idempotency_key: None,
            idempotency_key_expires_at: None,
            output: None,
            created_at: Timestamp(1_000),
            completed_at: None,
        });
        // A waiter entry sorts beside the tokens; it is not one.
        batch.put_token_waiter(
            id,
            &kiln_types::Waiter {
                parent: RunId::generate(1),
                wait_id: 0,
                batch: None,
            },
        );
    }
    store.commit(batch).await.unwrap();
    let newest: Vec<TokenId> = store
        .tokens_newest(3)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(newest, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);
    assert_eq!(store.tokens_newest(10).unwrap().len(), 5);
}

async fn paused_queues_are_kept(store: &Store) {
    let mut batch = Batch::default();
    batch.set_queue_paused("emails", true);
    batch.set_queue_paused("task/report", true);
    store.commit(batch).await.unwrap();
    let mut batch = Batch::default();
    batch.set_queue_paused("emails", false);
    store.commit(batch).await.unwrap();
    assert_eq!(store.paused_queues().unwrap(), ["task/report"]);
}

async fn concurrent_commits_all_land(backend: Arc<dyn Backend>) {
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            backend
                .commit(vec![Op::Put(
                    format!("c/{i:04}").into_bytes(),
                    i.to_be_bytes().to_vec(),
                )])
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let entries = backend.scan_prefix(b"c/").unwrap();
    assert_eq!(entries.len(), 200);
    assert_eq!(
        backend.last_with_prefix(b"c/").unwrap().unwrap().0,
        b"c/0199"
    );
    backend
        .commit(vec![Op::Delete(b"c/0000".to_vec())])
        .await
        .unwrap();
    assert!(backend.get(b"c/0000").unwrap().is_none());
}

/// A commit no one waits for is seen at once, and becomes durable with no
/// commit after it.
async fn unawaited_commits_become_durable(backend: Arc<dyn Backend>) {
    for i in 0..3u32 {
        let key = format!("u/{i}").into_bytes();
        backend
            .commit_unawaited(vec![Op::Put(key.clone(), i.to_be_bytes().to_vec())])
            .unwrap();
        assert_eq!(backend.get(&key).unwrap(), Some(i.to_be_bytes().to_vec()));
        tokio::time::timeout(std::time::Duration::from_secs(10), backend.settled())
            .await
            .expect("a commit no one waits for was never made durable")
            .unwrap();
    }
}

/// Waiting runs leave the index read at start-up; what wakes them is found
/// through its own index.
async fn waiting_runs_leave_the_active_index(store: &Store) {
    let mut r = run(RunStatus::Executing);
    store.put_run(&r).await.unwrap();
    r.status = RunStatus::Waiting;
    store.put_run(&r).await.unwrap();
    assert!(store.active_runs().unwrap().is_empty());
    assert_eq!(
        store.run(&r.id).unwrap().unwrap().status,
        RunStatus::Waiting
    );
}

/// Journal entries come back in order; a batch lands whole, and reads see
/// it as soon as it is committed.
async fn journals_and_batches(store: &Store) {
    let r = run(RunStatus::Executing);
    let entries = [
        JournalEntry::AttemptStarted {
            attempt: 1,
            started: None,
        },
        JournalEntry::HostCall(HostCall::RandomBytes {
            len: 2,
            result: "beef".into(),
        }),
        JournalEntry::HostCall(HostCall::NowMs { result: 42 }),
    ];
    let mut batch = Batch::default();
    for (i, entry) in entries.iter().enumerate() {
        batch.append_journal(
            &r.id,
            &JournalRecord {
                seq: 300 - (2 - i as u64) * 100,
                at: Timestamp(1),
                entry: entry.clone(),
            },
        );
    }
    batch.put_run(&r);
    let commit = store.commit(batch);
    // Read-your-writes before the commit is durable.
    assert_eq!(store.journal(&r.id).unwrap().len(), 3);
    commit.await.unwrap();
    let journal = store.journal(&r.id).unwrap();
    let seqs: Vec<u64> = journal.iter().map(|j| j.seq).collect();
    assert_eq!(seqs, vec![100, 200, 300]);
    assert_eq!(store.last_journal_seq(&r.id).unwrap(), 300);
    assert_eq!(
        store.last_journal_seq(&run(RunStatus::Queued).id).unwrap(),
        0
    );
    assert_eq!(journal[1].entry, entries[1]);
    assert!(store.run(&r.id).unwrap().is_some());
    // Another run's journal is its own.
    assert!(
        store
            .journal(&run(RunStatus::Queued).id)
            .unwrap()
            .is_empty()
    );
}

/// Snapshot layers are stored per attempt, verified on load, and deleted by
/// key.
async fn snapshot_layers(store: &Store) {
    let r = run(RunStatus::Waiting);
    let image: Vec<u8> = (0..64 * 1024).map(|i| (i % 7) as u8).collect();
    let full = SnapshotLayer::capture(&image, None, 5);
    let mut changed = image.clone();
    changed[100] = 99;
    let delta = SnapshotLayer::capture(&changed, Some(&full.hashes), 9);
    let mut batch = Batch::default();
    batch.put_layer(&r.id, 1, 1, full.encode());
    batch.put_layer(&r.id, 1, 2, delta.encode());
    batch.put_layer(&r.id, 2, 1, full.encode());
    store.commit(batch).await.unwrap();
    let layers = store.layers(&r.id, 1).unwrap();
    assert_eq!(
        layers.iter().map(|l| l.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let composed =
        kiln_store::snapshot::compose(&layers.iter().map(|l| &l.layer).collect::<Vec<_>>())
            .unwrap();
    assert_eq!(composed, changed);
    let keys = store.layer_keys(&r.id).unwrap();
    assert_eq!(keys.len(), 3);
    let mut batch = Batch::default();
    batch.delete_keys(keys);
    store.commit(batch).await.unwrap();
    assert!(store.layers(&r.id, 1).unwrap().is_empty());

    // A damaged layer is refused, not restored.
    let mut bytes = full.encode();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    let mut batch = Batch::default();
    batch.put_layer(&r.id, 1, 1, bytes);
    store.commit(batch).await.unwrap();
    assert!(store.layers(&r.id, 1).is_err());
}

/// With a master key, layers are stored sealed: the raw bytes are no
/// snapshot layer (zstd would give a secret back), and they open only with
/// the key and under their own key.
async fn sealed_snapshot_layers(backend: Arc<dyn Backend>) {
    let key = Arc::new(kiln_store::SealKey::from_bytes(&[9; 32]));
    let store = Store::new(backend.clone()).sealed(key);
    let r = run(RunStatus::Waiting);
    let mut image = vec![0u8; 16 * 1024];
    image[5000..5020].copy_from_slice(b"sk_live_in_the_guest");
    let layer = SnapshotLayer::capture(&image, None, 3);
    let mut batch = Batch::default();
    batch.put_layer(
        &r.id,
        1,
        1,
        store.seal_layer(&r.id, 1, 1, layer.encode()).unwrap(),
    );
    // The same bytes under another layer's key do not open.
    batch.put_layer(
        &r.id,
        2,
        1,
        store.seal_layer(&r.id, 1, 1, layer.encode()).unwrap(),
    );
    store.commit(batch).await.unwrap();
    let raw = backend.scan_prefix(b"snap/").unwrap();
    assert_eq!(raw.len(), 2);
    assert!(raw.iter().all(|(_, v)| v.starts_with(b"KSEL")));
    assert!(
        SnapshotLayer::decode(&raw[0].1).is_err(),
        "sealed, not a plain layer"
    );
    let layers = store.layers(&r.id, 1).unwrap();
    let opened =
        kiln_store::snapshot::compose(&layers.iter().map(|l| &l.layer).collect::<Vec<_>>())
            .unwrap();
    assert_eq!(opened, image);
    assert!(store.layers(&r.id, 2).is_err(), "bound to its key");
    assert!(
        Store::new(backend).layers(&r.id, 1).is_err(),
        "no key, no layer"
    );
}

/// Timers are read by due time, only in the range asked for.
async fn timers_by_due_time(store: &Store) {
    let a = run(RunStatus::Waiting).id;
    let b = RunId::generate(7);
    let timers = [
        TimerKey {
            due: Timestamp(5_000),
            run_id: a.clone(),
            wait_id: 2,
        },
        TimerKey {
            due: Timestamp(1_000),
            run_id: b.clone(),
            wait_id: 1,
        },
        TimerKey {
            due: Timestamp(9_000),
            run_id: a.clone(),
            wait_id: 3,
        },
    ];
    let mut batch = Batch::default();
    for t in &timers {
        batch.put_timer(t);
    }
    store.commit(batch).await.unwrap();
    let due = store.timers(Timestamp(0), Timestamp(6_000), 100).unwrap();
    assert_eq!(due, vec![timers[1].clone(), timers[0].clone()]);
    assert_eq!(
        store
            .timers(Timestamp(5_001), Timestamp(u64::MAX), 100)
            .unwrap(),
        vec![timers[2].clone()]
    );
    assert_eq!(
        store
            .timers(Timestamp(0), Timestamp(u64::MAX), 1)
            .unwrap()
            .len(),
        1
    );
    assert!(store.has_timer(&timers[0]).unwrap());
    let mut batch = Batch::default();
    batch.delete_timer(&timers[0]);
    store.commit(batch).await.unwrap();
    assert!(!store.has_timer(&timers[0]).unwrap());
    assert_eq!(
        store
            .timers(Timestamp(0), Timestamp(u64::MAX), 100)
            .unwrap()
            .len(),
        2
    );
}

fn schedule(n: u64, next: u64) -> Schedule {
    Schedule {
        id: ScheduleId::generate(n),
        kind: ScheduleKind::Imperative,
        task_id: "digest".into(),
        cron: "0 9 * * *".into(),
        timezone: "UTC".into(),
        external_id: None,
        deduplication_key: Some(format!("key-{n}")),
        active: true,
        next_run: Some(Timestamp(next)),
        last_timestamp: None,
        created_at: Timestamp(n),
        updated_at: Timestamp(n),
    }
}

async fn schedules_and_their_indexes(store: &Store) {
    let a = schedule(1, 5_000);
    let b = schedule(2, 1_000);
    let mut declared = schedule(3, 9_000);
    declared.kind = ScheduleKind::Declarative;
    declared.deduplication_key = None;
    let mut batch = Batch::default();
    batch.put_schedule(&a, None);
    batch.put_schedule(&b, None);
    batch.put_schedule(&declared, None);
    store.commit(batch).await.unwrap();
    assert_eq!(
        store.schedules().unwrap(),
        vec![a.clone(), b.clone(), declared.clone()]
    );
    assert_eq!(
        store.due_schedules(Timestamp(6_000), 100).unwrap(),
        vec![
            (Timestamp(1_000), b.id.clone()),
            (Timestamp(5_000), a.id.clone())
        ]
    );
    assert_eq!(store.next_schedule_due().unwrap(), Some(Timestamp(1_000)));
    let by_key = ScheduleKey::Deduplication("key-1".into());
    assert_eq!(store.schedule_by_key(&by_key).unwrap(), Some(a.clone()));
    assert_eq!(
        store.declarative_schedules().unwrap(),
        vec![declared.clone()]
    );

    // Firing b: its due entry moves, its occurrence and run are recorded.
    let run = RunId::generate(10);
    let mut fired = b.clone();
    fired.last_timestamp = Some(Timestamp(1_000));
    fired.next_run = Some(Timestamp(7_000));
    let mut batch = Batch::default();
    batch.put_schedule(&fired, Some(&b));
    batch.put_occurrence(&b.id, Timestamp(1_000), None, &run);
    store.commit(batch).await.unwrap();
    assert_eq!(store.next_schedule_due().unwrap(), Some(Timestamp(5_000)));
    assert_eq!(
        store.occurrence(&b.id, Timestamp(1_000)).unwrap(),
        Some(run.clone())
    );
    assert_eq!(store.schedule_runs(&b.id).unwrap(), vec![run]);

    // Deactivating leaves the due index; a new deduplication key moves.
    let mut off = a.clone();
    off.active = false;
    off.deduplication_key = Some("renamed".into());
    let mut batch = Batch::default();
    batch.put_schedule(&off, Some(&a));
    store.commit(batch).await.unwrap();
    assert_eq!(
        store.due_schedules(Timestamp(u64::MAX), 100).unwrap(),
        vec![
            (Timestamp(7_000), b.id.clone()),
            (Timestamp(9_000), declared.id.clone())
        ]
    );
    assert_eq!(store.schedule_by_key(&by_key).unwrap(), None);
    let renamed = ScheduleKey::Deduplication("renamed".into());
    assert_eq!(store.schedule_by_key(&renamed).unwrap(), Some(off.clone()));

    // Deleting removes every index entry.
    let mut batch = Batch::default();
    batch.delete_schedule(&fired).delete_schedule(&off);
    store.commit(batch).await.unwrap();
    assert_eq!(store.schedules().unwrap(), vec![declared.clone()]);
    assert_eq!(store.occurrence(&b.id, Timestamp(1_000)).unwrap(), None);
    assert_eq!(store.schedule_by_key(&renamed).unwrap(), None);
    assert_eq!(
        store.due_schedules(Timestamp(u64::MAX), 100).unwrap(),
        vec![(Timestamp(9_000), declared.id.clone())]
    );
}

/// Everything in the store, as keys.
fn all_keys(store_backend: &Arc<dyn Backend>) -> Vec<String> {
    store_backend
        .scan_prefix(b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

async fn retention_deletes_what_expired(backend: Arc<dyn Backend>) {
    use kiln_store::{BatchRecord, IdempotentRun, Packet};
    use kiln_types::{BatchId, TokenId, TokenStatus, WaitToken};
    let store = Store::new(backend.clone());
    let now = Timestamp::now();
    let cutoff = Timestamp(now.0 - 1_000);
    let old = Timestamp(now.0 - 60_000);
    // Made two minutes before it finished: it has a `finished/` entry.
    let mut expired = run_made(RunStatus::Completed, old.0 - 120_000);
    expired.finished_at = Some(old);
    // Finished soon after it was made: it has none, and is found in the
    // runs' keyspace.
    let mut child = run_made(RunStatus::Completed, old.0 - 100);
    child.finished_at = Some(old);
    let mut recent = run(RunStatus::Completed);
    recent.finished_at = Some(now);
    let mut waiting = run(RunStatus::Waiting);
    waiting.updated_at = old;
    let mut batch = Batch::default();
    for r in [&expired, &child, &recent, &waiting] {
        batch.put_new_run(r);
        batch.append_journal(
            &r.id,
            &JournalRecord {
                seq: 1,
                at: old,
                entry: JournalEntry::AttemptStarted {
                    attempt: 1,
                    started: None,
                },
            },
        );
    }
    batch.put_child(&expired.id, &child.id);
    let batch_id = BatchId::generate(1);
    batch.put_batch(&BatchRecord {
        id: batch_id.clone(),
        parent: Some(expired.id.clone()),
        runs: vec![child.id.clone()],
        created_at: old,
        expected: None,
        errors: Vec::new(),
        sealed_at: None,
        token: None,
    });
    batch.put_idempotency_key(
        "past-its-lifetime",
        &IdempotentRun {
            run: recent.id.clone(),
            expires_at: old,
        },
    );
    // A key whose run is gone stays for its lifetime (a one-time token's
    // use is kept this way).
    batch.put_idempotency_key(
        "gone-run",
        &IdempotentRun {
            run: expired.id.clone(),
            expires_at: Timestamp(now.0 + 86_400_000),
        },
    );
    batch.put_idempotency_key(
        "live-run",
        &IdempotentRun {
            run: recent.id.clone(),
            expires_at: Timestamp(now.0 + 86_400_000),
        },
    );
    batch.put_debounce("t", "window", &expired.id);
    for (hash, expires_at) in [("old-batch-key", old), ("live-batch-key", now)] {
        batch.put_batch_key(
            hash,
            &kiln_store::BatchKey {
                batch: BatchId::generate(1),
                expires_at: Timestamp(expires_at.0 + 30_000),
                user_key: None,
            },
        );
    }
    let token = |n: u64, status: TokenStatus, completed_at: Option<Timestamp>| WaitToken {
        id: TokenId::generate(n),
        status,
        tags: Vec::new(),
        timeout_at: None,
        idempotency_key: Some(format!("token-key-{n}")),
        idempotency_key_expires_at: None,
        output: None,
        created_at: old,
        completed_at,
    };
    let done = token(1, TokenStatus::Completed, Some(old));
    let open = token(2, TokenStatus::Waiting, None);
    batch.put_token(&done);
    batch.put_token(&open);
    batch.put_packet(
        "uploaded/payload.json",
        &Packet {
            content_type: "application/json".into(),
            data: b"{}".to_vec(),
        },
    );
    store.commit(batch).await.unwrap();

    let finished_keys: Vec<_> = all_keys(&backend)
        .into_iter()
        .filter(|k| k.starts_with("finished/"))
        .collect();
    assert_eq!(finished_keys.len(), 1, "{finished_keys:?}");
    assert!(finished_keys[0].ends_with(expired.id.as_str()));

    // Only runs that finished before the cutoff expire: the indexed one
    // from the index, and both from the runs made well before the cutoff.
    let page = store.expired_runs(None, 100, cutoff).unwrap();
    assert!(page.next.is_none());
    assert!(page.stale.is_empty());
    assert_eq!(
        page.expired.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&expired.id]
    );
    let unindexed = store.expired_unindexed(None, 100, cutoff).unwrap();
    assert!(unindexed.next.is_none());
    let mut ids: Vec<_> = unindexed.expired.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    let mut want = vec![expired.id.clone(), child.id.clone()];
    want.sort();
    assert_eq!(ids, want);
    // It read up to the runs made a second before the cutoff: not the
    // recent or waiting ones, made now.
    let last = unindexed.last.clone().expect("read a run");
    assert_eq!(last, format!("run/{}", want[1]).into_bytes());
    let again = store.expired_unindexed(Some(&last), 100, cutoff).unwrap();
    assert!(again.expired.is_empty() && again.last.is_none());
    // The unfinished run's deployment is in use; the finished ones' are not
    // counted.
    assert_eq!(
        store
            .open_versions()
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![waiting.deployment_id.clone()]
    );
    let runs = unindexed.expired;
    let mut batch = Batch::default();
    for r in &runs {
        assert!(store.delete_run(&mut batch, r).unwrap() >= 2);
    }
    store.commit(batch).await.unwrap();
    assert!(store.run(&expired.id).unwrap().is_none());
    assert!(store.journal(&expired.id).unwrap().is_empty());
    assert_eq!(store.journal(&recent.id).unwrap().len(), 1);
    assert!(store.run(&waiting.id).unwrap().is_some());

    // Keys whose runs are gone, and records older than the cutoff.
    let idem = store.sweep_idempotency_keys(None, 100, now).await.unwrap();
    assert_eq!(idem.deleted, 1);
    assert!(store.idempotent_run("past-its-lifetime").unwrap().is_none());
    assert!(store.idempotent_run("live-run").unwrap().is_some());
    assert!(store.idempotent_run("gone-run").unwrap().is_some());
    let batch_keys = store.sweep_batch_keys(None, 100, now).await.unwrap();
    assert_eq!(batch_keys.deleted, 1);
    assert!(store.batch_by_key("old-batch-key").unwrap().is_none());
    assert!(store.batch_by_key("live-batch-key").unwrap().is_some());
    assert_eq!(
        store.sweep_debounce_keys(None, 100).await.unwrap().deleted,
        1
    );
    assert_eq!(
        store.sweep_tokens(None, 100, cutoff).await.unwrap().deleted,
        1
    );
    assert!(store.token(&done.id).unwrap().is_none());
    assert!(store.token_by_key("token-key-1").unwrap().is_none());
    assert!(store.token(&open.id).unwrap().is_some());
    assert_eq!(
        store
            .sweep_batches(None, 100, cutoff)
            .await
            .unwrap()
            .deleted,
        1
    );
    assert!(store.batch(&batch_id).unwrap().is_none());
    // A packet an older Kiln stored has no time: it is given one, once per
    // store (a later start reads no packet).
    let undated = |path: &str| Op::Put(format!("packet/{path}").into_bytes(), b"a\0{}".to_vec());
    backend.commit(vec![undated("old/1")]).await.unwrap();
    assert_eq!(store.date_undated_packets(now).await.unwrap(), 1);
    backend.commit(vec![undated("old/2")]).await.unwrap();
    assert_eq!(store.date_undated_packets(now).await.unwrap(), 0);
    // The packet was uploaded now: it stays until a later cutoff.
    assert_eq!(
        store
            .sweep_packets(None, 100, cutoff)
            .await
            .unwrap()
            .deleted,
        0
    );
    let later = Timestamp(now.0 + 60_000);
    assert_eq!(
        store.sweep_packets(None, 100, later).await.unwrap().deleted,
        2,
        "the uploaded packet and the one dated at `now`"
    );
    assert!(store.packet("uploaded/payload.json").unwrap().is_none());

    let left = all_keys(&backend);
    for gone in [&expired.id, &child.id] {
        assert!(
            !left
                .iter()
                .any(|k| k.contains(gone.as_str()) && !k.starts_with("idem/")),
            "keys of {gone} are left: {left:?}"
        );
    }

    // Runs an older Kiln stored have no index entries; they are given them
    // once per store.
    let mut legacy_done = run_made(RunStatus::Completed, old.0 - 120_000);
    legacy_done.finished_at = Some(old);
    let mut legacy_open = run(RunStatus::Waiting);
    legacy_open.deployment_id = DeploymentId::generate(2);
    let raw = |r: &kiln_types::Run| {
        Op::Put(
            format!("run/{}", r.id).into_bytes(),
            serde_json::to_vec(r).unwrap(),
        )
    };
    backend
        .commit(vec![raw(&legacy_done), raw(&legacy_open)])
        .await
        .unwrap();
    let page = store.expired_runs(None, 100, cutoff).unwrap();
    assert!(page.expired.is_empty(), "not indexed yet");
    assert_eq!(
        store.index_runs().await.unwrap(),
        4,
        "recent, waiting and the two"
    );
    assert_eq!(store.index_runs().await.unwrap(), 0, "once per store");
    let page = store.expired_runs(None, 100, cutoff).unwrap();
    let ids: Vec<_> = page.expired.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, vec![legacy_done.id.clone()]);
    assert!(
        store
            .open_versions()
            .unwrap()
            .contains(&legacy_open.deployment_id)
    );
    // An entry whose run is gone is stale, to delete.
    backend
        .commit(vec![Op::Delete(
            format!("run/{}", legacy_done.id).into_bytes(),
        )])
        .await
        .unwrap();
    let page = store.expired_runs(None, 100, cutoff).unwrap();
    assert!(page.expired.is_empty());
    assert_eq!(page.stale.len(), 1);
}

async fn suite(make: impl Fn() -> Arc<dyn Backend>) {
    retention_deletes_what_expired(make()).await;
    runs_that_finish_late_are_indexed(&Store::new(make())).await;
    schedules_and_their_indexes(&Store::new(make())).await;
    deployments_round_trip(&Store::new(make())).await;
    runs_keep_the_active_index(&Store::new(make())).await;
    waiting_runs_leave_the_active_index(&Store::new(make())).await;
    journals_and_batches(&Store::new(make())).await;
    snapshot_layers(&Store::new(make())).await;
    sealed_snapshot_layers(make()).await;
    timers_by_due_time(&Store::new(make())).await;
    paused_queues_are_kept(&Store::new(make())).await;
    runs_page_newest_first(&Store::new(make())).await;
    tokens_page_newest_first(&Store::new(make())).await;
    concurrent_commits_all_land(make()).await;
    unawaited_commits_become_durable(make()).await;
}

#[tokio::test]
async fn memory_backend_passes_the_suite() {
    suite(|| Arc::new(MemoryBackend::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_backend_passes_the_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    suite(|| {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        dirs.lock().unwrap().push(dir);
        Arc::new(backend)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backend_passes_the_suite() {
    let server = postgres::Postgres::start();
    let made = std::sync::atomic::AtomicUsize::new(0);
    suite(|| {
        let n = made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = server.database(&format!("suite_{n}"));
        Arc::new(PostgresBackend::open(&url).unwrap())
    })
    .await;
}

/// With a blob store whose objects start at 64 bytes, most of the suite's
/// values go to the bucket: every read and scan follows references.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backend_with_a_blob_store_passes_the_suite() {
    let server = postgres::Postgres::start();
    let s3 = moto::Moto::start();
    let made = std::sync::atomic::AtomicUsize::new(0);
    suite(|| {
        let n = made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = server.database(&format!("suite_{n}"));
        let blobs = kiln_store::BlobStore::with_credentials(
            &s3.bucket(&format!("suite-{n}"), "min-size=64"),
            "kiln",
            "kiln",
        )
        .unwrap();
        let backend =
            PostgresBackend::open_with(&url, kiln_store::OwnerWait::Never, Some(Arc::new(blobs)))
                .unwrap()
                .expect("a new database has no owner");
        Arc::new(backend)
    })
    .await;
    let objects: usize = (0..made.load(std::sync::atomic::Ordering::Relaxed))
        .map(|n| s3.objects(&format!("suite-{n}")).len())
        .sum();
    assert!(objects > 0, "the suite's large values went to the bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backend_keeps_data_across_reopen_and_has_one_owner() {
    let server = postgres::Postgres::start();
    let url = server.database("kiln");
    let r = run(RunStatus::Queued);
    let backend = Arc::new(PostgresBackend::open(&url).unwrap());
    let store = Store::new(backend.clone());
    store.put_run(&r).await.unwrap();
    // A second server on the same database is refused while the first
    // holds it, with a reason.
    let refused = PostgresBackend::open(&url).unwrap_err().to_string();
    assert!(
        refused.contains("another Kiln server is using this PostgreSQL database"),
        "{refused}"
    );
    drop(store);
    drop(backend);
    // Closing lets go of the database; what was committed is there, and
    // the migrations are not applied twice.
    let store = Store::new(Arc::new(PostgresBackend::open(&url).unwrap()));
    assert_eq!(store.run(&r.id).unwrap().unwrap(), r);
    assert_eq!(store.active_runs().unwrap().len(), 1);
}

#[tokio::test]
async fn sled_backend_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(RunStatus::Queued);
    {
        let store = Store::new(Arc::new(SledBackend::open(dir.path()).unwrap()));
        store.put_run(&r).await.unwrap();
    }
    // sled holds a file lock until its last handle drops; the committer
    // thread exits once its channel closes.
    let mut reopened = None;
    for _ in 0..100 {
        match SledBackend::open(dir.path()) {
            Ok(b) => {
                reopened = Some(b);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let store = Store::new(Arc::new(reopened.expect("the store reopens")));
    assert_eq!(store.run(&r.id).unwrap().unwrap(), r);
    assert_eq!(store.active_runs().unwrap().len(), 1);
}
