//! The scheduler's state and its dequeue.

use crate::limits::QueueLimits;
use crate::window::Window;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::Hash;

/// A lane's key: the run's `concurrencyKey`, or `None` for runs without one.
pub type LaneKey = Option<String>;

/// A run waiting to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<R> {
    /// The run.
    pub run: R,
    /// Its queue.
    pub queue: String,
    /// Its lane inside the queue.
    pub key: LaneKey,
    /// Its place in the lane: earlier starts first. Kiln uses the run's
    /// creation time in ms minus its priority head start, so a resumed or
    /// retried run keeps its place ahead of newer runs.
    pub order: i64,
    /// The memory its machine may use, in MiB, counted against the
    /// environment's memory budget while it executes.
    pub memory_mib: u32,
}

/// A run the scheduler let start. Hand it back to [`Scheduler::release`]
/// when the run stops executing (it finished, failed to claim, or waits
/// suspended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started<R> {
    /// The run.
    pub run: R,
    /// Its queue.
    pub queue: String,
    /// Its lane.
    pub key: LaneKey,
    /// The memory it holds of the budget, in MiB.
    pub memory_mib: u32,
}

/// What a queue holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Runs waiting to start.
    pub queued: usize,
    /// Runs executing.
    pub running: u32,
    /// Lanes (keys) with runs queued or executing.
    pub lanes: usize,
    /// Whether the queue is paused.
    pub paused: bool,
    /// The queue's limits.
    pub limits: QueueLimits,
    /// The most runs of one lane that may execute at once, after the
    /// environment's base limit.
    pub lane_cap: u32,
    /// The most runs of the queue that may execute at once, after the
    /// environment's base limit.
    pub queue_cap: u32,
}

/// Which runs wait, in which queues and lanes, and which may start next.
/// See the crate documentation for the rules.
#[derive(Debug)]
pub struct Scheduler<R> {
    /// The environment's base limit: no queue runs more at once.
    base: u32,
    /// The environment's burst limit: no more run at once in all.
    burst: u32,
    running: u32,
    queues: HashMap<String, Queue<R>>,
    /// Queues that may be able to start a run, in turn order.
    ready: VecDeque<String>,
    /// Where each queued run waits.
    queued: HashMap<R, Place>,
    seq: u64,
    /// Rate-limited queues (`None`) and lanes (`Some(key)`), by the time
    /// they may start again.
    timed: BTreeSet<(u64, String, Option<LaneKey>)>,
    /// The memory all executing runs together may use, in MiB (`None`: no
    /// budget), and what they hold of it.
    memory_budget: Option<u64>,
    memory_used: u64,
    /// The queue whose next run did not fit the memory budget: until that
    /// queue starts a run (or has none left to start), no other queue
    /// starts one, so memory freed goes to the run that waited for it and a
    /// large run is never starved by smaller ones.
    memory_waiter: Option<String>,
}

#[derive(Debug)]
struct Place {
    queue: String,
    key: LaneKey,
    slot: (i64, u64),
}

#[derive(Debug)]
struct Queue<R> {
    limits: QueueLimits,
    paused: bool,
    running: u32,
    queued: usize,
    lanes: HashMap<LaneKey, Lane<R>>,
    /// Lanes that may be able to start a run, in turn order.
    ready: VecDeque<LaneKey>,
    in_ready: bool,
    /// Starts of the whole queue, for a queue-wide rate limit.
    window: Window,
}

#[derive(Debug)]
struct Lane<R> {
    /// Queued runs and the memory of each.
    queued: BTreeMap<(i64, u64), (R, u32)>,
    running: u32,
    in_ready: bool,
    /// Starts of this lane, for a per-key rate limit.
    window: Window,
}

impl<R> Default for Lane<R> {
    fn default() -> Self {
        Lane {
            queued: BTreeMap::new(),
            running: 0,
            in_ready: false,
            window: Window::default(),
        }
    }
}

impl<R> Queue<R> {
    fn new(limits: QueueLimits) -> Self {
        Queue {
            limits,
            paused: false,
            running: 0,
            queued: 0,
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            in_ready: false,
            window: Window::default(),
        }
    }

