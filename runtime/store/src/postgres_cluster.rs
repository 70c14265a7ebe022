//! The nodes of a Kiln cluster on one PostgreSQL database.
//!
//! Every `kiln serve` on a PostgreSQL store is a node: it keeps a row in
//! `kiln_nodes` (where the others reach it, a fingerprint of its keys, when
//! it was last seen) and refreshes it every second. One node leads: the one
//! whose database session holds the store's owner lock
//! ([`crate::PostgresBackend::owner_session`]). Who leads is read from
//! PostgreSQL's own lock table, so it is never stale: the moment the
//! leader's session ends, no node leads until a standby's wait for the lock
//! is granted.

use crate::postgres_backend::{MIGRATION_LOCK, OWNER_LOCK, connection_config, pg_error};
use crate::{Result, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_postgres::Client;

/// How often a node refreshes its row.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The nodes' table: made by the store's migration 2, or by the first node
/// to join, whichever comes first.
pub(crate) const NODES_TABLE: &str = "CREATE TABLE IF NOT EXISTS kiln_nodes (\
     node text PRIMARY KEY, url text NOT NULL, keys text NOT NULL, session integer, \
     started_at timestamptz NOT NULL DEFAULT now(), seen timestamptz NOT NULL DEFAULT now())";

/// A node that led and was seen this recently is one whose keys a joining
/// node must share (older rows are of a cluster stopped since, perhaps to
/// change its keys). Longer than a vanished host's lock takes to go.
const KEYS_CHECKED_WITHIN_SECS: f64 = 60.0;

/// Rows of nodes not seen for this long are removed.
const FORGET_AFTER_SECS: f64 = 600.0;

/// A leader whose row has not been refreshed for this long (ten
/// heartbeats) has stopped answering: its process paused or stuck, its
/// host cut off. Its session would hold the owner lock until PostgreSQL
/// noticed the connection dead (half a minute for a vanished host, never
/// for a paused process), so a standby ends it.
const LEADER_LEASE: Duration = Duration::from_secs(10);

/// The session that holds the owner lock in this database and the row
/// naming it: the node, its session's process id, when the row was last
/// refreshed (as text, to compare exactly) and how many seconds ago.
///
/// A row left by a node that died names a session that ended; should
/// PostgreSQL give its process id to a new session, the row predates that
/// session's start, and is not taken for it. (`backend_start` is hidden
/// from sessions of other roles unless they may read all statistics; then
/// that check is skipped.)
const LEADER_ROW: &str = "SELECT n.node, l.pid, n.seen::text, \
     extract(epoch FROM clock_timestamp() - n.seen)::float8 \
     FROM pg_locks l JOIN kiln_nodes n ON n.session = l.pid \
     LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted \
     AND (a.backend_start IS NULL OR a.backend_start < n.seen) \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND l.classid = ($1::bigint >> 32)::oid \
     AND l.objid = ($1::bigint & 4294967295)::oid AND l.objsubid = 1 \
     ORDER BY n.seen DESC LIMIT 1";

/// Ends session `$2` if it still holds the owner lock and its row was last
/// refreshed at `$3` still. Ending the session lets the lock go, so the
/// standby waiting longest takes over, and fences the old leader: every
/// write it makes goes through that session, and a node whose store
/// connection is lost stops.
const END_LEADER: &str = "SELECT pg_terminate_backend(l.pid) \
     FROM pg_locks l JOIN kiln_nodes n ON n.session = l.pid \
     WHERE l.pid = $2 AND n.seen::text = $3 AND l.locktype = 'advisory' AND l.granted \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND l.classid = ($1::bigint >> 32)::oid \
     AND l.objid = ($1::bigint & 4294967295)::oid AND l.objsubid = 1";

/// How long one beat's statements may take: a beat that takes longer
/// fails, and the connection is made again.
const BEAT_LIMIT: Duration = Duration::from_secs(2);

/// A node of the cluster, as its row says.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// The node's id (new at each start).
    pub node: String,
    /// The URL the other nodes reach it at.
    pub url: String,
    /// Whether it leads: its session holds the owner lock.
    pub leads: bool,
    /// Seconds since it refreshed its row.
    pub seen_secs_ago: f64,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// The fingerprint of its API and master keys.
    #[serde(skip)]
    pub keys: String,
}

