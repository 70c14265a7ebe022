// Defining tasks, and triggering and waiting on runs, as Trigger.dev's
// `task`, `schemaTask`, `schedules.task` and `tasks.*`.

import * as host from "kiln:task/host@0.1.0";
import { hostCall } from "./errors";
import { register, manifestOf, type TaskOptions } from "./registry";
import type { RunOutcome } from "./types";
import { waitOn } from "./runtime";

/** Trigger.dev's trigger options (`idempotencyKey`, `delay`, `tags`,
 *  `queue`, `concurrencyKey`, `ttl`, `metadata`, `maxAttempts`,
 *  `machine`...), passed to Kiln as they are. */
export type TriggerOptions = Record<string, unknown>;

/** A run a trigger made. */
export interface RunHandle { id: string }

/** How a run that was waited on ended. */
export type TaskRunResult<O> =
  | { ok: true; id: string; taskIdentifier: string; output: O; unwrap(): O }
  | { ok: false; id: string; taskIdentifier: string; error: unknown; unwrap(): O };

/** Thrown by `unwrap()` of a run that did not complete. */
export class SubtaskUnwrapError extends Error {
  readonly runId: string;
  readonly taskIdentifier: string;
  readonly cause: unknown;
  constructor(taskIdentifier: string, runId: string, cause: unknown) {
    const message = (cause as { message?: string })?.message ?? JSON.stringify(cause);
    super(`run ${runId} of ${taskIdentifier} failed: ${message}`);
    this.name = "SubtaskUnwrapError";
    this.runId = runId;
    this.taskIdentifier = taskIdentifier;
    this.cause = cause;
  }
}

function resultOf<O>(taskIdentifier: string, outcome: RunOutcome): TaskRunResult<O> {
  let value: unknown = null;
  try {
    value = JSON.parse(outcome.value);
  } catch {
    value = outcome.value;
  }
  if (outcome.ok) {
    return { ok: true, id: outcome.runId, taskIdentifier, output: value as O, unwrap: () => value as O };
  }
  return {
    ok: false,
    id: outcome.runId,
    taskIdentifier,
    error: value,
    unwrap: () => {
      throw new SubtaskUnwrapError(taskIdentifier, outcome.runId, value);
    },
  };
}

/** Triggers a run of `id` and returns its handle (journaled: a replay
 *  gets the same run, never a second one). */
export function trigger(id: string, payload: unknown, options: TriggerOptions = {}): RunHandle {
  const runId = hostCall(() => host.trigger(id, JSON.stringify(payload ?? null), JSON.stringify(options)));
  return { id: runId };
}

/** Triggers a run of `id` and waits for it to end. */
export async function triggerAndWait<O = unknown>(id: string, payload: unknown, options: TriggerOptions = {}): Promise<TaskRunResult<O>> {
  const handle = trigger(id, payload, options);
  const wake = await waitOn({ tag: "run", val: handle.id });
  if (wake.tag !== "run") throw new Error(`the wait for run ${handle.id} woke with ${wake.tag}`);
  return resultOf<O>(id, wake.val);
}

/** One item of a batch trigger. */
export interface BatchItem<P> { payload: P; options?: TriggerOptions }

/** A batch a trigger made. */
export interface BatchHandle { batchId: string; runs: RunHandle[] }

/** Triggers a batch of runs of `id`. */
export function batchTrigger<P>(id: string, items: BatchItem<P>[]): BatchHandle {
  return batchTriggerMany(items.map((item) => ({ id, ...item })));
}

/** Triggers a batch of runs of several tasks. */
export function batchTriggerMany(items: ({ id: string } & BatchItem<unknown>)[]): BatchHandle {
  const handle = hostCall(() =>
    host.batchTrigger(
      items.map((item) => ({
        taskId: item.id,
        payload: JSON.stringify(item.payload ?? null),
        options: JSON.stringify(item.options ?? {}),
      })),
    ),
  );
  return { batchId: handle.batchId, runs: handle.runIds.map((id) => ({ id })) };
}

