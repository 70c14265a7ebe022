// What a frontend does with public access tokens: reads limited to its
// scopes, realtime subscriptions (one run, a tag, a batch), one-time trigger
// tokens and completing a wait token, and the errors for everything else.
import assert from "node:assert/strict";
import { auth, tasks, runs, wait } from "@trigger.dev/sdk";
import { AuthenticationError, BatchTriggerError, PermissionDeniedError } from "@trigger.dev/sdk";
import { step, rejectsWith, baseURL, secretKey } from "./lib.mjs";

/** Collects a subscription's runs until `done(latestById)` holds. */
async function collect(subscription, done) {
  const latest = new Map();
  const statuses = [];
  for await (const run of subscription) {
    latest.set(run.id, run);
    statuses.push(`${run.id}:${run.status}`);
    if (done(latest)) break;
  }
  return { latest, statuses };
}

const allCompleted = (n) => (latest) =>
  latest.size === n && [...latest.values()].every((run) => run.status === "COMPLETED");

let slow, other;
await step("a trigger's publicAccessToken reads its run and no other", async () => {
  slow = await tasks.trigger("sleep", { ms: 300 }, { tags: ["user-1"] });
  other = await tasks.trigger("echo", { secret: true });
  await auth.withAuth({ accessToken: slow.publicAccessToken }, async () => {
    const run = await runs.retrieve(slow.id);
    assert.equal(run.id, slow.id);
    await rejectsWith(runs.retrieve(other.id), PermissionDeniedError);
    await rejectsWith(tasks.trigger("echo", {}), PermissionDeniedError);
    await rejectsWith(runs.cancel(slow.id), PermissionDeniedError);
  });
});

await step("subscribeToRun with a public token follows the run to completion", async () => {
  const token = await auth.createPublicToken({ scopes: { read: { runs: [slow.id] } } });
  const seen = [];
  let last;
  await auth.withAuth({ accessToken: token }, async () => {
    for await (const run of runs.subscribeToRun(slow.id)) {
      seen.push(run.status);
      last = run;
    }
  });
  assert.equal(last.status, "COMPLETED", `statuses: ${seen}`);
  assert.equal(last.isCompleted, true);
  assert.ok(last.finishedAt instanceof Date && !Number.isNaN(last.finishedAt.getTime()));
  assert.ok(last.createdAt instanceof Date && !Number.isNaN(last.createdAt.getTime()));
  assert.deepEqual(last.payload, { ms: 300 });
  assert.equal(typeof last.output.waitedMs, "number");
  assert.deepEqual(last.tags, ["user-1"]);
});

await step("large payloads and outputs come through presigned URLs, read and realtime", async () => {
  const big = { blob: "y".repeat(600 * 1024), n: 7 };
  const handle = await tasks.trigger("echo", big);
  let last;
  await auth.withAuth({ accessToken: handle.publicAccessToken }, async () => {
    for await (const run of runs.subscribeToRun(handle.id)) last = run;
    const read = await runs.retrieve(handle.id);
    assert.equal(read.payload.blob.length, 600 * 1024);
    assert.equal(read.output.payload.n, 7);
  });
  assert.equal(last.status, "COMPLETED");
  assert.equal(last.payload.blob.length, 600 * 1024);
  assert.equal(last.output.payload.blob.length, 600 * 1024);
});

await step("a subscriber hears a queued run start executing, then finish", async () => {
  // probe-one runs one at a time: the second run waits its turn.
  const first = await tasks.trigger("lane-hold", { ms: 1500 });
  const second = await tasks.trigger("lane-hold", { ms: 500 });
  const seen = [];
  await auth.withAuth({ accessToken: second.publicAccessToken }, async () => {
    for await (const run of runs.subscribeToRun(second.id)) seen.push(run.status);
  });
  assert.equal(seen[0], "QUEUED", `statuses: ${seen}`);
  assert.ok(seen.includes("EXECUTING"), `statuses: ${seen}`);
  assert.equal(seen.at(-1), "COMPLETED", `statuses: ${seen}`);
  assert.equal((await runs.retrieve(first.id)).status, "COMPLETED");
});

await step("a subscriber sees a run wait, then hears it finish through a live poll", async () => {
  const token = await wait.createToken({ timeout: "10m" });
  const handle = await tasks.trigger("wait-token", { token: token.id });
  const seen = [];
  let last;
  await auth.withAuth({ accessToken: handle.publicAccessToken }, async () => {
    for await (const run of runs.subscribeToRun(handle.id)) {
      seen.push(run.status);
      last = run;
      // The run has started and waits on the token: complete it now, so
      // its end can only come through a live poll.
      if ((run.status === "WAITING" || run.status === "EXECUTING") && !seen.includes("done")) {
        seen.push("done");
        await auth.withAuth({ accessToken: secretKey }, () => wait.completeToken(token.id, { ok: true }));
      }
    }
  });
  assert.ok(seen.includes("done"), `statuses: ${seen}`);
  assert.equal(last.status, "COMPLETED", `statuses: ${seen}`);
  assert.deepEqual(last.output.data, { ok: true });
});

