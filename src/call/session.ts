/**
 * One Twilio media stream, one WebSocket: `CallSession` owns the socket, the speech session, the
 * RX/TX queues and workers, and the call's AbortController (SPEC 2). Malformed input is logged,
 * counted and skipped; an error inside the call ends only this call.
 */
import type { AudioConfig, ServerConfig } from "../config/types.ts";
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import type { CallEnded, CallOutcome, CallStore } from "../store/types.ts";
import type { SpeechSession, SttProvider } from "../stt/types.ts";
import {
  type MalformedReason,
  type MediaMessage,
  OutboundEncoder,
  parseInbound,
  type StartMessage,
} from "../twilio/protocol.ts";
import type { AgentFactory, CallAgent } from "./agent.ts";
import { settlesWithin } from "./_cap.ts";
import { CallLimits, Telemetry } from "./_session_timers.ts";
import { MarkTracker } from "./marks.ts";
import { QueueOutbound } from "./outbound.ts";
import { RxQueue } from "./rx_queue.ts";
import { RxWorker } from "./rx_worker.ts";
import type { Scheduler } from "./scheduler.ts";
import { TxWorker } from "./tx_worker.ts";
import { consumeSpeech, counters, recordEvent } from "./_session_io.ts";

/** Everything a session needs; the manager builds it. */
export interface SessionDeps {
  readonly server: Pick<
    ServerConfig,
    "max_ws_message_bytes" | "idle_media_timeout_s" | "max_call_duration_s"
  >;
  readonly audio: AudioConfig;
  /** `call.language`, passed to the speech session. */
  readonly language: string;
  /** `log.transcripts`: whether `[PARTIAL]`/`[FINAL]` lines carry the text. */
  readonly transcripts: boolean;
  readonly stt: SttProvider;
  readonly store: CallStore;
  /** The root logger; the session adds `call=<connection id>`, then `call=<CallSid>`. */
  readonly log: Logger;
  /** Cached greeting audio, raw μ-law 8000 Hz. */
  readonly greeting: () => Uint8Array;
  readonly agentFactory?: AgentFactory;
  readonly scheduler: Scheduler;
  /** Names the call in logs before `start` (e.g. "conn-12"). */
  readonly connectionId: string;
  readonly remoteAddr: string;
}

/** Cap on each shutdown step (workers, agent, speech session), ms. */
export const CLOSE_STEP_CAP_MS = 2000;
/** Malformed messages logged per call; the rest are only counted. */
const MALFORMED_LOG_LIMIT = 20;
const isMedia = (_frame: Uint8Array) => true;

export class CallSession {
  readonly connectionId: string;
  /** Resolves when the call has ended and been recorded; never rejects. */
  readonly done: Promise<CallEnded>;
  readonly #deps: SessionDeps;
  readonly #socket: WebSocket;
  readonly #controller = new AbortController();
  readonly #marks = new MarkTracker();
  readonly #rxQueue: RxQueue<Uint8Array>;
  readonly #limits: CallLimits;
  readonly #telemetry: Telemetry;
  #resolveDone!: (ended: CallEnded) => void;
  #log: Logger;
  #speech: SpeechSession | null = null;
  #rx: RxWorker | null = null;
  #tx: TxWorker | null = null;
  #outbound: QueueOutbound | null = null;
  #agent: CallAgent | null = null;
  #start: StartMessage["start"] | null = null;
  #ending = false;
  #malformed = 0;
  #windowIn = 0;

