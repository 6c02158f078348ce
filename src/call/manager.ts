/**
 * `CallManager`: owns every live `CallSession`, admits new media sockets under `server.max_calls`,
 * and drains on shutdown. A failure inside one call ends at most that call.
 */
import type { AudioConfig, CallConfig, LogConfig, ServerConfig } from "../config/types.ts";
import type { Logger } from "../observe/log.ts";
import type { CallEnded, CallStore } from "../store/types.ts";
import type { SttProvider } from "../stt/types.ts";
import { settlesWithin } from "./_cap.ts";
import type { AgentFactory } from "./agent.ts";
import type { HandOffBoard } from "./hand_off.ts";
import { type Scheduler, sharedScheduler } from "./scheduler.ts";
import { CallSession } from "./session.ts";
import type { LiveCall, LiveSnapshot } from "./live.ts";

/** Process-level last line of containment; `runKav` installs it (see `_session_escape.ts`). */
export { installEscapeHandlers } from "./_session_escape.ts";
/** The call scope every socket handler runs in, also timed by `scripts/bench_containment.ts`. */
export { type CallScope, inCallScope } from "./_session_escape.ts";

/** The config slices the call core reads. */
export interface CallCoreConfig {
  readonly server: Pick<
    ServerConfig,
    "max_calls" | "max_ws_message_bytes" | "idle_media_timeout_s" | "max_call_duration_s"
  >;
  readonly audio: AudioConfig;
  readonly call: Pick<CallConfig, "language">;
  readonly log: LogConfig;
}

export interface CallManagerDeps {
  readonly config: CallCoreConfig;
  readonly stt: SttProvider;
  readonly store: CallStore;
  /** Root logger (the manager adds `call=` per call). */
  readonly logger: Logger;
  /** Creates each call's agent at `start`. Without one, a call is recorded and hears nothing. */
  readonly agentFactory?: AgentFactory;
  /** Defaults to the process-wide shared scheduler. */
  readonly scheduler?: Scheduler;
  /** Agent transfers and hang-ups wait here for Twilio's action requests (SPEC 6). */
  readonly handOffs?: HandOffBoard;
}

export interface DrainResult {
  /** Calls that ended by themselves within the timeout. */
  readonly finished: number;
  /** Calls closed (outcome `drained`) when the timeout ran out. */
  readonly forced: number;
}

/** WebSocket close code "try again later" (RFC 6455 registry). */
const TRY_AGAIN_LATER = 1013;

export class CallManager {
  readonly #deps: CallManagerDeps;
  readonly #scheduler: Scheduler;
  readonly #sessions = new Set<CallSession>();
  #draining = false;
  #connections = 0;

  constructor(deps: CallManagerDeps) {
    this.#deps = deps;
    this.#scheduler = deps.scheduler ?? sharedScheduler();
  }

  /** Calls with a live socket. */
  get active(): number {
    return this.#sessions.size;
  }

  /** Whether `drain()` was called. */
  get draining(): boolean {
    return this.#draining;
  }

  /** True while under `server.max_calls` and not draining. */
  canAccept(): boolean {
    return !this.#draining && this.#sessions.size < this.#deps.config.server.max_calls;
  }

  /**
   * Takes ownership of a socket from `Deno.upgradeWebSocket` (open or opening) and runs the call on
   * it. Over capacity or while draining, the socket is closed with 1013 ("try again later").
   * Returns the session, or null when refused.
   */
  attach(socket: WebSocket, meta: { remoteAddr: string }): CallSession | null {
    const connectionId = `conn-${++this.#connections}`;
    const { config, logger } = this.#deps;
    if (!this.canAccept()) {
      logger.warn("CALL", "media socket refused", {
        conn: connectionId,
        remote: meta.remoteAddr,
        active: this.#sessions.size,
        draining: this.#draining,
      });
      refuse(socket);
      return null;
    }
    logger.info("CALL", "media socket accepted", { conn: connectionId, remote: meta.remoteAddr });
    const session = new CallSession(socket, {
      server: config.server,
      audio: config.audio,
      language: config.call.language,
      transcripts: config.log.transcripts,
      stt: this.#deps.stt,
      store: this.#deps.store,
      log: logger,
      agentFactory: this.#deps.agentFactory,
      scheduler: this.#scheduler,
      connectionId,
      remoteAddr: meta.remoteAddr,
      handOffs: this.#deps.handOffs,
    });
    this.#sessions.add(session);
    session.done.then(() => this.#sessions.delete(session));
    return session;
  }

  /** The live sessions (a snapshot). */
  sessions(): CallSession[] {
    return [...this.#sessions];
  }

  /** Every call in progress as the operator console shows it (read-only). */
  live(): LiveSnapshot {
    const calls: LiveCall[] = [];
    for (const session of this.#sessions) calls.push(session.live());
    return { at: Date.now(), calls };
  }

  /**
   * Stops accepting calls, waits up to `timeoutMs` for the active ones to end by themselves (less
   * if `signal` aborts, e.g. a second SIGTERM), then closes the rest (outcome `drained`) and waits
   * for their records.
   */
  async drain(options: { timeoutMs: number; signal?: AbortSignal }): Promise<DrainResult> {
    this.#draining = true;
    const all = [...this.#sessions];
    if (all.length === 0) return { finished: 0, forced: 0 };
    this.#deps.logger.info("CALL", "draining", {
      active: all.length,
      timeout_ms: options.timeoutMs,
    });
    const dones: Promise<CallEnded>[] = all.map((s) => s.done);
    await settlesWithin(Promise.all(dones), Math.max(0, options.timeoutMs), options.signal);
    const remaining = all.filter((s) => this.#sessions.has(s));
    if (remaining.length > 0) {
      this.#deps.logger.warn("CALL", "drain timeout, closing active calls", {
        closing: remaining.length,
      });
      await Promise.all(remaining.map((s) => s.end("drained", "drain timeout")));
    }
    return { finished: all.length - remaining.length, forced: remaining.length };
  }
}

function refuse(socket: WebSocket): void {
  const close = () => {
    try {
      socket.close(TRY_AGAIN_LATER, "busy");
    } catch {
      // Already closed.
    }
  };
  if (socket.readyState === WebSocket.CONNECTING) {
    socket.addEventListener("open", close, { once: true });
  } else close();
}
