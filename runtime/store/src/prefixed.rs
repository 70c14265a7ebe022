//! One environment's keyspace inside a shared backend: every key is kept
//! under a fixed prefix (`env/<project>/<environment>/`), so each
//! environment's [`Store`](crate::Store) sees only its own runs, schedules,
//! tokens, queues, packets and deployments, while all of them share one
//! database, one committer and one group commit.

use crate::Result;
use crate::backend::{Backend, Commit, Op, Order};
use std::sync::Arc;

/// A backend whose keys all live under `prefix` in `inner`.
pub struct PrefixedBackend {
    inner: Arc<dyn Backend>,
    prefix: Vec<u8>,
}

impl PrefixedBackend {
    /// The keyspace under `prefix` of `inner`. The prefix must not be a
    /// prefix of any other keyspace's keys (end it with `/`).
    pub fn new(inner: Arc<dyn Backend>, prefix: impl Into<Vec<u8>>) -> Self {
        PrefixedBackend {
            inner,
            prefix: prefix.into(),
        }
    }

    fn outer(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    fn outer_ops(&self, ops: Vec<Op>) -> Vec<Op> {
        ops.into_iter()
            .map(|op| match op {
                Op::Put(k, v) => Op::Put(self.outer(&k), v),
                Op::Delete(k) => Op::Delete(self.outer(&k)),
            })
            .collect()
    }

    fn strip(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let n = self.prefix.len();
        entries
            .into_iter()
            .map(|(k, v)| (k.get(n..).unwrap_or_default().to_vec(), v))
            .collect()
    }
}

impl Backend for PrefixedBackend {
    fn suggest_compaction(&self, min_len: u64, deleted: usize) -> Result<Option<bool>> {
        self.inner.suggest_compaction(min_len, deleted)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(&self.outer(key))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.strip(self.inner.scan_prefix(&self.outer(prefix))?))
    }

    fn scan_range_in(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.strip(self.inner.scan_range_in(
            &self.outer(start),
            &self.outer(end),
            limit,
            order,
        )?))
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .inner
            .last_with_prefix(&self.outer(prefix))?
            .and_then(|entry| self.strip(vec![entry]).pop()))
    }

    fn commit(&self, ops: Vec<Op>) -> Commit {
        self.inner.commit(self.outer_ops(ops))
    }

    fn commit_unawaited(&self, ops: Vec<Op>) -> Result<()> {
        self.inner.commit_unawaited(self.outer_ops(ops))
    }

    fn defer(&self, ops: Vec<Op>) {
        self.inner.defer(self.outer_ops(ops))
    }

    fn settled(&self) -> Commit {
        self.inner.settled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[tokio::test]
    async fn each_keyspace_sees_only_its_own_keys() {
        let shared: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        let a = PrefixedBackend::new(shared.clone(), b"env/a/".to_vec());
        let b = PrefixedBackend::new(shared.clone(), b"env/b/".to_vec());
        a.commit(vec![Op::Put(b"run/1".to_vec(), b"a1".to_vec())])
            .await
            .unwrap();
        b.commit(vec![
            Op::Put(b"run/1".to_vec(), b"b1".to_vec()),
            Op::Put(b"run/2".to_vec(), b"b2".to_vec()),
        ])
        .await
        .unwrap();
        shared
            .commit(vec![Op::Put(b"run/9".to_vec(), b"root".to_vec())])
            .await
            .unwrap();
        assert_eq!(a.get(b"run/1").unwrap(), Some(b"a1".to_vec()));
        assert_eq!(a.get(b"run/2").unwrap(), None);
        assert_eq!(
            b.scan_prefix(b"run/").unwrap(),
            vec![
                (b"run/1".to_vec(), b"b1".to_vec()),
                (b"run/2".to_vec(), b"b2".to_vec())
            ]
        );
        assert_eq!(
            b.scan_range(b"run/", b"run/2", 10).unwrap(),
            vec![(b"run/1".to_vec(), b"b1".to_vec())]
        );
        assert_eq!(
            b.last_with_prefix(b"run/").unwrap(),
            Some((b"run/2".to_vec(), b"b2".to_vec()))
        );
        assert_eq!(a.last_with_prefix(b"run/2").unwrap(), None);
        b.commit(vec![Op::Delete(b"run/1".to_vec())]).await.unwrap();
        assert_eq!(a.get(b"run/1").unwrap(), Some(b"a1".to_vec()));
        assert_eq!(shared.scan_prefix(b"run/").unwrap().len(), 1);
    }
}
