//! The sled backend keeps every acknowledged commit when the machine loses
//! what sled wrote since its last checkpoint: its page cache, as a power
//! cut takes it. A `SIGKILL` cannot show this (the kernel keeps the page
//! cache of a killed process), so the test makes the loss itself.
//!
//! The store is written and closed; its sled files are copied aside: with
//! the log's bookkeeping the next open's checkpoint adds, what sled holds
//! durably after that checkpoint. The store is opened
//! again and thousands of random commits (puts, overwrites, deletes,
//! values large enough to be chunked) are made and acknowledged, then the
//! store stops as a killed process does. A copy of it as it is (a kill:
//! the tree holds the groups the committer applied to it, the log every
//! group) must open to exactly what an in-memory
//! backend holds after the same commits. Then the store's sled files are
//! replaced by the checkpoint's, keeping only Kiln's write-ahead log, with
//! a torn record after its end as a crash in the middle of a write leaves
//! it: opened again, it must hold exactly the same, with no chunk left
//! that no value owns, and go on taking commits that survive the next
//! open.

use kiln_store::{Backend, MemoryBackend, Op, SledBackend};
use std::path::Path;

mod closed;
mod rng;

use closed::wait_closed;
use rng::Rng;

/// The value of the last commit.
const LAST: &[u8] = b"the end of the log";

fn random_ops(rng: &mut Rng) -> Vec<Op> {
    (0..1 + rng.below(4))
        .map(|_| {
            let key = format!(
                "{}/{:03}",
                ["run", "journal", "timer"][rng.below(3) as usize],
                rng.below(300)
            );
            if rng.below(5) == 0 {
                Op::Delete(key.into_bytes())
            } else {
                // Now and then larger than a chunk (4 KiB with the default
                // segment).
                let len = if rng.below(25) == 0 {
                    9_000
                } else {
                    rng.below(200) as usize
                };
                let byte = rng.below(256) as u8;
                Op::Put(key.into_bytes(), vec![byte; len])
            }
        })
        .collect()
}

/// Makes `count` random commits on both backends, all at once, then waits
/// for every one to be acknowledged.
fn commit_random(
    rng: &mut Rng,
    sled: &SledBackend,
    model: &MemoryBackend,
    count: usize,
    runtime: &tokio::runtime::Runtime,
) {
    let mut acks = Vec::with_capacity(count);
    for _ in 0..count {
        let ops = random_ops(rng);
        acks.push(sled.commit(ops.clone()));
        runtime.block_on(model.commit(ops)).unwrap();
    }
    for ack in acks {
        runtime.block_on(ack).expect("acknowledged");
    }
}

/// Copies the files of directory `from` into `to`, leaving out Kiln's
/// write-ahead log.
fn copy_sled_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "kiln-wal" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_sled_files(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Deletes everything in `dir` but Kiln's write-ahead log.
fn remove_sled_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "kiln-wal" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(entry.path()).unwrap();
        } else {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

/// Opens the sled store in `dir` (the backend waits for a lock sled's
/// threads still hold).
fn open(dir: &Path) -> SledBackend {
    SledBackend::open(dir).expect("the store opens")
}

/// The store's entries, without the sled backend's own (the pieces of
/// chunked values, which scans return as stored).
fn entries(backend: &dyn Backend) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut entries = backend.scan_prefix(b"").unwrap();
    entries.retain(|(k, _)| !k.starts_with(b"\xff\xff"));
    entries
}

/// The size of a chunk with the default segment.
const CHUNK: usize = 4096;

fn assert_same(sled: &SledBackend, model: &MemoryBackend, when: &str) {
    // Every chunk belongs to a value the store holds: none was left
    // behind by a group applied again.
    let chunks = sled.scan_prefix(b"\xff\xffchunk/").unwrap().len();
    let owned: usize = entries(model)
        .iter()
        .filter(|(_, v)| v.len() > CHUNK)
        .map(|(_, v)| v.len().div_ceil(CHUNK))
        .sum();
    assert_eq!(
        chunks, owned,
        "{when}: chunks stored and chunks of values held"
    );
    let stored = entries(sled);
    let expected = model.scan_prefix(b"").unwrap();
    assert_eq!(
        stored.len(),
        expected.len(),
        "{when}: the store holds {} keys, the model {}",
        stored.len(),
        expected.len()
    );
    for ((k, v), (ek, ev)) in stored.iter().zip(&expected) {
        assert_eq!(
            (k, v.len(), v.first()),
            (ek, ev.len(), ev.first()),
            "{when}: key {}",
            String::from_utf8_lossy(ek)
        );
        assert_eq!(v, ev, "{when}: value of {}", String::from_utf8_lossy(k));
    }
}

