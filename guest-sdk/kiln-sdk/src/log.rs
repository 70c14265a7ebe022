//! Structured logging through the host.

use crate::bindings::kiln::task::host;
use crate::bindings::kiln::task::types::{Field, LogLevel};
use std::fmt::Display;

/// Writes log lines to the run's log, with a level and structured fields.
///
/// ```ignore
/// ctx.log.info("charged card", &[("amount", &amount), ("currency", &"EUR")]);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Logger {
    _private: (),
}

impl Logger {
    pub(crate) const fn new() -> Self {
        Logger { _private: () }
    }

    /// Writes a line at `level`.
    pub fn log(&self, level: LogLevel, message: &str, fields: &[(&str, &dyn Display)]) {
        let fields: Vec<Field> = fields
            .iter()
            .map(|(key, value)| Field {
                key: (*key).to_string(),
                value: value.to_string(),
            })
            .collect();
        host::log(level, message, &fields);
    }

    /// Writes a trace line.
    pub fn trace(&self, message: &str, fields: &[(&str, &dyn Display)]) {
        self.log(LogLevel::Trace, message, fields)
    }

    /// Writes a debug line.
    pub fn debug(&self, message: &str, fields: &[(&str, &dyn Display)]) {
        self.log(LogLevel::Debug, message, fields)
    }

    /// Writes an info line.
    pub fn info(&self, message: &str, fields: &[(&str, &dyn Display)]) {
        self.log(LogLevel::Info, message, fields)
    }

    /// Writes a warning.
    pub fn warn(&self, message: &str, fields: &[(&str, &dyn Display)]) {
        self.log(LogLevel::Warn, message, fields)
    }

    /// Writes an error line.
    pub fn error(&self, message: &str, fields: &[(&str, &dyn Display)]) {
        self.log(LogLevel::Error, message, fields)
    }
}
