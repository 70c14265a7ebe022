//! A test guest whose tasks probe how Kiln handles guests that misbehave or
//! reach for what is not there yet.

use kiln_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod queues;

/// Returns its payload, with the run's context and a host clock and random
/// reading.
#[task(id = "echo")]
pub async fn echo(payload: Value, ctx: &Context) -> Result<Value, TaskError> {
    Ok(serde_json::json!({
        "payload": payload,
        "runId": ctx.run_id,
        "attempt": ctx.attempt,
        "version": ctx.version,
        "nowMs": ctx.now_ms(),
        "random": ctx.random_u64().to_string(),
    }))
}

/// Panics with the payload's `message`.
#[task(id = "panic", retry(max_attempts = 1))]
pub async fn panic(payload: Value, _ctx: &Context) -> Result<Value, TaskError> {
    let message = payload["message"].as_str().unwrap_or("boom").to_string();
    panic!("{message}");
}

/// Returns an error; `abort: true` asks for no retry.
#[derive(Debug, Deserialize)]
pub struct Fail {
    /// The error message.
    pub message: String,
    /// End the run without retrying.
    #[serde(default)]
    pub abort: bool,
}

/// Fails with the payload's message.
#[task(
    id = "fail",
    retry(max_attempts = 2, min_timeout_ms = 10, max_timeout_ms = 10)
)]
pub async fn fail(payload: Fail, _ctx: &Context) -> Result<Value, TaskError> {
    if payload.abort {
        Err(TaskError::abort(payload.message))
    } else {
        Err(TaskError::new(payload.message))
    }
}

/// What an import the server does not implement yet answered.
#[derive(Debug, Serialize)]
pub struct Unsupported {
    /// The host's error, as text.
    pub error: String,
}

/// Calls `add-tags` with a tag the host refuses, and returns the host's
/// error as its output: the guest sees an error value, not a trap.
#[task(id = "refused-import")]
pub async fn refused_import(_payload: Value, _ctx: &Context) -> Result<Unsupported, TaskError> {
    use kiln_sdk::bindings::kiln::task::host;
    match host::add_tags(&[String::new()]) {
        Ok(()) => Err(TaskError::new("an empty tag was accepted")),
        Err(error) => Ok(Unsupported {
            error: format!("{error:?}"),
        }),
    }
}

/// What `annotate` does.
#[derive(Debug, Deserialize)]
pub struct Annotate {
    /// Milliseconds to spin after annotating (a window to kill the server).
    #[serde(default)]
    pub spin_ms: u64,
}

/// Changes its own metadata, its parent's and its root's, adds a tag, spins,
/// and returns its metadata.
#[task(id = "annotate")]
pub async fn annotate(payload: Annotate, ctx: &Context) -> Result<Value, TaskError> {
    use kiln_sdk::metadata;
    metadata::increment("count", 1.0)?;
    metadata::set("$.progress.step", 1)?;
    metadata::append("log", "started")?;
    metadata::add_tags(&["annotated"])?;
    metadata::parent().increment("children", 1.0)?;
    metadata::root().append("seen", &ctx.run_id)?;
    let start = ctx.now_ms();
    let mut rounds = 0u64;
    while ctx.now_ms().saturating_sub(start) < payload.spin_ms {
        rounds = rounds.wrapping_add(churn(200_000, rounds));
    }
    metadata::decrement("$.progress.step", 1.0)?;
    // Too much metadata is refused as an error value.
    let refused = metadata::set("huge", "x".repeat(300 * 1024)).is_err();
    let mut own = metadata::current().apply(&[])?;
    own["refusedHuge"] = Value::from(refused);
    Ok(own)
}

/// Triggers two `annotate` children, waits for both, and returns its own
/// metadata.
#[task(id = "annotate-parent")]
pub async fn annotate_parent(_payload: Value, _ctx: &Context) -> Result<Value, TaskError> {
    use kiln_sdk::{metadata, tasks};
    metadata::set("role", "parent")?;
    let items = vec![serde_json::json!({}), serde_json::json!({})];
    tasks::batch_trigger_and_wait::<_, Value>("annotate", &items).await?;
    metadata::current().apply(&[])
}