  /** Takes ownership of `socket` (from `Deno.upgradeWebSocket`, open or about to open). */
  constructor(socket: WebSocket, deps: SessionDeps) {
    this.#deps = deps;
    this.#socket = socket;
    this.connectionId = deps.connectionId;
    this.#log = deps.log.child({ call: deps.connectionId });
    this.done = new Promise((resolve) => {
      this.#resolveDone = resolve;
    });
    this.#rxQueue = new RxQueue<Uint8Array>(deps.audio.rx_queue_frames, isMedia);
    const fail = (error: unknown) => this.#fail(error);
    this.#limits = new CallLimits(deps.scheduler, deps.server, (outcome, reason) => {
      this.#event("limit", reason);
      this.#log.info("CALL", "limit reached", { outcome, reason });
      this.end(outcome, reason);
    }, fail);
    this.#telemetry = new Telemetry(deps.scheduler, () => this.#logTelemetry(), fail);
    metrics.callStarted();
    socket.binaryType = "arraybuffer";
    socket.addEventListener("message", (event) => this.#onMessage(event));
    socket.addEventListener("close", () => this.end("interrupted", "socket closed"));
    socket.addEventListener("error", () => this.#log.warn("WS", "socket error"));
    if (socket.readyState === WebSocket.OPEN) this.#open();
    else socket.addEventListener("open", () => this.#open(), { once: true });
  }

  /** Twilio's CallSid once `start` arrived, else null. */
  get callSid(): string | null {
    return this.#start?.callSid ?? null;
  }

  /** Aborted when the call ends. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** Malformed messages received so far. */
  get malformed(): number {
    return this.#malformed;
  }

  /**
   * Ends the call (idempotent): abort, stop the workers, close the agent and the speech session
   * (each awaited with a cap), close the socket, record the end. Resolves with the record.
   */
  end(outcome: CallOutcome, reason: string): Promise<CallEnded> {
    if (!this.#ending) {
      this.#ending = true;
      this.#shutdown(outcome, reason).catch((error) => {
        this.#log.error("CALL", "shutdown failed", { error: String(error) });
        this.#resolveDone({
          endedAt: Date.now(),
          outcome: "error",
          reason: "shutdown failed",
          counters: counters(this.#rxQueue, this.#tx, this.#malformed),
        });
      });
    }
    return this.done;
  }

  #open(): void {
    if (this.#ending) return;
    try {
      this.#onOpen();
    } catch (error) {
      this.#fail(error);
    }
  }

  #onOpen(): void {
    const deps = this.#deps;
    const fail = (error: unknown) => this.#fail(error);
    const speech = deps.stt.open({
      language: deps.language,
      signal: this.#controller.signal,
      log: this.#log,
    });
    this.#speech = speech;
    this.#rx = new RxWorker({
      queue: this.#rxQueue,
      speech,
      scheduler: deps.scheduler,
      onError: fail,
    });
    this.#rx.start();
    this.#log.info("CALL", "RX_WORKER started");
    this.#tx = new TxWorker({
      socket: this.#socket,
      scheduler: deps.scheduler,
      marks: this.#marks,
      log: this.#log,
      queueFrames: deps.audio.tx_queue_frames,
      leadMs: deps.audio.tx_lead_ms,
      maxBufferedBytes: deps.audio.tx_max_buffered_bytes,
      onError: fail,
    });
    this.#outbound = new QueueOutbound(this.#tx, this.#marks, () => this.#event("clear", ""));
    this.#log.info("CALL", "TX_WORKER started");
    this.#log.info("CALL", "STT_SESSION init requested");
    speech.ready.then(() => {
      if (!this.#ending) this.#log.info("CALL", "STT_SESSION ready");
    });
    consumeSpeech(speech, {
      log: () => this.#log,
      transcripts: deps.transcripts,
      event: (kind, detail) => this.#event(kind, detail),
      deliver: (event) => this.#agent?.onSpeech(event),
      fail,
    });
    this.#limits.start();
    this.#telemetry.start();
  }

  #onMessage(event: MessageEvent): void {
    if (this.#ending) return;
    try {
      const data: unknown = event.data;
      if (typeof data !== "string") return this.#reject("binary", "Cannot handle a binary frame");
      const max = this.#deps.server.max_ws_message_bytes;
      if (
        data.length > max ||
        (data.length * 3 > max && new TextEncoder().encode(data).length > max)
      ) {
        return this.#reject("oversized", `Cannot handle a message over ${max} bytes`);
      }
      const parsed = parseInbound(data);
      if (!parsed.ok) return this.#reject(parsed.reason, parsed.error);
      const msg = parsed.msg;
      switch (msg.event) {
        case "connected":
          return;
        case "start":
          if (this.#start !== null) {
            return this.#reject("duplicate_start", `Cannot start again as "${msg.streamSid}"`);
          }
          return this.#onStart(msg);
        case "media":
          if (this.#start === null) return this.#reject("before_start", "Media before start");
          if (!this.#ours(msg.streamSid)) return;
          return this.#onMedia(msg);
        case "dtmf":
          if (!this.#ours(msg.streamSid)) return;
          this.#event("dtmf", msg.dtmf.digit);
          this.#agent?.onDtmf(msg.dtmf.digit);
          return;
        case "mark":
          if (!this.#ours(msg.streamSid)) return;
          return this.#onMark(msg.mark.name);
        case "stop":
          if (!this.#ours(msg.streamSid)) return;
          this.end("completed", "stop");
          return;
        default: {
          const never: never = msg;
          throw new TypeError(`Cannot dispatch message "${JSON.stringify(never)}"`);
        }
      }
    } catch (error) {
      this.#fail(error);
    }
  }

  #ours(streamSid: string): boolean {
    if (this.#start === null) {
      this.#reject("before_start", "Stream event before start");
      return false;
    }
    if (streamSid === this.#start.streamSid) return true;
    this.#reject("wrong_stream_sid", `Cannot handle stream "${streamSid.slice(0, 64)}"`);
    return false;
  }

  #onStart(msg: StartMessage): void {
    const start = msg.start;
    this.#start = start;
    const deps = this.#deps;
    this.#log = deps.log.child({ call: start.callSid });
    this.#log.info("CALL", "started", { conn: this.connectionId, stream: start.streamSid });
    const params = start.customParameters;
    deps.store.callStarted({
      callSid: start.callSid,
      streamSid: start.streamSid,
      accountSid: start.accountSid,
      from: params["From"] ?? null,
      to: params["To"] ?? null,
      customParameters: params,
      startedAt: Date.now(),
    });
    const tx = this.#tx;
    const out = this.#outbound;
    if (tx === null || out === null) throw new Error("Cannot start a stream before socket open");
    tx.start(new OutboundEncoder(start.streamSid));
    const signal = this.#controller.signal;
    const ignore = () => {};
    out.play(deps.greeting(), { signal }).catch(ignore);
    out.mark("greeting_end", { signal }).catch(ignore);
    this.#log.info("CALL", "GREETING queued", { frames: tx.queue.size + tx.queue.waiting });
    if (deps.agentFactory === undefined) return;
    this.#agent = deps.agentFactory({
      callSid: start.callSid,
      streamSid: start.streamSid,
      accountSid: start.accountSid,
      customParameters: params,
      out,
      log: this.#log,
      signal,
      store: deps.store,
      hangup: (reason) => {
        this.end("completed", reason);
      },
    });
  }

  #onMedia(msg: MediaMessage): void {
    const payload = msg.media.payload;
    const drops = this.#rxQueue.drops;
    this.#rxQueue.tryPush(payload);
    metrics.rxFrameReceived();
    if (this.#rxQueue.drops !== drops) metrics.rxFrameDropped();
    this.#windowIn++;
    this.#limits.mediaReceived();
    this.#agent?.onInboundAudio(payload);
  }

  #onMark(name: string): void {
    const echo = this.#marks.echoed(name);
    if (echo === null) {
      this.#log.warn("WS", "unknown mark echoed", { name });
      return;
    }
    this.#event("mark", echo.played ? name : `${name} (cleared)`);
    this.#agent?.onMark(name, echo);
  }

  #reject(reason: MalformedReason, error: string): void {
    this.#malformed++;
    metrics.malformedMessage(reason);
    if (this.#malformed <= MALFORMED_LOG_LIMIT) {
      this.#log.warn("WS", "malformed message", { reason, error, n: this.#malformed });
      this.#event("malformed", reason);
    }
  }

  #event(kind: Parameters<typeof recordEvent>[2], detail: string): void {
    const sid = this.callSid;
    if (sid !== null) recordEvent(this.#deps.store, sid, kind, detail);
  }

  #fail(error: unknown): void {
    const message = error instanceof Error ? error.message : String(error);
    this.#log.error("CALL", "call failed", { error: message });
    this.end("error", message);
  }

  #logTelemetry(): void {
    const rx = this.#rx;
    const tx = this.#tx;
    if (rx === null || tx === null) return;
    const rw = rx.takeWindow();
    const tw = tx.takeWindow();
    const fpsIn = this.#windowIn;
    this.#windowIn = 0;
    const q = this.#rxQueue;
    this.#log.info("RX", "", { fps_in: fpsIn, q: q.size, drops: q.drops, write_ms: rw.writeMsMax });
    this.#log.info("TX", "", {
      fps: tw.frames,
      q: tx.queue.size,
      drops: 0,
      late_ms_max: tw.lateMsMax,
    });
  }

  async #shutdown(outcome: CallOutcome, reason: string): Promise<void> {
    this.#controller.abort(new Error(`Call ended: ${reason}`));
    this.#limits.stop();
    this.#telemetry.stop();
    this.#rx?.stop({ flush: outcome === "completed" });
    this.#tx?.stop();
    const agent = this.#agent;
    if (agent !== null) {
      const closed = await settlesWithin(safely(() => agent.close()), CLOSE_STEP_CAP_MS);
      if (!closed) this.#log.warn("CALL", "agent close timed out", { cap_ms: CLOSE_STEP_CAP_MS });
    }
    const speech = this.#speech;
    if (speech !== null) {
      const closed = await settlesWithin(safely(() => speech.close()), CLOSE_STEP_CAP_MS);
      if (!closed) this.#log.warn("CALL", "speech close timed out", { cap_ms: CLOSE_STEP_CAP_MS });
    }
    if (this.#socket.readyState <= WebSocket.OPEN) {
      try {
        this.#socket.close(1000, outcome);
      } catch {
        // Already closing: nothing to do.
      }
    }
    const ended: CallEnded = {
      endedAt: Date.now(),
      outcome,
      reason,
      counters: counters(this.#rxQueue, this.#tx, this.#malformed),
    };
    const sid = this.callSid;
    if (sid !== null) this.#deps.store.callEnded(sid, ended);
    metrics.callEnded(outcome);
    this.#log.info("CALL", "ended", { outcome, reason, ...ended.counters });
    this.#resolveDone(ended);
  }
}

function safely(run: () => Promise<void>): Promise<void> {
  try {
    return run();
  } catch (error) {
    return Promise.reject(error);
  }
}
