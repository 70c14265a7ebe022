// The bundle's tasks, their manifest, and one attempt of a task with its
// hooks.

import * as host from "kiln:task/host@0.1.0";
import type { StartContext, Step } from "./types";
import { AbortTaskRunError, toTaskError } from "./errors";
import { setCurrentMetadata } from "./metadata";

/** A task's retry policy, as Trigger.dev's `retry` option. */
export interface RetryOptions {
  maxAttempts?: number;
  factor?: number;
  minTimeoutInMs?: number;
  maxTimeoutInMs?: number;
  randomize?: boolean;
}

/** A queue a task runs on, as Trigger.dev's `queue` option. */
export interface QueueOptions {
  name?: string;
  concurrencyLimit?: number;
}

/** What a task's `run` and hooks get besides the payload. */
export interface TaskContext {
  ctx: {
    run: { id: string; tags: string[]; createdAt: Date; isTest: boolean };
    attempt: { number: number; maxAttempts: number };
    task: { id: string };
    environment: { slug: string; type: string };
    deployment: { version: string };
    machine: { name: string };
  };
}

/** What `catchError` may decide, as Trigger.dev's. */
export type CatchErrorResult =
  | undefined
  | void
  | { skipRetrying?: boolean; retryAt?: Date; retryDelayInMs?: number; error?: unknown };

/** A task's definition, as Trigger.dev's `task({ ... })`. */
export interface TaskOptions<P, O> {
  id: string;
  run: (payload: P, params: TaskContext & { init?: unknown }) => Promise<O> | O;
  /** Runs before each attempt's `run`; what it returns is `run`'s `init`. */
  init?: (payload: P, params: TaskContext) => unknown;
  /** Runs after each attempt, whether it succeeded or failed. */
  cleanup?: (payload: P, params: TaskContext) => unknown;
  queue?: QueueOptions;
  machine?: string | { preset: string };
  maxDuration?: number;
  retry?: RetryOptions;
  onStart?: (payload: P, params: TaskContext) => unknown;
  onSuccess?: (payload: P, output: O, params: TaskContext) => unknown;
  onFailure?: (payload: P, error: unknown, params: TaskContext) => unknown;
  onComplete?: (payload: P, result: { ok: boolean; output?: O; error?: unknown }, params: TaskContext) => unknown;
  onCancel?: (params: TaskContext & { payload: P; reason: string }) => unknown;
  catchError?: (params: { payload: P; error: unknown; ctx: TaskContext["ctx"] }) => CatchErrorResult | Promise<CatchErrorResult>;
  /** Trigger.dev's earlier name for `catchError`. */
  handleError?: (params: { payload: P; error: unknown; ctx: TaskContext["ctx"] }) => CatchErrorResult | Promise<CatchErrorResult>;
}

/** A registered task: its options, how to parse its payload, its manifest. */
export interface RegisteredTask {
  options: TaskOptions<any, any>;
  parse: (payload: unknown) => unknown;
  manifest: Record<string, unknown>;
}

/** Every task the bundle's modules defined, by id. */
export const registry = new Map<string, RegisteredTask>();

/** The queues tasks named, by name. */
const queues = new Map<string, QueueOptions>();

/** Declares a queue several tasks share, as Trigger.dev's `queue()`. */
export function queue(options: { name: string; concurrencyLimit?: number }): QueueOptions {
  queues.set(options.name, options);
  return options;
}

/** Adds a task to the bundle. Two tasks with one id are a build error. */
export function register(task: RegisteredTask): void {
  const id = task.options.id;
  if (registry.has(id)) {
    throw new Error(`two tasks have the id \`${id}\``);
  }
  registry.set(id, task);
}

/** The manifest entry of a task's options. */
export function manifestOf(options: TaskOptions<any, any>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const entry: Record<string, unknown> = { id: options.id, ...extra };
  if (options.queue?.name) {
    // A named queue is declared once for the bundle; a second declaration
    // with another limit is the server's to refuse.
    entry.queue = options.queue.name;
    if (!queues.has(options.queue.name)) queues.set(options.queue.name, options.queue);
  } else if (options.queue?.concurrencyLimit !== undefined) {
    entry.concurrencyLimit = options.queue.concurrencyLimit;
  }
  if (options.machine) entry.machine = typeof options.machine === "string" ? options.machine : options.machine.preset;
  if (options.maxDuration !== undefined) entry.maxDurationSecs = options.maxDuration;
  if (options.retry) {
    const r = options.retry;
    const retry: Record<string, unknown> = {};
    if (r.maxAttempts !== undefined) retry.maxAttempts = r.maxAttempts;
    if (r.factor !== undefined) retry.factor = r.factor;
    if (r.minTimeoutInMs !== undefined) retry.minTimeoutMs = r.minTimeoutInMs;
    if (r.maxTimeoutInMs !== undefined) retry.maxTimeoutMs = r.maxTimeoutInMs;
    if (r.randomize !== undefined) retry.randomize = r.randomize;
    entry.retry = retry;
  }
  return entry;
}

