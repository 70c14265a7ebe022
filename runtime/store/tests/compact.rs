//! A sled store that is mostly space deleted data left is found so while it
//! is open, and compacted the next time it is opened: it keeps every entry
//! it held, its file shrinks, and a crash at any point of the swap is
//! finished or undone at the next open.

use kiln_store::{Backend, Op, SledBackend};
use std::path::Path;

mod closed;

/// The marker a complete copy carries (`sled_compact::COMPLETE`).
const COMPLETE: &str = "kiln-compact-complete";

fn value(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed) as u8)
        .collect()
}

fn data_len(store: &Path) -> u64 {
    std::fs::metadata(store.join("db")).unwrap().len()
}

async fn put(backend: &SledBackend, entries: &[(Vec<u8>, Vec<u8>)]) {
    let ops = entries
        .iter()
        .map(|(k, v)| Op::Put(k.clone(), v.clone()))
        .collect();
    backend.commit(ops).await.unwrap();
}

#[tokio::test]
async fn a_mostly_deleted_store_is_compacted_and_keeps_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let backend = SledBackend::open(&store).unwrap();
    // Kept: 1.2 MB of small values (so the compacted file is above the
    // size asked for, and only the ratio can tell it is not sparse) and one
    // value large enough to be chunked.
    let kept: Vec<(Vec<u8>, Vec<u8>)> = (0..400)
        .map(|i| (format!("keep/{i:03}").into_bytes(), value(i, 3_000)))
        .chain([(b"keep/large".to_vec(), value(99, 50_000))])
        .collect();
    put(&backend, &kept).await;
    // 8 MiB written, then deleted.
    for page in 0..40 {
        let entries: Vec<_> = (0..100)
            .map(|i| {
                let n = page * 100 + i;
                (format!("gone/{n:05}").into_bytes(), value(n, 2_048))
            })
            .collect();
        put(&backend, &entries).await;
    }
    // Closed and opened again, so the values are in sled's file (the
    // committer applies groups to it together, and a put and a delete of a
    // key it applies together never reach it).
    drop(backend);
    let backend = SledBackend::open(&store).unwrap();
    for page in 0..8 {
        let ops = (0..500)
            .map(|i| Op::Delete(format!("gone/{:05}", page * 500 + i).into_bytes()))
            .collect();
        backend.commit(ops).await.unwrap();
    }
    // A write after the deletes, so a live page sits at the file's end.
    let late = (b"keep/late".to_vec(), value(7, 100));
    put(&backend, std::slice::from_ref(&late)).await;
    // Above the size asked for, the file is not worth compacting.
    assert_eq!(
        backend.suggest_compaction(1 << 30, 1 << 20).unwrap(),
        Some(false)
    );
    // Too few deletions for the file's size: not even read.
    assert_eq!(backend.suggest_compaction(1 << 20, 10).unwrap(), None);
    drop(backend);
    // Not asked for: opening leaves the store as it is.
    let (backend, compacted) = SledBackend::open_compacting(&store, 1 << 20).unwrap();
    assert_eq!(compacted, None);
    assert_eq!(
        backend.suggest_compaction(1 << 20, 100_000).unwrap(),
        Some(true)
    );
    drop(backend);
    // sled's own threads may still write its file a moment after the drop.
    closed::wait_closed(&store);

    let before = data_len(&store);
    assert!(
        before > 4 << 20,
        "the file holds what was deleted: {before}"
    );
    let (backend, compacted) = SledBackend::open_compacting(&store, 1 << 20).unwrap();
    let compacted = compacted.expect("a store that is mostly free space is compacted");
    assert_eq!(compacted.before, before);
    assert!(compacted.after * 4 < before, "{compacted:?}");
    assert!(compacted.live < 1_500_000, "{compacted:?}");
    for leftover in ["store.compact", "store.old"] {
        assert!(!dir.path().join(leftover).exists(), "{leftover} is left");
    }
    // Kiln's lock on the directory, held while the store is open.
    assert!(
        SledBackend::open(&store)
            .unwrap_err()
            .to_string()
            .contains("in use by another process")
    );

    for (k, v) in kept.iter().chain([&late]) {
        assert_eq!(backend.get(k).unwrap().as_ref(), Some(v), "{k:?}");
    }
    assert!(backend.scan_prefix(b"gone/").unwrap().is_empty());
    // Still writable, and chunked values still replace cleanly.
    put(&backend, &[(b"keep/large".to_vec(), value(3, 60_000))]).await;
    assert_eq!(backend.get(b"keep/large").unwrap(), Some(value(3, 60_000)));
    // The compacted store is above the size asked for but holds what it
    // takes: not suggested for compaction, and left as it is even when
    // asked.
    assert!(data_len(&store) >= 1 << 20, "{}", data_len(&store));
    assert_eq!(
        backend.suggest_compaction(1 << 20, 100_000).unwrap(),
        Some(false)
    );
    drop(backend);
    std::fs::write(store.join("kiln-compact-requested"), b"").unwrap();
    // A plain open leaves the request for a server's start.
    drop(SledBackend::open(&store).unwrap());
    assert!(store.join("kiln-compact-requested").exists());
    let (backend, compacted) = SledBackend::open_compacting(&store, 1 << 20).unwrap();
    assert_eq!(compacted, None);
    assert!(!store.join("kiln-compact-requested").exists());
    assert_eq!(backend.get(&late.0).unwrap(), Some(late.1));
}

/// A store in `dir` holding `key` = `value`, closed.
async fn store_with(dir: &Path, value: &[u8]) {
    let backend = SledBackend::open(dir).unwrap();
    put(&backend, &[(b"key".to_vec(), value.to_vec())]).await;
}

async fn key_after_open(store: &Path) -> Vec<u8> {
    let backend = SledBackend::open(store).unwrap();
    let value = backend.get(b"key").unwrap().expect("the key");
    for leftover in ["store.compact", "store.old"] {
        assert!(
            !store.with_file_name(leftover).exists(),
            "{leftover} is left"
        );
    }
    value
}

#[tokio::test]
async fn a_compaction_a_crash_interrupted_is_finished_or_undone() {
    // Between the two renames, with the copy complete: the copy is the store.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    store_with(&dir.path().join("store.old"), b"old").await;
    store_with(&dir.path().join("store.compact"), b"copy").await;
    std::fs::write(dir.path().join("store.compact").join(COMPLETE), b"").unwrap();
    assert_eq!(key_after_open(&store).await, b"copy");

    // A copy that was never marked complete: the old store goes back.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    store_with(&dir.path().join("store.old"), b"old").await;
    store_with(&dir.path().join("store.compact"), b"copy").await;
    assert_eq!(key_after_open(&store).await, b"old");

    // Before the swap began, or after it ended: the store stays, the rest
    // is deleted.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    store_with(&store, b"store").await;
    store_with(&dir.path().join("store.old"), b"old").await;
    store_with(&dir.path().join("store.compact"), b"copy").await;
    std::fs::write(dir.path().join("store.compact").join(COMPLETE), b"").unwrap();
    assert_eq!(key_after_open(&store).await, b"store");
}

#[test]
fn a_store_directory_without_a_name_of_its_own_is_refused() {
    for dir in [".", "..", "/"] {
        let error = SledBackend::open(Path::new(dir)).unwrap_err().to_string();
        assert!(error.contains("needs a name of its own"), "{dir}: {error}");
    }
}