/** Triggers a batch of runs of `id` and waits for all of them. */
export async function batchTriggerAndWait<O = unknown>(id: string, items: BatchItem<unknown>[]): Promise<{ id: string; runs: TaskRunResult<O>[] }> {
  const batch = batchTrigger(id, items);
  const wake = await waitOn({ tag: "batch", val: batch.batchId });
  if (wake.tag !== "batch") throw new Error(`the wait for batch ${batch.batchId} woke with ${wake.tag}`);
  return { id: batch.batchId, runs: wake.val.map((outcome) => resultOf<O>(id, outcome)) };
}

/** Trigger.dev's `tasks` namespace. */
export const tasks = { trigger, triggerAndWait, batchTrigger, batchTriggerAndWait };

/** A defined task: its id and how to trigger it. */
export interface Task<P, O> {
  id: string;
  trigger(payload: P, options?: TriggerOptions): RunHandle;
  triggerAndWait(payload: P, options?: TriggerOptions): Promise<TaskRunResult<O>>;
  batchTrigger(items: BatchItem<P>[]): BatchHandle;
  batchTriggerAndWait(items: BatchItem<P>[]): Promise<{ id: string; runs: TaskRunResult<O>[] }>;
}

function handleOf<P, O>(id: string): Task<P, O> {
  return {
    id,
    trigger: (payload, options) => trigger(id, payload, options),
    triggerAndWait: (payload, options) => triggerAndWait<O>(id, payload, options),
    batchTrigger: (items) => batchTrigger(id, items),
    batchTriggerAndWait: (items) => batchTriggerAndWait<O>(id, items),
  };
}

/** Defines a task, as Trigger.dev's `task({ id, run, ... })`. */
export function task<P = any, O = any>(options: TaskOptions<P, O>): Task<P, O> {
  register({ options, parse: (payload) => payload, manifest: manifestOf(options) });
  return handleOf<P, O>(options.id);
}

/** A schema with zod's `parse` and a JSON Schema of itself. */
export interface Schema<P> {
  parse(value: unknown): P;
}

/** Defines a task whose payload a zod schema checks: Kiln validates
 *  payloads against its JSON Schema when they are triggered, and the task
 *  gets what `schema.parse` makes of the payload. */
export function schemaTask<P = any, O = any>(options: TaskOptions<P, O> & { schema: Schema<P> }): Task<P, O> {
  const payloadSchema = jsonSchemaOf(options.schema);
  register({
    options,
    parse: (payload) => options.schema.parse(payload),
    manifest: manifestOf(options, payloadSchema ? { payloadSchema } : {}),
  });
  return handleOf<P, O>(options.id);
}

function jsonSchemaOf(schema: unknown): Record<string, unknown> | undefined {
  // zod 4 schemas convert themselves. What is triggered is the schema's
  // input: a field with a default may be left out.
  const zod = schema as { toJSONSchema?: (params: { io: "input" }) => Record<string, unknown> };
  if (typeof zod.toJSONSchema !== "function") return undefined;
  const { $schema: _ignored, ...rest } = zod.toJSONSchema({ io: "input" });
  return rest;
}

/** What a scheduled run gets: the occurrence it is for. */
export interface ScheduledPayload {
  type: "DECLARATIVE" | "IMPERATIVE";
  timestamp: Date;
  lastTimestamp?: Date;
  timezone: string;
  scheduleId: string;
  externalId?: string;
  upcoming: Date[];
}

/** Trigger.dev's `schedules` namespace. */
export const schedules = {
  /** Defines a scheduled task; with `cron`, Kiln creates its schedule at
   *  deploy. */
  task<O = any>(options: TaskOptions<ScheduledPayload, O> & { cron?: string | { pattern: string; timezone?: string } }): Task<ScheduledPayload, O> {
    const extra: Record<string, unknown> = { scheduled: true };
    if (options.cron) extra.cron = typeof options.cron === "string" ? { pattern: options.cron } : options.cron;
    register({
      options,
      parse: (payload) => {
        const p = payload as Record<string, any>;
        return {
          ...p,
          timestamp: new Date(p.timestamp),
          lastTimestamp: p.lastTimestamp ? new Date(p.lastTimestamp) : undefined,
          upcoming: (p.upcoming ?? []).map((u: string) => new Date(u)),
        };
      },
      manifest: manifestOf(options, extra),
    });
    return handleOf<ScheduledPayload, O>(options.id);
  },
};
