//! The manifest of a Kiln bundle: what a bundle's `describe` export returns.
//!
//! The guest SDK builds a [`Manifest`] from the bundle's `#[task]` functions and
//! serialises it to JSON; the server parses it at deploy time, checks it with
//! [`Manifest::validate`], and keeps it with the deployment. The shapes here are
//! shared by both sides, so they hold only serde types.

use serde::{Deserialize, Serialize};

mod machine;
mod queue;
mod retry;

pub use machine::{Machine, UnknownMachine};
pub use queue::{MAX_RATE_PERIOD_MS, QueueManifest, RateLimitManifest, TASK_QUEUE_PREFIX};
pub use retry::RetryPolicy;

/// The manifest format this crate reads and writes.
pub const MANIFEST_VERSION: u32 = 1;

/// Everything a bundle declares: its tasks and their settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The manifest format version ([`MANIFEST_VERSION`]).
    pub manifest_version: u32,
    /// The version of the guest SDK that built the bundle.
    pub sdk_version: String,
    /// The bundle's tasks.
    pub tasks: Vec<TaskManifest>,
    /// The queues the bundle declares (each task's own queue is implied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<QueueManifest>,
}

/// One task of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskManifest {
    /// The task id backends trigger it by (`hello-world`).
    pub id: String,
    /// The JSON Schema of the payload, for schema tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_schema: Option<serde_json::Value>,
    /// The declared queue the task runs on; its own queue (`task/<id>`)
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The concurrency limit of the task's own queue (only without `queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// The retry policy for failed attempts.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The machine preset attempts run on.
    #[serde(default)]
    pub machine: Machine,
    /// The most execution time (waits excluded) a run may use, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u64>,
    /// Where the task is defined in the guest's source (`src/lib.rs:12`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Whether this is a scheduled task (its payload is
    /// `kiln_sdk::schedules::ScheduledPayload`): only scheduled tasks accept
    /// schedules.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scheduled: bool,
    /// The task's declarative schedule, synced on each deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<DeclaredCron>,
    /// The environment variables the task needs (`#[task(env = [...])]`):
    /// a deploy to an environment that lacks one warns, or with `strict`
    /// refuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// A schedule declared on a task: a cron expression, read in UTC unless a
/// time zone is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredCron {
    /// The five-field cron expression.
    pub pattern: String,
    /// The IANA time zone (`America/New_York`); UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError(pub String);

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ManifestError {}

/// The longest task id or queue name a manifest may hold.
pub const MAX_ID_LEN: usize = 128;

