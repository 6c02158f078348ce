/**
 * The operator console's own listener (SPEC 7), apart from the public port Twilio reaches: on
 * `admin.listen` (default 127.0.0.1:9090), TLS with the server's certificate when it has one. With
 * no token it stays off (the config refuses a non-loopback address without one).
 */
import { startServer } from "../app.ts";
import type { Config } from "../config/types.ts";
import { hasHistory } from "../store/history.ts";
import { type AdminDeps, createAdminHandler } from "./handler.ts";

export interface AdminServer {
  /** "http://127.0.0.1:9090" (the bound port when `admin.listen` asked for 0). */
  readonly url: string;
  /** Stops accepting, ends the live feeds, and resolves once the listener closed. */
  close(): Promise<void>;
}

/** Why the console is not served, or null when it is. */
export function consoleOff(config: Config): string | null {
  if (config.admin.listen === null) return 'admin.listen is ""';
  if (config.admin.token === null) {
    return "no token: set env KAV_ADMIN_TOKEN or the systemd credential admin_token";
  }
  return null;
}

/**
 * Binds the admin listener and serves the console; resolves once listening. Throws when the
 * address cannot be bound (as the public port does) or the console is off (see `consoleOff`).
 */
export async function startAdminServer(deps: AdminDeps): Promise<AdminServer> {
  const { config, log } = deps;
  const off = consoleOff(config);
  const listen = config.admin.listen;
  if (off !== null || listen === null) throw new TypeError(`Cannot serve the console: ${off}`);
  const handler = createAdminHandler(deps);
  const stop = new AbortController();
  const listening = Promise.withResolvers<Deno.NetAddr>();
  // The public listener's TLS files and options; only the address differs.
  const server = startServer({
    config: {
      ...config,
      server: { ...config.server, hostname: listen.hostname, port: listen.port },
    },
    handler,
    signal: stop.signal,
    onListen: (addr) => listening.resolve(addr),
  });
  const addr = await listening.promise;
  const scheme = config.server.tls_cert === null ? "http" : "https";
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  const url = `${scheme}://${host}:${addr.port}`;
  log.info("ADMIN", "console listening", { url });
  let closed: Promise<void> | null = null;
  return {
    url,
    close() {
      closed ??= (async () => {
        handler.close();
        stop.abort();
        await server.finished;
      })();
      return closed;
    },
  };
}

/** The console with its history, as `runKav` starts it; `close()` stops both. */
export interface RunningConsole {
  readonly url: string;
  close(): Promise<void>;
}

/**
 * Starts the console when the config has it on (else logs why not and resolves null), reading the
 * history of `store` when it keeps one.
 */
export async function startConsole(
  deps: Omit<AdminDeps, "history"> & { readonly store: object },
): Promise<RunningConsole | null> {
  const off = consoleOff(deps.config);
  if (off !== null) {
    deps.log.info("ADMIN", "console off", { reason: off });
    return null;
  }
  const history = hasHistory(deps.store) ? await deps.store.openHistory() : null;
  let server: AdminServer;
  try {
    server = await startAdminServer({ ...deps, history });
  } catch (error) {
    await history?.close();
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(`Cannot start the console on admin.listen: ${reason}`, { cause: error });
  }
  return {
    url: server.url,
    async close() {
      await server.close();
      await history?.close();
    },
  };
}
