//! Values too large for one row, in chunks: a value over [`CHUNK_BYTES`]
//! (a large snapshot layer, bundle or packet) is written to `kiln_chunk`
//! in pieces of at most that size, and its table's row holds a marker that
//! names them. PostgreSQL takes at most 1 GiB in one field or one message;
//! chunked, a value may be as large as the server's memory allows, and no
//! statement carries more than [`CHUNK_BYTES`] of it.
//!
//! `kiln_chunk (key, generation, seq, bytes)`: the key the value is
//! stored under, a random number that each write of a chunked value draws,
//! the piece's place, the piece. The marker, [`MARKER_LEN`] bytes:
//! [`MAGIC`], the generation, the value's length and the count of pieces
//! (big-endian). A reader that finds a marker reads the pieces of that
//! generation, and if they are not all there (a newer commit replaced the
//! value meanwhile and deleted them) reads the row again.
//!
//! The committer writes the pieces in the transaction of the group that
//! writes the marker, and in that transaction deletes the pieces of every
//! key the group writes that had some. Which keys have pieces it reads at
//! start and keeps in memory (it is the database's only writer), so a
//! group that touches none costs nothing more.
//!
//! A value that starts with [`MAGIC`] is always chunked, so no value a user
//! wrote can be taken for a marker.

use crate::sled_unapplied::ToApply;
use std::collections::HashSet;
use std::sync::Arc;

/// The first bytes of a marker.
pub(crate) const MAGIC: &[u8; 8] = b"KCHUNKS1";

/// A marker's length.
pub(crate) const MARKER_LEN: usize = 8 + 8 + 8 + 4;

/// The largest value kept whole in its row, and the size of a piece.
#[cfg(not(test))]
pub(crate) const CHUNK_BYTES: usize = 64 << 20;
/// Small in unit tests.
#[cfg(test)]
pub(crate) const CHUNK_BYTES: usize = 1 << 10;

/// The table of pieces (part of migration 4).
pub(crate) const CREATE_TABLE: &str = "CREATE TABLE kiln_chunk (key bytea NOT NULL, \
     generation bigint NOT NULL, seq integer NOT NULL, bytes bytea NOT NULL, \
     PRIMARY KEY (key, generation, seq)); ";

/// Reads the pieces of `$1`'s value of generation `$2`, in order.
pub(crate) const READ: &str =
    "SELECT bytes FROM kiln_chunk WHERE key = $1 AND generation = $2 ORDER BY seq";

/// Deletes every piece of the keys `$1`.
pub(crate) const DELETE: &str = "DELETE FROM kiln_chunk WHERE key = ANY($1)";

/// Writes one piece.
pub(crate) const WRITE: &str =
    "INSERT INTO kiln_chunk (key, generation, seq, bytes) VALUES ($1, $2, $3, $4)";

/// Reads which keys have pieces.
pub(crate) const KEYS: &str = "SELECT DISTINCT key FROM kiln_chunk";

/// Whether `value` is stored in pieces.
pub(crate) fn needs_chunks(value: &[u8]) -> bool {
    value.len() > CHUNK_BYTES || value.starts_with(MAGIC)
}

/// What a marker names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The write's generation.
    pub(crate) generation: i64,
    /// The value's length.
    pub(crate) len: u64,
    /// How many pieces it has.
    pub(crate) count: u32,
}

impl Marker {
    fn new(generation: i64, value: &[u8]) -> Self {
        Marker {
            generation,
            len: value.len() as u64,
            count: u32::try_from(value.len().div_ceil(CHUNK_BYTES)).unwrap_or(u32::MAX),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(MARKER_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.generation.to_be_bytes());
        bytes.extend_from_slice(&self.len.to_be_bytes());
        bytes.extend_from_slice(&self.count.to_be_bytes());
        bytes
    }

    /// The marker `value` is, if it is one.
    pub(crate) fn read(value: &[u8]) -> Option<Marker> {
        if value.len() != MARKER_LEN || !value.starts_with(MAGIC) {
            return None;
        }
        let generation = i64::from_be_bytes(value[8..16].try_into().ok()?);
        let len = u64::from_be_bytes(value[16..24].try_into().ok()?);
        let count = u32::from_be_bytes(value[24..28].try_into().ok()?);
        Some(Marker {
            generation,
            len,
            count,
        })
    }
}

/// A group's chunked values, and the keys whose old pieces go.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    /// Keys the group writes that had pieces: all of them are deleted.
    pub(crate) stale: Vec<Vec<u8>>,
    /// Each chunked value: its key, its generation, the value.
    pub(crate) values: Vec<(Vec<u8>, i64, Arc<Vec<u8>>)>,
}

