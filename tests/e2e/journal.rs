//! A run's journal as a stopped server left it in its store: the entries a
//! slice made between two of its commits are one key (or, for the commit
//! that finishes the run, part of its record), and read back one by one,
//! numbered without a gap, through a suspension and its wake.

use crate::harness::{Kiln, data_dir};
use kiln_store::{Backend, SledBackend, Store};
use kiln_types::{JournalEntry, JournalRecord, RunId};
use serde_json::json;
use std::sync::Arc;

/// The run's journal keys (each value's first byte) and its entries.
fn journal_of(store: &Store, backend: &SledBackend, id: &str) -> (Vec<u8>, Vec<JournalRecord>) {
    let run = RunId::parse(id).expect("a run id");
    let keys = backend
        .scan_prefix(format!("journal/{id}/").as_bytes())
        .expect("the store reads")
        .into_iter()
        .map(|(_, v)| v.first().copied().unwrap_or_default())
        .collect();
    (keys, store.journal(&run).expect("the journal reads"))
}

/// Checks that `entries` are numbered from 1 without a gap, from the
/// attempt's start to its end.
fn whole(entries: &[JournalRecord]) {
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=entries.len() as u64).collect::<Vec<_>>());
    assert!(matches!(
        entries.first().map(|e| &e.entry),
        Some(JournalEntry::AttemptStarted { attempt: 1, .. })
    ));
    assert!(matches!(
        entries.last().map(|e| &e.entry),
        Some(JournalEntry::AttemptEnded { attempt: 1, .. })
    ));
}

#[tokio::test]
async fn a_slices_entries_are_one_key_and_read_back_in_order() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--warm-wait-ms", "0"]);
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    let mut hellos = Vec::new();
    for _ in 0..5 {
        let id = kiln.trigger_ok("hello-world", json!({"name": "Ada"})).await;
        assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
        hellos.push(id);
    }
    kiln.deploy(kiln_fixtures::PROBE).await;
    // Reads the clock, suspends on a wait, reads it again once woken.
    let sleeper = kiln.trigger_ok("sleep", json!({"ms": 50})).await;
    assert_eq!(kiln.finished(&sleeper).await["status"], "COMPLETED");
    kiln.kill();

    let backend = Arc::new(SledBackend::open(&dir.path().join("store")).expect("the store opens"));
    let store = Store::new(backend.clone());

    // Started and ended in one slice: no key, the record that finished the
    // run holds both, unless the writer let the start go on alone (held 10
    // ms, or an epoch tick of a slow guest): then the start is a key and
    // the end is in the record. Five runs in a row do not all meet that.
    let mut together = 0;
    for id in &hellos {
        let (keys, entries) = journal_of(&store, &backend, id);
        whole(&entries);
        assert!(keys.len() <= 1, "{keys:?} for {entries:?}");
        let run = store
            .run(&RunId::parse(id).expect("a run id"))
            .expect("the store reads")
            .expect("the run");
        let held = run.journal.expect("the record holds the end");
        together += usize::from(keys.is_empty() && held.starts_with('['));
    }
    assert!(
        together > 0,
        "no hello-world run's journal is all in its record"
    );

    // Two slices: what the first made up to its suspension, then the wake
    // (written by the engine) and the rest, which finished the run.
    let (keys, entries) = journal_of(&store, &backend, &sleeper);
    whole(&entries);
    assert!(!keys.is_empty(), "a key a commit before the last: {keys:?}");
    assert!(keys.len() + 1 < entries.len(), "{keys:?} for {entries:?}");
    for expected in ["WAITS", "WAKE"] {
        assert!(
            entries.iter().any(|e| {
                serde_json::to_value(&e.entry).expect("serializes")["type"] == expected
            }),
            "no {expected} entry: {entries:?}"
        );
    }
    assert_eq!(
        store
            .last_journal_seq(&RunId::parse(&sleeper).expect("an id"))
            .expect("reads"),
        entries.len() as u64
    );
}
