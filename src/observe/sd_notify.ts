/**
 * systemd readiness protocol (sd_notify(3)) without libsystemd: datagrams of `KEY=value` lines sent
 * to `$NOTIFY_SOCKET`. A no-op when NOTIFY_SOCKET is unset (not under systemd, tests, dev).
 *
 * Deno's "unixpacket" transport is an AF_UNIX SOCK_DGRAM socket, which is what systemd listens on;
 * it needs `--unstable-net` (baked into `deno task compile` and the bundle launcher). We bind our own
 * end in the abstract namespace so no file is left behind and only `--allow-net` is needed for it;
 * sending to a path socket needs `--allow-write=<that path>` (`/run/systemd/notify` under systemd).
 * An abstract NOTIFY_SOCKET (`@name`, as systemd-nspawn and some containers use) works too.
 */
import type { Logger } from "./log.ts";

/** Where the notifier finds `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. */
export type EnvReader = (name: string) => string | undefined;

export interface SdNotifierOptions {
  /** Socket path from `NOTIFY_SOCKET`; `@name` means the abstract namespace; null disables. */
  readonly socketPath: string | null;
  /** Watchdog interval from `WATCHDOG_USEC`, in microseconds; null when systemd set none. */
  readonly watchdogUsec: number | null;
  /** Failures to send are logged once under `[SYSTEMD]`, never thrown. */
  readonly log?: Logger;
}

export interface WatchdogOptions {
  readonly signal: AbortSignal;
  /** Sent as `STATUS=` with each tick when it changed, e.g. "3 active calls". */
  readonly status?: () => string;
  /** Tick interval when systemd asked for no watchdog but `status` is given, in ms (default 5000). */
  readonly statusIntervalMs?: number;
}

interface DatagramSocket {
  send(p: Uint8Array, addr: { transport: "unixpacket"; path: string }): Promise<number>;
  close(): void;
}

type ListenDatagram = (o: { transport: "unixpacket"; path: string }) => DatagramSocket;

const encoder = new TextEncoder();

/** Reads the notify settings from the environment (`Deno.env` by default). */
export function sdNotifierFromEnv(
  options: { env?: EnvReader; log?: Logger; pid?: number } = {},
): SdNotifier {
  const env = options.env ?? readEnv;
  const socketPath = env("NOTIFY_SOCKET") || null;
  const usec = Number(env("WATCHDOG_USEC") ?? "");
  // systemd sets WATCHDOG_PID so a child that inherited the env knows the watchdog is not for it.
  const watchdogPid = env("WATCHDOG_PID");
  const forUs = watchdogPid === undefined || Number(watchdogPid) === (options.pid ?? Deno.pid);
  const watchdogUsec = Number.isFinite(usec) && usec > 0 && forUs ? usec : null;
  return new SdNotifier({ socketPath, watchdogUsec, log: options.log });
}

function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no env permission for it: behave as if unset
  }
}

/** Sends READY/WATCHDOG/STATUS/STOPPING to systemd; every method is safe to call when disabled. */
export class SdNotifier {
  readonly #target: string | null;
  readonly #watchdogUsec: number | null;
  readonly #log: Logger | undefined;
  #socket: DatagramSocket | null = null;
  #tail: Promise<void> = Promise.resolve();
  #failed = false;
  #closed = false;
  #lastStatus = "";

  constructor(options: SdNotifierOptions) {
    const path = options.socketPath;
    this.#target = path === null || path === "" ? null : path.replace(/^@/, "\0");
    this.#watchdogUsec = options.watchdogUsec;
    this.#log = options.log;
  }

  /** Whether NOTIFY_SOCKET was set (messages are actually sent). */
  get enabled(): boolean {
    return this.#target !== null;
  }

  /** Watchdog ping interval in ms (half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or null. */
  get watchdogIntervalMs(): number | null {
    return this.#watchdogUsec === null ? null : Math.max(1, Math.floor(this.#watchdogUsec / 2000));
  }

