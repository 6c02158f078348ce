/**
 * A local CRM receiver for outbox tests: records every POST (delivery id, signature, body), fails
 * the first `failFirst` attempts with `failStatus`, and can hang the first `hangFirst` attempts until
 * the client gives up. Accepted delivery ids are remembered, so `accepted()` is what an idempotent
 * receiver would keep (a re-sent id answers 200 again but is not accepted twice).
 */

export interface CrmAttempt {
  /** ms since the server started. */
  readonly at: number;
  readonly deliveryId: string | null;
  readonly signature: string | null;
  readonly contentType: string | null;
  readonly body: string;
  /** Status answered; 0 when the client went away first. */
  readonly status: number;
}

export interface CrmServer {
  readonly url: string;
  readonly attempts: readonly CrmAttempt[];
  /** First 2xx per delivery id. */
  accepted(): CrmAttempt[];
  /** Polls `predicate` every 10 ms; rejects after `timeoutMs`. */
  waitFor(predicate: () => boolean, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export interface CrmServerOptions {
  readonly failFirst?: number;
  readonly failStatus?: number;
  readonly hangFirst?: number;
  /** Runs before each answer, with the 1-based attempt number. */
  readonly onRequest?: (attempt: number) => void;
}

export function startCrmServer(options: CrmServerOptions = {}): Promise<CrmServer> {
  const failFirst = options.failFirst ?? 0;
  const hangFirst = options.hangFirst ?? 0;
  const attempts: CrmAttempt[] = [];
  const acceptedIds = new Set<string>();
  const accepted: CrmAttempt[] = [];
  const started = performance.now();
  const abort = new AbortController();
  let count = 0;
  const { promise, resolve } = Promise.withResolvers<CrmServer>();
  const server = Deno.serve({
    port: 0,
    hostname: "127.0.0.1",
    signal: abort.signal,
    onListen({ port }) {
      resolve({
        url: `http://127.0.0.1:${port}/hooks/kav`,
        attempts,
        accepted: () => [...accepted],
        waitFor,
        async close() {
          abort.abort();
          await server.finished;
        },
      });
    },
  }, async (request) => {
    const n = ++count;
    const body = await request.text();
    const base = {
      at: performance.now() - started,
      deliveryId: request.headers.get("x-kav-delivery"),
      signature: request.headers.get("x-kav-signature"),
      contentType: request.headers.get("content-type"),
      body,
    };
    if (n <= hangFirst) {
      attempts.push({ ...base, status: 0 });
      // Hold the request until the server closes; the client gives up long before.
      await new Promise((done) => abort.signal.addEventListener("abort", done, { once: true }));
      return new Response(null, { status: 504 });
    }
    options.onRequest?.(n);
    const status = n <= failFirst ? options.failStatus ?? 503 : 200;
    const attempt = { ...base, status };
    attempts.push(attempt);
    if (status === 200 && base.deliveryId !== null && !acceptedIds.has(base.deliveryId)) {
      acceptedIds.add(base.deliveryId);
      accepted.push(attempt);
    }
    return new Response(status === 200 ? "ok" : "unavailable", { status });
  });

  async function waitFor(predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!predicate()) {
      if (performance.now() > deadline) {
        throw new Error(`Condition not met within ${timeoutMs} ms: ${attempts.length} attempts`);
      }
      await new Promise((done) => setTimeout(done, 10));
    }
  }

  return promise;
}
