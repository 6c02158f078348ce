/**
 * One signed JSON POST to the CRM (tool requests and the caller context, SPEC 6): signed like the
 * call summaries (`X-Kav-Signature: sha256=<hex HMAC-SHA256(crm secret, body)>`), sent once (never
 * retried: a tool may change data), the answer read up to a byte limit. Every failure comes back
 * as a short reason, never thrown, and never carries the URL (it may hold a token).
 */
import { signCrmBody } from "../store/crm_outbox.ts";

export type PostResult =
  | { readonly ok: true; readonly json: unknown; readonly text: string; readonly ms: number }
  | { readonly ok: false; readonly error: string; readonly ms: number };

export interface SignedPostOptions {
  /** HMAC key (`crm.secret`); null sends no signature header. */
  readonly secret: string | null;
  readonly timeoutMs: number;
  /** Answers longer than this are refused ("answer too large"). */
  readonly maxAnswerBytes: number;
  /** Aborting gives up at once ("cancelled"). */
  readonly signal?: AbortSignal;
}

/** POSTs `body` (JSON text) to `url`; resolves with the parsed 2xx JSON answer or the reason. */
export async function signedPost(
  url: string,
  body: string,
  options: SignedPostOptions,
): Promise<PostResult> {
  const started = performance.now();
  const elapsed = () => performance.now() - started;
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (options.secret !== null) headers["x-kav-signature"] = signCrmBody(options.secret, body);
  const timeout = AbortSignal.timeout(options.timeoutMs);
  const signal = options.signal ? AbortSignal.any([timeout, options.signal]) : timeout;
  const failed = (error: string): PostResult => ({ ok: false, error, ms: elapsed() });
  try {
    const response = await fetch(url, { method: "POST", headers, body, signal });
    if (!response.ok) {
      await response.body?.cancel().catch(() => {});
      return failed(`answered with status ${response.status}`);
    }
    const bytes = await readCapped(response, options.maxAnswerBytes);
    if (bytes === null) return failed(`answer larger than ${options.maxAnswerBytes} bytes`);
    const text = new TextDecoder().decode(bytes);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      return failed("answer is not JSON");
    }
    return { ok: true, json, text, ms: elapsed() };
  } catch (error) {
    if (timeout.aborted) return failed(`timed out after ${options.timeoutMs} ms`);
    if (options.signal?.aborted) return failed("cancelled");
    // Deno's fetch names the failure only in its cause's message, which also holds the URL: pick
    // the kind out, never pass the text on.
    const cause = error instanceof Error && error.cause instanceof Error ? error.cause : error;
    const text = cause instanceof Error ? `${cause.name} ${cause.message}` : "";
    if (/connection refused/i.test(text)) return failed("connection refused");
    if (/dns error|failed to lookup|name or service not known/i.test(text)) {
      return failed("host not found");
    }
    if (/certificate|tls/i.test(text)) return failed("TLS handshake failed");
    if (/connection reset|broken pipe|closed/i.test(text)) return failed("connection broke off");
    return failed("request failed");
  }
}

/** The whole body, or null as soon as it passes `max` bytes (the rest is not read). */
async function readCapped(response: Response, max: number): Promise<Uint8Array | null> {
  const length = Number(response.headers.get("content-length") ?? NaN);
  if (length > max) {
    await response.body?.cancel().catch(() => {});
    return null;
  }
  const reader = response.body?.getReader();
  if (reader === undefined) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > max) {
      await reader.cancel().catch(() => {});
      return null;
    }
    chunks.push(value);
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}
