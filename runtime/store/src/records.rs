//! Typed records over a backend: deployments, bundles, runs, journals,
//! snapshot layers, timers and idempotency keys. Keys: see
//! [`crate::layout`].

use crate::backend::{Backend, Commit, Op};
use crate::journal::{entries_of, journal_prefix, last_seq_of};
use crate::layout::{ACTIVE, BUNDLE, DEPLOY, IDEM, RUN, SNAP, TIMER};
use crate::snapshot::SnapshotLayer;
use crate::{Result, StoreError};
use kiln_types::{Deployment, JournalRecord, Run, RunId, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A durable timer: wait `wait_id` of `run_id` is due at `due`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerKey {
    /// When it is due.
    pub due: Timestamp,
    /// The run that waits.
    pub run_id: RunId,
    /// The wait it wakes.
    pub wait_id: u64,
}

impl TimerKey {
    /// The wait id of the timer that ends a `DELAYED` run's delay. Guests
    /// number their waits from 1; these top ids belong to the run itself.
    pub const DELAY: u64 = u64::MAX;
    /// The wait id of the timer that expires a run its ttl ran out on.
    pub const TTL: u64 = u64::MAX - 1;

    /// The timer that queues a delayed run at `due`.
    pub fn delay(run_id: &RunId, due: Timestamp) -> Self {
        TimerKey {
            due,
            run_id: run_id.clone(),
            wait_id: Self::DELAY,
        }
    }

    /// The timer that expires a run not started by `due`.
    pub fn ttl(run_id: &RunId, due: Timestamp) -> Self {
        TimerKey {
            due,
            run_id: run_id.clone(),
            wait_id: Self::TTL,
        }
    }

    /// The timers a run's own record calls for: its delay's end, or its
    /// ttl's once it is queued and has not started.
    pub fn of_run(run: &Run) -> Vec<Self> {
        let mut timers = Vec::new();
        if run.status == kiln_types::RunStatus::Delayed
            && let Some(due) = run.delayed_until
        {
            timers.push(Self::delay(&run.id, due));
        }
        if matches!(
            run.status,
            kiln_types::RunStatus::Queued | kiln_types::RunStatus::PendingVersion
        ) && run.attempts.is_empty()
            && let Some(due) = run.expires_at
        {
            timers.push(Self::ttl(&run.id, due));
        }
        timers
    }

    fn encode(&self) -> Vec<u8> {
        let mut k = key(TIMER, &self.due.as_millis().to_be_bytes());
        k.extend_from_slice(self.run_id.as_str().as_bytes());
        k.push(b'/');
        k.extend_from_slice(&self.wait_id.to_be_bytes());
        k
    }

    fn decode(k: &[u8]) -> Result<Self> {
        let corrupt = || StoreError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: "not a timer key".into(),
        };
        let rest = k.strip_prefix(TIMER).ok_or_else(corrupt)?;
        if rest.len() < 8 + 1 + 8 {
            return Err(corrupt());
        }
        let due = u64::from_be_bytes(rest[..8].try_into().map_err(|_| corrupt())?);
        let (run, wait) = rest[8..].split_at(rest.len() - 8 - 8);
        let run = run.strip_suffix(b"/").ok_or_else(corrupt)?;
        let run_id = std::str::from_utf8(run)
            .ok()
            .and_then(|s| RunId::parse(s).ok())
            .ok_or_else(corrupt)?;
        Ok(TimerKey {
            due: Timestamp(due),
            run_id,
            wait_id: u64::from_be_bytes(wait.try_into().map_err(|_| corrupt())?),
        })
    }
}

fn snap_prefix(run: &RunId) -> Vec<u8> {
    let mut k = key(SNAP, run.as_str().as_bytes());
    k.push(b'/');
    k
}

fn snap_key(run: &RunId, attempt: u32, layer: u32) -> Vec<u8> {
    let mut k = snap_prefix(run);
    k.extend_from_slice(&attempt.to_be_bytes());
    k.push(b'/');
    k.extend_from_slice(&layer.to_be_bytes());
    k
}

