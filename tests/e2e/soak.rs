//! The crash soak: 500 runs mixing durable fetches, waits, child runs,
//! batches, wait tokens completed by a backend and retried attempts, while
//! the server is SIGKILLed 30 times at random moments. Every run completes,
//! and the counter that receives the fetches sees an idempotency key for
//! exactly the journal positions that hold a fetch: a request resent after
//! a crash carries the key it had before. The same soak runs on a cluster
//! of three nodes on PostgreSQL, whose nodes are killed again and again:
//! the leader, and a node running guests for it, in turn.

use crate::cluster::Nodes;
use crate::harness::{Kiln, data_dir};
use crate::pg_server::Postgres;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUNS: u64 = 500;
const KILLS: usize = 30;
/// Timer waits over 20 ms suspend the run.
const ARGS: &[&str] = &["--warm-wait-ms", "20"];

/// A local HTTP server that records each request's `Idempotency-Key`.
async fn key_counter() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/effect", listener.local_addr().unwrap());
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).into_owned();
                let key = text
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("idempotency-key")
                            .then(|| value.trim().to_string())
                    })
                    .unwrap_or_default();
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(key);
                    seen.len()
                };
                let body = n.to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, keys)
}

/// Completes the token of soak run `n` (creating it first under the key the
/// task uses, so the order of the two does not matter). False if the
/// server did not answer (it was killed meanwhile).
async fn complete_token(url: &str, n: u64) -> bool {
    let http = reqwest::Client::new();
    let create = http
        .post(format!("{url}/api/v1/waitpoints/tokens"))
        .bearer_auth(crate::harness::KEY)
        .json(&json!({ "idempotencyKey": format!("soak-{n}"), "timeout": "10m" }))
        .send()
        .await;
    let Ok(created) = create else { return false };
    let Ok(body) = created.json::<Value>().await else {
        return false;
    };
    let Some(id) = body["id"].as_str() else {
        return false;
    };
    let complete = http
        .post(format!("{url}/api/v1/waitpoints/tokens/{id}/complete"))
        .bearer_auth(crate::harness::KEY)
        .json(&json!({ "data": { "token": n } }))
        .send()
        .await;
    matches!(complete, Ok(r) if r.status().is_success())
}

fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n.max(1)
}

/// The idempotency keys a run's journal calls for: one per fetch wait that
/// has its response journaled, as `<run>-<attempt>-<wait id>`.
fn journaled_keys(run: &str, entries: &[Value]) -> Vec<String> {
    let mut attempt = 0;
    let mut fetches = BTreeSet::new();
    let mut keys = Vec::new();
    for entry in entries {
        match entry["type"].as_str() {
            Some("ATTEMPT_STARTED") => {
                attempt = entry["attempt"].as_u64().unwrap_or(0);
                fetches.clear();
            }
            Some("WAITS") => {
                for wait in entry["waits"].as_array().into_iter().flatten() {
                    if wait["kind"] == "fetch" {
                        fetches.insert(wait["id"].as_u64().unwrap_or(0));
                    }
                }
            }
            Some("WAKE") => {
                let id = entry["id"].as_u64().unwrap_or(0);
                if fetches.contains(&id) {
                    keys.push(format!("{run}-{attempt}-{id}"));
                }
            }
            _ => {}
        }
    }
    keys
}

/// The payload of soak run `n`: every fourth waits on a child, a batch or
/// a token, every fifth fails its first attempt.
fn soak_payload(counter: &str, n: u64) -> Value {
    json!({
        "url": counter,
        "n": n,
        "wait_ms": 30 + rand_below(200),
        "child": n % 4 == 1,
        "batch": n % 4 == 2,
        "token": n % 4 == 3,
        "fail_first": n.is_multiple_of(5),
    })
}

