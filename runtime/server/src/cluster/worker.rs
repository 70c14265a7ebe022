//! A standby's side of sharing work: it connects to the leader and runs the
//! guests the leader places on it (see [`super::workers`]).
//!
//! The worker holds nothing durable. Each guest's host calls go to the
//! leader: those answered here (`now-ms`, `random-bytes`, clock reads) are
//! sent to be journaled, in order; those the leader must make (child runs,
//! tokens, metadata, tags, streams, environment variables) are asked for
//! and awaited. While replaying, the journal the leader sent answers them.
//! When the connection ends, every guest here is interrupted (one waiting
//! for the leader's answer gets an error instead) and dropped: the leader
//! starts their slices again elsewhere.

use super::Cluster;
use super::wire::{self, Answer, Call, Done, Frame, FromWorker, Request, Room, ToWorker};
use super::workers::{HEARTBEAT, SILENCE};
use kiln_sandbox::{
    Attempt, ChildRequest, HostFuture, JournalSink, LoadedBundle, Redactor, Sandbox, SandboxConfig,
    SpawnFuture, Spawned, TokenFuture,
};
use kiln_types::{HostCall, JournalEntry, JournalRecord, Timestamp};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a worker waits before it connects again.
const RECONNECT: Duration = Duration::from_millis(500);

/// The route a worker connects to.
pub(crate) const ROUTE: &str = "/internal/v1/workers";

/// An answer from the leader, with what the run has left of its journal
/// budget after the call.
type Answered = (Result<Answer, String>, Room);

/// The host calls guests here wait on the leader to answer, by session and
/// number; once the connection is gone no more are taken.
#[derive(Default)]
struct Waiting {
    closed: bool,
    /// Sessions the leader closed while their guest ran: their calls fail.
    ended: std::collections::HashSet<u64>,
    calls: HashMap<(u64, u64), oneshot::Sender<Answered>>,
}

/// [`Waiting`], shared by the connection's reader and the guests.
type Pending = Arc<Mutex<Waiting>>;

/// The guests this node runs for the leader, and whether it drains.
#[derive(Default)]
pub(crate) struct Guests {
    draining: AtomicBool,
    running: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
    /// The connection to the leader, while there is one.
    out: Mutex<Option<mpsc::UnboundedSender<Frame>>>,
}

impl Guests {
    /// Drains (on `SIGTERM`): tells the leader to place no more guests
    /// here and waits up to `grace` for those running to end their calls
    /// and be closed. Returns how many were still running (the leader
    /// starts their slices again elsewhere once this node is gone).
    pub(crate) async fn drain(&self, grace: Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        if let Some(out) = self.out.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = out.send(Frame::new(&FromWorker::Draining, Vec::new()));
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let changed = self.changed.notified();
            let running = self.running.load(Ordering::SeqCst);
            if running == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.running.load(Ordering::SeqCst);
            }
        }
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Counts a running session until dropped.
struct Running(Arc<Guests>);