/// What `env-fetch` does.
#[derive(Debug, Deserialize)]
pub struct EnvFetch {
    /// The secret variable to read and send.
    pub secret: String,
    /// A variable whose value the output shows (not a secret).
    #[serde(default)]
    pub public: Option<String>,
    /// Where to POST the secret (`Authorization: Bearer <secret>`); no
    /// fetch without it.
    #[serde(default)]
    pub url: Option<String>,
    /// Read the secret again after the first fetch and send that too.
    #[serde(default)]
    pub again: bool,
    /// Put the secret in the URL's query too (`?key=...`).
    #[serde(default)]
    pub query: bool,
    /// Fail the attempt (to be retried) when the API refuses the key.
    #[serde(default)]
    pub check: bool,
    /// Fail with an error that quotes the secret.
    #[serde(default)]
    pub fail: bool,
    /// Wait this long after reading the secret (the guest, holding it in
    /// its memory, is snapshotted when the wait is past the warm threshold).
    #[serde(default)]
    pub pause_ms: u64,
}

/// Reads an environment variable and uses it the way tasks use API keys:
/// in a fetch's `Authorization` header and body. It also logs it, puts it
/// in metadata, a stream chunk and its output, and (with `fail`) its error,
/// all of which Kiln must store masked.
#[task(id = "env-fetch", env = ["PROBE_SECRET"])]
pub async fn env_fetch(payload: EnvFetch, ctx: &Context) -> Result<Value, TaskError> {
    use kiln_sdk::fetch::{Request, fetch};
    use kiln_sdk::{env, metadata, streams};
    let first = env::var(&payload.secret)?;
    ctx.log.info(
        &format!("calling with {first}"),
        &[("authorization", &format!("Bearer {first}"))],
    );
    metadata::set("usedKey", first.clone())?;
    streams::append("keys", &first)?;
    if payload.fail {
        return Err(TaskError::abort(format!("the API refused key {first}")));
    }
    if payload.pause_ms > 0 {
        kiln_sdk::wait::for_duration(std::time::Duration::from_millis(payload.pause_ms)).await?;
    }
    let query = payload.query;
    let post = |url: &str, key: &str| {
        let url = if query {
            format!("{url}?key={key}")
        } else {
            url.to_string()
        };
        Request::post(url)
            .header("authorization", format!("Bearer {key}"))
            .body(format!("{{\"key\":\"{key}\"}}"))
    };
    let mut statuses = Vec::new();
    let mut second = None;
    if let Some(url) = &payload.url {
        let response = fetch(post(url, &first))
            .await
            .map_err(|e| TaskError::new(format!("fetch failed: {e:?}")))?;
        statuses.push(response.status);
        if payload.check && response.status != 200 {
            return Err(TaskError::new(format!(
                "the API refused the key with {}",
                response.status
            )));
        }
        if payload.again {
            let value = env::var(&payload.secret)?;
            let response = fetch(post(url, &value))
                .await
                .map_err(|e| TaskError::new(format!("fetch failed: {e:?}")))?;
            statuses.push(response.status);
            second = Some(value);
        }
    }
    let public = match &payload.public {
        Some(name) => env::var_opt(name)?,
        None => None,
    };
    Ok(serde_json::json!({
        "statuses": statuses,
        "sameValue": second.as_ref().map(|s| *s == first),
        "public": public,
        "missing": env::var_opt("PROBE_NEVER_SET")?,
        "leaked": first,
    }))
}

/// What `fetch` does.
#[derive(Debug, Deserialize)]
pub struct FetchProbe {
    /// The URL to GET.
    pub url: String,
    /// Retry while the status is 5xx, up to this many tries (0: no retry).
    #[serde(default)]
    pub retries: u32,
    /// Milliseconds to spin after the response (a window to kill the server).
    #[serde(default)]
    pub spin_ms: u64,
}

