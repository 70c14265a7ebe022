//! The sled backend never leaves an acknowledged byte in sled's unsynced
//! `blobs/` files: values of every size, through puts, overwrites, deletes
//! and a reopen, come back exactly and leave `blobs/` empty.

use kiln_store::{Backend, Op, SledBackend};
use std::path::Path;

/// A value of `len` bytes that differs from key to key.
fn value(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Opens the store again once the dropped backend's committer thread has
/// let go of the database (it does when it sees the backend dropped).
fn reopen(dir: &Path) -> SledBackend {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledBackend::open(dir) {
            Ok(backend) => return backend,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::yield_now()
            }
            Err(e) => panic!("reopening the store: {e}"),
        }
    }
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn large_values_stay_out_of_sleds_blob_files() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [
        0usize,
        1,
        4 << 10,
        (4 << 10) + 1,
        130 << 10,
        600 << 10,
        3 << 20,
    ];
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    {
        let backend = SledBackend::open(dir.path()).unwrap();
        // Many values in one leaf's key range, so sled consolidates pages
        // holding several large values.
        let mut ops = Vec::new();
        for (i, len) in sizes.iter().enumerate() {
            for j in 0..4u8 {
                let key = format!("snap/r/{i:02}/{j}").into_bytes();
                let v = value(i as u8 ^ j, *len);
                ops.push(Op::Put(key.clone(), v.clone()));
                expected.push((key, v));
            }
        }
        // A value that looks like a chunk manifest is stored as data.
        let mut tricky = b"\xffKLNCHK\x01".to_vec();
        tricky.extend_from_slice(&[7u8; 20]);
        ops.push(Op::Put(b"tricky".to_vec(), tricky.clone()));
        expected.push((b"tricky".to_vec(), tricky));
        backend.commit(ops).await.unwrap();

        // Overwrite a large value with a small one and a small one with a
        // large one; delete a large one; write one key twice in a batch.
        let small = b"small".to_vec();
        let big = value(99, 1 << 20);
        backend
            .commit(vec![
                Op::Put(b"snap/r/06/0".to_vec(), small.clone()),
                Op::Put(b"snap/r/01/0".to_vec(), big.clone()),
                Op::Delete(b"snap/r/05/1".to_vec()),
                Op::Put(b"twice".to_vec(), value(1, 300 << 10)),
                Op::Put(b"twice".to_vec(), value(2, 200 << 10)),
            ])
            .await
            .unwrap();
        for (k, v) in expected.iter_mut() {
            if k == b"snap/r/06/0" {
                *v = small.clone();
            } else if k == b"snap/r/01/0" {
                *v = big.clone();
            }
        }
        expected.retain(|(k, _)| k != b"snap/r/05/1");
        expected.push((b"twice".to_vec(), value(2, 200 << 10)));
        check(&backend, &expected);
        assert_eq!(blob_files(dir.path()), 0, "sled wrote a blob file");
    }
    let backend = reopen(dir.path());
    check(&backend, &expected);
    // Replaced and deleted values left no chunks behind: the chunks that
    // remain add up to exactly the chunked values.
    let chunked: usize = expected
        .iter()
        .filter(|(_, v)| v.len() > 4 << 10 || v.starts_with(b"\xffKLNCHK"))
        .map(|(_, v)| v.len())
        .sum();
    let stored: usize = backend
        .scan_prefix(b"\xff\xffchunk/")
        .unwrap()
        .iter()
        .map(|(_, v)| v.len())
        .sum();
    assert_eq!(stored, chunked);
    assert_eq!(blob_files(dir.path()), 0);
}

