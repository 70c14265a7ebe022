//! Admitting a triggered run that carries an idempotency key or a debounce
//! key: either an existing run answers the trigger (the key's run within its
//! TTL, or the run holding the key's open debounce window), or the new run
//! is recorded together with its key. Backends (the trigger route, v3 batch
//! items) and tasks triggering children go through the same steps, under
//! one lock so two triggers with one key cannot both make a run.

use super::Executor;
use futures_util::FutureExt;
use kiln_store::{Batch, IdempotentRun};
use kiln_types::{Run, RunId, Timestamp};
use sha2::{Digest, Sha256};

/// Trigger.dev's default idempotency key lifetime: 30 days.
pub(crate) const DEFAULT_KEY_TTL_MS: u64 = 30 * 86_400_000;

/// How long a request idempotency key (`x-trigger-request-idempotency-key`,
/// the id the official SDK keeps across its automatic retries of one call)
/// answers a retried trigger with the run the first attempt made: a day,
/// far longer than the SDK's retries last.
pub(crate) const REQUEST_KEY_TTL_MS: u64 = 86_400_000;

/// An idempotency key as the store keeps it: the hash the SDK sends (or the
/// host derives for a task's key) and how long it deduplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey {
    /// The hash.
    pub(crate) hash: String,
    /// Milliseconds it counts for.
    pub(crate) ttl_ms: u64,
}

/// What answers a keyed or debounced trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// The run made earlier with the same idempotency key (`isCached`).
    Cached(RunId),
    /// The run an earlier attempt of the same request made: the SDK retried
    /// a trigger whose response it never received.
    Retried(RunId),
    /// The run holding the debounce window, with the trigger folded in.
    Debounced(RunId),
}

impl Admitted {
    /// The run that answers.
    pub(crate) fn run_id(&self) -> &RunId {
        match self {
            Admitted::Cached(id) | Admitted::Retried(id) | Admitted::Debounced(id) => id,
        }
    }
}

/// Where a task's idempotency key applies (Trigger.dev's scopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyScope {
    /// Across every run.
    Global,
    /// Within the triggering run, across its attempts (the default).
    Run,
    /// Within one attempt of the triggering run.
    Attempt,
}

impl KeyScope {
    /// Reads `global`, `run` or `attempt`.
    pub(crate) fn parse(text: Option<&str>) -> Result<KeyScope, String> {
        match text {
            None | Some("run") => Ok(KeyScope::Run),
            Some("global") => Ok(KeyScope::Global),
            Some("attempt") => Ok(KeyScope::Attempt),
            Some(other) => Err(format!(
                "idempotency key scope `{other}` is not one of run, attempt, global"
            )),
        }
    }
}

/// A batch's items stream under way; ends when dropped.
pub(crate) struct ItemStream {
    streams: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    batch: String,
}

impl Drop for ItemStream {
    fn drop(&mut self) {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.batch);
    }
}

/// The keys a backend's trigger is admitted under.
#[derive(Debug, Default)]
pub(crate) struct AdmissionKeys {
    /// The user's idempotency key.
    pub(crate) key: Option<IdempotencyKey>,
    /// The SDK's request idempotency key ([`request_key`]).
    pub(crate) request: Option<IdempotencyKey>,
    /// The one-time public token the trigger came with ([`one_time_key`]).
    pub(crate) one_time: Option<IdempotencyKey>,
    /// For a `PENDING_VERSION` run, its trigger, kept until a deploy brings
    /// its task (see `pending`).
    pub(crate) pending_trigger: Option<Vec<u8>>,
}

/// Why a trigger was not admitted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdmitError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    /// The one-time public token has triggered a run already.
    #[error("this one-time public access token has already been used to trigger a run")]
    TokenUsed,
}

/// The entry that records a one-time public token's use, kept as long as
/// the token could be presented.
pub(crate) fn one_time_key(token: &str, ttl_ms: u64) -> IdempotencyKey {
    IdempotencyKey {
        hash: format!("one-time-{}", hex::encode(Sha256::digest(token.as_bytes()))),
        ttl_ms,
    }
}

/// The entry a user's idempotency key is kept under: its hash within its
/// task, as Trigger.dev scopes keys (the same key on two tasks makes two
/// runs, and a trigger of one task never answers with another's run).
fn task_key(task: &str, hash: &str) -> String {
    format!("task/{task}/{hash}")
}

/// The idempotency entry a request idempotency key is kept under: its own
/// namespace, so it never matches a user's key, and the environment's, so
/// two environments' requests never match each other.
pub(crate) fn request_key(environment: &str, header: &str) -> IdempotencyKey {
    let hash = Sha256::digest(format!("request:{environment}:{header}").as_bytes());
    IdempotencyKey {
        hash: format!("request-{}", hex::encode(hash)),
        ttl_ms: REQUEST_KEY_TTL_MS,
    }
}