#[test]
fn acknowledged_commits_outlive_the_loss_of_what_sled_did_not_checkpoint() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let durable = root.path().join("durable-copy");
    let model = MemoryBackend::new();
    let mut rng = Rng(0x5eed_1234_abcd_0001);

    // What the first open writes, then closed: the copy is what sled holds
    // after the next open's checkpoint.
    let store = open(&dir);
    commit_random(&mut rng, &store, &model, 500, &runtime);
    drop(store);
    wait_closed(&dir);
    copy_sled_files(&dir, &durable);

    // Acknowledged after that checkpoint: only in sled's page cache, and
    // in the write-ahead log.
    let store = open(&dir);
    assert_same(&store, &model, "reopened before the loss");
    commit_random(&mut rng, &store, &model, 3_000, &runtime);
    // The last key of the last record, so the test finds where the log
    // ends.
    let last = vec![Op::Put(b"zz-last".to_vec(), LAST.to_vec())];
    runtime.block_on(store.commit(last.clone())).unwrap();
    runtime.block_on(model.commit(last)).unwrap();
    // Halted, as a killed process stops: the log's round is not ended by a
    // clean close.
    store.halt_as_if_killed();
    drop(store);
    wait_closed(&dir);
    // What the open's checkpoint wrote besides the first open's state (the
    // last chunk generation), and the last group the tree holds.
    let bookkeeping: Vec<(sled::IVec, sled::IVec)> = {
        let tree = sled::open(&dir).unwrap();
        let kept = tree
            .scan_prefix(b"\xff\xffkiln-wal")
            .collect::<Result<_, _>>()
            .unwrap();
        drop(tree);
        kept
    };
    wait_closed(&dir);
    assert_eq!(bookkeeping.len(), 2, "the group and chunk generation");

    // A kill keeps the page cache: the tree holds the groups the
    // committer applied, and the log's whole round is applied again over
    // it.
    let killed = root.path().join("killed");
    copy_sled_files(&dir, &killed);
    std::fs::copy(dir.join("kiln-wal"), killed.join("kiln-wal")).unwrap();
    // The kill also cut a group off after the chunks of a value and before
    // its manifest: chunks of a generation no manifest names.
    {
        let tree = sled::open(&killed).unwrap();
        for index in 0..3u32 {
            let mut key = b"\xff\xffchunk/".to_vec();
            key.extend_from_slice(&(1u64 << 40).to_be_bytes());
            key.extend_from_slice(&index.to_be_bytes());
            tree.insert(key, vec![7; CHUNK]).unwrap();
        }
        tree.flush().unwrap();
    }
    wait_closed(&killed);
    let store = open(&killed);
    assert_same(&store, &model, "after a kill");
    drop(store);

    // The loss: sled's files go back to the open's checkpoint (the first
    // open's state and that checkpoint's bookkeeping), except that the
    // group number the tree holds survived while the writes before it did
    // not (sled need not keep a prefix), and the log ends in a torn
    // record, as a crash during a write leaves it.
    remove_sled_files(&dir);
    copy_sled_files(&durable, &dir);
    {
        let tree = sled::open(&dir).unwrap();
        for (key, value) in &bookkeeping {
            tree.insert(key, value).unwrap();
        }
        tree.flush().unwrap();
    }
    wait_closed(&dir);
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut wal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("kiln-wal"))
            .unwrap();
        let mut bytes = Vec::new();
        wal.read_to_end(&mut bytes).unwrap();
        let end = bytes
            .windows(LAST.len())
            .rposition(|w| w == LAST)
            .expect("the last record is in the log")
            + LAST.len();
        // The header of a record that was never finished.
        wal.seek(SeekFrom::Start(end as u64)).unwrap();
        wal.write_all(&[
            0x32, 0x57, 0x4c, 0x4b, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 7, 7, 7,
        ])
        .unwrap();
    }
    assert_ne!(
        open_without_the_log(&durable),
        model.scan_prefix(b"").unwrap(),
        "the checkpoint alone must miss commits, or the test shows nothing"
    );

    let store = open(&dir);
    assert_same(&store, &model, "after the loss");

    // The store goes on: later commits survive another open.
    commit_random(&mut rng, &store, &model, 500, &runtime);
    drop(store);
    let store = open(&dir);
    assert_same(&store, &model, "after writing on");
}

/// What the copy of the checkpoint holds on its own (opened in a
/// directory of its own, without a log).
fn open_without_the_log(durable: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let alone = durable.with_file_name("checkpoint-alone");
    copy_sled_files(durable, &alone);
    let store = open(&alone);
    let held = entries(&store);
    drop(store);
    wait_closed(&alone);
    held
}
