//! The sled backend's reads see every commit the moment it is made, before
//! its committer has applied it to the tree: after each of thousands of
//! random commits (puts, overwrites, deletes, values large enough to be
//! chunked), made without waiting for them to be durable, every kind of
//! read answers as the in-memory backend does after the same commits,
//! also while the committer is part way through applying what it holds.

#[path = "../../../tests/support/postgres.rs"]
mod postgres;

use kiln_store::{Backend, MemoryBackend, Op, PostgresBackend, SledBackend};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod rng;

use rng::Rng;

fn key(rng: &mut Rng) -> Vec<u8> {
    // Mostly a few keys written again and again; a quarter of the time one
    // of many, so that the groups the committer holds grow past the slice
    // of keys it applies to the tree at a time, and reads meet groups
    // applied in part.
    if rng.below(4) == 0 {
        return format!("d/{:04}", rng.below(2_000)).into_bytes();
    }
    let prefix = ["a/", "b/", "c/"][rng.below(3) as usize];
    format!("{prefix}{:02}", rng.below(40)).into_bytes()
}

fn value(rng: &mut Rng) -> Vec<u8> {
    // Now and then larger than a chunk (4 KiB with the default segment).
    let len = if rng.below(20) == 0 {
        9_000
    } else {
        rng.below(64) as usize
    };
    let seed = rng.next() as u8;
    (0..len).map(|i| (i as u8).wrapping_add(seed)).collect()
}

/// Commits random writes to `sled` and to a model, checking after each
/// that every kind of read agrees with the model; returns everything the
/// model holds at the end, once every commit is durable.
async fn reads_agree_with_a_model(sled: &dyn Backend) -> Vec<(Vec<u8>, Vec<u8>)> {
    let model = MemoryBackend::default();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut pending = Vec::new();
    for round in 0..3_000 {
        let mut ops = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let k = key(&mut rng);
            ops.push(if rng.below(4) == 0 {
                Op::Delete(k)
            } else {
                Op::Put(k, value(&mut rng))
            });
        }
        model.commit(ops.clone()).await.unwrap();
        pending.push(sled.commit(ops));
        if round % 50 == 0 {
            // Now and then let the committer catch up, so reads also meet
            // applied commits and groups of every size.
            for commit in pending.drain(..) {
                commit.await.unwrap();
            }
        }
        let probe = key(&mut rng);
        assert_eq!(sled.get(&probe).unwrap(), model.get(&probe).unwrap(), "get");
        let prefix = &probe[..2];
        assert_eq!(
            sled.scan_prefix(prefix).unwrap(),
            model.scan_prefix(prefix).unwrap(),
            "scan_prefix {round}"
        );
        assert_eq!(
            sled.last_with_prefix(prefix).unwrap(),
            model.last_with_prefix(prefix).unwrap(),
            "last_with_prefix {round}"
        );
        let end = key(&mut rng);
        let limit = rng.below(10) as usize;
        assert_eq!(
            sled.scan_range(&probe, &end, limit).unwrap(),
            model.scan_range(&probe, &end, limit).unwrap(),
            "scan_range {round}"
        );
        assert_eq!(
            sled.scan_range_rev(&probe, &end, limit).unwrap(),
            model.scan_range_rev(&probe, &end, limit).unwrap(),
            "scan_range_rev {round}"
        );
    }
    for commit in pending {
        commit.await.unwrap();
    }
    model.scan_prefix(b"").unwrap()
}

#[tokio::test]
async fn reads_see_commits_before_they_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledBackend::open(dir.path()).unwrap();
    let everything = reads_agree_with_a_model(&sled).await;
    // And all of it is what a reopened store holds.
    drop(sled);
    let reopened = SledBackend::open(dir.path()).unwrap();
    let stored: Vec<_> = reopened
        .scan_prefix(b"")
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(b"\xff\xff"))
        .collect();
    assert_eq!(stored, everything);
}

/// The same on PostgreSQL, whose reads lay the commits not yet written over
/// what the database returns, with groups written while they read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_see_commits_before_they_are_written() {
    let server = postgres::Postgres::start();
    let url = server.database("kiln");
    let backend = PostgresBackend::open(&url).unwrap();
    let everything = reads_agree_with_a_model(&backend).await;
    drop(backend);
    let reopened = PostgresBackend::open(&url).unwrap();
    assert_eq!(reopened.scan_prefix(b"").unwrap(), everything);
}

/// One writer commits `x = n` with `log/n` in each commit, many in flight,
/// while two readers scan: every scan must show whole commits, in order —
/// the `log/` keys it sees are `1..=m` with none missing, and `x` is `m`.
/// A scan that laid an older unwritten `x` over a newer group the database
/// already held would show `x` behind the log.
async fn scans_see_whole_commits_in_order(backend: Arc<dyn Backend>) {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (backend, stop) = (backend.clone(), stop.clone());
        tokio::spawn(async move {
            let mut pending = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let value = n.to_be_bytes().to_vec();
                let mut log = b"log/".to_vec();
                log.extend_from_slice(&value);
                pending.push(backend.commit(vec![
                    Op::Put(b"x".to_vec(), value.clone()),
                    Op::Put(log, value),
                ]));
                if pending.len() == 32 {
                    for commit in pending.drain(..) {
                        commit.await.unwrap();
                    }
                }
            }
            for commit in pending {
                commit.await.unwrap();
            }
            n
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let backend = backend.clone();
            tokio::task::spawn_blocking(move || {
                let mut scans = 0;
                let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
                while std::time::Instant::now() < until {
                    let entries = backend.scan_prefix(b"").unwrap();
                    let number = |v: &[u8]| u64::from_be_bytes(v.try_into().unwrap());
                    let logged: Vec<u64> = entries
                        .iter()
                        .filter(|(k, _)| k.starts_with(b"log/"))
                        .map(|(_, v)| number(v))
                        .collect();
                    let x = entries
                        .iter()
                        .find(|(k, _)| k == b"x")
                        .map_or(0, |(_, v)| number(v));
                    let m = logged.len() as u64;
                    if !logged.iter().copied().eq(1..=m) {
                        return Err(format!(
                            "a scan missed a commit: {m} entries, last {:?}",
                            logged.last()
                        ));
                    }
                    if x != m {
                        return Err(format!("a scan mixed commits: x = {x} beside log 1..={m}"));
                    }
                    // The newest entry alone, as `last_with_prefix` reads it.
                    if let Some((_, v)) = backend.last_with_prefix(b"log/").unwrap()
                        && number(&v) < m
                    {
                        return Err(format!("last_with_prefix went back: {}", number(&v)));
                    }
                    scans += 1;
                }
                Ok(scans)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for reader in readers {
        outcomes.push(reader.await.unwrap());
    }
    // The writer stops before any verdict, so a failing check reports
    // itself rather than the store being torn down under the writer.
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let mut scans = 0;
    for outcome in outcomes {
        scans += outcome.unwrap_or_else(|broken| panic!("{broken}"));
    }
    assert!(
        scans > 10 && written > 100,
        "{scans} scans, {written} commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_scans_see_whole_commits_in_order() {
    let dir = tempfile::tempdir().unwrap();
    scans_see_whole_commits_in_order(Arc::new(SledBackend::open(dir.path()).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scans_see_whole_commits_in_order() {
    let server = postgres::Postgres::start();
    let backend = PostgresBackend::open(&server.database("kiln")).unwrap();
    scans_see_whole_commits_in_order(Arc::new(backend)).await;
}