/// The hash a key made inside a task is stored under: SHA-256 of the key,
/// joined with `-` to the triggering run's id (scope run) and its attempt
/// number (scope attempt), as Trigger.dev's SDK derives it.
pub(crate) fn scoped_key_hash(key: &str, scope: KeyScope, run: &RunId, attempt: u32) -> String {
    let parts = match scope {
        KeyScope::Global => key.to_string(),
        KeyScope::Run => format!("{key}-{run}"),
        KeyScope::Attempt => format!("{key}-{run}-{attempt}"),
    };
    hex::encode(Sha256::digest(parts.as_bytes()))
}

impl Executor {
    /// Takes the lock of one request idempotency key's stripe. Take it
    /// before [`Executor::serialize_triggers`], never after.
    pub(crate) async fn lock_key(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.shared.key_locks.lock_key(key).await
    }

    /// Marks `batch` as having its items streamed in, unless a stream of it
    /// is under way already (`None`): one stream of a batch at a time, so a
    /// re-send racing the first cannot make an index twice, without a lock
    /// anything else waits on.
    pub(crate) fn begin_item_stream(&self, batch: &str) -> Option<ItemStream> {
        let streams = self.shared.item_streams.clone();
        let mut active = streams.lock().unwrap_or_else(|p| p.into_inner());
        if !active.insert(batch.to_string()) {
            return None;
        }
        drop(active);
        Some(ItemStream {
            streams,
            batch: batch.to_string(),
        })
    }

    /// Takes the lock keyed and debounced triggers share, when `keyed`.
    /// Hold it from [`Executor::existing`] until the new run is committed.
    pub(crate) async fn serialize_triggers(
        &self,
        keyed: bool,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match keyed {
            true => Some(self.shared.trigger_lock.lock().await),
            false => None,
        }
    }

    /// The run that answers `run`'s trigger instead of `run` itself, if any:
    /// the run `key` made within its TTL, or the run holding the open
    /// debounce window of `run`'s debounce key (which this call moves and,
    /// in trailing mode, updates).
    pub(crate) async fn existing(
        &self,
        run: &Run,
        key: Option<&IdempotencyKey>,
        now: Timestamp,
    ) -> kiln_store::Result<Option<Admitted>> {
        let store = &self.shared.store;
        if let Some(key) = key {
            // The key within the run's task; or, in a store an older Kiln
            // wrote, the key alone, if its run is of the same task.
            let scoped = store.idempotent_run(&task_key(&run.task_id, &key.hash))?;
            let entry = match scoped {
                Some(entry) => Some(entry),
                None => store.idempotent_run(&key.hash)?,
            };
            if let Some(entry) = entry
                && entry.expires_at > now
                && let Some(found) = store.run(&entry.run)?
                && found.task_id == run.task_id
            {
                return Ok(Some(Admitted::Cached(entry.run)));
            }
        }
        if let Some(window) = &run.debounce
            && let Some(holder) = store.debounced_run(&run.task_id, &window.key)?
            && let Some(held) = self.debounce(&holder, run).await?
        {
            return Ok(Some(Admitted::Debounced(held.id)));
        }
        Ok(None)
    }

    /// Admits a run a backend triggered (the trigger route, a replay): a
    /// retried request, an idempotency key or a debounce window may answer
    /// with an existing run; a one-time token already used refuses it;
    /// otherwise the run is committed with its keys, its debounce window
    /// and its timers, and queued. Returns the run that answers and how.
    pub(crate) async fn admit_new(
        &self,
        run: Run,
        keys: AdmissionKeys,
        now: Timestamp,
    ) -> Result<(RunId, Option<Admitted>), AdmitError> {
        let AdmissionKeys {
            key,
            request,
            one_time,
            pending_trigger,
        } = keys;
        // A request key alone needs only its own stripe: the SDK's triggers
        // do not wait on each other. Keys shared across requests take the
        // trigger lock.
        let _request = match &request {
            Some(request) => Some(self.shared.key_locks.lock_key(&request.hash).await),
            None => None,
        };
        let keyed = key.is_some() || one_time.is_some() || run.debounce.is_some();
        let _serial = self.serialize_triggers(keyed).await;
        let store = &self.shared.store;
        if let Some(request) = &request
            && let Some(entry) = store.idempotent_run(&request.hash)?
            && entry.expires_at > now
            && store.run(&entry.run)?.is_some()
        {
            return Ok((entry.run.clone(), Some(Admitted::Retried(entry.run))));
        }
        // A one-time token is used up by a run or by a batch.
        if let Some(token) = &one_time
            && (store.idempotent_run(&token.hash)?.is_some()
                || store.batch_by_key(&token.hash)?.is_some())
        {
            return Err(AdmitError::TokenUsed);
        }
        if let Some(found) = self.existing(&run, key.as_ref(), now).await? {
            return Ok((found.run_id().clone(), Some(found)));
        }
        let mut batch = Batch::default();
        Self::stage_new(&mut batch, &run, key.as_ref(), now);
        // The request's key and a one-time token's use go in the same batch
        // as the run: a retry finds both or neither, and a token is used up
        // exactly when its run exists.
        for extra in [&request, &one_time].into_iter().flatten() {
            batch.put_idempotency_key(
                &extra.hash,
                &IdempotentRun {
                    run: run.id.clone(),
                    expires_at: Timestamp(now.as_millis().saturating_add(extra.ttl_ms)),
                },
            );
        }
        if let Some(trigger) = pending_trigger {
            batch.put_pending(&run.id, trigger);
        }
        // The commit is visible to the next reader at once, and the run
        // queued (see `commit_admitting`); only its durability is awaited,
        // with the locks released. The trigger is answered once it is.
        let durable = self.commit_admitting(batch, std::slice::from_ref(&run));
        drop(_serial);
        drop(_request);
        durable.await?;
        Ok((run.id, None))
    }

