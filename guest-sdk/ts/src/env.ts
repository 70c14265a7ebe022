// `process.env` for tasks: a variable is read from the run's project
// environment through Kiln (journaled sealed, so a replay reads the same
// value), never from the server's own environment.

import * as host from "kiln:task/host@0.1.0";
import { hostCall } from "./errors";

/** Reads the environment variable `name`, or `undefined` when unset. */
export function envVar(name: string): string | undefined {
  return hostCall(() => host.envVar(name)) ?? undefined;
}

const env = new Proxy({} as Record<string, string | undefined>, {
  get: (_target, name) => (typeof name === "string" ? envVar(name) : undefined),
  has: (_target, name) => typeof name === "string" && envVar(name) !== undefined,
});

const g = globalThis as any;
g.process = { ...(g.process ?? {}), env };
