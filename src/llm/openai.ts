/**
 * LLM provider over any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
 * llama.cpp), streamed with `npm:openai`. The SDK's own retries are off: Kav's fault policy
 * (apology, retry) lives in the call core.
 */
import OpenAI, { APIError } from "openai";
import type { LlmConfig } from "../config/types.ts";
import { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";
import { mapOpenAiError } from "../providers/openai_errors.ts";
import { observeStream } from "../providers/policy.ts";
import type {
  ChatMessage,
  LlmDelta,
  LlmProvider,
  LlmStreamOptions,
  ToolCall,
  ToolSpec,
} from "./types.ts";

/** Used when no key is configured: on-prem servers ignore it, but the SDK requires one. */
const PLACEHOLDER_KEY = "kav-no-api-key";

export interface OpenAiLlmOptions {
  /** Failures are logged here as `[LLM]` lines (never prompts or keys). */
  readonly log?: Logger;
}

/** Options of one `stream` call; `log` (optional) overrides the provider's logger, e.g. per call. */
export type OpenAiStreamOptions = LlmStreamOptions;

/** Most tool calls one answer may make (more is a malformed answer). */
const MAX_TOOL_CALLS = 16;

/**
 * Creates the provider. `stream` yields text deltas as they arrive. `llm.timeout_ms` bounds the
 * wait for the first token and every gap between tokens (time the consumer holds a delta does not
 * count); on expiry the HTTP request is aborted and a ProviderError "timeout" is thrown. A stream
 * that ends without a finish reason (connection dropped) throws "connectivity". The caller's abort
 * cancels the request and rejects with `signal.reason`.
 */
export function createOpenAiLlm(config: LlmConfig, options: OpenAiLlmOptions = {}): LlmProvider {
  const client = new OpenAI({
    apiKey: config.api_key ?? PLACEHOLDER_KEY,
    baseURL: config.base_url,
    organization: null,
    project: null,
    webhookSecret: null,
    maxRetries: 0,
    // Our watchdog fires first; the SDK's timer is only a backstop for the response headers.
    timeout: config.timeout_ms + 1000,
    logLevel: "off",
  });
  return {
    stream(messages: readonly ChatMessage[], streamOptions: OpenAiStreamOptions) {
      return observeStream("llm", "chat", () =>
        streamChat(
          client,
          config,
          messages,
          streamOptions.signal,
          streamOptions.log ?? options.log,
          streamOptions.tools ?? [],
        ));
    },
  };
}

async function* streamChat(
  client: OpenAI,
  config: LlmConfig,
  messages: readonly ChatMessage[],
  signal: AbortSignal,
  log: Logger | undefined,
  tools: readonly ToolSpec[],
): AsyncGenerator<LlmDelta> {
  signal.throwIfAborted();
  const watchdog = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let tokens = 0;
  let timedOut = false;
  const arm = () => {
    timer = setTimeout(() => {
      timedOut = true;
      watchdog.abort();
    }, config.timeout_ms);
  };
  const disarm = () => {
    clearTimeout(timer);
    timer = undefined;
  };
  try {
    arm();
    const stream = await client.chat.completions.create({
      model: config.model,
      messages: messages.map(toOpenAiMessage),
      stream: true,
      temperature: config.temperature,
      max_tokens: config.max_tokens,
      ...(tools.length === 0 ? {} : {
        tools: tools.map((tool) => ({
          type: "function" as const,
          function: {
            name: tool.name,
            description: tool.description,
            parameters: { ...tool.parameters },
          },
        })),
      }),
    }, { signal: AbortSignal.any([signal, watchdog.signal]) });
    let finished = false;
    // Streamed calls arrive in pieces keyed by index: the first names the call, the rest carry
    // slices of its arguments, possibly interleaved with other calls (parallel calls).
    const calls = new Map<number, { id: string; name: string; arguments: string }>();
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      if (choice?.finish_reason) finished = true;
      const pieces = choice?.delta?.tool_calls;
      if (pieces) {
        disarm();
        for (const piece of pieces) collectToolCall(calls, piece, config);
        arm();
      }
      const delta = choice?.delta?.content;
      if (!delta) continue;
      disarm();
      tokens++;
      yield delta;
      arm();
    }
    // The SDK ends the iteration quietly when the request is aborted.
    signal.throwIfAborted();
    if (timedOut) throw timeoutError(config, tokens);
    if (!finished) {
      throw new ProviderError(
        "llm",
        "connectivity",
        `Streaming chat completion from "${config.base_url}" ended without a finish reason after ${tokens} tokens`,
      );
    }
    if (calls.size > 0) yield { type: "tool_calls", calls: completeToolCalls(calls, config) };
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    const mapped = timedOut ? timeoutError(config, tokens) : mapError(error, config);
    log?.warn("LLM", "request failed", {
      category: mapped.category,
      retryable: mapped.retryable,
      tokens,
      status: error instanceof APIError ? error.status : undefined,
    });
    throw mapped;
  } finally {
    disarm();
    // Cancels the HTTP request when the consumer stopped early; a no-op after a clean end.
    watchdog.abort();
  }
}

