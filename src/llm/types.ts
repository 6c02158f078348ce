import type { Logger } from "../observe/log.ts";

/** A function call the model asked for; `arguments` is the model's JSON text, unchecked. */
export interface ToolCall {
  readonly id: string;
  readonly name: string;
  readonly arguments: string;
}

export type ChatMessage =
  | { readonly role: "system" | "user"; readonly content: string }
  | {
    readonly role: "assistant";
    readonly content: string;
    /** The calls this answer made; their results follow as `tool` messages. */
    readonly toolCalls?: readonly ToolCall[];
  }
  | { readonly role: "tool"; readonly toolCallId: string; readonly content: string };

/** A function the model may call: name, description and the JSON Schema of its arguments. */
export interface ToolSpec {
  readonly name: string;
  readonly description: string;
  readonly parameters: Readonly<Record<string, unknown>>;
}

/** The calls of one answer, complete (every argument delta joined), in the model's order. */
export interface ToolCallsDelta {
  readonly type: "tool_calls";
  readonly calls: readonly ToolCall[];
}

/** A text delta, or (once, at the end of an answer that calls tools) its tool calls. */
export type LlmDelta = string | ToolCallsDelta;

export interface LlmStreamOptions {
  readonly signal: AbortSignal;
  readonly log?: Logger;
  /** Functions offered to the model with this request; none when absent or empty. */
  readonly tools?: readonly ToolSpec[];
}

/**
 * Streams a chat completion as text deltas, then its tool calls if the model made any. Throws
 * ProviderError (category "timeout" when nothing arrived within `llm.timeout_ms`, or the stream
 * stalled that long).
 */
export interface LlmProvider {
  stream(messages: readonly ChatMessage[], options: LlmStreamOptions): AsyncIterable<LlmDelta>;
}
