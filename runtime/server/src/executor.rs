//! The executor: takes queued runs, runs their attempts in the sandbox, and
//! drives each run through the engine's transitions.
//!
//! At most `concurrency` attempts execute at once. A run's record is written
//! durably before it is acknowledged to the client and again when it reaches
//! a final status; the `EXECUTING` write in between is sent to the group
//! committer without waiting, since a crash there only means the attempt is
//! run again.

use crate::deployments::Deployments;
use crate::notify::Notifier;
use kiln_engine::{Action, Event, FailureKind, apply};
use kiln_sandbox::wit::kiln::task::types::{StartContext, Step, WaitKind, Wake, WakeValue};
use kiln_sandbox::{Limits, StepOutcome, TrapKind};
use kiln_store::Store;
use kiln_types::{Run, RunError, RunId, RunStatus, Timestamp};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// The largest output a run may return, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 10 * 1024 * 1024;

/// Hands runs to the executor.
#[derive(Clone)]
pub struct Executor {
    queue: mpsc::UnboundedSender<RunId>,
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    deployments: Arc<Deployments>,
    notifier: Arc<Notifier>,
    environment: String,
}

impl Executor {
    /// Starts the dispatcher with `concurrency` slots.
    pub(crate) fn start(
        store: Store,
        deployments: Arc<Deployments>,
        notifier: Arc<Notifier>,
        concurrency: usize,
        environment: String,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<RunId>();
        let shared = Arc::new(Shared {
            store,
            deployments,
            notifier,
            environment,
        });
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let executor = Executor {
            queue: tx,
            shared: shared.clone(),
        };
        let requeue = executor.clone();
        tokio::spawn(async move {
            while let Some(run_id) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let shared = shared.clone();
                let requeue = requeue.clone();
                tokio::spawn(async move {
                    if let Err(error) = shared.execute(&run_id, &requeue).await {
                        tracing::error!(run = %run_id, %error, "executing a run failed");
                    }
                    drop(permit);
                });
            }
        });
        executor
    }

    /// Queues a run to start now.
    pub fn enqueue(&self, run: RunId) {
        let _ = self.queue.send(run);
    }

    /// Queues a run to start at `at`.
    pub fn enqueue_at(&self, run: RunId, at: Timestamp) {
        let delay = at.as_millis().saturating_sub(Timestamp::now().as_millis());
        if delay == 0 {
            return self.enqueue(run);
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            this.enqueue(run);
        });
    }

    /// Re-queues every unfinished run after a restart.
    pub(crate) async fn recover(&self) -> anyhow::Result<usize> {
        let runs = self.shared.store.active_runs()?;
        let count = runs.len();
        for run in runs {
            match run.status {
                RunStatus::Queued => match run.next_attempt_at {
                    Some(at) => self.enqueue_at(run.id.clone(), at),
                    None => self.enqueue(run.id.clone()),
                },
                RunStatus::Dequeued | RunStatus::Executing => {
                    let t = apply(&run, Event::Recovered, Timestamp::now())?;
                    self.shared.store.put_run(&t.run).await?;
                    self.shared.perform(&t.run, &t.actions, self);
                }
                _ => {}
            }
        }
        Ok(count)
    }
}

impl Shared {
    /// Applies an event, stores the result durably, performs the actions.
    async fn step(&self, run: &Run, event: Event, executor: &Executor) -> anyhow::Result<Run> {
        let t = apply(run, event, Timestamp::now())?;
        self.store.put_run(&t.run).await?;
        self.perform(&t.run, &t.actions, executor);
        Ok(t.run)
    }

    fn perform(&self, run: &Run, actions: &[Action], executor: &Executor) {
        for action in actions {
            match action {
                Action::Enqueue { not_before: None } => executor.enqueue(run.id.clone()),
                Action::Enqueue {
                    not_before: Some(at),
                } => executor.enqueue_at(run.id.clone(), *at),
                Action::NotifyFinished => self.notifier.finished(&run.id),
                Action::InterruptAttempt => {}
            }
        }
    }

