// Kiln's TypeScript SDK: the task side of `@trigger.dev/sdk`, for tasks that
// Kiln runs as WebAssembly components (see docs/TYPESCRIPT.md).
//
//   import { task, wait, logger } from "@kiln/sdk";
//
//   export const hello = task({
//     id: "hello-world-ts",
//     run: async (payload: { name: string }) => {
//       logger.info("greeting", { name: payload.name });
//       await wait.for({ seconds: 1 });
//       return { message: `Hello, ${payload.name}!` };
//     },
//   });

import "./env";
import "./fetch";

export { task, schemaTask, schedules, tasks, SubtaskUnwrapError } from "./tasks";
export type { Task, TaskRunResult, RunHandle, BatchHandle, TriggerOptions, ScheduledPayload } from "./tasks";
export { queue } from "./registry";
export type { TaskOptions, TaskContext, RetryOptions, QueueOptions } from "./registry";
export { wait } from "./wait";
export type { WaitToken, WaitTokenResult, WaitForOptions } from "./wait";
export { logger } from "./logger";
export { metadata, addTags } from "./metadata";
export { retry } from "./retry";
export { fetch, KilnResponse } from "./fetch";
export { envVar } from "./env";
export { AbortTaskRunError, HostError } from "./errors";