    /// Puts a lane back in the rotation if it may start a run.
    fn touch_lane(&mut self, key: &LaneKey, base: u32) {
        let cap = self.limits.lane_cap(base);
        if let Some(lane) = self.lanes.get_mut(key)
            && !lane.in_ready
            && !lane.queued.is_empty()
            && lane.running < cap
        {
            lane.in_ready = true;
            self.ready.push_back(key.clone());
        }
    }

    /// Drops a lane that holds nothing.
    fn tidy_lane(&mut self, key: &LaneKey) {
        if let Some(lane) = self.lanes.get(key)
            && lane.queued.is_empty()
            && lane.running == 0
            && !lane.in_ready
            && lane.window.is_empty()
        {
            self.lanes.remove(key);
        }
    }

    /// The next lane in turn that may start a run now. Lanes that cannot
    /// leave the rotation; rate-limited ones are noted in `timed`.
    fn pick_lane(
        &mut self,
        name: &str,
        base: u32,
        now: u64,
        timed: &mut BTreeSet<(u64, String, Option<LaneKey>)>,
    ) -> Option<LaneKey> {
        let cap = self.limits.lane_cap(base);
        let per_key = self.limits.rate.filter(|r| r.per_key);
        for _ in 0..self.ready.len() {
            let key = self.ready.pop_front()?;
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            lane.in_ready = false;
            if lane.queued.is_empty() || lane.running >= cap {
                continue;
            }
            if let Some(rate) = per_key
                && let Some(until) = lane.window.blocked_until(rate.limit, rate.period_ms, now)
            {
                timed.insert((until, name.to_string(), Some(key)));
                continue;
            }
            return Some(key);
        }
        None
    }
}

/// Whether a run of `mib` fits a memory `budget` of which `used` is held:
/// within what is left, or alone if it is larger than the whole budget.
fn fits(budget: Option<u64>, used: u64, mib: u32) -> bool {
    match budget {
        None => true,
        Some(budget) => used + u64::from(mib) <= budget || used == 0,
    }
}

impl<R: Clone + Eq + Hash> Scheduler<R> {
    /// A scheduler for an environment that runs at most `base` runs of one
    /// queue and `burst` runs in all at once (`burst` is raised to `base`
    /// if lower; both to at least 1).
    pub fn new(base: u32, burst: u32) -> Self {
        let base = base.max(1);
        Scheduler {
            base,
            burst: burst.max(base),
            running: 0,
            queues: HashMap::new(),
            ready: VecDeque::new(),
            queued: HashMap::new(),
            seq: 0,
            timed: BTreeSet::new(),
            memory_budget: None,
            memory_used: 0,
            memory_waiter: None,
        }
    }

    /// Sets the memory all executing runs together may use, in MiB (`None`:
    /// no budget). A run whose machine does not fit what is left waits in
    /// its queue, and no other run starts before it; a run larger than the
    /// whole budget starts only alone.
    pub fn set_memory_budget(&mut self, mib: Option<u64>) {
        self.memory_budget = mib;
        if let Some(name) = self.memory_waiter.take() {
            self.touch_queue(&name);
        }
    }

    /// The memory budget in MiB, if any, and how much executing runs hold.
    pub fn memory(&self) -> (Option<u64>, u64) {
        (self.memory_budget, self.memory_used)
    }

    /// The environment's base and burst limits.
    pub fn environment(&self) -> (u32, u32) {
        (self.base, self.burst)
    }

    /// Creates a queue or changes its limits. Runs already executing keep
    /// running; the new limits apply to the next starts.
    pub fn configure(&mut self, name: &str, limits: QueueLimits) {
        let base = self.base;
        let queue = self
            .queues
            .entry(name.to_string())
            .or_insert_with(|| Queue::new(QueueLimits::default()));
        queue.limits = limits;
        let keys: Vec<LaneKey> = queue.lanes.keys().cloned().collect();
        for key in &keys {
            queue.touch_lane(key, base);
        }
        self.touch_queue(name);
    }