impl Running {
    fn new(guests: &Arc<Guests>) -> Self {
        guests.running.fetch_add(1, Ordering::SeqCst);
        Running(guests.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// What a worker needs to run guests.
pub(crate) struct WorkerConfig {
    /// The sandbox it runs them in.
    pub(crate) sandbox: SandboxConfig,
    /// How many it runs at once.
    pub(crate) capacity: u32,
    /// The cluster's API key, which the leader checks.
    pub(crate) key: String,
    /// The guests it runs.
    pub(crate) guests: Arc<Guests>,
}

/// Runs guests for whichever node leads, until this node holds the store's
/// lock (or is gone).
pub(crate) fn spawn(cluster: Weak<Cluster>, config: WorkerConfig) {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_keepalive(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap_or_default();
        // Made at the first guest, kept while this node stands by.
        let mut sandbox: Option<Sandbox> = None;
        let mut bundles: HashMap<String, LoadedBundle> = HashMap::new();
        loop {
            let Some(node) = cluster.upgrade() else {
                return;
            };
            if node.holds_lock() || config.guests.draining() {
                return;
            }
            let leader = node.leader().filter(|l| l.node != node.node());
            let me = node.node().to_string();
            drop(node);
            let Some(leader) = leader else {
                tokio::time::sleep(RECONNECT).await;
                continue;
            };
            if sandbox.is_none() {
                match Sandbox::new(config.sandbox.clone()) {
                    Ok(made) => sandbox = Some(made),
                    Err(error) => {
                        tracing::error!(%error, "this node cannot run guests: its sandbox failed to start");
                        return;
                    }
                }
            }
            let Some(sandbox) = sandbox.clone() else {
                return;
            };
            let url = format!("{}{ROUTE}", leader.url.trim_end_matches('/'));
            let request = http
                .get(&url)
                .header(reqwest::header::CONNECTION, "upgrade")
                .header(reqwest::header::UPGRADE, wire::PROTOCOL)
                .bearer_auth(&config.key)
                .send();
            // A leader whose host vanished after it took the connection
            // would hold these for as long as TCP keeps trying.
            let upgraded = match tokio::time::timeout(SILENCE, request).await {
                Ok(Ok(r)) if r.status() == reqwest::StatusCode::SWITCHING_PROTOCOLS => {
                    tokio::time::timeout(SILENCE, r.upgrade()).await
                }
                Ok(Ok(r)) => {
                    tracing::debug!(status = %r.status(), leader = %leader.node, "the leader did not take this node as a worker");
                    tokio::time::sleep(RECONNECT).await;
                    continue;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, leader = %leader.node, "connecting to the leader to run guests failed");
                    tokio::time::sleep(RECONNECT).await;
                    continue;
                }
                Err(_) => {
                    tracing::debug!(leader = %leader.node, "the leader did not answer");
                    tokio::time::sleep(RECONNECT).await;
                    continue;
                }
            };
            let io = match upgraded {
                Ok(Ok(io)) => io,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "the leader's upgrade failed");
                    tokio::time::sleep(RECONNECT).await;
                    continue;
                }
                Err(_) => {
                    tracing::debug!("the leader's upgrade did not finish");
                    tokio::time::sleep(RECONNECT).await;
                    continue;
                }
            };
            tracing::info!(leader = %leader.node, "running guests for the leader");
            let hello = FromWorker::Hello {
                node: me,
                capacity: config.capacity,
            };
            serve(io, hello, sandbox, &mut bundles, &config.guests).await;
            tracing::info!(leader = %leader.node, "the connection to the leader ended");
            tokio::time::sleep(RECONNECT).await;
        }
    });
}

/// A session's state the connection's reader reaches.
struct SessionHandle {
    to: mpsc::UnboundedSender<(ToWorker, Vec<u8>)>,
    /// The guest's interrupt, once instantiated.
    interrupt: Arc<Mutex<Option<Arc<AtomicBool>>>>,
}

