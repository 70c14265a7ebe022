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
//!
//! A value replaced or deleted takes its chunks with it, so the committer
//! must know whether a key it writes holds a manifest. Reading the key
//! first cost more than the write itself (a second walk of sled's tree
//! for every key of every slice), so the tree also lists, under
//! [`LISTED`], every key that may hold a manifest, and the chunker keeps
//! that list in memory: only a listed key is read before it is written.
//! A key is listed before its first manifest is written and unlisted
//! after its last one is replaced, so whatever prefix of the writes a
//! crash leaves in sled, every manifest's key is listed.

use crate::{Result, StoreError};

/// The start of a manifest value.
const MAGIC: &[u8; 8] = b"\xffKLNCHK\x01";
/// Where chunks live: `<prefix><generation: u64 BE><index: u32 BE>`.
pub(crate) const CHUNK_SPACE: &[u8] = b"\xff\xffchunk/";
const MANIFEST_LEN: usize = 8 + 8 + 8 + 4;
/// Where the keys that may hold a manifest are listed: `<prefix><key>`,
/// an empty value. Under the log's bookkeeping, which scans skip.
pub(crate) const LISTED: &[u8] = b"\xff\xffkiln-wal-manifest/";
/// Says that [`LISTED`] lists every key holding a manifest: written once,
/// after the list of a store made before it was kept.
const LISTED_ALL: &[u8] = b"\xff\xffkiln-wal-manifests";

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

/// The writes the chunker makes to a tree: sled's, or a model's in tests
/// (which record them, to check every prefix a crash could leave).
pub(crate) trait TreeWrites {
    /// The value `key` holds.
    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>>;
    /// Puts `value` under `key`; returns the value it replaced.
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<sled::IVec>>;
    /// Deletes `key`; returns the value it held.
    fn remove(&self, key: &[u8]) -> Result<Option<sled::IVec>>;
}

impl TreeWrites for sled::Db {
    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        sled::Tree::get(self, key).map_err(failed)
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<sled::IVec>> {
        sled::Tree::insert(self, key, value).map_err(failed)
    }

    fn remove(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        sled::Tree::remove(self, key).map_err(failed)
    }
}

fn failed(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Where `key` is listed as one that may hold a manifest.
fn listed_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(LISTED.len() + key.len());
    k.extend_from_slice(LISTED);
    k.extend_from_slice(key);
    k
}

/// Turns commits into sled writes of small values.
pub(crate) struct Chunker {
    chunk: usize,
    next_generation: u64,
    /// The keys the tree lists under [`LISTED`]: every key that holds a
    /// manifest, and perhaps a few that held one when a crash cut off
    /// their unlisting.
    listed: std::collections::HashSet<Vec<u8>>,
}

impl Chunker {
    /// A chunker for a tree that holds no manifest, whose chunks so far go
    /// up to generation `last` (0 if none).
    pub(crate) fn new(chunk: usize, last: u64) -> Self {
        Chunker {
            chunk,
            next_generation: last + 1,
            listed: Default::default(),
        }
    }

    /// A chunker for `tree` (only the caller writes it meanwhile), whose
    /// chunks so far go up to generation `last`: it reads the keys the
    /// tree lists as holding a manifest. A store made before the list was
    /// kept has its list made first, from a read of every entry (once:
    /// the list is then marked whole); one with no chunk needs none.
    pub(crate) fn open(tree: &sled::Db, chunk: usize, last: u64) -> Result<Self> {
        let mut chunker = Chunker::new(chunk, last);
        if TreeWrites::get(tree, LISTED_ALL)?.is_none() {
            if tree.scan_prefix(CHUNK_SPACE).next().is_some() {
                tracing::info!(
                    "listing the store's chunked values (once, for a store made before they were listed)"
                );
                for entry in tree.iter() {
                    let (k, v) = entry.map_err(failed)?;
                    if !k.starts_with(b"\xff\xff") && Manifest::parse(&v).is_some() {
                        TreeWrites::insert(tree, &listed_key(&k), &[])?;
                    }
                }
            }
            // After the list: a crash before this leaves it to be made again.
            TreeWrites::insert(tree, LISTED_ALL, &[])?;
        }
        for entry in tree.scan_prefix(LISTED).keys() {
            let k = entry.map_err(failed)?;
            chunker.listed.insert(k[LISTED.len()..].to_vec());
        }
        Ok(chunker)
    }

