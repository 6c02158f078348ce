import assert from "node:assert/strict";
import type { LlmConfig } from "../src/config/types.ts";
import { ProviderError } from "../src/errors.ts";
import { createOpenAiLlm } from "../src/llm/openai.ts";
import { SentenceCutter } from "../src/llm/sentences.ts";
import type { ChatMessage, LlmDelta } from "../src/llm/types.ts";
import { renderMetrics } from "../src/observe/metrics.ts";
import { createLogger } from "../src/observe/log.ts";
import { type OpenAiServer, startOpenAiServer } from "../tools/sandbox/openai_server.ts";

const MESSAGES: readonly ChatMessage[] = [
  { role: "system", content: "את נציגה של מרפאה" },
  { role: "user", content: "מתי אתם פתוחים?" },
];

function config(server: OpenAiServer | string, overrides: Partial<LlmConfig> = {}): LlmConfig {
  return {
    provider: "openai",
    base_url: typeof server === "string" ? server : server.baseUrl,
    model: "test-model",
    timeout_ms: 400,
    api_key: null,
    temperature: 0.2,
    max_tokens: 120,
    ...overrides,
  };
}

function signal(): AbortSignal {
  return new AbortController().signal;
}

async function collect(iterable: AsyncIterable<LlmDelta>): Promise<string[]> {
  const out: string[] = [];
  for await (const delta of iterable) if (typeof delta === "string") out.push(delta);
  return out;
}

/** Runs the stream to completion and returns the error it throws (fails if it doesn't). */
async function failure(iterable: AsyncIterable<LlmDelta>, seen: string[] = []): Promise<unknown> {
  try {
    for await (const delta of iterable) if (typeof delta === "string") seen.push(delta);
  } catch (error) {
    return error;
  }
  assert.fail("expected the stream to fail");
}

/** Waits for the server to finish with a request, with a cap so a bug fails instead of hanging. */
async function settled(server: OpenAiServer, index: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const cap = new Promise<void>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`request ${index} did not settle`)), 5000);
  });
  try {
    await Promise.race([server.requests[index].settled, cap]);
  } finally {
    clearTimeout(timer);
  }
}

function errorCount(category: string): number {
  const line = renderMetrics().split("\n").find((l) =>
    l.startsWith(`kav_provider_errors_total{category="${category}",provider="llm"}`)
  );
  return line === undefined ? 0 : Number(line.split(" ")[1]);
}

async function withServer(
  fn: (server: OpenAiServer) => Promise<void>,
  options: Parameters<typeof startOpenAiServer>[0] = {},
): Promise<void> {
  const server = await startOpenAiServer(options);
  try {
    await fn(server);
  } finally {
    await server.close();
  }
}

Deno.test("createOpenAiLlm() streams deltas and the first sentence is ready before the end", () =>
  withServer(async (server) => {
    const text = "שלום! המרפאה פתוחה מ-8 עד 16. בימי שישי עד 12.";
    server.script({ text, tokenDelayMs: 80 });
    const llm = createOpenAiLlm(config(server, { api_key: "sk-test" }));
    const cutter = new SentenceCutter();
    const deltas: string[] = [];
    let sentTokensAtFirstSentence = -1;
    for await (const delta of llm.stream(MESSAGES, { signal: signal() })) {
      assert.equal(typeof delta, "string");
      if (typeof delta !== "string") continue;
      deltas.push(delta);
      const sentences = cutter.push(delta);
      if (sentences.length > 0 && sentTokensAtFirstSentence < 0) {
        assert.equal(sentences[0], "שלום!");
        sentTokensAtFirstSentence = server.requests[0].tokensSent;
      }
    }
    assert.equal(deltas.join(""), text);
    assert.ok(deltas.length > 5, `expected many deltas, got ${deltas.length}`);
    assert.ok(sentTokensAtFirstSentence > 0);
    assert.ok(sentTokensAtFirstSentence < deltas.length, "first sentence came only at the end");
    const request = server.requests[0];
    assert.equal(request.model, "test-model");
    assert.equal(request.stream, true);
    assert.deepEqual(request.messages, MESSAGES);
    assert.equal(request.body.temperature, 0.2);
    assert.equal(request.body.max_tokens, 120);
    assert.equal(request.authorization, "Bearer sk-test");
    await settled(server, 0);
    assert.equal(request.disconnected, false);
  }));

Deno.test("createOpenAiLlm() sends a placeholder key when none is configured", () =>
  withServer(async (server) => {
    server.script("כן.");
    const deltas = await collect(
      createOpenAiLlm(config(server)).stream(MESSAGES, {
        signal: signal(),
      }),
    );
    assert.equal(deltas.join(""), "כן.");
    assert.match(server.requests[0].authorization ?? "", /^Bearer \S+$/);
  }));

