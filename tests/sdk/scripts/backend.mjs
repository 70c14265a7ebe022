// A backend's calls against Kiln with the probe bundle deployed: triggering
// with every option, reading, listing, polling, cancelling, replaying,
// rescheduling, batches, wait tokens and idempotency keys.
import assert from "node:assert/strict";
import { tasks, runs, batch, wait, idempotencyKeys } from "@trigger.dev/sdk";
import { NotFoundError, UnprocessableEntityError, BadRequestError } from "@trigger.dev/sdk";
import { step, rejectsWith } from "./lib.mjs";

let echo;
await step("tasks.trigger with every option", async () => {
  const handle = await tasks.trigger(
    "echo",
    { z: 1, a: { y: 2, b: [3] } },
    {
      tags: ["sdk", "compat"],
      metadata: { order: "42", step: 1, a: true },
      maxAttempts: 2,
      maxDuration: 60,
      priority: 5,
      machine: "small-1x",
      concurrencyKey: "tenant-a",
      ttl: "10m",
      idempotencyKey: await idempotencyKeys.create("compat-echo-1"),
      idempotencyKeyTTL: "1h",
    },
  );
  assert.match(handle.id, /^run_/);
  assert.equal(typeof handle.publicAccessToken, "string");
  echo = handle;
});

await step("idempotencyKeys dedupe a second trigger", async () => {
  const again = await tasks.trigger("echo", { other: true }, {
    idempotencyKey: await idempotencyKeys.create("compat-echo-1"),
  });
  assert.equal(again.id, echo.id);
  // Keys are per task: the same key on another task makes another run.
  const other = await tasks.trigger("sleep", { ms: 1 }, {
    idempotencyKey: await idempotencyKeys.create("compat-echo-1"),
  });
  assert.notEqual(other.id, echo.id);
});

await step("idempotencyKeys.reset lets the key make a new run", async () => {
  const key = await idempotencyKeys.create("compat-reset");
  const first = await tasks.trigger("echo", { n: 1 }, { idempotencyKey: key });
  assert.equal((await tasks.trigger("echo", { n: 2 }, { idempotencyKey: key })).id, first.id);
  const reset = await idempotencyKeys.reset("echo", key);
  assert.equal(reset.id, first.id);
  const again = await tasks.trigger("echo", { n: 3 }, { idempotencyKey: key });
  assert.notEqual(again.id, first.id);
  await rejectsWith(idempotencyKeys.reset("echo", await idempotencyKeys.create("never-used")), NotFoundError);
});

await step("runs.poll until completed, payload and output unchanged", async () => {
  const run = await runs.poll(echo.id, { pollIntervalMs: 100 });
  assert.equal(run.status, "COMPLETED");
  assert.equal(run.isSuccess, true);
  assert.deepEqual(Object.keys(run.payload), ["z", "a"]);
  assert.deepEqual(run.output.payload, { z: 1, a: { y: 2, b: [3] } });
  assert.deepEqual(Object.keys(run.output.payload.a), ["y", "b"]);
  assert.deepEqual(run.tags.sort(), ["compat", "sdk"]);
  assert.equal(run.metadata.order, "42");
  assert.deepEqual(Object.keys(run.metadata), ["order", "step", "a"], "metadata keeps its key order");
  assert.equal(run.idempotencyKey, "compat-echo-1");
  assert.ok(run.startedAt instanceof Date && run.finishedAt instanceof Date);
});

await step("a payload over 128 KiB goes through the SDK's upload flow", async () => {
  const big = { blob: "x".repeat(300 * 1024), tail: [1, 2, 3] };
  const handle = await tasks.trigger("echo", big);
  const run = await runs.poll(handle.id, { pollIntervalMs: 100 });
  assert.equal(run.status, "COMPLETED");
  assert.equal(run.payload.blob.length, 300 * 1024);
  assert.deepEqual(run.output.payload.tail, [1, 2, 3]);
});

await step("queue, concurrencyKey and debounce options", async () => {
  const queued = await tasks.trigger("lane-hold", { ms: 1 }, { queue: "probe-spare", concurrencyKey: "t-1" });
  const run = await runs.poll(queued.id, { pollIntervalMs: 100 });
  assert.equal(run.status, "COMPLETED");
  const first = await tasks.trigger("echo", { n: 1 }, { debounce: { key: "burst", delay: "1s" } });
  const second = await tasks.trigger("echo", { n: 2 }, { debounce: { key: "burst", delay: "1s" } });
  assert.equal(second.id, first.id, "a burst folds into one run");
  await rejectsWith(tasks.trigger("echo", {}, { queue: "no-such-queue" }), UnprocessableEntityError);
});

await step("runs.retrieve of an unknown run is NotFoundError", async () => {
  await rejectsWith(runs.retrieve("run_doesnotexist000000000"), NotFoundError);
});

await step("a task no deployment has yet makes a PENDING_VERSION run", async () => {
  const handle = await tasks.trigger("not-deployed-yet", { later: true });
  const run = await runs.retrieve(handle.id);
  assert.equal(run.status, "PENDING_VERSION");
  assert.equal(run.isQueued, true);
  await runs.cancel(handle.id);
});

