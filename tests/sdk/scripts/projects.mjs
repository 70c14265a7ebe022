// Two projects on one server, seen through the official SDK: each key sees
// its own project's runs only, and revoked or unknown keys are refused.
// KEY_A and KEY_B are keys of two projects; ADMIN_KEY is the server's own.
import assert from "node:assert/strict";
import { auth, tasks, runs, schedules } from "@trigger.dev/sdk";
import { AuthenticationError, NotFoundError } from "@trigger.dev/sdk";
import { step, rejectsWith, baseURL } from "./lib.mjs";

const { KEY_A, KEY_B, ADMIN_KEY, PROJECT_A } = process.env;
const as = (accessToken, fn) => auth.withAuth({ baseURL, accessToken }, fn);

let runA;
await step("project A triggers and reads its run", async () => {
  await as(KEY_A, async () => {
    runA = (await tasks.trigger("echo", { project: "A" })).id;
    const run = await runs.poll(runA, { pollIntervalMs: 100 });
    assert.equal(run.status, "COMPLETED");
  });
});

let tokenA;
await step("project B cannot see A's run or its list", async () => {
  await as(KEY_A, async () => {
    tokenA = await auth.createPublicToken({ scopes: { read: { runs: [runA] } } });
  });
  await as(KEY_B, async () => {
    await rejectsWith(runs.retrieve(runA), NotFoundError);
    await rejectsWith(runs.cancel(runA), NotFoundError);
    const ids = [];
    for await (const run of runs.list()) ids.push(run.id);
    assert.ok(!ids.includes(runA));
    const list = await schedules.list();
    assert.ok(list.data.some((s) => s.task === "daily-digest"), "B's declarative schedule");
  });
  await as(KEY_A, async () => {
    const list = await schedules.list();
    assert.equal(list.data.length, 0, "A has no schedules");
  });
  // A's public token reads A's run, and only in A.
  await as(tokenA, async () => {
    assert.equal((await runs.retrieve(runA)).id, runA);
  });
});

await step("a project key cannot administer projects", async () => {
  const response = await fetch(`${baseURL}/api/v1/projects`, {
    headers: { Authorization: `Bearer ${KEY_A}` },
  });
  assert.equal(response.status, 403);
});

await step("a revoked key is AuthenticationError at once", async () => {
  const list = await fetch(`${baseURL}/api/v1/projects/${PROJECT_A}/keys`, {
    headers: { Authorization: `Bearer ${ADMIN_KEY}` },
  }).then((r) => r.json());
  const prefix = KEY_A.slice(0, 15);
  const id = list.data.find((k) => k.key.startsWith(prefix) && !k.revokedAt).id;
  const revoked = await fetch(`${baseURL}/api/v1/projects/${PROJECT_A}/keys/${id}`, {
    method: "DELETE",
    headers: { Authorization: `Bearer ${ADMIN_KEY}` },
  });
  assert.equal(revoked.status, 200);
  await as(KEY_A, async () => {
    await rejectsWith(runs.retrieve(runA), AuthenticationError);
  });
  // The public token the key minted goes with it.
  await as(tokenA, async () => {
    await rejectsWith(runs.retrieve(runA), AuthenticationError);
  });
  await as("tr_prod_sk_000000000000000000000000", async () => {
    await rejectsWith(tasks.trigger("echo", {}), AuthenticationError);
  });
  // No key at all: the SDK refuses to send, and the API says why.
  const missing = await fetch(`${baseURL}/api/v3/runs/${runA}`);
  assert.equal(missing.status, 401);
  assert.match((await missing.json()).error, /Missing API key/);
});

console.log("projects: all steps passed");