/// GETs a URL through the host, spins, and returns the status and body (or
/// the error).
#[task(id = "fetch")]
pub async fn fetch_probe(payload: FetchProbe, ctx: &Context) -> Result<Value, TaskError> {
    use kiln_sdk::fetch::{Request, fetch};
    let request = Request::get(&payload.url).header("x-run", &ctx.run_id);
    let result = if payload.retries > 0 {
        let policy = kiln_sdk::RetryPolicy {
            max_attempts: payload.retries,
            min_timeout_ms: 50,
            max_timeout_ms: 50,
            randomize: false,
            ..Default::default()
        };
        kiln_sdk::retry::fetch(policy, request, |status| status >= 500).await
    } else {
        fetch(request).await
    };
    let start = ctx.now_ms();
    let mut rounds = 0u64;
    while ctx.now_ms().saturating_sub(start) < payload.spin_ms {
        rounds = rounds.wrapping_add(churn(200_000, rounds));
    }
    Ok(match result {
        Ok(response) => serde_json::json!({
            "status": response.status,
            "body": response.text(),
            "contentType": response.header("content-type"),
        }),
        Err(error) => serde_json::json!({ "error": error.message }),
    })
}

/// Returns a string of `bytes` bytes.
#[derive(Debug, Deserialize)]
pub struct Big {
    /// The output's size in bytes.
    pub bytes: usize,
}

/// Returns an output of the requested size.
#[task(id = "big-output", retry(max_attempts = 1))]
pub async fn big_output(payload: Big, _ctx: &Context) -> Result<String, TaskError> {
    Ok("x".repeat(payload.bytes))
}

/// Waits on a short timer, then returns how long it waited by the host's clock.
/// A schema task: a payload without a numeric `ms` is refused at trigger time.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Sleep {
    /// Milliseconds to wait.
    pub ms: u64,
}

/// Sleeps through a Kiln wait.
#[task(id = "sleep")]
pub async fn sleep(payload: Sleep, ctx: &Context) -> Result<Value, TaskError> {
    let before = ctx.now_ms();
    kiln_sdk::wait::for_duration(std::time::Duration::from_millis(payload.ms)).await?;
    Ok(serde_json::json!({ "waitedMs": ctx.now_ms().saturating_sub(before) }))
}

/// How much work to do before and after a wait.
#[derive(Debug, Deserialize)]
pub struct Work {
    /// Rounds of hashing before the wait.
    pub rounds: u64,
    /// Milliseconds to wait.
    #[serde(default)]
    pub wait_ms: u64,
}

fn churn(rounds: u64, seed: u64) -> u64 {
    let mut x = seed;
    for i in 0..rounds {
        x = x.rotate_left(13) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x = std::hint::black_box(x);
    }
    x
}

/// Does `rounds` of work, waits, and returns the work's result: resuming
/// from a snapshot must not do the work again.
#[task(id = "work-then-wait")]
pub async fn work_then_wait(payload: Work, _ctx: &Context) -> Result<Value, TaskError> {
    let value = churn(payload.rounds, 7);
    kiln_sdk::wait::for_duration(std::time::Duration::from_millis(payload.wait_ms)).await?;
    Ok(serde_json::json!({ "value": value.to_string() }))
}

/// How much heap to hold across a wait.
#[derive(Debug, Deserialize)]
pub struct Heap {
    /// MiB to allocate and fill.
    pub mib: usize,
    /// Milliseconds to wait.
    #[serde(default)]
    pub wait_ms: u64,
}

/// Fills `mib` MiB with a pattern, waits, and checks the pattern afterwards.
#[task(id = "hold-heap", machine = "medium-1x")]
pub async fn hold_heap(payload: Heap, _ctx: &Context) -> Result<Value, TaskError> {
    let len = payload.mib << 20;
    let heap: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    kiln_sdk::wait::for_duration(std::time::Duration::from_millis(payload.wait_ms)).await?;
    let intact = heap.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8);
    Ok(serde_json::json!({ "bytes": heap.len(), "intact": intact }))
}

/// Draws random numbers around a spin, to test replay after a kill while
/// executing.
#[derive(Debug, Deserialize)]
pub struct DrawSpin {
    /// Milliseconds to spin (by the host clock) after the first draw.
    pub spin_ms: u64,
}

/// Draws, logs, spins, draws again and returns both draws.
#[task(id = "draw-spin")]
pub async fn draw_spin(payload: DrawSpin, ctx: &Context) -> Result<Value, TaskError> {
    let first = ctx.random_u64();
    ctx.log.info("drew", &[("draw", &first.to_string())]);
    let start = ctx.now_ms();
    let mut rounds = 0u64;
    while ctx.now_ms().saturating_sub(start) < payload.spin_ms {
        rounds = rounds.wrapping_add(churn(200_000, rounds));
    }
    let second = ctx.random_u64();
    Ok(serde_json::json!({ "draws": [first.to_string(), second.to_string()] }))
}

