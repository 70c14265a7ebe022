//! Deferred writes ([`Backend::defer`]) through the sled backend: the next
//! commit takes them, ahead of its own writes; the committer applies them
//! alone when no commit comes; closing the store does not lose them. And
//! commits no one waits for ([`Backend::commit_unawaited`]): seen at once,
//! and durable without a commit after them.

use kiln_store::{Backend, Op, SledBackend};
use std::time::{Duration, Instant};

fn put(key: &str, value: &str) -> Op {
    Op::Put(key.as_bytes().to_vec(), value.as_bytes().to_vec())
}

fn get(backend: &SledBackend, key: &str) -> Option<String> {
    backend
        .get(key.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

#[tokio::test]
async fn deferred_writes_join_the_next_commit_ahead_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SledBackend::open(dir.path()).unwrap();
    backend.defer(vec![put("journal/1", "a"), put("shared", "deferred")]);
    // The next commit writes the same key after the deferred write: its
    // own value wins, as it would have had the deferred write been a
    // commit of its own made first.
    let commit = backend.commit(vec![put("run", "claimed"), put("shared", "commit")]);
    assert_eq!(get(&backend, "journal/1").as_deref(), Some("a"));
    assert_eq!(get(&backend, "shared").as_deref(), Some("commit"));
    commit.await.unwrap();
    drop(backend);
    let reopened = SledBackend::open(dir.path()).unwrap();
    assert_eq!(get(&reopened, "journal/1").as_deref(), Some("a"));
    assert_eq!(get(&reopened, "run").as_deref(), Some("claimed"));
    assert_eq!(get(&reopened, "shared").as_deref(), Some("commit"));
}

#[tokio::test]
async fn deferred_writes_are_applied_without_a_commit_and_survive_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SledBackend::open(dir.path()).unwrap();
    backend.defer(vec![put("journal/1", "a")]);
    // No commit comes: the committer applies them on its own, within a few
    // milliseconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&backend, "journal/1").is_none() {
        assert!(
            Instant::now() < deadline,
            "a deferred write was never applied"
        );
        tokio::task::yield_now().await;
    }
    // Made durable on their own too: an empty commit after them resolves
    // once everything applied is on disk.
    backend.commit(Vec::new()).await.unwrap();
    // Deferred just before the store closes: closing applies them.
    backend.defer(vec![put("journal/2", "b")]);
    drop(backend);
    let reopened = SledBackend::open(dir.path()).unwrap();
    assert_eq!(get(&reopened, "journal/1").as_deref(), Some("a"));
    assert_eq!(get(&reopened, "journal/2").as_deref(), Some("b"));
}

#[tokio::test]
async fn a_commit_no_one_waits_for_is_durable_without_another() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SledBackend::open(dir.path()).unwrap();
    for round in 0..3 {
        let key = format!("run/{round}");
        backend
            .commit_unawaited(vec![put(&key, "claimed")])
            .unwrap();
        assert_eq!(get(&backend, &key).as_deref(), Some("claimed"));
        // No commit comes after it: the committer makes a group of it on
        // its own, within a few milliseconds. Were it left for the next
        // commit, this would wait for ever.
        tokio::time::timeout(Duration::from_secs(10), backend.settled())
            .await
            .expect("a commit no one waits for was never made durable")
            .unwrap();
    }
    // Durable in the log: a store stopped as a killed process stops, and
    // opened again, holds them.
    backend.halt_as_if_killed();
    drop(backend);
    let reopened = SledBackend::open(dir.path()).unwrap();
    for round in 0..3 {
        assert_eq!(
            get(&reopened, &format!("run/{round}")).as_deref(),
            Some("claimed")
        );
    }
}
