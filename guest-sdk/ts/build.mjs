// `kiln build` for TypeScript: bundles a task project with esbuild and makes
// a WebAssembly component of it with componentize-js, against Kiln's world.
// `kiln build` copies it into the toolchain's directory (toolchain/
// package.json, installed from npm), so that Node finds the toolchain's
// packages, and runs it:
//
//   node kiln-build.mjs --entry src/index.ts --sdk <sdk>/src --wit kiln.wit --out bundle.wasm
//
// A project's own imports resolve from its directory, then from the
// toolchain's node_modules (which brings zod).

import { build } from "esbuild";
import { componentize } from "@bytecodealliance/componentize-js";
import { mkdtemp, writeFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

function arg(name) {
  const at = process.argv.indexOf(`--${name}`);
  if (at < 0 || at + 1 >= process.argv.length) {
    console.error(`kiln build: --${name} is missing`);
    process.exit(2);
  }
  return process.argv[at + 1];
}

const entry = resolve(arg("entry"));
const sdk = resolve(arg("sdk"));
const wit = resolve(arg("wit"));
const out = resolve(arg("out"));
const nodePaths = [join(dirname(fileURLToPath(import.meta.url)), "node_modules")];

const work = await mkdtemp(join(tmpdir(), "kiln-ts-"));
try {
  const bundled = join(work, "bundle.js");
  // The world's exports come from the SDK's runtime; the project's modules
  // define its tasks when they are imported.
  const main = [
    `export { describe, start, resume, cancel, snapshotGrow, snapshotRead, snapshotWrite } from ${JSON.stringify(join(sdk, "runtime.ts"))};`,
    `import ${JSON.stringify(entry)};`,
  ].join("\n");
  const result = await build({
    stdin: { contents: main, resolveDir: dirname(entry), loader: "ts", sourcefile: "kiln-bundle.ts" },
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    mainFields: ["module", "main"],
    conditions: ["import", "default"],
    external: ["kiln:task/*"],
    alias: { "@kiln/sdk": join(sdk, "index.ts") },
    nodePaths,
    outfile: bundled,
    logLevel: "error",
  });
  if (result.errors.length > 0) process.exit(1);
  const { component } = await componentize({
    sourcePath: bundled,
    witPath: wit,
    worldName: "bundle",
    // Kiln's fetch replaces wasi:http; the rest of WASI that SpiderMonkey
    // uses (clocks, random, stdio) Kiln journals.
    disableFeatures: ["http", "fetch-event"],
  });
  await writeFile(out, component);
} catch (error) {
  console.error(`kiln build: ${error?.message ?? error}`);
  process.exitCode = 1;
} finally {
  await rm(work, { recursive: true, force: true });
}
