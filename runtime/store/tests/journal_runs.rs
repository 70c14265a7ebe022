//! A run's journal as the store keeps it: entries written together are one
//! key, read back one by one, in order with entries written a key each
//! before; the commit that finishes a run keeps its entries in the run's
//! record.

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

/// A run of the given status, made at 1 ms.
fn run_record(id: &RunId, status: kiln_types::RunStatus) -> kiln_types::Run {
    kiln_types::Run {
        status,
        ..kiln_types::Run::queued(
            id.clone(),
            "t",
            kiln_types::DeploymentId::generate(1),
            "1",
            "{}",
            Timestamp(1),
        )
    }
}

/// A run's journal keys and their values.
fn journal_rows(backend: &MemoryBackend, run: &RunId) -> Vec<(Vec<u8>, Vec<u8>)> {
    let prefix = format!("journal/{}/", run.as_str());
    backend.scan_prefix(prefix.as_bytes()).expect("scans")
}

fn journal_keys(backend: &MemoryBackend, run: &RunId) -> usize {
    journal_rows(backend, run).len()
}

#[tokio::test]
async fn the_commit_that_finishes_a_run_keeps_its_entries_in_the_record() {
    use kiln_types::RunStatus;
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(backend.clone());
    let run = RunId::generate(5);
    // The attempt's start and a call, with the run still executing: a key.
    let mut batch = Batch::default();
    batch.append_journal_run(&run, encoded(&[started(1), now(2)]));
    batch.put_run(&run_record(&run, RunStatus::Executing));
    store.commit(batch).await.expect("commits");
    assert_eq!(journal_keys(&backend, &run), 1);
    // The end, with the record that finishes the run: no key, the record
    // holds them.
    let mut batch = Batch::default();
    batch.append_journal_run(&run, encoded(&[now(3), ended(4)]));
    batch.put_run(&run_record(&run, RunStatus::Completed));
    store.commit(batch).await.expect("commits");
    assert_eq!(journal_keys(&backend, &run), 1);
    let stored = store.run(&run).expect("reads").expect("a run");
    assert!(stored.journal.is_some());
    assert_eq!(store.last_journal_seq(&run).expect("reads"), 4);
    let (read, bytes) = store.journal_sized(&run).expect("reads");
    let expected = [started(1), now(2), now(3), ended(4)];
    assert_eq!(as_json(&read), as_json(&expected));
    let in_keys: u64 = journal_rows(&backend, &run)
        .iter()
        .map(|(_, v)| v.len() as u64)
        .sum();
    assert_eq!(
        bytes,
        in_keys + stored.journal.as_ref().map_or(0, |j| j.len() as u64)
    );
    // A later write of the finished run (its tags, say) keeps them.
    let mut tagged = stored.clone();
    tagged.tags = vec!["later".into()];
    store.put_run(&tagged).await.expect("commits");
    assert_eq!(
        as_json(&store.journal(&run).expect("reads")),
        as_json(&expected)
    );
    // Deleting the run deletes them with it.
    let mut batch = Batch::default();
    store
        .delete_run(&mut batch, &tagged)
        .expect("lists its keys");
    store.commit(batch).await.expect("commits");
    assert!(store.journal(&run).expect("reads").is_empty());
}

#[tokio::test]
async fn entries_stay_under_keys_when_the_commit_does_not_finish_the_run_or_they_are_large() {
    use kiln_types::RunStatus;
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(backend.clone());
    // A retry: the attempt ended, the run is queued again.
    let retried = RunId::generate(6);
    let mut batch = Batch::default();
    batch.append_journal_run(&retried, encoded(&[started(1), ended(2)]));
    batch.put_run(&run_record(&retried, RunStatus::Queued));
    store.commit(batch).await.expect("commits");
    assert_eq!(journal_keys(&backend, &retried), 1);
    assert!(store.run(&retried).unwrap().unwrap().journal.is_none());
    // Entries of another run than the one finished.
    let (other, finished) = (RunId::generate(7), RunId::generate(8));
    let mut batch = Batch::default();
    batch.append_journal_run(&other, encoded(&[started(1)]));
    batch.put_run(&run_record(&finished, RunStatus::Completed));
    store.commit(batch).await.expect("commits");
    assert_eq!(journal_keys(&backend, &other), 1);
    assert!(store.run(&finished).unwrap().unwrap().journal.is_none());
    // More than a record takes in.
    let large = RunId::generate(9);
    let calls: Vec<JournalRecord> = (1..=200).map(now).collect();
    let mut batch = Batch::default();
    batch.append_journal_run(&large, encoded(&calls));
    batch.put_run(&run_record(&large, RunStatus::Completed));
    store.commit(batch).await.expect("commits");
    assert_eq!(journal_keys(&backend, &large), 1);
    assert!(store.run(&large).unwrap().unwrap().journal.is_none());
    assert_eq!(store.journal(&large).unwrap().len(), 200);
}
