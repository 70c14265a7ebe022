//! The Kiln server: the Trigger.dev-compatible HTTP API over the engine, the
//! store and the sandbox.
//!
//! - [`api`]: axum routes in Trigger.dev's wire format (trigger, retrieve)
//!   plus Kiln's deployments, with bearer-key auth and `{"error": ...}` bodies.
//! - [`executor`]: takes queued runs, runs their attempts in the sandbox, and
//!   applies the outcomes through the engine's transitions.
//! - [`schedules`]: imperative and declarative cron schedules, and the
//!   scheduler that fires each occurrence exactly once.
//! - `metrics`: `GET /metrics`, in Prometheus's text format.
//! - [`LocalRuns`]: triggers and awaits runs in-process, without HTTP.
//! - [`Server`]: opens the data directory, recovers unfinished runs, and
//!   serves.

pub mod api;
mod cluster;
mod config;
mod deployments;
mod duration;
mod environments;
pub mod executor;
mod feed;
mod jwt;
mod local;
mod master_key;
mod metadata;
mod metrics;
mod notify;
mod payload;
mod run_walk;
pub mod schedules;
mod secret;
mod server;
mod traces;
mod trigger;

pub use config::ServerConfig;
pub use executor::parse_size_bytes;
pub use local::{LocalError, LocalRuns};

/// Parses `30s`, `15m`, `2h`, `1h52m18s`... into milliseconds (the CLI's
/// durations, as Trigger.dev's options write them).
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    duration::parse_ms(text)
}
pub use schedules::ScheduleClock;
pub use secret::{generate_secret_key, is_secret_key};
pub use server::Server;