/// Writes that commit together, atomically: a run's record, its journal
/// entries, snapshot layers and timers.
#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
    pub(crate) error: Option<StoreError>,
    /// The runs whose records this batch writes, for [`Store::on_runs_changed`].
    pub(crate) runs: Vec<RunId>,
    /// The runs whose realtime streams this batch appends to.
    pub(crate) streams: Vec<RunId>,
    /// The runs among `runs` it writes with a final status.
    pub(crate) finished: Vec<RunId>,
    /// The last journal key [`Batch::append_journal_run`] put, as the run's
    /// id and the op's place in `ops`: a record that finishes the run,
    /// written after it in the batch, takes its entries in (see
    /// [`crate::journal`]).
    pub(crate) journal_put: Option<(RunId, usize)>,
}

/// What durable commits changed, as [`Store::on_runs_changed`] tells it.
#[derive(Debug, Clone, Copy)]
pub struct Changes<'a> {
    /// Runs whose records they wrote (a run once for each commit).
    pub runs: &'a [RunId],
    /// Runs whose realtime streams they appended to.
    pub streams: &'a [RunId],
    /// The runs among `runs` whose records they wrote with a final status:
    /// they finished (whoever waits for that is told once it is durable).
    pub finished: &'a [RunId],
}

impl Batch {
    /// Saves a run (see [`Store::put_run`]).
    pub fn put_run(&mut self, run: &Run) -> &mut Self {
        let run = crate::journal::with_journal_taken(run, self);
        let run = crate::blobs::lean_record(&run, &mut self.ops);
        match encode_run(&run) {
            Ok(record) => {
                self.runs.push(run.id.clone());
                if run.status.is_final() {
                    self.finished.push(run.id.clone());
                }
                let id = run.id.as_str().as_bytes();
                self.ops.push(Op::Put(key(RUN, id), record));
                self.ops
                    .push(if run.status.is_final() || run.status.is_at_rest() {
                        Op::Delete(key(ACTIVE, id))
                    } else {
                        Op::Put(key(ACTIVE, id), Vec::new())
                    });
                self.ops.extend(crate::retention::index_ops(&run));
            }
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Saves a run just made, with the timers its record calls for (see
    /// [`TimerKey::of_run`]).
    pub fn put_new_run(&mut self, run: &Run) -> &mut Self {
        self.put_run(run);
        for timer in TimerKey::of_run(run) {
            self.put_timer(&timer);
        }
        self
    }

    /// Stores a snapshot layer of an attempt.
    pub fn put_layer(
        &mut self,
        run: &RunId,
        attempt: u32,
        layer: u32,
        bytes: Vec<u8>,
    ) -> &mut Self {
        self.ops.push(Op::Put(snap_key(run, attempt, layer), bytes));
        self
    }

    /// Deletes stored snapshot layers by key (from [`Store::layer_keys`]).
    pub fn delete_keys(&mut self, keys: impl IntoIterator<Item = Vec<u8>>) -> &mut Self {
        self.ops.extend(keys.into_iter().map(Op::Delete));
        self
    }

    /// Sets a durable timer.
    pub fn put_timer(&mut self, timer: &TimerKey) -> &mut Self {
        self.ops.push(Op::Put(timer.encode(), Vec::new()));
        self
    }

    /// Removes a durable timer.
    pub fn delete_timer(&mut self, timer: &TimerKey) -> &mut Self {
        self.ops.push(Op::Delete(timer.encode()));
        self
    }

    /// Whether committing the batch would do nothing: it holds no writes,
    /// and none failed to encode. A batch whose only write failed to encode
    /// is not empty: its commit fails with the encoding's error, so a caller
    /// that skips committing empty batches does not report a write it never
    /// made as done.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.error.is_none()
    }

    /// Whether every write was encoded: the commit of a batch that was not
    /// fails and writes nothing.
    pub fn encoded(&self) -> bool {
        self.error.is_none()
    }
}

/// One stored snapshot layer of an attempt.
#[derive(Debug, Clone)]
pub struct StoredLayer {
    /// Its number within the attempt.
    pub number: u32,
    /// The layer.
    pub layer: SnapshotLayer,
    /// Its size as stored.
    pub stored_bytes: u64,
}

/// The first bytes of a sealed snapshot layer.
const SEALED_LAYER: &[u8] = b"KSEL";

pub(crate) fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

/// Encodes a record as JSON (every record but a run's).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(format!("encoding a record: {e}")))
}

/// Encodes a run's record, the record written most often (at every change
/// of a run), as MessagePack with its fields numbered
/// ([`crate::numbered`]): a finished `hello-world` run's record takes 329
/// bytes where with named fields it took 587 (and JSON 746), and decodes
/// in three quarters of the time (the `records` bench group). It is still
/// self-describing, so a field added later reads back as its default from
/// an older record, and records written with named fields (or as JSON, by
/// earlier versions of Kiln) read back as they are. JSON stays at the
/// API's edge.
///
/// The buffer is sized for a whole record first: grown from empty, it was
/// allocated eight times on the way to a finished `hello-world` run's
/// record with named fields, which made encoding more than twice as slow
/// (the `records` group).
pub(crate) fn encode_run(run: &Run) -> Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(RUN_RECORD_ROOM);
    crate::numbered::encode_into(&mut buffer, run)
        .map_err(|e| StoreError::Backend(format!("encoding a run's record: {e}")))?;
    // Every test that writes a run checks it reads back as written: a type
    // the numbering cannot carry (see `numbered`) fails there, not in a
    // user's store.
    debug_assert!(
        rmp_serde::from_slice::<Run>(&buffer).is_ok_and(|back| back == *run),
        "a run's record does not read back as written: {run:?}"
    );
    Ok(buffer)
}