impl Manifest {
    /// Parses a manifest from the JSON a bundle's `describe` returned, and
    /// validates it.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_str(text)
            .map_err(|e| ManifestError(format!("the bundle's manifest is not valid: {e}")))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks what serde cannot: the format version, that task ids are
    /// non-empty, path-safe and unique, and that settings are in range.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.manifest_version != MANIFEST_VERSION {
            return Err(ManifestError(format!(
                "manifest version {} is not supported (this server reads version {MANIFEST_VERSION}); rebuild the bundle with a matching kiln-sdk",
                self.manifest_version
            )));
        }
        if self.tasks.is_empty() {
            return Err(ManifestError(
                "the bundle declares no tasks; list them in kiln_sdk::bundle!".into(),
            ));
        }
        self.validate_queues()?;
        let mut seen = std::collections::BTreeSet::new();
        for task in &self.tasks {
            check_id("task id", &task.id)?;
            if !seen.insert(task.id.as_str()) {
                return Err(ManifestError(format!(
                    "task id `{}` is declared twice",
                    task.id
                )));
            }
            if let Some(queue) = &task.queue {
                check_id("queue name", queue)?;
                if !self.queues.iter().any(|q| &q.name == queue) {
                    return Err(ManifestError(format!(
                        "task `{}` runs on queue `{queue}`, which the bundle does not declare; declare it with `kiln_sdk::Queue::new(\"{queue}\")` and name that constant in `#[task(queue = ...)]` or `bundle!(...; queues: ...)`",
                        task.id
                    )));
                }
                if task.concurrency_limit.is_some() {
                    return Err(ManifestError(format!(
                        "task `{}` sets concurrency_limit but runs on the shared queue `{queue}`; set the limit on the queue instead",
                        task.id
                    )));
                }
            }
            if task.concurrency_limit == Some(0) {
                return Err(ManifestError(format!(
                    "task `{}`: concurrency_limit must be at least 1",
                    task.id
                )));
            }
            task.retry
                .validate()
                .map_err(|e| ManifestError(format!("task `{}`: {e}", task.id)))?;
            if task.max_duration_secs == Some(0) {
                return Err(ManifestError(format!(
                    "task `{}`: max_duration must be at least 1 second",
                    task.id
                )));
            }
            for name in &task.env {
                check_env_var_name(name).map_err(|e| {
                    ManifestError(format!(
                        "task `{}` needs an environment variable that cannot be set: {e}",
                        task.id
                    ))
                })?;
            }
            if task.cron.is_some() && !task.scheduled {
                return Err(ManifestError(format!(
                    "task `{}` declares a cron schedule but is not a scheduled task; take `kiln_sdk::schedules::ScheduledPayload` as its payload",
                    task.id
                )));
            }
            if let Some(schema) = &task.payload_schema
                && !(schema.is_object() || schema.is_boolean())
            {
                return Err(ManifestError(format!(
                    "task `{}`: the payload schema must be a JSON object",
                    task.id
                )));
            }
        }
        Ok(())
    }

    /// The environment variables the bundle's tasks need, each with the
    /// tasks that need it, by name.
    pub fn env_vars(&self) -> std::collections::BTreeMap<&str, Vec<&str>> {
        let mut needed: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for task in &self.tasks {
            for name in &task.env {
                needed
                    .entry(name.as_str())
                    .or_default()
                    .push(task.id.as_str());
            }
        }
        needed
    }

    /// The task with this id.
    pub fn task(&self, id: &str) -> Option<&TaskManifest> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// Every queue of the bundle: the declared ones, then each task's own
    /// queue (`task/<id>`) for tasks that name no declared queue.
    pub fn queues(&self) -> Vec<QueueManifest> {
        let mut queues: Vec<QueueManifest> = Vec::new();
        for queue in &self.queues {
            if !queues.iter().any(|q| q.name == queue.name) {
                queues.push(queue.clone());
            }
        }
        for task in self.tasks.iter().filter(|t| t.queue.is_none()) {
            queues.push(QueueManifest {
                concurrency_limit: task.concurrency_limit,
                ..QueueManifest::named(task.own_queue())
            });
        }
        queues
    }

    /// Whether runs may be put on this queue: a declared queue, or the own
    /// queue of a task that has one.
    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.iter().any(|q| q.name == name)
            || self
                .tasks
                .iter()
                .any(|t| t.queue.is_none() && t.own_queue() == name)
    }

    fn validate_queues(&self) -> Result<(), ManifestError> {
        for (i, queue) in self.queues.iter().enumerate() {
            check_id("queue name", &queue.name)?;
            if queue.is_task_queue() {
                return Err(ManifestError(format!(
                    "queue `{}`: names starting with `{TASK_QUEUE_PREFIX}` belong to tasks' own queues",
                    queue.name
                )));
            }
            queue.check_limits().map_err(ManifestError)?;
            if self.queues[..i]
                .iter()
                .any(|q| q.name == queue.name && q != queue)
            {
                return Err(ManifestError(format!(
                    "queue `{}` is declared twice with different limits",
                    queue.name
                )));
            }
        }
        Ok(())
    }
}

impl TaskManifest {
    /// The queue the task's runs go on unless a trigger picks another.
    pub fn queue_name(&self) -> String {
        self.queue.clone().unwrap_or_else(|| self.own_queue())
    }

    /// The task's own queue, `task/<id>`.
    pub fn own_queue(&self) -> String {
        format!("{TASK_QUEUE_PREFIX}{}", self.id)
    }
}

/// The longest environment variable name.
pub const MAX_ENV_NAME_LEN: usize = 256;

/// Whether `name` may name an environment variable: 1 to 256 of
/// `A-Z a-z 0-9 _ . -`, not starting with a digit. The one rule for names a
/// bundle declares and names the API sets.
pub fn check_env_var_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ENV_NAME_LEN {
        return Err(format!(
            "a variable name is 1 to {MAX_ENV_NAME_LEN} characters"
        ));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("`{name}` starts with a digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "`{name}` has `{c}`; a variable name is letters, digits, `_`, `.` and `-`"
        ));
    }
    Ok(())
}