Deno.test("createOpenAiLlm() times out waiting for the first token and cancels the request", () =>
  withServer(async (server) => {
    server.script({ text: "מאוחר מדי.", firstTokenDelayMs: 10_000 });
    const before = errorCount("timeout");
    const started = performance.now();
    const error = await failure(
      createOpenAiLlm(config(server)).stream(MESSAGES, {
        signal: signal(),
      }),
    );
    const elapsed = performance.now() - started;
    assert.ok(error instanceof ProviderError, String(error));
    assert.equal(error.provider, "llm");
    assert.equal(error.category, "timeout");
    assert.equal(error.retryable, true);
    assert.match(error.message, /first token/);
    assert.ok(elapsed >= 390, `timed out too early: ${elapsed} ms`);
    assert.ok(elapsed < 400 + 2000, `timed out too late: ${elapsed} ms`);
    await settled(server, 0);
    assert.equal(server.requests[0].disconnected, true);
    assert.equal(errorCount("timeout"), before + 1);
  }));

Deno.test("createOpenAiLlm() times out when the stream stalls between tokens", () =>
  withServer(async (server) => {
    server.script({ text: "אחת שתיים שלוש ארבע", stallAfterTokens: 2 });
    const seen: string[] = [];
    let lastDeltaAt = 0;
    const stream = createOpenAiLlm(config(server)).stream(MESSAGES, { signal: signal() });
    const error = await failure(
      (async function* () {
        for await (const delta of stream) {
          lastDeltaAt = performance.now();
          yield delta;
        }
      })(),
      seen,
    );
    const gap = performance.now() - lastDeltaAt;
    assert.deepEqual(seen, ["אחת", " שתיים"]);
    assert.ok(error instanceof ProviderError, String(error));
    assert.equal(error.category, "timeout");
    assert.match(error.message, /token 3/);
    assert.ok(gap >= 390 && gap < 400 + 2000, `stall detected after ${gap} ms`);
    await settled(server, 0);
    assert.equal(server.requests[0].disconnected, true);
  }));

Deno.test("createOpenAiLlm() does not count time the consumer holds a delta", () =>
  withServer(async (server) => {
    server.script({ tokens: ["א", "ב", "ג."] });
    const seen: string[] = [];
    for await (
      const delta of createOpenAiLlm(config(server, { timeout_ms: 200 })).stream(
        MESSAGES,
        { signal: signal() },
      )
    ) {
      if (typeof delta === "string") seen.push(delta);
      await new Promise((resolve) => setTimeout(resolve, 450));
    }
    assert.deepEqual(seen, ["א", "ב", "ג."]);
  }));

for (
  const [status, category, retryable] of [
    [500, "server", true],
    [503, "server", true],
    [429, "rate_limit", true],
    [408, "timeout", true],
    [400, "invalid_request", false],
    [404, "invalid_request", false],
    [401, "authentication", false],
  ] as const
) {
  Deno.test(`createOpenAiLlm() maps HTTP ${status} to "${category}"`, () =>
    withServer(async (server) => {
      server.failNext(status);
      const before = errorCount(category);
      const lines: string[] = [];
      const log = createLogger((line) => lines.push(line));
      const error = await failure(
        createOpenAiLlm(config(server), { log }).stream(MESSAGES, {
          signal: signal(),
        }),
      );
      assert.ok(error instanceof ProviderError, String(error));
      assert.equal(error.category, category);
      assert.equal(error.retryable, retryable);
      assert.match(error.message, new RegExp(`"${status}"`));
      assert.equal(server.requests.length, 1, "the SDK must not retry");
      assert.equal(errorCount(category), before + 1);
      assert.equal(lines.length, 1);
      assert.match(lines[0], new RegExp(`\\[LLM\\] request failed category=${category}`));
      assert.doesNotMatch(lines[0], /מרפאה|פתוחים/, "prompts must not be logged");
    }));
}

Deno.test("createOpenAiLlm() reports a dropped connection as retryable connectivity", () =>
  withServer(async (server) => {
    server.script({ text: "אחת שתיים שלוש ארבע", closeAfterTokens: 2 });
    const seen: string[] = [];
    const error = await failure(
      createOpenAiLlm(config(server)).stream(MESSAGES, { signal: signal() }),
      seen,
    );
    assert.ok(error instanceof ProviderError, String(error));
    assert.equal(error.category, "connectivity");
    assert.equal(error.retryable, true);
    assert.ok(seen.length <= 2, `saw ${seen.length} deltas`);
  }));

Deno.test("createOpenAiLlm() reports a refused connection as connectivity", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const error = await failure(
    createOpenAiLlm(config(`http://127.0.0.1:${port}/v1`)).stream(MESSAGES, { signal: signal() }),
  );
  assert.ok(error instanceof ProviderError, String(error));
  assert.equal(error.category, "connectivity");
  assert.equal(error.retryable, true);
});

