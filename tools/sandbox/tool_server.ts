/**
 * A local CRM for the agent's tools and caller context (SPEC 6), for tests, `deno task dev` and the
 * bench: `POST /<name>` answers by the behaviour set for `<name>` (JSON after a delay, a status,
 * a body that is not JSON, an answer too large, or no answer at all), and records every request
 * with its signature and parsed body. Unknown names answer `{"ok": true}` at once.
 *
 * Standalone: `deno run --allow-net tools/sandbox/tool_server.ts --port 8091`.
 */
import { readCommandLine } from "../../src/command_line.ts";

export type ToolBehaviour =
  | { readonly kind: "json"; readonly body: unknown; readonly delayMs?: number }
  | { readonly kind: "status"; readonly status: number; readonly delayMs?: number }
  | { readonly kind: "bad_json"; readonly delayMs?: number }
  /** `bytes` of JSON (a long string), streamed. */
  | { readonly kind: "large"; readonly bytes: number }
  /** Never answers (until the client gives up or the server closes). */
  | { readonly kind: "hang" };

export interface ToolRequest {
  readonly name: string;
  /** ms since the server started. */
  readonly at: number;
  /** When the answer went out (or the client left), ms since start; null while pending. */
  answeredAt: number | null;
  readonly signature: string | null;
  readonly contentType: string | null;
  readonly raw: string;
  readonly body: Record<string, unknown>;
}

export interface ToolServer {
  /** "http://127.0.0.1:<port>" */
  readonly baseUrl: string;
  /** `baseUrl + "/" + name`. */
  url(name: string): string;
  readonly requests: readonly ToolRequest[];
  /** Sets how `name` answers from now on. */
  set(name: string, behaviour: ToolBehaviour): void;
  /** Requests for `name`. */
  requestsFor(name: string): ToolRequest[];
  close(): Promise<void>;
}

/** Starts the server on 127.0.0.1 (`port` 0: a free one). */
export function startToolServer(
  options: { port?: number; behaviours?: Readonly<Record<string, ToolBehaviour>> } = {},
): Promise<ToolServer> {
  const behaviours = new Map(Object.entries(options.behaviours ?? {}));
  const requests: ToolRequest[] = [];
  const started = performance.now();
  const shutdown = new AbortController();
  const now = () => performance.now() - started;
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      shutdown.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  const { promise, resolve } = Promise.withResolvers<ToolServer>();
  const server = Deno.serve({
    port: options.port ?? 0,
    hostname: "127.0.0.1",
    signal: shutdown.signal,
    onListen({ port }) {
      const baseUrl = `http://127.0.0.1:${port}`;
      resolve({
        baseUrl,
        url: (name) => `${baseUrl}/${name}`,
        requests,
        set: (name, behaviour) => void behaviours.set(name, behaviour),
        requestsFor: (name) => requests.filter((r) => r.name === name),
        async close() {
          shutdown.abort();
          await server.finished;
        },
      });
    },
  }, async (request) => {
    const name = new URL(request.url).pathname.slice(1);
    const raw = await request.text();
    let body: Record<string, unknown> = {};
    try {
      body = JSON.parse(raw);
    } catch {
      // Recorded as sent.
    }
    const record: ToolRequest = {
      name,
      at: now(),
      answeredAt: null,
      signature: request.headers.get("x-kav-signature"),
      contentType: request.headers.get("content-type"),
      raw,
      body,
    };
    requests.push(record);
    const behaviour = behaviours.get(name) ?? { kind: "json", body: { ok: true } };
    const answer = (response: Response) => {
      record.answeredAt = now();
      return response;
    };
    switch (behaviour.kind) {
      case "json":
        if (behaviour.delayMs) await sleep(behaviour.delayMs);
        return answer(Response.json(behaviour.body));
      case "status":
        if (behaviour.delayMs) await sleep(behaviour.delayMs);
        return answer(Response.json({ error: "scripted" }, { status: behaviour.status }));
      case "bad_json":
        if (behaviour.delayMs) await sleep(behaviour.delayMs);
        return answer(new Response("<html>not json</html>", { status: 200 }));
      case "large":
        return answer(Response.json({ blob: "x".repeat(behaviour.bytes) }));
      case "hang":
        await new Promise((done) =>
          shutdown.signal.addEventListener("abort", done, { once: true })
        );
        return answer(new Response(null, { status: 504 }));
      default: {
        const unreachable: never = behaviour;
        throw new TypeError(`Cannot answer as ${JSON.stringify(unreachable)}`);
      }
    }
  });
  return promise;
}

if (import.meta.main) {
  const { values } = readCommandLine(Deno.args, { port: { type: "string", default: "8091" } });
  const server = await startToolServer({ port: Number(values.port) });
  console.log(`Tool server on ${server.baseUrl}`);
}