/// This process's membership of the cluster: its row, refreshed while the
/// membership lives.
pub struct Membership {
    client: Client,
    /// Set when the membership ends on purpose, so its connection's end
    /// does not stop the process.
    closing: Arc<AtomicBool>,
    node: String,
    /// What the node's row holds, for the heartbeat to write it again if
    /// it went.
    row: Arc<std::sync::Mutex<Row>>,
    heartbeat: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Tells the heartbeat to stop after the beat it may be making.
    stop: tokio::sync::watch::Sender<bool>,
}

/// A node's row, as it last wrote it.
#[derive(Debug, Clone)]
struct Row {
    url: String,
    keys: String,
    session: Option<i32>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The nodes' rows, with whether each leads, from PostgreSQL's lock table:
/// the owner lock, in this database, held by the session the row names
/// (and written since that session started: a dead node's row naming a
/// process id PostgreSQL gave a new session is not; see [`LEADER_ROW`]).
const NODES: &str = "SELECT n.node, n.url, n.keys, \
     EXISTS (SELECT 1 FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
             AND (a.backend_start IS NULL OR a.backend_start < n.seen) \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND l.pid = n.session AND l.classid = ($1::bigint >> 32)::oid \
             AND l.objid = ($1::bigint & 4294967295)::oid AND l.objsubid = 1), \
     extract(epoch FROM now() - n.seen)::float8, \
     (extract(epoch FROM n.started_at) * 1000)::bigint \
     FROM kiln_nodes n ORDER BY n.started_at, n.node";

impl Membership {
    /// Joins the cluster on the database at `url` as `node`, reached at
    /// `node_url`, with `keys` the fingerprint of its API and master keys.
    /// Refused when the node that leads has other keys: a standby that took
    /// over with them would turn away every client, or fail to open what
    /// the leader sealed. Must be called within a tokio runtime, which then
    /// drives the connection; losing it stops the process (exit 74), as
    /// losing the store's does.
    pub async fn join(url: &str, node: &str, node_url: &str, keys: &str) -> Result<Membership> {
        let config = connection_config(url)?;
        let (mut client, connection) = config
            .connect()
            .await
            .map_err(|e| pg_error("connecting", e))?;
        let closing = Arc::new(AtomicBool::new(false));
        let closed = closing.clone();
        tokio::spawn(async move {
            let ended = connection.await;
            if closed.load(Ordering::SeqCst) {
                return;
            }
            if let Err(error) = ended {
                let error = pg_error("the connection", error);
                tracing::error!(%error, "the cluster's PostgreSQL connection was lost; Kiln stops");
            } else {
                tracing::error!("the database closed the cluster's connection; Kiln stops");
            }
            std::process::exit(74);
        });
        // The nodes' table only: the store's schema is changed by the node
        // that owns the store, never under a running leader.
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error("starting to make kiln_nodes", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| pg_error("locking the migrations", e))?;
        tx.batch_execute(NODES_TABLE)
            .await
            .map_err(|e| pg_error("making kiln_nodes", e))?;
        tx.commit()
            .await
            .map_err(|e| pg_error("making kiln_nodes", e))?;
        let row = Arc::new(std::sync::Mutex::new(Row {
            url: node_url.to_string(),
            keys: keys.to_string(),
            session: None,
        }));
        let mut membership = Membership {
            client,
            closing,
            node: node.to_string(),
            row: row.clone(),
            heartbeat: std::sync::Mutex::new(None),
            stop: tokio::sync::watch::channel(false).0,
        };
        membership.check_keys(keys).await?;
        membership
            .client
            .execute(
                "INSERT INTO kiln_nodes (node, url, keys) VALUES ($1, $2, $3)",
                &[&node, &node_url, &keys],
            )
            .await
            .map_err(|e| pg_error("joining the cluster", e))?;
        let beating = tokio::spawn(heartbeat(
            url.to_string(),
            node.to_string(),
            row,
            membership.stop.subscribe(),
        ));
        membership.heartbeat = std::sync::Mutex::new(Some(beating));
        Ok(membership)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Records that this node leads through the database session
    /// `session`, which holds the owner lock, with `keys` the fingerprint
    /// of the keys it opened the store with. Another row naming the same
    /// session (a node gone before PostgreSQL reused its process id) is
    /// cleared.
    pub async fn lead(&self, session: i32, keys: &str) -> Result<()> {
        self.client
            .execute(
                "UPDATE kiln_nodes SET session = CASE WHEN node = $1 THEN $2::int4 END, \
                 keys = CASE WHEN node = $1 THEN $3 ELSE keys END, \
                 seen = CASE WHEN node = $1 THEN now() ELSE seen END \
                 WHERE node = $1 OR session = $2::int4",
                &[&self.node, &session, &keys],
            )
            .await
            .map_err(|e| pg_error("recording the leader", e))?;
        let mut row = self.row.lock().unwrap_or_else(|p| p.into_inner());
        row.keys = keys.to_string();
        row.session = Some(session);
        Ok(())
    }

    /// Refuses `keys` when they differ from those of a node that led and
    /// was seen in the last seconds: every node of a cluster shares its API
    /// key and master key. A standby that took over with other keys would
    /// turn away every client, or fail to open what the leader sealed.
    pub async fn check_keys(&self, keys: &str) -> Result<()> {
        let row = self
            .client
            .query_opt(
                "SELECT node, url, keys FROM kiln_nodes WHERE session IS NOT NULL \
                 AND node <> $1 AND seen > now() - make_interval(secs => $2) \
                 ORDER BY seen DESC LIMIT 1",
                &[&self.node, &KEYS_CHECKED_WITHIN_SECS],
            )
            .await
            .map_err(|e| pg_error("reading the leader's keys", e))?;
        match row {
            Some(row) if row.get::<_, String>(2) != keys => Err(StoreError::Backend(format!(
                "this node's API key or master key differs from those of node {} ({}), \
                     which leads the cluster: give every node the same KILN_SECRET_KEY and \
                     KILN_MASTER_KEY",
                row.get::<_, String>(0),
                row.get::<_, String>(1)
            ))),
            _ => Ok(()),
        }
    }

    /// Every node, in the order they started, with whether it leads.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        let rows = self
            .client
            .query(NODES, &[&OWNER_LOCK])
            .await
            .map_err(|e| pg_error("reading the cluster's nodes", e))?;
        Ok(rows
            .iter()
            .map(|row| Node {
                node: row.get(0),
                url: row.get(1),
                leads: row.get(3),
                seen_secs_ago: row.get::<_, f64>(4).max(0.0),
                started_at_ms: row.get(5),
                keys: row.get(2),
            })
            .collect())
    }

