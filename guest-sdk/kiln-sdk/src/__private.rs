//! What `#[task]` and `bundle!` expand to. Not a stable API.

pub use crate::executor::TaskFuture;
pub use kiln_manifest::{DeclaredCron, Machine, RetryPolicy, TaskManifest};
pub use wit_bindgen;

pub use crate::hooks::Hooks;
use crate::{Context, TaskError};
use kiln_manifest::{MANIFEST_VERSION, Manifest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// Implemented by the marker type `#[task]` generates for each task.
pub trait Task {
    /// The task's id.
    const ID: &'static str;
    /// The task's manifest entry.
    fn manifest() -> TaskManifest;
    /// The task's hooks.
    const HOOKS: Option<&'static Hooks> = None;
    /// The declared queue the task runs on, if not its own.
    const QUEUE: Option<&'static crate::Queue> = None;
    /// Parses the payload and starts the task's future.
    fn start(payload: &str, ctx: Context) -> TaskFuture;
}

/// One task of a bundle, as `bundle!` lists it.
pub struct TaskEntry {
    /// The task's id.
    pub id: &'static str,
    /// Builds the task's manifest entry.
    pub manifest: fn() -> TaskManifest,
    /// Starts an attempt.
    pub start: fn(&str, Context) -> TaskFuture,
    /// The task's hooks.
    pub hooks: Option<&'static Hooks>,
    /// The declared queue the task runs on, if not its own.
    pub queue: Option<&'static crate::Queue>,
}

impl TaskEntry {
    /// The entry of task `T`.
    pub const fn of<T: Task>() -> Self {
        TaskEntry {
            id: T::ID,
            manifest: T::manifest,
            start: T::start,
            hooks: T::HOOKS,
            queue: T::QUEUE,
        }
    }
}

/// The bundle's manifest as JSON: its tasks, and the queues its tasks name
/// or `bundle!` lists (each once; two different declarations of one name
/// both go in, and the server refuses the bundle).
pub fn describe(tasks: &[TaskEntry], queues: &[&crate::Queue]) -> String {
    let mut declared: Vec<kiln_manifest::QueueManifest> = Vec::new();
    for queue in tasks
        .iter()
        .filter_map(|t| t.queue)
        .chain(queues.iter().copied())
    {
        let queue = queue.manifest();
        if !declared.contains(&queue) {
            declared.push(queue);
        }
    }
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        sdk_version: env!("CARGO_PKG_VERSION").to_string(),
        tasks: tasks.iter().map(|t| (t.manifest)()).collect(),
        queues: declared,
    };
    serde_json::to_string(&manifest).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Parses a payload; a payload that does not fit the type fails the run
/// without retrying, since every retry would fail the same way.
pub fn parse_payload<P: DeserializeOwned>(text: &str) -> Result<P, TaskError> {
    serde_json::from_str(text).map_err(|e| {
        TaskError::abort(format!(
            "the payload does not fit the task's payload type: {e}"
        ))
        .with_name("PayloadError")
    })
}

/// Serialises a task's output.
pub fn to_output<O: Serialize>(output: &O) -> Result<String, TaskError> {
    serde_json::to_string(output).map_err(|e| {
        TaskError::new(format!("the task's output cannot be serialised: {e}"))
            .with_name("OutputError")
    })
}

/// A future that is already failed.
pub fn ready_err(error: TaskError) -> TaskFuture {
    Box::pin(std::future::ready(Err(error)))
}

/// Finds out at compile time whether a payload type derives `JsonSchema`
/// (autoref specialisation): `(&SchemaProbe::<P>::new()).payload_schema()`.
pub struct SchemaProbe<T>(PhantomData<T>);

impl<T> SchemaProbe<T> {
    /// A probe for `T`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        SchemaProbe(PhantomData)
    }
}

/// Chosen when the payload type derives `JsonSchema`.
pub trait HasSchema {
    /// The payload's JSON Schema.
    fn payload_schema(&self) -> Option<serde_json::Value>;
}

impl<T: schemars::JsonSchema> HasSchema for SchemaProbe<T> {
    fn payload_schema(&self) -> Option<serde_json::Value> {
        serde_json::to_value(schemars::schema_for!(T)).ok()
    }
}

/// Finds out at compile time whether a task is a scheduled task (its payload
/// is [`ScheduledPayload`](crate::schedules::ScheduledPayload)):
/// `(&ScheduledProbe::<P>::new()).is_scheduled()`.
pub struct ScheduledProbe<T>(PhantomData<T>);

impl<T> ScheduledProbe<T> {
    /// A probe for `T`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        ScheduledProbe(PhantomData)
    }
}

/// Chosen when the payload is a scheduled payload.
pub trait IsScheduled {
    /// Whether the task is a scheduled task.
    fn is_scheduled(&self) -> bool;
}

impl IsScheduled for ScheduledProbe<crate::schedules::ScheduledPayload> {
    fn is_scheduled(&self) -> bool {
        true
    }
}

/// Chosen otherwise.
pub trait NotScheduled {
    /// Whether the task is a scheduled task.
    fn is_scheduled(&self) -> bool;
}

impl<T> NotScheduled for &ScheduledProbe<T> {
    fn is_scheduled(&self) -> bool {
        false
    }
}

/// Chosen otherwise: the task takes any payload its type can parse.
pub trait NoSchema {
    /// No schema.
    fn payload_schema(&self) -> Option<serde_json::Value>;
}

impl<T> NoSchema for &SchemaProbe<T> {
    fn payload_schema(&self) -> Option<serde_json::Value> {
        None
    }
}
