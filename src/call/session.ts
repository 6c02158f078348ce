/**
 * One Twilio media stream, one WebSocket: `CallSession` owns the socket, the speech session, the
 * RX/TX queues and workers, and the call's AbortController (SPEC 2). Malformed input is logged,
 * counted and skipped; an error inside the call ends only this call. Control events (dtmf, mark,
 * stop) are handled on receipt and never enter rx_q, so they can never be dropped or delayed
 * behind audio waiting for STT; only media goes through rx_q.
 */
import { followingLogger, type Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import type { CallCounters, CallEnded, CallEventKind, CallOutcome } from "../store/types.ts";
import type { SpeechSession } from "../stt/types.ts";
import { InboundStream } from "../twilio/inbound_stream.ts";
import {
  looksLikeMedia,
  type MalformedReason,
  type MediaMessage,
  type StartMessage,
} from "../twilio/protocol.ts";
import type { CallAgent, HandOff, Resume } from "./agent.ts";
import { CLOSE_STEP_CAP_MS, closeCapped, settlesWithin } from "./_cap.ts";
import { recordStart, resumeOf, type SessionDeps, startStream } from "./_session_start.ts";
import { type CallScope, inCallScope } from "./_session_escape.ts";
import {
  CallLimits,
  logTelemetry,
  StallWatch,
  Telemetry,
  type TelemetryWindow,
  TX_STALL_CLOSE_S,
} from "./_session_timers.ts";
import type { LiveCall, LiveLine } from "./live.ts";
import { MarkTracker } from "./marks.ts";
import { QueueOutbound } from "./outbound.ts";
import { RxQueue } from "./rx_queue.ts";
import { RxWorker } from "./rx_worker.ts";
import { TxWorker } from "./tx_worker.ts";
import { consumeSpeech } from "./_speech_results.ts";

export type { SessionDeps };

/** Malformed messages (and unknown mark echoes) logged per call; the rest are only counted. */
const MALFORMED_LOG_LIMIT = 20;
const isMedia = (_frame: Uint8Array) => true;
/** How long a call that failed before `start` waits for it, to be recorded under its CallSid, ms. */
const START_GRACE_MS = 2000;

export class CallSession {
  readonly connectionId: string;
  /** Resolves when the call has ended and been recorded; never rejects. */
  readonly done: Promise<CallEnded>;
  readonly #deps: SessionDeps;
  readonly #socket: WebSocket;
  readonly #controller = new AbortController();
  readonly #marks = new MarkTracker();
  readonly #rxQueue: RxQueue<Uint8Array>;
  readonly #inbound: InboundStream;
  readonly #limits: CallLimits;
  readonly #telemetry: Telemetry;
  #resolveDone!: (ended: CallEnded) => void;
  #log: Logger;
  #speech: SpeechSession | null = null;
  /** Settles once every speech result was handed to the agent. */
  #speechConsumed: Promise<void> = Promise.resolve();
  #rx: RxWorker | null = null;
  #tx: TxWorker | null = null;
  #outbound: QueueOutbound | null = null;
  #agent: CallAgent | null = null;
  #start: StartMessage["start"] | null = null;
  #ending = false;
  readonly #socketClosed = Promise.withResolvers<void>();
  /** A hand-off is on its way to the board: the agent's further hand-offs are ignored. */
  #handingOff = false;
  #malformed = 0;
  #unknownMarks = 0;
  /** A failure before `start` (no CallSid to record it under yet), and its cap timer. */
  #earlyFailure: string | null = null;
  #earlyFailureTimer: ReturnType<typeof setTimeout> | undefined;
  #windowIn = 0;
  /** The last telemetry second, and the caller's last partial or final (for the live view). */
  #lastWindow: TelemetryWindow | null = null;
  #callerLine: LiveLine | null = null;
  readonly #connectedAt = Date.now();
  readonly #stall = new StallWatch();
  /** For the workers and the speech session: logs as `call=<connection id>`, then `<CallSid>`. */
  readonly #followingLog: Logger = followingLogger(() => this.#log);
  /** Lets escaped errors find this call (see `_session_escape.ts`). */
  readonly #scope: CallScope = {
    sid: () => this.callSid ?? this.connectionId,
    fail: (error) => this.#fail(error),
  };

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
    // A decoded frame lives in rx_q at most (everything else copies it), and only accepted media
    // takes a slot, so queue capacity + 2 slots are never overwritten while in use.
    this.#inbound = new InboundStream({
      maxBytes: deps.server.max_ws_message_bytes,
      payloadSlots: deps.audio.rx_queue_frames + 2,
    });
    const fail = (error: unknown) => this.#fail(error);
    this.#limits = new CallLimits(deps.scheduler, deps.server, (outcome, reason) => {
      this.#event("limit", reason);
      this.#log.info("CALL", "limit reached", { outcome, reason });
      this.end(outcome, reason);
    }, fail);
    this.#telemetry = new Telemetry(deps.scheduler, () => this.#logTelemetry(), fail);
    metrics.callStarted();
    socket.binaryType = "arraybuffer";
    // Each entry point runs in the call's scope, so whatever async work it starts stays attributed
    // to this call if an error ever escapes it. Except media frames, 50 a second: they only queue
    // audio and feed VAD, and a scope per frame cost about 400 bytes of garbage each.
    const scope = this.#scope;
    socket.addEventListener("message", (event) => {
      if (looksLikeMedia(event.data)) this.#onMessage(event);
      else inCallScope(scope, this.#onMessage, event);
    });
    socket.addEventListener("close", () => {
      this.#socketClosed.resolve();
      const early = this.#earlyFailure;
      this.end(early === null ? "interrupted" : "error", early ?? "socket closed");
    });
    socket.addEventListener("error", () => this.#log.warn("WS", "socket error"));
    if (socket.readyState === WebSocket.OPEN) inCallScope(scope, this.#open);
    else if (socket.readyState === WebSocket.CONNECTING) {
      socket.addEventListener("open", () => inCallScope(scope, this.#open), { once: true });
    } else this.end("interrupted", "socket closed before attach");
  }

  /** Resolves once the socket is closed (the close handshake done, or the connection gone). */
  get socketClosed(): Promise<void> {
    return this.#socketClosed.promise;
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
   * The outbound backlog: bytes the socket holds unsent (TX pauses above
   * `audio.tx_max_buffered_bytes`), frames in the TX queue, TX ticks skipped on a stalled socket.
   */
  get txBacklog(): { bufferedBytes: number; queuedFrames: number; pausedTicks: number } {
    return {
      bufferedBytes: this.#socket.bufferedAmount,
      queuedFrames: this.#tx?.queue.size ?? 0,
      pausedTicks: this.#tx?.pausedTicks ?? 0,
    };
  }

  /** The call as the live view shows it (read-only; cheap enough to call every second). */
  live(): LiveCall {
    const params = this.#start?.customParameters;
    const agent = this.#agent?.live?.() ?? null;
    const window = this.#lastWindow;
    const agentLine = agent?.lastAgentLine ?? null;
    const callerLine = this.#callerLine;
    return {
      callSid: this.callSid,
      connectionId: this.connectionId,
      from: params?.["From"] ?? null,
      to: params?.["To"] ?? null,
      connectedAt: this.#connectedAt,
      state: agent?.state ?? (this.#start === null ? "connecting" : "listening"),
      media: {
        rxFps: window?.rxFps ?? 0,
        rxQueue: this.#rxQueue.size,
        rxDrops: this.#rxQueue.drops,
        txFps: window?.txFps ?? 0,
        txQueue: this.#tx?.queue.size ?? 0,
        txLate: this.#tx?.lateTicks ?? 0,
        txLateMsMax: window?.txLateMsMax ?? 0,
        malformed: this.#malformed,
      },
      lastLine: agentLine === null || (callerLine !== null && callerLine.at >= agentLine.at)
        ? callerLine
        : agentLine,
      lastTurnLatencyMs: agent?.lastTurnLatencyMs ?? null,
    };
  }

  /**
   * Ends the call (idempotent): abort, stop the workers, close the agent and the speech session
   * (each awaited with a cap), close the socket, record the end. Resolves with the record.
   */
  end(outcome: CallOutcome, reason: string): Promise<CallEnded> {
    if (!this.#ending) {
      this.#ending = true;
      inCallScope(this.#scope, () => this.#shutdown(outcome, reason)).catch((error) => {
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

  #open = (): void => {
    if (this.#ending) return;
    try {
      this.#onOpen();
    } catch (error) {
      this.#fail(error);
    }
  };

  #onOpen(): void {
    const deps = this.#deps;
    const fail = (error: unknown) => this.#fail(error);
    this.#rx = new RxWorker({ queue: this.#rxQueue, scheduler: deps.scheduler, onError: fail });
    this.#rx.start();
    this.#log.info("CALL", "RX_WORKER started");
    this.#tx = new TxWorker({
      socket: this.#socket,
      scheduler: deps.scheduler,
      marks: this.#marks,
      log: this.#followingLog,
      queueFrames: deps.audio.tx_queue_frames,
      leadMs: deps.audio.tx_lead_ms,
      maxBufferedBytes: deps.audio.tx_max_buffered_bytes,
      onError: fail,
    });
    this.#outbound = new QueueOutbound(this.#tx, this.#marks, () => this.#event("clear", ""));
    this.#log.info("CALL", "TX_WORKER started");
    // Opened at connect, in parallel with the greeting; audio waits in rx_q until it is ready.
    const speech = deps.stt.open({
      language: deps.language,
      signal: this.#controller.signal,
      log: this.#followingLog,
    });
    this.#speech = speech;
    this.#rx.attach(speech);
    this.#log.info("CALL", "STT_SESSION init requested");
    // `ready` never rejects by contract; a provider that breaks it ends only this call.
    speech.ready.then(() => {
      if (!this.#ending) this.#log.info("CALL", "STT_SESSION ready");
    }, fail);
    this.#speechConsumed = consumeSpeech(speech, {
      log: () => this.#log,
      transcripts: deps.transcripts,
      event: (kind, detail) => this.#event(kind, detail),
      deliver: (event) => {
        if (event.type === "partial" || event.type === "final") {
          const final = event.type === "final";
          this.#callerLine = { speaker: "caller", text: event.text, final, at: Date.now() };
        }
        this.#agent?.onSpeech(event);
      },
      fail,
    });
    this.#limits.start();
    this.#telemetry.start();
  }

  #onMessage = (event: MessageEvent): void => {
    if (this.#ending) return;
    try {
      // Validated for this stream (src/twilio): from here on every message is the call's own.
      const read = this.#inbound.read(event.data);
      if (!read.ok) return this.#reject(read.reason, read.error);
      const msg = read.msg;
      switch (msg.event) {
        case "connected":
          return;
        case "start":
          return this.#onStart(msg);
        case "media":
          return this.#onMedia(msg);
        case "dtmf":
          this.#event("dtmf", msg.dtmf.digit);
          this.#agent?.onDtmf(msg.dtmf.digit);
          return;
        case "mark":
          return this.#onMark(msg.mark.name);
        case "stop":
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
  };

  #onStart(msg: StartMessage): void {
    const start = msg.start;
    this.#start = start;
    this.#log = this.#deps.log.child({ call: start.callSid });
    if (this.#earlyFailure !== null) {
      this.#log.error("CALL", "call failed before start", { error: this.#earlyFailure });
      recordStart(start, this.#deps);
      this.end("error", this.#earlyFailure);
      return;
    }
    const resume = resumeOf(start, this.#deps);
    if (!(resume instanceof Promise)) return this.#startStream(start, resume);
    // A caller connected back after a transfer, on a call worker: the main thread's board answers
    // first (media waits in rx_q meanwhile, as before STT is ready).
    resume.then((known) => {
      if (this.#ending) return;
      try {
        inCallScope(this.#scope, () => this.#startStream(start, known));
      } catch (error) {
        this.#fail(error);
      }
    });
  }

  #startStream(start: StartMessage["start"], resume: Resume | null): void {
    const tx = this.#tx;
    const out = this.#outbound;
    if (tx === null || out === null) throw new Error("Cannot start a stream before socket open");
    this.#agent = startStream({
      resume,
      start,
      deps: this.#deps,
      connectionId: this.connectionId,
      log: this.#log,
      tx,
      out,
      signal: this.#controller.signal,
      hangup: (reason) => {
        this.end("completed", reason);
      },
      handOff: (handOff) => this.#handOff(start.callSid, handOff),
    });
  }

  /**
   * The agent's transfer or hang-up: the board learns what to answer Twilio's `<Connect action>`
   * before the socket closes (Twilio requests it right after), then the call ends as that.
   */
  #handOff(callSid: string, handOff: HandOff): void {
    if (this.#ending || this.#handingOff) return;
    const board = this.#deps.handOffs;
    if (board === undefined) {
      this.#log.warn("CALL", "hand-off refused: no hand-off board", { kind: handOff.action.kind });
      return;
    }
    const action = handOff.action;
    const endAsActed = () => {
      if (action.kind === "transfer") {
        this.end("transferred", `transfer to ${action.department}`);
      } else this.end("agent_hangup", "end_call");
    };
    let stored: void | Promise<void>;
    try {
      stored = board.set(callSid, handOff);
    } catch (error) {
      stored = Promise.reject(error);
    }
    if (stored === undefined) return endAsActed();
    // On a call worker the board is the main thread's: the socket closes only once it holds the
    // entry, so the `<Connect action>` request (on any worker) finds it.
    this.#handingOff = true;
    stored.then(endAsActed, (error) => {
      this.#log.error("CALL", "hand-off not stored: ending the call", {
        kind: action.kind,
        error: error instanceof Error ? error.message : String(error),
      });
      this.end("error", "hand-off not stored");
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
      // Bounded like malformed messages: a peer echoing junk must not flood the log.
      if (++this.#unknownMarks <= MALFORMED_LOG_LIMIT) {
        this.#log.warn("WS", "unknown mark echoed", { name: name.slice(0, 64) });
      }
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

  /** Records a call event once the call has a CallSid (the store only enqueues). */
  #event(kind: CallEventKind, detail: string): void {
    const sid = this.callSid;
    if (sid !== null) this.#deps.store.event(sid, { kind, at: Date.now(), detail });
  }

  #fail(error: unknown): void {
    const message = error instanceof Error ? error.message : String(error);
    this.#log.error("CALL", "call failed", { error: message });
    if (this.#start !== null || this.#ending) {
      this.end("error", message);
    } else if (this.#earlyFailure === null) {
      // No CallSid yet, so nothing could be recorded. Twilio sends `start` right after connecting:
      // wait for it (capped) so the failed call still leaves a record.
      this.#earlyFailure = message;
      this.#earlyFailureTimer = setTimeout(() => this.end("error", message), START_GRACE_MS);
    }
  }

  #logTelemetry(): void {
    if (this.#rx === null || this.#tx === null) return;
    this.#checkStall(this.#tx);
    this.#lastWindow = logTelemetry(this.#log, {
      rx: this.#rx,
      rxQueue: this.#rxQueue,
      tx: this.#tx,
      framesIn: this.#windowIn,
    });
    this.#windowIn = 0;
  }

  /** Closes a call whose socket stayed stalled (see `StallWatch`); memory was bounded meanwhile. */
  #checkStall(tx: TxWorker): void {
    const seconds = this.#stall.tick(tx);
    if (seconds < TX_STALL_CLOSE_S) return;
    this.#log.warn("TX", "socket stalled, closing", {
      buffered: this.#socket.bufferedAmount,
      stalled_s: seconds,
    });
    this.#event("limit", `socket stalled ${seconds} s`);
    this.end("interrupted", "socket stalled");
  }

  async #shutdown(outcome: CallOutcome, reason: string): Promise<void> {
    clearTimeout(this.#earlyFailureTimer);
    this.#limits.stop();
    this.#telemetry.stop();
    this.#tx?.stop();
    const speech = this.#speech;
    if (outcome === "completed" && speech !== null) {
      // The caller hung up: STT gets the audio still queued and ends its stream cleanly, so the
      // caller's last words are transcribed and reach the agent (and the record) before it closes.
      this.#rx?.stop({ flush: true });
      await closeCapped("speech", () => speech.close(), this.#log);
      await settlesWithin(this.#speechConsumed, CLOSE_STEP_CAP_MS);
    } else {
      this.#rx?.stop({ flush: false });
    }
    this.#controller.abort(new Error(`Call ended: ${reason}`));
    const agent = this.#agent;
    if (agent !== null) await closeCapped("agent", () => agent.close(), this.#log);
    if (speech !== null) await closeCapped("speech", () => speech.close(), this.#log);
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

/** The per-call counters stored with the call's end. */
function counters(
  rx: RxQueue<Uint8Array>,
  tx: TxWorker | null,
  malformed: number,
): CallCounters {
  return {
    rx_frames: rx.received,
    rx_drops: rx.drops,
    tx_frames: tx?.framesSent ?? 0,
    tx_drops: 0,
    tx_late: tx?.lateTicks ?? 0,
    malformed,
  };
}
