// Environment variables through the official SDK's `envvars` API: the
// routes, shapes and errors of Trigger.dev's, secrets masked. Sets the
// secret PROBE_SECRET (SECRET_VALUE) and PROBE_GREETING in the default
// project's dev environment for the Rust test that runs this script.
import { envvars } from "@trigger.dev/sdk";
import { BadRequestError, NotFoundError } from "@trigger.dev/sdk";
import { apiClientManager } from "@trigger.dev/core/v3";
import assert from "node:assert/strict";
import { step, rejectsWith } from "./lib.mjs";

const project = process.env.PROJECT_REF ?? "default";
const env = process.env.ENV_SLUG ?? "dev";
const secret = process.env.SECRET_VALUE;
if (!secret) throw new Error("SECRET_VALUE must be set");

const byName = async () =>
  Object.fromEntries((await envvars.list(project, env)).map((v) => [v.name, v]));

await step("create a secret and a plain variable", async () => {
  assert.deepEqual(
    await envvars.create(project, env, { name: "PROBE_SECRET", value: secret, isSecret: true }),
    { success: true },
  );
  assert.deepEqual(
    await envvars.create(project, env, { name: "PROBE_GREETING", value: "hello" }),
    { success: true },
  );
});

await step("list shows a secret masked and a plain value as set", async () => {
  const vars = await byName();
  assert.deepEqual(vars.PROBE_SECRET, { name: "PROBE_SECRET", value: "<redacted>", isSecret: true });
  assert.deepEqual(vars.PROBE_GREETING, { name: "PROBE_GREETING", value: "hello", isSecret: false });
});

await step("retrieve: a secret is write-only", async () => {
  const got = await envvars.retrieve(project, env, "PROBE_SECRET");
  assert.equal(got.value, "<redacted>");
  assert.equal(got.isSecret, true);
  assert.equal((await envvars.retrieve(project, env, "PROBE_GREETING")).value, "hello");
});

// SDK 4.8.3's `envvars.update` reads an undefined `name` when called
// outside a task (a ReferenceError before any request), so this step calls
// the SDK's own API client method that `update` would have called.
const update = (name, params) =>
  apiClientManager.clientOrThrow().updateEnvVar(project, env, name, params);

await step("update gives a new value; create replaces one", async () => {
  assert.deepEqual(await update("PROBE_GREETING", { value: "hi" }), { success: true });
  assert.equal((await envvars.retrieve(project, env, "PROBE_GREETING")).value, "hi");
  await envvars.create(project, env, { name: "PROBE_GREETING", value: "hello from dev" });
  assert.equal((await envvars.retrieve(project, env, "PROBE_GREETING")).value, "hello from dev");
  await rejectsWith(update("PROBE_NOPE", { value: "x" }), NotFoundError);
});

await step("upload sets many, keeping existing values unless override", async () => {
  await envvars.upload(project, env, { variables: { BULK_A: "1", BULK_B: "2" }, override: false });
  await envvars.upload(project, env, { variables: { BULK_A: "changed" }, override: false });
  assert.equal((await envvars.retrieve(project, env, "BULK_A")).value, "1");
  await envvars.upload(project, env, { variables: { BULK_A: "changed" }, override: true });
  assert.equal((await envvars.retrieve(project, env, "BULK_A")).value, "changed");
});

await step("del removes a variable; reading it then is NotFoundError", async () => {
  assert.deepEqual(await envvars.del(project, env, "BULK_B"), { success: true });
  await rejectsWith(envvars.retrieve(project, env, "BULK_B"), NotFoundError);
  await rejectsWith(envvars.del(project, env, "BULK_B"), NotFoundError);
  assert.equal((await byName()).BULK_B, undefined);
});

await step("a bad name is BadRequestError; an unknown project NotFoundError", async () => {
  await rejectsWith(envvars.create(project, env, { name: "1BAD", value: "x" }), BadRequestError);
  await rejectsWith(envvars.list("proj_nope", "prod"), NotFoundError);
});

console.log("envvars: all steps passed");