impl Chunked {
    /// The pieces to write: key, generation, place, bytes.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (&[u8], i64, i32, &[u8])> {
        self.values.iter().flat_map(|(key, generation, value)| {
            value
                .chunks(CHUNK_BYTES)
                .enumerate()
                .map(move |(seq, bytes)| {
                    let seq = i32::try_from(seq).unwrap_or(i32::MAX);
                    (key.as_slice(), *generation, seq, bytes)
                })
        })
    }
}

/// Replaces each value of `writes` that [`needs_chunks`] with a marker,
/// and says which pieces to write and which keys' pieces to delete;
/// `with_pieces` (the keys that have pieces) follows. `None`, and `writes`
/// unchanged, when the group touches no piece.
pub(crate) fn split(writes: &mut [ToApply], with_pieces: &mut HashSet<Vec<u8>>) -> Option<Chunked> {
    let touches = writes.iter().any(|(key, value)| {
        with_pieces.contains(key) || value.as_deref().is_some_and(|v| needs_chunks(v))
    });
    if !touches {
        return None;
    }
    let mut chunked = Chunked::default();
    for (key, value) in writes.iter_mut() {
        if with_pieces.remove(key) {
            chunked.stale.push(key.clone());
        }
        let Some(whole) = value.as_ref().filter(|v| needs_chunks(v)).cloned() else {
            continue;
        };
        let generation = generation();
        *value = Some(Arc::new(Marker::new(generation, &whole).bytes()));
        with_pieces.insert(key.clone());
        chunked.values.push((key.clone(), generation, whole));
    }
    Some(chunked)
}

/// A random generation (a clock's nanoseconds if the system has no random
/// bytes to give, which it always has on Linux).
fn generation() -> i64 {
    let mut random = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        random = (now as u64).to_be_bytes();
    }
    i64::from_be_bytes(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_and_look_alikes_become_markers_and_pieces() {
        let large = Arc::new(vec![7u8; 2 * CHUNK_BYTES + 5]);
        // As long as a marker, so it would be read as one if it were not
        // chunked.
        let look_alike = Arc::new([&MAGIC[..], &[0xab; MARKER_LEN - 8]].concat());
        let mut writes: Vec<ToApply> = vec![
            (b"snap/a".to_vec(), Some(large.clone())),
            (b"packet/p".to_vec(), Some(look_alike.clone())),
            (b"run/r".to_vec(), Some(Arc::new(b"{}".to_vec()))),
        ];
        let mut with_pieces = HashSet::from([b"run/r".to_vec(), b"bundle/b".to_vec()]);
        let chunked = split(&mut writes, &mut with_pieces).unwrap();
        assert_eq!(chunked.stale, [b"run/r".to_vec()]);
        let marker = Marker::read(writes[0].1.as_deref().unwrap()).unwrap();
        assert_eq!((marker.len, marker.count), (large.len() as u64, 3));
        assert!(Marker::read(writes[1].1.as_deref().unwrap()).is_some());
        assert_eq!(writes[2].1.as_deref().unwrap(), b"{}");
        let pieces: Vec<(usize, i32)> = chunked
            .pieces()
            .map(|(_, _, seq, bytes)| (bytes.len(), seq))
            .collect();
        assert_eq!(
            pieces,
            [
                (CHUNK_BYTES, 0),
                (CHUNK_BYTES, 1),
                (5, 2),
                (look_alike.len(), 0)
            ]
        );
        let mut keys: Vec<_> = with_pieces.into_iter().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                b"bundle/b".to_vec(),
                b"packet/p".to_vec(),
                b"snap/a".to_vec()
            ]
        );
        assert_eq!(
            Marker::read(&[&MAGIC[..], &[0; MARKER_LEN - 8]].concat()).map(|m| m.len),
            Some(0)
        );
        assert_eq!(Marker::read(&look_alike[..MARKER_LEN - 1]), None);

        // A group that touches no piece is left as it is.
        let mut small: Vec<ToApply> = vec![(b"run/s".to_vec(), Some(Arc::new(vec![1])))];
        assert!(split(&mut small, &mut HashSet::new()).is_none());
    }
}
