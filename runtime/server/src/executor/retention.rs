//! Retention: a background sweeper that deletes finished runs, and
//! everything that belongs to them, once they are older than the server's
//! retention (`kiln serve --retention`, 30 days unless set), and the keys
//! that outlive their runs (idempotency keys, debounce windows, wait
//! tokens, batches, uploaded packets), and the versions no unfinished run
//! is on once a newer one has been current for longer than the retention:
//! first retired (they take no new runs), then, if the next pass still
//! finds no unfinished run on them, collected (bundle and compiled
//! artifact deleted; the record stays, so the version's history and its
//! finished runs still read).
//!
//! The sweeper goes through each keyspace a page at a time, so the store is
//! never held for long. A run is deleted under its run lock, after reading
//! it again: a run that changed since the page was read (a replay, a
//! metadata update) is judged by what it is now. The deletion is applied
//! while the lock is held, so nothing that takes the lock next can write
//! the run back.

use super::Executor;
use kiln_store::Batch;
use kiln_store::retention::{Swept, finished_at};
use kiln_types::Timestamp;
use std::time::Duration;

/// Runs (or keys) read per page.
const PAGE: usize = 256;

/// Keys retention deletes before it reads whether the store's file is
/// mostly free space.
const CHECK_AFTER: usize = 10_000;

/// How often it reads that at most while it deletes anything.
const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// What one pass of the sweeper deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Finished runs deleted.
    pub runs: usize,
    /// Keys deleted with them.
    pub run_keys: usize,
    /// Other records deleted: idempotency keys, debounce windows, tokens,
    /// batches and packets.
    pub others: usize,
    /// Versions retired or collected (their bundles and compiled artifacts
    /// deleted).
    pub versions: usize,
}

/// How long the sweeper rests between passes: a tenth of the retention,
/// between a quarter of a second and a minute.
pub(crate) fn rest(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_millis(250), Duration::from_secs(60))
}

