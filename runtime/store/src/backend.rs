//! The key-value backend trait that every store implementation provides.

use crate::Result;
use std::future::Future;
use std::pin::Pin;

/// One write of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Delete(Vec<u8>),
}

/// Which way a range scan walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// From the first key up.
    Ascending,
    /// From the last key down.
    Descending,
}

/// A commit in flight: resolves once its writes are durable.
pub type Commit = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// An ordered key-value map with atomic, durable, group-committed writes.
pub trait Backend: Send + Sync + 'static {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Every entry with `start <= key < end`, in `order`, at most `limit`.
    fn scan_range_in(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Every entry with `start <= key < end`, in key order, at most `limit`.
    fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_range_in(start, end, limit, Order::Ascending)
    }

    /// Every entry with `start <= key < end`, the last first, at most
    /// `limit`: a page of the newest runs, whose ids sort by creation time.
    fn scan_range_rev(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_range_in(start, end, limit, Order::Descending)
    }

    /// The last entry whose key starts with `prefix`.
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>>;

    /// Applies `ops` atomically and at once: every read made after this call
    /// returns sees them. The returned future resolves once they are durable;
    /// commits become durable in the order they were made.
    fn commit(&self, ops: Vec<Op>) -> Commit;

    /// Applies `ops` atomically and at once, as [`Backend::commit`] does,
    /// for a writer that does not wait for them to be durable: they become
    /// durable with the next group of commits, which the next commit waited
    /// for starts, or within a few milliseconds if none comes. Fails only
    /// if the store is closed or failed. By default, a commit not awaited.
    fn commit_unawaited(&self, ops: Vec<Op>) -> Result<()> {
        use futures_util::FutureExt;
        match self.commit(ops).now_or_never() {
            Some(Err(error)) => Err(error),
            _ => Ok(()),
        }
    }

    /// Holds `ops` to be applied with the next commit, atomically with it
    /// and ahead of its own writes, so they keep the place in the order of
    /// commits they would have had as a commit of their own now. Until then
    /// reads do not see them, and [`Backend::settled`] does not wait for
    /// them (commit nothing to make them durable); a backend applies them
    /// within a few milliseconds if no commit comes. For writes nothing
    /// waits on and nothing reads soon. By default they are committed at
    /// once.
    fn defer(&self, ops: Vec<Op>) {
        drop(self.commit(ops));
    }

    /// Resolves once every commit applied before this call is durable.
    ///
    /// Reads see commits at once, before they are on disk; anything that
    /// shows what it read to the outside world (an API response) awaits this
    /// first, so nothing a client has seen can be lost by a crash.
    fn settled(&self) -> Commit {
        Box::pin(std::future::ready(Ok(())))
    }

    /// After `deleted` keys were deleted, tells whether the store's file
    /// is at least `min_len` bytes and mostly space that deleted data left,
    /// and if it is, has it compacted the next time it is opened. Reads up
    /// to a quarter of the store: call it off the async runtime. `None`
    /// when it did not look, because `deleted` is too few for the file's
    /// size (one per KiB of file is enough). A backend with no file to
    /// compact answers `Some(false)`.
    fn suggest_compaction(&self, min_len: u64, deleted: usize) -> Result<Option<bool>> {
        let _ = (min_len, deleted);
        Ok(Some(false))
    }
}