    /// The last generation this chunker made (or was told of).
    pub(crate) fn last_generation_made(&self) -> u64 {
        self.next_generation - 1
    }

    /// Makes the next generation at least `last + 1`.
    pub(crate) fn skip_to(&mut self, last: u64) {
        self.next_generation = self.next_generation.max(last + 1);
    }

    /// The generation of the last chunk stored in `tree`.
    pub(crate) fn last_generation(tree: &sled::Db) -> Result<u64> {
        match tree.scan_prefix(CHUNK_SPACE).next_back() {
            Some(entry) => {
                let (k, _) = entry.map_err(failed)?;
                let g = &k[CHUNK_SPACE.len()..CHUNK_SPACE.len() + 8];
                Ok(g.try_into().map(u64::from_be_bytes).unwrap_or(0))
            }
            None => Ok(0),
        }
    }

    /// Writes `writes` (a value to put, or `None` to delete) to `tree`, in
    /// order (only the caller writes it meanwhile). A replaced or deleted
    /// chunked value's chunks are deleted before the key is written, and a
    /// value's chunks are written before its manifest (and the key listed
    /// before both), so that whatever prefix of these writes a crash
    /// leaves in sled, the log's round applied again on the next open
    /// leaves no chunk behind that no manifest names. Only a listed key is
    /// read first, for its manifest. The writes that replace or delete a
    /// chunked value (its chunks, old and new, with it) are made holding
    /// what `hold` returns, so a reader holding it off never finds a
    /// manifest whose chunks are gone. Other writes need no holding: a
    /// single write to sled, which a reader finds made or not, or a new
    /// chunked value's chunks, which no manifest names until they are all
    /// written.
    pub(crate) fn apply<T: TreeWrites, G>(
        &mut self,
        tree: &T,
        writes: &[crate::sled_unapplied::ToApply],
        hold: impl Fn() -> G,
    ) -> Result<()> {
        for (key, value) in writes {
            let listed = self.listed.contains(key);
            let old = match listed {
                true => tree.get(key)?.as_deref().and_then(Manifest::parse),
                false => None,
            };
            let _held = old.map(|_| hold());
            if let Some(old) = old {
                for i in 0..old.count {
                    tree.remove(&old.chunk_key(i))?;
                }
            }
            let chunked = value
                .as_ref()
                .is_some_and(|v| v.len() > self.chunk || v.starts_with(MAGIC));
            let replaced = match value {
                Some(v) if chunked => {
                    if !listed {
                        tree.insert(&listed_key(key), &[])?;
                        self.listed.insert(key.clone());
                    }
                    let manifest = Manifest {
                        generation: self.next_generation,
                        len: v.len() as u64,
                        count: v.len().div_ceil(self.chunk) as u32,
                    };
                    self.next_generation += 1;
                    for (i, piece) in v.chunks(self.chunk).enumerate() {
                        tree.insert(&manifest.chunk_key(i as u32), piece)?;
                    }
                    tree.insert(key, &manifest.encode())?
                }
                Some(v) => tree.insert(key, v.as_slice())?,
                // sled writes nothing for a key it does not hold: a run's
                // index entries often come and go between two slices.
                None => tree.remove(key)?,
            };
            if listed && !chunked {
                tree.remove(&listed_key(key))?;
                self.listed.remove(key);
            }
            // The list is kept before every manifest, so an unlisted key
            // held none; were it wrong, the chunks are not left behind.
            if let Some(old) = replaced
                .as_deref()
                .and_then(Manifest::parse)
                .filter(|_| !listed)
            {
                tracing::error!(
                    key = %String::from_utf8_lossy(key),
                    "a key not listed as chunked held a chunked value; deleting its chunks"
                );
                let _held = hold();
                for i in 0..old.count {
                    tree.remove(&old.chunk_key(i))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Arc;

    const CHUNK: usize = 16;

    /// A write to a tree: a value put under a key, or the key deleted.
    type Write = (Vec<u8>, Option<Vec<u8>>);

    /// A tree in memory that records every write made to it, in order.
    #[derive(Default)]
    struct Model {
        entries: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
        log: RefCell<Vec<Write>>,
    }

    impl TreeWrites for Model {
        fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
            Ok(self.entries.borrow().get(key).map(|v| v.as_slice().into()))
        }

        fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<sled::IVec>> {
            self.log
                .borrow_mut()
                .push((key.to_vec(), Some(value.to_vec())));
            let old = self
                .entries
                .borrow_mut()
                .insert(key.to_vec(), value.to_vec());
            Ok(old.map(|v| v.as_slice().into()))
        }

        fn remove(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
            self.log.borrow_mut().push((key.to_vec(), None));
            Ok(self
                .entries
                .borrow_mut()
                .remove(key)
                .map(|v| v.as_slice().into()))
        }
    }

    impl Model {
        /// A model holding `entries`, with no write recorded.
        fn holding(entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> Model {
            Model {
                entries: RefCell::new(entries.clone()),
                log: RefCell::default(),
            }
        }

        /// The keys listed as holding a manifest.
        fn listed(&self) -> HashSet<Vec<u8>> {
            let entries = self.entries.borrow();
            entries
                .keys()
                .filter_map(|k| k.strip_prefix(LISTED).map(<[u8]>::to_vec))
                .collect()
        }

        /// A chunker for this tree as a store opening on it makes one.
        fn chunker(&self, last: u64) -> Chunker {
            let mut chunker = Chunker::new(CHUNK, last);
            chunker.listed = self.listed();
            chunker
        }

        /// Every key holding a manifest is listed, and every chunk is named
        /// by a manifest the tree holds.
        fn check(&self, when: &str) {
            let entries = self.entries.borrow();
            let listed = self.listed();
            let mut named = HashSet::new();
            for (k, v) in entries.iter() {
                if let Some(m) = Manifest::parse(v) {
                    assert!(
                        listed.contains(k),
                        "{when}: {k:?} holds a manifest unlisted"
                    );
                    named.extend((0..m.count).map(|i| m.chunk_key(i)));
                }
            }
            let chunks: HashSet<Vec<u8>> = entries
                .keys()
                .filter(|k| k.starts_with(CHUNK_SPACE))
                .cloned()
                .collect();
            assert_eq!(chunks, named, "{when}: chunks stored and chunks named");
        }

        /// The values the tree holds, chunked ones put back together.
        fn values(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
            let entries = self.entries.borrow();
            entries
                .iter()
                .filter(|(k, _)| !k.starts_with(b"\xff\xff"))
                .map(|(k, v)| match Manifest::parse(v) {
                    Some(m) => {
                        let whole = (0..m.count)
                            .flat_map(|i| entries[&m.chunk_key(i)].clone())
                            .collect();
                        (k.clone(), whole)
                    }
                    None => (k.clone(), v.clone()),
                })
                .collect()
        }
    }

    fn put(key: &str, value: Vec<u8>) -> crate::sled_unapplied::ToApply {
        (key.as_bytes().to_vec(), Some(Arc::new(value)))
    }

    fn delete(key: &str) -> crate::sled_unapplied::ToApply {
        (key.as_bytes().to_vec(), None)
    }

    /// A value of `len` bytes (chunked above [`CHUNK`]).
    fn value(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    /// Whatever prefix of a round's writes a crash leaves in the tree, every
    /// manifest's key is listed, and applying the round again (as a store
    /// opening does, after deleting the chunks made since the checkpoint)
    /// leaves the round's values and no chunk that no manifest names.
    #[test]
    fn every_prefix_of_the_writes_lists_each_manifest_and_recovers_without_stray_chunks() {
        // The checkpoint: small and chunked values, some to be replaced.
        let checkpoint = Model::default();
        let mut chunker = Chunker::new(CHUNK, 0);
        let first = vec![
            put("a", value(40, 1)),
            put("b", value(5, 2)),
            put("c", value(33, 3)),
            put("d", value(40, 4)),
            put("e", value(8, 5)),
        ];
        chunker.apply(&checkpoint, &first, || ()).unwrap();
        checkpoint.check("at the checkpoint");
        let checkpointed = chunker.last_generation_made();
        let at_checkpoint = checkpoint.entries.borrow().clone();

        // The round: every kind of replacement and deletion, a key written
        // twice, and a small value that starts like a manifest.
        let mut magic = MAGIC.to_vec();
        magic.extend_from_slice(b"not a manifest");
        let round = vec![
            vec![
                put("a", value(20, 6)),
                put("b", value(50, 7)),
                put("c", value(3, 8)),
                delete("d"),
                delete("e"),
                delete("absent"),
            ],
            vec![
                put("f", value(17, 9)),
                put("a", value(6, 10)),
                put("g", magic),
                delete("b"),
                put("c", value(64, 11)),
            ],
        ];
        let model = Model::holding(&at_checkpoint);
        for writes in round.clone() {
            chunker.apply(&model, &writes, || ()).unwrap();
        }
        let expected = model.values();
        let log = model.log.borrow().clone();
        let last = chunker.last_generation_made();

        for cut in 0..=log.len() {
            let crashed = Model::holding(&at_checkpoint);
            for (k, v) in &log[..cut] {
                match v {
                    Some(v) => crashed.entries.borrow_mut().insert(k.clone(), v.clone()),
                    None => crashed.entries.borrow_mut().remove(k),
                };
            }
            let when = format!("{cut} of {} writes", log.len());
            let listed = crashed.listed();
            for (k, v) in crashed.entries.borrow().iter() {
                if Manifest::parse(v).is_some() {
                    assert!(
                        listed.contains(k),
                        "{when}: {k:?} holds a manifest unlisted"
                    );
                }
            }
            // What a store's open does: chunks made since the checkpoint go,
            // and the round is applied again.
            let mut from = CHUNK_SPACE.to_vec();
            from.extend_from_slice(&(checkpointed + 1).to_be_bytes());
            crashed
                .entries
                .borrow_mut()
                .retain(|k, _| !(k.starts_with(CHUNK_SPACE) && *k >= from));
            let mut again = crashed.chunker(last);
            for writes in round.clone() {
                again.apply(&crashed, &writes, || ()).unwrap();
            }
            crashed.check(&format!("{when}, applied again"));
            assert_eq!(crashed.values(), expected, "{when}, applied again");
        }
    }

    /// Only listed keys are read before they are written: a round of new
    /// small keys reads none.
    #[test]
    fn only_listed_keys_are_read_first() {
        struct Counting(Model, std::cell::Cell<usize>);
        impl TreeWrites for Counting {
            fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
                self.1.set(self.1.get() + 1);
                self.0.get(key)
            }
            fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<sled::IVec>> {
                self.0.insert(key, value)
            }
            fn remove(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
                self.0.remove(key)
            }
        }
        let tree = Counting(Model::default(), Default::default());
        let mut chunker = Chunker::new(CHUNK, 0);
        let writes = vec![put("a", value(5, 1)), put("b", value(40, 2)), delete("c")];
        chunker.apply(&tree, &writes, || ()).unwrap();
        assert_eq!(tree.1.get(), 0, "no key was listed");
        let writes = vec![put("a", value(6, 1)), put("b", value(3, 2))];
        chunker.apply(&tree, &writes, || ()).unwrap();
        assert_eq!(tree.1.get(), 1, "b alone was listed");
        tree.0.check("after both");
    }

    /// A store made before chunked keys were listed has its list made when
    /// it opens, so a chunked value it holds takes its chunks with it when
    /// it is replaced.
    #[test]
    fn a_store_made_before_the_list_is_listed_when_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut chunker = Chunker::open(&db, CHUNK, 0).unwrap();
        let writes = vec![put("big", value(40, 1)), put("small", value(3, 2))];
        chunker.apply(&db, &writes, || ()).unwrap();
        // As the store was before the list.
        for key in db.scan_prefix(LISTED).keys() {
            db.remove(&key.unwrap()).unwrap();
        }
        db.remove(LISTED_ALL).unwrap();

        let mut chunker = Chunker::open(&db, CHUNK, chunker.last_generation_made()).unwrap();
        assert_eq!(chunker.listed, HashSet::from([b"big".to_vec()]));
        assert!(
            db.get(LISTED_ALL).unwrap().is_some(),
            "the list is marked whole"
        );
        chunker
            .apply(&db, &[put("big", value(2, 3))], || ())
            .unwrap();
        assert_eq!(
            db.scan_prefix(CHUNK_SPACE).count(),
            0,
            "the old chunks went"
        );
        assert_eq!(db.scan_prefix(LISTED).count(), 0, "big is unlisted");
        // Opened again, the list is read, not made again.
        db.insert(
            b"other",
            &Manifest {
                generation: 99,
                len: 1,
                count: 1,
            }
            .encode(),
        )
        .unwrap();
        let chunker = Chunker::open(&db, CHUNK, 0).unwrap();
        assert!(
            chunker.listed.is_empty(),
            "the list is marked whole: no scan"
        );
    }
}
