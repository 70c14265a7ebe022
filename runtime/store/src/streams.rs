//! Realtime streams: chunks a task appends under a key of its run (an
//! answer token by token, progress lines), read live by clients.
//!
//! Keys: see [`crate::layout`]. Each chunk is written in the batch that
//! journals the task's call, so a replay never appends it twice.

use crate::layout::{STREAM, STREAM_KEY};
use crate::records::key;
use crate::{Batch, Op, Result, Store};
use kiln_types::RunId;

fn prefix(run: &RunId, stream: &str) -> Vec<u8> {
    let mut k = key(STREAM, run.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(stream.as_bytes());
    k.push(0);
    k
}

fn key_entry(run: &RunId, stream: &str) -> Vec<u8> {
    let mut k = key(STREAM_KEY, run.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(stream.as_bytes());
    k
}

impl Batch {
    /// Records that `run` has a stream `stream` (with its first chunk). The
    /// run counts as changed: its realtime row lists its streams.
    pub fn put_stream_key(&mut self, run: &RunId, stream: &str) -> &mut Self {
        self.ops.push(Op::Put(key_entry(run, stream), Vec::new()));
        self.runs.push(run.clone());
        self
    }

    /// Appends chunk number `index` (from 0) to `stream` of `run`.
    pub fn put_stream_chunk(
        &mut self,
        run: &RunId,
        stream: &str,
        index: u64,
        chunk: Vec<u8>,
    ) -> &mut Self {
        let mut k = prefix(run, stream);
        k.extend_from_slice(&index.to_be_bytes());
        self.ops.push(Op::Put(k, chunk));
        self.streams.push(run.clone());
        self
    }
}

impl Store {
    /// The chunks of `stream` of `run` after number `after` (all when
    /// `None`), at most `limit`, with their numbers.
    pub fn stream_chunks(
        &self,
        run: &RunId,
        stream: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let base = prefix(run, stream);
        let mut start = base.clone();
        start.extend_from_slice(&after.map_or(0, |n| n.saturating_add(1)).to_be_bytes());
        let mut end = base.clone();
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        Ok(self
            .backend
            .scan_range(&start, &end, limit)?
            .into_iter()
            .filter_map(|(k, v)| {
                let n: [u8; 8] = k.get(base.len()..)?.try_into().ok()?;
                Some((u64::from_be_bytes(n), v))
            })
            .collect())
    }

    /// The keys of `run`'s streams, in key order.
    pub fn stream_keys(&self, run: &RunId) -> Result<Vec<String>> {
        let mut prefix = key(STREAM_KEY, run.as_str().as_bytes());
        prefix.push(b'/');
        Ok(self
            .backend
            .scan_prefix(&prefix)?
            .into_iter()
            .filter_map(|(k, _)| String::from_utf8(k.get(prefix.len()..)?.to_vec()).ok())
            .collect())
    }

    /// How many chunks `stream` of `run` has.
    pub fn stream_len(&self, run: &RunId, stream: &str) -> Result<u64> {
        let base = prefix(run, stream);
        Ok(self
            .backend
            .last_with_prefix(&base)?
            .and_then(|(k, _)| k.get(base.len()..)?.try_into().ok())
            .map_or(0, |n: [u8; 8]| u64::from_be_bytes(n) + 1))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Batch, MemoryBackend, Store};
    use kiln_types::RunId;
    use std::sync::Arc;

    #[tokio::test]
    async fn chunks_read_back_in_order_after_an_index() {
        let store = Store::new(Arc::new(MemoryBackend::new()));
        let run = RunId::generate(1);
        assert_eq!(store.stream_len(&run, "answer").unwrap(), 0);
        let mut batch = Batch::default();
        for i in 0..3u64 {
            batch.put_stream_chunk(&run, "answer", i, format!("\"w{i}\"").into_bytes());
        }
        batch.put_stream_chunk(&run, "answer-2", 0, b"\"other\"".to_vec());
        batch.put_stream_key(&run, "answer");
        batch.put_stream_key(&run, "answer-2");
        store.commit(batch).await.unwrap();
        assert_eq!(store.stream_keys(&run).unwrap(), vec!["answer", "answer-2"]);
        assert_eq!(store.stream_len(&run, "answer").unwrap(), 3);
        let all = store.stream_chunks(&run, "answer", None, 100).unwrap();
        assert_eq!(
            all.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let rest = store.stream_chunks(&run, "answer", Some(0), 100).unwrap();
        assert_eq!(rest[0], (1, b"\"w1\"".to_vec()));
        assert_eq!(
            store.stream_chunks(&run, "answer", Some(2), 100).unwrap(),
            vec![]
        );
    }
}