/// Serves one connection to the leader until it ends.
async fn serve<IO>(
    io: IO,
    hello: FromWorker,
    sandbox: Sandbox,
    bundles: &mut HashMap<String, LoadedBundle>,
    guests: &Arc<Guests>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out, mut outgoing) = mpsc::unbounded_channel::<Frame>();
    let _ = out.send(Frame::new(&hello, Vec::new()));
    *guests.out.lock().unwrap_or_else(|p| p.into_inner()) = Some(out.clone());
    if guests.draining() {
        let _ = out.send(Frame::new(&FromWorker::Draining, Vec::new()));
    }
    let broken = Arc::new(tokio::sync::Notify::new());
    let writing = {
        let broken = broken.clone();
        tokio::spawn(async move {
            if let Err(error) = wire::write_frames(&mut writer, &mut outgoing).await {
                tracing::warn!(%error, "writing to the leader failed");
                broken.notify_one();
            }
        })
    };
    let pinging = {
        let out = out.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if out.send(Frame::new(&FromWorker::Pong, Vec::new())).is_err() {
                    return;
                }
            }
        })
    };
    let shared_bundles = Arc::new(tokio::sync::Mutex::new(std::mem::take(bundles)));
    let pending: Pending = Arc::new(Mutex::new(Waiting::default()));
    let mut sessions: HashMap<u64, SessionHandle> = HashMap::new();
    loop {
        let read = tokio::select! {
            read = wire::read_frame(&mut reader, SILENCE) => read,
            _ = broken.notified() => break,
        };
        let frame = match read {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                tracing::warn!("the leader went silent; dropping its guests");
                break;
            }
            Err(_) => break,
        };
        let (message, attachment) = frame;
        let Ok(message) = serde_json::from_slice::<ToWorker>(&message) else {
            tracing::warn!("the leader sent a message this node cannot read");
            break;
        };
        match message {
            ToWorker::Ping => {
                // Idle, the sandbox gives its instances' memory back after
                // a while, as a leader's does; bundles of its old
                // generation go with it (a guest that needs one again
                // loads it anew).
                let idle = guests.running.load(Ordering::SeqCst) == 0;
                if idle
                    && sandbox.renew_if_idle()
                    && let Ok(mut loaded) = shared_bundles.try_lock()
                {
                    loaded.retain(|_, bundle| bundle.is_newest());
                }
            }
            ToWorker::Reply {
                session,
                call,
                answer,
                room,
            } => {
                let waiting = pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .calls
                    .remove(&(session, call));
                if let Some(waiting) = waiting {
                    let _ = waiting.send((answer, room));
                }
            }
            ToWorker::Interrupt { session } => {
                if let Some(handle) = sessions.get(&session)
                    && let Some(flag) = handle
                        .interrupt
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            ToWorker::Open {
                session,
                bundle,
                limits,
            } => {
                if guests.draining() {
                    let error = "this node drains".to_string();
                    let _ = out.send(Frame::new(
                        &FromWorker::OpenFailed { session, error },
                        Vec::new(),
                    ));
                    continue;
                }
                let (to, from) = mpsc::unbounded_channel();
                let interrupt = Arc::new(Mutex::new(None));
                sessions.insert(
                    session,
                    SessionHandle {
                        to,
                        interrupt: interrupt.clone(),
                    },
                );
                let context = Session {
                    id: session,
                    out: out.clone(),
                    from,
                    pending: pending.clone(),
                    interrupt,
                };
                let (sandbox, bundles) = (sandbox.clone(), shared_bundles.clone());
                let running = Running::new(guests);
                let waiting = pending.clone();
                crate::executor::spawn_guest(async move {
                    context.run(bundle, limits, sandbox, bundles).await;
                    let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
                    waiting.ended.remove(&session);
                    drop(running);
                });
            }
            ToWorker::Close { session } => {
                // A guest still in a call stops at its next tick, and one
                // waiting for an answer gets an error: the leader no longer
                // listens for this session.
                if let Some(handle) = sessions.remove(&session) {
                    interrupt(&handle);
                }
                let mut waiting = pending.lock().unwrap_or_else(|p| p.into_inner());
                waiting.calls.retain(|(s, _), _| *s != session);
                waiting.ended.insert(session);
            }
            other @ (ToWorker::Bundle { .. } | ToWorker::Setup { .. } | ToWorker::Call { .. }) => {
                let session = match &other {
                    ToWorker::Bundle { session, .. }
                    | ToWorker::Setup { session, .. }
                    | ToWorker::Call { session, .. } => *session,
                    _ => continue,
                };
                if let Some(handle) = sessions.get(&session) {
                    let _ = handle.to.send((other, attachment));
                }
            }
        }
    }
    // Every guest here stops: interrupted if running, dropped when its
    // session sees the connection gone.
    for handle in sessions.values() {
        interrupt(handle);
    }
    {
        let mut waiting = pending.lock().unwrap_or_else(|p| p.into_inner());
        waiting.closed = true;
        waiting.calls.clear();
    }
    *guests.out.lock().unwrap_or_else(|p| p.into_inner()) = None;
    drop(sessions);
    pinging.abort();
    writing.abort();
    *bundles = std::mem::take(&mut *shared_bundles.lock().await);
}

