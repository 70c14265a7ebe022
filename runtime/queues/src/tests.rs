//! The scheduler's rules, on a fake clock (every call takes `now`).

use crate::{Entry, QueueLimits, RateLimit, Scheduler, Started};

fn entry(run: &str, queue: &str, key: Option<&str>, order: i64) -> Entry<String> {
    Entry {
        run: run.into(),
        queue: queue.into(),
        key: key.map(str::to_string),
        order,
        memory_mib: 0,
    }
}

fn sized(run: &str, queue: &str, order: i64, memory_mib: u32) -> Entry<String> {
    Entry {
        memory_mib,
        ..entry(run, queue, None, order)
    }
}

fn limited(concurrency: u32) -> QueueLimits {
    QueueLimits {
        concurrency: Some(concurrency),
        ..QueueLimits::default()
    }
}

/// Starts everything that may start at `now`.
fn drain(s: &mut Scheduler<String>, now: u64) -> Vec<Started<String>> {
    std::iter::from_fn(|| s.next(now)).collect()
}

fn runs(started: &[Started<String>]) -> Vec<&str> {
    started.iter().map(|s| s.run.as_str()).collect()
}

#[test]
fn a_queue_limit_caps_its_runs_and_a_release_starts_the_next() {
    let mut s = Scheduler::new(10, 10);
    s.configure("emails", limited(2));
    for (i, run) in ["a", "b", "c", "d"].iter().enumerate() {
        s.push(entry(run, "emails", None, i as i64));
    }
    let first = drain(&mut s, 0);
    assert_eq!(runs(&first), ["a", "b"]);
    assert_eq!(s.stats("emails").unwrap().running, 2);
    assert_eq!(s.stats("emails").unwrap().queued, 2);
    s.release(&first[0]);
    assert_eq!(runs(&drain(&mut s, 0)), ["c"]);
}

#[test]
fn each_concurrency_key_gets_its_own_lane_with_the_queue_limit() {
    let mut s = Scheduler::new(10, 10);
    s.configure("pr", limited(1));
    s.push(entry("a1", "pr", Some("acme"), 1));
    s.push(entry("a2", "pr", Some("acme"), 2));
    s.push(entry("b1", "pr", Some("bolt"), 3));
    s.push(entry("b2", "pr", Some("bolt"), 4));
    let started = drain(&mut s, 0);
    assert_eq!(runs(&started), ["a1", "b1"]);
    assert_eq!(s.stats("pr").unwrap().lanes, 2);
    // acme's lane is full; bolt's release frees only bolt's lane.
    s.release(&started[1]);
    assert_eq!(runs(&drain(&mut s, 0)), ["b2"]);
    s.release(&started[0]);
    assert_eq!(runs(&drain(&mut s, 0)), ["a2"]);
}

#[test]
fn a_total_cap_bounds_the_queue_across_its_keys() {
    let mut s = Scheduler::new(10, 10);
    s.configure(
        "pr",
        QueueLimits {
            concurrency: Some(1),
            total: Some(2),
            rate: None,
        },
    );
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        s.push(entry(key, "pr", Some(key), i as i64));
    }
    let started = drain(&mut s, 0);
    assert_eq!(runs(&started), ["a", "b"]);
    s.release(&started[0]);
    assert_eq!(runs(&drain(&mut s, 0)), ["c"]);
}

#[test]
fn the_environment_bounds_each_queue_by_its_base_and_all_by_its_burst() {
    let mut s = Scheduler::new(2, 3);
    s.configure("big", limited(100));
    for i in 0..5 {
        s.push(entry(&format!("x{i}"), "big", None, i));
        s.push(entry(&format!("y{i}"), "other", None, i));
    }
    let started = drain(&mut s, 0);
    assert_eq!(started.len(), 3, "the burst limit");
    assert_eq!(s.stats("big").unwrap().running, 2);
    assert_eq!(
        s.stats("big").unwrap().lane_cap,
        2,
        "a declared 100 is cut to the base"
    );
    // With `other` at 1, releasing one of `big` lets `other` take the slot
    // in turn order; `big` may not pass its base limit of 2 anyway.
    let big = started.iter().find(|r| r.queue == "big").unwrap().clone();
    s.release(&big);
    let next = drain(&mut s, 0);
    assert_eq!(next.len(), 1);
}

#[test]
fn priority_is_a_head_start_inside_a_lane() {
    let mut s = Scheduler::new(1, 1);
    // Created at 10 s, 20 s and 30 s; the last with a 25 s head start.
    s.push(entry("first", "q", None, 10_000));
    s.push(entry("second", "q", None, 20_000));
    s.push(entry("urgent", "q", None, 30_000 - 25_000));
    let mut order = Vec::new();
    while let Some(started) = s.next(0) {
        order.push(started.run.clone());
        s.release(&started);
    }
    assert_eq!(order, ["urgent", "first", "second"]);
}

