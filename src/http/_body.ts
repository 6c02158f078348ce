/** Reads a request body with a byte cap and a time cap, stopping as soon as either is passed. */

export type BodyResult =
  | { readonly ok: true; readonly bytes: Uint8Array }
  | { readonly ok: false; readonly reason: "too_large" | "timeout" };

/**
 * Time allowed to receive a whole webhook body, ms. Twilio sends a few hundred bytes at once and
 * gives up after 15 s anyway; a client trickling a body (slowloris) is cut off here.
 */
export const BODY_TIMEOUT_MS = 10_000;

const TIMED_OUT = Symbol("timed out");

/**
 * The whole body, `too_large` when it is over `maxBytes` (decided from Content-Length when present,
 * else while reading, which then stops without reading the rest), or `timeout` when it has not all
 * arrived within `timeoutMs` (default `BODY_TIMEOUT_MS`).
 */
export async function readBody(
  req: Request,
  options: { readonly maxBytes: number; readonly timeoutMs?: number },
): Promise<BodyResult> {
  const { maxBytes } = options;
  const declared = req.headers.get("content-length");
  if (declared !== null && /^\d+$/.test(declared.trim()) && Number(declared) > maxBytes) {
    return { ok: false, reason: "too_large" };
  }
  if (req.body === null) return { ok: true, bytes: new Uint8Array(0) };
  // Twilio always declares the length: then one read of the whole body (one trip through the
  // event loop instead of one per chunk plus one for the end, which showed in webhook latency
  // under load), still cut off at the deadline.
  if (declared !== null) return await readDeclared(req, options.timeoutMs ?? BODY_TIMEOUT_MS);
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), options.timeoutMs ?? BODY_TIMEOUT_MS);
  });
  try {
    while (true) {
      const read = reader.read();
      const next = await Promise.race([read, deadline]);
      if (next === TIMED_OUT) {
        read.catch(() => {}); // settles (done) once cancelled below
        await reader.cancel().catch(() => {});
        return { ok: false, reason: "timeout" };
      }
      const { done, value } = next;
      if (done) break;
      total += value.byteLength;
      if (total > maxBytes) {
        await reader.cancel().catch(() => {});
        return { ok: false, reason: "too_large" };
      }
      chunks.push(value);
    }
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
  if (chunks.length === 1) return { ok: true, bytes: chunks[0] };
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
  }
  return { ok: true, bytes };
}

/** The body of a request whose Content-Length is within the cap, or `timeout`. */
async function readDeclared(req: Request, timeoutMs: number): Promise<BodyResult> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), timeoutMs);
  });
  const whole = req.bytes();
  try {
    const bytes = await Promise.race([whole, deadline]);
    if (bytes !== TIMED_OUT) return { ok: true, bytes };
    whole.catch(() => {}); // settles (fails) once the body is cancelled
    await req.body?.cancel().catch(() => {});
    return { ok: false, reason: "timeout" };
  } finally {
    clearTimeout(timer);
  }
}