/// The soak runs that wait on a token, of `runs`.
fn token_runs(runs: u64) -> Vec<u64> {
    (0..runs).filter(|n| n % 4 == 3).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_runs_through_thirty_sigkills_all_complete_with_each_fetch_keyed_once() {
    let (counter, keys) = key_counter().await;
    let dir = data_dir();
    let mut kiln = Kiln::start_with(dir.path(), ARGS);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let mut ids = Vec::new();
    for n in 0..RUNS {
        ids.push(kiln.trigger_ok("soak", soak_payload(&counter, n)).await);
    }
    let mut pending = token_runs(RUNS);
    for kill in 0..KILLS {
        // The backend completes some tokens while the server runs; a
        // completion cut off by the kill is tried again later.
        let url = kiln.url.clone();
        let batch: Vec<u64> = pending.iter().take(6).copied().collect();
        let backend = tokio::spawn(async move {
            let mut done = Vec::new();
            for n in batch {
                if complete_token(&url, n).await {
                    done.push(n);
                }
            }
            done
        });
        // The server runs for a random time, then is killed: this sleep is
        // the crash's moment, the behaviour under test.
        let at = 150 + rand_below(600);
        tokio::time::sleep(Duration::from_millis(at)).await;
        kiln.kill();
        let done = backend.await.unwrap_or_default();
        pending.retain(|n| !done.contains(n));
        println!("kill {} at {at} ms", kill + 1);
        kiln = Kiln::start_with(dir.path(), ARGS);
    }
    for n in pending {
        assert!(complete_token(&kiln.url, n).await, "completing token {n}");
    }
    every_run_completed_with_each_fetch_keyed_once(&kiln, &ids, &keys, KILLS).await;
}

/// Three nodes on one PostgreSQL store, 240 soak runs triggered through
/// all of them, and a node `SIGKILL`ed 10 times at random moments (each
/// time started again, to stand by): the leader, then a node running
/// guests for it, in turn. Every run completes, in the attempts it was
/// meant to take, with each fetch keyed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_nodes_are_killed_ten_times_completes_every_run_once() {
    const RUNS: u64 = 240;
    const KILLS: usize = 10;
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let (counter, keys) = key_counter().await;
    let mut nodes = Nodes::start(&url, ARGS);
    let first = nodes.leader().await;
    nodes.node(first).deploy(kiln_fixtures::PROBE).await;
    let mut ids = Vec::new();
    for n in 0..RUNS {
        let node = nodes.node((n % 3) as usize);
        ids.push(node.trigger_ok("soak", soak_payload(&counter, n)).await);
    }
    let mut pending = token_runs(RUNS);
    for kill in 0..KILLS {
        let leader = nodes.leader().await;
        // The backend completes some tokens through a standby while the
        // leader runs; a completion cut off by the kill is tried again.
        let through = nodes.node((leader + 1 + kill % 2) % 3).url.clone();
        let batch: Vec<u64> = pending.iter().take(6).copied().collect();
        let backend = tokio::spawn(async move {
            let mut done = Vec::new();
            for n in batch {
                if complete_token(&through, n).await {
                    done.push(n);
                }
            }
            done
        });
        // The crash's moment, the behaviour under test.
        let at = 150 + rand_below(600);
        tokio::time::sleep(Duration::from_millis(at)).await;
        // Every other kill is of a standby, which runs guests for the
        // leader: its guests start again on the nodes left.
        let victim = match kill % 2 {
            0 => leader,
            _ => (leader + 1 + kill % 4 / 2) % 3,
        };
        nodes.kill(victim);
        let done = backend.await.unwrap_or_default();
        pending.retain(|n| !done.contains(n));
        let role = if victim == leader {
            "the leader"
        } else {
            "a worker"
        };
        println!("killed {role} (node {victim}) at {at} ms");
        nodes.restart(victim);
    }
    let leader = nodes.leader().await;
    let kiln = nodes.node(leader);
    for n in pending {
        assert!(complete_token(&kiln.url, n).await, "completing token {n}");
    }
    every_run_completed_with_each_fetch_keyed_once(kiln, &ids, &keys, KILLS).await;
}

/// Every run of `ids` completed (run `n` in two attempts if `n % 5 == 0`,
/// else one), and the counter `received` exactly one key per journaled
/// fetch position (some more than once: resent after a crash).
async fn every_run_completed_with_each_fetch_keyed_once(
    kiln: &Kiln,
    ids: &[String],
    keys: &Mutex<Vec<String>>,
    kills: usize,
) {
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for (n, id) in ids.iter().enumerate() {
        // Liveness, not speed: on a loaded machine the server recovering
        // hundreds of runs after the last kill may take minutes.
        let run = kiln.finished_within(id, 20).await;
        assert_eq!(run["status"], "COMPLETED", "run {n} ({id}): {run}");
        let entries = kiln.journal(id).await;
        let attempts = entries
            .iter()
            .filter(|e| e["type"] == "ATTEMPT_STARTED")
            .count();
        let wanted = if n % 5 == 0 { 2 } else { 1 };
        assert_eq!(attempts, wanted, "run {n} ({id}) attempts: {entries:?}");
        for key in journaled_keys(id, &entries) {
            assert!(expected.insert(key.clone()), "key {key} is journaled twice");
        }
    }
    let received = keys.lock().unwrap().clone();
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for key in &received {
        *per_key.entry(key).or_default() += 1;
    }
    let distinct: BTreeSet<String> = per_key.keys().map(|k| k.to_string()).collect();
    assert!(
        distinct == expected,
        "the counter's keys are not the journal's fetch positions: {} received, {} journaled; only received: {:?}; only journaled: {:?}",
        distinct.len(),
        expected.len(),
        distinct.difference(&expected).take(5).collect::<Vec<_>>(),
        expected.difference(&distinct).take(5).collect::<Vec<_>>(),
    );
    println!(
        "{} runs, {kills} kills: {} fetches journaled, {} requests received ({} resent after a crash with the same key)",
        ids.len(),
        expected.len(),
        received.len(),
        received.len() - distinct.len()
    );
}