Deno.test("createOpenAiLlm() rejects with the abort reason and cancels the request", () =>
  withServer(async (server) => {
    server.script({ text: "אחת שתיים שלוש ארבע חמש", tokenDelayMs: 100 });
    const controller = new AbortController();
    const reason = new Error("caller barged in");
    const before = renderMetrics();
    const seen: string[] = [];
    const error = await failure(
      (async function* () {
        for await (
          const delta of createOpenAiLlm(config(server, { timeout_ms: 5000 })).stream(MESSAGES, {
            signal: controller.signal,
          })
        ) {
          if (seen.length === 0) controller.abort(reason);
          yield delta;
        }
      })(),
      seen,
    );
    assert.equal(error, reason);
    assert.equal(seen.length, 1);
    await settled(server, 0);
    assert.equal(server.requests[0].disconnected, true);
    assert.equal(renderMetrics(), before, "a cancelled request is not a provider error");
  }));

Deno.test("createOpenAiLlm() rejects at once when the signal is already aborted", () =>
  withServer(async (server) => {
    const reason = new Error("call ended");
    const error = await failure(
      createOpenAiLlm(config(server)).stream(MESSAGES, { signal: AbortSignal.abort(reason) }),
    );
    assert.equal(error, reason);
    assert.equal(server.requests.length, 0);
  }));

Deno.test("createOpenAiLlm() cancels the request when the consumer stops early", () =>
  withServer(async (server) => {
    server.script({ text: "אחת שתיים שלוש ארבע חמש", tokenDelayMs: 100 });
    for await (
      const _delta of createOpenAiLlm(config(server)).stream(MESSAGES, { signal: signal() })
    ) {
      break;
    }
    await settled(server, 0);
    assert.equal(server.requests[0].disconnected, true);
  }));

Deno.test("startOpenAiServer() answers non-streaming requests and unknown routes", () =>
  withServer(async (server) => {
    server.script("תשובה מלאה.");
    const response = await fetch(`${server.baseUrl}/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "היי" }] }),
    });
    const body = await response.json();
    assert.equal(response.status, 200);
    assert.equal(body.object, "chat.completion");
    assert.equal(body.choices[0].message.content, "תשובה מלאה.");
    assert.equal(server.requests[0].stream, false);
    const missing = await fetch(`${server.baseUrl}/models`);
    await missing.body?.cancel();
    assert.equal(missing.status, 404);
    const defaulted = await fetch(`${server.baseUrl}/chat/completions`, {
      method: "POST",
      body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "מחר בבוקר" }] }),
    });
    const answer = await defaulted.json();
    assert.match(answer.choices[0].message.content, /מחר בבוקר/);
  }));

Deno.test("createOpenAiLlm() collects parallel streamed tool calls whose arguments come in pieces", async () => {
  const server = await startOpenAiServer();
  try {
    server.script({
      text: "רגע, אני בודקת.",
      toolCalls: [
        { id: "call_a", name: "lookup_customer", arguments: { phone: "+972501234567" } },
        { id: "call_b", name: "open_ticket", arguments: { subject: "תור למחר", urgent: true } },
      ],
      argumentPieces: 7,
    }, "מצאתי אותך.");
    const llm = createOpenAiLlm(config(server));
    const tools = [{
      name: "lookup_customer",
      description: "Find the caller",
      parameters: { type: "object", properties: { phone: { type: "string" } } },
    }];
    const deltas: LlmDelta[] = [];
    for await (const delta of llm.stream(MESSAGES, { signal: signal(), tools })) deltas.push(delta);
    const text = deltas.filter((d) => typeof d === "string").join("");
    assert.equal(text, "רגע, אני בודקת.", "the text before the calls streams as usual");
    const last = deltas.at(-1);
    assert.ok(typeof last === "object" && last.type === "tool_calls");
    assert.deepEqual(last.calls, [
      { id: "call_a", name: "lookup_customer", arguments: '{"phone":"+972501234567"}' },
      { id: "call_b", name: "open_ticket", arguments: '{"subject":"תור למחר","urgent":true}' },
    ]);
    const sent = server.requests[0].body.tools as { function: { name: string } }[];
    assert.deepEqual(sent.map((t) => t.function.name), ["lookup_customer"]);

    // The results go back as tool messages after the assistant message that made the calls.
    const history: ChatMessage[] = [
      ...MESSAGES,
      { role: "assistant", content: "רגע, אני בודקת.", toolCalls: last.calls },
      { role: "tool", toolCallId: "call_a", content: '{"name":"דנה"}' },
      { role: "tool", toolCallId: "call_b", content: '{"ticket":7}' },
    ];
    assert.deepEqual(await collect(llm.stream(history, { signal: signal() })), ["מצאתי", " אותך."]);
    const received = server.requests[1].messages;
    assert.deepEqual(received.slice(2), [
      { role: "assistant", content: "רגע, אני בודקת.", tool_calls: last.calls },
      { role: "tool", content: '{"name":"דנה"}', tool_call_id: "call_a" },
      { role: "tool", content: '{"ticket":7}', tool_call_id: "call_b" },
    ]);
    assert.equal(server.requests[1].body.tools, undefined, "no tools offered: none sent");
  } finally {
    await server.close();
  }
});
