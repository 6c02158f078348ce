/**
 * An OpenAI-compatible chat-completions server for tests and the local sandbox:
 * `POST /v1/chat/completions`, streamed (SSE `data: {chunk}` lines, then `data: [DONE]`) or not.
 * Replies are scriptable per request (text, token timing, stalls, dropped connections, HTTP
 * errors) and every request is recorded, including whether the client went away early.
 *
 * Standalone: `deno run --allow-net tools/sandbox/openai_server.ts --port 8089
 * [--token-delay-ms 30] [--first-token-delay-ms 200]`, then `llm.base_url =
 * "http://127.0.0.1:8089/v1"`.
 */
import { readCommandLine } from "../../src/command_line.ts";

/** One chat message as received (tool fields only on messages that have them). */
export interface ReceivedMessage {
  readonly role: string;
  readonly content: string;
  /** An assistant message's calls, arguments as the JSON text sent. */
  readonly tool_calls?: readonly { id: string; name: string; arguments: string }[];
  /** A `tool` message's call id. */
  readonly tool_call_id?: string;
}

/** A function call to stream: arguments as an object (sent as JSON) or exact text. */
export interface ScriptedToolCall {
  readonly name: string;
  readonly arguments: Readonly<Record<string, unknown>> | string;
  /** Default `call_<n>`. */
  readonly id?: string;
}

/** How to answer one request. Unset fields fall back to the server options. */
export interface ScriptedReply {
  /** Reply text, cut into tokens by `tokenize` (ignored when `tokens` is set). */
  readonly text?: string;
  /** Exact deltas to send. */
  readonly tokens?: readonly string[];
  /** Answer with this HTTP status and an OpenAI-style error body instead. */
  readonly status?: number;
  readonly firstTokenDelayMs?: number;
  readonly tokenDelayMs?: number;
  /** Send this many tokens, then nothing more until the client leaves. */
  readonly stallAfterTokens?: number;
  /** Send this many tokens, then drop the connection (no `[DONE]`). */
  readonly closeAfterTokens?: number;
  /**
   * Tool calls streamed after the text, like OpenAI: each call's first delta names it, then its
   * arguments arrive in `argumentPieces` slices, the calls' slices interleaved (parallel calls);
   * the answer ends with finish_reason "tool_calls".
   */
  readonly toolCalls?: readonly ScriptedToolCall[];
  /** Slices each call's arguments are cut into (default 4). */
  readonly argumentPieces?: number;
}

/** What the server saw of one request. */
export interface RecordedRequest {
  readonly model: string;
  readonly messages: readonly ReceivedMessage[];
  readonly stream: boolean;
  readonly body: Readonly<Record<string, unknown>>;
  /** The Authorization header, or null. */
  readonly authorization: string | null;
  /** Tokens sent so far. */
  tokensSent: number;
  /** The client closed the connection before the response was complete. */
  disconnected: boolean;
  /** Settles when the response finished, failed or the client left. */
  readonly settled: Promise<void>;
}

export interface OpenAiServerOptions {
  /** 0 (default) picks a free port. */
  readonly port?: number;
  readonly hostname?: string;
  /**
   * Default reply policy when the script queue is empty; defaults to a short Hebrew answer. It also
   * gets the request body (the tools offered are in `body.tools`).
   */
  readonly reply?: (
    messages: readonly ReceivedMessage[],
    body: Readonly<Record<string, unknown>>,
  ) => string | ScriptedReply;
  readonly firstTokenDelayMs?: number;
  readonly tokenDelayMs?: number;
  /** Stops the server when aborted (as `close()`). */
  readonly signal?: AbortSignal;
}

export interface OpenAiServer {
  /** Base URL for `llm.base_url`, e.g. "http://127.0.0.1:40123/v1". */
  readonly baseUrl: string;
  readonly port: number;
  readonly requests: readonly RecordedRequest[];
  /** Queues replies for the next requests, in order (before the default policy). */
  script(...replies: readonly (string | ScriptedReply)[]): void;
  /** The next `count` requests get HTTP `status`. */
  failNext(status: number, count?: number): void;
  /** Drops in-flight responses and stops the server. Idempotent. */
  close(): Promise<void>;
}

/** Splits text into word-ish tokens (leading space kept), long words in two, like BPE output. */
export function tokenize(text: string): string[] {
  const tokens: string[] = [];
  for (const word of text.match(/\s*\S+|\s+$/g) ?? []) {
    if (word.trim().length > 5) {
      const mid = word.length >> 1;
      tokens.push(word.slice(0, mid), word.slice(mid));
    } else {
      tokens.push(word);
    }
  }
  return tokens;
}

/** The sandbox's default answer: a two-sentence Hebrew reply echoing the caller. */
export function defaultReply(messages: readonly ReceivedMessage[]): string {
  const last = [...messages].reverse().find((m) => m.role === "user")?.content.trim() ?? "";
  if (last === "") return "שלום! במה אפשר לעזור?";
  return `הבנתי, אמרת: ${last}. איך עוד אפשר לעזור?`;
}

