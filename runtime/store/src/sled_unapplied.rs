//! Commits made but not yet applied to the sled tree: the sled backend's
//! reads see them on top of it, so a commit is visible the moment it is
//! made, while the committer gathers a whole group of commits, makes it
//! durable in the write-ahead log and, later, applies it to sled.

use crate::Result;
use crate::backend::Op;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// A key and its value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// An unapplied write of a key: its value, or `None` if it was deleted.
pub(crate) type Written = (Vec<u8>, Option<Vec<u8>>);

/// A value shared between the unapplied writes and the committer applying
/// them (`None`: deleted).
type Shared = Option<Arc<Vec<u8>>>;

/// A key's newest unapplied value as the committer applies it.
pub(crate) type ToApply = (Vec<u8>, Shared);

/// What commits made so far have written that the tree does not hold yet.
#[derive(Debug, Default)]
pub(crate) struct Unapplied {
    /// Writes deferred to the next commit.
    deferred: Vec<Op>,
    /// The number of commits made so far.
    made: u64,
    /// Every key a commit not yet applied wrote: the newest value (`None`:
    /// deleted) and the number of the commit that wrote it. Groups of
    /// commits are made durable whole and applied key by key, each key's
    /// newest value once, so only the newest value of each key needs
    /// keeping.
    newest: BTreeMap<Vec<u8>, (u64, Shared)>,
    /// The bytes of keys and values in `newest`.
    bytes: usize,
    /// What commits made since the last [`Unapplied::take_new`] or
    /// [`Unapplied::take`] wrote, in the order written, so a group is taken
    /// without walking the writes older groups left unapplied. Kept as a
    /// list, put in key order by the committer once it has taken the group
    /// (see [`in_key_order`]), outside the lock, rather than a second map
    /// every writer inserts into under it.
    fresh: Vec<(Vec<u8>, Shared)>,
    /// The bytes of keys and values in `fresh`: a value a later write
    /// replaced stays there until the group is taken, so what a writer may
    /// add counts it too (see [`Unapplied::full`]).
    fresh_bytes: usize,
}

/// How much unapplied data makes a writer wait for the committer to catch
/// up: keys, and bytes of keys and values.
const FULL: (usize, usize) = (32_768, 64 << 20);

fn size(key: &[u8], value: &Shared) -> usize {
    key.len() + value.as_ref().map_or(0, |v| v.len())
}

impl Unapplied {
    /// Makes a commit of the deferred writes followed by `ops`; returns its
    /// number.
    pub(crate) fn commit(&mut self, ops: Vec<Op>) -> u64 {
        self.made += 1;
        let number = self.made;
        let deferred = std::mem::take(&mut self.deferred);
        for op in deferred.into_iter().chain(ops) {
            let (k, v) = match op {
                Op::Put(k, v) => (k, Some(Arc::new(v))),
                Op::Delete(k) => (k, None),
            };
            let key_len = k.len();
            self.bytes += size(&k, &v);
            self.fresh_bytes += size(&k, &v);
            self.fresh.push((k.clone(), v.clone()));
            // One walk of the map: the key's older write, if any, comes
            // back from the insert (under the same key).
            if let Some((_, old)) = self.newest.insert(k, (number, v)) {
                self.bytes -= key_len + old.as_ref().map_or(0, |old| old.len());
            }
        }
        number
    }

    /// Holds `ops` for the next commit; true if nothing was deferred before.
    pub(crate) fn defer(&mut self, ops: Vec<Op>) -> bool {
        let first = self.deferred.is_empty();
        self.deferred.extend(ops);
        first
    }

    /// Makes a commit of the deferred writes, if there are any; true if it
    /// did.
    pub(crate) fn commit_deferred(&mut self) -> bool {
        if self.deferred.is_empty() {
            return false;
        }
        self.commit(Vec::new());
        true
    }

    /// Whether so much is unapplied that a writer should wait for the
    /// committer before it adds more (a writer faster than the disk would
    /// otherwise fill the memory).
    pub(crate) fn full(&self) -> bool {
        self.newest.len() + self.fresh.len() >= FULL.0 || self.bytes + self.fresh_bytes >= FULL.1
    }

