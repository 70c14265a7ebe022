// Tasks the end-to-end tests drive to check the TypeScript SDK against the
// real server (tests/e2e/typescript.rs).

import {
  AbortTaskRunError,
  addTags,
  fetch,
  logger,
  metadata,
  queue,
  retry,
  schedules,
  task,
  tasks,
  wait,
} from "@kiln/sdk";

const shared = queue({ name: "ts-shared", concurrencyLimit: 1 });

// Makes a wait token, says its id in the metadata, and waits for it.
export const token = task({
  id: "token-ts",
  queue: shared,
  run: async () => {
    const made = wait.createToken({ timeout: "10m", tags: ["probe-ts"] });
    metadata.set("token", made.id);
    metadata.increment("waits", 1);
    addTags(["token-made"]);
    const result = await wait.forToken<{ approved: boolean }>(made);
    return { ok: result.ok, data: result.ok ? result.output : null, metadata: metadata.current() };
  },
});

// Fails its first attempt and completes its second; its hooks count in the
// metadata when they run.
export const flaky = task({
  id: "flaky-ts",
  machine: "small-2x",
  maxDuration: 60,
  retry: { maxAttempts: 3, minTimeoutInMs: 100, maxTimeoutInMs: 100, factor: 1 },
  onStart: async () => {
    metadata.increment("starts");
  },
  init: async () => ({ seven: 7 }),
  cleanup: async () => {
    metadata.increment("cleanups");
  },
  onSuccess: async () => {
    metadata.set("succeeded", true);
  },
  onFailure: async () => {
    metadata.increment("failures");
  },
  run: async (_payload: unknown, { ctx, init }) => {
    if (ctx.attempt.number < 2) throw new Error(`attempt ${ctx.attempt.number} fails`);
    return { attempt: ctx.attempt.number, init: (init as { seven: number }).seven };
  },
});

// Fails without retrying: by AbortTaskRunError, or by catchError's word.
export const abort = task({
  id: "abort-ts",
  retry: { maxAttempts: 3, minTimeoutInMs: 100 },
  run: async (payload: { how: "abort" | "catch" }) => {
    if (payload.how === "abort") throw new AbortTaskRunError("no point retrying");
    throw new Error("caught and not retried");
  },
  catchError: async () => ({ skipRetrying: true }),
  onFailure: async () => {
    metadata.increment("failures");
  },
});

// Retries a block in the attempt, with a durable wait between tries.
export const onThrow = task({
  id: "on-throw-ts",
  run: async () => {
    let tries = 0;
    const value = await retry.onThrow(
      async ({ attempt }) => {
        tries++;
        if (attempt < 3) throw new Error(`try ${attempt}`);
        return attempt;
      },
      { maxAttempts: 3, minTimeoutInMs: 50, factor: 1 },
    );
    return { value, tries };
  },
});

// Fetches a URL through Kiln's durable fetch.
export const fetcher = task({
  id: "fetch-ts",
  run: async (payload: { url: string }) => {
    const response = await fetch(payload.url, { headers: { "x-probe": "ts" } });
    return { status: response.status, ok: response.ok, body: await response.text() };
  },
});

// Reads an environment variable, and prints to stdout and stderr.
export const env = task({
  id: "env-ts",
  run: async (payload: { name: string }) => {
    console.log(`reading ${payload.name}`);
    console.error("a line on stderr");
    return { value: process.env[payload.name] ?? null };
  },
});

export const child = task({
  id: "child-ts",
  run: async (payload: { n: number }) => {
    if (payload.n < 0) throw new Error("negative");
    return { double: payload.n * 2 };
  },
});

// Triggers a batch of children and waits for all of them.
export const batch = task({
  id: "batch-ts",
  run: async (payload: { ns: number[] }) => {
    const done = await tasks.batchTriggerAndWait<{ double: number }>(
      "child-ts",
      payload.ns.map((n) => ({ payload: { n } })),
    );
    logger.info("batch done", { runs: done.runs.length });
    return done.runs.map((run) => (run.ok ? run.output.double : "failed"));
  },
});

// A scheduled task whose schedule the deploy creates; triggered by hand, it
// gets a schedule's payload.
export const nightly = schedules.task({
  id: "nightly-ts",
  cron: { pattern: "0 3 * * *", timezone: "Europe/Oslo" },
  run: async (payload) => ({
    hour: payload.timestamp.getUTCHours(),
    timezone: payload.timezone,
  }),
});

// Triggers the Rust `hello-world` task and waits for it: the two bundles
// are deployed as one version.
export const mixed = task({
  id: "mixed-ts",
  run: async (payload: { name: string }) => {
    const greeted = await tasks.triggerAndWait<{ message: string }>("hello-world", payload);
    return { fromRust: greeted.unwrap().message, child: greeted.id };
  },
});

// Sleeps in-process (a JavaScript timer, not a durable wait): the guest
// blocks in WASI's poll, where cancel and maxDuration still reach it.
export const sleepy = task({
  id: "sleepy-ts",
  run: async (payload: { ms: number }) => {
    await new Promise((resolve) => setTimeout(resolve, payload.ms));
    return { slept: payload.ms };
  },
});

// Reads its metadata before it changes it, then waits: the replay at the
// resume must see the metadata the attempt started with.
export const once = task({
  id: "once-ts",
  run: async () => {
    const before = metadata.get("sent") === true;
    if (!before) metadata.set("sent", true);
    await wait.for({ seconds: 0.3 });
    return { sentBefore: before };
  },
});

// Succeeds, and its onSuccess hook throws: the error is logged, and the
// run stays COMPLETED.
export const hooked = task({
  id: "hooked-ts",
  onSuccess: async () => {
    throw new Error("hook boom");
  },
  run: async () => ({ done: true }),
});
