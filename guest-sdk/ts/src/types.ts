// The world's data shapes, as the runtime hands them to and from the host.

/** What the host tells an attempt when it starts. */
export interface StartContext {
  runId: string;
  taskId: string;
  attempt: number;
  maxAttempts: number;
  environment: string;
  version: string;
  machine: string;
  tags: string[];
  payload: string;
  metadata: string;
  createdAtMs: bigint;
}

/** An error a task returns, as the host records it. */
export interface WitTaskError {
  name: string;
  message: string;
  stack: string | undefined;
  abort: boolean;
  retryDelayMs: bigint | undefined;
}

/** An HTTP request the host performs durably. */
export interface WitHttpRequest {
  method: string;
  url: string;
  headers: [string, string][];
  body: Uint8Array | undefined;
  timeoutMs: bigint | undefined;
}

/** Something a task waits on. */
export type WaitKind =
  | { tag: "duration"; val: bigint }
  | { tag: "until"; val: bigint }
  | { tag: "run"; val: string }
  | { tag: "batch"; val: string }
  | { tag: "token"; val: string }
  | { tag: "fetch"; val: WitHttpRequest };

/** How a child run ended. */
export interface RunOutcome { runId: string; ok: boolean; value: string }

/** A result as the host delivers it. */
export type WitResult<T> = { tag: "ok"; val: T } | { tag: "err"; val: string };

/** What a wait woke up with. */
export type WakeValue =
  | { tag: "timer" }
  | { tag: "run"; val: RunOutcome }
  | { tag: "batch"; val: RunOutcome[] }
  | { tag: "token"; val: WitResult<string> }
  | { tag: "fetch"; val: WitResult<{ status: number; headers: [string, string][]; body: Uint8Array }> };

/** A wake for the wait with the same id. */
export interface Wake { id: bigint; value: WakeValue }

/** Where an attempt stands when it hands control back. */
export type Step =
  | { tag: "completed"; val: string }
  | { tag: "failed"; val: WitTaskError }
  | { tag: "waiting"; val: { id: bigint; kind: WaitKind }[] };
