/**
 * `CallManager`: owns every live `CallSession` of its event loop, admits new media sockets under
 * `server.max_calls` (a count shared by every call worker, see `admission.ts`), and drains on
 * shutdown. A failure inside one call ends at most that call.
 */
import type { AudioConfig, CallConfig, LogConfig, ServerConfig } from "../config/types.ts";
import type { Logger } from "../observe/log.ts";
import type { CallEnded, CallStore } from "../store/types.ts";
import type { SttProvider } from "../stt/types.ts";
import { settlesWithin } from "./_cap.ts";
import { type CallAdmission, LocalAdmission } from "./admission.ts";
import type { AgentFactory } from "./agent.ts";
import type { HandOffs } from "./hand_off.ts";
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
  /** The `max_calls` count; defaults to this manager's own (calls on one event loop). */
  readonly admission?: CallAdmission;
  /** Which call worker this is (named on each accepted socket's log line); null on the main thread. */
  readonly worker?: number | null;
  /** Agent transfers and hang-ups wait here for Twilio's action requests (SPEC 6). */
  readonly handOffs?: HandOffs;
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
  readonly #admission: CallAdmission;
  readonly #sessions = new Set<CallSession>();
  #draining = false;

  constructor(deps: CallManagerDeps) {
    this.#deps = deps;
    this.#scheduler = deps.scheduler ?? sharedScheduler();
    this.#admission = deps.admission ?? new LocalAdmission(deps.config.server.max_calls);
  }

  /** Calls with a live socket. */
  get active(): number {
    return this.#sessions.size;
  }

  /** Whether `drain()` was called. */
  get draining(): boolean {
    return this.#draining;
  }

  /** True while under `server.max_calls` (process-wide) and not draining. */
  canAccept(): boolean {
    return !this.#draining && this.#admission.taken() < this.#admission.max;
  }

  /**
   * Takes ownership of a socket from `Deno.upgradeWebSocket` (open or opening) and runs the call on
   * it. Over capacity or while draining, the socket is closed with 1013 ("try again later").
   * Returns the session, or null when refused.
   */
  attach(socket: WebSocket, meta: { remoteAddr: string }): CallSession | null {
    const connectionId = `conn-${this.#admission.nextConnection()}`;
    const { logger } = this.#deps;
    const worker = this.#deps.worker ?? null;
    // One atomic take: of many sockets arriving at once on any worker, at most max_calls get in.
    if (this.#draining || !this.#admission.tryTake()) {
      logger.warn("CALL", "media socket refused", {
        conn: connectionId,
        remote: meta.remoteAddr,
        active: this.#admission.taken(),
        draining: this.#draining,
        ...(worker === null ? {} : { worker }),
      });
      refuse(socket);
      return null;
    }
    logger.info("CALL", "media socket accepted", {
      conn: connectionId,
      remote: meta.remoteAddr,
      ...(worker === null ? {} : { worker }),
    });
    let session: CallSession;
    try {
      session = this.#newSession(socket, connectionId, meta.remoteAddr);
    } catch (error) {
      this.#admission.give();
      throw error;
    }
    this.#sessions.add(session);
    session.done.then(() => {
      this.#sessions.delete(session);
      this.#admission.give();
    });
    return session;
  }

  #newSession(socket: WebSocket, connectionId: string, remoteAddr: string): CallSession {
    const { config, logger } = this.#deps;
    return new CallSession(socket, {
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
      remoteAddr,
      handOffs: this.#deps.handOffs,
    });
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
      // The close frames must reach Twilio before the process stops: wait for each handshake
      // (capped: a peer that never answers it does not hold the stop up).
      await settlesWithin(
        Promise.all(remaining.map((s) => s.socketClosed)),
        CLOSE_HANDSHAKE_CAP_MS,
      );
    }
    return { finished: all.length - remaining.length, forced: remaining.length };
  }
}

/** How long a drain waits for the close handshakes of the calls it closed, ms. */
const CLOSE_HANDSHAKE_CAP_MS = 1000;

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
