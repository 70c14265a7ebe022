//! End-to-end tests: the real `kiln` binary, started on a loopback port,
//! driven over HTTP and through its CLI, with bundles built from `examples/`
//! and `tests/guests/` by the fixtures' build script.

mod harness;
#[path = "../support/moto.rs"]
mod moto;
#[path = "../support/postgres.rs"]
mod pg_server;

mod annotations;
mod batches;
mod blob_store;
mod budgets;
mod child_keys;
mod children;
mod cluster;
mod dashboard;
mod delays;
mod deploy;
mod durable;
mod envvars;
mod examples;
mod fetch;
mod fuzz;
mod hooks;
mod init;
mod journal;
mod leaks;
mod limits;
mod local;
mod logs;
mod metrics;
mod packets;
mod pending;
mod postgres;
mod projects;
mod queues;
mod restart;
mod retention;
mod runs;
mod schedules;
mod sdk;
mod soak;
mod streams;
mod tokens;
mod traces;
mod typescript;
