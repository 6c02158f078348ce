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
import type { ChatMessage, LlmProvider } from "./types.ts";

/** Used when no key is configured: on-prem servers ignore it, but the SDK requires one. */
const PLACEHOLDER_KEY = "kav-no-api-key";

export interface OpenAiLlmOptions {
  /** Failures are logged here as `[LLM]` lines (never prompts or keys). */
  readonly log?: Logger;
}

/** Options of one `stream` call; `log` (optional) overrides the provider's logger, e.g. per call. */
export interface OpenAiStreamOptions {
  readonly signal: AbortSignal;
  readonly log?: Logger;
}

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
): AsyncGenerator<string> {
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
      messages: messages.map((m) => ({ role: m.role, content: m.content })),
      stream: true,
      temperature: config.temperature,
      max_tokens: config.max_tokens,
    }, { signal: AbortSignal.any([signal, watchdog.signal]) });
    let finished = false;
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      if (choice?.finish_reason) finished = true;
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
