//! A run's journal as the store keeps it: entries written together are one
//! key, read back one by one, in order with entries written a key each
//! before.

use kiln_store::{Backend, Batch, EncodedEntry, MemoryBackend, Store};
use kiln_types::{AttemptOutcome, HostCall, JournalEntry, JournalRecord, RunId, Timestamp};
use std::sync::Arc;

fn record(seq: u64, entry: JournalEntry) -> JournalRecord {
    JournalRecord {
        seq,
        at: Timestamp(1_764_806_400_000 + seq),
        entry,
    }
}

fn started(seq: u64) -> JournalRecord {
    record(
        seq,
        JournalEntry::AttemptStarted {
            attempt: 1,
            started: None,
        },
    )
}

fn now(seq: u64) -> JournalRecord {
    record(
        seq,
        JournalEntry::HostCall(HostCall::NowMs { result: seq * 10 }),
    )
}

fn ended(seq: u64) -> JournalRecord {
    record(
        seq,
        JournalEntry::AttemptEnded {
            attempt: 1,
            outcome: AttemptOutcome::Succeeded,
        },
    )
}

fn encoded(records: &[JournalRecord]) -> Vec<EncodedEntry> {
    records
        .iter()
        .map(|r| EncodedEntry::new(r).expect("encodes"))
        .collect()
}

fn as_json(records: &[JournalRecord]) -> Vec<serde_json::Value> {
    records
        .iter()
        .map(|r| serde_json::to_value(r).expect("serializes"))
        .collect()
}

#[tokio::test]
async fn entries_written_together_are_one_key_and_read_back_one_by_one() {
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(backend.clone());
    let run = RunId::generate(1);
    // Two entries a key each, as earlier versions of Kiln wrote them and as
    // a lone entry is still written, then three written together.
    let mut batch = Batch::default();
    batch.append_journal(&run, &started(1));
    batch.append_journal_run(&run, encoded(&[now(2)]));
    store.commit(batch).await.expect("commits");
    let together = [now(3), now(4), ended(5)];
    let mut batch = Batch::default();
    batch.append_journal_run(&run, encoded(&together));
    store.commit(batch).await.expect("commits");

    let prefix = format!("journal/{}/", run.as_str());
    let keys = backend.scan_prefix(prefix.as_bytes()).expect("scans");
    assert_eq!(keys.len(), 3, "one key each for 1 and 2, one for 3 to 5");
    let last_key = &keys[2].0;
    assert_eq!(&last_key[last_key.len() - 8..], &3u64.to_be_bytes());

    let expected = [started(1), now(2), now(3), now(4), ended(5)];
    let (read, bytes) = store.journal_sized(&run).expect("reads");
    assert_eq!(as_json(&read), as_json(&expected));
    let stored: u64 = keys.iter().map(|(_, v)| v.len() as u64).sum();
    assert_eq!(bytes, stored);
    assert_eq!(store.last_journal_seq(&run).expect("reads"), 5);
}

#[tokio::test]
async fn entries_with_a_gap_or_out_of_order_are_written_a_key_each() {
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(backend.clone());
    let run = RunId::generate(2);
    let mut batch = Batch::default();
    batch.append_journal_run(&run, encoded(&[started(1), now(3)]));
    batch.append_journal_run(&run, encoded(&[now(5), now(4)]));
    store.commit(batch).await.expect("commits");
    let prefix = format!("journal/{}/", run.as_str());
    assert_eq!(backend.scan_prefix(prefix.as_bytes()).unwrap().len(), 4);
    let read = store.journal(&run).expect("reads");
    assert_eq!(
        as_json(&read),
        as_json(&[started(1), now(3), now(4), now(5)])
    );
    assert_eq!(store.last_journal_seq(&run).expect("reads"), 5);
    assert_eq!(store.last_journal_seq(&RunId::generate(3)).unwrap(), 0);
}

#[tokio::test]
async fn a_corrupt_run_of_entries_is_an_error_naming_its_key() {
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(backend.clone());
    let run = RunId::generate(4);
    let mut key = format!("journal/{}/", run.as_str()).into_bytes();
    key.extend_from_slice(&1u64.to_be_bytes());
    backend
        .commit(vec![kiln_store::Op::Put(key, b"[{\"seq\":1}".to_vec())])
        .await
        .expect("commits");
    let error = store
        .journal(&run)
        .expect_err("a corrupt key fails the read");
    assert!(error.to_string().contains("journal/"), "{error}");
    assert!(store.last_journal_seq(&run).is_err());
}