/// Hooks that log what happens to the attempt.
const LOGGING_HOOKS: kiln_sdk::Hooks = kiln_sdk::Hooks::new()
    .on_start_attempt(|ctx| {
        ctx.log.info(
            "hook:start-attempt",
            &[("attempt", &ctx.attempt.to_string())],
        )
    })
    .on_wait(|ctx, _| ctx.log.info("hook:wait", &[]))
    .on_resume(|ctx, _| ctx.log.info("hook:resume", &[]))
    .on_success(|ctx, output| ctx.log.info("hook:success", &[("output", &output)]))
    .on_failure(|ctx, error| ctx.log.info("hook:failure", &[("error", &error.message)]))
    .on_complete(|ctx, result| {
        ctx.log
            .info("hook:complete", &[("ok", &result.is_ok().to_string())])
    })
    .on_cancel(|ctx, _| ctx.log.info("hook:cancel", &[]))
    .catch_error(|ctx, error| {
        ctx.log
            .info("hook:catch-error", &[("error", &error.message)]);
        if error.message == "fatal" {
            kiln_sdk::hooks::Retry::Skip
        } else {
            kiln_sdk::hooks::Retry::AfterMs(50)
        }
    });

/// What the hooked task does.
#[derive(Debug, Deserialize)]
pub struct Hooked {
    /// Fail the first attempt with this message (`fatal` skips retrying).
    #[serde(default)]
    pub fail_first: Option<String>,
    /// Fail every attempt.
    #[serde(default)]
    pub always_fail: bool,
    /// Milliseconds to wait before finishing.
    #[serde(default)]
    pub wait_ms: u64,
}

/// A task with every hook, each of which logs.
#[task(
    id = "hooked",
    hooks = LOGGING_HOOKS,
    retry(max_attempts = 3, min_timeout_ms = 5000, max_timeout_ms = 5000, randomize = false)
)]
pub async fn hooked(payload: Hooked, ctx: &Context) -> Result<Value, TaskError> {
    if payload.always_fail {
        return Err(TaskError::new("always"));
    }
    if let Some(message) = payload.fail_first
        && ctx.attempt == 1
    {
        return Err(TaskError::new(message));
    }
    if payload.wait_ms > 0 {
        kiln_sdk::wait::for_duration(std::time::Duration::from_millis(payload.wait_ms)).await?;
    }
    Ok(serde_json::json!({ "attempt": ctx.attempt }))
}

/// How often the flaky block fails before it works.
#[derive(Debug, Deserialize)]
pub struct Flaky {
    /// Failures before success.
    pub failures: u32,
}

/// Retries a block with `retry::on_throw`: each try draws from the host, and
/// the backoff is a durable wait.
#[task(id = "flaky-block")]
pub async fn flaky_block(payload: Flaky, ctx: &Context) -> Result<Value, TaskError> {
    let policy = kiln_sdk::RetryPolicy {
        max_attempts: 5,
        min_timeout_ms: 200,
        max_timeout_ms: 200,
        ..Default::default()
    };
    let tries = kiln_sdk::retry::on_throw(policy, |attempt| async move {
        let draw = ctx.random_u64();
        ctx.log.info(
            "try",
            &[
                ("attempt", &attempt.to_string()),
                ("draw", &draw.to_string()),
            ],
        );
        if attempt <= payload.failures {
            Err(TaskError::new(format!("try {attempt} failed")))
        } else {
            Ok(attempt)
        }
    })
    .await?;
    Ok(serde_json::json!({ "tries": tries }))
}

/// What a parent task does with its children.
#[derive(Debug, Deserialize)]
pub struct Parent {
    /// `batch` (one batch of `children` echo runs, waited on), `each` (one
    /// trigger_and_wait at a time), `join` (two at once), `by-task` (a batch
    /// over echo and fail), `fail` (a child that fails), `sleepy` (a child
    /// that sleeps `sleep_ms`, waited on), `wait-batch` (waits on the batch
    /// `batch`, made by someone else through the API).
    pub mode: String,
    /// The batch a `wait-batch` parent waits on.
    #[serde(default)]
    pub batch: String,
    /// How many children.
    #[serde(default)]
    pub children: u32,
    /// How long a `sleepy` child sleeps.
    #[serde(default)]
    pub sleep_ms: u64,
}

