//! The membership of a cluster of nodes on one PostgreSQL store: who leads
//! is whoever's session holds the store's owner lock, read from
//! PostgreSQL's own lock table.

#[path = "../../../tests/support/postgres.rs"]
mod postgres;

use kiln_store::{Membership, OwnerWait, PostgresBackend};

async fn open(url: &str, wait: OwnerWait) -> Option<PostgresBackend> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || PostgresBackend::open_with(&url, wait, None))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_the_owner_locks_holder_and_keys_must_match() {
    let server = postgres::Postgres::start();
    let url = server.database("kiln");
    let a = Membership::join(&url, "a", "http://a", "keys")
        .await
        .unwrap();
    let b = Membership::join(&url, "b", "http://b", "keys")
        .await
        .unwrap();
    assert_eq!(b.leader().await.unwrap(), None, "nobody owns the store yet");

    let owner = open(&url, OwnerWait::Never)
        .await
        .expect("the store is free");
    a.lead(owner.owner_session(), "keys").await.unwrap();
    let leader = b.leader().await.unwrap().expect("a leads");
    assert_eq!(
        (leader.node.as_str(), leader.url.as_str()),
        ("a", "http://a")
    );
    assert!(open(&url, OwnerWait::Never).await.is_none(), "one owner");

    // A node with other keys is refused while a leader has these.
    let refused = Membership::join(&url, "c", "http://c", "other")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("differs from those of node a"),
        "{refused}"
    );

    // A standby's wait is granted once the owner lets go, and from then
    // on nobody leads until it says it does.
    let waiting = tokio::spawn({
        let url = url.clone();
        async move { open(&url, OwnerWait::UntilFree).await }
    });
    drop(owner);
    let taken = waiting.await.unwrap().expect("granted once free");
    assert_eq!(b.leader().await.unwrap(), None, "a's lock went with it");
    b.lead(taken.owner_session(), "keys").await.unwrap();
    assert_eq!(a.leader().await.unwrap().map(|n| n.node), Some("b".into()));

    // A node that leaves takes its row with it.
    a.leave().await;
    let nodes: Vec<String> = b
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(nodes, ["b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_is_told_when_the_owner_changes_a_deployment() {
    use kiln_store::{Backend, Op};
    use std::time::Duration;
    let server = postgres::Postgres::start();
    let url = server.database("kiln");
    let owner = open(&url, OwnerWait::Never)
        .await
        .expect("the store is free");
    let reader = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || PostgresBackend::open_read_only(&url, None))
            .await
            .unwrap()
            .unwrap()
    };
    let mut changed = reader.deployments_changed().expect("a reader listens");
    assert!(owner.deployments_changed().is_none());
    // A deployment in another environment's keyspace: once told, the
    // reader finds it in the database.
    let key = b"env/proj_x/prod/deploy/\0\0\0\0\0\0\0\x01".to_vec();
    owner
        .commit(vec![Op::Put(key.clone(), b"{}".to_vec())])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), changed.changed())
        .await
        .expect("told within 10 s")
        .expect("still listening");
    assert_eq!(reader.get(&key).unwrap(), Some(b"{}".to_vec()));
    // The next deployment is told too (which keys are a deployment's is
    // the backend's unit test).
    owner
        .commit(vec![Op::Put(b"run/x".to_vec(), b"{}".to_vec())])
        .await
        .unwrap();
    owner
        .commit(vec![Op::Put(
            b"deploy/\0\0\0\0\0\0\0\x02".to_vec(),
            b"{}".to_vec(),
        )])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), changed.changed())
        .await
        .expect("told within 10 s")
        .expect("still listening");
    assert!(*changed.borrow() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_row_naming_a_reused_session_is_neither_leader_nor_ended() {
    use std::time::{Duration, Instant};
    let server = postgres::Postgres::start();
    let url = server.database("kiln");
    let standby = Membership::join(&url, "standby", "http://standby", "keys")
        .await
        .unwrap();
    let owner = open(&url, OwnerWait::Never)
        .await
        .expect("the store is free");
    let session = owner.owner_session();
    // A node that died a minute ago named a session whose process id
    // PostgreSQL has since given to the owner's: its row is past the
    // leader's lease, older than the session, and not yet forgotten.
    server.query(
        &url,
        &format!(
            "INSERT INTO kiln_nodes (node, url, keys, session, started_at, seen) \
             VALUES ('ghost', 'http://ghost', 'keys', {session}, \
             now() - interval '2 minutes', now() - interval '1 minute')"
        ),
    );
    assert_eq!(
        standby.leader().await.unwrap(),
        None,
        "the ghost does not lead"
    );

    // The standby's heartbeat, which ends a leader's session once its row
    // stayed the same through ten seconds of beats, beats thirteen times
    // more: the owner's session is still there.
    let seen = |server: &postgres::Postgres| {
        server.query(&url, "SELECT seen FROM kiln_nodes WHERE node = 'standby'")
    };
    let mut beats = vec![seen(&server)];
    let deadline = Instant::now() + Duration::from_secs(90);
    while beats.len() < 14 {
        assert!(Instant::now() < deadline, "the standby's heartbeat stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = seen(&server);
        if beats.last() != Some(&now) {
            beats.push(now);
        }
    }
    let alive = server.query(
        &url,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {session}"),
    );
    assert_eq!(alive, "1", "the owner's session was ended");
    let ghost = server.query(&url, "SELECT count(*) FROM kiln_nodes WHERE node = 'ghost'");
    assert_eq!(ghost, "1", "the ghost's row was there all along");
    drop(owner);
}
