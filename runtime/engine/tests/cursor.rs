//! The replay cursor, case by case: where a slice resumes, how a step's
//! waits are checked against the journal, and what a guest at rest does.

use kiln_engine::cursor::{Cursor, Rest, Resume, Stepped, WaitRequest, attempt_records};
use kiln_types::{
    FetchRequest, HostCall, JournalEntry, JournalRecord, RunId, Timestamp, WaitOn, WaitRecord,
    WakeValue,
};
use std::collections::VecDeque;

fn record(seq: u64, entry: JournalEntry) -> JournalRecord {
    JournalRecord {
        seq,
        at: Timestamp(seq),
        entry,
    }
}

fn timer(id: u64, due: u64) -> WaitRecord {
    WaitRecord {
        id,
        on: WaitOn::Timer {
            due_at: Timestamp(due),
        },
    }
}

fn child(id: u64) -> WaitRecord {
    WaitRecord {
        id,
        on: WaitOn::Run {
            run_id: RunId::parse(&format!("run_{id:025}")).unwrap(),
        },
    }
}

fn fetch(id: u64) -> WaitRecord {
    WaitRecord {
        id,
        on: WaitOn::Fetch {
            request: FetchRequest {
                method: "GET".into(),
                url: "http://x".into(),
                headers: Vec::new(),
                body: None,
                timeout_ms: None,
                sealed: None,
            },
        },
    }
}

fn cursor(waits: Vec<WaitRecord>) -> Cursor {
    let mut cursor = Cursor::default();
    cursor.armed(waits);
    cursor
}

