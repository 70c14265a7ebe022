//! The leader's side of sharing work: the nodes connected to run guests,
//! where each slice's guest runs, and a guest that runs on another node.
//!
//! Every standby connects to the leader ([`super::worker`]) and offers to
//! run guests. When a slice starts, the leader places its guest on the node
//! running the fewest guests for its capacity, itself included (a worker at
//! its capacity takes none). A guest on another node is a
//! [`RemoteAttempt`]: the driver calls it as it calls a local instance, and
//! the leader answers and journals each of its host calls as they come, in
//! order. Nothing the worker holds is durable: if its connection ends (the
//! node died or was cut off) or goes silent (each side sends a frame every
//! second), the slice starts again from the run's snapshot and journal, on
//! the nodes left, and the journal answers every host call of the lost
//! guest that reached the leader.

use super::wire::{self, Answer, Call, Done, Frame, FromWorker, Request, Room, ToWorker};
use kiln_sandbox::wit::kiln::task::types::{StartContext, Wake};
use kiln_sandbox::{JournalSink, Limits, LogCounts, Redactor, StepOutcome, TrapKind};
use kiln_types::{JournalEntry, Logs};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often each side says it is there.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long without a frame before a connection is given up.
pub(crate) const SILENCE: Duration = Duration::from_secs(5);

/// How often a running call looks whether its run was canceled.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// The connection to a worker was lost: the slice starts again elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lost;

/// A message from a worker, with its attachment.
type Incoming = (FromWorker, Vec<u8>);

/// A node connected to run guests.
pub(crate) struct Link {
    node: String,
    capacity: u32,
    out: mpsc::UnboundedSender<Frame>,
    sessions: Mutex<HashMap<u64, mpsc::UnboundedSender<Incoming>>>,
    closed: AtomicBool,
    /// Told when the connection can no longer be written to.
    broken: tokio::sync::Notify,
    /// Set when the node drains: it finishes its guests and takes no more.
    draining: AtomicBool,
    active: AtomicUsize,
    ran: AtomicU64,
}

impl Link {
    fn send(&self, message: &ToWorker, attachment: Vec<u8>) -> Result<(), Lost> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Lost);
        }
        self.out
            .send(Frame::new(message, attachment))
            .map_err(|_| Lost)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Dropping the senders ends every session's wait.
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// One node's share of the work, for `kiln cluster status`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Share {
    /// The node (`leader` for the leader itself).
    pub(crate) node: String,
    /// Guests it runs now.
    pub(crate) running: usize,
    /// Guests it takes at once.
    pub(crate) capacity: u32,
    /// Slices it ran since it connected (the leader: since it took over).
    pub(crate) slices: u64,
}

/// The nodes that run guests for this leader.
pub(crate) struct Workers {
    links: Mutex<Vec<Arc<Link>>>,
    next_session: AtomicU64,
    /// Guests the leader runs itself now, and in all.
    local_active: Arc<AtomicUsize>,
    local_ran: AtomicU64,
    local_capacity: u32,
    /// Turns ties between equally loaded nodes.
    turn: AtomicUsize,
    /// Slices whose guest was lost with its node.
    lost: AtomicU64,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let links = self.links.lock().map(|l| l.len()).unwrap_or(0);
        write!(f, "Workers({links} connected)")
    }
}

/// Where a slice's guest runs.
pub(crate) enum Placement {
    /// Here, on a server that shares no work.
    Here,
    /// Here, holding one of the leader's own places until dropped.
    Local(LocalPlace),
    /// On another node, holding one of its places until dropped.
    Remote(RemotePlace),
}

/// One of a worker's places, given back when dropped.
pub(crate) struct RemotePlace(Arc<Link>);

impl RemotePlace {
    /// One of `link`'s places, unless another slice took its last one
    /// since it was chosen.
    fn take(link: Arc<Link>) -> Option<Self> {
        let capacity = link.capacity as usize;
        link.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |active| {
                (active < capacity).then_some(active + 1)
            })
            .ok()?;
        link.ran.fetch_add(1, Ordering::Relaxed);
        Some(RemotePlace(link))
    }

    /// The node.
    pub(crate) fn node(&self) -> &str {
        &self.0.node
    }
}

