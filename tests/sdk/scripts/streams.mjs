// Realtime streams: a task sends words one at a time and the official SDK's
// streams.read follows them live, with the secret key and with the run's
// public token; a startIndex resumes part way.
import assert from "node:assert/strict";
import { auth, runs, tasks, streams } from "@trigger.dev/sdk";
import { step } from "./lib.mjs";

const words = ["Kiln", "streams", "an", "answer", "word", "by", "word"];

async function readAll(runId, options) {
  const got = [];
  for await (const chunk of await streams.read(runId, "answer", options)) {
    got.push(chunk);
  }
  return got;
}

await step("streams.read follows a task's chunks live until the run ends", async () => {
  const handle = await tasks.trigger("stream-words", { words, gap_ms: 30 });
  const got = await readAll(handle.id);
  assert.deepEqual(got.map((c) => c.word), words);
  assert.deepEqual(got.map((c) => c.i), words.map((_, i) => i));
  await auth.withAuth({ accessToken: handle.publicAccessToken }, async () => {
    const again = await readAll(handle.id);
    assert.equal(again.length, words.length);
    const tail = await readAll(handle.id, { startIndex: 5 });
    assert.deepEqual(tail.map((c) => c.i), [5, 6]);
  });
});

await step("subscribeToRun(...).withStreams() follows the run and its stream", async () => {
  const handle = await tasks.trigger("stream-words", { words, gap_ms: 30 });
  const got = [];
  let completed = false;
  for await (const part of runs.subscribeToRun(handle.id).withStreams()) {
    if (part.type === "answer") got.push(part.chunk.word);
    if (part.type === "run" && part.run.status === "COMPLETED") completed = true;
    if (completed && got.length === words.length) break;
  }
  assert.deepEqual(got, words);
});

console.log("streams: all steps passed");
