//! Three `kiln serve` nodes on one PostgreSQL store: any node answers any
//! call, one leads, and every node runs guests; when a node that runs
//! guests is killed (`SIGKILL`) its runs complete on the others, and when
//! the leader is killed a standby takes over, its runs complete once from
//! their snapshots and journals, a queue's limit holds across the nodes,
//! and each cron occurrence fires once.

use crate::harness::{Kiln, data_dir, host_calls};
use crate::pg_server::Postgres;
use crate::schedules::{create_ok, fired_runs, ms, wait_for_runs};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Every node's master key: the nodes of a cluster share their keys.
pub(crate) const MASTER_KEY: &str =
    "5e1f0c4a9b2d7e3f8a6c1b0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f";

/// Three nodes on `url`, each with its own data directory (and compile
/// cache, as on machines of their own), and `extra` arguments; the first
/// to start leads.
pub(crate) struct Nodes {
    nodes: Vec<Option<Kiln>>,
    dirs: Vec<tempfile::TempDir>,
    args: Vec<String>,
}

impl Nodes {
    pub(crate) fn start(url: &str, extra: &[&str]) -> Nodes {
        let mut args = vec!["--store".to_string(), url.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut nodes = Nodes {
            nodes: Vec::new(),
            dirs: Vec::new(),
            args,
        };
        for _ in 0..3 {
            let dir = data_dir();
            nodes.nodes.push(Some(nodes.spawn(&dir)));
            nodes.dirs.push(dir);
        }
        nodes
    }

    fn spawn(&self, dir: &tempfile::TempDir) -> Kiln {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Kiln::start_with_env(dir.path(), &args, &[("KILN_MASTER_KEY", MASTER_KEY)])
    }

    /// Starts node `i` again (after a kill), on its data directory; it
    /// joins as a standby if another node leads.
    pub(crate) fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} still runs");
        self.nodes[i] = Some(self.spawn(&self.dirs[i]));
    }

    /// Waits (at most 60 s) until node `i`'s compile cache holds a
    /// compiled bundle.
    async fn compiled(&self, i: usize) {
        self.compiled_within(i, 1, Duration::from_secs(60)).await
    }

    /// Waits (at most `within`) until node `i`'s compile cache holds
    /// `count` compiled bundles.
    async fn compiled_within(&self, i: usize, count: usize, within: Duration) {
        compiled_within(self.dirs[i].path(), count, within).await
    }

    pub(crate) fn node(&self, i: usize) -> &Kiln {
        self.nodes[i].as_ref().expect("a live node")
    }

    /// The live nodes.
    fn live(&self) -> Vec<&Kiln> {
        self.nodes.iter().flatten().collect()
    }

    /// A live node other than `leader`.
    fn standby(&self, leader: usize) -> usize {
        (0..self.nodes.len())
            .find(|&i| i != leader && self.nodes[i].is_some())
            .expect("a live standby")
    }

    /// Whether every live node's view of the cluster has the node at
    /// `url` leading (a new leader serves a moment before its row says
    /// it leads).
    async fn all_name(&self, url: &str) -> bool {
        for node in self.live() {
            let (status, view) = cluster(node).await;
            let named = view["nodes"].as_array().is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n["leads"] == true && n["url"] == json!(url))
            });
            if status != 200 || !named {
                return false;
            }
        }
        true
    }

    /// SIGKILLs node `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.kill();
        }
    }

    /// Waits (at most 60 s) until a live node says it leads and every
    /// other live node names it as the leader; its index.
    pub(crate) async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                let Some(node) = node else { continue };
                let (status, body) = cluster(node).await;
                if status == 200 && body["leads"] == true && self.all_name(&node.url).await {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no node took the lead in 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits (at most `within`) until the compile cache of the node whose
/// data directory is `dir` holds `count` compiled bundles.
pub(crate) async fn compiled_within(dir: &std::path::Path, count: usize, within: Duration) {
    let cache = dir.join("compiled");
    let deadline = Instant::now() + within;
    loop {
        let artifacts = std::fs::read_dir(&cache)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                    .count()
            })
            .unwrap_or(0);
        if artifacts >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not compile {count} bundles within {within:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cluster(node: &Kiln) -> (u16, Value) {
    node.request(Method::GET, "/api/v1/cluster", None).await
}

/// Each node's share of the work, as the leader tells it through `node`:
/// `(node, running, slices)`, the leader's first.
async fn work(node: &Kiln) -> Vec<(String, u64, u64)> {
    let (status, body) = node
        .request(Method::GET, "/api/v1/cluster/work", None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["work"]
        .as_array()
        .expect("work")
        .iter()
        .map(|w| {
            (
                w["node"].as_str().unwrap_or_default().to_string(),
                w["running"].as_u64().unwrap_or(0),
                w["slices"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The body of the leader's `/api/v1/cluster/work`, through `node`.
async fn work_body(node: &Kiln) -> Value {
    let (status, body) = node
        .request(Method::GET, "/api/v1/cluster/work", None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits (at most 30 s) until a node other than the leader (`leader`)
/// runs a guest; its index.
async fn busy_worker(nodes: &Nodes, leader: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shares = work(nodes.node(leader)).await;
        let running = shares.iter().skip(1).find(|(_, r, _)| *r > 0);
        if let Some((node, _, _)) = running {
            let (_, view) = cluster(nodes.node(leader)).await;
            let url = view["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .find(|n| n["node"] == json!(node))
                .and_then(|n| n["url"].as_str())
                .expect("the worker's url")
                .to_string();
            return (0..nodes.nodes.len())
                .find(|&i| nodes.nodes[i].as_ref().is_some_and(|k| k.url == url))
                .expect("the worker is a node of the test");
        }
        assert!(
            Instant::now() < deadline,
            "no worker ran a guest: {shares:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Triggers `count` `draw-spin` runs spinning `spin_ms` between their two
/// draws, through every live node in turn.
async fn spinners(nodes: &Nodes, count: usize, spin_ms: u64) -> Vec<String> {
    let live = nodes.live();
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(
            live[i % live.len()]
                .trigger_ok("draw-spin", json!({ "spin_ms": spin_ms }))
                .await,
        );
    }
    ids
}

/// Waits for each run in `ids` to complete, through `node`, with its
/// single attempt's two draws journaled once each.
async fn drew_twice(node: &Kiln, ids: &[String]) {
    for id in ids {
        let run = node.finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        assert_eq!(run["attemptCount"], 1, "{run}");
        let entries = node.journal(id).await;
        assert_eq!(
            host_calls(&entries, "random-bytes"),
            2,
            "each draw journaled once: {entries:?}"
        );
        assert_eq!(count(&entries, "ATTEMPT_ENDED"), 1, "{entries:?}");
    }
}

/// Waits (at most 60 s) until `count` nodes run guests for the leader,
/// itself included.
async fn workers(node: &Kiln, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shares = work(node).await;
        if shares.len() == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} nodes did not run guests within 60 s: {shares:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(entries: &[Value], kind: &str) -> usize {
    entries.iter().filter(|e| e["type"] == kind).count()
}

#[tokio::test]
async fn any_node_serves_and_a_killed_leaders_runs_complete_once_on_another() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    // Waits of 100 ms or less stay warm; countdown's are longer, so they
    // snapshot the guest to PostgreSQL.
    let mut nodes = Nodes::start(&url, &["--warm-wait-ms", "100"]);
    assert_eq!(nodes.leader().await, 0, "the first node to start leads");

    // Any node tells the cluster's make-up; the standbys know the leader.
    let (status, view) = cluster(nodes.node(2)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["leads"], false, "{view}");
    let members = view["nodes"].as_array().expect("nodes").clone();
    assert_eq!(members.len(), 3, "{view}");
    let leaders: Vec<&Value> = members.iter().filter(|n| n["leads"] == true).collect();
    assert_eq!(leaders.len(), 1, "{view}");
    assert_eq!(leaders[0]["url"], json!(nodes.node(0).url), "{view}");
    let (status, _) = nodes
        .node(1)
        .request_as("tr_dev_sk_wrong", Method::GET, "/api/v1/cluster", None)
        .await;
    assert_eq!(status, 401);
    let out = nodes.node(2).cli(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("leader") && l.contains(&nodes.node(0).url)),
        "{text}"
    );
    assert_eq!(text.matches("standby").count(), 2, "{text}");

    // A deploy through a standby reaches the leader; runs triggered on
    // every node run there. The standbys compile the deployed bundle ahead
    // of a takeover, told of it by the leader: the second deployment is
    // compiled well before a standby's look every 30 s would find it.
    nodes.node(1).deploy(kiln_fixtures::HELLO_WORLD).await;
    nodes.compiled(1).await;
    nodes.compiled(2).await;
    nodes.node(1).deploy(kiln_fixtures::COUNTDOWN).await;
    nodes.compiled_within(1, 2, Duration::from_secs(15)).await;
    nodes.compiled_within(2, 2, Duration::from_secs(15)).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let node = nodes.node(i % 3);
        ids.push(
            node.trigger_ok("countdown", json!({"steps": 3, "wait_ms": 400}))
                .await,
        );
    }
    // Killed once the first run has suspended to a snapshot: the others
    // are queued, executing, waiting or resumed.
    nodes
        .node(2)
        .until_journal(&ids[0], |e| count(e, "SUSPENDED") >= 1)
        .await;
    let killed = Instant::now();
    nodes.kill(0);
    let leader = nodes.leader().await;
    // A killed process's sessions end at once; within the keepalives'
    // half minute is the bound for a host that vanished.
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(30), "took over after {took:?}");
    for node in nodes.live() {
        let (status, view) = cluster(node).await;
        assert_eq!(status, 200, "{view}");
        let leading: Vec<&Value> = view["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["leads"] == true)
            .collect();
        assert_eq!(leading.len(), 1, "{view}");
        assert_eq!(leading[0]["url"], json!(nodes.node(leader).url), "{view}");
    }

    // Every run completes once, read through the node that does not lead:
    // the first through its realtime events, streamed through the standby.
    let standby = nodes.node(nodes.standby(leader));
    let ready = reqwest::get(format!("{}/readyz", standby.url))
        .await
        .expect("the standby answers");
    assert_eq!(
        ready.status().as_u16(),
        200,
        "a standby is ready while a node leads"
    );
    let last = standby.until_status(&ids[0], "COMPLETED").await;
    assert_eq!(last["id"], json!(ids[0]), "{last}");
    for id in &ids {
        let run = standby.finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        assert_eq!(run["attemptCount"], 1, "{run}");
        assert_eq!(run["output"]["draws"].as_array().map(Vec::len), Some(3));
        let entries = standby.journal(id).await;
        let draws = host_calls(&entries, "random-bytes");
        assert_eq!(draws, 3, "each draw journaled once: {entries:?}");
        assert_eq!(count(&entries, "ATTEMPT_ENDED"), 1, "{id}");
    }
    // New runs go on, through either node.
    let id = standby
        .trigger_ok("countdown", json!({"steps": 1, "wait_ms": 200}))
        .await;
    let run = nodes.node(leader).finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
}

#[tokio::test]
async fn every_node_runs_guests_and_a_killed_workers_runs_finish_on_the_others() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    // Waits over 100 ms snapshot the guest, wherever it runs.
    let mut nodes = Nodes::start(&url, &["--warm-wait-ms", "100"]);
    assert_eq!(nodes.leader().await, 0);
    workers(nodes.node(1), 3).await;
    nodes.node(2).deploy(kiln_fixtures::PROBE).await;

    // Guests on every node make every kind of host call the leader
    // answers: child runs and waits on them, metadata on the parent and
    // the root, tags, realtime streams, logs, and waits long enough to
    // suspend to a snapshot and restore on whichever node runs the next
    // slice.
    let mut parents = Vec::new();
    let mut streams = Vec::new();
    let mut chatty = Vec::new();
    for i in 0..3 {
        let node = nodes.node(i);
        parents.push(node.trigger_ok("annotate-parent", json!({})).await);
        let words = json!({"words": ["a", "b", "c"], "gap_ms": 150});
        streams.push(node.trigger_ok("stream-words", words).await);
        let lines = json!({"lines": 6, "bytes": 16, "wait_ms": 300});
        chatty.push(node.trigger_ok("chatty", lines).await);
    }
    for id in &parents {
        let run = nodes.node(1).finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        let metadata = &run["output"];
        assert_eq!(metadata["children"], 2, "{run}");
        assert_eq!(metadata["seen"].as_array().map(Vec::len), Some(2), "{run}");
    }
    for id in &streams {
        let run = nodes.node(2).finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        let entries = nodes.node(2).journal(id).await;
        assert_eq!(host_calls(&entries, "stream-append"), 3, "{entries:?}");
        assert_eq!(count(&entries, "SUSPENDED"), 3, "{entries:?}");
    }
    for id in &chatty {
        let run = nodes.node(0).finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        // Each line once, from both sides of the suspension.
        let logs = run["attempts"][0]["logs"].as_array().expect("logs").clone();
        assert_eq!(logs.len(), 6, "{logs:?}");
    }
    let shares = work(nodes.node(2)).await;
    assert_eq!(shares.len(), 3, "{shares:?}");
    for (node, _, slices) in &shares {
        assert!(*slices >= 3, "{node} ran {slices} slices: {shares:?}");
    }
    // `kiln cluster status` shows them, through a node that does not lead.
    let out = nodes.node(1).cli(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for (node, _, slices) in &shares {
        assert!(
            text.lines()
                .any(|l| l.starts_with(node.as_str()) && l.ends_with(&format!(" {slices}"))),
            "{node}: {text}"
        );
    }

    // Guests spinning for 5 s between two draws, placed on every node; a
    // node that runs some for the leader is killed once each has drawn
    // once.
    let ids = spinners(&nodes, 6, 5000).await;
    for id in &ids {
        nodes
            .node(0)
            .until_journal(id, |e| host_calls(e, "random-bytes") >= 1)
            .await;
    }
    let victim = busy_worker(&nodes, 0).await;
    nodes.kill(victim);
    drew_twice(nodes.node(0), &ids).await;
    let body = work_body(nodes.node(0)).await;
    assert!(body["lost"].as_u64() >= Some(1), "{body}");
    let shares = work(nodes.node(0)).await;
    assert_eq!(shares.len(), 2, "the killed node left: {shares:?}");
}

#[tokio::test]
async fn a_draining_worker_finishes_its_guests_and_a_paused_one_is_given_up() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let mut nodes = Nodes::start(&url, &[]);
    assert_eq!(nodes.leader().await, 0);
    workers(nodes.node(0), 3).await;
    nodes.node(1).deploy(kiln_fixtures::PROBE).await;

    // SIGTERM to a node running guests: it takes no more, finishes those
    // it runs, and leaves; none of them is lost.
    let ids = spinners(&nodes, 4, 1500).await;
    let draining = busy_worker(&nodes, 0).await;
    let mut node = nodes.nodes[draining].take().expect("the worker");
    node.terminate();
    let status = node
        .exited_within(Duration::from_secs(30))
        .expect("a draining worker stops within its drain timeout");
    assert!(status.success(), "{status:?}");
    drew_twice(nodes.node(0), &ids).await;
    let body = work_body(nodes.node(0)).await;
    assert_eq!(body["lost"], 0, "a draining worker loses nothing: {body}");
    assert_eq!(body["work"].as_array().map(Vec::len), Some(2), "{body}");

    // SIGSTOP to the other: its connection goes silent, and the leader
    // starts its guests again on the nodes left, from their journals.
    let ids = spinners(&nodes, 4, 1500).await;
    let paused = busy_worker(&nodes, 0).await;
    nodes.node(paused).signal("STOP");
    drew_twice(nodes.node(0), &ids).await;
    let body = work_body(nodes.node(0)).await;
    assert!(body["lost"].as_u64() >= Some(1), "{body}");
    // Continued, it finds its connection gone, drops what it ran, and
    // offers to run guests again.
    nodes.node(paused).signal("CONT");
    workers(nodes.node(0), 2).await;
    let ids = spinners(&nodes, 4, 10).await;
    drew_twice(nodes.node(0), &ids).await;
}

#[tokio::test]
async fn budgets_and_limits_end_hostile_guests_on_every_node_as_on_one_server() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let limits = "journal-entries=300,children=3,tokens=2";
    let nodes = Nodes::start(&url, &["--limit", limits]);
    assert_eq!(nodes.leader().await, 0);
    workers(nodes.node(0), 3).await;
    nodes.node(0).deploy(kiln_fixtures::PROBE).await;
    // Each kind three times, placed in turn on the three nodes: a loop of
    // clock reads (journaled by the leader as they come), and too many
    // children and tokens (made by the leader, refused past the limit).
    let hostile = |spend: &str, count: u64| json!({"spend": spend, "count": count});
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push((
            "clock",
            nodes
                .node(1)
                .trigger_ok("hostile", hostile("clock", 1_000_000))
                .await,
        ));
        ids.push((
            "children",
            nodes
                .node(2)
                .trigger_ok("hostile", hostile("children", 10))
                .await,
        ));
        ids.push((
            "tokens",
            nodes
                .node(0)
                .trigger_ok("hostile", hostile("tokens", 10))
                .await,
        ));
    }
    for (kind, id) in &ids {
        let run = nodes.node(2).finished(id).await;
        match *kind {
            "clock" => {
                assert_eq!(run["status"], "FAILED", "{run}");
                assert_eq!(run["error"]["name"], "LimitExceeded", "{run}");
                let message = run["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("limit of 300 journal entries"), "{run}");
                let journal = nodes.node(2).journal(id).await;
                assert!(journal.len() <= 302, "{} entries", journal.len());
            }
            _ => {
                assert_eq!(run["status"], "COMPLETED", "{run}");
                let made = if *kind == "children" { 3 } else { 2 };
                assert_eq!(run["output"]["made"], made, "{run}");
            }
        }
    }
    // Memory past the machine's cap ends the run, wherever it ran, and
    // the node goes on running guests.
    nodes.node(0).deploy(kiln_fixtures::LIMITS).await;
    let mut bombs = Vec::new();
    for i in 0..3 {
        let node = nodes.node(i);
        bombs.push(node.trigger_ok("allocate", json!({"mib": 1024})).await);
    }
    for id in &bombs {
        let run = nodes.node(0).finished(id).await;
        assert_eq!(run["status"], "CRASHED", "{run}");
        assert_eq!(run["error"]["name"], "OutOfMemory", "{run}");
    }
    for i in 0..3 {
        let id = nodes
            .node(i)
            .trigger_ok("allocate", json!({"mib": 16}))
            .await;
        assert_eq!(nodes.node(0).finished(&id).await["status"], "COMPLETED");
    }
    let body = work_body(nodes.node(0)).await;
    assert_eq!(body["lost"], 0, "{body}");
    // Each node ran some of them (the children are placed too, so the
    // turns do not keep to the order of the triggers).
    for share in body["work"].as_array().expect("work") {
        assert!(share["slices"].as_u64() >= Some(2), "{body}");
    }
}

#[tokio::test]
async fn a_queue_limit_of_two_holds_across_three_nodes_and_large_bodies_stream_through() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let nodes = Nodes::start(&url, &[]);
    let leader = nodes.leader().await;
    workers(nodes.node(leader), 3).await;
    nodes.node(2).deploy(kiln_fixtures::PROBE).await;
    // `own-limit` runs on its task's queue, limited to 2, and holds its
    // slot through its 300 ms wait (shorter than the default warm wait);
    // triggered on all three nodes, its guests placed on all three.
    let mut ids = Vec::new();
    for i in 0..9 {
        ids.push(
            nodes
                .node(i % 3)
                .trigger_ok("own-limit", json!({"ms": 300}))
                .await,
        );
    }
    let mut spans = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let run = nodes.node((i + 1) % 3).finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        let out = &run["output"];
        spans.push((
            out["startedMs"].as_u64().expect("startedMs"),
            out["endedMs"].as_u64().expect("endedMs"),
        ));
    }
    spans.sort();
    // (Only the leader starts runs: this holds by construction, and would
    // fail if two nodes ever ran one queue.)
    for (start, _) in &spans {
        let at_once = spans
            .iter()
            .filter(|(s, e)| s <= start && start < e)
            .count();
        assert!(at_once <= 2, "{at_once} at once: {spans:?}");
    }
    let shares = work(nodes.node(leader)).await;
    assert_eq!(shares.len(), 3, "{shares:?}");
    for (node, _, slices) in &shares {
        assert!(*slices >= 1, "{node} ran no guest: {shares:?}");
    }

    // A trigger of 2 MiB, over what a standby reads before forwarding,
    // streams through it to the leader.
    let payload = json!({ "blob": "x".repeat(2 << 20) });
    let id = nodes.node(1).trigger_ok("echo", payload.clone()).await;
    let run = nodes.node(2).finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{}", run["error"]);
    assert_eq!(run["output"]["payload"], payload);
}

#[tokio::test]
async fn each_cron_occurrence_fires_once_while_the_lead_moves() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    // A minute of schedule time passes in 0.5 s, on every node's clock.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis();
    let clock = format!("{now_ms}:120");
    let mut nodes = Nodes::start(&url, &["--schedule-clock", &clock]);
    assert_eq!(nodes.leader().await, 0);
    nodes.node(1).deploy(kiln_fixtures::DIGEST).await;
    let schedule = create_ok(
        nodes.node(2),
        json!({"task": "tenant-digest", "cron": "* * * * *", "externalId": "acme", "deduplicationKey": "every-minute"}),
    )
    .await;
    let id = schedule["id"].as_str().expect("an id").to_string();

    // The leader is killed twice, each time after a few occurrences.
    let mut fired = 0;
    for _ in 0..2 {
        let leader = nodes.leader().await;
        let other = nodes.standby(leader);
        fired = wait_for_runs(nodes.node(other), &id, fired + 3).await.len();
        nodes.kill(leader);
    }
    let last = nodes.leader().await;
    wait_for_runs(nodes.node(last), &id, fired + 3).await;
    let runs = fired_runs(nodes.node(last), &id).await;

    let mut seen = BTreeSet::new();
    for (i, run) in runs.iter().enumerate() {
        let payload = &run["payload"];
        let at = ms(&payload["timestamp"]);
        assert!(
            seen.insert(at),
            "occurrence {} fired twice",
            payload["timestamp"]
        );
        if i > 0 {
            let previous = ms(&runs[i - 1]["payload"]["timestamp"]);
            assert_eq!(ms(&payload["lastTimestamp"]), previous, "{payload}");
        }
        let done = nodes
            .node(last)
            .finished(run["id"].as_str().expect("an id"))
            .await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
    }
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_finishes_its_slices_and_hands_over() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let mut nodes = Nodes::start(&url, &[]);
    assert_eq!(nodes.leader().await, 0);
    nodes.node(1).deploy(kiln_fixtures::PROBE).await;
    // A 1.5 s wait, kept warm in the leader's memory (the default warm wait
    // is 5 s): a crash would run the attempt again on the next leader.
    let id = nodes
        .node(1)
        .trigger_ok("own-limit", json!({"ms": 1500}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.node(1).run(&id).await["status"] != "EXECUTING" {
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut leader = nodes.nodes[0].take().expect("the leader");
    leader.terminate();
    // While it drains, it says it is not ready, and still takes triggers,
    // which it does not start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(format!("{}/readyz", leader.url))
            .await
            .expect("the draining leader answers");
        if ready.status().as_u16() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "the leader never began to drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = leader.trigger_ok("own-limit", json!({"ms": 10})).await;
    let status = leader
        .exited_within(Duration::from_secs(30))
        .expect("the leader stops within its drain timeout");
    assert!(status.success(), "{status:?}");
    let stopped_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64;

    let next = nodes.leader().await;
    let run = nodes.node(next).finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");
    // The slice finished on the node that drained, before it stopped: the
    // attempt was never run again.
    let ended = run["output"]["endedMs"].as_u64().expect("endedMs");
    assert!(ended <= stopped_ms, "{run}");
    let entries = nodes.node(next).journal(&id).await;
    assert_eq!(count(&entries, "ATTEMPT_STARTED"), 1, "{entries:?}");
    // The run triggered during the drain started on the next leader.
    let later = nodes.node(next).finished(&queued).await;
    assert_eq!(later["status"], "COMPLETED", "{later}");
    let started = later["output"]["startedMs"].as_u64().expect("startedMs");
    assert!(started > stopped_ms, "{later}");
    // It left the cluster.
    let (_, view) = cluster(nodes.node(next)).await;
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(2), "{view}");

    // A standby stopped the same way just leaves.
    let standby = nodes.standby(next);
    let mut standby = nodes.nodes[standby].take().expect("a standby");
    standby.terminate();
    let status = standby
        .exited_within(Duration::from_secs(30))
        .expect("a standby stops at once");
    assert!(status.success(), "{status:?}");
    let (_, view) = cluster(nodes.node(next)).await;
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(1), "{view}");
}

#[tokio::test]
async fn a_leader_that_stops_answering_is_fenced_and_a_standby_takes_over() {
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let mut nodes = Nodes::start(&url, &[]);
    assert_eq!(nodes.leader().await, 0);
    nodes.node(1).deploy(kiln_fixtures::COUNTDOWN).await;
    nodes.compiled(1).await;
    nodes.compiled(2).await;
    // Waits of 400 ms stay warm in the leader's memory.
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            nodes
                .node(1)
                .trigger_ok("countdown", json!({"steps": 3, "wait_ms": 400}))
                .await,
        );
    }
    nodes
        .node(1)
        .until_journal(&ids[0], |e| count(e, "HOST_CALL") >= 1)
        .await;

    // Paused, the leader's process keeps its connections open: PostgreSQL
    // would let it hold the lock for ever. Its row goes stale, and a
    // standby ends its session.
    // How old the leader's row is as it is paused (it may be refreshed
    // once more before the signal lands, which only makes it younger).
    let (_, view) = cluster(nodes.node(1)).await;
    let row_age = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["leads"] == true)
        .and_then(|n| n["seenSecsAgo"].as_f64())
        .expect("the leader's row");
    let paused = Instant::now();
    nodes.node(0).signal("STOP");
    // Reads sent through the standbys meanwhile reach the paused leader
    // and get no answer from it; once another node leads they are
    // answered there (or, on the node taking over, told to retry).
    let reads: Vec<_> = [1, 2]
        .into_iter()
        .map(|i| {
            let url = format!("{}/api/v3/runs/{}", nodes.node(i).url, ids[0]);
            tokio::spawn(async move {
                let answer = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(crate::harness::KEY)
                    .send()
                    .await
                    .expect("the standby answers");
                answer.status().as_u16()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = 'found: loop {
        for i in [1, 2] {
            let (status, view) = cluster(nodes.node(i)).await;
            if status == 200 && view["leads"] == true {
                break 'found i;
            }
        }
        assert!(Instant::now() < deadline, "no standby took over in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = paused.elapsed();
    // Not before the leader's row was ten seconds old (a little slack for
    // the two clocks read).
    assert!(
        took.as_secs_f64() + row_age >= 9.5,
        "took over after {took:?}, with the leader's row {row_age} s old at the pause"
    );
    assert!(took < Duration::from_secs(30), "took over after {took:?}");
    let mut answered = Vec::new();
    for read in reads {
        let status = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a read forwarded to the paused leader is answered once another leads")
            .expect("the read's task");
        answered.push(status);
    }
    let standby = if leader == 1 { 2 } else { 1 };
    assert_eq!(answered[standby - 1], 200, "{answered:?}");
    assert!([200, 503].contains(&answered[leader - 1]), "{answered:?}");

    // The paused leader's runs complete on the new one, each effect once.
    let node = nodes.node(leader);
    for id in &ids {
        let run = node.finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        let entries = node.journal(id).await;
        let draws = host_calls(&entries, "random-bytes");
        assert_eq!(draws, 3, "each draw journaled once: {entries:?}");
    }
    let id = node
        .trigger_ok("countdown", json!({"steps": 1, "wait_ms": 10}))
        .await;
    assert_eq!(node.finished(&id).await["status"], "COMPLETED");

    // Let go, the old leader finds its session ended and stops, as a node
    // that lost its store's connection does, instead of writing on.
    let mut old = nodes.nodes[0].take().expect("the old leader");
    old.signal("CONT");
    let status = old
        .exited_within(Duration::from_secs(30))
        .expect("the fenced leader stops");
    assert_eq!(status.code(), Some(74), "{status:?}");
    let (_, view) = cluster(nodes.node(leader)).await;
    let leading = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["leads"] == true)
        .count();
    assert_eq!(leading, 1, "{view}");
}

#[tokio::test]
async fn a_server_on_sled_says_it_is_no_cluster() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    let (status, body) = cluster(&kiln).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("its store is sled")),
        "{body}"
    );
    let out = kiln.cli(&["cluster", "status"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("its store is sled"), "{said}");
}
