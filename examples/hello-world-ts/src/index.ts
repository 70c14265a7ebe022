// The smallest Kiln bundle in TypeScript: one task that greets someone, and
// one whose payload a zod schema checks (Kiln refuses a bad payload when it
// is triggered, with the schema's complaint).

import { schemaTask, task, logger } from "@kiln/sdk";
import { z } from "zod";

export const helloWorld = task({
  id: "hello-world-ts",
  run: async (payload: { name: string }) => {
    logger.info("greeting", { name: payload.name });
    return { message: `Hello, ${payload.name}!` };
  },
});

export const greetMany = schemaTask({
  id: "greet-many-ts",
  schema: z.object({
    names: z.array(z.string().min(1)).max(100),
    punctuation: z.enum(["!", "."]).default("!"),
  }),
  run: async ({ names, punctuation }) => {
    return { greetings: names.map((name) => `Hello, ${name}${punctuation}`) };
  },
});
