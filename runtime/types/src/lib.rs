//! Kiln's vocabulary: typed ids, run statuses, and the records the server
//! stores for deployments, runs and schedules.
//!
//! Everything here is plain data with serde, shared by the engine, the store
//! and the HTTP API.

mod deployment;
mod ids;
pub mod journal;
mod run;
mod schedule;
mod status;
mod time;
mod token;
mod trace;
mod wake;

pub use deployment::{DeployedTask, Deployment};
pub use ids::{BatchId, DeploymentId, IdError, RunId, ScheduleId, TokenId};
pub use journal::{
    FetchRequest, FetchResponse, HostCall, JournalEntry, JournalRecord, RunOutcome, StartedWith,
    WaitOn, WaitRecord, WakeValue,
};
pub use run::{
    Attempt, AttemptOutcome, DebounceMode, LogLine, Logs, ParentRun, Run, RunDebounce, RunError,
    RunTtl,
};
pub use schedule::{RunSchedule, Schedule, ScheduleKind};
pub use status::RunStatus;
pub use time::Timestamp;
pub use token::{TokenStatus, WaitToken};
pub use trace::TraceContext;
pub use wake::{Arrival, Waiter};