    /// Pauses or resumes a queue. Returns false if there is no such queue.
    pub fn set_paused(&mut self, name: &str, paused: bool) -> bool {
        let Some(queue) = self.queues.get_mut(name) else {
            return false;
        };
        queue.paused = paused;
        if !paused {
            self.touch_queue(name);
        }
        true
    }

    /// Queues a run. A run already queued stays where it is (returns false).
    /// A queue not configured yet is created with no limits of its own.
    pub fn push(&mut self, entry: Entry<R>) -> bool {
        if self.queued.contains_key(&entry.run) {
            return false;
        }
        self.seq += 1;
        let slot = (entry.order, self.seq);
        let base = self.base;
        let queue = self
            .queues
            .entry(entry.queue.clone())
            .or_insert_with(|| Queue::new(QueueLimits::default()));
        let lane = queue.lanes.entry(entry.key.clone()).or_default();
        lane.queued
            .insert(slot, (entry.run.clone(), entry.memory_mib));
        queue.queued += 1;
        queue.touch_lane(&entry.key, base);
        self.queued.insert(
            entry.run,
            Place {
                queue: entry.queue.clone(),
                key: entry.key,
                slot,
            },
        );
        self.touch_queue(&entry.queue);
        true
    }

    /// Takes a queued run out (it was canceled or expired). Returns whether
    /// it was queued.
    pub fn remove(&mut self, run: &R) -> bool {
        let Some(place) = self.queued.remove(run) else {
            return false;
        };
        if let Some(queue) = self.queues.get_mut(&place.queue) {
            if let Some(lane) = queue.lanes.get_mut(&place.key)
                && lane.queued.remove(&place.slot).is_some()
            {
                queue.queued = queue.queued.saturating_sub(1);
            }
            queue.tidy_lane(&place.key);
        }
        true
    }

    /// Whether a run is queued here.
    pub fn is_queued(&self, run: &R) -> bool {
        self.queued.contains_key(run)
    }

    /// The next run to start at `now`, counted as executing until it is
    /// released; `None` if no queued run may start now.
    pub fn next(&mut self, now: u64) -> Option<Started<R>> {
        self.wake(now);
        if self.running >= self.burst {
            return None;
        }
        // A memory waiter that has nothing left to start (its runs were
        // canceled, or it was paused) holds nobody back.
        if let Some(waiter) = &self.memory_waiter
            && self
                .queues
                .get(waiter)
                .is_none_or(|q| q.queued == 0 || q.paused)
        {
            self.memory_waiter = None;
        }
        let base = self.base;
        for _ in 0..self.ready.len() {
            let name = self.ready.pop_front()?;
            if self.memory_waiter.as_ref().is_some_and(|w| *w != name) {
                // Its turn comes after the memory waiter has started.
                self.ready.push_back(name);
                continue;
            }
            let Some(queue) = self.queues.get_mut(&name) else {
                continue;
            };
            queue.in_ready = false;
            if queue.queued == 0 || queue.paused || queue.running >= queue.limits.queue_cap(base) {
                continue;
            }
            let shared_rate = queue.limits.rate.filter(|r| !r.per_key);
            if let Some(rate) = shared_rate
                && let Some(until) = queue.window.blocked_until(rate.limit, rate.period_ms, now)
            {
                self.timed.insert((until, name, None));
                continue;
            }
            let Some(key) = queue.pick_lane(&name, base, now, &mut self.timed) else {
                continue;
            };
            let lane_cap = queue.limits.lane_cap(base);
            let Some(lane) = queue.lanes.get_mut(&key) else {
                continue;
            };
            let Some(&(_, memory_mib)) = lane.queued.first_key_value().map(|(_, v)| v) else {
                continue;
            };
            if !fits(self.memory_budget, self.memory_used, memory_mib) {
                // The lane keeps its turn and the queue its place in the
                // rotation; nothing else starts until memory is released.
                lane.in_ready = true;
                queue.ready.push_front(key);
                queue.in_ready = true;
                self.ready.push_front(name.clone());
                self.memory_waiter = Some(name);
                return None;
            }
            if self.memory_waiter.as_ref() == Some(&name) {
                self.memory_waiter = None;
            }
            let Some((_, (run, _))) = lane.queued.pop_first() else {
                continue;
            };
            lane.running += 1;
            if shared_rate.is_some() {
                queue.window.record(now);
            } else if queue.limits.rate.is_some() {
                lane.window.record(now);
            }
            if !lane.queued.is_empty() && lane.running < lane_cap {
                lane.in_ready = true;
                queue.ready.push_back(key.clone());
            }
            queue.running += 1;
            queue.queued -= 1;
            if queue.queued > 0 {
                queue.in_ready = true;
                self.ready.push_back(name.clone());
            }
            self.running += 1;
            self.memory_used += u64::from(memory_mib);
            self.queued.remove(&run);
            return Some(Started {
                run,
                queue: name,
                key,
                memory_mib,
            });
        }
        None
    }