/// Interrupts a session's guest at its next epoch tick.
fn interrupt(handle: &SessionHandle) {
    if let Some(flag) = handle
        .interrupt
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        flag.store(true, Ordering::SeqCst);
    }
}

/// One guest this node runs for the leader.
struct Session {
    id: u64,
    out: mpsc::UnboundedSender<Frame>,
    from: mpsc::UnboundedReceiver<(ToWorker, Vec<u8>)>,
    pending: Pending,
    interrupt: Arc<Mutex<Option<Arc<AtomicBool>>>>,
}

impl Session {
    fn send(&self, message: &FromWorker, attachment: Vec<u8>) {
        let _ = self.out.send(Frame::new(message, attachment));
    }

    async fn run(
        mut self,
        hash: String,
        limits: kiln_sandbox::Limits,
        sandbox: Sandbox,
        bundles: Arc<tokio::sync::Mutex<HashMap<String, LoadedBundle>>>,
    ) {
        let session = self.id;
        let bundle = match self.bundle(&hash, &sandbox, &bundles).await {
            Some(Ok(bundle)) => bundle,
            Some(Err(error)) => {
                self.send(&FromWorker::OpenFailed { session, error }, Vec::new());
                return;
            }
            None => return,
        };
        let mut attempt = match bundle.instantiate(limits).await {
            Ok(attempt) => attempt,
            Err(error) => {
                let error = format!("instantiating the bundle failed: {error:#}");
                self.send(&FromWorker::OpenFailed { session, error }, Vec::new());
                return;
            }
        };
        let flag = attempt.cancel_flag();
        *self.interrupt.lock().unwrap_or_else(|p| p.into_inner()) = Some(flag.clone());
        let proxy = Proxy {
            session,
            out: self.out.clone(),
            pending: self.pending.clone(),
            next: Arc::new(AtomicU64::new(1)),
            opened: Arc::new(Mutex::new(HashMap::new())),
            room: Arc::new(Mutex::new(Room::default())),
        };
        attempt.set_journal(Box::new(proxy.clone()));
        self.send(&FromWorker::Opened { session }, Vec::new());
        while let Some((message, attachment)) = self.from.recv().await {
            match message {
                ToWorker::Setup { redactor, logs, .. } => {
                    attempt.set_redactor(Redactor::from_forms(redactor));
                    if let Some(logs) = logs {
                        attempt.resume_logs(logs);
                    }
                }
                ToWorker::Call {
                    call,
                    replay,
                    opened,
                    room,
                    ..
                } => {
                    *attempt.replay_mut() = replay.into();
                    *proxy.opened.lock().unwrap_or_else(|p| p.into_inner()) =
                        opened.into_iter().collect();
                    *proxy.room.lock().unwrap_or_else(|p| p.into_inner()) = room;
                    let memory = limits.memory_bytes as usize;
                    let (result, image) =
                        call_on(&mut attempt, &flag, *call, attachment, memory).await;
                    let done = FromWorker::Done {
                        session,
                        result,
                        replay: attempt.replay_mut().drain(..).collect(),
                        used: attempt.used(),
                        log_calls: attempt.log_calls(),
                        logs: attempt.take_logs(),
                    };
                    self.send(&done, image);
                }
                _ => {}
            }
        }
        // The session ended: the instance goes, off the runtime's workers
        // (dropping a large one takes a while).
        let _ = tokio::task::spawn_blocking(move || drop(attempt)).await;
    }