/// Checks that an id is non-empty, at most [`MAX_ID_LEN`] bytes, and made of
/// ASCII letters, digits, `-`, `_`, `.` and `/` (ids travel in URL paths).
fn check_id(what: &str, id: &str) -> Result<(), ManifestError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ManifestError(format!(
            "{what} `{id}` must be 1 to {MAX_ID_LEN} characters long"
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err(ManifestError(format!(
            "{what} `{id}` contains `{bad}`; use letters, digits, `-`, `_`, `.` and `/`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> TaskManifest {
        TaskManifest {
            id: id.into(),
            payload_schema: None,
            queue: None,
            concurrency_limit: None,
            retry: RetryPolicy::default(),
            machine: Machine::default(),
            max_duration_secs: None,
            source: None,
            scheduled: false,
            cron: None,
            env: Vec::new(),
        }
    }

    fn manifest(tasks: Vec<TaskManifest>) -> Manifest {
        Manifest {
            manifest_version: MANIFEST_VERSION,
            sdk_version: "0.1.0".into(),
            tasks,
            queues: Vec::new(),
        }
    }

    #[test]
    fn round_trips_through_json() {
        let m = manifest(vec![task("hello-world")]);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(Manifest::from_json(&text).unwrap(), m);
    }

    #[test]
    fn defaults_fill_missing_settings() {
        let m =
            Manifest::from_json(r#"{"manifestVersion":1,"sdkVersion":"x","tasks":[{"id":"a"}]}"#)
                .unwrap();
        assert_eq!(m.tasks[0].machine, Machine::Small1x);
        assert_eq!(m.tasks[0].retry.max_attempts, 3);
    }

    #[test]
    fn rejects_duplicate_and_unsafe_ids() {
        let err = manifest(vec![task("a"), task("a")]).validate().unwrap_err();
        assert!(err.0.contains("declared twice"), "{err}");
        let err = manifest(vec![task("a b")]).validate().unwrap_err();
        assert!(err.0.contains("contains ` `"), "{err}");
        let err = manifest(vec![]).validate().unwrap_err();
        assert!(err.0.contains("no tasks"), "{err}");
    }

    #[test]
    fn a_cron_needs_a_scheduled_task() {
        let mut t = task("digest");
        t.cron = Some(DeclaredCron {
            pattern: "0 9 * * *".into(),
            timezone: None,
        });
        let err = manifest(vec![t.clone()]).validate().unwrap_err();
        assert!(err.0.contains("not a scheduled task"), "{err}");
        t.scheduled = true;
        manifest(vec![t]).validate().unwrap();
    }

    #[test]
    fn rejects_other_manifest_versions() {
        let mut m = manifest(vec![task("a")]);
        m.manifest_version = 99;
        assert!(m.validate().unwrap_err().0.contains("version 99"));
    }

    #[test]
    fn malformed_json_names_the_problem() {
        let err = Manifest::from_json(r#"{"tasks": 3}"#).unwrap_err();
        assert!(
            err.0.starts_with("the bundle's manifest is not valid"),
            "{err}"
        );
    }

    #[test]
    fn tasks_run_on_declared_queues_or_their_own() {
        let mut shared = task("a");
        shared.queue = Some("emails".into());
        let mut own = task("b");
        own.concurrency_limit = Some(2);
        let mut m = manifest(vec![shared, own]);
        let err = m.validate().unwrap_err();
        assert!(err.0.contains("does not declare"), "{err}");
        m.queues.push(QueueManifest {
            concurrency_limit: Some(3),
            ..QueueManifest::named("emails")
        });
        m.queues.push(m.queues[0].clone());
        m.validate().unwrap();
        let queues = m.queues();
        assert_eq!(
            queues
                .iter()
                .map(|q| (q.name.as_str(), q.concurrency_limit))
                .collect::<Vec<_>>(),
            [("emails", Some(3)), ("task/b", Some(2))]
        );
        assert!(m.has_queue("task/b") && m.has_queue("emails"));
        assert!(
            !m.has_queue("task/a"),
            "a runs on emails and has no own queue"
        );
    }

    #[test]
    fn rejects_bad_queue_declarations() {
        let mut m = manifest(vec![task("a")]);
        m.queues.push(QueueManifest::named("task/x"));
        assert!(m.validate().unwrap_err().0.contains("belong to tasks"));
        m.queues = vec![
            QueueManifest::named("q"),
            QueueManifest {
                concurrency_limit: Some(1),
                ..QueueManifest::named("q")
            },
        ];
        assert!(m.validate().unwrap_err().0.contains("declared twice"));
        m.queues = vec![QueueManifest {
            rate_limit: Some(RateLimitManifest {
                limit: 0,
                period_ms: 1000,
                per_key: false,
            }),
            ..QueueManifest::named("q")
        }];
        assert!(m.validate().unwrap_err().0.contains("at least 1 run"));
        m.queues = vec![QueueManifest {
            rate_limit: Some(RateLimitManifest {
                limit: 1,
                period_ms: 0,
                per_key: false,
            }),
            ..QueueManifest::named("q")
        }];
        assert!(
            m.validate()
                .unwrap_err()
                .0
                .contains("between 1 ms and 1 day")
        );
        m.queues = vec![QueueManifest {
            concurrency_limit: Some(0),
            ..QueueManifest::named("q")
        }];
        assert!(m.validate().unwrap_err().0.contains("at least 1"));
        m.queues = vec![QueueManifest {
            concurrency_limit: Some(5),
            ..QueueManifest::named("q")
        }];
        m.validate().unwrap();
        let mut t = task("a");
        t.queue = Some("q".into());
        t.concurrency_limit = Some(1);
        m.queues = vec![QueueManifest::named("q")];
        m.tasks = vec![t];
        assert!(
            m.validate()
                .unwrap_err()
                .0
                .contains("set the limit on the queue")
        );
    }
}