  /** `READY=1`: listening and the greeting cache is warm. */
  ready(status?: string): Promise<void> {
    return this.notify(status === undefined ? "READY=1" : `READY=1\n${statusLine(status)}`);
  }

  /** `WATCHDOG=1`: the event loop is alive. */
  watchdog(): Promise<void> {
    return this.notify("WATCHDOG=1");
  }

  /** `STATUS=<text>` (newlines become spaces). */
  status(text: string): Promise<void> {
    this.#lastStatus = text;
    return this.notify(statusLine(text));
  }

  /**
   * `STOPPING=1` at the start of a drain. `extendTimeoutMs` also asks systemd for that much more
   * stop time (EXTEND_TIMEOUT_USEC), so a drain_timeout_s above TimeoutStopSec is not cut short.
   */
  stopping(options: { status?: string; extendTimeoutMs?: number } = {}): Promise<void> {
    const lines = ["STOPPING=1"];
    if (options.status !== undefined) lines.push(statusLine(options.status));
    if (options.extendTimeoutMs !== undefined && options.extendTimeoutMs > 0) {
      lines.push(`EXTEND_TIMEOUT_USEC=${Math.round(options.extendTimeoutMs * 1000)}`);
    }
    return this.notify(lines.join("\n"));
  }

  /**
   * Pings `WATCHDOG=1` every half WATCHDOG_USEC until `signal` aborts, adding `STATUS=` when the
   * status text changed. Without a watchdog it only refreshes the status (when given).
   */
  startWatchdog(options: WatchdogOptions): void {
    const { signal, status } = options;
    const watchdogMs = this.watchdogIntervalMs;
    const everyMs = watchdogMs ?? (status ? options.statusIntervalMs ?? 5000 : null);
    if (!this.enabled || everyMs === null || signal.aborted) return;
    const tick = () => {
      const lines: string[] = [];
      if (watchdogMs !== null) lines.push("WATCHDOG=1");
      const text = status?.();
      if (text !== undefined && text !== this.#lastStatus) {
        this.#lastStatus = text;
        lines.push(statusLine(text));
      }
      if (lines.length > 0) void this.notify(lines.join("\n"));
    };
    const timer = setInterval(tick, everyMs);
    signal.addEventListener("abort", () => clearInterval(timer), { once: true });
  }

  /**
   * Sends one raw message (`KEY=value` lines). Messages go out in call order; the promise resolves
   * once this one was sent or dropped, and never rejects.
   */
  notify(message: string): Promise<void> {
    if (this.#target === null || this.#closed) return Promise.resolve();
    const target = this.#target;
    this.#tail = this.#tail.then(() => this.#send(target, message));
    return this.#tail;
  }

  /** Waits for queued messages, then releases the socket. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#tail;
    this.#socket?.close();
    this.#socket = null;
  }

  async #send(target: string, message: string): Promise<void> {
    try {
      this.#socket ??= openSocket();
      await this.#socket.send(encoder.encode(message), { transport: "unixpacket", path: target });
    } catch (error) {
      if (this.#failed) return;
      // Logged once: systemd then kills us on the watchdog or start timeout, which says the rest.
      this.#failed = true;
      this.#log?.error("SYSTEMD", "notify failed", {
        socket: target.replace(/^\0/, "@"),
        error: error instanceof Error ? error.message : String(error),
      });
    }
  }
}

function statusLine(text: string): string {
  return `STATUS=${text.replace(/[\r\n]+/g, " ")}`;
}

function openSocket(): DatagramSocket {
  const listen = (Deno as unknown as { listenDatagram?: ListenDatagram }).listenDatagram;
  if (typeof listen !== "function") {
    throw new Error("Cannot open the notify socket: Deno.listenDatagram needs --unstable-net");
  }
  // Abstract address: nothing on disk to clean up, and unique per process.
  const suffix = crypto.getRandomValues(new Uint32Array(1))[0].toString(16);
  return listen({ transport: "unixpacket", path: `\0kav-notify-${Deno.pid}-${suffix}` });
}
