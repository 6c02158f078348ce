/**
 * The caller's context from the CRM (SPEC 6): with `crm.context_url` set, a signed POST of
 * `{"call_sid","from","to"}` when the stream starts, in parallel with the greeting. A `"context"`
 * string in the answer joins this call's system prompt; a late, failed or empty answer leaves the
 * prompt as it is. The wait is bounded and nothing ever waits for it: the first turn goes without
 * it if it has not come yet.
 */
import { signedPost } from "./_signed_post.ts";

/** How long the CRM gets to answer, ms. */
export const CONTEXT_TIMEOUT_MS = 2000;
/** Largest answer read, bytes. */
export const MAX_CONTEXT_ANSWER_BYTES = 16 * 1024;
/** Longest context added to the prompt, characters (longer is cut). */
export const MAX_CONTEXT_CHARS = 4000;

export interface CallerContext {
  /** The text for the prompt, or null. */
  readonly context: string | null;
  /** For the record: "received 120 chars", "no context in the answer", or the failure. */
  readonly outcome: string;
}

/** Asks the CRM; never rejects. */
export async function fetchCallerContext(
  url: string,
  caller: { readonly callSid: string; readonly from: string | null; readonly to: string | null },
  options: { readonly secret: string | null; readonly signal: AbortSignal },
): Promise<CallerContext> {
  const body = JSON.stringify({ call_sid: caller.callSid, from: caller.from, to: caller.to });
  const answer = await signedPost(url, body, {
    secret: options.secret,
    timeoutMs: CONTEXT_TIMEOUT_MS,
    maxAnswerBytes: MAX_CONTEXT_ANSWER_BYTES,
    signal: options.signal,
  });
  if (!answer.ok) return { context: null, outcome: `failed: ${answer.error}` };
  const json = answer.json;
  const text = typeof json === "object" && json !== null
    ? (json as Record<string, unknown>).context
    : undefined;
  if (typeof text !== "string" || text.trim() === "") {
    return { context: null, outcome: "no context in the answer" };
  }
  const context = [...text.trim()].slice(0, MAX_CONTEXT_CHARS).join("");
  return {
    context,
    outcome: `received ${[...context].length} chars in ${Math.round(answer.ms)} ms`,
  };
}

/** The system prompt with the caller's context appended. */
export function promptWithContext(systemPrompt: string, context: string | null): string {
  if (context === null) return systemPrompt;
  return `${systemPrompt}\n\nWhat the business's CRM knows about this caller:\n${context}`;
}
