import type { Logger } from "../observe/log.ts";

export interface ChatMessage {
  readonly role: "system" | "user" | "assistant";
  readonly content: string;
}

/**
 * Streams a chat completion as text deltas. Throws ProviderError (category "timeout" when no token
 * arrived within `llm.timeout_ms`, or the stream stalled that long between tokens).
 */
export interface LlmProvider {
  stream(
    messages: readonly ChatMessage[],
    options: { signal: AbortSignal; log?: Logger },
  ): AsyncIterable<string>;
}