fn echoed(result: kiln_sdk::tasks::RunResult<Value>) -> Result<Value, TaskError> {
    Ok(result.unwrap()?["payload"]["n"].clone())
}

/// Triggers child runs and reports what came back.
#[task(id = "parent")]
pub async fn parent(payload: Parent, _ctx: &Context) -> Result<Value, TaskError> {
    use kiln_sdk::tasks;
    match payload.mode.as_str() {
        "batch" => {
            let items: Vec<Value> = (0..payload.children)
                .map(|n| serde_json::json!({ "n": n }))
                .collect();
            let results = tasks::batch_trigger_and_wait::<_, Value>("echo", &items).await?;
            let ids: Vec<String> = results.iter().map(|r| r.id.clone()).collect();
            let outputs = results
                .into_iter()
                .map(echoed)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(serde_json::json!({ "outputs": outputs, "ids": ids }))
        }
        "wait-batch" => {
            let batch = tasks::BatchHandle {
                id: payload.batch.clone(),
                runs: Vec::new(),
            };
            let outputs = batch
                .wait::<Value>()
                .await?
                .into_iter()
                .map(echoed)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(serde_json::json!({ "outputs": outputs }))
        }
        "each" => {
            let mut outputs = Vec::new();
            for n in 0..payload.children {
                let r = tasks::trigger_and_wait::<_, Value>("echo", &serde_json::json!({ "n": n }))
                    .await?;
                outputs.push(echoed(r)?);
            }
            Ok(serde_json::json!({ "outputs": outputs }))
        }
        "join" => {
            let (a, b) = futures::join!(
                tasks::trigger_and_wait::<_, Value>("echo", &serde_json::json!({ "n": "a" })),
                tasks::trigger_and_wait::<_, Value>("sleep", &serde_json::json!({ "ms": 300 })),
            );
            Ok(serde_json::json!({ "a": echoed(a?)?, "b": b?.unwrap()? }))
        }
        "by-task" => {
            let items = vec![
                tasks::BatchItem::new("echo", serde_json::json!({ "n": 1 }))?,
                tasks::BatchItem::new(
                    "fail",
                    serde_json::json!({ "message": "nope", "abort": true }),
                )?,
                tasks::BatchItem::new("echo", serde_json::json!({ "n": 3 }))?,
            ];
            let results = tasks::batch_trigger_by_task_and_wait(items).await?;
            let view: Vec<Value> = results
                .into_iter()
                .map(|r| match r.outcome {
                    Ok(v) => serde_json::json!({ "ok": v["payload"]["n"] }),
                    Err(e) => serde_json::json!({ "error": e.message }),
                })
                .collect();
            Ok(serde_json::json!(view))
        }
        "fail" => {
            let r = tasks::trigger_and_wait::<_, Value>(
                "fail",
                &serde_json::json!({ "message": "child broke", "abort": true }),
            )
            .await?;
            match r.outcome {
                Ok(v) => Err(TaskError::new(format!("the failing child succeeded: {v}"))),
                Err(e) => Ok(serde_json::json!({ "childError": e.message, "ok": false })),
            }
        }
        "sleepy" => {
            let r = tasks::trigger_and_wait::<_, Value>(
                "sleep",
                &serde_json::json!({ "ms": payload.sleep_ms }),
            )
            .await?;
            let id = r.id.clone();
            Ok(serde_json::json!({ "child": id, "output": r.unwrap()? }))
        }
        other => Err(TaskError::abort(format!("unknown mode {other}"))),
    }
}

/// Triggers an echo child, spins for `spin_ms` (a window to kill the server
/// in, after the child exists and before the wait), then waits on it.
#[task(id = "spawn-then-spin")]
pub async fn spawn_then_spin(payload: DrawSpin, ctx: &Context) -> Result<Value, TaskError> {
    let child = kiln_sdk::tasks::trigger("echo", &serde_json::json!({ "n": "only" })).await?;
    let start = ctx.now_ms();
    let mut rounds = 0u64;
    while ctx.now_ms().saturating_sub(start) < payload.spin_ms {
        rounds = rounds.wrapping_add(churn(200_000, rounds));
    }
    let result = child.wait::<Value>().await?;
    let id = result.id.clone();
    Ok(serde_json::json!({ "child": id, "output": result.unwrap()? }))
}