impl Drop for RemotePlace {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One of the leader's own places, given back when dropped.
pub(crate) struct LocalPlace(Arc<AtomicUsize>);

impl Drop for LocalPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Workers {
    /// No worker yet; the leader runs `capacity` guests at once itself.
    pub(crate) fn new(capacity: u32) -> Arc<Workers> {
        Arc::new(Workers {
            links: Mutex::new(Vec::new()),
            next_session: AtomicU64::new(1),
            local_active: Arc::new(AtomicUsize::new(0)),
            local_ran: AtomicU64::new(0),
            local_capacity: capacity.max(1),
            turn: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
        })
    }

    /// Places a guest: on the node running the fewest for its capacity,
    /// turning between equals; here if `here` (a slice that lost its
    /// workers again and again).
    pub(crate) fn place(&self, here: bool) -> Placement {
        let links: Vec<Arc<Link>> = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| {
                !l.closed.load(Ordering::SeqCst)
                    && !l.draining.load(Ordering::SeqCst)
                    && l.active.load(Ordering::SeqCst) < l.capacity as usize
            })
            .cloned()
            .collect();
        let local = |workers: &Workers| {
            workers.local_active.fetch_add(1, Ordering::SeqCst);
            workers.local_ran.fetch_add(1, Ordering::Relaxed);
            Placement::Local(LocalPlace(workers.local_active.clone()))
        };
        if here || links.is_empty() {
            return local(self);
        }
        // Load as a fraction of capacity, compared without division.
        let load = |active: usize, capacity: u32| (active as u128, capacity.max(1) as u128);
        let mut candidates = vec![(
            None,
            load(
                self.local_active.load(Ordering::SeqCst),
                self.local_capacity,
            ),
        )];
        for link in &links {
            candidates.push((
                Some(link.clone()),
                load(link.active.load(Ordering::SeqCst), link.capacity),
            ));
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % candidates.len();
        candidates.rotate_left(start);
        let mut best = 0;
        for (i, (_, (active, capacity))) in candidates.iter().enumerate() {
            let (best_active, best_capacity) = candidates[best].1;
            if active * best_capacity < best_active * capacity {
                best = i;
            }
        }
        // Taken here, so slices placed at the same moment see it; one that
        // lost the worker's last place to another runs here.
        match candidates.swap_remove(best).0.and_then(RemotePlace::take) {
            None => local(self),
            Some(place) => Placement::Remote(place),
        }
    }

    /// Counts a slice whose guest was lost with its node.
    pub(crate) fn count_lost(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    /// Slices whose guest was lost with its node, since this node leads.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Each node's share of the work, the leader's first.
    pub(crate) fn shares(&self) -> Vec<Share> {
        let mut shares = vec![Share {
            node: "leader".into(),
            running: self.local_active.load(Ordering::SeqCst),
            capacity: self.local_capacity,
            slices: self.local_ran.load(Ordering::Relaxed),
        }];
        for link in self.links.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            shares.push(Share {
                node: link.node.clone(),
                running: link.active.load(Ordering::SeqCst),
                capacity: link.capacity,
                slices: link.ran.load(Ordering::Relaxed),
            });
        }
        shares
    }

