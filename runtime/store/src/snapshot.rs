//! Snapshot layers: a guest's linear memory as stored while its run waits.
//!
//! A layer is either *full* (every non-zero 4 KiB page of the image) or a
//! *delta* (only the pages whose hash changed since the previous layer).
//! Restoring composes the last full layer with the deltas after it. Each
//! layer carries the hash of every page of the image it leaves behind, so the
//! next snapshot can tell which pages changed without the previous image.
//!
//! Encoding: a fixed header, the page hashes, the zstd-compressed page
//! indices and bytes, and an xxh3 checksum over everything before it, which
//! [`SnapshotLayer::decode`] verifies.

use xxhash_rust::xxh3::xxh3_64;

/// The page size of snapshot deltas.
pub const PAGE: usize = 4096;
const MAGIC: &[u8; 4] = b"KSNP";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 1 + 8 + 8 + 4 + 4 + 4;

/// Why a stored snapshot layer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The checksum does not match: the layer was damaged on disk.
    #[error(
        "the snapshot layer's checksum does not match (stored {stored:016x}, computed {computed:016x})"
    )]
    Checksum {
        /// The checksum stored with the layer.
        stored: u64,
        /// The checksum of the bytes read.
        computed: u64,
    },
    /// The bytes are not a snapshot layer of this version.
    #[error("the snapshot layer is malformed: {0}")]
    Malformed(String),
    /// The layers do not start with a full image.
    #[error("the snapshot has no full layer to start from")]
    NoBase,
}

/// Whether a layer holds a whole image or the pages changed since the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Every non-zero page.
    Full,
    /// The pages changed since the previous layer.
    Delta,
}

/// One stored layer of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLayer {
    /// Full or delta.
    pub kind: LayerKind,
    /// The last journal entry the snapshot reflects.
    pub journal_seq: u64,
    /// The size of linear memory, in bytes.
    pub memory_len: u64,
    /// The index of each page held, ascending.
    pub pages: Vec<u32>,
    /// The pages' bytes, [`PAGE`] each, in the order of `pages`.
    pub data: Vec<u8>,
    /// The hash of every page of the image after this layer.
    pub hashes: Vec<u64>,
}

fn zero_page_hash() -> u64 {
    xxh3_64(&[0u8; PAGE])
}

impl SnapshotLayer {
    /// Captures `image`: a delta against `previous` page hashes when given
    /// and when fewer than half the pages changed, else a full layer.
    pub fn capture(image: &[u8], previous: Option<&[u64]>, journal_seq: u64) -> Self {
        let hashes: Vec<u64> = image.chunks(PAGE).map(xxh3_64).collect();
        let changed: Option<Vec<u32>> = previous
            .map(|prev| {
                (0..hashes.len())
                    .filter(|&i| prev.get(i) != Some(&hashes[i]))
                    .map(|i| i as u32)
                    .collect::<Vec<u32>>()
            })
            .filter(|changed| changed.len() * 2 <= hashes.len());
        let (kind, pages) = match changed {
            Some(changed) => (LayerKind::Delta, changed),
            None => {
                let zero = zero_page_hash();
                let non_zero = (0..hashes.len())
                    .filter(|&i| hashes[i] != zero)
                    .map(|i| i as u32)
                    .collect();
                (LayerKind::Full, non_zero)
            }
        };
        let mut data = Vec::with_capacity(pages.len() * PAGE);
        for &page in &pages {
            let start = page as usize * PAGE;
            let end = (start + PAGE).min(image.len());
            data.extend_from_slice(&image[start..end]);
            data.resize(data.len() + (PAGE - (end - start)), 0);
        }
        SnapshotLayer {
            kind,
            journal_seq,
            memory_len: image.len() as u64,
            pages,
            data,
            hashes,
        }
    }

