/**
 * Failures of the `npm:openai` client mapped to `ProviderError`, for every provider that speaks the
 * OpenAI HTTP API (chat completions, transcription, speech): 4xx is final except 408/429; 5xx,
 * connection failures and broken streams may be retried.
 */
import { APIConnectionError, APIConnectionTimeoutError, APIError } from "openai";
import { ProviderError, type ProviderName } from "../errors.ts";

/** `action` names what failed, e.g. `Transcription at "http://10.0.0.5:8000/v1"`. */
export function mapOpenAiError(
  provider: ProviderName,
  action: string,
  error: unknown,
): ProviderError {
  if (error instanceof ProviderError) return error;
  if (error instanceof APIConnectionTimeoutError) {
    return new ProviderError(provider, "timeout", `${action} timed out`, { cause: error });
  }
  if (error instanceof APIConnectionError) {
    return new ProviderError(provider, "connectivity", `${action} failed to connect`, {
      cause: error,
    });
  }
  if (error instanceof APIError) {
    const status = error.status;
    const message = `${action} failed with status "${status ?? "none"}"`;
    if (status === undefined) {
      // An error event inside the stream: the server gave up mid-answer.
      return new ProviderError(provider, "server", `${action} failed with an error event`, {
        cause: error,
      });
    }
    if (status === 401 || status === 403) {
      return new ProviderError(provider, "authentication", message, { cause: error });
    }
    if (status === 408) return new ProviderError(provider, "timeout", message, { cause: error });
    if (status === 429) return new ProviderError(provider, "rate_limit", message, { cause: error });
    if (status >= 500) return new ProviderError(provider, "server", message, { cause: error });
    return new ProviderError(provider, "invalid_request", message, { cause: error });
  }
  if (error instanceof SyntaxError) {
    return new ProviderError(provider, "server", `${action} sent malformed data`, { cause: error });
  }
  // Body read failures (connection reset mid-stream) land here.
  const detail = error instanceof Error ? error.name : typeof error;
  return new ProviderError(provider, "connectivity", `${action} broke off ("${detail}")`, {
    cause: error,
  });
}
