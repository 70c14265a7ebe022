// Shared by the compatibility scripts: the SDK configured for the Kiln server
// under test (TRIGGER_API_URL, TRIGGER_SECRET_KEY set by the Rust harness),
// and a step runner that names the step that failed.
import { configure } from "@trigger.dev/sdk";

export const baseURL = process.env.TRIGGER_API_URL;
export const secretKey = process.env.TRIGGER_SECRET_KEY;
if (!baseURL || !secretKey) {
  throw new Error("TRIGGER_API_URL and TRIGGER_SECRET_KEY must be set");
}
configure({ baseURL, accessToken: secretKey });

/** Runs one named step; a failure names it and ends the script. */
export async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    console.error(`FAIL ${name}: ${error?.stack ?? error}`);
    process.exit(1);
  }
}

/** Awaits `promise`, which must reject with an instance of `errorClass`. */
export async function rejectsWith(promise, errorClass) {
  try {
    await promise;
  } catch (error) {
    if (error instanceof errorClass) return error;
    throw new Error(`expected ${errorClass.name}, got ${error?.constructor?.name}: ${error}`);
  }
  throw new Error(`expected ${errorClass.name}, but the call succeeded`);
}