    /// The layer's bytes as stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.pages.len() * 4 + self.data.len());
        for page in &self.pages {
            body.extend_from_slice(&page.to_le_bytes());
        }
        body.extend_from_slice(&self.data);
        let compressed = zstd::bulk::compress(&body, 1).unwrap_or_else(|_| body.clone());
        let mut out = Vec::with_capacity(HEADER + self.hashes.len() * 8 + compressed.len() + 8);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(match self.kind {
            LayerKind::Full => 0,
            LayerKind::Delta => 1,
        });
        out.extend_from_slice(&self.journal_seq.to_le_bytes());
        out.extend_from_slice(&self.memory_len.to_le_bytes());
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.hashes.len() as u32).to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        for hash in &self.hashes {
            out.extend_from_slice(&hash.to_le_bytes());
        }
        out.extend_from_slice(&compressed);
        let checksum = xxh3_64(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Reads a stored layer, verifying its checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let malformed = |what: &str| SnapshotError::Malformed(what.to_string());
        if bytes.len() < HEADER + 8 {
            return Err(malformed("too short"));
        }
        let (content, tail) = bytes.split_at(bytes.len() - 8);
        let stored = u64::from_le_bytes(tail.try_into().map_err(|_| malformed("checksum"))?);
        let computed = xxh3_64(content);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        if &content[..4] != MAGIC || content[4] != VERSION {
            return Err(malformed("unknown magic or version"));
        }
        let kind = match content[5] {
            0 => LayerKind::Full,
            1 => LayerKind::Delta,
            other => return Err(malformed(&format!("unknown kind {other}"))),
        };
        let u64_at =
            |at: usize| u64::from_le_bytes(content[at..at + 8].try_into().unwrap_or([0; 8]));
        let u32_at =
            |at: usize| u32::from_le_bytes(content[at..at + 4].try_into().unwrap_or([0; 4]));
        let journal_seq = u64_at(6);
        let memory_len = u64_at(14);
        let page_count = u32_at(22) as usize;
        let hash_count = u32_at(26) as usize;
        let body_len = u32_at(30) as usize;
        let hashes_end = HEADER + hash_count * 8;
        if content.len() < hashes_end {
            return Err(malformed("hashes cut short"));
        }
        let hashes = content[HEADER..hashes_end]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let body = zstd::bulk::decompress(&content[hashes_end..], body_len)
            .map_err(|e| malformed(&format!("decompressing: {e}")))?;
        if body.len() != page_count * (4 + PAGE) {
            return Err(malformed("page data has the wrong length"));
        }
        let mut index = body;
        let data = index.split_off(page_count * 4);
        let pages: Vec<u32> = index
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
            .collect();
        if pages
            .iter()
            .any(|&p| (p as u64 + 1) * PAGE as u64 > memory_len.next_multiple_of(PAGE as u64))
        {
            return Err(malformed("a page lies outside the memory"));
        }
        Ok(SnapshotLayer {
            kind,
            journal_seq,
            memory_len,
            pages,
            data,
            hashes,
        })
    }
}

/// Rebuilds the image from a full layer and the deltas after it, in order.
pub fn compose(layers: &[&SnapshotLayer]) -> Result<Vec<u8>, SnapshotError> {
    let start = layers
        .iter()
        .rposition(|l| l.kind == LayerKind::Full)
        .ok_or(SnapshotError::NoBase)?;
    let last_len = layers.last().map(|l| l.memory_len).unwrap_or(0) as usize;
    let mut image = vec![0u8; last_len];
    for layer in layers[start..].iter().copied() {
        if image.len() < layer.memory_len as usize {
            image.resize(layer.memory_len as usize, 0);
        }
        for (n, &page) in layer.pages.iter().enumerate() {
            let at = page as usize * PAGE;
            let end = (at + PAGE).min(image.len());
            image[at..end].copy_from_slice(&layer.data[n * PAGE..n * PAGE + (end - at)]);
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(pages: usize, fill: impl Fn(usize) -> u8) -> Vec<u8> {
        (0..pages * PAGE).map(fill).collect()
    }

    #[test]
    fn full_then_delta_round_trips() {
        let mut first = image(64, |_| 0);
        first[5 * PAGE..6 * PAGE].fill(7);
        let full = SnapshotLayer::capture(&first, None, 3);
        assert_eq!(
            full.pages,
            vec![5],
            "zero pages are left out of a full layer"
        );

        let mut second = first.clone();
        second.resize(80 * PAGE, 0);
        second[10 * PAGE] = 1;
        second[5 * PAGE..6 * PAGE].fill(0);
        let delta = SnapshotLayer::capture(&second, Some(&full.hashes), 9);
        assert_eq!(delta.kind, LayerKind::Delta);
        let changed: Vec<u32> = delta.pages.iter().copied().filter(|&p| p < 64).collect();
        assert_eq!(
            changed,
            vec![5, 10],
            "only changed pages (and new ones) are stored"
        );

        let decoded: Vec<SnapshotLayer> = [full, delta]
            .iter()
            .map(|l| SnapshotLayer::decode(&l.encode()).expect("decodes"))
            .collect();
        assert_eq!(decoded[1].journal_seq, 9);
        let decoded: Vec<&SnapshotLayer> = decoded.iter().collect();
        assert_eq!(compose(&decoded).expect("composes"), second);
    }

    #[test]
    fn a_delta_that_changes_most_pages_is_stored_full() {
        let first = image(8, |_| 1);
        let full = SnapshotLayer::capture(&first, None, 1);
        let second = image(8, |_| 2);
        let next = SnapshotLayer::capture(&second, Some(&full.hashes), 2);
        assert_eq!(next.kind, LayerKind::Full);
        assert_eq!(next.pages.len(), 8);
    }

    #[test]
    fn a_damaged_layer_is_refused() {
        let layer = SnapshotLayer::capture(&image(4, |i| (i % 251) as u8), None, 1);
        let mut bytes = layer.encode();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        assert!(matches!(
            SnapshotLayer::decode(&bytes),
            Err(SnapshotError::Checksum { .. })
        ));
        assert!(SnapshotLayer::decode(b"KSNP").is_err());
    }

    #[test]
    fn deltas_need_a_base() {
        let layer = SnapshotLayer {
            kind: LayerKind::Delta,
            journal_seq: 1,
            memory_len: PAGE as u64,
            pages: vec![0],
            data: image(1, |_| 1),
            hashes: vec![0],
        };
        assert_eq!(compose(&[&layer]), Err(SnapshotError::NoBase));
    }
}
