//! Fuzzing in the test command: seeded mutations of valid inputs (see
//! `kiln_fixtures::fuzz`) fed to every reader of outside input — cron
//! expressions and time zones, durations, bundle manifests, the deploy-time
//! snapshot check and the bundle loader, journal records read back from the
//! store and whole journals through the replay cursor, snapshot layers, and
//! the HTTP routes that take triggers and NDJSON batch items. Nothing may
//! panic, hang or answer 5xx; the server must serve on afterwards. A
//! failure names the seed and the input, and reproduces exactly.

use crate::harness::{Kiln, data_dir};
use kiln_fixtures::fuzz::Mutator;
use kiln_store::{Backend, MemoryBackend, Op, SnapshotLayer, Store};
use kiln_types::{HostCall, JournalEntry, JournalRecord, RunId, Timestamp, WaitOn, WaitRecord};
use serde_json::json;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// Feeds `rounds` mutations of the `seeds` to `target`, reporting the
/// input that made it panic.
fn survive(
    name: &str,
    seed: u64,
    rounds: usize,
    seeds: &[&[u8]],
    dictionary: &[&[u8]],
    mut target: impl FnMut(&[u8]),
) {
    let mut mutator = Mutator::new(seed);
    for round in 0..rounds {
        let base = seeds[round % seeds.len()];
        let input = mutator.mutate(base, dictionary);
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            panic!(
                "{name} panicked on round {round} of seed {seed}: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}

#[test]
fn cron_expressions_and_time_zones_never_panic_or_hang() {
    let now = Timestamp(1_790_000_000_000);
    survive(
        "cron",
        1,
        2_000,
        &[
            b"*/5 * * * *",
            b"0 9 * * MON-FRI",
            b"30 7 L * *",
            b"0 0 1,15 JAN-JUN *",
            b"15 14 * * 5L",
        ],
        &[
            b"L",
            b"W",
            b"#",
            b"*/",
            b",",
            b"-",
            b"?",
            b"MON",
            b"DEC",
            b"60",
            b"0",
            b"99999999999999999999",
            b"31",
            b"2",
            b" ",
        ],
        |input| {
            let text = String::from_utf8_lossy(input);
            if let Ok(schedule) = kiln_cron::CronSchedule::parse(&text, "UTC") {
                let _ = schedule.describe();
                let _ = schedule.upcoming(now, 3);
                let _ = schedule.latest_at_or_before(now);
            }
        },
    );
    survive(
        "time zone",
        2,
        500,
        &[b"Europe/Paris", b"America/New_York", b"UTC"],
        &[b"/", b"Etc/GMT+", b"..", b"\0"],
        |input| {
            let zone = String::from_utf8_lossy(input);
            let _ = kiln_cron::CronSchedule::parse("0 * * * *", &zone);
        },
    );
}

#[test]
fn durations_never_panic() {
    survive(
        "duration",
        3,
        2_000,
        &[b"30s", b"1h52m18s", b"2w", b"15m"],
        &[b"d", b"w", b"h", b"m", b"s", b"99999999999999999999", b"0"],
        |input| {
            let _ = kiln_server::parse_duration_ms(&String::from_utf8_lossy(input));
        },
    );
}

#[tokio::test]
async fn manifests_and_the_bundle_loader_refuse_mutations_without_panicking() {
    let dir = data_dir();
    let sandbox = kiln_sandbox::Sandbox::new(kiln_sandbox::SandboxConfig::new(
        dir.path().join("compiled"),
    ))
    .expect("a sandbox");
    let bundle = kiln_fixtures::read(kiln_fixtures::HELLO_WORLD);
    let loaded = sandbox.load(&bundle).await.expect("the bundle loads");
    let manifest = serde_json::to_vec(loaded.manifest()).expect("a manifest");
    survive(
        "manifest",
        4,
        2_000,
        &[&manifest],
        &[
            b"null",
            b"-1",
            b"\"\"",
            b"[]",
            b"{}",
            b"1e999",
            b"\"machine\"",
        ],
        |input| {
            let _ = kiln_manifest::Manifest::from_json(&String::from_utf8_lossy(input));
        },
    );
    // The deploy-time check that a snapshot holds the whole guest reads
    // every instruction of an uploaded bundle.
    let dictionary: &[&[u8]] = &[b"\0asm", b"\x0d\0\x01\0", b"\xff\xff\xff\xff\x0f"];
    survive("snapshot safety", 9, 300, &[&bundle], dictionary, |input| {
        let _ = kiln_sandbox::Sandbox::check_snapshot_safety(input);
    });
    // Loading compiles what still validates, so fewer rounds; each must be
    // refused with a reason or load, never panic.
    let mut mutator = Mutator::new(5);
    for round in 0..40 {
        let input = mutator.mutate(&bundle, dictionary);
        let result = tokio::spawn({
            let sandbox = sandbox.clone();
            async move { sandbox.load(&input).await.map(|_| ()) }
        })
        .await;
        assert!(
            result.is_ok(),
            "loading mutation {round} of seed 5 panicked"
        );
    }
}

fn journal_seeds() -> Vec<Vec<u8>> {
    let run = RunId::generate(1);
    [
        JournalEntry::AttemptStarted {
            attempt: 1,
            started: None,
        },
        JournalEntry::HostCall(HostCall::NowMs { result: 17 }),
        JournalEntry::HostCall(HostCall::Trigger {
            task: "t".into(),
            result: Some(run.clone()),
            error: None,
        }),
        JournalEntry::Waits {
            waits: vec![WaitRecord {
                id: 3,
                on: WaitOn::Run { run_id: run },
            }],
        },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, entry)| {
        serde_json::to_vec(&JournalRecord {
            seq: i as u64 + 1,
            at: Timestamp(5),
            entry,
        })
        .expect("encodes")
    })
    .collect()
}

/// An attempt that read the clock, waited on a timer, was suspended, woke
/// and waits again.
fn journal_of_a_suspended_attempt() -> Vec<JournalRecord> {
    let waits = |id: u64| JournalEntry::Waits {
        waits: vec![WaitRecord {
            id,
            on: WaitOn::Timer {
                due_at: Timestamp(9),
            },
        }],
    };
    [
        JournalEntry::AttemptStarted {
            attempt: 1,
            started: None,
        },
        JournalEntry::HostCall(HostCall::NowMs { result: 17 }),
        waits(1),
        JournalEntry::Suspended {
            layer: 1,
            bytes: 100,
            log_calls: 2,
        },
        JournalEntry::Wake {
            id: 1,
            value: kiln_types::WakeValue::Timer,
        },
        waits(2),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, entry)| JournalRecord {
        seq: i as u64 + 1,
        at: Timestamp(5),
        entry,
    })
    .collect()
}

#[tokio::test]
async fn journal_records_and_snapshot_layers_read_back_corrupted_fail_cleanly() {
    let seeds = journal_seeds();
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(backend.clone());
    let run = RunId::generate(2);
    let mut inputs = Vec::new();
    survive(
        "journal record",
        6,
        2_000,
        &seeds,
        &[
            b"null",
            b"\"host-call\"",
            b"{}",
            b"-1",
            b"18446744073709551616",
        ],
        |input| {
            let _ = serde_json::from_slice::<JournalRecord>(input);
            inputs.push(input.to_vec());
        },
    );
    // Read through the store, as a slice start reads a run's journal.
    for (n, input) in inputs.into_iter().take(300).enumerate() {
        let mut key = format!("journal/{run}/").into_bytes();
        key.extend_from_slice(&(n as u64 + 1).to_be_bytes());
        backend
            .commit(vec![Op::Put(key, input)])
            .await
            .expect("commits");
        let _ = store.journal_sized(&run);
    }

    // Whole journals, as a slice start reads them: the replay cursor finds
    // the attempt, the restore point and the pending waits.
    let journal = serde_json::to_vec(&journal_of_a_suspended_attempt()).expect("encodes");
    survive(
        "replay cursor",
        10,
        2_000,
        &[&journal],
        &[
            b"\"wake\"",
            b"\"suspended\"",
            b"\"waits\"",
            b"0",
            b"4294967296",
            b"[]",
        ],
        |input| {
            if let Ok(records) = serde_json::from_slice::<Vec<JournalRecord>>(input) {
                let _ = kiln_engine::cursor::Cursor::at_end(&records)
                    .pending()
                    .count();
                let _ = kiln_engine::cursor::Resume::new(records.clone(), Some((1, 4)));
                if let Some(attempt) = kiln_engine::cursor::attempt_records(records, 1) {
                    let _ = kiln_engine::cursor::Resume::new(attempt, None);
                }
            }
        },
    );

    let image: Vec<u8> = (0..3 * 65_536).map(|i| (i / 7) as u8).collect();
    let layer = SnapshotLayer::capture(&image, None, 9).encode();
    survive(
        "snapshot layer",
        7,
        1_000,
        &[&layer],
        &[b"\xff\xff\xff\xff", b"\0\0\0\0", b"KSEL"],
        |input| {
            if let Ok(layer) = SnapshotLayer::decode(input) {
                let _ = kiln_store::snapshot::compose(&[&layer]);
            }
        },
    );
}

#[tokio::test]
async fn mutated_triggers_and_batch_streams_get_4xx_never_5xx() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::CSV_EXPORT).await;
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    let trigger = json!({
        "payload": json!({"name": "Ada"}).to_string(),
        "options": {"payloadType": "application/json", "tags": ["a"], "delay": "1s"},
    })
    .to_string();
    let super_json = json!({
        "payload": json!({"json": {"name": "Ada"}}).to_string(),
        "options": {"payloadType": "application/super+json", "ttl": "1h"},
    })
    .to_string();
    let dictionary: &[&[u8]] = &[
        b"application/super+json",
        b"text/plain",
        b"application/store",
        b"null",
        b"-1",
        b"\"idempotencyKey\"",
        b"\"concurrencyKey\"",
        b"\"machine\"",
        b"\"maxDuration\"",
        b"99999999999999999999",
    ];
    let mut mutator = Mutator::new(8);
    for round in 0..300 {
        let base = if round % 2 == 0 {
            &trigger
        } else {
            &super_json
        };
        let body = mutator.mutate(base.as_bytes(), dictionary);
        let task = if round % 3 == 0 {
            "hello-world"
        } else {
            "csv-export"
        };
        let (status, answer) = kiln
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/tasks/{task}/trigger"),
                Some(body.clone().into()),
            )
            .await;
        assert!(
            status < 500,
            "trigger round {round}: {status} {answer} for {:?}",
            String::from_utf8_lossy(&body)
        );
    }

    let item = |index: u32| {
        json!({
            "index": index,
            "task": "hello-world",
            "payload": json!({"name": index}).to_string(),
            "options": {"payloadType": "application/json"},
        })
        .to_string()
    };
    let stream: String = (0..5).map(|i| format!("{}\n", item(i))).collect();
    for round in 0..60 {
        let (status, batch) = kiln.post("/api/v3/batches", json!({"runCount": 5})).await;
        assert_eq!(status, 202, "{batch}");
        let id = batch["id"].as_str().expect("a batch id");
        let body = mutator.mutate(stream.as_bytes(), dictionary);
        let (status, answer) = kiln
            .request(
                reqwest::Method::POST,
                &format!("/api/v3/batches/{id}/items"),
                Some(body.clone().into()),
            )
            .await;
        assert!(
            status < 500,
            "batch round {round}: {status} {answer} for {:?}",
            String::from_utf8_lossy(&body)
        );
    }

    // The server serves on.
    let (status, _) = kiln.request(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    let id = kiln
        .trigger_ok("hello-world", json!({"name": "after"}))
        .await;
    assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
}
