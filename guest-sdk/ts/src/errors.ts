// Errors a task throws, and how they reach the host.

import type { WitTaskError } from "./types";

/** Fails the run without retrying (Trigger.dev's `AbortTaskRunError`). */
export class AbortTaskRunError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AbortTaskRunError";
  }
}

/** A host call Kiln refused: its kind (`invalid`, `not-found`...) and why. */
export class HostError extends Error {
  readonly kind: string;
  constructor(kind: string, message: string) {
    super(message);
    this.name = "HostError";
    this.kind = kind;
  }
}

/** Calls a host import, turning a refusal it throws into a [`HostError`]. */
export function hostCall<T>(call: () => T): T {
  try {
    return call();
  } catch (error) {
    const payload = (error as { payload?: { tag?: string; val?: unknown } })?.payload;
    if (payload && typeof payload.tag === "string") {
      throw new HostError(payload.tag, String(payload.val ?? payload.tag));
    }
    throw error;
  }
}

/** A thrown value as the host records it. */
export function toTaskError(error: unknown, retryDelayMs?: number): WitTaskError {
  if (error instanceof Error) {
    return {
      name: error.name || "Error",
      message: error.message,
      stack: typeof error.stack === "string" && error.stack ? error.stack : undefined,
      abort: error instanceof AbortTaskRunError,
      retryDelayMs: retryDelayMs === undefined ? undefined : BigInt(Math.max(0, Math.round(retryDelayMs))),
    };
  }
  return {
    name: "Error",
    message: typeof error === "string" ? error : JSON.stringify(error) ?? String(error),
    stack: undefined,
    abort: false,
    retryDelayMs: retryDelayMs === undefined ? undefined : BigInt(Math.max(0, Math.round(retryDelayMs))),
  };
}
