// The countdown in TypeScript: for each step the task draws a random number
// (`Math.random`, whose seed Kiln journals), logs it, and waits `wait_ms`.
// While it waits the run is WAITING and its instance is gone. Kill the server
// during a wait and start it again: the run resumes by running the attempt
// again from the start with every draw and clock answered from its journal,
// so it makes the same draws and logs each line once.
//
//   kiln trigger countdown-ts '{"steps": 3, "wait_ms": 10000}' --wait

import { schemaTask, logger, wait, tasks } from "@kiln/sdk";
import { z } from "zod";

export const countdown = schemaTask({
  id: "countdown-ts",
  schema: z.object({
    steps: z.number().int().min(0).max(10_000),
    wait_ms: z.number().int().min(0),
  }),
  run: async ({ steps, wait_ms }) => {
    const draws: number[] = [];
    for (let step = 0; step < steps; step++) {
      const draw = Math.floor(Math.random() * 1_000_000);
      draws.push(draw);
      logger.info("drew", { step: step + 1, draw, left: steps - step - 1 });
      await wait.for({ seconds: wait_ms / 1000 });
    }
    return { steps, draws };
  },
});

// A parent that counts down through a child run and waits for it.
export const twoCountdowns = schemaTask({
  id: "countdown-parent-ts",
  schema: z.object({ steps: z.number().int().min(0).max(100), wait_ms: z.number().int().min(0) }),
  run: async (payload) => {
    const child = await tasks.triggerAndWait<{ steps: number; draws: number[] }>("countdown-ts", payload);
    const draws = child.unwrap().draws;
    logger.info("child finished", { runId: child.id, draws: draws.length });
    return { child: child.id, draws };
  },
});