/// The room a run's record is encoded into at first: most records fit.
const RUN_RECORD_ROOM: usize = 1024;

/// Decodes a record written by [`encode`] or [`encode_run`]. A JSON record
/// is an object, so it starts with `{`; a MessagePack map starts with a byte
/// of `0x80..=0x8f`, `0xde` or `0xdf`. Run records written as JSON by
/// earlier versions of Kiln read back as they are.
pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    if is_message_pack(bytes) {
        rmp_serde::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
    } else {
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
    }
}

/// Whether a record's bytes are MessagePack (a map) rather than JSON.
pub(crate) fn is_message_pack(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

/// The status in a run's record. A MessagePack record is read up to its
/// status field, which [`encode_run`] writes third, after two strings:
/// the fields before it are stepped over, and the rest is never walked.
/// A record that holds anything but strings before its status, and a JSON
/// record, are decoded as a whole (a struct of the status alone would take
/// a numbered record's first field for it). A record damaged after its
/// status is not noticed here: reading the whole run reports it.
fn status_of(key: &[u8], bytes: &[u8]) -> Result<kiln_types::RunStatus> {
    if is_message_pack(bytes)
        && let Some(status) = status_near_the_start(bytes)
    {
        return Ok(status);
    }
    decode::<Run>(key, bytes).map(|run| run.status)
}

/// [`status_of`]'s reading of a MessagePack run record up to its status;
/// `None` if the record does not start as [`leading_fields`] expects, for
/// the whole record to be decoded instead.
fn status_near_the_start(bytes: &[u8]) -> Option<kiln_types::RunStatus> {
    leading_fields(bytes).and_then(|[_, _, status]| kiln_types::RunStatus::parse(status))
}

/// The first three fields of a MessagePack run record, its id, task and
/// status, as [`encode_run`] writes them first, numbered 0, 1 and 2 (or
/// named `id`, `taskId` and `status`, as Kiln wrote them before it numbered
/// fields); the rest of the record is never walked. `None` for a record
/// that starts otherwise, or that cannot be read that far.
pub(crate) fn leading_fields(bytes: &[u8]) -> Option<[&str; 3]> {
    const NAMES: [&str; 3] = ["id", "taskId", "status"];
    let mut rest = bytes;
    if rmp::decode::read_map_len(&mut rest).ok()? < 3 {
        return None;
    }
    let mut values = [""; 3];
    for (number, value) in values.iter_mut().enumerate() {
        let key_fits = match rest.first()? {
            // A field's number, as `numbered` writes it: a positive fixint.
            &key @ 0x00..=0x7f => {
                rest = &rest[1..];
                usize::from(key) == number
            }
            _ => {
                let (name, after_name) = rmp::decode::read_str_from_slice(rest).ok()?;
                rest = after_name;
                name == NAMES[number]
            }
        };
        if !key_fits {
            return None;
        }
        let (text, after_value) = rmp::decode::read_str_from_slice(rest).ok()?;
        *value = text;
        rest = after_value;
    }
    Some(values)
}

/// Told which runs commits wrote, once they are durable.
pub type RunsListener = Box<dyn Fn(Changes<'_>) + Send + Sync>;

/// Kiln's records, over any [`Backend`].
#[derive(Clone)]
pub struct Store {
    pub(crate) backend: Arc<dyn Backend>,
    listener: Arc<std::sync::OnceLock<Arc<crate::listening::Listening>>>,
    /// The master key environment variables and snapshot layers are sealed
    /// with.
    pub(crate) seal: Option<Arc<crate::seal::SealKey>>,
    /// Bumped by every change to the environment variables (through this
    /// store or a clone of it).
    pub(crate) env_version: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// A store over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Store {
            backend,
            listener: Arc::default(),
            seal: None,
            env_version: Arc::default(),
        }
    }

    /// This store, sealing environment variables and snapshot layers with
    /// `key` (a store without one refuses variables and keeps layers
    /// unsealed).
    pub fn sealed(mut self, key: Arc<crate::seal::SealKey>) -> Self {
        self.seal = Some(key);
        self
    }

    /// The bytes to store for an encoded snapshot layer
    /// ([`Batch::put_layer`]): sealed with the master key when the store
    /// has one, so a waiting guest's memory (and any secret it read) is not
    /// on disk in plain text.
    pub fn seal_layer(
        &self,
        run: &RunId,
        attempt: u32,
        layer: u32,
        encoded: Vec<u8>,
    ) -> Result<Vec<u8>, crate::seal::SealError> {
        match &self.seal {
            Some(seal) => {
                let mut out = SEALED_LAYER.to_vec();
                out.extend_from_slice(&seal.seal(&snap_key(run, attempt, layer), &encoded)?);
                Ok(out)
            }
            None => Ok(encoded),
        }
    }

    /// Sets what hears of every durable commit that wrote runs or appended
    /// to their realtime streams (realtime subscriptions); the first call
    /// wins. A task of this store's, started on the calling Tokio runtime,
    /// tells it of each commit once the commit is durable, about in the
    /// order the commits were made, the changes of commits that became
    /// durable together in one call (see [`crate::listening`]); it must not
    /// block.
    /// Outside a runtime nothing is set, and a warning says so.
    pub fn on_runs_changed(&self, listener: RunsListener) {
        if self.listener.get().is_some() {
            return;
        }
        match crate::listening::Listening::start(listener, &self.backend) {
            Ok(listening) => {
                let _ = self.listener.set(listening);
            }
            Err(_) => tracing::warn!(
                "a runs listener set outside a Tokio runtime is not set: realtime subscriptions \
                 will not hear of changes, and waits for a run's end last until their timeout"
            ),
        }
    }

    /// Saves a deployment with its bundles (in the order of
    /// [`Deployment::content_hashes`]), in one atomic commit. The write is
    /// handed to the committer at once; the returned future resolves when
    /// it is durable.
    pub fn put_deployment(&self, deployment: &Deployment, bundles: &[&[u8]]) -> Commit {
        let record = match encode(deployment) {
            Ok(record) => record,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let mut ops: Vec<Op> = deployment
            .content_hashes()
            .zip(bundles)
            .map(|(hash, bytes)| Op::Put(key(BUNDLE, hash.as_bytes()), bytes.to_vec()))
            .collect();
        ops.push(Op::Put(
            key(DEPLOY, &deployment.sequence.to_be_bytes()),
            record,
        ));
        self.backend.commit(ops)
    }

    /// Rewrites deployment records (retention retiring or collecting
    /// them) and deletes the bundles with the content hashes in `bundles`,
    /// in one atomic commit.
    pub fn update_deployments(&self, records: &[Deployment], bundles: &[String]) -> Commit {
        let mut ops = Vec::new();
        for deployment in records {
            match encode(deployment) {
                Ok(record) => ops.push(Op::Put(
                    key(DEPLOY, &deployment.sequence.to_be_bytes()),
                    record,
                )),
                Err(e) => return Box::pin(std::future::ready(Err(e))),
            }
        }
        for hash in bundles {
            ops.push(Op::Delete(key(BUNDLE, hash.as_bytes())));
        }
        self.backend.commit(ops)
    }

    /// Every deployment, oldest first.
    pub fn deployments(&self) -> Result<Vec<Deployment>> {
        self.backend
            .scan_prefix(DEPLOY)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// The newest deployment.
    pub fn latest_deployment(&self) -> Result<Option<Deployment>> {
        self.backend
            .last_with_prefix(DEPLOY)?
            .map(|(k, v)| decode(&k, &v))
            .transpose()
    }

    /// A bundle's bytes by content hash.
    pub fn bundle(&self, content_hash: &str) -> Result<Option<Vec<u8>>> {
        self.backend.get(&key(BUNDLE, content_hash.as_bytes()))
    }

    /// Saves a run, keeping the index of queued and executing runs in step.
    /// The write is handed to the committer at once (so dropping the
    /// returned future does not cancel it); the future resolves when it is
    /// durable.
    pub fn put_run(&self, run: &Run) -> Commit {
        let mut batch = Batch::default();
        batch.put_run(run);
        self.commit(batch)
    }

    /// Commits a batch atomically. As with [`Store::put_run`], the writes are
    /// handed to the committer at once, in order with every earlier commit.
    pub fn commit(&self, batch: Batch) -> Commit {
        if let Some(e) = batch.error {
            return Box::pin(std::future::ready(Err(e)));
        }
        let durable = self.backend.commit(batch.ops);
        self.made(batch.runs, batch.streams, batch.finished);
        durable
    }

    /// Commits a batch atomically, as [`Store::commit`] does, for a writer
    /// that does not wait for it to be durable (see
    /// [`Backend::commit_unawaited`]): it is durable with the next group of
    /// commits. Fails if the batch could not be encoded or the store is
    /// closed.
    pub fn commit_unawaited(&self, batch: Batch) -> Result<()> {
        if let Some(e) = batch.error {
            return Err(e);
        }
        self.backend.commit_unawaited(batch.ops)?;
        self.made(batch.runs, batch.streams, batch.finished);
        Ok(())
    }

    /// Tells the listener, once the commit just made is durable, which
    /// runs it wrote and whose streams it appended to, whether or not the
    /// caller awaits it (a claim does not, and a handler whose client went
    /// away is dropped mid-await).
    fn made(&self, runs: Vec<RunId>, streams: Vec<RunId>, finished: Vec<RunId>) {
        if let Some(listening) = self.listener.get()
            && !(runs.is_empty() && streams.is_empty())
        {
            listening.made(runs, streams, finished);
        }
    }

    /// Holds a batch's writes for the next commit made through the backend
    /// (see [`Backend::defer`]): they are durable once a commit made after
    /// this call is, and in the meantime reads do not see them. For a live
    /// run's journal entries, which only that run's own later commits
    /// depend on. A batch that writes run records or realtime streams, or
    /// failed to encode, is committed at once instead (its listeners and
    /// its error need a commit).
    pub fn defer(&self, batch: Batch) {
        if batch.error.is_some() || !batch.runs.is_empty() || !batch.streams.is_empty() {
            drop(self.commit(batch));
            return;
        }
        self.backend.defer(batch.ops);
    }

    /// Resolves once every commit made so far is durable; see
    /// [`Backend::settled`]. The API awaits it before answering.
    pub fn settled(&self) -> Commit {
        self.backend.settled()
    }

    /// A run's journal, oldest entry first.
    pub fn journal(&self, run: &RunId) -> Result<Vec<JournalRecord>> {
        Ok(self.journal_sized(run)?.0)
    }

    /// A run's journal, oldest first, and its size as stored in bytes: its
    /// journal keys, and the entries its record holds if it finished (see
    /// [`crate::journal`]).
    pub fn journal_sized(&self, run: &RunId) -> Result<(Vec<JournalRecord>, u64)> {
        let raw = self.backend.scan_prefix(&journal_prefix(run))?;
        let mut bytes = raw.iter().map(|(_, v)| v.len() as u64).sum();
        let mut records = Vec::with_capacity(raw.len());
        for (k, v) in &raw {
            records.extend(entries_of(k, v)?);
        }
        if let Some((k, held)) = self.journal_in_record(run)? {
            bytes += held.len() as u64;
            let before = records.len();
            records.extend(entries_of(&k, held.as_bytes())?);
            // Entries are numbered in the order written; those the record
            // holds were written last, unless an entry was journaled after
            // the run finished (under a key).
            if before > 0 {
                records.sort_by_key(|r| r.seq);
            }
        }
        Ok((records, bytes))
    }

    /// The journal entries a finished run's record holds, with the record's
    /// key; `None` for a run that has not finished (only the commit that
    /// finishes a run writes entries into its record) or holds none.
    fn journal_in_record(&self, run: &RunId) -> Result<Option<(Vec<u8>, String)>> {
        let k = key(RUN, run.as_str().as_bytes());
        let Some(bytes) = self.backend.get(&k)? else {
            return Ok(None);
        };
        if !status_of(&k, &bytes)?.is_final() {
            return Ok(None);
        }
        Ok(decode::<Run>(&k, &bytes)?.journal.map(|held| (k, held)))
    }

    /// The number of the last entry of a run's journal (0 if none). Reads
    /// its last key and its record's status, not the journal (and the
    /// whole record only if the run finished, when it may hold the last
    /// entries).
    pub fn last_journal_seq(&self, run: &RunId) -> Result<u64> {
        let in_keys = match self.backend.last_with_prefix(&journal_prefix(run))? {
            Some((k, v)) => last_seq_of(&k, &v)?,
            None => 0,
        };
        let in_record = match self.journal_in_record(run)? {
            Some((k, held)) => entries_of(&k, held.as_bytes())?.last().map_or(0, |r| r.seq),
            None => 0,
        };
        Ok(in_keys.max(in_record))
    }

    /// The snapshot layers of one attempt of a run, oldest first, each
    /// verified against its checksum.
    pub fn layers(&self, run: &RunId, attempt: u32) -> Result<Vec<StoredLayer>> {
        let mut prefix = snap_prefix(run);
        prefix.extend_from_slice(&attempt.to_be_bytes());
        prefix.push(b'/');
        self.backend
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(k, v)| {
                let number = k[k.len() - 4..]
                    .try_into()
                    .map(u32::from_be_bytes)
                    .unwrap_or(0);
                let corrupt = |reason: String| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason,
                };
                let layer = match v.strip_prefix(SEALED_LAYER) {
                    Some(sealed) => {
                        let seal = self.seal.as_deref().ok_or_else(|| {
                            corrupt("the layer is sealed and this store has no master key".into())
                        })?;
                        let plain = seal.open(&k, sealed).map_err(|e| corrupt(e.to_string()))?;
                        SnapshotLayer::decode(&plain)
                    }
                    None => SnapshotLayer::decode(&v),
                }
                .map_err(|e| corrupt(e.to_string()))?;
                Ok(StoredLayer {
                    number,
                    layer,
                    stored_bytes: v.len() as u64,
                })
            })
            .collect()
    }

    /// The keys of every snapshot layer of a run (to delete them).
    pub fn layer_keys(&self, run: &RunId) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .backend
            .scan_prefix(&snap_prefix(run))?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Timers due at or after `from` and before `until`, earliest first, at
    /// most `limit`. Reads only that range of the timer index.
    pub fn timers(&self, from: Timestamp, until: Timestamp, limit: usize) -> Result<Vec<TimerKey>> {
        let start = key(TIMER, &from.as_millis().to_be_bytes());
        let end = key(TIMER, &until.as_millis().to_be_bytes());
        self.backend
            .scan_range(&start, &end, limit)?
            .iter()
            .map(|(k, _)| TimerKey::decode(k))
            .collect()
    }

    /// Whether a timer is still set.
    pub fn has_timer(&self, timer: &TimerKey) -> Result<bool> {
        Ok(self.backend.get(&timer.encode())?.is_some())
    }

    /// A run by id.
    pub fn run(&self, id: &RunId) -> Result<Option<Run>> {
        let k = key(RUN, id.as_str().as_bytes());
        self.backend.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// A run's status alone, for a caller waiting for the run to finish:
    /// read up to the status field of its record (see [`status_of`]).
    pub fn run_status(&self, id: &RunId) -> Result<Option<kiln_types::RunStatus>> {
        let k = key(RUN, id.as_str().as_bytes());
        self.backend.get(&k)?.map(|v| status_of(&k, &v)).transpose()
    }

    /// Every run, oldest first (ids sort by creation time).
    pub fn runs(&self) -> Result<Vec<Run>> {
        self.backend
            .scan_prefix(RUN)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// At most `limit` runs, newest first, all older than `older_than` when
    /// it is given: one page of a listing, read from the run keys alone
    /// (ids sort by creation time), however many runs are stored.
    pub fn runs_newest(&self, older_than: Option<&RunId>, limit: usize) -> Result<Vec<Run>> {
        let end = match older_than {
            Some(id) => key(RUN, id.as_str().as_bytes()),
            None => crate::sled_unapplied::prefix_end(RUN).unwrap_or_default(),
        };
        self.backend
            .scan_range_rev(RUN, &end, limit)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// At most `limit` runs newer than `newer_than`, oldest first: the
    /// other way through the same keys as [`Store::runs_newest`].
    pub fn runs_oldest_after(&self, newer_than: &RunId, limit: usize) -> Result<Vec<Run>> {
        // The smallest key after the run's own.
        let mut start = key(RUN, newer_than.as_str().as_bytes());
        start.push(0);
        let end = crate::sled_unapplied::prefix_end(RUN).unwrap_or_default();
        self.backend
            .scan_range(&start, &end, limit)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Every run that is queued or executing, in id (creation) order. Reads
    /// only that index, not every run.
    pub fn active_runs(&self) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        for (k, _) in self.backend.scan_prefix(ACTIVE)? {
            let id = String::from_utf8_lossy(&k[ACTIVE.len()..]).into_owned();
            let run_key = key(RUN, id.as_bytes());
            if let Some(bytes) = self.backend.get(&run_key)? {
                runs.push(decode(&run_key, &bytes)?);
            }
        }
        Ok(runs)
    }
}

/// A trigger's idempotency key: the run it made, until when it counts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotentRun {
    /// The run the key made.
    pub run: RunId,
    /// When the key stops deduplicating.
    pub expires_at: Timestamp,
}

impl Batch {
    /// Forgets an idempotency key: the next trigger with it makes a new run.
    pub fn delete_idempotency_key(&mut self, key_hash: &str) -> &mut Self {
        self.ops.push(Op::Delete(key(IDEM, key_hash.as_bytes())));
        self
    }

    /// Records the run an idempotency key made (`idem/<key>`).
    pub fn put_idempotency_key(&mut self, key_hash: &str, entry: &IdempotentRun) -> &mut Self {
        match encode(entry) {
            Ok(v) => self.ops.push(Op::Put(key(IDEM, key_hash.as_bytes()), v)),
            Err(e) => self.error = Some(e),
        }
        self
    }
}

impl Store {
    /// The run an idempotency key made, if the key is recorded.
    pub fn idempotent_run(&self, key_hash: &str) -> Result<Option<IdempotentRun>> {
        let k = key(IDEM, key_hash.as_bytes());
        self.backend.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn a_status_is_read_from_the_start_of_a_record_or_from_the_whole_of_it() {
        use kiln_types::{DeploymentId, RunStatus};
        let mut run = Run::queued(
            RunId::generate(7),
            "hello-world",
            DeploymentId::generate(1),
            "3",
            "{\"name\":\"Ada\"}",
            Timestamp(7),
        );
        for status in [
            RunStatus::Queued,
            RunStatus::Executing,
            RunStatus::Completed,
        ] {
            run.status = status;
            let record = encode_run(&run).expect("encodes");
            assert_eq!(status_near_the_start(&record), Some(status));
            assert_eq!(status_of(b"run/x", &record).expect("reads"), status);
        }
        // Records with named fields, as Kiln wrote them before numbering
        // them, are read up to their status too.
        let named = rmp_serde::to_vec_named(&run).expect("encodes");
        assert_eq!(status_near_the_start(&named), Some(RunStatus::Completed));
        // A value other than a string before the status: the whole record
        // is decoded.
        run.status = RunStatus::Failed;
        let serde_json::Value::Object(fields) = serde_json::to_value(&run).expect("a map") else {
            panic!("a run is a map");
        };
        let mut fields: Vec<_> = fields.into_iter().collect();
        fields.sort_by_key(|(name, _)| name != "maxAttempts");
        let mut record = Vec::new();
        rmp::encode::write_map_len(&mut record, fields.len() as u32).expect("encodes");
        for (name, value) in &fields {
            rmp::encode::write_str(&mut record, name).expect("encodes");
            rmp_serde::encode::write(&mut record, value).expect("encodes");
        }
        assert_eq!(status_near_the_start(&record), None);
        assert_eq!(
            status_of(b"run/x", &record).expect("reads"),
            RunStatus::Failed
        );
        // A status Kiln does not know is an error, with the record's key,
        // whether read from the start of the record or from the whole of
        // it.
        let mut record = Vec::new();
        rmp::encode::write_map_len(&mut record, 3).expect("encodes");
        for (number, value) in ["run_x", "hello-world", "ASLEEP"].into_iter().enumerate() {
            rmp::encode::write_uint(&mut record, number as u64).expect("encodes");
            rmp::encode::write_str(&mut record, value).expect("encodes");
        }
        assert_eq!(
            leading_fields(&record),
            Some(["run_x", "hello-world", "ASLEEP"])
        );
        let error = status_of(b"run/x", &record).expect_err("an unknown status");
        assert!(
            error.to_string().contains("run/x") && error.to_string().contains("ASLEEP"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_listener_hears_which_runs_a_commit_finished() {
        use kiln_types::{DeploymentId, RunStatus};
        let store = Store::new(Arc::new(MemoryBackend::new()));
        let (told, mut heard) = tokio::sync::mpsc::unbounded_channel();
        store.on_runs_changed(Box::new(move |changes: Changes<'_>| {
            let _ = told.send((changes.runs.to_vec(), changes.finished.to_vec()));
        }));
        let run = |n: u64, status: RunStatus| {
            let mut run = Run::queued(
                RunId::generate(n),
                "t",
                DeploymentId::generate(1),
                "1",
                "{}",
                Timestamp(1),
            );
            run.status = status;
            run
        };
        let (queued, completed) = (run(1, RunStatus::Queued), run(2, RunStatus::Completed));
        let mut batch = Batch::default();
        batch.put_run(&queued).put_run(&completed);
        store.commit(batch).await.expect("a commit");
        let told = tokio::time::timeout(std::time::Duration::from_secs(10), heard.recv())
            .await
            .expect("heard within 10 s");
        assert_eq!(
            told,
            Some((
                vec![queued.id.clone(), completed.id.clone()],
                vec![completed.id.clone()]
            ))
        );
    }

    /// A batch whose only write failed to encode: its commit must fail, not
    /// be skipped as a batch with nothing to write.
    fn failed_batch() -> Batch {
        Batch {
            error: Some(StoreError::Backend("encoding a run's record: test".into())),
            ..Batch::default()
        }
    }

    #[test]
    fn a_batch_whose_only_write_failed_to_encode_is_not_empty_and_does_not_commit() {
        let store = Store::new(Arc::new(MemoryBackend::new()));
        assert!(Batch::default().is_empty());
        let batch = failed_batch();
        assert!(!batch.is_empty(), "committing it must report the failure");
        let committed = futures_executor::block_on(store.commit(batch));
        assert!(matches!(committed, Err(StoreError::Backend(_))));
        assert!(matches!(
            store.commit_unawaited(failed_batch()),
            Err(StoreError::Backend(_))
        ));
    }
}