/** The bundle's manifest as JSON. */
export function describeBundle(): string {
  return JSON.stringify({
    manifestVersion: 1,
    sdkVersion: "ts-0.1.0",
    tasks: [...registry.values()].map((t) => t.manifest),
    queues: [...queues.values()].map((q) => {
      const declared: Record<string, unknown> = { name: q.name };
      if (q.concurrencyLimit !== undefined) declared.concurrencyLimit = q.concurrencyLimit;
      return declared;
    }),
  });
}

let current: { task: RegisteredTask; params: TaskContext; payload: unknown } | undefined;

function contextOf(ctx: StartContext): TaskContext {
  return {
    ctx: {
      run: { id: ctx.runId, tags: ctx.tags, createdAt: new Date(Number(ctx.createdAtMs)), isTest: false },
      attempt: { number: ctx.attempt, maxAttempts: ctx.maxAttempts },
      task: { id: ctx.taskId },
      environment: { slug: ctx.environment, type: ctx.environment.toUpperCase() },
      deployment: { version: ctx.version },
      machine: { name: ctx.machine },
    },
  };
}

/** Runs one attempt of `task`: its hooks, its `run`, and what `catchError`
 *  decides about an error. Resolves to the attempt's final step; never
 *  rejects (an error in `onStart`, `init` or `catchError` fails the attempt
 *  with that error; one in a later hook is logged). */
export async function runTask(task: RegisteredTask, start: StartContext): Promise<Step> {
  try {
    return await attempt(task, start);
  } catch (error) {
    return { tag: "failed", val: toTaskError(error) };
  }
}

async function attempt(task: RegisteredTask, start: StartContext): Promise<Step> {
  const params = contextOf(start);
  setCurrentMetadata(start.metadata);
  const options = task.options;
  let payload: unknown;
  try {
    payload = task.parse(JSON.parse(start.payload));
  } catch (error) {
    const abort = new AbortTaskRunError(`the payload does not fit the task's schema: ${error instanceof Error ? error.message : String(error)}`);
    abort.name = "PayloadError";
    return { tag: "failed", val: { ...toTaskError(abort), abort: true } };
  }
  current = { task, params, payload };
  let output: unknown;
  try {
    // As Trigger.dev's: once per run, not on retries.
    if (start.attempt === 1) await options.onStart?.(payload, params);
    const init = await options.init?.(payload, params);
    output = await options.run(payload, { ...params, init });
  } catch (error) {
    await afterAttempt(() => options.cleanup?.(payload, params));
    let retryDelayMs: number | undefined;
    let skip = error instanceof AbortTaskRunError;
    let reported = error;
    const catchError = options.catchError ?? options.handleError;
    if (catchError && !skip) {
      const decision = await catchError({ payload: payload as any, error, ctx: params.ctx });
      if (decision) {
        if (decision.skipRetrying) skip = true;
        if (decision.retryDelayInMs !== undefined) retryDelayMs = decision.retryDelayInMs;
        if (decision.retryAt) retryDelayMs = Math.max(0, decision.retryAt.getTime() - Date.now());
        if (decision.error !== undefined) reported = decision.error;
      }
    }
    const failed = toTaskError(reported, retryDelayMs);
    const final = skip || failed.abort || start.attempt >= start.maxAttempts;
    // As Trigger.dev's: once the run fails for good, not on each attempt.
    if (final) {
      await afterAttempt(() => options.onFailure?.(payload, reported, params));
      await afterAttempt(() => options.onComplete?.(payload, { ok: false, error: reported }, params));
    }
    return { tag: "failed", val: { ...failed, abort: failed.abort || skip } };
  }
  // The task succeeded: a hook that throws now is logged, and changes
  // nothing about the run.
  await afterAttempt(() => options.cleanup?.(payload, params));
  await afterAttempt(() => options.onSuccess?.(payload, output, params));
  await afterAttempt(() => options.onComplete?.(payload, { ok: true, output }, params));
  return { tag: "completed", val: JSON.stringify(output ?? null) };
}

/** Runs a hook that comes after the task's outcome is decided; what it
 *  throws is logged, not the run's error. */
async function afterAttempt(hook: () => unknown): Promise<void> {
  try {
    await hook();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    host.log("error", `a hook failed: ${message}`, []);
  }
}

/** Runs the current task's `onCancel` hook. */
export function cancelHooks(reason: string): void {
  if (current?.task.options.onCancel) {
    void current.task.options.onCancel({ ...current.params, payload: current.payload, reason });
  }
}