    /// Serves one worker's connection until it ends.
    pub(crate) async fn serve<IO>(self: Arc<Self>, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(io);
        let hello = match wire::read_frame(&mut reader, SILENCE).await {
            Ok(Some((message, _))) => serde_json::from_slice::<FromWorker>(&message).ok(),
            _ => None,
        };
        let Some(FromWorker::Hello { node, capacity }) = hello else {
            tracing::warn!("a node connected to run guests but did not say who it is");
            return;
        };
        let (out, mut outgoing) = mpsc::unbounded_channel::<Frame>();
        let link = Arc::new(Link {
            node: node.clone(),
            capacity: capacity.max(1),
            out,
            sessions: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            broken: tokio::sync::Notify::new(),
            draining: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            ran: AtomicU64::new(0),
        });
        tracing::info!(%node, capacity, "a node connected to run guests");
        let writing = {
            let link = link.clone();
            tokio::spawn(async move {
                if let Err(error) = wire::write_frames(&mut writer, &mut outgoing).await {
                    tracing::warn!(node = %link.node, %error, "writing to a worker failed");
                    link.broken.notify_one();
                }
            })
        };
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(link.clone());
        let pinging = {
            let link = link.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    if link.send(&ToWorker::Ping, Vec::new()).is_err() {
                        return;
                    }
                }
            })
        };
        loop {
            let read = tokio::select! {
                read = wire::read_frame(&mut reader, SILENCE) => read,
                _ = link.broken.notified() => break,
            };
            let frame = match read {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                    tracing::warn!(%node, "a worker went silent; its guests start again elsewhere");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%node, %error, "the connection to a worker failed");
                    break;
                }
            };
            let (message, attachment) = frame;
            let message = match serde_json::from_slice::<FromWorker>(&message) {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%node, %error, "a worker sent a message Kiln cannot read");
                    break;
                }
            };
            let session = match &message {
                FromWorker::Pong | FromWorker::Hello { .. } => continue,
                FromWorker::Draining => {
                    tracing::info!(%node, "a worker drains: no more guests go to it");
                    link.draining.store(true, Ordering::SeqCst);
                    continue;
                }
                FromWorker::Opened { session }
                | FromWorker::NeedBundle { session, .. }
                | FromWorker::OpenFailed { session, .. }
                | FromWorker::Record { session, .. }
                | FromWorker::Request { session, .. }
                | FromWorker::Done { session, .. } => *session,
            };
            let sessions = link.sessions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(to) = sessions.get(&session) {
                let _ = to.send((message, attachment));
            }
        }
        link.close();
        pinging.abort();
        writing.abort();
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|l| !Arc::ptr_eq(l, &link));
        tracing::info!(%node, "a node that ran guests disconnected");
    }

    /// Opens a session for a guest of `bundle` on `link`. `bytes` reads the
    /// bundle, if the worker does not have it.
    pub(crate) async fn open(
        &self,
        place: RemotePlace,
        bundle: &str,
        limits: Limits,
        bytes: impl Fn() -> Result<Vec<u8>, String>,
    ) -> Result<Result<RemoteAttempt, String>, Lost> {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (to, from) = mpsc::unbounded_channel();
        let link = place.0.clone();
        link.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session, to);
        let mut remote = RemoteAttempt {
            link,
            _place: place,
            session,
            memory: limits.memory_bytes,
            from,
            sink: None,
            room: None,
            redactor: None,
            log_counts: None,
            set_up: false,
            replay: VecDeque::new(),
            cancel: Arc::new(AtomicBool::new(false)),
            used: limits.used,
            log_calls: 0,
            logs: Logs::default(),
        };
        remote.link.send(
            &ToWorker::Open {
                session,
                bundle: bundle.to_string(),
                limits,
            },
            Vec::new(),
        )?;
        loop {
            let Some((message, _)) = remote.from.recv().await else {
                return Err(Lost);
            };
            match message {
                FromWorker::Opened { .. } => break,
                FromWorker::OpenFailed { error, .. } => return Ok(Err(error)),
                FromWorker::NeedBundle { hash, .. } => {
                    let bytes = match bytes() {
                        Ok(bytes) => bytes,
                        Err(error) => return Ok(Err(error)),
                    };
                    remote
                        .link
                        .send(&ToWorker::Bundle { session, hash }, bytes)?;
                }
                _ => {}
            }
        }
        Ok(Ok(remote))
    }
}

/// A guest running on another node, driven from here.
pub(crate) struct RemoteAttempt {
    link: Arc<Link>,
    /// The worker's place this guest holds.
    _place: RemotePlace,
    session: u64,
    /// The guest's memory cap: no image from the worker is larger.
    memory: u64,
    from: mpsc::UnboundedReceiver<Incoming>,
    sink: Option<Box<dyn JournalSink>>,
    /// What the run has left of its journal budget, read before each call.
    room: Option<Box<dyn Fn() -> Room + Send>>,
    redactor: Option<Redactor>,
    log_counts: Option<LogCounts>,
    set_up: bool,
    replay: VecDeque<JournalEntry>,
    cancel: Arc<AtomicBool>,
    used: Duration,
    log_calls: u64,
    logs: Logs,
}

impl Drop for RemoteAttempt {
    fn drop(&mut self) {
        let _ = self.link.send(
            &ToWorker::Close {
                session: self.session,
            },
            Vec::new(),
        );
        self.link
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.session);
    }
}