await step("a tag token reads the tag's runs and subscribes to them", async () => {
  const handles = [];
  for (let i = 0; i < 3; i++) {
    handles.push(await tasks.trigger("sleep", { ms: 100 * (i + 1) }, { tags: ["group-x", `n-${i}`] }));
  }
  await tasks.trigger("echo", {}, { tags: ["group-y"] });
  const token = await auth.createPublicToken({ scopes: { read: { tags: ["group-x"] } } });
  await auth.withAuth({ accessToken: token }, async () => {
    assert.equal((await runs.retrieve(handles[0].id)).id, handles[0].id);
    // A run tagged after the subscription has shown the first three joins
    // it, through a live poll.
    const latest = new Map();
    let later;
    for await (const run of runs.subscribeToRunsWithTag("group-x")) {
      latest.set(run.id, run);
      if (!later && latest.size === 3) {
        later = await auth.withAuth({ accessToken: secretKey }, () =>
          tasks.trigger("sleep", { ms: 50 }, { tags: ["group-x"] }),
        );
        handles.push(later);
      }
      if (allCompleted(4)(latest)) break;
    }
    assert.deepEqual([...latest.keys()].sort(), handles.map((h) => h.id).sort());
    await rejectsWith(runs.retrieve(other.id), PermissionDeniedError);
  });
});

await step("subscribeToBatch follows every run of a batch", async () => {
  const handle = await tasks.batchTrigger("sleep", [
    { payload: { ms: 50 } },
    { payload: { ms: 150 } },
    { payload: { ms: 250 } },
  ]);
  await auth.withAuth({ accessToken: handle.publicAccessToken }, async () => {
    const { latest } = await collect(runs.subscribeToBatch(handle.batchId), allCompleted(3));
    assert.equal(latest.size, 3);
  });
});

await step("a one-time trigger token triggers its task once", async () => {
  const token = await auth.createTriggerPublicToken("echo");
  await auth.withAuth({ accessToken: token }, async () => {
    await rejectsWith(tasks.trigger("sleep", { ms: 1 }), PermissionDeniedError);
    const first = await tasks.trigger("echo", { from: "browser" });
    assert.match(first.id, /^run_/);
    await rejectsWith(tasks.trigger("echo", { again: true }), AuthenticationError);
  });
  const multi = await auth.createTriggerPublicToken("echo", { multipleUse: true });
  await auth.withAuth({ accessToken: multi }, async () => {
    await tasks.trigger("echo", { n: 1 });
    await tasks.trigger("echo", { n: 2 });
  });
});

await step("a one-time batch trigger token triggers one batch of its task", async () => {
  const token = await auth.createBatchTriggerPublicToken("echo");
  await auth.withAuth({ accessToken: token }, async () => {
    // The SDK wraps a batch's refusal in its BatchTriggerError, with the
    // API's error as `apiError`.
    const refused = await rejectsWith(tasks.batchTrigger("sleep", [{ payload: { ms: 1 } }]), BatchTriggerError);
    assert.ok(refused.apiError instanceof PermissionDeniedError, String(refused.apiError));
    const handle = await tasks.batchTrigger("echo", [{ payload: { a: 1 } }, { payload: { a: 2 } }]);
    assert.equal(handle.runCount, 2);
    const used = await rejectsWith(tasks.batchTrigger("echo", [{ payload: { a: 3 } }]), BatchTriggerError);
    assert.ok(used.apiError instanceof AuthenticationError, String(used.apiError));
  });
});

await step("a one-time token with trigger and batch scopes makes one run or one batch, not both", async () => {
  const minted = await fetch(`${baseURL}/api/v1/auth/public-tokens`, {
    method: "POST",
    headers: { Authorization: `Bearer ${secretKey}`, "content-type": "application/json" },
    body: JSON.stringify({ scopes: ["trigger:tasks:echo", "batchTrigger:tasks:echo"], oneTimeUse: true }),
  }).then((r) => r.json());
  await auth.withAuth({ accessToken: minted.token }, async () => {
    await tasks.trigger("echo", { once: true });
    const used = await rejectsWith(tasks.batchTrigger("echo", [{ payload: {} }]), BatchTriggerError);
    assert.ok(used.apiError instanceof AuthenticationError, String(used.apiError));
  });
});

await step("a wait token's publicAccessToken completes that token", async () => {
  const token = await wait.createToken({ timeout: "10m" });
  const another = await wait.createToken({ timeout: "10m" });
  await auth.withAuth({ accessToken: token.publicAccessToken }, async () => {
    await rejectsWith(wait.completeToken(another.id, {}), PermissionDeniedError);
    assert.deepEqual(await wait.completeToken(token.id, { ok: 1 }), { success: true });
  });
  assert.equal((await wait.retrieveToken(token.id)).status, "COMPLETED");
});

await step("wrong keys and tampered tokens are AuthenticationError", async () => {
  await auth.withAuth({ accessToken: "tr_dev_sk_wrongwrongwrongwrong0000" }, async () => {
    await rejectsWith(runs.retrieve(slow.id), AuthenticationError);
  });
  const token = await auth.createPublicToken({ scopes: { read: { runs: true } } });
  const [header, claims, signature] = token.split(".");
  const forged = JSON.parse(Buffer.from(claims, "base64url"));
  forged.scopes = ["admin"];
  const tampered = [header, Buffer.from(JSON.stringify(forged)).toString("base64url"), signature].join(".");
  await auth.withAuth({ accessToken: tampered }, async () => {
    await rejectsWith(runs.retrieve(slow.id), AuthenticationError);
  });
});

await step("server-sent events carry a run's updates", async () => {
  const handle = await tasks.trigger("sleep", { ms: 200 });
  const response = await fetch(`${baseURL}/realtime/v1/events/runs/${handle.id}`, {
    headers: { Authorization: `Bearer ${handle.publicAccessToken}` },
  });
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /text\/event-stream/);
  const text = await response.text();
  const statuses = [...text.matchAll(/^data: (.*)$/gm)].map((m) => JSON.parse(m[1]).status);
  assert.equal(statuses.at(-1), "COMPLETED", `statuses: ${statuses}`);
});

console.log("frontend: all steps passed");
