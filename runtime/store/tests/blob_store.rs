//! The PostgreSQL store with a blob store (moto, an S3-compatible server):
//! large values go to the bucket, the table keeps references, replaced
//! objects are deleted, and a sweep deletes what a crash left behind.

#[path = "../../../tests/support/moto.rs"]
mod moto;
#[path = "../../../tests/support/postgres.rs"]
mod postgres;

use kiln_store::{Backend, BlobStore, Op, OwnerWait, PostgresBackend};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn credentials() {
    // SAFETY: set before any backend reads them, to the same values in
    // every test of this binary.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "kiln");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "kiln");
    }
}

fn open(url: &str, blob_url: &str) -> PostgresBackend {
    credentials();
    let blobs = Arc::new(BlobStore::from_url(blob_url).expect("a blob store URL"));
    PostgresBackend::open_with(url, OwnerWait::Briefly, Some(blobs))
        .expect("the store opens")
        .expect("nobody else owns the database")
}

/// Waits until `done` holds, for at most 10 s.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn names(s3: &moto::Moto) -> Vec<String> {
    s3.objects("kiln")
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_live_in_the_bucket_and_go_when_replaced_or_deleted() {
    let pg = postgres::Postgres::start();
    let s3 = moto::Moto::start();
    let url = pg.database("kiln");
    let blob_url = s3.bucket("kiln", "min-size=1024");
    let backend = open(&url, &blob_url);
    let large = |fill: u8| vec![fill; 300 * 1024];
    backend
        .commit(vec![
            Op::Put(b"snap/a".to_vec(), large(1)),
            Op::Put(b"snap/b".to_vec(), large(2)),
            Op::Put(b"run/a".to_vec(), b"{\"small\":true}".to_vec()),
        ])
        .await
        .unwrap();
    // Each large value is an object named for its key; the table holds
    // references a few dozen bytes long, and small values as they are.
    let objects = names(&s3);
    assert_eq!(objects.len(), 2, "{objects:?}");
    let hex = |key: &[u8]| {
        format!(
            "kiln/{}/",
            key.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    assert!(
        objects.iter().any(|n| n.starts_with(&hex(b"snap/a"))),
        "{objects:?}"
    );
    let largest: usize = pg
        .query(&url, "SELECT max(length(value)) FROM kiln_kv")
        .parse()
        .unwrap();
    assert!(
        largest < 1024,
        "the table's largest value is {largest} bytes"
    );
    // Reads and scans follow the references, before and after a reopen.
    assert_eq!(backend.get(b"snap/a").unwrap(), Some(large(1)));
    let scanned = backend.scan_prefix(b"snap/").unwrap();
    assert_eq!(
        scanned,
        vec![
            (b"snap/a".to_vec(), large(1)),
            (b"snap/b".to_vec(), large(2))
        ]
    );
    drop(backend);
    let backend = open(&url, &blob_url);
    assert_eq!(backend.get(b"snap/b").unwrap(), Some(large(2)));
    assert_eq!(
        backend.get(b"run/a").unwrap(),
        Some(b"{\"small\":true}".to_vec())
    );

    // Replacing a value writes a new object and deletes the old one once
    // the commit is durable; deleting the key deletes its object.
    backend
        .commit(vec![
            Op::Put(b"snap/a".to_vec(), large(3)),
            Op::Delete(b"snap/b".to_vec()),
        ])
        .await
        .unwrap();
    assert_eq!(backend.get(b"snap/a").unwrap(), Some(large(3)));
    assert_eq!(backend.get(b"snap/b").unwrap(), None);
    eventually("the replaced and the deleted objects are gone", || {
        let now = names(&s3);
        now.len() == 1 && !objects.contains(&now[0])
    });
    // A value made small again leaves the bucket empty.
    backend
        .commit(vec![Op::Put(b"snap/a".to_vec(), b"small".to_vec())])
        .await
        .unwrap();
    eventually("the bucket is empty", || names(&s3).is_empty());
    assert_eq!(backend.get(b"snap/a").unwrap(), Some(b"small".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_deletes_objects_no_row_refers_to() {
    let pg = postgres::Postgres::start();
    let s3 = moto::Moto::start();
    let url = pg.database("kiln");
    let blob_url = s3.bucket("kiln", "min-size=1024");
    let backend = open(&url, &blob_url);
    backend
        .commit(vec![Op::Put(b"bundle/x".to_vec(), vec![9; 4096])])
        .await
        .unwrap();
    let kept = names(&s3);
    assert_eq!(kept.len(), 1);
    // What a crash leaves: an object written for a group that never
    // committed (here, of a key the table holds another value of), and
    // one of a key the table does not hold at all.
    let orphan_of_kept_key = format!("{}/deadbeef-1", kept[0].rsplit_once('/').unwrap().0);
    let orphan_of_no_key = "kiln/6e6f6e65/deadbeef-2".to_string();
    for name in [&orphan_of_kept_key, &orphan_of_no_key] {
        s3.put(&format!("kiln/{name}"), b"left behind");
    }
    // An object Kiln did not name is left alone.
    s3.put("kiln/kiln/README", b"not Kiln's");
    assert_eq!(names(&s3).len(), 4);

    // Objects younger than the sweep's age are never touched.
    assert_eq!(backend.sweep_blobs(Duration::from_secs(3600)).unwrap(), 0);
    assert_eq!(backend.sweep_blobs(Duration::ZERO).unwrap(), 2);
    let mut left = names(&s3);
    left.sort();
    let mut expected = vec!["kiln/README".to_string(), kept[0].clone()];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(backend.get(b"bundle/x").unwrap(), Some(vec![9; 4096]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_bucket_is_missing_or_unreachable_is_refused_with_the_reason() {
    let pg = postgres::Postgres::start();
    let s3 = moto::Moto::start();
    let url = pg.database("kiln");
    credentials();
    let missing =
        BlobStore::from_url(&format!("s3://nobucket/kiln?endpoint={}", s3.endpoint())).unwrap();
    let error = PostgresBackend::open_with(&url, OwnerWait::Never, Some(Arc::new(missing)))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("NoSuchBucket") || error.contains("does not exist"),
        "{error}"
    );
    // A port nothing listens on: moto's, once it is stopped.
    let endpoint = s3.endpoint();
    drop(s3);
    let unreachable = BlobStore::from_url(&format!("s3://kiln/kiln?endpoint={endpoint}")).unwrap();
    let started = Instant::now();
    let error = PostgresBackend::open_with(&url, OwnerWait::Never, Some(Arc::new(unreachable)))
        .unwrap_err()
        .to_string();
    assert!(error.contains("listing the bucket"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
