// The world's exports: how Kiln drives a TypeScript task.
//
// Kiln calls `start` for a new attempt and `resume` with each wake. The task
// is an async function: the runtime starts it, lets every promise chain that
// can move move (a macrotask turn runs after all microtasks), and hands back
// a step: the task's output, its error, or the waits it now needs. A wait is
// a promise only a wake from Kiln resolves.
//
// A TypeScript bundle is never restored from a snapshot: at a wait Kiln
// drops the instance, and on resume runs the attempt again from the start
// with every host call answered from the run's journal. Wait ids count up
// from 1 in each attempt, so a replay asks for the same waits in the same
// order and Kiln delivers their wakes again.

import type { StartContext, Step, Wake, WakeValue, WaitKind } from "./types";
import { toTaskError } from "./errors";
import { registry, runTask, describeBundle, cancelHooks } from "./registry";

interface State {
  nextWait: bigint;
  fresh: { id: bigint; kind: WaitKind }[];
  waiters: Map<bigint, (value: WakeValue) => void>;
  outcome: Step | undefined;
}

const state: State = { nextWait: 1n, fresh: [], waiters: new Map(), outcome: undefined };

/** Registers a wait and returns a promise its wake resolves. */
export function waitOn(kind: WaitKind): Promise<WakeValue> {
  const id = state.nextWait++;
  state.fresh.push({ id, kind });
  return new Promise((resolve) => state.waiters.set(id, resolve));
}

// The task's own timers (a `setTimeout` in its code) are live, in-process
// waits: the runtime waits for them before it decides the task is blocked.
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;
const liveTimers = new Set<unknown>();
let timerFired: (() => void) | undefined;

function notifyTimer() {
  const fired = timerFired;
  timerFired = undefined;
  fired?.();
}

(globalThis as any).setTimeout = (handler: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
  const handle: unknown = realSetTimeout(() => {
    liveTimers.delete(handle);
    try {
      handler(...args);
    } finally {
      notifyTimer();
    }
  }, ms);
  liveTimers.add(handle);
  return handle;
};
(globalThis as any).clearTimeout = (handle: unknown) => {
  liveTimers.delete(handle);
  realClearTimeout(handle as any);
  notifyTimer();
};

/** Resolves after every microtask queued so far has run. */
function turn(): Promise<void> {
  return new Promise((resolve) => realSetTimeout(resolve, 0));
}

/** Runs the task until it finishes or needs a wake from Kiln. */
async function drive(): Promise<Step> {
  for (;;) {
    await turn();
    if (state.outcome) {
      const outcome = state.outcome;
      state.outcome = undefined;
      return outcome;
    }
    if (state.fresh.length > 0) {
      const waits = state.fresh;
      state.fresh = [];
      return { tag: "waiting", val: waits };
    }
    if (liveTimers.size > 0) {
      await new Promise<void>((resolve) => (timerFired = resolve));
      continue;
    }
    // Blocked on waits Kiln already knows about.
    return { tag: "waiting", val: [] };
  }
}

export function describe(): string {
  return describeBundle();
}

export function start(ctx: StartContext): Promise<Step> {
  const task = registry.get(ctx.taskId);
  if (!task) {
    return Promise.resolve({
      tag: "failed",
      val: toTaskError(new Error(`this bundle has no task \`${ctx.taskId}\``)),
    });
  }
  runTask(task, ctx).then((step) => {
    state.outcome = step;
  });
  return drive();
}

export function resume(wake: Wake): Promise<Step> {
  const waiter = state.waiters.get(wake.id);
  state.waiters.delete(wake.id);
  waiter?.(wake.value);
  return drive();
}

export function cancel(reason: string): void {
  cancelHooks(reason);
}

// A TypeScript bundle resumes by replay; Kiln never snapshots it.
export function snapshotGrow(_pages: number): number {
  throw new Error("a TypeScript bundle is never snapshotted");
}
export function snapshotRead(): Uint8Array {
  throw new Error("a TypeScript bundle is never snapshotted");
}
export function snapshotWrite(_image: Uint8Array): void {
  throw new Error("a TypeScript bundle is never snapshotted");
}