/// Which token to wait on, or how to make one.
#[derive(Debug, Deserialize)]
pub struct TokenWait {
    /// A token made by a backend; when absent the task makes its own.
    #[serde(default)]
    pub token: Option<String>,
    /// The timeout of a token the task makes.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// Waits on a wait token and returns its data, or the timeout.
#[task(id = "wait-token")]
pub async fn wait_token(payload: TokenWait, ctx: &Context) -> Result<Value, TaskError> {
    let id = match payload.token {
        Some(id) => id,
        None => {
            let token = kiln_sdk::wait::create_token(kiln_sdk::wait::TokenOptions {
                timeout: payload.timeout,
                tags: vec!["probe".into()],
                ..Default::default()
            })
            .await?;
            ctx.log
                .info("token", &[("id", &token.id), ("url", &token.url)]);
            token.id
        }
    };
    Ok(
        match kiln_sdk::wait::for_token::<Value>(id.clone()).await? {
            Ok(data) => serde_json::json!({ "token": id, "data": data }),
            Err(timeout) => serde_json::json!({ "token": id, "timeout": timeout.message }),
        },
    )
}

/// How `keyed-child` triggers its children.
#[derive(Debug, Deserialize)]
pub struct KeyedChild {
    /// `key` (an idempotency key) or `debounce` (five debounced triggers).
    pub mode: String,
    /// The idempotency or debounce key.
    pub key: String,
    /// The key's scope: `run`, `attempt` or `global`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Fail the first attempt after triggering, so a retry triggers again.
    #[serde(default)]
    pub fail_first: bool,
    /// How long the `sleep` child sleeps.
    #[serde(default)]
    pub sleep_ms: u64,
}

/// Triggers `sleep` children with an idempotency key (twice, then waits on
/// the child) or with a debounce key (five times, trailing), and reports
/// the ids it got back.
#[task(id = "keyed-child")]
pub async fn keyed_child(payload: KeyedChild, ctx: &Context) -> Result<Value, TaskError> {
    use kiln_sdk::tasks::{self, Debounce, DebounceMode, IdempotencyKey, KeyScope, TriggerOptions};
    let child = |n: u32| serde_json::json!({ "ms": payload.sleep_ms, "n": n });
    if payload.mode == "debounce" {
        let options = TriggerOptions {
            debounce: Some(Debounce {
                key: payload.key.clone(),
                delay: "1s".into(),
                mode: Some(DebounceMode::Trailing),
                max_delay: None,
            }),
            ..TriggerOptions::default()
        };
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(tasks::trigger_with("sleep", &child(n), &options).await?.id);
        }
        return Ok(serde_json::json!({ "ids": ids }));
    }
    let scope = match payload.scope.as_deref() {
        Some("attempt") => KeyScope::Attempt,
        Some("global") => KeyScope::Global,
        _ => KeyScope::Run,
    };
    let options = TriggerOptions {
        idempotency_key: Some(IdempotencyKey::new(payload.key.clone()).scope(scope)),
        ..TriggerOptions::default()
    };
    let first = tasks::trigger_with("sleep", &child(ctx.attempt), &options).await?;
    if payload.fail_first && ctx.attempt == 1 {
        return Err(TaskError::new("the first attempt fails after triggering").retry_after_ms(100));
    }
    let again =
        tasks::trigger_and_wait_with::<_, Value>("sleep", &child(ctx.attempt), &options).await?;
    let waited = again.clone().unwrap()?;
    Ok(
        serde_json::json!({ "child": first.id, "again": again.id, "waited": waited, "attempt": ctx.attempt }),
    )
}

kiln_sdk::bundle!(
    hooked,
    hostile,
    late_wait,
    stream_words,
    soak,
    chatty,
    flaky_block,
    echo,
    panic,
    fail,
    refused_import,
    fetch_probe,
    env_fetch,
    annotate,
    annotate_parent,
    big_output,
    sleep,
    work_then_wait,
    hold_heap,
    draw_spin,
    parent,
    spawn_then_spin,
    wait_token,
    keyed_child,
    queues::lane_hold,
    queues::fair_hold,
    queues::rated,
    queues::lane_parent,
    queues::own_limit;
    queues: queues::SPARE
);