    /// The node that leads now, if one does.
    pub async fn leader(&self) -> Result<Option<Node>> {
        Ok(self.nodes().await?.into_iter().find(|n| n.leads))
    }

    /// Leaves the cluster: the row goes (a node stopping on purpose).
    pub async fn leave(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // The heartbeat stops after any beat under way, so none lands after
        // the row is deleted and brings it back.
        let _ = self.stop.send(true);
        let beating = self
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut beating) = beating
            && tokio::time::timeout(Duration::from_secs(2), &mut beating)
                .await
                .is_err()
        {
            // A beat stuck on a dying connection: its row is deleted below
            // regardless, and forgotten later if that beat lands after.
            beating.abort();
        }
        let _ = self
            .client
            .execute("DELETE FROM kiln_nodes WHERE node = $1", &[&self.node])
            .await;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        if let Some(beating) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            beating.abort();
        }
    }
}

/// Refreshes `node`'s row every [`HEARTBEAT`] on a connection of its own
/// (a slow query of the status never delays it), writing it again if it
/// went, and forgets nodes long gone. A heartbeat that fails is logged;
/// the next tries again. On a standby, each beat also watches the leader's
/// row ([`Lease`]).
async fn heartbeat(
    url: String,
    node: String,
    row: Arc<std::sync::Mutex<Row>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut client = None;
    let mut lease = Lease::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if client.is_none() {
            client = match connection_config(&url) {
                Ok(config) => match tokio::time::timeout(BEAT_LIMIT * 5, config.connect()).await {
                    Ok(Ok((c, connection))) => {
                        tokio::spawn(connection);
                        // A beat need not wait for the disk (a row lost in
                        // a database crash is written again), and the
                        // database gives up a beat's statement when the
                        // heartbeat does.
                        let setup = c.batch_execute(
                            "SET synchronous_commit = off; SET statement_timeout = 2000; \
                             SET lock_timeout = 2000",
                        );
                        match tokio::time::timeout(BEAT_LIMIT, setup).await {
                            Ok(Ok(())) => Some(c),
                            Ok(Err(error)) => {
                                tracing::warn!(%error, "the cluster's heartbeat could not set up its connection");
                                None
                            }
                            Err(_) => {
                                tracing::warn!(
                                    "the cluster's heartbeat could not set up its connection in time"
                                );
                                None
                            }
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "the cluster's heartbeat could not connect");
                        None
                    }
                    Err(_) => {
                        tracing::warn!("the cluster's heartbeat could not connect in time");
                        None
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "the cluster's heartbeat could not connect");
                    None
                }
            };
        }
        let Some(c) = &client else {
            lease = Lease::default();
            continue;
        };
        let current = row.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let leads = current.session.is_some();
        let beat = tokio::time::timeout(BEAT_LIMIT, beat(c, &node, current)).await;
        match beat {
            Ok(Ok(())) => {}
            failed => {
                match failed {
                    Ok(Err(error)) => tracing::warn!(%error, "the cluster's heartbeat failed"),
                    _ => tracing::warn!("the cluster's heartbeat took over {BEAT_LIMIT:?}"),
                }
                client = None;
                // The watch of the leader needs beats that went through.
                lease = Lease::default();
                continue;
            }
        }
        if !leads {
            lease.watch(c).await;
        }
    }
}

