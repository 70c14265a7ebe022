// Retrying a block inside an attempt, as Trigger.dev's `retry.onThrow`.
// Between tries the task waits durably, so a long backoff holds no worker.

import type { RetryOptions } from "./registry";
import { wait } from "./wait";

function delayMs(options: RetryOptions, failed: number): number {
  const min = options.minTimeoutInMs ?? 1_000;
  const max = options.maxTimeoutInMs ?? 60_000;
  const factor = options.factor ?? 2;
  return Math.min(max, min * Math.pow(factor, failed - 1));
}

/** Trigger.dev's `retry` namespace. */
export const retry = {
  /** Runs `block` until it returns, up to `maxAttempts` times (3 unless
   *  set), waiting with exponential backoff between tries. */
  async onThrow<T>(block: (params: { attempt: number }) => Promise<T>, options: RetryOptions = {}): Promise<T> {
    const attempts = Math.max(1, options.maxAttempts ?? 3);
    for (let attempt = 1; ; attempt++) {
      try {
        return await block({ attempt });
      } catch (error) {
        if (attempt >= attempts) throw error;
        await wait.for({ seconds: delayMs(options, attempt) / 1000 });
      }
    }
  },
};