impl RemoteAttempt {
    /// The flag that interrupts the guest, as a local instance's.
    pub(crate) fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Journals the guest's host calls into `sink`.
    pub(crate) fn set_journal(&mut self, sink: Box<dyn JournalSink>) {
        self.sink = Some(sink);
    }

    /// Reads what the run has left of its journal budget before each call.
    pub(crate) fn set_room(&mut self, room: Box<dyn Fn() -> Room + Send>) {
        self.room = Some(room);
    }

    /// Masks what `redactor` masks.
    pub(crate) fn set_redactor(&mut self, redactor: Redactor) {
        self.redactor = Some(redactor);
    }

    /// The journal entries still to replay.
    pub(crate) fn replay_mut(&mut self) -> &mut VecDeque<JournalEntry> {
        &mut self.replay
    }

    /// Where logging stands.
    pub(crate) fn resume_logs(&mut self, counts: LogCounts) {
        self.log_counts = Some(counts);
    }

    /// Execution time used so far.
    pub(crate) fn used(&self) -> Duration {
        self.used
    }

    /// Log calls made so far.
    pub(crate) fn log_calls(&self) -> u64 {
        self.log_calls
    }

    /// Log lines kept since the last take.
    pub(crate) fn take_logs(&mut self) -> Logs {
        std::mem::take(&mut self.logs)
    }

    /// Starts the attempt.
    pub(crate) async fn start(&mut self, ctx: &StartContext) -> Result<StepOutcome, Lost> {
        match self.call(Call::Start(ctx.clone()), Vec::new()).await? {
            (Done::Step(step), _) => Ok(step),
            (other, _) => Ok(unexpected(other)),
        }
    }

    /// Delivers a wake.
    pub(crate) async fn resume(&mut self, wake: &Wake) -> Result<StepOutcome, Lost> {
        match self.call(Call::Resume(wake.clone()), Vec::new()).await? {
            (Done::Step(step), _) => Ok(step),
            (other, _) => Ok(unexpected(other)),
        }
    }

    /// Runs the cancel hooks.
    pub(crate) async fn cancel(&mut self, reason: &str) -> Result<(), Lost> {
        self.call(Call::Cancel(reason.to_string()), Vec::new())
            .await
            .map(drop)
    }

    /// Copies the guest's memory.
    pub(crate) async fn capture(&mut self) -> Result<Result<Vec<u8>, TrapKind>, Lost> {
        match self.call(Call::Capture, Vec::new()).await? {
            (Done::Image, packed) => Ok(wire::unpack_off(packed, self.memory as usize)
                .await
                .map_err(|e| {
                    TrapKind::Other(format!("the snapshot from the worker is corrupt: {e}"))
                })),
            (Done::Trap(trap), _) => Ok(Err(trap)),
            (other, _) => Ok(Err(TrapKind::Other(format!(
                "the worker answered a capture with {other:?}"
            )))),
        }
    }

    /// Makes the guest's memory `image`.
    pub(crate) async fn restore(&mut self, image: Vec<u8>) -> Result<Result<(), TrapKind>, Lost> {
        let packed = match wire::pack_off(image).await {
            Ok(packed) if wire::fits(packed.len()) => packed,
            Ok(packed) => {
                return Ok(Err(TrapKind::Other(format!(
                    "the snapshot is {} bytes compressed, too large to send to another node",
                    packed.len()
                ))));
            }
            Err(e) => return Ok(Err(TrapKind::Other(format!("packing the snapshot: {e}")))),
        };
        match self.call(Call::Restore, packed).await? {
            (Done::Ok, _) => Ok(Ok(())),
            (Done::Trap(trap), _) => Ok(Err(trap)),
            (other, _) => Ok(Err(TrapKind::Other(format!(
                "the worker answered a restore with {other:?}"
            )))),
        }
    }

