//! Large values kept apart from the records that own them: payloads and
//! outputs of runs over [`INLINE_LIMIT`], and packets uploaded by SDKs
//! through the packets flow before they trigger.
//!
//! Keys: see [`crate::layout`].
//!
//! A run's record is rewritten at every status change; keeping a 5 MB
//! payload inside it would rewrite (and fsync) 5 MB each time. So
//! [`Batch::put_run`] moves a payload or output over the limit here, writes
//! the record with the field emptied and `payload_blob`/`output_blob` set,
//! and [`Store::payload_of`]/[`Store::output_of`] read it back when a caller
//! needs it (an attempt's start, the retrieve endpoint).

use crate::layout::{PACKET, PACKET_AT, RUN_BLOB};
use crate::records::key;
use crate::{Batch, Op, Result, Store, StoreError};
use kiln_types::{Run, RunId};

/// Payloads and outputs larger than this many bytes are stored apart from
/// their run's record (Trigger.dev offloads at 512 KiB too).
pub const INLINE_LIMIT: usize = 512 * 1024;

fn run_blob_key(run: &RunId, field: &str) -> Vec<u8> {
    let mut k = key(RUN_BLOB, run.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(field.as_bytes());
    k
}

/// A packet uploaded through the packets flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The content type it was uploaded with.
    pub content_type: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// The run as its record is stored: a payload or output over the limit is
/// written to its own key (into `ops`) and emptied in the returned copy.
/// Borrows `run` unchanged when nothing needs to move.
pub(crate) fn lean_record<'a>(run: &'a Run, ops: &mut Vec<Op>) -> std::borrow::Cow<'a, Run> {
    let payload_moves = run.payload.len() > INLINE_LIMIT;
    let output_moves = run.output.as_ref().is_some_and(|o| o.len() > INLINE_LIMIT);
    if !payload_moves && !output_moves {
        return std::borrow::Cow::Borrowed(run);
    }
    let mut lean = run.clone();
    if payload_moves {
        let payload = std::mem::take(&mut lean.payload);
        lean.payload_blob = Some(payload.len() as u64);
        ops.push(Op::Put(
            run_blob_key(&run.id, "payload"),
            payload.into_bytes(),
        ));
    }
    if output_moves && let Some(output) = lean.output.take() {
        lean.output = Some(String::new());
        lean.output_blob = Some(output.len() as u64);
        ops.push(Op::Put(
            run_blob_key(&run.id, "output"),
            output.into_bytes(),
        ));
    }
    std::borrow::Cow::Owned(lean)
}

impl Batch {
    /// Stores a packet uploaded through the packets flow under `path`.
    pub fn put_packet(&mut self, path: &str, packet: &Packet) -> &mut Self {
        let mut value = Vec::with_capacity(packet.content_type.len() + 1 + packet.data.len());
        value.extend_from_slice(packet.content_type.as_bytes());
        value.push(0);
        value.extend_from_slice(&packet.data);
        self.ops.push(Op::Put(key(PACKET, path.as_bytes()), value));
        let at = kiln_types::Timestamp::now().as_millis();
        self.ops.push(Op::Put(
            key(PACKET_AT, path.as_bytes()),
            at.to_be_bytes().to_vec(),
        ));
        self
    }
}

impl Store {
    /// A run's payload, read from its own key when the record holds none.
    pub fn payload_of(&self, run: &Run) -> Result<String> {
        match run.payload_blob {
            None => Ok(run.payload.clone()),
            Some(_) => self.run_blob(&run.id, "payload"),
        }
    }

    /// A run's output, read from its own key when the record holds none.
    pub fn output_of(&self, run: &Run) -> Result<Option<String>> {
        match (run.output_blob, &run.output) {
            (Some(_), Some(_)) => self.run_blob(&run.id, "output").map(Some),
            (_, output) => Ok(output.clone()),
        }
    }

    fn run_blob(&self, run: &RunId, field: &str) -> Result<String> {
        let k = run_blob_key(run, field);
        let bytes = self.backend.get(&k)?.ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            reason: format!("the run's record says its {field} is stored apart, but it is missing"),
        })?;
        String::from_utf8(bytes).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            reason: e.to_string(),
        })
    }

    /// A packet uploaded under `path`, if there is one.
    pub fn packet(&self, path: &str) -> Result<Option<Packet>> {
        let k = key(PACKET, path.as_bytes());
        let Some(value) = self.backend.get(&k)? else {
            return Ok(None);
        };
        let split = value
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "a packet without its content type".into(),
            })?;
        Ok(Some(Packet {
            content_type: String::from_utf8_lossy(&value[..split]).into_owned(),
            data: value[split + 1..].to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use kiln_types::{DeploymentId, Timestamp};
    use std::sync::Arc;

    fn run(payload: String) -> Run {
        Run::queued(
            RunId::generate(1),
            "t",
            DeploymentId::generate(1),
            "1",
            payload,
            Timestamp(1),
        )
    }

    #[tokio::test]
    async fn a_large_payload_and_output_live_apart_from_the_record() {
        let store = Store::new(Arc::new(MemoryBackend::default()));
        let big = format!("\"{}\"", "x".repeat(INLINE_LIMIT + 10));
        let mut r = run(big.clone());
        r.output = Some(big.clone());
        store.put_run(&r).await.unwrap();
        let stored = store.run(&r.id).unwrap().unwrap();
        assert!(stored.payload.is_empty());
        assert_eq!(stored.payload_blob, Some(big.len() as u64));
        assert_eq!(stored.output.as_deref(), Some(""));
        assert_eq!(store.payload_of(&stored).unwrap(), big);
        assert_eq!(store.output_of(&stored).unwrap(), Some(big.clone()));
        // Rewriting the lean record keeps the blobs.
        store.put_run(&stored).await.unwrap();
        let again = store.run(&r.id).unwrap().unwrap();
        assert_eq!(store.payload_of(&again).unwrap(), big);
    }

    #[tokio::test]
    async fn a_small_payload_stays_in_the_record() {
        let store = Store::new(Arc::new(MemoryBackend::default()));
        let r = run("{\"a\":1}".into());
        store.put_run(&r).await.unwrap();
        let stored = store.run(&r.id).unwrap().unwrap();
        assert_eq!(stored, r);
        assert_eq!(store.payload_of(&stored).unwrap(), "{\"a\":1}");
    }

    #[tokio::test]
    async fn a_packet_keeps_its_content_type() {
        let store = Store::new(Arc::new(MemoryBackend::default()));
        let packet = Packet {
            content_type: "application/json".into(),
            data: b"{\"big\":true}".to_vec(),
        };
        let mut batch = Batch::default();
        batch.put_packet("batch_1/item_0/payload.json", &packet);
        store.commit(batch).await.unwrap();
        assert_eq!(
            store.packet("batch_1/item_0/payload.json").unwrap(),
            Some(packet)
        );
        assert_eq!(store.packet("nope").unwrap(), None);
    }
}
