// Run metadata, as Trigger.dev's `metadata`: each change is applied by Kiln
// at once (journaled, so a replay does not apply it twice), and realtime
// subscribers see it.

import * as host from "kiln:task/host@0.1.0";
import { hostCall } from "./errors";

let current: Record<string, unknown> = {};

/** Sets what `metadata.current()` returns when an attempt starts. */
export function setCurrentMetadata(json: string): void {
  try {
    const parsed = JSON.parse(json);
    current = parsed && typeof parsed === "object" ? parsed : {};
  } catch {
    current = {};
  }
}

type Target = "current" | "parent" | "root";

function apply(target: Target, operations: Record<string, unknown>[]): Record<string, unknown> {
  const after = JSON.parse(hostCall(() => host.updateMetadata(target, JSON.stringify(operations))));
  if (target === "current") current = after;
  return after;
}

function operations(target: Target) {
  return {
    set: (key: string, value: unknown) => apply(target, [{ type: "set", key, value }]),
    del: (key: string) => apply(target, [{ type: "delete", key }]),
    append: (key: string, value: unknown) => apply(target, [{ type: "append", key, value }]),
    remove: (key: string, value: unknown) => apply(target, [{ type: "remove", key, value }]),
    increment: (key: string, value = 1) => apply(target, [{ type: "increment", key, value }]),
    decrement: (key: string, value = 1) => apply(target, [{ type: "decrement", key, value }]),
    replace: (value: Record<string, unknown>) => apply(target, [{ type: "update", value }]),
  };
}

/** Trigger.dev's `metadata`. */
export const metadata = {
  ...operations("current"),
  /** The run's metadata as the task last saw it. */
  current: (): Record<string, unknown> => current,
  /** One key of the run's metadata. */
  get: (key: string): unknown => current[key],
  /** The run that triggered this one. */
  parent: operations("parent"),
  /** The root of this run's tree. */
  root: operations("root"),
};

/** Adds tags to the current run. */
export function addTags(tags: string | string[]): void {
  hostCall(() => host.addTags(typeof tags === "string" ? [tags] : tags));
}
