//! The error a task returns.

use crate::bindings::kiln::task::types as wit;

/// A task's error: it fails the attempt, and the run is retried by the task's
/// retry policy unless the error is an [`abort`](TaskError::abort).
///
/// Any `std::error::Error` converts into it, so `?` works on most results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// The error's kind (`Error` unless set).
    pub name: String,
    /// What went wrong.
    pub message: String,
    /// A chain of causes, when known.
    pub stack: Option<String>,
    /// Do not retry: the run fails at once (Trigger.dev's `AbortTaskRunError`).
    pub abort: bool,
    /// Retry after this many milliseconds instead of the policy's backoff.
    pub retry_delay_ms: Option<u64>,
}

impl TaskError {
    /// An abort named `name` for a host call the host refused, saying what
    /// the task was `doing`.
    pub(crate) fn from_host(doing: &str, name: &str, error: wit::HostError) -> Self {
        let message = match error {
            wit::HostError::Unsupported(m)
            | wit::HostError::Invalid(m)
            | wit::HostError::NotFound(m)
            | wit::HostError::Internal(m) => m,
        };
        TaskError::abort(format!("{doing} failed: {message}")).with_name(name)
    }

    /// An error with this message; the attempt may be retried.
    pub fn new(message: impl Into<String>) -> Self {
        TaskError {
            name: "Error".into(),
            message: message.into(),
            stack: None,
            abort: false,
            retry_delay_ms: None,
        }
    }

    /// An error that ends the run without retrying.
    pub fn abort(message: impl Into<String>) -> Self {
        TaskError {
            name: "AbortTaskRunError".into(),
            abort: true,
            ..TaskError::new(message)
        }
    }

    /// Sets the error's kind.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Asks for the retry to happen after `ms` milliseconds.
    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_delay_ms = Some(ms);
        self
    }

    pub(crate) fn into_wit(self) -> wit::TaskError {
        wit::TaskError {
            name: self.name,
            message: self.message,
            stack: self.stack,
            abort: self.abort,
            retry_delay_ms: self.retry_delay_ms,
        }
    }
}

impl<E: std::error::Error> From<E> for TaskError {
    fn from(error: E) -> Self {
        let mut causes = Vec::new();
        let mut source = error.source();
        while let Some(cause) = source {
            causes.push(format!("caused by: {cause}"));
            source = cause.source();
        }
        TaskError {
            stack: (!causes.is_empty()).then(|| causes.join("\n")),
            ..TaskError::new(error.to_string())
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}