    async fn execute(&self, run_id: &RunId, executor: &Executor) -> anyhow::Result<()> {
        let Some(run) = self.store.run(run_id)? else {
            return Ok(());
        };
        if run.status != RunStatus::Queued {
            return Ok(());
        }
        let now = Timestamp::now();
        let run = apply(&run, Event::Dequeued, now)?.run;
        let run = apply(&run, Event::AttemptStarted, now)?.run;
        // Not awaited: see the module docs.
        drop(self.store.put_run(&run));

        let deployed = match self.deployments.get(&run.deployment_id).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return self
                    .system_failure(&run, "the run's deployment is missing".into(), executor)
                    .await;
            }
            Err(error) => {
                let message = format!("loading the run's bundle failed: {error}");
                return self.system_failure(&run, message, executor).await;
            }
        };
        let limits =
            Limits::for_machine(run.machine, run.max_duration_secs.map(Duration::from_secs));
        let mut attempt = match deployed.bundle.instantiate(limits).await {
            Ok(a) => a,
            Err(error) => {
                let message = format!("instantiating the bundle failed: {error:#}");
                return self.system_failure(&run, message, executor).await;
            }
        };
        let ctx = StartContext {
            run_id: run.id.to_string(),
            task_id: run.task_id.clone(),
            attempt: run.attempts.len() as u32,
            environment: self.environment.clone(),
            version: run.version.clone(),
            machine: run.machine.to_string(),
            tags: run.tags.clone(),
            // Stored as JSON at trigger time; only text needs quoting.
            payload: if run.payload_type == "text/plain" {
                serde_json::Value::String(run.payload.clone()).to_string()
            } else {
                run.payload.clone()
            },
            metadata: run
                .metadata
                .clone()
                .unwrap_or_else(|| serde_json::json!({}))
                .to_string(),
            created_at_ms: run.created_at.as_millis(),
        };

        // Timers are waited warm for now: the instance stays alive and the
        // wake is delivered when the timer is due.
        let mut timers: Vec<(u64, Timestamp)> = Vec::new();
        let mut outcome = attempt.start(&ctx).await;
        let event = loop {
            let usage_ms = attempt.used().as_millis() as u64;
            match outcome {
                StepOutcome::Step(Step::Completed(output)) => {
                    if output.len() > MAX_OUTPUT_BYTES {
                        break failure(
                            FailureKind::Error {
                                abort: true,
                                retry_delay_ms: None,
                            },
                            RunError::new(
                                "OutputTooLarge",
                                format!(
                                    "the task's output is {} bytes, over the limit of {MAX_OUTPUT_BYTES}",
                                    output.len()
                                ),
                            ),
                            usage_ms,
                        );
                    }
                    break Event::AttemptSucceeded { output, usage_ms };
                }
                StepOutcome::Step(Step::Failed(e)) => {
                    break failure(
                        FailureKind::Error {
                            abort: e.abort,
                            retry_delay_ms: e.retry_delay_ms,
                        },
                        RunError {
                            name: Some(e.name),
                            message: e.message,
                            stack_trace: e.stack,
                        },
                        usage_ms,
                    );
                }
                StepOutcome::Step(Step::Waiting(waits)) => {
                    let mut unsupported = None;
                    for wait in waits {
                        match wait.kind {
                            WaitKind::Duration(ms) => timers.push((
                                wait.id,
                                Timestamp(Timestamp::now().as_millis().saturating_add(ms)),
                            )),
                            WaitKind::Until(at) => timers.push((wait.id, Timestamp(at))),
                            _ => unsupported = Some(wait.id),
                        }
                    }
                    if unsupported.is_some() || timers.is_empty() {
                        break failure(
                            FailureKind::Error {
                                abort: true,
                                retry_delay_ms: None,
                            },
                            RunError::new(
                                "Unsupported",
                                "this server supports only timer waits so far (child runs, tokens and fetch come later)",
                            ),
                            usage_ms,
                        );
                    }
                    timers.sort_by_key(|(_, at)| *at);
                    let (id, at) = timers.remove(0);
                    let delay = at.as_millis().saturating_sub(Timestamp::now().as_millis());
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    outcome = attempt
                        .resume(&Wake {
                            id,
                            value: WakeValue::Timer,
                        })
                        .await;
                }
                StepOutcome::Trap(trap) => {
                    let (kind, name) = match &trap {
                        TrapKind::OutOfMemory { .. } => (FailureKind::OutOfMemory, "OutOfMemory"),
                        TrapKind::TimedOut(_) => (FailureKind::TimedOut, "MaxDurationExceeded"),
                        TrapKind::Canceled => (
                            FailureKind::Error {
                                abort: true,
                                retry_delay_ms: None,
                            },
                            "Canceled",
                        ),
                        TrapKind::Panic(_) => (
                            FailureKind::Error {
                                abort: false,
                                retry_delay_ms: None,
                            },
                            "Panic",
                        ),
                        TrapKind::Other(_) => (
                            FailureKind::Error {
                                abort: false,
                                retry_delay_ms: None,
                            },
                            "Trap",
                        ),
                    };
                    break failure(kind, RunError::new(name, trap.to_string()), usage_ms);
                }
            }
        };
        let logs = attempt.take_logs();
        drop(attempt);
        let mut run = run;
        if let Some(current) = run.current_attempt_mut() {
            current.logs = logs;
        }
        self.step(&run, event, executor).await?;
        Ok(())
    }

    /// Ends the attempt as Kiln's own failure: the run is `SYSTEM_FAILURE`.
    async fn system_failure(
        &self,
        run: &Run,
        message: String,
        executor: &Executor,
    ) -> anyhow::Result<()> {
        let error = RunError::new("SystemFailure", message);
        self.step(run, failure(FailureKind::System, error, 0), executor)
            .await?;
        Ok(())
    }
}

fn failure(kind: FailureKind, error: RunError, usage_ms: u64) -> Event {
    Event::AttemptFailed {
        kind,
        error,
        usage_ms,
        random: rand::random::<f64>(),
    }
}