/// What one run of the crash soak does.
#[derive(Debug, Deserialize)]
pub struct Soak {
    /// The counter server's URL.
    pub url: String,
    /// Its number, for the token's idempotency key.
    pub n: u64,
    /// How long to wait between steps, in milliseconds.
    pub wait_ms: u64,
    /// Trigger a child and wait on it.
    #[serde(default)]
    pub child: bool,
    /// Trigger a batch of two and wait on it.
    #[serde(default)]
    pub batch: bool,
    /// Wait on a token the backend completes (created with key `soak-<n>`).
    #[serde(default)]
    pub token: bool,
    /// Fail the first attempt after the first fetch.
    #[serde(default)]
    pub fail_first: bool,
}

/// The crash soak's task: durable fetches to a counter around waits,
/// children, a batch, a token and a failed first attempt.
#[task(
    id = "soak",
    retry(
        max_attempts = 3,
        min_timeout_ms = 50,
        max_timeout_ms = 50,
        randomize = false
    )
)]
pub async fn soak(payload: Soak, ctx: &Context) -> Result<Value, TaskError> {
    use kiln_sdk::fetch::{Request, fetch};
    use kiln_sdk::{tasks, wait};
    let wait = || wait::for_duration(std::time::Duration::from_millis(payload.wait_ms));
    let first = fetch(Request::post(&payload.url).body("first")).await?;
    if payload.fail_first && ctx.attempt == 1 {
        return Err(TaskError::new("the soak's first attempt fails"));
    }
    wait().await?;
    let mut seen = vec![first.text()];
    if payload.child {
        let r = tasks::trigger_and_wait::<_, Value>("echo", &serde_json::json!({ "n": payload.n }))
            .await?;
        seen.push(r.unwrap()?["payload"]["n"].to_string());
    }
    if payload.batch {
        let items = [serde_json::json!({ "n": 1 }), serde_json::json!({ "n": 2 })];
        let results = tasks::batch_trigger_and_wait::<_, Value>("echo", &items).await?;
        seen.push(results.len().to_string());
    }
    if payload.token {
        let token = wait::create_token(wait::TokenOptions {
            idempotency_key: Some(format!("soak-{}", payload.n)),
            timeout: Some("10m".into()),
            ..Default::default()
        })
        .await?;
        match wait::for_token::<Value>(token.id).await? {
            Ok(data) => seen.push(data.to_string()),
            Err(timeout) => return Err(TaskError::abort(timeout.message)),
        }
    }
    let second = fetch(Request::post(&payload.url).body("second")).await?;
    wait().await?;
    seen.push(second.text());
    Ok(serde_json::json!({ "seen": seen }))
}

/// How much the chatty task logs.
#[derive(Debug, Deserialize)]
pub struct Chatty {
    /// Lines to log.
    pub lines: u64,
    /// Bytes per line.
    pub bytes: usize,
    /// Wait this long after the first half (0: no wait).
    #[serde(default)]
    pub wait_ms: u64,
}

/// Logs many lines, with a wait halfway.
#[task(id = "chatty")]
pub async fn chatty(payload: Chatty, ctx: &Context) -> Result<Value, TaskError> {
    let line = "x".repeat(payload.bytes);
    for i in 0..payload.lines {
        if payload.wait_ms > 0 && i == payload.lines / 2 {
            kiln_sdk::wait::for_duration(std::time::Duration::from_millis(payload.wait_ms)).await?;
        }
        ctx.log.info(&line, &[("i", &i.to_string())]);
    }
    Ok(serde_json::json!({ "logged": payload.lines }))
}

/// Words to stream, and the wait after each.
#[derive(Debug, Deserialize)]
pub struct StreamWords {
    /// Sent in order to the realtime stream `answer`.
    pub words: Vec<String>,
    /// Milliseconds to wait after each word (durably: long waits suspend).
    #[serde(default)]
    pub gap_ms: u64,
}

/// Sends `words` to the realtime stream `answer`, one chunk each, waiting
/// `gap_ms` after each: a task answering token by token.
#[task(id = "stream-words")]
pub async fn stream_words(payload: StreamWords, _ctx: &Context) -> Result<Value, TaskError> {
    for (i, word) in payload.words.iter().enumerate() {
        kiln_sdk::streams::append("answer", &serde_json::json!({ "i": i, "word": word }))?;
        if payload.gap_ms > 0 {
            kiln_sdk::wait::for_duration(std::time::Duration::from_millis(payload.gap_ms)).await?;
        }
    }
    Ok(serde_json::json!({ "sent": payload.words.len() }))
}