    /// One call on the instance: sends it with what is left to replay,
    /// journals and answers the guest's host calls until it ends.
    async fn call(&mut self, call: Call, attachment: Vec<u8>) -> Result<(Done, Vec<u8>), Lost> {
        let session = self.session;
        if !self.set_up {
            self.set_up = true;
            self.link.send(
                &ToWorker::Setup {
                    session,
                    redactor: self
                        .redactor
                        .as_ref()
                        .map(Redactor::forms)
                        .unwrap_or_default(),
                    logs: self.log_counts,
                },
                Vec::new(),
            )?;
        }
        let replay: Vec<JournalEntry> = self.replay.drain(..).collect();
        let opened = self.opened(&replay);
        let room = self.room();
        self.link.send(
            &ToWorker::Call {
                session,
                call: Box::new(call),
                replay,
                opened,
                room,
            },
            attachment,
        )?;
        let mut interrupted = false;
        let mut poll = tokio::time::interval(CANCEL_POLL);
        loop {
            let received = tokio::select! {
                received = self.from.recv() => received,
                _ = poll.tick() => {
                    if !interrupted && self.cancel.load(Ordering::SeqCst) {
                        interrupted = true;
                        self.link.send(&ToWorker::Interrupt { session }, Vec::new())?;
                    }
                    continue;
                }
            };
            let Some((message, attachment)) = received else {
                return Err(Lost);
            };
            match message {
                FromWorker::Record { call, .. } => {
                    if let Some(sink) = self.sink.as_mut() {
                        sink.record(call);
                    }
                }
                FromWorker::Request { call, request, .. } => {
                    let answer = match self.sink.as_mut() {
                        Some(sink) => answer(sink.as_mut(), request).await,
                        None => Err("host calls are not available here".to_string()),
                    };
                    // With what the call's entry took of the budget, so the
                    // guest's next call is checked as it would be here.
                    let room = self.room();
                    self.link.send(
                        &ToWorker::Reply {
                            session,
                            call,
                            answer,
                            room,
                        },
                        Vec::new(),
                    )?;
                }
                FromWorker::Done {
                    result,
                    replay,
                    used,
                    log_calls,
                    mut logs,
                    ..
                } => {
                    self.replay = replay.into();
                    self.used = used;
                    self.log_calls = log_calls;
                    self.logs.lines.append(&mut logs.lines);
                    self.logs.dropped += logs.dropped;
                    return Ok((result, attachment));
                }
                _ => {}
            }
        }
    }

    /// The values the `env-var` calls in `replay` read, opened for the
    /// worker (it holds no key).
    fn opened(&self, replay: &[JournalEntry]) -> Vec<(String, String)> {
        let Some(sink) = self.sink.as_ref() else {
            return Vec::new();
        };
        replay
            .iter()
            .filter_map(|entry| match entry {
                JournalEntry::HostCall(kiln_types::HostCall::EnvVar {
                    name,
                    sealed: Some(sealed),
                    ..
                }) => sink
                    .open_env_var(name, sealed)
                    .ok()
                    .map(|value| (sealed.clone(), value)),
                _ => None,
            })
            .collect()
    }

    /// What the run has left of its journal budget.
    fn room(&self) -> Room {
        self.room.as_ref().map_or_else(Room::default, |room| room())
    }
}

/// The step a call that is not a step answered with, as a trap.
fn unexpected(done: Done) -> StepOutcome {
    match done {
        Done::Trap(trap) => StepOutcome::Trap(trap),
        other => StepOutcome::Trap(TrapKind::Other(format!(
            "the worker answered a step with {other:?}"
        ))),
    }
}

/// Makes a host call the guest asked for through `sink`.
async fn answer(sink: &mut dyn JournalSink, request: Request) -> Result<Answer, String> {
    match request {
        Request::Spawn { children, batch } => {
            sink.spawn(children, batch)
                .await
                .map(|spawned| Answer::Spawned {
                    batch: spawned.batch,
                    runs: spawned.runs,
                })
        }
        Request::CreateToken { options } => sink
            .create_token(options)
            .await
            .map(|(id, url)| Answer::Token(id, url)),
        Request::UpdateMetadata { target, operations } => {
            let target = match target.as_str() {
                "current" => "current",
                "parent" => "parent",
                "root" => "root",
                other => return Err(format!("unknown metadata target `{other}`")),
            };
            sink.update_metadata(target, operations)
                .await
                .map(Answer::Metadata)
        }
        Request::AddTags { tags } => sink.add_tags(tags).await.map(|()| Answer::Tagged),
        Request::StreamAppend { key, chunk } => {
            sink.stream_append(key, chunk).await.map(Answer::Appended)
        }
        Request::EnvVar { name } => sink.env_var(name).await.map(Answer::EnvVar),
    }
}