impl Executor {
    /// Starts the sweeper: a pass now and then every [`rest`].
    pub(crate) fn start_retention(&self, retention: Duration) {
        let executor = self.clone();
        tokio::spawn(async move {
            let store = &executor.shared.store;
            if let Err(error) = store.date_undated_packets(Timestamp::now()).await {
                tracing::warn!(%error, "dating packets for retention failed");
            }
            // Keys deleted since the store's file was last looked at, and
            // when that was.
            let mut since_check = 0usize;
            let mut last_check = std::time::Instant::now();
            // How far the runs' keyspace has been read for runs with no
            // `finished/` entry: every pass goes on from there, and a
            // start reads it from the beginning again.
            let mut unindexed_read_to = None;
            loop {
                let started = std::time::Instant::now();
                let deleted = match executor.sweep(retention, &mut unindexed_read_to).await {
                    Ok(pass) if pass != Pass::default() => {
                        since_check += pass.run_keys + pass.others;
                        tracing::info!(
                            runs = pass.runs,
                            keys = pass.run_keys,
                            others = pass.others,
                            versions = pass.versions,
                            "retention deleted what expired"
                        );
                        true
                    }
                    Ok(_) => false,
                    Err(error) => {
                        tracing::warn!(%error, "a retention pass failed");
                        false
                    }
                };
                // Once a wave of deletions is over (or after very many),
                // whether the store's file is now mostly free space: if it
                // is, the next start compacts it.
                // Hourly too, whatever was deleted: a few runs with large
                // snapshots free much space in few keys.
                let hourly = since_check > 0 && last_check.elapsed() >= CHECK_EVERY;
                if (!deleted && since_check >= CHECK_AFTER)
                    || since_check >= CHECK_AFTER * 100
                    || hourly
                {
                    let store = executor.shared.store.clone();
                    let keys = if hourly { usize::MAX } else { since_check };
                    let suggested = tokio::task::spawn_blocking(move || {
                        kiln_sandbox::cpu::blocking(|| {
                            store.suggest_compaction(kiln_store::COMPACT_FROM, keys)
                        })
                    })
                    .await;
                    // Read or failed, it is not read again before more is
                    // deleted (or an hour passes).
                    if !matches!(suggested, Ok(Ok(None))) {
                        since_check = 0;
                        last_check = std::time::Instant::now();
                    }
                    match suggested
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                    {
                        Ok(Some(true)) => tracing::info!(
                            "the store's file is mostly space deleted data left: it is compacted at the next start"
                        ),
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "reading whether the store is sparse failed")
                        }
                    }
                }
                // A pass that found nothing to delete only read: resting ten
                // times as long as it took keeps reading under a tenth of a
                // core. A pass that deleted keeps pace with what expires.
                let rest = match deleted {
                    true => rest(retention),
                    false => rest(retention).max(started.elapsed() * 10),
                };
                tokio::time::sleep(rest).await;
            }
        });
    }

    /// One pass over every keyspace: deletes what finished more than
    /// `retention` ago. Runs that finished soon after they were made are
    /// read from the runs' keyspace after `unindexed_read_to`, which the
    /// pass moves on to the last run it read there (see
    /// [`Store::expired_unindexed`](kiln_store::Store::expired_unindexed)).
    pub async fn sweep(
        &self,
        retention: Duration,
        unindexed_read_to: &mut Option<Vec<u8>>,
    ) -> kiln_store::Result<Pass> {
        let now = Timestamp::now();
        let cutoff = Timestamp(now.as_millis().saturating_sub(retention.as_millis() as u64));
        let mut pass = Pass::default();
        // Once per store: runs from before the indexes get their entries,
        // which the pass reads instead of every run.
        self.shared.store.index_runs().await?;
        let deployments = &self.shared.deployments;
        // Before the scan: the versions it may show unused.
        let collectable = deployments.collectable()?;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .shared
                .store
                .expired_runs(after.as_deref(), PAGE, cutoff)?;
            let (deleted, keys) = self.delete_runs(page.expired, cutoff).await?;
            pass.runs += deleted;
            pass.run_keys += keys;
            if !page.stale.is_empty() {
                let mut batch = Batch::default();
                batch.delete_keys(page.stale);
                self.shared.store.commit(batch).await?;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        loop {
            let page =
                self.shared
                    .store
                    .expired_unindexed(unindexed_read_to.as_deref(), PAGE, cutoff)?;
            let (deleted, keys) = self.delete_runs(page.expired, cutoff).await?;
            pass.runs += deleted;
            pass.run_keys += keys;
            // Only once its expired runs are deleted: a failed pass reads
            // the page again.
            if page.last.is_some() {
                *unindexed_read_to = page.last;
            }
            if page.next.is_none() {
                break;
            }
        }
        // After the collectable versions were read: a run started on one
        // since is in this set.
        let in_use = self.shared.store.open_versions()?;
        pass.versions += deployments.sweep(&collectable, &in_use, cutoff).await?;
        let store = &self.shared.store;
        // Keys a trigger may be writing: each page under the lock keyed
        // triggers take, so a key a trigger just wrote is not deleted.
        pass.others += pages(|after| async move {
            let _serial = self.serialize_triggers(true).await;
            store.sweep_idempotency_keys(after, PAGE, now).await
        })
        .await?;
        pass.others += pages(|after| async move {
            let _serial = self.serialize_triggers(true).await;
            store.sweep_debounce_keys(after, PAGE).await
        })
        .await?;
        pass.others += pages(|after| async move {
            let _serial = self.serialize_triggers(true).await;
            store.sweep_batch_keys(after, PAGE, now).await
        })
        .await?;
        pass.others += pages(|after| store.sweep_tokens(after, PAGE, cutoff)).await?;
        pass.others += pages(|after| store.sweep_batches(after, PAGE, cutoff)).await?;
        pass.others += pages(|after| store.sweep_packets(after, PAGE, cutoff)).await?;
        Ok(pass)
    }

    /// Deletes each run, under its lock, if it still finished before
    /// `cutoff`; waits for the deletions to be durable together.
    async fn delete_runs(
        &self,
        runs: Vec<kiln_types::Run>,
        cutoff: Timestamp,
    ) -> kiln_store::Result<(usize, usize)> {
        let store = &self.shared.store;
        let mut commits = Vec::new();
        let (mut deleted, mut keys) = (0, 0);
        for run in runs {
            let _guard = self.shared.locks.lock(&run.id).await;
            let Some(now) = store.run(&run.id)? else {
                continue;
            };
            if finished_at(&now).is_none_or(|at| at >= cutoff) {
                continue;
            }
            let mut batch = Batch::default();
            keys += store.delete_run(&mut batch, &now)?;
            deleted += 1;
            commits.push(store.commit(batch));
        }
        for commit in commits {
            commit.await?;
        }
        Ok((deleted, keys))
    }
}

/// Runs `sweep` over every page of its keyspace; returns what it deleted.
async fn pages<F, Fut>(mut sweep: F) -> kiln_store::Result<usize>
where
    F: FnMut(Option<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = kiln_store::Result<Swept>>,
{
    let mut after: Option<Vec<u8>> = None;
    let mut deleted = 0;
    loop {
        let swept = sweep(after.take()).await?;
        deleted += swept.deleted;
        match swept.next {
            Some(next) => after = Some(next),
            None => return Ok(deleted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rest;
    use std::time::Duration;

    #[test]
    fn the_sweeper_rests_a_tenth_of_the_retention_within_bounds() {
        assert_eq!(rest(Duration::from_secs(2)), Duration::from_millis(250));
        assert_eq!(rest(Duration::from_secs(5)), Duration::from_millis(500));
        assert_eq!(
            rest(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(60)
        );
    }
}