#[test]
fn a_heavy_key_backlog_delays_a_light_key_by_one_turn_at_most() {
    let mut s = Scheduler::new(4, 4);
    s.configure("reports", limited(4));
    for i in 0..10_000 {
        s.push(entry(&format!("heavy-{i}"), "reports", Some("heavy"), i));
    }
    // Two heavy runs execute and free their slots, then the light tenant's
    // single run arrives behind 9,998 queued heavy runs.
    for _ in 0..2 {
        let started = s.next(0).unwrap();
        s.release(&started);
    }
    s.push(entry("light", "reports", Some("light"), 20_000));
    let mut waited = 0;
    loop {
        let started = s.next(0).unwrap();
        if started.run == "light" {
            break;
        }
        waited += 1;
        s.release(&started);
    }
    assert!(waited <= 1, "the light run waited {waited} dequeues");
}

#[test]
fn queues_take_turns_too() {
    let mut s = Scheduler::new(8, 8);
    for i in 0..1_000 {
        s.push(entry(&format!("bulk-{i}"), "bulk", None, i));
    }
    let started = s.next(0).unwrap();
    s.release(&started);
    s.push(entry("alert", "alerts", None, 5_000));
    let mut waited = 0;
    while s.next(0).unwrap().run != "alert" {
        waited += 1;
    }
    assert!(waited <= 1, "the alert waited {waited} dequeues");
}

#[test]
fn without_keys_one_lane_is_first_come_first_served() {
    // What Trigger.dev users meet without a concurrencyKey: the light run
    // waits for the whole backlog ahead of it.
    let mut s = Scheduler::new(1, 1);
    for i in 0..100 {
        s.push(entry(&format!("heavy-{i}"), "reports", None, i));
    }
    s.push(entry("light", "reports", None, 1_000));
    let mut position = 0;
    loop {
        let started = s.next(0).unwrap();
        s.release(&started);
        if started.run == "light" {
            break;
        }
        position += 1;
    }
    assert_eq!(position, 100);
}

#[test]
fn a_paused_queue_starts_nothing_until_resumed() {
    let mut s = Scheduler::new(4, 4);
    s.configure("paused", QueueLimits::default());
    assert!(s.set_paused("paused", true));
    assert!(!s.set_paused("unknown", true));
    s.push(entry("p1", "paused", None, 1));
    s.push(entry("p2", "paused", None, 2));
    s.push(entry("o1", "open", None, 3));
    assert_eq!(runs(&drain(&mut s, 0)), ["o1"]);
    assert_eq!(s.stats("paused").unwrap().queued, 2);
    assert!(s.stats("paused").unwrap().paused);
    s.set_paused("paused", false);
    assert_eq!(runs(&drain(&mut s, 0)), ["p1", "p2"]);
}

#[test]
fn a_queue_rate_limit_allows_n_starts_per_window() {
    let mut s = Scheduler::new(10, 10);
    s.configure(
        "api",
        QueueLimits {
            rate: Some(RateLimit {
                limit: 2,
                period_ms: 1_000,
                per_key: false,
            }),
            ..QueueLimits::default()
        },
    );
    for i in 0..5 {
        s.push(entry(&format!("r{i}"), "api", Some(&format!("k{i}")), i));
    }
    let mut all = Vec::new();
    for now in [0, 500, 999, 1_000, 1_500, 2_000] {
        let started = drain(&mut s, now);
        for run in &started {
            s.release(run);
        }
        all.push((now, started.len()));
        if now == 0 || now == 1_000 {
            assert_eq!(s.next_wakeup(), Some(now + 1_000));
        }
    }
    assert_eq!(
        all,
        [
            (0, 2),
            (500, 0),
            (999, 0),
            (1_000, 2),
            (1_500, 0),
            (2_000, 1)
        ]
    );
}

#[test]
fn a_per_key_rate_limit_gives_each_key_its_own_window() {
    let mut s = Scheduler::new(10, 10);
    s.configure(
        "api",
        QueueLimits {
            rate: Some(RateLimit {
                limit: 1,
                period_ms: 60_000,
                per_key: true,
            }),
            ..QueueLimits::default()
        },
    );
    for (i, key) in ["a", "a", "b", "b"].iter().enumerate() {
        s.push(entry(&format!("{key}{i}"), "api", Some(key), i as i64));
    }
    let first = drain(&mut s, 0);
    assert_eq!(runs(&first), ["a0", "b2"]);
    for run in &first {
        s.release(run);
    }
    assert!(drain(&mut s, 59_999).is_empty());
    assert_eq!(s.next_wakeup(), Some(60_000));
    assert_eq!(runs(&drain(&mut s, 60_000)), ["a1", "b3"]);
}

#[test]
fn a_removed_run_never_starts_and_a_run_is_queued_once() {
    let mut s = Scheduler::new(2, 2);
    assert!(s.push(entry("a", "q", None, 1)));
    assert!(!s.push(entry("a", "q", None, 1)));
    s.push(entry("b", "q", None, 2));
    assert!(s.remove(&"a".to_string()));
    assert!(!s.remove(&"a".to_string()));
    assert_eq!(runs(&drain(&mut s, 0)), ["b"]);
    assert_eq!(s.queued(), 0);
}

