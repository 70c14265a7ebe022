//! Keeping every value sled stores small enough to stay in its log.
//!
//! sled 0.34 writes any log item larger than a quarter of its segment size
//! (128 KiB by default) to a file of its own under `blobs/`, and never
//! fsyncs those files: syncing the `db` file does not make them durable.
//! A log item is a single value, or a whole leaf node (up to 17 entries)
//! when sled consolidates a page. So the sled backend keeps every value at
//! most [`chunk_size`] bytes (a 128th of the segment): a larger value is
//! written as chunks under the reserved `\xff\xffchunk/` keyspace (which
//! sorts after every key Kiln uses) and a short manifest under its own key,
//! in the same group of commits (the chunks before the manifest). Reads put
//! the pieces back together. No log item can then reach the blob threshold,
//! and every byte the tree holds is in the `db` file that checkpoints sync
//! (acknowledged bytes are durable in the write-ahead log before that).

use crate::sled_backend::backend_error;
use crate::{Result, StoreError};

/// The start of a manifest value.
const MAGIC: &[u8; 8] = b"\xffKLNCHK\x01";
/// Where chunks live: `<prefix><generation: u64 BE><index: u32 BE>`.
pub(crate) const CHUNK_SPACE: &[u8] = b"\xff\xffchunk/";
const MANIFEST_LEN: usize = 8 + 8 + 8 + 4;

/// The largest value stored whole, for sled's segment size: a leaf node of
/// 17 such values (and their keys) stays well under a quarter segment.
pub(crate) fn chunk_size(segment_size: usize) -> usize {
    (segment_size / 128).max(1024)
}

/// A chunked value's manifest: its generation (which names its chunks), its
/// length and its number of chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Manifest {
    generation: u64,
    len: u64,
    count: u32,
}

impl Manifest {
    fn encode(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MANIFEST_LEN);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.generation.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.count.to_be_bytes());
        v
    }

    /// The manifest a stored value is, if it is one. Every value that
    /// starts with the magic bytes is stored chunked, so this is never a
    /// user's value.
    pub(crate) fn parse(v: &[u8]) -> Option<Self> {
        if v.len() != MANIFEST_LEN || !v.starts_with(MAGIC) {
            return None;
        }
        let n = |range: std::ops::Range<usize>| v[range].try_into().ok();
        Some(Manifest {
            generation: u64::from_be_bytes(n(8..16)?),
            len: u64::from_be_bytes(n(16..24)?),
            count: u32::from_be_bytes(v[24..28].try_into().ok()?),
        })
    }

    fn chunk_key(self, index: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(CHUNK_SPACE.len() + 12);
        k.extend_from_slice(CHUNK_SPACE);
        k.extend_from_slice(&self.generation.to_be_bytes());
        k.extend_from_slice(&index.to_be_bytes());
        k
    }
}

/// Turns commits into sled writes of small values.
pub(crate) struct Chunker {
    chunk: usize,
    next_generation: u64,
}

impl Chunker {
    /// A chunker for a database whose chunks so far go up to generation
    /// `last` (0 if none).
    pub(crate) fn new(chunk: usize, last: u64) -> Self {
        Chunker {
            chunk,
            next_generation: last + 1,
        }
    }

    /// The last generation this chunker made (or was told of).
    pub(crate) fn last_generation_made(&self) -> u64 {
        self.next_generation - 1
    }

    /// The generation of the last chunk stored in `tree`.
    pub(crate) fn last_generation(tree: &sled::Db) -> Result<u64> {
        match tree.scan_prefix(CHUNK_SPACE).next_back() {
            Some(entry) => {
                let (k, _) = entry.map_err(|e| StoreError::Backend(e.to_string()))?;
                let g = &k[CHUNK_SPACE.len()..CHUNK_SPACE.len() + 8];
                Ok(g.try_into().map(u64::from_be_bytes).unwrap_or(0))
            }
            None => Ok(0),
        }
    }