const encoder = new TextEncoder();
const DROPPED = "Scripted connection drop (expected in tests)";

/** Waits `ms` (Infinity: until aborted); resolves early, never rejects, when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    let id: ReturnType<typeof setTimeout> | undefined;
    const done = () => {
      clearTimeout(id);
      signal.removeEventListener("abort", done);
      resolve();
    };
    // setTimeout treats delays past 2^31-1 ms as 0, so "forever" must not use a timer.
    if (Number.isFinite(ms)) id = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

function parseMessages(value: unknown): ReceivedMessage[] {
  if (!Array.isArray(value)) return [];
  return value.map((m: unknown) => {
    const record = typeof m === "object" && m !== null ? m as Record<string, unknown> : {};
    const message: {
      role: string;
      content: string;
      tool_calls?: { id: string; name: string; arguments: string }[];
      tool_call_id?: string;
    } = { role: String(record.role ?? ""), content: String(record.content ?? "") };
    if (Array.isArray(record.tool_calls)) {
      message.tool_calls = record.tool_calls.map((call: unknown) => {
        const c = (call ?? {}) as Record<string, unknown>;
        const fn = (c.function ?? {}) as Record<string, unknown>;
        return { id: String(c.id), name: String(fn.name), arguments: String(fn.arguments) };
      });
    }
    if (record.tool_call_id !== undefined) message.tool_call_id = String(record.tool_call_id);
    return message;
  });
}

/** The tool-call deltas of an answer: per call a naming delta, then argument slices, interleaved. */
export function toolCallDeltas(
  calls: readonly ScriptedToolCall[],
  pieces: number,
): Record<string, unknown>[][] {
  const sliced = calls.map((call, index) => {
    const text = typeof call.arguments === "string"
      ? call.arguments
      : JSON.stringify(call.arguments);
    const size = Math.max(1, Math.ceil(text.length / Math.max(1, pieces)));
    const slices: string[] = [];
    for (let at = 0; at < text.length; at += size) slices.push(text.slice(at, at + size));
    return { call, index, slices };
  });
  const deltas: Record<string, unknown>[][] = [];
  for (const { call, index } of sliced) {
    deltas.push([{
      index,
      id: call.id ?? `call_${index}`,
      type: "function",
      function: { name: call.name, arguments: "" },
    }]);
  }
  const longest = Math.max(0, ...sliced.map((s) => s.slices.length));
  for (let i = 0; i < longest; i++) {
    for (const { index, slices } of sliced) {
      if (i < slices.length) deltas.push([{ index, function: { arguments: slices[i] } }]);
    }
  }
  return deltas;
}

function errorResponse(status: number, message: string): Response {
  const type = status === 429
    ? "rate_limit_exceeded"
    : status >= 500
    ? "server_error"
    : "invalid_request_error";
  return Response.json({ error: { message, type, code: null, param: null } }, { status });
}

function chunk(id: string, model: string, delta: Record<string, unknown>, finish: string | null) {
  return `data: ${
    JSON.stringify({
      id,
      object: "chat.completion.chunk",
      created: Math.floor(Date.now() / 1000),
      model,
      choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
    })
  }\n\n`;
}