/// Which of the server's budgets the hostile task spends, and how far.
#[derive(Debug, Deserialize)]
pub struct Hostile {
    /// `clock` (host clock reads, each a journal entry), `children`,
    /// `batches`, `tokens`, `fetches` (one after another), `waits` (all in
    /// one step), `big-fetch` (one request of `count` bytes), `big-error`
    /// (an error message and stack of `count` bytes each), `logs`.
    pub spend: String,
    /// How many (or how many bytes).
    pub count: u64,
    /// Where `fetches` and `big-fetch` go.
    #[serde(default)]
    pub url: String,
}

/// Spends one of the server's per-run budgets `count` times. Calls the
/// host refuses end the task with what it made and the refusal.
#[task(
    id = "hostile",
    retry(max_attempts = 3, min_timeout_ms = 10, max_timeout_ms = 10)
)]
pub async fn hostile(payload: Hostile, ctx: &Context) -> Result<Value, TaskError> {
    use kiln_sdk::{fetch, tasks, wait};
    let refused = |made: u64, error: TaskError| {
        Ok(serde_json::json!({ "made": made, "refused": error.message }))
    };
    match payload.spend.as_str() {
        "clock" => {
            let mut last = 0;
            for _ in 0..payload.count {
                last = last.max(ctx.now_ms());
            }
            Ok(serde_json::json!({ "last": last }))
        }
        "children" => {
            for made in 0..payload.count {
                if let Err(e) = tasks::trigger("echo", &serde_json::json!({ "n": made })).await {
                    return refused(made, e);
                }
            }
            Ok(serde_json::json!({ "made": payload.count }))
        }
        "batches" => {
            for made in 0..payload.count {
                let items = [serde_json::json!({ "n": made })];
                if let Err(e) = tasks::batch_trigger("echo", &items).await {
                    return refused(made, e);
                }
            }
            Ok(serde_json::json!({ "made": payload.count }))
        }
        "tokens" => {
            for made in 0..payload.count {
                if let Err(e) = wait::create_token(wait::TokenOptions::default()).await {
                    return refused(made, e);
                }
            }
            Ok(serde_json::json!({ "made": payload.count }))
        }
        "fetches" => {
            for _ in 0..payload.count {
                let _ = fetch::fetch(fetch::Request::get(&payload.url)).await;
            }
            Ok(serde_json::json!({ "made": payload.count }))
        }
        "big-fetch" => {
            let body = vec![b'x'; payload.count as usize];
            let response = fetch::fetch(fetch::Request::post(&payload.url).body(body)).await;
            Ok(serde_json::json!({ "ok": response.is_ok() }))
        }
        "waits" => {
            let waits =
                (0..payload.count).map(|_| wait::for_duration(std::time::Duration::from_millis(1)));
            futures::future::join_all(waits).await;
            Ok(serde_json::json!({ "waited": payload.count }))
        }
        "big-error" => {
            let text = "e".repeat(payload.count as usize);
            let mut error = TaskError::abort(text.clone());
            error.stack = Some(text);
            Err(error)
        }
        "logs" => {
            for n in 0..payload.count {
                ctx.log.info("line", &[("n", &n.to_string())]);
            }
            Ok(serde_json::json!({ "logged": payload.count }))
        }
        other => Err(TaskError::abort(format!("unknown budget {other}"))),
    }
}

/// Triggers an echo child, waits `ms`, and only then waits on the child:
/// with a short retention the child is gone by then.
#[task(id = "late-wait")]
pub async fn late_wait(payload: Sleep, _ctx: &Context) -> Result<Value, TaskError> {
    let child = kiln_sdk::tasks::trigger("echo", &serde_json::json!({ "n": "late" })).await?;
    kiln_sdk::wait::for_duration(std::time::Duration::from_millis(payload.ms)).await?;
    let result = child.wait::<Value>().await?;
    Ok(match result.outcome {
        Ok(output) => serde_json::json!({ "ok": true, "output": output }),
        Err(error) => {
            serde_json::json!({ "ok": false, "name": error.name, "message": error.message })
        }
    })
}