    /// Writes `writes` (a value to put, or `None` to delete) to `tree`, in
    /// order (only the caller writes it meanwhile). A replaced or deleted
    /// chunked value's chunks are deleted before the key is written, and a
    /// value's chunks are written before its manifest, so that whatever
    /// prefix of these writes a crash leaves in sled, the log's round
    /// applied again on the next open leaves no chunk behind that no
    /// manifest names. The writes that replace or delete a chunked value
    /// (its chunks, old and new, with it) are made holding what `hold`
    /// returns, so a reader holding it off never finds a manifest whose
    /// chunks are gone. Other writes need no holding: a single write to
    /// sled, which a reader finds made or not, or a new chunked value's
    /// chunks, which no manifest names until they are all written.
    pub(crate) fn apply<G>(
        &mut self,
        tree: &sled::Db,
        writes: &[crate::sled_unapplied::ToApply],
        hold: impl Fn() -> G,
    ) -> Result<()> {
        for (key, value) in writes {
            let old = tree.get(key).map_err(backend_error)?;
            let chunked = old.as_deref().and_then(Manifest::parse);
            let _held = chunked.map(|_| hold());
            if let Some(old) = chunked {
                for i in 0..old.count {
                    tree.remove(old.chunk_key(i)).map_err(backend_error)?;
                }
            }
            match value {
                Some(v) if v.len() > self.chunk || v.starts_with(MAGIC) => {
                    let manifest = Manifest {
                        generation: self.next_generation,
                        len: v.len() as u64,
                        count: v.len().div_ceil(self.chunk) as u32,
                    };
                    self.next_generation += 1;
                    for (i, piece) in v.chunks(self.chunk).enumerate() {
                        tree.insert(manifest.chunk_key(i as u32), piece)
                            .map_err(backend_error)?;
                    }
                    tree.insert(key.as_slice(), manifest.encode())
                        .map_err(backend_error)?;
                }
                Some(v) => {
                    tree.insert(key.as_slice(), v.as_slice())
                        .map_err(backend_error)?;
                }
                // A key the tree does not hold needs no removing: a run's
                // index entries often come and go between two slices.
                None if old.is_none() => {}
                None => {
                    tree.remove(key.as_slice()).map_err(backend_error)?;
                }
            }
        }
        Ok(())
    }
}

/// Whether `value`, as the tree holds it, is a chunked value's manifest.
pub(crate) fn is_manifest(value: &[u8]) -> bool {
    Manifest::parse(value).is_some()
}

/// How often a read starts again when the value it reads is replaced
/// under it.
const RETRIES: usize = 64;

/// A stored value as it was written: a manifest's chunks put back together.
/// Callers read while no chunked value is being replaced or deleted in the
/// tree (the backend's `reading` lock), so a manifest's chunks are all
/// there; a read that finds
/// one gone all the same starts again from the key (`None` if the key is
/// gone by then).
pub(crate) fn resolve(tree: &sled::Db, key: &[u8], value: Vec<u8>) -> Result<Option<Vec<u8>>> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let read = |k: &[u8]| tree.get(k).map_err(|e| StoreError::Backend(e.to_string()));
    let mut value = value;
    for _ in 0..RETRIES {
        let Some(manifest) = Manifest::parse(&value) else {
            return Ok(Some(value));
        };
        let mut whole = Vec::with_capacity(manifest.len as usize);
        let mut missing = None;
        for i in 0..manifest.count {
            match read(&manifest.chunk_key(i))? {
                Some(piece) => whole.extend_from_slice(&piece),
                None => {
                    missing = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = missing {
            // Replaced or deleted meanwhile: read the key again. The same
            // manifest again means the chunk is really gone.
            match read(key)? {
                Some(again) if *again == *value => {
                    return Err(corrupt(format!(
                        "chunk {i} of {} is missing",
                        manifest.count
                    )));
                }
                Some(again) => value = again.to_vec(),
                None => return Ok(None),
            }
        } else {
            if whole.len() as u64 != manifest.len {
                return Err(corrupt(format!(
                    "its chunks hold {} bytes, not {}",
                    whole.len(),
                    manifest.len
                )));
            }
            return Ok(Some(whole));
        }
    }
    Err(corrupt(format!(
        "its chunks went missing {RETRIES} times in a row"
    )))
}

/// sled's segment size for the database in `dir`: the one it was created
/// with (sled refuses to open it with another), or sled's default.
pub(crate) fn segment_size(dir: &std::path::Path) -> usize {
    const DEFAULT: usize = 512 * 1024;
    std::fs::read_to_string(dir.join("conf"))
        .ok()
        .and_then(|conf| {
            conf.lines()
                .find_map(|l| l.strip_prefix("segment_size: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(DEFAULT)
}