    /// The bundle with content hash `hash`, asking the leader for its bytes
    /// the first time. `None` when the session ended meanwhile.
    async fn bundle(
        &mut self,
        hash: &str,
        sandbox: &Sandbox,
        bundles: &tokio::sync::Mutex<HashMap<String, LoadedBundle>>,
    ) -> Option<Result<LoadedBundle, String>> {
        let mut loaded = bundles.lock().await;
        if let Some(bundle) = loaded.get(hash)
            && bundle.is_newest()
        {
            return Some(Ok(bundle.clone()));
        }
        // The compile cache may hold it (this node compiled it ahead, or
        // ran it before), but loading needs the bytes.
        self.send(
            &FromWorker::NeedBundle {
                session: self.id,
                hash: hash.to_string(),
            },
            Vec::new(),
        );
        let bytes = loop {
            match self.from.recv().await? {
                (ToWorker::Bundle { .. }, bytes) => break bytes,
                _ => continue,
            }
        };
        match sandbox.load(&bytes).await {
            Ok(bundle) if bundle.content_hash() != hash => Some(Err(format!(
                "the leader sent a bundle whose content is not `{hash}`"
            ))),
            Ok(bundle) => {
                loaded.insert(hash.to_string(), bundle.clone());
                Some(Ok(bundle))
            }
            Err(error) => Some(Err(format!("loading the bundle failed: {error}"))),
        }
    }
}

/// Makes one call on the instance: how it ended, and an attachment.
async fn call_on(
    attempt: &mut Attempt,
    flag: &AtomicBool,
    call: Call,
    attachment: Vec<u8>,
    memory: usize,
) -> (Done, Vec<u8>) {
    match call {
        Call::Start(ctx) => (Done::Step(attempt.start(&ctx).await), Vec::new()),
        Call::Resume(wake) => (Done::Step(attempt.resume(&wake).await), Vec::new()),
        Call::Cancel(reason) => {
            // The interrupt meant for a running guest is lifted first, or
            // it would stop the hooks at the next tick.
            flag.store(false, Ordering::SeqCst);
            attempt.cancel(&reason).await;
            (Done::Ok, Vec::new())
        }
        Call::Restore => {
            let image = match wire::unpack_off(attachment, memory).await {
                Ok(image) => image,
                Err(e) => {
                    let trap = kiln_sandbox::TrapKind::Other(format!(
                        "the snapshot from the leader is corrupt: {e}"
                    ));
                    return (Done::Trap(trap), Vec::new());
                }
            };
            match attempt.restore(image).await {
                Ok(()) => (Done::Ok, Vec::new()),
                Err(trap) => (Done::Trap(trap), Vec::new()),
            }
        }
        Call::Capture => match attempt.capture().await {
            Ok(image) => match wire::pack_off(image).await {
                Ok(packed) if wire::fits(packed.len()) => (Done::Image, packed),
                Ok(packed) => (
                    Done::Trap(kiln_sandbox::TrapKind::Other(format!(
                        "the snapshot is {} bytes compressed, too large to send to the leader",
                        packed.len()
                    ))),
                    Vec::new(),
                ),
                Err(e) => (
                    Done::Trap(kiln_sandbox::TrapKind::Other(format!(
                        "packing the snapshot failed: {e}"
                    ))),
                    Vec::new(),
                ),
            },
            Err(trap) => (Done::Trap(trap), Vec::new()),
        },
    }
}

/// The journal sink of a guest run for the leader: records go to it, in
/// order; calls it must make are asked for and awaited.
#[derive(Clone)]
struct Proxy {
    session: u64,
    out: mpsc::UnboundedSender<Frame>,
    pending: Pending,
    next: Arc<AtomicU64>,
    /// Values the journal's `env-var` calls read, opened by the leader.
    opened: Arc<Mutex<HashMap<String, String>>>,
    /// What the run has left of its journal budget.
    room: Arc<Mutex<Room>>,
}