    /// Hands `batch`, which admits `runs`, to the store, and sets the runs
    /// on their way at once (see [`Executor::admit`]): a queued run
    /// executes while the commit is made durable. Whatever its slice
    /// commits (its claim, its end) is durable only after its admission,
    /// since the store makes commits durable in the order they were handed
    /// over, and its guest makes no effect outside its sandbox before then
    /// (a fetch waits for what came before it to be durable). A crash
    /// before the admission is durable loses the run with all it did, and
    /// whoever triggered it was never answered. A commit that fails at once
    /// (its batch could not be encoded, the store is closed) sets no run on
    /// its way. Returns the commit, which resolves once it is durable:
    /// answer the trigger only then.
    pub(crate) fn commit_admitting(&self, batch: Batch, runs: &[Run]) -> kiln_store::Commit {
        let mut durable = self.shared.store.commit(batch);
        let at_once = (&mut durable).now_or_never();
        if let Some(Err(failed)) = at_once {
            return Box::pin(std::future::ready(Err(failed)));
        }
        for run in runs {
            self.admit(run);
        }
        match at_once {
            Some(done) => Box::pin(std::future::ready(done)),
            None => durable,
        }
    }

    /// Forgets the idempotency key `hash` of `task` (Trigger.dev's
    /// `idempotencyKeys.reset`): the next trigger with it makes a new run.
    /// Returns the run the key had made, if it had one.
    pub(crate) async fn reset_idempotency_key(
        &self,
        task: &str,
        hash: &str,
    ) -> kiln_store::Result<Option<RunId>> {
        let _serial = self.serialize_triggers(true).await;
        let store = &self.shared.store;
        let mut batch = Batch::default();
        let mut found = None;
        let scoped = task_key(task, hash);
        if let Some(entry) = store.idempotent_run(&scoped)? {
            batch.delete_idempotency_key(&scoped);
            found = Some(entry.run);
        }
        // A store an older Kiln wrote keeps the key alone.
        if let Some(entry) = store.idempotent_run(hash)?
            && store.run(&entry.run)?.is_some_and(|r| r.task_id == task)
        {
            batch.delete_idempotency_key(hash);
            found.get_or_insert(entry.run);
        }
        if found.is_some() {
            store.commit(batch).await?;
        }
        Ok(found)
    }

    /// Adds a new run to `batch` with its timers, its debounce window and
    /// its idempotency key.
    pub(crate) fn stage_new(
        batch: &mut Batch,
        run: &Run,
        key: Option<&IdempotencyKey>,
        now: Timestamp,
    ) {
        batch.put_new_run(run);
        crate::metrics::observe_run(None, run);
        if let Some(window) = &run.debounce {
            batch.put_debounce(&run.task_id, &window.key, &run.id);
        }
        if let Some(key) = key {
            batch.put_idempotency_key(
                &task_key(&run.task_id, &key.hash),
                &IdempotentRun {
                    run: run.id.clone(),
                    expires_at: Timestamp(now.as_millis().saturating_add(key.ttl_ms)),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_make_distinct_hashes() {
        let run = RunId::generate(1);
        let other = RunId::generate(2);
        let global = scoped_key_hash("k", KeyScope::Global, &run, 1);
        assert_eq!(global, scoped_key_hash("k", KeyScope::Global, &other, 2));
        assert_eq!(global, hex::encode(Sha256::digest(b"k")));
        let by_run = scoped_key_hash("k", KeyScope::Run, &run, 1);
        assert_eq!(by_run, scoped_key_hash("k", KeyScope::Run, &run, 2));
        assert_ne!(by_run, scoped_key_hash("k", KeyScope::Run, &other, 1));
        let by_attempt = scoped_key_hash("k", KeyScope::Attempt, &run, 1);
        assert_ne!(by_attempt, scoped_key_hash("k", KeyScope::Attempt, &run, 2));
        assert_ne!(by_attempt, by_run);
        assert_eq!(KeyScope::parse(None), Ok(KeyScope::Run));
        assert!(KeyScope::parse(Some("tenant")).is_err());
    }
}