#[test]
fn a_slice_resumes_after_its_snapshot_with_the_waits_pending_there() {
    let journal = vec![
        record(
            1,
            JournalEntry::AttemptStarted {
                attempt: 1,
                started: None,
            },
        ),
        record(2, JournalEntry::HostCall(HostCall::NowMs { result: 5 })),
        record(
            3,
            JournalEntry::Waits {
                waits: vec![timer(1, 50), child(2)],
            },
        ),
        record(
            4,
            JournalEntry::Suspended {
                layer: 1,
                bytes: 9,
                log_calls: 3,
            },
        ),
        record(
            5,
            JournalEntry::Wake {
                id: 1,
                value: WakeValue::Timer,
            },
        ),
        record(
            6,
            JournalEntry::HostCall(HostCall::Log {
                level: "info".into(),
                message: "old".into(),
            }),
        ),
        record(
            7,
            JournalEntry::Suspended {
                layer: 2,
                bytes: 9,
                log_calls: 4,
            },
        ),
    ];
    assert!(
        attempt_records(journal.clone(), 2).is_none(),
        "attempt 2 has not started"
    );
    let records = attempt_records(journal, 1).unwrap();

    // From layer 1 (taken at entry 4): the wake after it is replayed; log
    // calls and suspension markers are not.
    let resume = Resume::new(records.clone(), Some((1, 4)));
    assert_eq!(
        resume.replay,
        VecDeque::from([JournalEntry::Wake {
            id: 1,
            value: WakeValue::Timer
        }])
    );
    assert_eq!(
        resume.cursor.pending().map(|w| w.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!((resume.restored_log_calls, resume.saved_log_calls), (3, 4));

    // From the start: everything is replayed, nothing is pending yet.
    let resume = Resume::new(records.clone(), None);
    assert_eq!(
        resume.replay.len(),
        3,
        "the host call, the waits and the wake"
    );
    assert_eq!(resume.cursor.pending().count(), 0);
    assert_eq!((resume.restored_log_calls, resume.saved_log_calls), (0, 4));

    // From layer 2 (entry 7): only wait 2 is pending, nothing to replay.
    let resume = Resume::new(records, Some((2, 7)));
    assert!(resume.replay.is_empty());
    assert_eq!(
        resume.cursor.pending().map(|w| w.id).collect::<Vec<_>>(),
        vec![2]
    );
}

#[test]
fn a_steps_waits_are_checked_against_the_journal() {
    let journaled = vec![timer(1, 50), child(2)];
    let requested = |second: WaitRequest| vec![(1, WaitRequest::Duration(40)), (2, second)];
    let child_id = format!("run_{:025}", 2);
    let cases: Vec<(Vec<(u64, WaitRequest)>, bool)> = vec![
        (requested(WaitRequest::Run(child_id.clone())), true),
        (requested(WaitRequest::Run(format!("run_{:025}", 3))), false),
        (requested(WaitRequest::Token("waitpoint_x".into())), false),
        (vec![(1, WaitRequest::Duration(40))], false),
        (
            vec![
                (1, WaitRequest::Until(Timestamp(50))),
                (2, WaitRequest::Run(child_id.clone())),
            ],
            true,
        ),
        (
            vec![
                (1, WaitRequest::Until(Timestamp(51))),
                (2, WaitRequest::Run(child_id)),
            ],
            false,
        ),
    ];
    for (requested, fits) in cases {
        let mut replay = VecDeque::from([JournalEntry::Waits {
            waits: journaled.clone(),
        }]);
        let mut cursor = Cursor::default();
        let stepped = cursor.waits(&mut replay, &requested);
        match fits {
            true => {
                assert_eq!(stepped, Stepped::Known, "{requested:?}");
                assert_eq!(cursor.pending().count(), 2);
                assert!(replay.is_empty());
            }
            false => assert!(matches!(stepped, Stepped::Diverged(_)), "{requested:?}"),
        }
    }
    // Live: nothing left to replay.
    let mut cursor = Cursor::default();
    assert_eq!(
        cursor.waits(&mut VecDeque::new(), &[(1, WaitRequest::Duration(5))]),
        Stepped::Live
    );
    assert_eq!(cursor.waits(&mut VecDeque::new(), &[]), Stepped::Known);
    // Replay holds something else where the guest waits.
    let mut replay = VecDeque::from([JournalEntry::HostCall(HostCall::NowMs { result: 1 })]);
    assert!(matches!(
        cursor.waits(&mut replay, &[(1, WaitRequest::Duration(5))]),
        Stepped::Diverged(_)
    ));
}

#[test]
fn a_guest_at_rest_wakes_from_the_journal_fetches_sleeps_warm_or_suspends() {
    let now = Timestamp(1_000);
    let warm = 100;
    let rest = |waits: Vec<WaitRecord>, replay: Vec<JournalEntry>| {
        cursor(waits).at_rest(&mut VecDeque::from(replay), now, warm)
    };
    let wake = |id| JournalEntry::Wake {
        id,
        value: WakeValue::Timer,
    };
    assert_eq!(
        rest(vec![timer(1, 5_000)], vec![wake(1)]),
        Rest::Wake {
            id: 1,
            value: WakeValue::Timer
        }
    );
    assert!(matches!(
        rest(vec![timer(1, 5_000)], vec![wake(2)]),
        Rest::Broken(_)
    ));
    assert!(matches!(
        rest(
            vec![timer(1, 5_000)],
            vec![JournalEntry::HostCall(HostCall::NowMs { result: 1 })]
        ),
        Rest::Diverged(_)
    ));
    assert!(matches!(
        rest(vec![child(2), fetch(3)], vec![]),
        Rest::Fetch { id: 3, .. }
    ));
    assert_eq!(rest(vec![timer(1, 1_050), child(2)], vec![]), Rest::Suspend);
    assert_eq!(
        rest(vec![timer(1, 1_050), timer(2, 1_020)], vec![]),
        Rest::Warm {
            id: 2,
            due: Timestamp(1_020)
        }
    );
    assert_eq!(
        rest(vec![timer(1, 900)], vec![]),
        Rest::Warm {
            id: 1,
            due: Timestamp(900)
        }
    );
    assert_eq!(rest(vec![timer(1, 1_101)], vec![]), Rest::Suspend);
    assert_eq!(rest(vec![], vec![]), Rest::Deadlock);
}

#[test]
fn a_guest_that_finishes_early_on_replay_diverges() {
    let cursor = Cursor::default();
    assert_eq!(cursor.finished(&VecDeque::new()), None);
    let left = VecDeque::from([JournalEntry::Wake {
        id: 1,
        value: WakeValue::Timer,
    }]);
    assert!(cursor.finished(&left).is_some());
}
