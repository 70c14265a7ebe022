//! One module per subcommand.

pub mod build;
pub mod cluster;
pub mod deploy;
pub mod dev;
pub mod env;
pub mod init;
pub mod projects;
pub mod queues;
pub mod runs;
pub mod schedules;
pub mod serve;
pub mod trigger;
