// Types of Kiln's world (`wit/kiln.wit`, `kiln:task/bundle`) as
// componentize-js presents it to JavaScript: kebab-case names become
// camelCase, variants are `{ tag, val }`, `u64` is a `bigint`, and an import
// that returns a `result` throws its error.

declare module "kiln:task/host@0.1.0" {
  export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";
  export interface Field { key: string; value: string }
  export interface BatchItem { taskId: string; payload: string; options: string }
  export interface BatchHandle { batchId: string; runIds: string[] }
  export interface TokenHandle { id: string; url: string }
  export type MetadataTarget = "current" | "parent" | "root";

  export function log(level: LogLevel, message: string, fields: Field[]): void;
  export function nowMs(): bigint;
  export function randomBytes(len: number): Uint8Array;
  export function recordPanic(message: string): void;
  export function trigger(taskId: string, payload: string, options: string): string;
  export function batchTrigger(items: BatchItem[]): BatchHandle;
  export function createToken(options: string): TokenHandle;
  export function updateMetadata(target: MetadataTarget, operations: string): string;
  export function addTags(tags: string[]): void;
  export function streamAppend(key: string, chunk: string): bigint;
  export function envVar(name: string): string | undefined;
}