impl Proxy {
    /// Asks the leader to make `request`; resolves to its answer.
    fn ask(&self, request: Request) -> HostFuture<Answer> {
        let gone = || "the connection to the leader is gone".to_string();
        let call = self.next.fetch_add(1, Ordering::Relaxed);
        let (answered, answer) = oneshot::channel();
        {
            let mut waiting = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if waiting.closed || waiting.ended.contains(&self.session) {
                return Box::pin(std::future::ready(Err(gone())));
            }
            waiting.calls.insert((self.session, call), answered);
        }
        let sent = self.out.send(Frame::new(
            &FromWorker::Request {
                session: self.session,
                call,
                request,
            },
            Vec::new(),
        ));
        let room = self.room.clone();
        Box::pin(async move {
            sent.map_err(|_| gone())?;
            let (answer, left) = answer.await.map_err(|_| gone())?;
            *room.lock().unwrap_or_else(|p| p.into_inner()) = left;
            answer
        })
    }
}

/// `answer` as the answer `expected`, or an error.
macro_rules! expect {
    ($future:expr, $pattern:pat => $value:expr) => {{
        let future = $future;
        Box::pin(async move {
            match future.await? {
                $pattern => Ok($value),
                other => Err(format!("the leader answered with {other:?}")),
            }
        })
    }};
}

impl JournalSink for Proxy {
    fn record(&mut self, mut call: HostCall) {
        {
            let mut room = self.room.lock().unwrap_or_else(|p| p.into_inner());
            room.entries += 1;
            // What the journal will store: the record as JSON.
            let record = JournalRecord {
                seq: room.entries + 1,
                at: Timestamp::now(),
                entry: JournalEntry::HostCall(call),
            };
            let size = serde_json::to_vec(&record).map_or(0, |v| v.len() as u64);
            room.bytes += size;
            let JournalEntry::HostCall(recorded) = record.entry else {
                return;
            };
            call = recorded;
        }
        let _ = self.out.send(Frame::new(
            &FromWorker::Record {
                session: self.session,
                call,
            },
            Vec::new(),
        ));
    }

    fn budget(&self) -> Result<(), String> {
        let room = *self.room.lock().unwrap_or_else(|p| p.into_inner());
        crate::executor::journal_within(room.entries, room.bytes, room.max_entries, room.max_bytes)
    }

    fn spawn(&mut self, children: Vec<ChildRequest>, batch: bool) -> SpawnFuture {
        expect!(self.ask(Request::Spawn { children, batch }),
            Answer::Spawned { batch, runs } => Spawned { batch, runs })
    }

    fn create_token(&mut self, options: String) -> TokenFuture {
        expect!(self.ask(Request::CreateToken { options }),
            Answer::Token(id, url) => (id, url))
    }

    fn update_metadata(&mut self, target: &'static str, operations: String) -> HostFuture<String> {
        let target = target.to_string();
        expect!(self.ask(Request::UpdateMetadata { target, operations }),
            Answer::Metadata(metadata) => metadata)
    }

    fn add_tags(&mut self, tags: Vec<String>) -> HostFuture<()> {
        expect!(self.ask(Request::AddTags { tags }), Answer::Tagged => ())
    }

    fn stream_append(&mut self, key: String, chunk: String) -> HostFuture<u64> {
        expect!(self.ask(Request::StreamAppend { key, chunk }),
            Answer::Appended(index) => index)
    }

    fn env_var(&mut self, name: String) -> HostFuture<Option<(String, bool)>> {
        expect!(self.ask(Request::EnvVar { name }), Answer::EnvVar(value) => value)
    }

    fn open_env_var(&self, name: &str, sealed: &str) -> Result<String, String> {
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sealed)
            .cloned()
            .ok_or_else(|| format!("reading `{name}` again for the replay failed"))
    }
}