/** Starts the server; resolves once it listens. */
// deno-lint-ignore require-await -- async keeps the API free to await a listener later
export async function startOpenAiServer(
  options: OpenAiServerOptions = {},
): Promise<OpenAiServer> {
  const queue: ScriptedReply[] = [];
  const failures: number[] = [];
  const requests: RecordedRequest[] = [];
  const inFlight = new Set<AbortController>();
  const shutdown = new AbortController();
  const policy = options.reply ?? defaultReply;
  let counter = 0;

  function nextReply(
    messages: readonly ReceivedMessage[],
    body: Readonly<Record<string, unknown>>,
  ): ScriptedReply {
    const status = failures.shift();
    if (status !== undefined) return { status };
    const scripted = queue.shift();
    if (scripted !== undefined) return scripted;
    const reply = policy(messages, body);
    return typeof reply === "string" ? { text: reply } : reply;
  }

  async function handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname !== "/v1/chat/completions") return errorResponse(404, "Not found");
    if (request.method !== "POST") return errorResponse(405, "Method not allowed");
    let body: Record<string, unknown>;
    try {
      const parsed: unknown = await request.json();
      if (typeof parsed !== "object" || parsed === null) throw new TypeError("not an object");
      body = parsed as Record<string, unknown>;
    } catch {
      return errorResponse(400, "Request body is not JSON");
    }
    const messages = parseMessages(body.messages);
    const model = String(body.model ?? "");
    const stream = body.stream === true;
    let settle = () => {};
    const record: RecordedRequest = {
      model,
      messages,
      stream,
      body,
      authorization: request.headers.get("authorization"),
      tokensSent: 0,
      disconnected: false,
      settled: new Promise<void>((resolve) => settle = resolve),
    };
    requests.push(record);
    const reply = nextReply(messages, body);
    if (reply.status !== undefined) {
      settle();
      return errorResponse(reply.status, `Scripted failure with status ${reply.status}`);
    }
    const tokens = reply.tokens ?? tokenize(reply.text ?? "");
    const firstDelay = reply.firstTokenDelayMs ?? options.firstTokenDelayMs ?? 0;
    const tokenDelay = reply.tokenDelayMs ?? options.tokenDelayMs ?? 0;
    const id = `chatcmpl-${++counter}`;
    const abort = new AbortController();
    inFlight.add(abort);
    // Deno cancels the response body when the client goes away (request.signal would also
    // fire on successful responses).
    const left = () => {
      if (!abort.signal.aborted) record.disconnected = true;
      abort.abort();
    };
    const finish = () => {
      abort.abort();
      inFlight.delete(abort);
      settle();
    };

    if (!stream) {
      await sleep(firstDelay, abort.signal);
      record.tokensSent = tokens.length;
      const done = abort.signal.aborted;
      finish();
      if (done) return errorResponse(503, "Server closing");
      return Response.json({
        id,
        object: "chat.completion",
        created: Math.floor(Date.now() / 1000),
        model,
        choices: [{
          index: 0,
          message: { role: "assistant", content: tokens.join("") },
          finish_reason: "stop",
          logprobs: null,
        }],
      });
    }

    const body$ = new ReadableStream<Uint8Array>({
      async start(controller) {
        const send = (delta: Record<string, unknown>, finish: string | null) =>
          controller.enqueue(encoder.encode(chunk(id, model, delta, finish)));
        try {
          send({ role: "assistant" }, null);
          // i === tokens.length is the end: stall/drop there too, before finish and [DONE].
          for (let i = 0; i <= tokens.length; i++) {
            if (i === reply.stallAfterTokens) await sleep(Infinity, abort.signal);
            if (i === reply.closeAfterTokens) throw new Error(DROPPED);
            if (i === tokens.length || abort.signal.aborted) break;
            await sleep(i === 0 ? firstDelay : tokenDelay, abort.signal);
            if (abort.signal.aborted) break;
            send({ content: tokens[i] }, null);
            record.tokensSent++;
          }
          if (abort.signal.aborted) throw new Error("Client left or server closing");
          const calls = reply.toolCalls ?? [];
          for (const delta of toolCallDeltas(calls, reply.argumentPieces ?? 4)) {
            await sleep(tokenDelay, abort.signal);
            if (abort.signal.aborted) throw new Error("Client left or server closing");
            send({ tool_calls: delta }, null);
          }
          send({}, calls.length > 0 ? "tool_calls" : "stop");
          controller.enqueue(encoder.encode("data: [DONE]\n\n"));
          controller.close();
        } catch (error) {
          // Erroring the body makes Deno reset the connection: the client sees a broken stream.
          controller.error(error);
        } finally {
          finish();
        }
      },
      cancel() {
        left();
      },
    });
    return new Response(body$, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
      },
    });
  }

  const server = Deno.serve({
    port: options.port ?? 0,
    hostname: options.hostname ?? "127.0.0.1",
    signal: shutdown.signal,
    onListen() {},
  }, handle);
  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      for (const controller of inFlight) controller.abort();
      shutdown.abort();
      await server.finished;
    })();
    return closing;
  };
  options.signal?.addEventListener("abort", () => void close(), { once: true });
  return {
    baseUrl: `http://${server.addr.hostname}:${server.addr.port}/v1`,
    port: server.addr.port,
    requests,
    script(...replies) {
      for (const reply of replies) queue.push(typeof reply === "string" ? { text: reply } : reply);
    },
    failNext(status, count = 1) {
      for (let i = 0; i < count; i++) failures.push(status);
    },
    close,
  };
}

if (import.meta.main) {
  const { values } = readCommandLine(Deno.args, {
    port: { type: "string", default: "8089" },
    "token-delay-ms": { type: "string", default: "30" },
    "first-token-delay-ms": { type: "string", default: "200" },
  });
  const number = (name: keyof typeof values): number => {
    const value = Number(values[name]);
    if (!Number.isFinite(value)) throw new RangeError(`Cannot parse --${name}: "${values[name]}"`);
    return value;
  };
  const server = await startOpenAiServer({
    port: number("port"),
    tokenDelayMs: number("token-delay-ms"),
    firstTokenDelayMs: number("first-token-delay-ms"),
  });
  console.log(`OpenAI-compatible server on ${server.baseUrl}`);
  Deno.addSignalListener("SIGINT", () => void server.close().then(() => Deno.exit(0)));
}