#[test]
fn raising_a_limit_starts_waiting_runs_at_once() {
    let mut s = Scheduler::new(10, 10);
    s.configure("q", limited(1));
    for i in 0..3 {
        s.push(entry(&format!("r{i}"), "q", None, i));
    }
    assert_eq!(drain(&mut s, 0).len(), 1);
    s.configure("q", limited(3));
    assert_eq!(drain(&mut s, 0).len(), 2);
}

#[test]
fn a_waiting_parent_releases_its_slot_so_its_child_on_the_same_queue_runs() {
    // The server releases a run's slot when it suspends and queues it again
    // when it wakes; the scheduler only sees runs come and go.
    let mut s = Scheduler::new(4, 4);
    s.configure("one", limited(1));
    s.push(entry("parent", "one", None, 1));
    let parent = s.next(0).unwrap();
    s.push(entry("child", "one", None, 2));
    assert!(s.next(0).is_none(), "the parent holds the only slot");
    s.release(&parent); // the parent waits on the child, suspended
    let child = s.next(0).unwrap();
    assert_eq!(child.run, "child");
    s.release(&child);
    s.push(entry("parent", "one", None, 1)); // woken
    assert_eq!(s.next(0).unwrap().run, "parent");
}

#[test]
fn lanes_lists_the_busiest_keys() {
    let mut s = Scheduler::new(1, 1);
    for i in 0..3 {
        s.push(entry(&format!("a{i}"), "q", Some("a"), i));
    }
    s.push(entry("b0", "q", Some("b"), 9));
    let lanes = s.lanes("q", 1);
    assert_eq!(lanes, [(Some("a".to_string()), 3, 0)]);
}

#[test]
fn a_run_whose_machine_does_not_fit_the_memory_budget_waits_in_its_queue() {
    let mut s = Scheduler::new(10, 10);
    s.set_memory_budget(Some(1_024));
    s.push(sized("a", "q", 1, 512));
    s.push(sized("b", "q", 2, 512));
    s.push(sized("c", "q", 3, 512));
    s.push(sized("small", "other", 4, 256));
    // Queues take turns: a, then small; b would go past the budget.
    let first = drain(&mut s, 0);
    assert_eq!(runs(&first), ["a", "small"]);
    assert_eq!(s.memory(), (Some(1_024), 768));
    assert!(drain(&mut s, 0).is_empty());
    // Memory released, the next in line starts, and only as much as fits.
    s.release(&first[0]);
    assert_eq!(runs(&drain(&mut s, 0)), ["b"]);
    assert_eq!(s.memory(), (Some(1_024), 768));
    s.release(&first[1]);
    assert_eq!(runs(&drain(&mut s, 0)), ["c"]);
    assert_eq!(s.memory(), (Some(1_024), 1_024));
}

#[test]
fn a_run_larger_than_the_whole_budget_starts_alone() {
    let mut s = Scheduler::new(10, 10);
    s.set_memory_budget(Some(1_024));
    s.push(sized("small", "q", 1, 256));
    s.push(sized("huge", "q", 2, 4_096));
    let small = drain(&mut s, 0);
    assert_eq!(runs(&small), ["small"]);
    s.release(&small[0]);
    let huge = drain(&mut s, 0);
    assert_eq!(runs(&huge), ["huge"]);
    s.push(sized("after", "q", 3, 256));
    assert!(drain(&mut s, 0).is_empty(), "nothing starts beside it");
    s.release(&huge[0]);
    assert_eq!(runs(&drain(&mut s, 0)), ["after"]);
    // Without a budget, memory is not counted.
    s.set_memory_budget(None);
    s.push(sized("x", "q", 4, 4_096));
    s.push(sized("y", "q", 5, 4_096));
    assert_eq!(runs(&drain(&mut s, 0)), ["x", "y"]);
}

#[test]
fn a_run_waiting_for_memory_is_not_starved_by_smaller_ones() {
    let mut s = Scheduler::new(10, 10);
    s.set_memory_budget(Some(1_024));
    s.push(sized("s1", "small", 1, 256));
    let s1 = drain(&mut s, 0);
    assert_eq!(runs(&s1), ["s1"]);
    s.push(sized("big", "large", 2, 1_024));
    s.push(sized("s2", "small", 3, 256));
    // s2 would fit, but big waits for memory first.
    assert!(drain(&mut s, 0).is_empty());
    s.release(&s1[0]);
    let big = drain(&mut s, 0);
    assert_eq!(runs(&big), ["big"]);
    s.release(&big[0]);
    assert_eq!(runs(&drain(&mut s, 0)), ["s2"]);
}

#[test]
fn canceling_the_run_that_waits_for_memory_lets_the_others_go() {
    let mut s = Scheduler::new(10, 10);
    s.set_memory_budget(Some(1_024));
    s.push(sized("s1", "small", 1, 512));
    assert_eq!(runs(&drain(&mut s, 0)), ["s1"]);
    s.push(sized("big", "large", 2, 1_024));
    s.push(sized("s2", "small", 3, 256));
    assert!(drain(&mut s, 0).is_empty());
    assert!(s.remove(&"big".to_string()));
    assert_eq!(runs(&drain(&mut s, 0)), ["s2"]);
}
