//! The store survives SIGKILL: every write acknowledged as durable before the
//! kill is there after reopening, and so is every write a reader saw and then
//! waited to settle (as the API does before it answers a client).
//!
//! Each test runs itself as a child process (the same test binary, filtered
//! to its `*_child` half) that prints keys as it goes. The parent kills the
//! child with SIGKILL mid-stream, reopens the store and checks every printed
//! key. Each runs on sled (a directory) and on PostgreSQL (a database of a
//! throwaway server, which outlives the killed child: what is lost with
//! the process is what it had not yet written).

#[path = "../../../tests/support/postgres.rs"]
mod postgres;

use kiln_store::{Backend, Op, PostgresBackend, SledBackend};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

const CHILD_ENV: &str = "KILN_STORE_CRASH_CHILD";
const READER_CHILD_ENV: &str = "KILN_STORE_CRASH_READER_CHILD";

/// Opens the store a test names: a PostgreSQL URL, or a sled directory.
fn open(store: &str) -> Arc<dyn Backend> {
    if store.starts_with("postgres://") {
        Arc::new(PostgresBackend::open(store).unwrap())
    } else {
        Arc::new(SledBackend::open(Path::new(store)).unwrap())
    }
}

/// Starts the test `child` with `env` set to `store`, collects the keys of its
/// lines that start with `prefix` until it has `count`, and SIGKILLs it the
/// moment it has them.
fn keys_until_killed(
    child: &str,
    env: &str,
    store: &str,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    // The child's complaints, if it stops early, go in the failure message.
    let stderr = tempfile::tempfile().unwrap();
    let mut process = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", child, "--nocapture", "--test-threads", "1"])
        .env(env, store)
        .stdout(Stdio::piped())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .unwrap();
    let stdout = process.stdout.take().unwrap();
    let mut keys = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(key) = line.strip_prefix(prefix) {
            keys.push(key.to_string());
            if keys.len() == count {
                break;
            }
        }
    }
    process.kill().unwrap();
    let status = process.wait().unwrap();
    if keys.len() < count {
        let mut said = Vec::new();
        let mut stderr = stderr;
        stderr.seek(SeekFrom::Start(0)).unwrap();
        stderr.read_to_end(&mut said).unwrap();
        let tail = String::from_utf8_lossy(&said[said.len().saturating_sub(4_000)..]);
        panic!(
            "the child printed {} of {count} keys, then stopped ({status}); it said:\n{tail}",
            keys.len()
        );
    }
    keys
}

/// The keys that are not in `store`.
fn missing(store: &str, keys: &[String]) -> Vec<String> {
    let backend = open(store);
    keys.iter()
        .filter(|k| backend.get(k.as_bytes()).unwrap().is_none())
        .cloned()
        .collect()
}

/// Runs `body` on the store named by `env`, if this process
/// is a child started by [`keys_until_killed`].
fn as_child<F: std::future::Future<Output = ()>>(
    env: &str,
    body: impl FnOnce(Arc<dyn Backend>) -> F,
) {
    let Ok(store) = std::env::var(env) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = open(&store);
    runtime.block_on(body(backend));
}

fn acknowledged_writes_survive_sigkill(store: &str) {
    // SIGKILL while the child is still writing at full speed.
    let acknowledged = keys_until_killed("crash_child", CHILD_ENV, store, "ack ", 3_000);
    let missing = missing(store, &acknowledged);
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes were lost, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    acknowledged_writes_survive_sigkill(&dir.path().to_string_lossy());
}

#[test]
fn every_acknowledged_write_to_postgres_survives_sigkill() {
    let server = postgres::Postgres::start();
    acknowledged_writes_survive_sigkill(&server.database("kiln"));
}

/// The writer half; does nothing unless started by the test above.
#[test]
fn crash_child() {
    as_child(CHILD_ENV, |backend| async move {
        let mut tasks = Vec::new();
        for writer in 0..64u32 {
            let backend = backend.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0u32.. {
                    let key = format!("w{writer:02}/{n:08}");
                    let value = vec![writer as u8; 256];
                    if backend
                        .commit(vec![Op::Put(key.clone().into_bytes(), value)])
                        .await
                        .is_ok()
                    {
                        println!("ack {key}");
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn writes_a_reader_saw_survive_sigkill(store: &str) {
    // Killed the moment the reader has reported: its last write has had no
    // time to reach the disk unless the reader waited for it.
    let seen = keys_until_killed("reader_crash_child", READER_CHILD_ENV, store, "seen ", 40);
    let lost = missing(store, &seen);
    assert!(lost.is_empty(), "writes a reader saw were lost: {lost:?}");
}

#[test]
fn every_write_a_reader_saw_and_settled_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    writes_a_reader_saw_survive_sigkill(&dir.path().to_string_lossy());
}

#[test]
fn every_write_a_reader_saw_and_settled_in_postgres_survives_sigkill() {
    let server = postgres::Postgres::start();
    writes_a_reader_saw_survive_sigkill(&server.database("kiln"));
}

/// The half of the test above that writes without awaiting its commits and
/// reports what it read once settled; does nothing unless started by it.
#[test]
fn reader_crash_child() {
    as_child(READER_CHILD_ENV, |backend| async move {
        let writer = backend.clone();
        tokio::spawn(async move {
            // At most this many writes are unacknowledged at once: the
            // newest are always in flight when the reader looks, and the
            // backlog (and the database) stays small however slow the
            // store's disk is.
            const IN_FLIGHT: usize = 2_048;
            let mut unacknowledged = std::collections::VecDeque::new();
            for n in 0u32.. {
                let key = format!("u/{n:010}");
                unacknowledged
                    .push_back(writer.commit(vec![Op::Put(key.into_bytes(), vec![1; 200])]));
                if unacknowledged.len() > IN_FLIGHT
                    && let Some(oldest) = unacknowledged.pop_front()
                    && let Err(error) = oldest.await
                {
                    eprintln!("a commit failed: {error}");
                    return;
                }
                if n % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(7)).await;
            let last = backend.last_with_prefix(b"u/").unwrap();
            if let Err(error) = backend.settled().await {
                eprintln!("settling failed: {error}");
                break;
            }
            if let Some((key, _)) = last {
                println!("seen {}", String::from_utf8_lossy(&key));
            }
        }
    });
}
