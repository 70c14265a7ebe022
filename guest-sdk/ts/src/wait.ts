// Durable waits, as Trigger.dev's `wait` namespace. While a task waits, its
// run is WAITING and holds no memory or worker; Kiln wakes it when the wait
// is over, after a restart too.

import * as host from "kiln:task/host@0.1.0";
import { hostCall } from "./errors";
import { waitOn } from "./runtime";

/** A duration as Trigger.dev's `wait.for` takes it. */
export interface WaitForOptions {
  seconds?: number;
  minutes?: number;
  hours?: number;
  days?: number;
  weeks?: number;
  months?: number;
  years?: number;
}

function millisOf(options: WaitForOptions): number {
  const units: [keyof WaitForOptions, number][] = [
    ["seconds", 1_000],
    ["minutes", 60_000],
    ["hours", 3_600_000],
    ["days", 86_400_000],
    ["weeks", 604_800_000],
    ["months", 2_592_000_000],
    ["years", 31_536_000_000],
  ];
  let ms = 0;
  for (const [unit, scale] of units) ms += (options[unit] ?? 0) * scale;
  return Math.max(0, Math.round(ms));
}

/** A wait token made with `wait.createToken`. */
export interface WaitToken {
  id: string;
  /** POST JSON here to complete the token. */
  url: string;
}

/** How a token wait ended: the data it was completed with, or a timeout. */
export type WaitTokenResult<T> =
  | { ok: true; output: T; unwrap(): T }
  | { ok: false; error: Error; unwrap(): T };

/** Trigger.dev's `wait` namespace. */
export const wait = {
  /** Waits for a duration. */
  async for(options: WaitForOptions): Promise<void> {
    await waitOn({ tag: "duration", val: BigInt(millisOf(options)) });
  },
  /** Waits until a date. */
  async until(options: { date: Date }): Promise<void> {
    await waitOn({ tag: "until", val: BigInt(Math.max(0, options.date.getTime())) });
  },
  /** Makes a wait token (`timeout` as `"1h"` or a date, `idempotencyKey`,
   *  `tags`). */
  createToken(options: { timeout?: string | Date; idempotencyKey?: string; idempotencyKeyTTL?: string; tags?: string[] } = {}): WaitToken {
    const json = { ...options, timeout: options.timeout instanceof Date ? options.timeout.toISOString() : options.timeout };
    const token = hostCall(() => host.createToken(JSON.stringify(json)));
    return { id: token.id, url: token.url };
  },
  /** Waits until a token is completed or times out. */
  async forToken<T = unknown>(token: string | { id: string }): Promise<WaitTokenResult<T>> {
    const id = typeof token === "string" ? token : token.id;
    const wake = await waitOn({ tag: "token", val: id });
    if (wake.tag !== "token") throw new Error(`the wait for token ${id} woke with ${wake.tag}`);
    if (wake.val.tag === "ok") {
      const output = JSON.parse(wake.val.val) as T;
      return { ok: true, output, unwrap: () => output };
    }
    const error = new Error(wake.val.val);
    return {
      ok: false,
      error,
      unwrap: () => {
        throw error;
      },
    };
  },
};