    /// Whether a commit was made since the committer last took a group:
    /// the next group it takes holds it.
    pub(crate) fn has_fresh(&self) -> bool {
        !self.fresh.is_empty()
    }

    /// The number of commits made so far.
    pub(crate) fn made(&self) -> u64 {
        self.made
    }

    /// What every commit made so far left unapplied, in key order, for
    /// the PostgreSQL committer to write as one transaction, and the number
    /// of the last of those commits. It stays visible until [`Unapplied::applied`].
    pub(crate) fn take(&mut self) -> (Vec<ToApply>, u64) {
        self.fresh.clear();
        self.fresh_bytes = 0;
        let writes = self
            .newest
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        (writes, self.made)
    }

    /// What commits made since the last call wrote, in the order written
    /// (put it in key order, each key's newest value once, with
    /// [`in_key_order`] once the lock is released), and the number of the
    /// last of those commits: the sled backend's next group, while earlier
    /// groups may still be on their way to the tree. It stays visible until
    /// [`Unapplied::applied_keys`] forgets it.
    pub(crate) fn take_new(&mut self) -> (Vec<ToApply>, u64) {
        self.fresh_bytes = 0;
        (std::mem::take(&mut self.fresh), self.made)
    }

    /// Forgets what commits up to number `upto` wrote: the tree holds it.
    pub(crate) fn applied(&mut self, upto: u64) {
        let mut freed = 0;
        self.newest.retain(|k, (number, v)| {
            let keep = *number > upto;
            if !keep {
                freed += size(k, v);
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Forgets the writes of `keys` by commits up to number `upto`: the
    /// tree holds them. A key a later commit wrote again is kept.
    pub(crate) fn applied_keys<'k>(&mut self, keys: impl Iterator<Item = &'k [u8]>, upto: u64) {
        for key in keys {
            // One walk of the map for the usual key; a key written again
            // since (rare) goes back under the key just taken out.
            if let Some((k, (number, v))) = self.newest.remove_entry(key) {
                if number <= upto {
                    self.bytes -= size(&k, &v);
                } else {
                    self.newest.insert(k, (number, v));
                }
            }
        }
    }

    /// The newest unapplied write of `key`, if a commit not yet applied
    /// wrote it.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.newest
            .get(key)
            .map(|(_, v)| v.as_ref().map(|v| v.to_vec()))
    }

    /// The unapplied writes of keys from `start` (inclusive) to `end`
    /// (exclusive; `None`: no end), in key order.
    pub(crate) fn range(&self, start: &[u8], end: Option<&[u8]>) -> Vec<Written> {
        let end = match end {
            Some(end) => Bound::Excluded(end.to_vec()),
            None => Bound::Unbounded,
        };
        self.newest
            .range((Bound::Included(start.to_vec()), end))
            .map(|(k, (_, v))| (k.clone(), v.as_ref().map(|v| v.to_vec())))
            .collect()
    }
}

/// Writes in the order they were made (a group [`Unapplied::take_new`]
/// took), as each key's newest value, in key order.
pub(crate) fn in_key_order(mut written: Vec<ToApply>) -> Vec<ToApply> {
    // Stable: the writes of one key stay in the order they were made.
    written.sort_by(|a, b| a.0.cmp(&b.0));
    let mut newest: Vec<ToApply> = Vec::with_capacity(written.len());
    for (key, value) in written {
        match newest.last_mut() {
            Some(last) if last.0 == key => last.1 = value,
            _ => newest.push((key, value)),
        }
    }
    newest
}

/// The first key after every key that starts with `prefix` (`None` if there
/// is none: the prefix is all `0xff`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Entries of the tree (in key order) merged with unapplied writes of the
/// same key range (in key order): an unapplied write replaces the tree's
/// entry under its key, and a deleted key is left out.
pub(crate) fn merge<I>(tree: I, unapplied: Vec<Written>) -> impl Iterator<Item = Result<Entry>>
where
    I: Iterator<Item = Result<Entry>>,
{
    Merge {
        tree: tree.peekable(),
        unapplied: unapplied.into_iter().peekable(),
        reverse: false,
    }
}

/// [`merge`] walking backwards: the tree's entries and the unapplied
/// writes both in reverse key order, merged in reverse key order.
pub(crate) fn merge_rev<I>(
    tree: I,
    mut unapplied: Vec<Written>,
) -> impl Iterator<Item = Result<Entry>>
where
    I: Iterator<Item = Result<Entry>>,
{
    unapplied.reverse();
    Merge {
        tree: tree.peekable(),
        unapplied: unapplied.into_iter().peekable(),
        reverse: true,
    }
}

struct Merge<I: Iterator<Item = Result<Entry>>, U: Iterator<Item = Written>> {
    tree: std::iter::Peekable<I>,
    unapplied: std::iter::Peekable<U>,
    /// Both sides come in reverse key order.
    reverse: bool,
}

impl<I, U> Iterator for Merge<I, U>
where
    I: Iterator<Item = Result<Entry>>,
    U: Iterator<Item = Written>,
{
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.tree.peek(), self.unapplied.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.tree.next(),
                (Some(Ok(_)), None) => return self.tree.next(),
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((t, _))), Some((u, _))) => {
                    let order = t.as_slice().cmp(u.as_slice());
                    if self.reverse { order.reverse() } else { order }
                }
            };
            match order {
                std::cmp::Ordering::Less => return self.tree.next(),
                std::cmp::Ordering::Equal => {
                    // The unapplied write is newer than the tree's entry.
                    self.tree.next();
                }
                std::cmp::Ordering::Greater => {}
            }
            if let Some((k, v)) = self.unapplied.next()
                && let Some(v) = v
            {
                return Some(Ok((k, v)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put(k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn entries(items: &[(&str, &str)]) -> Vec<Result<Entry>> {
        items
            .iter()
            .map(|(k, v)| Ok((k.as_bytes().to_vec(), v.as_bytes().to_vec())))
            .collect()
    }

    fn keys(merged: impl Iterator<Item = Result<Entry>>) -> Vec<String> {
        merged
            .map(|e| {
                let (k, v) = e.unwrap();
                format!(
                    "{}={}",
                    String::from_utf8(k).unwrap(),
                    String::from_utf8(v).unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn unapplied_writes_replace_hide_and_join_the_trees_entries() {
        let mut u = Unapplied::default();
        u.commit(vec![
            put("b", "new"),
            Op::Delete(b"c".to_vec()),
            put("e", "1"),
        ]);
        let tree = entries(&[("a", "t"), ("b", "old"), ("c", "t"), ("d", "t")]);
        let merged = merge(tree.into_iter(), u.range(b"", None));
        assert_eq!(keys(merged), ["a=t", "b=new", "d=t", "e=1"]);
        let mut backwards = entries(&[("a", "t"), ("b", "old"), ("c", "t"), ("d", "t")]);
        backwards.reverse();
        let merged = merge_rev(backwards.into_iter(), u.range(b"", None));
        assert_eq!(keys(merged), ["e=1", "d=t", "b=new", "a=t"]);
    }

    #[test]
    fn applied_keys_are_forgotten_unless_written_again() {
        let mut u = Unapplied::default();
        let first = u.commit(vec![put("a", "1"), put("b", "1"), put("c", "1")]);
        let (writes, upto) = u.take_new();
        let writes = in_key_order(writes);
        assert_eq!((writes.len(), upto), (3, first));
        u.commit(vec![put("b", "2")]);
        // The tree now holds a and b as the first commit left them.
        u.applied_keys([&b"a"[..], &b"b"[..]].into_iter(), first);
        assert_eq!(u.get(b"a"), None);
        assert_eq!(u.get(b"b"), Some(Some(b"2".to_vec())));
        assert_eq!(u.get(b"c"), Some(Some(b"1".to_vec())));
        assert_eq!(u.bytes, 2 + 2);
    }

    #[test]
    fn values_written_over_before_the_group_is_taken_count_against_the_room() {
        let mut u = Unapplied::default();
        let value = vec![b'x'; 1 << 20];
        // One key written over and over: one value in `newest`, every one
        // held until the committer takes the group.
        while !u.full() {
            assert!(u.fresh.len() <= 64, "the room never filled");
            u.commit(vec![Op::Put(b"k".to_vec(), value.clone())]);
        }
        assert_eq!(u.newest.len(), 1);
        // The 64 MiB of room counts the one kept and those written over.
        assert!((32..64).contains(&u.fresh.len()), "{}", u.fresh.len());
        let (writes, _) = u.take_new();
        assert_eq!(in_key_order(writes).len(), 1);
        assert!(!u.full());
    }

    #[test]
    fn bytes_count_each_keys_newest_write_once() {
        let mut u = Unapplied::default();
        u.commit(vec![put("a", "1"), put("bb", "22")]);
        assert_eq!(u.bytes, 2 + 4);
        // Overwritten larger, then smaller, then deleted, in later commits
        // and within one, then written again by a deferred write.
        u.commit(vec![put("a", "333"), put("bb", "4")]);
        assert_eq!(u.bytes, 4 + 3);
        u.commit(vec![
            Op::Delete(b"a".to_vec()),
            put("bb", "55555"),
            put("bb", ""),
        ]);
        assert_eq!(u.bytes, 1 + 2);
        // A deferred write counts once its commit is made.
        u.defer(vec![put("a", "xx")]);
        assert_eq!(u.bytes, 1 + 2);
        u.commit(vec![put("c", "")]);
        assert_eq!(u.bytes, 3 + 2 + 1);
    }

    #[test]
    fn applied_commits_are_forgotten_newer_ones_kept() {
        let mut u = Unapplied::default();
        let first = u.commit(vec![put("k", "0"), put("k", "1"), put("j", "1")]);
        u.defer(vec![put("d", "deferred")]);
        assert_eq!(u.get(b"d"), None);
        let (writes, upto) = u.take();
        // Only the newest value of a key is applied.
        assert_eq!((writes.len(), upto), (2, first));
        let second = u.commit(vec![put("k", "2")]);
        u.applied(first);
        assert_eq!(u.get(b"j"), None);
        assert_eq!(u.get(b"k"), Some(Some(b"2".to_vec())));
        assert_eq!(u.get(b"d"), Some(Some(b"deferred".to_vec())));
        let (writes, upto) = u.take();
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = writes
            .into_iter()
            .map(|(k, v)| (k, v.map(|v| v.to_vec())))
            .collect();
        assert_eq!(
            (writes, upto),
            (
                vec![
                    (b"d".to_vec(), Some(b"deferred".to_vec())),
                    (b"k".to_vec(), Some(b"2".to_vec()))
                ],
                second
            )
        );
    }

    #[test]
    fn a_group_takes_each_keys_newest_write_once_in_key_order() {
        let mut u = Unapplied::default();
        u.commit(vec![put("b", "1"), put("a", "1"), put("b", "2")]);
        u.commit(vec![
            put("a", "3"),
            Op::Delete(b"c".to_vec()),
            put("b", "4"),
        ]);
        u.commit(vec![
            put("c", "5"),
            put("b", "6"),
            Op::Delete(b"a".to_vec()),
        ]);
        let (writes, upto) = u.take_new();
        let writes = in_key_order(writes);
        let writes: Vec<(&[u8], Option<&[u8]>)> = writes
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_ref().map(|v| v.as_slice())))
            .collect();
        assert_eq!(
            (writes, upto),
            (
                vec![
                    (&b"a"[..], None),
                    (&b"b"[..], Some(&b"6"[..])),
                    (&b"c"[..], Some(&b"5"[..]))
                ],
                3
            )
        );
        assert!(!u.has_fresh());
    }

    #[test]
    fn a_new_group_takes_only_what_was_written_since_the_last() {
        let mut u = Unapplied::default();
        u.commit(vec![put("a", "1"), put("b", "1")]);
        let (first, upto) = u.take_new();
        let first = in_key_order(first);
        assert_eq!((first.len(), upto), (2, 1));
        u.commit(vec![put("b", "2"), put("c", "2")]);
        let (second, upto) = u.take_new();
        let second = in_key_order(second);
        let keys: Vec<&[u8]> = second.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!((keys, upto), (vec![&b"b"[..], &b"c"[..]], 2));
        // The first group reaching the tree forgets only what no later
        // commit wrote again.
        u.applied(1);
        assert_eq!(u.get(b"a"), None);
        assert_eq!(u.get(b"b"), Some(Some(b"2".to_vec())));
        assert!(u.take_new().0.is_empty());
    }

    #[test]
    fn a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"run/"), Some(b"run0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