fn check(backend: &SledBackend, expected: &[(Vec<u8>, Vec<u8>)]) {
    for (k, v) in expected {
        let got = backend.get(k).unwrap();
        assert_eq!(
            got.as_deref().map(<[u8]>::len),
            Some(v.len()),
            "{}",
            String::from_utf8_lossy(k)
        );
        assert!(
            got.as_deref() == Some(v.as_slice()),
            "{}",
            String::from_utf8_lossy(k)
        );
    }
    let scanned = backend.scan_prefix(b"snap/r/").unwrap();
    let mut want: Vec<_> = expected
        .iter()
        .filter(|(k, _)| k.starts_with(b"snap/r/"))
        .cloned()
        .collect();
    want.sort();
    assert!(scanned == want, "a scan returns the values as written");
    let last = backend.last_with_prefix(b"snap/r/").unwrap();
    assert!(last == want.last().cloned());
    let range = backend.scan_range(b"snap/r/02", b"snap/r/04", 100).unwrap();
    assert_eq!(
        range.len(),
        want.iter()
            .filter(|(k, _)| k.as_slice() >= b"snap/r/02".as_slice()
                && k.as_slice() < b"snap/r/04".as_slice())
            .count()
    );
}

/// A value of version `v`: every byte is `v`, and its length says `v` too.
/// Chunked, except every third version, which is small (so a value goes
/// from chunked to small and back).
fn version(v: u8) -> Vec<u8> {
    if v.is_multiple_of(3) {
        return vec![v; 100];
    }
    vec![v; 5_000 + (v as usize % 7) * 40_000]
}

/// Whether version `v` is a delete of the value rather than a write.
fn deleted(v: u8) -> bool {
    v.is_multiple_of(5)
}

fn check_version(value: &[u8]) {
    let v = value[0];
    assert!(value == version(v).as_slice(), "a torn read of version {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_chunked_value_torn_while_it_is_replaced() {
    // The value is replaced by chunked and small values and deleted in
    // turn, while a reader reads it alone and in scans.
    let dir = tempfile::tempdir().unwrap();
    let backend = std::sync::Arc::new(SledBackend::open(dir.path()).unwrap());
    backend
        .commit(vec![Op::Put(b"run/x".to_vec(), version(0))])
        .await
        .unwrap();
    let reader = {
        let backend = backend.clone();
        std::thread::spawn(move || {
            let mut reads = 0;
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_secs(3) {
                if let Some(value) = backend.get(b"run/x").expect("a read") {
                    check_version(&value);
                }
                for (_, value) in backend.scan_prefix(b"run/").expect("a scan") {
                    check_version(&value);
                }
                reads += 1;
            }
            reads
        })
    };
    let mut v = 0u8;
    while !reader.is_finished() {
        v = v.wrapping_add(1);
        let op = if deleted(v) {
            Op::Delete(b"run/x".to_vec())
        } else {
            Op::Put(b"run/x".to_vec(), version(v))
        };
        backend.commit(vec![op]).await.unwrap();
    }
    let reads = reader.join().expect("the reader never saw a torn value");
    assert!(reads > 0 && v > 0);
    // Writes after a reopen replace the chunked value and leave nothing of
    // the old one.
    drop(backend);
    let backend = reopen(dir.path());
    backend
        .commit(vec![Op::Put(b"run/x".to_vec(), version(4))])
        .await
        .unwrap();
    check_version(&backend.get(b"run/x").unwrap().unwrap());
    // The tree gets a value's chunks when the committer applies its group,
    // which a close does at the latest.
    drop(backend);
    let backend = reopen(dir.path());
    check_version(&backend.get(b"run/x").unwrap().unwrap());
    let chunks: usize = backend
        .scan_prefix(b"\xff\xffchunk/")
        .unwrap()
        .iter()
        .map(|(_, v)| v.len())
        .sum();
    assert_eq!(chunks, version(4).len());
}

#[tokio::test]
async fn a_dropped_backend_lets_go_of_the_store_at_once() {
    // A server restarted on the same directory, or a tool reading the store
    // of a stopped server, opens it: a lock sled's own threads still hold
    // for a moment is waited for, not an error.
    let dir = tempfile::tempdir().expect("a temp dir");
    for round in 0..20u8 {
        let backend = SledBackend::open(dir.path()).expect("the store opens at once");
        backend
            .commit(vec![Op::Put(vec![b'k', round], vec![round])])
            .await
            .expect("commits");
        drop(backend);
    }
    let backend = SledBackend::open(dir.path()).expect("the store opens at once");
    assert_eq!(backend.get(&[b'k', 19]).expect("reads"), Some(vec![19]));
}
