// Schedules through the official SDK, with the `digest` example deployed:
// its declarative schedule, and imperative ones made, read, changed,
// paused and deleted by a backend.
import assert from "node:assert/strict";
import { schedules } from "@trigger.dev/sdk";
import { NotFoundError, UnprocessableEntityError } from "@trigger.dev/sdk";
import { step, rejectsWith } from "./lib.mjs";

await step("the declarative schedule is listed", async () => {
  const list = await schedules.list();
  const declared = list.data.find((s) => s.task === "daily-digest");
  assert.equal(declared.type, "DECLARATIVE");
  assert.equal(declared.generator.expression, "0 9 * * 1-5");
  assert.ok(declared.nextRun instanceof Date);
});

let made;
await step("create is an upsert by deduplicationKey", async () => {
  made = await schedules.create({
    task: "tenant-digest",
    cron: "0 8 * * *",
    timezone: "Europe/Paris",
    externalId: "acme",
    deduplicationKey: "digest:acme",
  });
  assert.match(made.id, /^sched_/);
  assert.equal(made.type, "IMPERATIVE");
  assert.equal(made.timezone, "Europe/Paris");
  assert.equal(made.externalId, "acme");
  const again = await schedules.create({
    task: "tenant-digest",
    cron: "30 8 * * *",
    timezone: "Europe/Paris",
    externalId: "acme",
    deduplicationKey: "digest:acme",
  });
  assert.equal(again.id, made.id);
  assert.equal(again.generator.expression, "30 8 * * *");
});

await step("retrieve, update, deactivate, activate, delete", async () => {
  assert.equal((await schedules.retrieve(made.id)).id, made.id);
  const updated = await schedules.update(made.id, {
    task: "tenant-digest",
    cron: "0 7 * * 1",
    timezone: "UTC",
    externalId: "acme",
  });
  assert.equal(updated.generator.expression, "0 7 * * 1");
  assert.equal((await schedules.deactivate(made.id)).active, false);
  assert.equal((await schedules.activate(made.id)).active, true);
  await schedules.del(made.id);
  await rejectsWith(schedules.retrieve(made.id), NotFoundError);
});

await step("a bad cron or a task that is not scheduled is UnprocessableEntityError", async () => {
  await rejectsWith(
    schedules.create({ task: "tenant-digest", cron: "every day", deduplicationKey: "bad" }),
    UnprocessableEntityError,
  );
  await rejectsWith(
    schedules.create({ task: "preview-digest", cron: "0 8 * * *", deduplicationKey: "bad2" }),
    UnprocessableEntityError,
  );
});

await step("timezones, without a key", async () => {
  const { timezones } = await schedules.timezones();
  assert.ok(timezones.includes("Europe/Paris"));
  const noUtc = await schedules.timezones({ excludeUtc: true });
  assert.ok(!noUtc.timezones.includes("UTC"));
});

console.log("schedules: all steps passed");
