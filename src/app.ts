/**
 * Kav's one HTTP server: `startServer` binds it (TLS when `server.tls_cert` and `server.tls_key`
 * are set); `runServer` serves until SIGTERM, then drains.
 */

import type { Config } from "./config/types.ts";
import { createHandler } from "./http/handler.ts";
import type { HandlerDeps, MediaCallAcceptor } from "./http/types.ts";
import type { Logger } from "./observe/log.ts";

export interface StartServerOptions {
  readonly config: Config;
  readonly handler: (req: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>;
  /** Aborting stops accepting connections; await `server.finished` for in-flight ones. */
  readonly signal?: AbortSignal;
  /** Called with the bound address (port 0 resolves to the real port). */
  readonly onListen?: (addr: Deno.NetAddr) => void;
  /** Bind this port instead of `server.listen`'s (call workers after the first bound port 0). */
  readonly port?: number;
  /**
   * SO_REUSEPORT: every call worker binds the same address and the kernel spreads new
   * connections over them (needs `--unstable-net`, in deno.json's "unstable").
   */
  readonly reusePort?: boolean;
}

/** `Deno.serve` on `server.listen`; throws Error when a TLS file cannot be read. */
export function startServer(options: StartServerOptions): Deno.HttpServer<Deno.NetAddr> {
  const { server } = options.config;
  const tls = server.tls_cert !== null && server.tls_key !== null
    ? { cert: readPem(server.tls_cert, "certificate"), key: readPem(server.tls_key, "key") }
    : {};
  return Deno.serve({
    hostname: server.hostname,
    port: options.port ?? server.port,
    ...(options.reusePort ? { reusePort: true } : {}),
    signal: options.signal,
    onListen: options.onListen ?? (() => {}),
    // The handler has its own boundary; this only catches what escapes it.
    onError: () => new Response("internal error\n", { status: 500 }),
    ...tls,
  }, options.handler);
}

function readPem(path: string, what: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(`Cannot read the TLS ${what} ${JSON.stringify(path)}: ${reason}`, {
      cause: error,
    });
  }
}

export interface RunServerOptions {
  readonly config: Config;
  readonly log: Logger;
  readonly calls: MediaCallAcceptor;
  readonly onStatusEvent: HandlerDeps["onStatusEvent"];
  /** Agent transfers and hang-ups (SPEC 6), and where dial outcomes go. */
  readonly callControl?: HandlerDeps["callControl"];
  readonly onDialEnded?: HandlerDeps["onDialEnded"];
  /**
   * Called once on SIGTERM/SIGINT (or `signal`) after /healthz turned 503: let active calls end
   * and flush records. `signal` aborts at `server.drain_timeout_s`.
   */
  readonly drain?: (options: { signal: AbortSignal }) => Promise<void>;
  /** Stops the server like SIGTERM does (tests). */
  readonly signal?: AbortSignal;
  readonly onListen?: (addr: Deno.NetAddr) => void;
}

/** Serves until SIGTERM/SIGINT or `signal`, then drains and resolves once the server closed. */
export async function runServer(options: RunServerOptions): Promise<void> {
  const { config, log } = options;
  let draining = false;
  const stop = new AbortController();
  const handler = createHandler({
    config,
    log,
    calls: options.calls,
    onStatusEvent: options.onStatusEvent,
    callControl: options.callControl,
    onDialEnded: options.onDialEnded,
    isDraining: () => draining,
  });
  const server = startServer({
    config,
    handler,
    signal: stop.signal,
    onListen(addr) {
      const scheme = config.server.tls_cert === null ? "http" : "https";
      const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
      log.info("HTTP", "listening", { url: `${scheme}://${host}:${addr.port}` });
      options.onListen?.(addr);
    },
  });

  const { promise: stopRequested, resolve: requestStop } = Promise.withResolvers<string>();
  const onSigterm = () => requestStop("SIGTERM");
  const onSigint = () => requestStop("SIGINT");
  const onAbort = () => requestStop("abort");
  Deno.addSignalListener("SIGTERM", onSigterm);
  Deno.addSignalListener("SIGINT", onSigint);
  options.signal?.addEventListener("abort", onAbort, { once: true });
  if (options.signal?.aborted) onAbort();
  try {
    const reason = await Promise.race([stopRequested, server.finished.then(() => "closed")]);
    draining = true;
    log.info("HTTP", "draining", { reason, drain_timeout_s: config.server.drain_timeout_s });
    if (options.drain) {
      const deadline = new AbortController();
      const timer = setTimeout(
        () => deadline.abort(new DOMException("Drain timed out", "TimeoutError")),
        config.server.drain_timeout_s * 1000,
      );
      try {
        await options.drain({ signal: deadline.signal });
      } catch (error) {
        log.error("HTTP", "drain failed", {
          error: error instanceof Error ? error.message : String(error),
        });
      } finally {
        clearTimeout(timer);
      }
    }
  } finally {
    Deno.removeSignalListener("SIGTERM", onSigterm);
    Deno.removeSignalListener("SIGINT", onSigint);
    options.signal?.removeEventListener("abort", onAbort);
    stop.abort();
    await server.finished;
  }
  log.info("HTTP", "stopped");
}
