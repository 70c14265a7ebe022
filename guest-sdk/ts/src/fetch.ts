// Durable `fetch`: Kiln makes the request for the task, journals the
// response, and a replay gets the journaled response instead of sending the
// request again. Only hosts the server allows (`--allow-fetch`) are
// reachable. It replaces the global `fetch` in a TypeScript bundle.

import { waitOn } from "./runtime";

/** The part of `RequestInit` Kiln's fetch takes. */
export interface FetchInit {
  method?: string;
  headers?: Record<string, string> | [string, string][];
  body?: string | Uint8Array;
  /** Give up after this many milliseconds. */
  timeoutMs?: number;
}

/** A response, with the methods of the standard `Response` tasks use. */
export class KilnResponse {
  readonly status: number;
  readonly ok: boolean;
  readonly headers: { get(name: string): string | null; entries(): [string, string][] };
  private readonly bytes: Uint8Array;

  constructor(status: number, headers: [string, string][], body: Uint8Array) {
    this.status = status;
    this.ok = status >= 200 && status < 300;
    this.bytes = body;
    this.headers = {
      get: (name: string) => headers.find(([k]) => k.toLowerCase() === name.toLowerCase())?.[1] ?? null,
      entries: () => headers,
    };
  }

  async text(): Promise<string> {
    return new TextDecoder().decode(this.bytes);
  }

  async json<T = unknown>(): Promise<T> {
    return JSON.parse(await this.text()) as T;
  }

  async arrayBuffer(): Promise<ArrayBuffer> {
    return this.bytes.slice().buffer as ArrayBuffer;
  }
}

/** Fetches `url` durably. A failure to get any response (refused host,
 *  timeout, network error) throws a `TypeError`, as `fetch` does. */
export async function fetch(url: string | URL, init: FetchInit = {}): Promise<KilnResponse> {
  const headers: [string, string][] = Array.isArray(init.headers)
    ? init.headers
    : Object.entries(init.headers ?? {});
  const body = typeof init.body === "string" ? new TextEncoder().encode(init.body) : init.body;
  const wake = await waitOn({
    tag: "fetch",
    val: {
      method: (init.method ?? "GET").toUpperCase(),
      url: String(url),
      headers,
      body,
      timeoutMs: init.timeoutMs === undefined ? undefined : BigInt(init.timeoutMs),
    },
  });
  if (wake.tag !== "fetch") throw new Error(`the fetch of ${url} woke with ${wake.tag}`);
  if (wake.val.tag === "err") throw new TypeError(wake.val.val);
  const response = wake.val.val;
  return new KilnResponse(response.status, response.headers, response.body);
}

(globalThis as any).fetch = fetch;