/// One beat: the row refreshed (or written again), nodes long gone
/// forgotten.
async fn beat(client: &Client, node: &str, row: Row) -> Result<()> {
    client
        .execute(
            "INSERT INTO kiln_nodes (node, url, keys, session) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (node) DO UPDATE SET seen = clock_timestamp()",
            &[&node, &row.url, &row.keys, &row.session],
        )
        .await
        .map_err(|e| pg_error("refreshing the node's row", e))?;
    client
        .execute(
            "DELETE FROM kiln_nodes WHERE seen < now() - make_interval(secs => $1)",
            &[&FORGET_AFTER_SECS],
        )
        .await
        .map_err(|e| pg_error("forgetting nodes long gone", e))?;
    Ok(())
}

/// A standby's watch of the leader's row. The leader's session is ended
/// once its row has stayed the same through [`LEADER_LEASE`] of this
/// node's own beats, each of which went through (so a database that
/// stalled everyone, or a standby cut off from it, fences nobody), and is
/// that old by the database's clock too.
#[derive(Default)]
struct Lease {
    /// The leader's node, session and row's time, and when this node first
    /// read them so.
    seen: Option<(String, i32, String, std::time::Instant)>,
}

impl Lease {
    /// Reads the leader's row; ends its session if the lease ran out.
    async fn watch(&mut self, client: &Client) {
        let read =
            tokio::time::timeout(BEAT_LIMIT, client.query_opt(LEADER_ROW, &[&OWNER_LOCK])).await;
        let row = match read {
            Ok(Ok(row)) => row,
            Ok(Err(error)) => {
                tracing::warn!(error = %pg_error("reading the leader's row", error), "watching the leader failed");
                self.seen = None;
                return;
            }
            Err(_) => {
                self.seen = None;
                return;
            }
        };
        let Some(row) = row else {
            self.seen = None;
            return;
        };
        let (node, pid, at, age): (String, i32, String, f64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let since = match &self.seen {
            Some((n, p, a, since)) if *n == node && *p == pid && *a == at => *since,
            _ => {
                self.seen = Some((node, pid, at, std::time::Instant::now()));
                return;
            }
        };
        let lease = LEADER_LEASE.as_secs_f64();
        if since.elapsed() < LEADER_LEASE || age < lease {
            return;
        }
        let ended = tokio::time::timeout(
            BEAT_LIMIT,
            client.query(END_LEADER, &[&OWNER_LOCK, &pid, &at]),
        )
        .await
        .unwrap_or_else(|_| Ok(Vec::new()));
        match ended.map(|rows| rows.first().map(|row| row.get::<_, bool>(0))) {
            Ok(Some(ended)) => tracing::warn!(
                leader = %node,
                ended,
                "the leader has not been seen for {age:.0} s: its database session is ended, \
                 so a standby takes over and it can write no more"
            ),
            // It refreshed its row, or let the lock go, meanwhile.
            Ok(None) => {}
            Err(error) => tracing::warn!(
                leader = %node,
                error = %pg_error("ending the leader's session", error),
                "the leader has not been seen for {age:.0} s, and its database session could \
                 not be ended (the nodes' role must be the leader's, or a member of \
                 pg_signal_backend)"
            ),
        }
        self.seen = None;
    }
}
