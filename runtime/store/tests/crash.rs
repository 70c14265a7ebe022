//! The store survives SIGKILL: every write acknowledged as durable before the
//! kill is there after reopening.
//!
//! The test runs itself as a child process (the same test binary, filtered to
//! `crash_child`) that writes from 64 concurrent tasks and prints each key
//! once its commit is acknowledged. The parent kills the child with SIGKILL
//! mid-stream, reopens the store and checks every printed key.

use kiln_store::{Backend, Op, SledBackend};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

const CHILD_ENV: &str = "KILN_STORE_CRASH_CHILD";

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acknowledged = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(key) = line.strip_prefix("ack ") {
            acknowledged.push(key.to_string());
            if acknowledged.len() == 3_000 {
                break;
            }
        }
    }
    // SIGKILL while the child is still writing at full speed.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        acknowledged.len() >= 3_000,
        "the child wrote only {}",
        acknowledged.len()
    );

    let backend = SledBackend::open(dir.path()).unwrap();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|k| backend.get(k.as_bytes()).unwrap().is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes were lost, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
}

/// The writer half; does nothing unless started by the test above.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let backend: Arc<dyn Backend> =
            Arc::new(SledBackend::open(std::path::Path::new(&dir)).unwrap());
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
