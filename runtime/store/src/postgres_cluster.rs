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

use crate::postgres_backend::{OWNER_LOCK, connection_config, migrate};
use crate::{Result, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_postgres::Client;

/// How often a node refreshes its row.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Rows of nodes not seen for this long are removed.
const FORGET_AFTER_SECS: f64 = 600.0;

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
}

/// This process's membership of the cluster: its row, refreshed while the
/// membership lives.
pub struct Membership {
    client: Client,
    /// Set when the membership ends on purpose, so its connection's end
    /// does not stop the process.
    closing: Arc<AtomicBool>,
    node: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn pg_error(what: &str, e: tokio_postgres::Error) -> StoreError {
    let detail = e
        .as_db_error()
        .map(|db| db.message().to_string())
        .unwrap_or_else(|| e.to_string());
    StoreError::Backend(format!("PostgreSQL: {what}: {detail}"))
}

/// The nodes' rows, with whether each leads, from PostgreSQL's lock table.
const NODES: &str = "SELECT n.node, n.url, n.keys, \
     EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
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
            .connect(tokio_postgres::NoTls)
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
                tracing::error!(%error, "the cluster's PostgreSQL connection was lost; Kiln stops");
            } else {
                tracing::error!("the database closed the cluster's connection; Kiln stops");
            }
            std::process::exit(74);
        });
        migrate(&mut client).await?;
        let mut membership = Membership {
            client,
            closing,
            node: node.to_string(),
            heartbeat: tokio::spawn(async {}),
        };
        if let Some(leader) = membership.leader_row().await?
            && leader.2 != keys
        {
            return Err(StoreError::Backend(format!(
                "this node's API key or master key differs from those of node {} ({}), which \
                 leads the cluster: give every node the same KILN_SECRET_KEY and KILN_MASTER_KEY",
                leader.0, leader.1
            )));
        }
        membership
            .client
            .execute(
                "INSERT INTO kiln_nodes (node, url, keys) VALUES ($1, $2, $3)",
                &[&node, &node_url, &keys],
            )
            .await
            .map_err(|e| pg_error("joining the cluster", e))?;
        membership.heartbeat = tokio::spawn(heartbeat(url.to_string(), node.to_string()));
        Ok(membership)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Records that this node leads through the database session
    /// `session`, which holds the owner lock, with `keys` the fingerprint
    /// of the keys it opened the store with.
    pub async fn lead(&self, session: i32, keys: &str) -> Result<()> {
        self.client
            .execute(
                "UPDATE kiln_nodes SET session = $2, keys = $3, seen = now() WHERE node = $1",
                &[&self.node, &session, &keys],
            )
            .await
            .map_err(|e| pg_error("recording the leader", e))?;
        Ok(())
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
            })
            .collect())
    }

    /// The node that leads now, if one does.
    pub async fn leader(&self) -> Result<Option<Node>> {
        Ok(self.nodes().await?.into_iter().find(|n| n.leads))
    }

    /// The leader's id, URL and key fingerprint.
    async fn leader_row(&self) -> Result<Option<(String, String, String)>> {
        let rows = self
            .client
            .query(NODES, &[&OWNER_LOCK])
            .await
            .map_err(|e| pg_error("reading the cluster's nodes", e))?;
        Ok(rows
            .iter()
            .find(|row| row.get::<_, bool>(3))
            .map(|row| (row.get(0), row.get(1), row.get(2))))
    }

    /// Leaves the cluster: the row goes (a node stopping on purpose).
    pub async fn leave(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.heartbeat.abort();
        let _ = self
            .client
            .execute("DELETE FROM kiln_nodes WHERE node = $1", &[&self.node])
            .await;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        self.heartbeat.abort();
    }
}

/// Refreshes `node`'s row every [`HEARTBEAT`] on a connection of its own
/// (a slow query of the status never delays it), and forgets nodes long
/// gone. A heartbeat that fails is logged; the next tries again.
async fn heartbeat(url: String, node: String) {
    let mut client = None;
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if client.is_none() {
            client = match connection_config(&url) {
                Ok(config) => match config.connect(tokio_postgres::NoTls).await {
                    Ok((c, connection)) => {
                        tokio::spawn(connection);
                        Some(c)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the cluster's heartbeat could not connect");
                        None
                    }
                },
                Err(_) => None,
            };
        }
        let Some(c) = &client else { continue };
        let beat = c
            .execute(
                "UPDATE kiln_nodes SET seen = now() WHERE node = $1",
                &[&node],
            )
            .await;
        let forget = c
            .execute(
                "DELETE FROM kiln_nodes WHERE seen < now() - make_interval(secs => $1)",
                &[&FORGET_AFTER_SECS],
            )
            .await;
        if let Err(error) = beat.and(forget) {
            tracing::warn!(%error, "the cluster's heartbeat failed");
            client = None;
        }
    }
}
