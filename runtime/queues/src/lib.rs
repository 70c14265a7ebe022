//! Kiln's run scheduler: which queued run starts next.
//!
//! Runs wait in **queues**. A queue is declared in a bundle (shared by
//! several tasks) or is a task's own queue. Inside a queue, runs that carry a
//! `concurrencyKey` wait in one **lane** per key value; runs without a key
//! share the queue's unkeyed lane. The [`Scheduler`] hands out the next run
//! to start, one at a time, under these rules:
//!
//! - **Limits.** A lane runs at most its queue's `concurrency` at once, a
//!   queue at most its `total` across its lanes, and every queue at most the
//!   environment's base limit. The whole environment runs at most its burst
//!   limit (base × burst factor).
//! - **Fairness.** Queues that can start a run take turns (round robin), and
//!   inside a queue its lanes take turns. A lane that cannot start a run (at
//!   its limit, rate-limited, empty) leaves the rotation and rejoins when
//!   that changes, so a dequeue costs O(1) amortised however many runs and
//!   lanes wait, and a tenant with a backlog of 10,000 runs delays another
//!   tenant's single run by at most one turn.
//! - **Order inside a lane**: by `order` (the run's creation time in ms minus
//!   its priority head start), then by arrival.
//! - **Pause**: a paused queue starts nothing; its runs stay queued.
//! - **Rate limits**: at most `limit` starts per sliding `period`, for the
//!   whole queue or for each lane.
//!
//! The scheduler is a pure data structure: it keeps no clock of its own
//! (every call that depends on time takes `now` in milliseconds) and does no
//! I/O, so its rules are tested deterministically, and the server wraps it
//! with a mutex, a dispatcher task, and the slots of runs executing (a slot
//! given back at an attempt's end starts the runs it lets start).

mod limits;
mod scheduler;
mod window;

pub use limits::{QueueLimits, RateLimit};
pub use scheduler::{Entry, LaneKey, QueueStats, Scheduler, Started};

#[cfg(test)]
mod tests;