/** One `ChatMessage` in the shape of the chat-completions API. */
function toOpenAiMessage(message: ChatMessage) {
  switch (message.role) {
    case "system":
    case "user":
      return { role: message.role, content: message.content };
    case "assistant":
      if (message.toolCalls === undefined || message.toolCalls.length === 0) {
        return { role: "assistant" as const, content: message.content };
      }
      return {
        role: "assistant" as const,
        content: message.content === "" ? null : message.content,
        tool_calls: message.toolCalls.map((call) => ({
          id: call.id,
          type: "function" as const,
          function: { name: call.name, arguments: call.arguments },
        })),
      };
    case "tool":
      return { role: "tool" as const, tool_call_id: message.toolCallId, content: message.content };
    default: {
      const unreachable: never = message;
      throw new TypeError(`Cannot send chat message ${JSON.stringify(unreachable)}`);
    }
  }
}

interface ToolCallPiece {
  readonly index: number;
  readonly id?: string;
  readonly function?: { readonly name?: string; readonly arguments?: string };
}

function collectToolCall(
  calls: Map<number, { id: string; name: string; arguments: string }>,
  piece: ToolCallPiece,
  config: LlmConfig,
): void {
  let call = calls.get(piece.index);
  if (call === undefined) {
    if (calls.size >= MAX_TOOL_CALLS) {
      throw new ProviderError(
        "llm",
        "server",
        `Streaming chat completion from "${config.base_url}" made more than ${MAX_TOOL_CALLS} tool calls`,
      );
    }
    call = { id: "", name: "", arguments: "" };
    calls.set(piece.index, call);
  }
  if (piece.id) call.id = piece.id;
  if (piece.function?.name) call.name += piece.function.name;
  if (piece.function?.arguments) call.arguments += piece.function.arguments;
}

/** The collected calls in index order; a call the stream never named is a malformed answer. */
function completeToolCalls(
  calls: Map<number, { id: string; name: string; arguments: string }>,
  config: LlmConfig,
): ToolCall[] {
  const out: ToolCall[] = [];
  for (const index of [...calls.keys()].sort((a, b) => a - b)) {
    const call = calls.get(index)!;
    if (call.name === "") {
      throw new ProviderError(
        "llm",
        "server",
        `Streaming chat completion from "${config.base_url}" sent a tool call without a name`,
      );
    }
    // Some local servers leave ids out: the result must still name its call.
    out.push({ id: call.id || `call_${index}`, name: call.name, arguments: call.arguments });
  }
  return out;
}

function timeoutError(config: LlmConfig, tokens: number): ProviderError {
  const what = tokens === 0 ? "the first token" : `token ${tokens + 1}`;
  return new ProviderError(
    "llm",
    "timeout",
    `Streaming chat completion from "${config.base_url}" timed out after ${config.timeout_ms} ms waiting for ${what}`,
  );
}

/** HTTP/SDK failures → ProviderError: 4xx final except 408/429; 5xx and connection retryable. */
export function mapError(error: unknown, config: Pick<LlmConfig, "base_url">): ProviderError {
  return mapOpenAiError("llm", `Streaming chat completion from "${config.base_url}"`, error);
}
