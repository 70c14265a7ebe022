//! Several `kiln serve` nodes on one PostgreSQL store.
//!
//! Every node on a PostgreSQL store joins the cluster
//! ([`kiln_store::Membership`]). One node leads: it holds the store's
//! owner lock and decides everything a single server decides — the API,
//! the executor, the timers and the schedules. The others stand by: they
//! answer every API call by forwarding it to the leader ([`forward`]), run
//! the guests of slices the leader places on them ([`worker`], and the
//! leader's side in [`workers`]), and wait for the owner lock. When the
//! leader dies, PostgreSQL ends its session and its lock with it, one
//! standby's wait is granted, and that node opens the store, recovers every
//! unfinished run from its snapshot and journal, and serves the API itself.
//!
//! Because the leader is the store's only writer, everything a single
//! server guarantees holds for the cluster: queue and environment limits,
//! each timer and cron occurrence firing once, idempotency keys. The lock
//! is held by the session the leader commits through, so a node that lost
//! it can no longer commit anything; a worker only ever reaches the store
//! through the leader, over a connection its guests end with.

mod forward;
mod status;
pub(crate) mod warm;
mod wire;
pub(crate) mod worker;
mod workers;

pub(crate) use wire::Room;
pub(crate) use workers::{LocalPlace, Lost, Placement, RemoteAttempt, Workers};

use crate::api::ApiError;
use crate::environments::Hub;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use kiln_store::{Membership, Node};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tower::ServiceExt;

/// How often a node reads who leads.
const WATCH_LEADER: Duration = Duration::from_millis(200);

/// How long forwarding waits for a connection to the leader.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The header a forwarded request carries (the forwarding node's id), so
/// it is never forwarded twice.
pub(crate) const FORWARDED_BY: &str = "x-kiln-forwarded-by";

/// This node's part in the cluster.
pub(crate) struct Cluster {
    membership: Membership,
    /// The API, once this node leads.
    serving: RwLock<Option<Router>>,
    /// The state behind it.
    hub: RwLock<Option<Arc<Hub>>>,
    /// Set once this node holds the store's lock, before it serves.
    taking_over: std::sync::atomic::AtomicBool,
    /// Who led when last read.
    leader: RwLock<Option<Node>>,
    /// The API key, for the cluster's own route.
    admin_key: String,
    /// The fingerprint of this node's keys, as it joined.
    keys: String,
    /// The client forwarded requests go through.
    http: reqwest::Client,
    /// The nodes that run guests for this node once it leads.
    workers: Arc<Workers>,
    /// The guests this node runs for the leader while it stands by.
    guests: Arc<worker::Guests>,
}

