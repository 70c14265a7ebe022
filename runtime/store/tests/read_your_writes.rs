//! The sled backend's reads see every commit the moment it is made, before
//! its committer has applied it to the tree: after each of thousands of
//! random commits (puts, overwrites, deletes, values large enough to be
//! chunked), made without waiting for them to be durable, every kind of
//! read answers as the in-memory backend does after the same commits.

#[path = "../../../tests/support/postgres.rs"]
mod postgres;

use kiln_store::{Backend, MemoryBackend, Op, PostgresBackend, SledBackend};

/// A small deterministic generator (xorshift), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn key(rng: &mut Rng) -> Vec<u8> {
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