    /// A started run stopped executing: its slot in its lane, its queue and
    /// the environment is free again.
    pub fn release(&mut self, started: &Started<R>) {
        self.running = self.running.saturating_sub(1);
        self.memory_used = self
            .memory_used
            .saturating_sub(u64::from(started.memory_mib));
        let base = self.base;
        if let Some(queue) = self.queues.get_mut(&started.queue) {
            queue.running = queue.running.saturating_sub(1);
            if let Some(lane) = queue.lanes.get_mut(&started.key) {
                lane.running = lane.running.saturating_sub(1);
            }
            queue.touch_lane(&started.key, base);
            queue.tidy_lane(&started.key);
        }
        self.touch_queue(&started.queue);
    }

    /// When a rate-limited queue or lane may start again: the time the
    /// caller should call [`next`](Self::next) by, if nothing else happens.
    pub fn next_wakeup(&self) -> Option<u64> {
        self.timed.first().map(|(at, _, _)| *at)
    }

    /// How many runs execute now.
    pub fn running(&self) -> u32 {
        self.running
    }

    /// How many runs wait to start, in all queues.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// The names of the known queues, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.queues.keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether a queue is known (configured, or given a run).
    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }

    /// What a queue holds now.
    pub fn stats(&self, name: &str) -> Option<QueueStats> {
        let queue = self.queues.get(name)?;
        Some(QueueStats {
            queued: queue.queued,
            running: queue.running,
            lanes: queue
                .lanes
                .values()
                .filter(|l| !l.queued.is_empty() || l.running > 0)
                .count(),
            paused: queue.paused,
            limits: queue.limits.clone(),
            lane_cap: queue.limits.lane_cap(self.base),
            queue_cap: queue.limits.queue_cap(self.base),
        })
    }

    /// The busiest lanes of a queue (queued plus running, most first), at
    /// most `max`: `(key, queued, running)`.
    pub fn lanes(&self, name: &str, max: usize) -> Vec<(LaneKey, usize, u32)> {
        let Some(queue) = self.queues.get(name) else {
            return Vec::new();
        };
        let mut lanes: Vec<(LaneKey, usize, u32)> = queue
            .lanes
            .iter()
            .filter(|(_, l)| !l.queued.is_empty() || l.running > 0)
            .map(|(k, l)| (k.clone(), l.queued.len(), l.running))
            .collect();
        lanes.sort_by(|a, b| {
            (b.1 + b.2 as usize)
                .cmp(&(a.1 + a.2 as usize))
                .then(a.0.cmp(&b.0))
        });
        lanes.truncate(max);
        lanes
    }

    /// Puts queues and lanes whose rate window reopened by `now` back in
    /// the rotation.
    fn wake(&mut self, now: u64) {
        let base = self.base;
        while let Some(first) = self.timed.first() {
            if first.0 > now {
                break;
            }
            let Some((_, name, lane)) = self.timed.pop_first() else {
                break;
            };
            if let (Some(key), Some(queue)) = (lane, self.queues.get_mut(&name)) {
                queue.touch_lane(&key, base);
            }
            self.touch_queue(&name);
        }
    }

    /// Puts a queue back in the rotation if it has runs waiting.
    fn touch_queue(&mut self, name: &str) {
        if let Some(queue) = self.queues.get_mut(name)
            && !queue.in_ready
            && !queue.paused
            && queue.queued > 0
        {
            queue.in_ready = true;
            self.ready.push_back(name.to_string());
        }
    }
}
