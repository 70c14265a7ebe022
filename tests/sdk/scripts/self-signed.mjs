// A server whose secret key is not of the `tr_<env>_sk_` shape: the SDK asks
// Kiln for the environment's claims and signs public tokens itself, and
// Kiln accepts them.
import assert from "node:assert/strict";
import { auth, tasks, runs } from "@trigger.dev/sdk";
import { PermissionDeniedError } from "@trigger.dev/sdk";
import { step, rejectsWith } from "./lib.mjs";

await step("a token the SDK signed itself reads its run and subscribes", async () => {
  const handle = await tasks.trigger("echo", { signed: "by the SDK" });
  const other = await tasks.trigger("echo", {});
  const token = await auth.createPublicToken({
    scopes: { read: { runs: [handle.id] } },
    expirationTime: "10m",
  });
  await auth.withAuth({ accessToken: token }, async () => {
    let last;
    for await (const run of runs.subscribeToRun(handle.id)) last = run;
    assert.equal(last.status, "COMPLETED");
    assert.deepEqual(last.output.payload, { signed: "by the SDK" });
    await rejectsWith(runs.retrieve(other.id), PermissionDeniedError);
  });
});

console.log("self-signed: all steps passed");
