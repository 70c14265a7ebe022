//! `kiln serve --store postgres://…`: the same server with its store in a
//! PostgreSQL database (a throwaway server started by `scripts/postgres`),
//! through restarts and SIGKILLs.

use crate::harness::{KEY, Kiln, data_dir, exited_within, host_calls, kiln_bin};
use crate::pg_server::Postgres;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Waits of 100 ms or less stay warm; the tests' waits are longer, so they
/// snapshot the guest, and the snapshot goes to PostgreSQL.
fn args(url: &str) -> Vec<&str> {
    vec!["--store", url, "--warm-wait-ms", "100"]
}

fn count(entries: &[Value], kind: &str) -> usize {
    entries.iter().filter(|e| e["type"] == kind).count()
}

/// Runs `kiln serve` with `extra` arguments that should keep it from
/// starting; returns what it printed to stderr once it exited.
pub(crate) fn refused(dir: &std::path::Path, extra: &[&str]) -> String {
    let mut child = std::process::Command::new(kiln_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("KILN_SECRET_KEY", KEY)
        // Whatever the developer's shell holds for the blob store.
        .env_remove("KILN_BLOB_STORE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln serve starts");
    let status = exited_within(&mut child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("kiln serve {extra:?} did not exit"));
    assert!(!status.success(), "kiln serve {extra:?} should not start");
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .expect("stderr is readable");
    stderr
}

#[tokio::test]
async fn runs_complete_and_survive_a_restart_with_the_store_in_postgres() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &args(&url));
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    let id = kiln.trigger_ok("hello-world", json!({"name": "Ada"})).await;
    let before = kiln.finished(&id).await;
    assert_eq!(before["status"], "COMPLETED", "{before}");
    // Nothing of the runs is in the data directory: sled never opened.
    assert!(!dir.path().join("store").exists());

    // A second server on the same database joins it as a standby, but
    // only with the leader's keys: this one made its own master key.
    let other = data_dir();
    let why = refused(other.path(), &["--store", &url]);
    assert!(
        why.contains("API key or master key differs from those of node"),
        "{why}"
    );
    kiln.kill();

    let kiln = Kiln::start_with(dir.path(), &args(&url));
    let after = kiln.run(&id).await;
    assert_eq!(after["status"], "COMPLETED");
    assert_eq!(after["output"], json!({"message": "Hello, Ada!"}));
    assert_eq!(after["attempts"], before["attempts"]);
    let id = kiln
        .trigger_ok("hello-world", json!({"name": "again"}))
        .await;
    assert_eq!(
        kiln.finished(&id).await["output"]["message"],
        "Hello, again!"
    );
}

#[tokio::test]
async fn waiting_runs_killed_with_the_server_complete_once_from_postgres() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &args(&url));
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(
            kiln.trigger_ok("countdown", json!({"steps": 3, "wait_ms": 400}))
                .await,
        );
    }
    // Killed once the first run has suspended to a snapshot in PostgreSQL:
    // the others are queued, executing, waiting or resumed.
    kiln.until_journal(&ids[0], |e| count(e, "SUSPENDED") >= 1)
        .await;
    kiln.kill();

    let kiln = Kiln::start_with(dir.path(), &args(&url));
    for id in &ids {
        let run = kiln.finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        assert_eq!(run["attemptCount"], 1, "{run}");
        let draws = run["output"]["draws"].as_array().expect("draws").clone();
        assert_eq!(draws.len(), 3, "{run}");
        let entries = kiln.journal(id).await;
        let calls = host_calls(&entries, "random-bytes");
        assert_eq!(calls, 3, "each draw journaled once: {entries:?}");
        assert_eq!(count(&entries, "ATTEMPT_ENDED"), 1, "{id}");
    }
}

#[tokio::test]
async fn a_bad_store_url_is_refused_with_the_reason() {
    let dir = data_dir();
    let why = refused(dir.path(), &["--store", "mysql://localhost/kiln"]);
    assert!(why.contains("a PostgreSQL URL"), "{why}");
    // A database nobody listens for: the connection's error, not a hang.
    let why = refused(
        dir.path(),
        &[
            "--store",
            "postgres://kiln@/kiln?host=/nonexistent-kiln-socket",
        ],
    );
    assert!(why.contains("PostgreSQL: connecting"), "{why}");
}

#[tokio::test]
async fn a_dump_restored_into_another_database_carries_on_its_runs() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &args(&url));
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;
    let done = kiln
        .trigger_ok("countdown", json!({"steps": 0, "wait_ms": 0}))
        .await;
    let finished = kiln.finished(&done).await;
    let waiting = kiln
        .trigger_ok("countdown", json!({"steps": 2, "wait_ms": 1500}))
        .await;
    kiln.until_journal(&waiting, |e| count(e, "SUSPENDED") >= 1)
        .await;
    kiln.kill();

    // A backup with PostgreSQL's own tools, restored into a new database.
    let dump = dir.path().join("kiln.dump");
    let dumped = std::process::Command::new("pg_dump")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(&url)
        .status()
        .expect("pg_dump runs");
    assert!(dumped.success());
    let restored_url = pg.database("restored");
    let restored = std::process::Command::new("pg_restore")
        .args(["--no-owner", "-d", &restored_url])
        .arg(&dump)
        .status()
        .expect("pg_restore runs");
    assert!(restored.success());

    // The same data directory: its master key opens the sealed snapshots.
    let kiln = Kiln::start_with(dir.path(), &args(&restored_url));
    assert_eq!(kiln.run(&done).await["output"], finished["output"]);
    let run = kiln.finished(&waiting).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["steps"], 2, "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");
}

async fn ready(kiln: &Kiln) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/readyz", kiln.url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers within 10 s")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_stuck_database_makes_the_server_not_ready_until_it_answers_again() {
    use std::io::{BufRead, BufReader, Write};
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &args(&url));
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    assert_eq!(ready(&kiln).await, 200);

    // Another session locks the store's tables of markers and runs: every
    // read of them waits.
    let mut locker = std::process::Command::new("psql")
        .args(["-X", "-q", "-At", &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("psql runs");
    let mut stdin = locker.stdin.take().expect("stdin is piped");
    writeln!(
        stdin,
        "BEGIN; LOCK TABLE kiln_kv, kiln_run IN ACCESS EXCLUSIVE MODE; SELECT 'locked';"
    )
    .expect("psql reads");
    let mut lines = BufReader::new(locker.stdout.take().expect("stdout is piped")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("locked"));
    assert_eq!(ready(&kiln).await, 503, "a store that does not answer");

    // The lock goes with the session: the server is ready again and runs.
    drop(stdin);
    locker.wait().expect("psql exits");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(&kiln).await != 200 {
        assert!(
            Instant::now() < deadline,
            "ready again once the table is free"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = kiln.trigger_ok("hello-world", json!({"name": "Ada"})).await;
    assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
}

#[tokio::test]
async fn the_server_stops_when_its_database_goes_away() {
    let mut pg = Postgres::start();
    let url = pg.database("kiln");
    let dir = data_dir();
    let mut kiln = Kiln::start_with(dir.path(), &args(&url));
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    let id = kiln.trigger_ok("hello-world", json!({"name": "Ada"})).await;
    kiln.finished(&id).await;
    assert_eq!(ready(&kiln).await, 200);
    pg.stop();
    // Its connections are lost: the server stops (fail-stop) rather than
    // serve without the lock that makes it the database's one owner, or
    // acknowledge what it could not keep. A restart reconnects.
    let exited = kiln.exited_within(Duration::from_secs(30));
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(74),
        "kiln serve exits with EX_IOERR"
    );
}
