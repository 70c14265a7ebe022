// Log lines of the attempt, as Trigger.dev's `logger`. `console.log` works
// too: what a task prints becomes `info` lines, stderr `error` lines.

import * as host from "kiln:task/host@0.1.0";

type Level = "trace" | "debug" | "info" | "warn" | "error";

function emit(level: Level, message: string, fields?: Record<string, unknown>) {
  const list = Object.entries(fields ?? {}).map(([key, value]) => ({
    key,
    value: typeof value === "string" ? value : JSON.stringify(value) ?? String(value),
  }));
  host.log(level, message, list);
}

/** Trigger.dev's `logger`. */
export const logger = {
  trace: (message: string, fields?: Record<string, unknown>) => emit("trace", message, fields),
  debug: (message: string, fields?: Record<string, unknown>) => emit("debug", message, fields),
  log: (message: string, fields?: Record<string, unknown>) => emit("info", message, fields),
  info: (message: string, fields?: Record<string, unknown>) => emit("info", message, fields),
  warn: (message: string, fields?: Record<string, unknown>) => emit("warn", message, fields),
  error: (message: string, fields?: Record<string, unknown>) => emit("error", message, fields),
};
