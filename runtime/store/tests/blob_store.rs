//! The PostgreSQL store with a blob store (moto, an S3-compatible server):
//! large values go to the bucket, the table keeps references, replaced
//! objects are deleted, a sweep deletes what a crash left behind, and a
//! database is only opened with the blob store it records.

#[path = "../../../tests/support/moto.rs"]
mod moto;
#[path = "../../../tests/support/postgres.rs"]
mod postgres;

use kiln_store::{Backend, BlobStore, Op, OwnerWait, PostgresBackend};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn blob_store(url: &str) -> Arc<BlobStore> {
    Arc::new(BlobStore::with_credentials(url, "kiln", "kiln").expect("a blob store URL"))
}

fn open(url: &str, blob_url: &str) -> PostgresBackend {
    PostgresBackend::open_with(url, OwnerWait::Briefly, Some(blob_store(blob_url)))
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

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_live_in_the_bucket_and_go_when_replaced_or_deleted() {
    let pg = postgres::Postgres::start();
    let s3 = moto::Moto::start();
    let url = pg.database("kiln");
    let blob_url = s3.bucket("kiln", "min-size=1024");
    let backend = open(&url, &blob_url);
    let large = |fill: u8| vec![fill; 300 * 1024];
    let large_run = format!(
        r#"{{"id":"b","taskId":"big","status":"QUEUED","payload":"{}"}}"#,
        "x".repeat(4096)
    )
    .into_bytes();
    backend
        .commit(vec![
            Op::Put(b"snap/a".to_vec(), large(1)),
            Op::Put(b"snap/b".to_vec(), large(2)),
            Op::Put(b"run/a".to_vec(), b"{\"small\":true}".to_vec()),
            Op::Put(b"run/b".to_vec(), large_run.clone()),
        ])
        .await
        .unwrap();
    // Each large value is an object named for its key; the table holds
    // references a few dozen bytes long, and small values as they are.
    let objects = names(&s3);
    assert_eq!(objects.len(), 3, "{objects:?}");
    // A run's columns come from its record, not from the reference the
    // table holds.
    assert_eq!(
        pg.query(
            &url,
            "SELECT task_id, status FROM kiln_run WHERE run_id = 'b'"
        ),
        "big|QUEUED"
    );
    assert_eq!(backend.get(b"run/b").unwrap(), Some(large_run.clone()));
    assert!(
        objects
            .iter()
            .any(|n| n.starts_with(&format!("kiln/{}/", hex(b"snap/a")))),
        "{objects:?}"
    );
    let largest: usize = pg
        .query(&url, "SELECT max(length(value)) FROM kiln_entries")
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
            Op::Delete(b"run/b".to_vec()),
        ])
        .await
        .unwrap();
    assert_eq!(backend.get(b"snap/a").unwrap(), Some(large(3)));
    assert_eq!(backend.get(b"snap/b").unwrap(), None);
    eventually("the replaced and the deleted objects are gone", || {
        let now = names(&s3);
        now.len() == 1 && !objects.contains(&now[0])
    });
    // An object deleted behind Kiln's back is reported, naming its key.
    s3.delete(&format!("kiln/{}", names(&s3)[0]));
    let error = backend.get(b"snap/a").unwrap_err().to_string();
    assert!(
        error.contains("snap/a") && error.contains("does not hold"),
        "{error}"
    );
    let error = backend.scan_prefix(b"snap/").unwrap_err().to_string();
    assert!(error.contains("snap/a"), "{error}");
    // A value made small again leaves the bucket empty.
    backend
        .commit(vec![Op::Put(b"snap/a".to_vec(), b"small".to_vec())])
        .await
        .unwrap();
    assert!(names(&s3).is_empty());
    assert_eq!(backend.get(b"snap/a").unwrap(), Some(b"small".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_beside_a_writer_replacing_large_values_see_only_values_written() {
    let pg = postgres::Postgres::start();
    let s3 = moto::Moto::start();
    let url = pg.database("kiln");
    let backend = Arc::new(open(&url, &s3.bucket("kiln", "min-size=1024")));
    const KEYS: u8 = 4;
    const ROUNDS: u8 = 60;
    let value = |round: u8, key: u8| vec![round.wrapping_mul(KEYS).wrapping_add(key); 8 * 1024];
    let writer = {
        let backend = backend.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                let ops = (0..KEYS)
                    .map(|k| Op::Put(format!("snap/{k}").into_bytes(), value(round, k)))
                    .collect();
                backend.commit(ops).await.expect("a commit");
            }
        })
    };
    // Every value read is one the writer wrote whole, while the objects
    // of the values it replaces are deleted under the readers.
    let check = |key: &[u8], v: &[u8]| {
        let k = key.last().map(|b| b - b'0').unwrap_or(0);
        assert_eq!(v.len(), 8 * 1024, "{:?}", String::from_utf8_lossy(key));
        assert!(
            (0..ROUNDS).any(|round| v == value(round, k).as_slice()),
            "a value never written under {}",
            String::from_utf8_lossy(key)
        );
    };
    let mut reads = 0;
    while !writer.is_finished() {
        let backend = backend.clone();
        let (scanned, got) = tokio::task::spawn_blocking(move || {
            (backend.scan_prefix(b"snap/"), backend.get(b"snap/1"))
        })
        .await
        .unwrap();
        for (key, v) in scanned.expect("a scan") {
            check(&key, &v);
        }
        if let Some(v) = got.expect("a read") {
            check(b"snap/1", &v);
        }
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 0);
    // Once the deletions are done, only the last round's objects remain.
    eventually("the replaced objects are deleted", || {
        s3.objects("kiln").len() == KEYS as usize
    });
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
    let (kept_key, kept_object) = kept[0].rsplit_once('/').unwrap();
    let writer = kept_object.split_once('-').unwrap().0;
    // What a crash leaves, by this database's writer: an object written
    // for a group that never committed (of a key the table holds another
    // value of), and one of a key the table does not hold at all.
    let garbage = [
        format!("{kept_key}/{writer}-999"),
        format!("kiln/{}/{writer}-1000", hex(b"none")),
    ];
    // Left alone: another database's writer's object, and objects Kiln did
    // not name.
    let foreign = [
        format!("kiln/{}/0123456789abcdef-1", hex(b"none")),
        "kiln/cafe/notes.txt".to_string(),
        "kiln/README".to_string(),
    ];
    for name in garbage.iter().chain(&foreign) {
        s3.put(&format!("kiln/{name}"), b"left behind");
    }
    assert_eq!(names(&s3).len(), 6);

    // Objects younger than the sweep's age are never touched.
    assert_eq!(backend.sweep_blobs(Duration::from_secs(3600)).unwrap(), 0);
    assert_eq!(backend.sweep_blobs(Duration::ZERO).unwrap(), 2);
    let mut left = names(&s3);
    left.sort();
    let mut expected: Vec<String> = foreign.to_vec();
    expected.push(kept[0].clone());
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(backend.get(b"bundle/x").unwrap(), Some(vec![9; 4096]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_opens_only_with_the_blob_store_it_records() {
    let pg = postgres::Postgres::start();
    let s3 = moto::Moto::start();
    let url = pg.database("kiln");
    let blob_url = s3.bucket("kiln", "min-size=1024");
    drop(open(&url, &blob_url));
    let other = blob_url.replace("s3://kiln/kiln/", "s3://kiln/other/");
    let refused = PostgresBackend::open_with(&url, OwnerWait::Briefly, Some(blob_store(&other)))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(
            "keeps its large values in the blob store s3://kiln/kiln/, not s3://kiln/other/"
        ),
        "{refused}"
    );
    let refused = PostgresBackend::open(&url).unwrap_err().to_string();
    assert!(
        refused.contains("start with --blob-store s3://kiln/kiln/"),
        "{refused}"
    );
    let refused = PostgresBackend::open_read_only(&url, None)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("start with --blob-store"), "{refused}");
    // The same location through another endpoint's URL is the same store.
    let through_localhost = blob_url.replace("127.0.0.1", "localhost");
    assert_ne!(through_localhost, blob_url);
    drop(open(&url, &through_localhost));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_bucket_is_missing_or_unreachable_is_refused_with_the_reason() {
    let pg = postgres::Postgres::start();
    let s3 = moto::Moto::start();
    let url = pg.database("kiln");
    let missing = blob_store(&format!("s3://nobucket/kiln?endpoint={}", s3.endpoint()));
    let error = PostgresBackend::open_with(&url, OwnerWait::Never, Some(missing))
        .unwrap_err()
        .to_string();
    assert!(error.contains("the bucket does not exist"), "{error}");
    // A port nothing listens on (and no one may take).
    let unreachable = blob_store("s3://kiln/kiln?endpoint=http://127.0.0.1:1");
    let started = Instant::now();
    let error = PostgresBackend::open_with(&url, OwnerWait::Never, Some(unreachable))
        .unwrap_err()
        .to_string();
    assert!(error.contains("listing the bucket"), "{error}");
    // The signed URL (its key id and signature) is not in the message.
    assert!(!error.contains("X-Amz-"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_the_database_deletes_no_object_until_adopted() {
    let pg = postgres::Postgres::start();
    let s3 = moto::Moto::start();
    let url = pg.database("kiln");
    let blob_url = s3.bucket("kiln", "min-size=1024");
    let original = open(&url, &blob_url);
    original
        .commit(vec![Op::Put(b"snap/a".to_vec(), vec![1; 4096])])
        .await
        .unwrap();
    drop(original);
    // A copy, as a dump restored into another database would be: it
    // refers to the original's objects.
    pg.query(pg.url(), "CREATE DATABASE copy TEMPLATE kiln");
    let copy_url = url.replacen("/kiln?", "/copy?", 1);
    let copy = open(&copy_url, &blob_url);
    let shared = names(&s3);
    assert_eq!(copy.get(b"snap/a").unwrap(), Some(vec![1; 4096]));
    // Replacing the value in the copy leaves the original's object alone,
    // and so does a sweep.
    copy.commit(vec![Op::Put(b"snap/a".to_vec(), vec![2; 4096])])
        .await
        .unwrap();
    assert_eq!(copy.sweep_blobs(Duration::ZERO).unwrap(), 0);
    let now = names(&s3);
    assert!(shared.iter().all(|n| now.contains(n)), "{now:?}");
    assert_eq!(now.len(), 2, "{now:?}");
    let original = open(&url, &blob_url);
    assert_eq!(original.get(b"snap/a").unwrap(), Some(vec![1; 4096]));
    drop(original);
    drop(copy);
    // Adopted by the operator once the original is gone: the copy's server
    // deletes again.
    pg.query(&copy_url, "UPDATE kiln_blob_store SET database = ''");
    let copy = open(&copy_url, &blob_url);
    copy.commit(vec![Op::Put(b"snap/a".to_vec(), b"small".to_vec())])
        .await
        .unwrap();
    eventually("the copy deletes its replaced object", || {
        names(&s3).len() == 1
    });
}
