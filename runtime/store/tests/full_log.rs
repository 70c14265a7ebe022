//! The sled backend's write-ahead log holds 64 MiB; when the next group
//! would not fit, the committer applies every durable group it holds to
//! the tree and makes the tree durable (a checkpoint) before the log is
//! written again from its start. A store that wrote more than its log
//! holds, then stopped as a killed process stops (no clean close, so no
//! last checkpoint), must open to every commit it acknowledged: those
//! before the checkpoint from the tree, those after from the log. (The
//! process keeps sled's page cache here; `lost_page_cache.rs` shows what
//! a lost one leaves.)

use kiln_store::{Backend, Op, SledBackend};

mod closed;

use closed::wait_closed;

/// The size of each value: 80 of them are more than the log holds.
const VALUE: usize = 1 << 20;

/// Value `i`, written for the `n`th time: distinct for every pair.
fn value(i: u32, n: u32) -> Vec<u8> {
    let mut v = vec![(i as u8) ^ (n as u8).rotate_left(4); VALUE];
    v[..4].copy_from_slice(&i.to_be_bytes());
    v[4..8].copy_from_slice(&n.to_be_bytes());
    v
}

fn key(i: u32) -> Vec<u8> {
    format!("run/{i:03}").into_bytes()
}

#[test]
fn a_store_that_filled_its_log_opens_to_every_commit_after_a_kill() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = SledBackend::open(&dir).unwrap();
    // Eighty values, then the first twenty written again, each commit
    // acknowledged before the next: 100 MiB through a 64 MiB log.
    let mut newest = std::collections::BTreeMap::new();
    for (i, n) in (0..80).map(|i| (i, 0)).chain((0..20).map(|i| (i, 1))) {
        runtime
            .block_on(store.commit(vec![Op::Put(key(i), value(i, n))]))
            .unwrap();
        newest.insert(i, n);
    }
    // The log was written again from its start: it is no longer than it
    // holds, though more than that went through it.
    let log = std::fs::metadata(dir.join("kiln-wal")).unwrap().len();
    assert!(
        log <= 65 << 20,
        "the log grew to {log} bytes instead of beginning a new round"
    );
    // Stopped as a killed process stops, right after the last commit:
    // groups the committer still held, if any, are only in the log.
    store.halt_as_if_killed();
    drop(store);
    wait_closed(&dir);

    let store = SledBackend::open(&dir).unwrap();
    for (i, n) in newest {
        let stored = store.get(&key(i)).unwrap();
        assert!(
            stored.as_deref() == Some(&value(i, n)[..]),
            "value {i} (written {} times) reads back as {:?}",
            n + 1,
            stored.map(|v| v.get(..8).map(<[u8]>::to_vec))
        );
    }
}