await step("lockToVersion on a version that does not exist is UnprocessableEntityError", async () => {
  await rejectsWith(tasks.trigger("echo", {}, { version: "19990101.1" }), UnprocessableEntityError);
});

await step("a payload its schema refuses is UnprocessableEntityError", async () => {
  const error = await rejectsWith(tasks.trigger("sleep", { ms: "soon" }), UnprocessableEntityError);
  assert.match(error.message, /ms/);
});

await step("a bad delay is BadRequestError", async () => {
  await rejectsWith(tasks.trigger("echo", {}, { delay: "whenever" }), BadRequestError);
});

await step("delayed run: reschedule, then cancel", async () => {
  const handle = await tasks.trigger("echo", { n: 1 }, { delay: "1h" });
  let run = await runs.retrieve(handle.id);
  assert.equal(run.status, "DELAYED");
  assert.ok(run.delayedUntil instanceof Date);
  const rescheduled = await runs.reschedule(handle.id, { delay: "2h" });
  assert.ok(rescheduled.delayedUntil > run.delayedUntil);
  await runs.cancel(handle.id);
  run = await runs.retrieve(handle.id);
  assert.equal(run.status, "CANCELED");
  assert.equal(run.isCancelled, true);
});

await step("runs.replay makes a new run with the same payload", async () => {
  const replayed = await runs.replay(echo.id);
  assert.notEqual(replayed.id, echo.id);
  const run = await runs.poll(replayed.id, { pollIntervalMs: 100 });
  assert.deepEqual(run.payload, { z: 1, a: { y: 2, b: [3] } });
});

await step("runs.list filters and auto-paginates", async () => {
  const ids = [];
  for (let i = 0; i < 7; i++) {
    ids.push((await tasks.trigger("echo", { i }, { tags: ["paged"] })).id);
  }
  const seen = [];
  for await (const run of runs.list({ tag: "paged", limit: 3 })) {
    seen.push(run.id);
    assert.equal(run.taskIdentifier, "echo");
    assert.equal(typeof run.env.id, "string");
  }
  assert.deepEqual(seen.sort(), ids.sort());
  const page = await runs.list({ taskIdentifier: ["echo"], status: ["CANCELED"] });
  assert.ok(page.data.every((run) => run.status === "CANCELED"));
  assert.ok(page.data.length >= 1);
});

await step("tasks.batchTrigger and runs of the batch", async () => {
  const handle = await tasks.batchTrigger("echo", [{ payload: { k: 1 } }, { payload: { k: 2 } }]);
  assert.match(handle.batchId, /^batch_/);
  assert.equal(handle.runCount, 2);
  const retrieved = await batch.retrieve(handle.batchId);
  assert.equal(retrieved.runCount, 2);
  for (const id of retrieved.runs) {
    const run = await runs.poll(id, { pollIntervalMs: 100 });
    assert.equal(run.status, "COMPLETED");
  }
});

await step("batch.trigger of 1,000 items", async () => {
  const items = Array.from({ length: 1000 }, (_, i) => ({ id: "echo", payload: { i } }));
  const handle = await batch.trigger(items);
  assert.equal(handle.runCount, 1000);
  const retrieved = await batch.retrieve(handle.batchId);
  assert.equal(retrieved.runs.length, 1000);
});

await step("wait tokens: create, retrieve, list, complete", async () => {
  const token = await wait.createToken({ timeout: "10m", tags: ["compat"], idempotencyKey: "tok-1" });
  assert.match(token.id, /^waitpoint_/);
  assert.equal(typeof token.url, "string");
  assert.equal(typeof token.publicAccessToken, "string");
  const cached = await wait.createToken({ timeout: "10m", idempotencyKey: "tok-1" });
  assert.equal(cached.id, token.id);
  assert.equal(cached.isCached, true);
  let retrieved = await wait.retrieveToken(token.id);
  assert.equal(retrieved.status, "WAITING");
  const listed = [];
  for await (const t of wait.listTokens({ tags: ["compat"] })) listed.push(t.id);
  assert.deepEqual(listed, [token.id]);
  assert.deepEqual(await wait.completeToken(token.id, { approved: true }), { success: true });
  retrieved = await wait.retrieveToken(token.id);
  assert.equal(retrieved.status, "COMPLETED");
  assert.deepEqual(retrieved.output, { approved: true });
});

await step("a run waiting on a token resumes when the SDK completes it", async () => {
  const token = await wait.createToken({ timeout: "10m" });
  const handle = await tasks.trigger("wait-token", { token: token.id });
  // Completing the token before or after the run reaches its wait resumes it
  // the same way.
  await wait.completeToken(token.id, { go: 1 });
  const run = await runs.poll(handle.id, { pollIntervalMs: 100 });
  assert.equal(run.status, "COMPLETED");
  assert.deepEqual(run.output.data, { go: 1 });
});

console.log("backend: all steps passed");