impl Cluster {
    /// This node, a member of the cluster, serving nothing yet; watches
    /// who leads.
    pub(crate) fn start(
        membership: Membership,
        admin_key: String,
        keys: String,
        capacity: u32,
    ) -> Arc<Cluster> {
        // Redirects go back to the client as they came (the dashboard's
        // sign-in answers one with its cookie); node-to-node traffic never
        // goes through a proxy; a leader whose host vanished under a long
        // poll or a realtime stream is noticed by keepalives.
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_keepalive(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default();
        let cluster = Arc::new(Cluster {
            membership,
            serving: RwLock::new(None),
            hub: RwLock::new(None),
            taking_over: std::sync::atomic::AtomicBool::new(false),
            leader: RwLock::new(None),
            admin_key,
            keys,
            http,
            workers: Workers::new(capacity),
            guests: Arc::new(worker::Guests::default()),
        });
        let watching = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            loop {
                let Some(cluster) = watching.upgrade() else {
                    return;
                };
                if let Some(leader) = cluster.read_leader().await
                    && leader.node != cluster.node()
                    && leader.keys != cluster.keys
                {
                    // A node that would turn every client away (or fail to
                    // open the store) once it took over: it stops now, with
                    // the reason, rather than stand by.
                    tracing::error!(
                        leader = %leader.node,
                        "this node's API key or master key differs from those of the node that \
                         leads the cluster: give every node the same KILN_SECRET_KEY and \
                         KILN_MASTER_KEY; Kiln stops"
                    );
                    std::process::exit(1);
                }
                drop(cluster);
                tokio::time::sleep(WATCH_LEADER).await;
            }
        });
        cluster
    }

    /// This node's id.
    pub(crate) fn node(&self) -> &str {
        self.membership.node()
    }

    /// Who led when last read.
    pub(crate) fn leader(&self) -> Option<Node> {
        self.leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads who leads now, and remembers it.
    pub(crate) async fn read_leader(&self) -> Option<Node> {
        match self.membership.leader().await {
            Ok(leader) => {
                *self.leader.write().unwrap_or_else(|p| p.into_inner()) = leader.clone();
                leader
            }
            Err(error) => {
                tracing::warn!(%error, "reading who leads the cluster failed");
                None
            }
        }
    }

    /// Who led a moment ago, or, if nobody did, who leads now (a node may
    /// have taken over since): read for at most a second.
    pub(crate) async fn leader_now(&self) -> Option<Node> {
        match self.leader() {
            Some(leader) => Some(leader),
            None => tokio::time::timeout(Duration::from_secs(1), self.read_leader())
                .await
                .ok()
                .flatten(),
        }
    }

    /// Whether this node serves the API itself (it leads).
    pub(crate) fn leads(&self) -> bool {
        self.serving
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Records that this node leads through the store's session `session`,
    /// and serves `api` from now on.
    pub(crate) async fn lead(
        &self,
        session: i32,
        keys: &str,
        hub: Arc<Hub>,
        api: Router,
    ) -> kiln_store::Result<()> {
        // Serving first: once the row says this node leads, the others
        // forward to it, and must find it serving.
        *self.hub.write().unwrap_or_else(|p| p.into_inner()) = Some(hub);
        *self.serving.write().unwrap_or_else(|p| p.into_inner()) = Some(api);
        self.membership.lead(session, keys).await
    }

    /// Marks this node as holding the store's lock: it leads from now on,
    /// even before it serves.
    pub(crate) fn taking_over(&self) {
        self.taking_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this node holds the store's lock (it serves, or is about
    /// to).
    pub(crate) fn holds_lock(&self) -> bool {
        self.taking_over.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Refuses `keys` unless they are those of the node that led last.
    pub(crate) async fn check_keys(&self, keys: &str) -> kiln_store::Result<()> {
        self.membership.check_keys(keys).await
    }

    /// The nodes that run guests for this node once it leads.
    pub(crate) fn workers(&self) -> Arc<Workers> {
        self.workers.clone()
    }

    /// The guests this node runs for the leader while it stands by.
    pub(crate) fn guests(&self) -> Arc<worker::Guests> {
        self.guests.clone()
    }

    /// The server's state, once this node leads.
    pub(crate) fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Leaves the cluster (a node stopping on purpose): its row goes.
    pub(crate) async fn leave(&self) {
        self.membership.leave().await;
    }

    /// The node's router: the cluster's own route, then the API if this
    /// node leads, or forwarding to the node that does.
    pub(crate) fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/cluster", axum::routing::get(status::serve))
            .route("/api/v1/cluster/work", axum::routing::get(status::work))
            .route(worker::ROUTE, axum::routing::get(status::connect_worker))
            .fallback(dispatch)
            .with_state(self.clone())
    }
}

/// Serves a request: with the API when this node leads; otherwise
/// `/healthz` and `/readyz` here, and everything else at the leader.
async fn dispatch(State(cluster): State<Arc<Cluster>>, request: Request) -> Response {
    let api = cluster
        .serving
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(api) = api {
        return match api.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    match request.uri().path() {
        "/healthz" => "ok".into_response(),
        // A standby serves by forwarding: ready while a node leads.
        "/readyz" => match cluster.leader_now().await {
            Some(leader) if leader.node != cluster.node() => "ready".into_response(),
            _ => ApiError::unavailable("not ready: no node leads the cluster right now")
                .into_response(),
        },
        _ => forward::to_leader(&cluster, request).await,
    }
}

/// The fingerprint of a node's API key and master key, which every node of
/// a cluster shares: a node with other keys is refused at start.
pub(crate) fn fingerprint(secret_key: &str, master_key: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"kiln cluster keys\0");
    hash.update(secret_key.as_bytes());
    hash.update(b"\0");
    hash.update(
        master_key
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
            .as_bytes(),
    );
    hex::encode(hash.finalize())
}
