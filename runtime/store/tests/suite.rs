//! One test suite, run against every store implementation.

use kiln_manifest::{Machine, Manifest, RetryPolicy, TaskManifest};
use kiln_store::{Backend, MemoryBackend, Op, SledBackend, Store};
use kiln_types::{Deployment, DeploymentId, Run, RunId, RunStatus, Timestamp};
use std::sync::Arc;

fn deployment(sequence: u64) -> Deployment {
    Deployment {
        id: DeploymentId::generate(sequence),
        version: format!("20261122.{sequence}"),
        sequence,
        content_hash: format!("hash{sequence}"),
        size_bytes: 3,
        manifest: Manifest {
            manifest_version: 1,
            sdk_version: "0.1.0".into(),
            tasks: vec![TaskManifest {
                id: "t".into(),
                payload_schema: None,
                queue: None,
                retry: RetryPolicy::default(),
                machine: Machine::Micro,
                max_duration_secs: None,
                source: None,
            }],
        },
        created_at: Timestamp(sequence),
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

async fn deployments_round_trip(store: &Store) {
    assert!(store.latest_deployment().unwrap().is_none());
    for seq in [1, 2, 10, 300] {
        store
            .put_deployment(&deployment(seq), b"abc")
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

async fn suite(make: impl Fn() -> Arc<dyn Backend>) {
    deployments_round_trip(&Store::new(make())).await;
    runs_keep_the_active_index(&Store::new(make())).await;
    concurrent_commits_all_land(make()).await;
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
