/**
 * One scripted Twilio call for `simulate.ts` and the benchmarks: the Voice URL request and the
 * stream status callbacks (`http.ts`), and the media stream through `TwilioClient` (`connected`,
 * `start`, `media` at 50 fps on an absolute 20 ms schedule, marks echoed when their audio has
 * played, `stop`), all as Twilio does (twilio-media-streams.md).
 *
 * The caller: silence while the greeting plays, then one line (a clip), then silence until the
 * agent's answer has played, for `turns` turns, then silence until `minDurationMs`, then `stop`.
 *
 * Cheap enough for hundreds of calls in one process: every call's clock is a task on one shared
 * scheduler (one timer), media payloads are base64-encoded once for all calls, and with `strict`
 * off received media is recognised by its exact prefix without JSON parsing or base64 decoding
 * (other messages are parsed and checked).
 */
import { FRAME_MS } from "../../src/audio/frames.ts";
import type { Scheduler, Task } from "../../src/call/scheduler.ts";
import { MsHistogram } from "../stats.ts";
import { newSid, TwilioClient } from "./client.ts";
import {
  connectUrl,
  type KavTarget,
  postStreamEvent,
  requestTwiml,
  signatureHeaders,
} from "./http.ts";

/** A caller utterance, pre-encoded: one base64 payload per 20 ms frame. */
export interface CallerLine {
  readonly name: string;
  /** What it says (the sandbox recognizes the fixture clips); "" when unknown. */
  readonly text: string;
  readonly frames: readonly string[];
}

export interface SimCallOptions {
  readonly index: number;
  readonly target: KavTarget;
  readonly scheduler: Scheduler;
  /** Spoken in turn, starting at `index % lines.length`. */
  readonly lines: readonly CallerLine[];
  readonly turns: number;
  /** The caller keeps streaming (silence) until the call is this old, ms. */
  readonly minDurationMs: number;
  readonly greetingTimeoutMs: number;
  readonly answerTimeoutMs: number;
  /** An answer is over when all its marks came back and no agent audio came for this long, ms. */
  readonly quietMs: number;
  /** Silence the caller leaves after the agent finished before speaking, ms. */
  readonly pauseMs: number;
  /** POST the stream status callbacks and the `<Connect action>` as Twilio does. */
  readonly statusCallbacks: boolean;
  /** Speak the first line at once, over the greeting (start-of-call audio tests). */
  readonly speakFirst?: boolean;
  /** Parse and check every received message (otherwise only non-media ones). */
  readonly strict: boolean;
  readonly totals: SimTotals;
  readonly signal: AbortSignal;
}

/** Live counters shared by all calls of a run (for the progress line). */
export interface SimTotals {
  started: number;
  active: number;
  finished: number;
  framesSent: number;
  framesReceived: number;
  turnsPlayed: number;
  turnsAnswered: number;
  errors: number;
}

export function newTotals(): SimTotals {
  return {
    started: 0,
    active: 0,
    finished: 0,
    framesSent: 0,
    framesReceived: 0,
    turnsPlayed: 0,
    turnsAnswered: 0,
    errors: 0,
  };
}

export interface TurnResult {
  readonly line: string;
  readonly text: string;
  /** The agent's answer arrived: marks other than the greeting's, all echoed, then quiet. */
  readonly answered: boolean;
  /** Caller's last frame sent → first answer frame received, ms; null when none came. */
  readonly answerLatencyMs: number | null;
  readonly answerFrames: number;
  /** Mark names Kav sent after this line (e.g. "a1_0", "a1_1"). */
  readonly marks: readonly string[];
}

export interface CallResult {
  readonly index: number;
  readonly callSid: string;
  readonly streamSid: string;
  /** Greeting received (or begun and cut by a caller who speaks first), every turn answered, no error. */
  readonly ok: boolean;
  readonly greeting: {
    /** At least one frame and the `greeting_end` mark arrived. */
    readonly received: boolean;
    /** `start` sent → first agent frame received, ms. */
    readonly firstFrameMs: number | null;
    readonly frames: number;
  };
  /** WebSocket upgrade request → socket open, ms (null if it never opened). */
  readonly upgradeMs: number | null;
  readonly turns: readonly TurnResult[];
  readonly framesSent: number;
  readonly framesReceived: number;
  readonly marksReceived: number;
  readonly clears: number;
  /** Intervals between consecutive agent frames with no mark between them, ms. */
  readonly interArrival: MsHistogram;
  /** Such intervals over 40 ms (two frames' time). */
  readonly gapsOver40: number;
  /** Agent frames that arrived after the playout had run dry within one utterance (audible). */
  readonly underruns: number;
  readonly durationMs: number;
  readonly errors: readonly string[];
}

type Phase = "connecting" | "greeting" | "pause" | "speaking" | "awaiting" | "tail" | "done";

/** μ-law silence (0xFF), one 20 ms frame, base64. */
export const SILENCE_FRAME: string = new Uint8Array(160).fill(0xff).toBase64();
/** `connected` → `start`: sent apart so Nagle cannot hold `start` behind `connected`, ms. */
const START_DELAY_MS = 50;
/** A frame tick this late restarts the caller's clock (no burst), ms. */
const RESYNC_MS = 200;
/** A peer that never answers the close handshake must not hang the run, ms. */
const CLOSE_TIMEOUT_MS = 5000;

/** Runs one call to its end; never rejects (failures are in `errors`). */
export function runCall(options: SimCallOptions): Promise<CallResult> {
  return new SimCall(options).run();
}

class SimCall {
  readonly #o: SimCallOptions;
  readonly callSid = newSid("CA");
  readonly streamSid = newSid("MZ");
  readonly accountSid = "AC" + "0".repeat(32);
  readonly #errors: string[] = [];
  readonly #turns: TurnResult[] = [];
  #client: TwilioClient | null = null;
  #tick: Task | null = null;
  #phase: Phase = "connecting";
  #next = 0;
  #openedAt = NaN;
  #startSentAt = NaN;
  #firstFrameAt = NaN;
  #greetingFrames = 0;
  #greetingMarked = false;
  #greetingEchoed = false;
  #framesSent = 0;
  #turn = 0;
  #pauseUntil = 0;
  #line: CallerLine | null = null;
  #linePos = 0;
  #lineEndAt = 0;
  #answerFirstAt = NaN;
  #answerFrames = 0;
  #answerMarks: string[] = [];
  #finished = Promise.withResolvers<void>();
  #closedByUs = false;
  #statusCallback: string | null = null;
  #action: string | null = null;
  #callbacks: Promise<unknown>[] = [];

  constructor(options: SimCallOptions) {
    this.#o = options;
  }

  async run(): Promise<CallResult> {
    const o = this.#o;
    const totals = o.totals;
    totals.started++;
    totals.active++;
    const began = o.scheduler.now();
    try {
      await this.#connect();
      if (this.#client !== null) await this.#finished.promise;
    } catch (error) {
      this.#error(error instanceof Error ? error.message : String(error));
    } finally {
      this.#tick?.cancel();
      o.signal.removeEventListener("abort", this.#onAbort);
      this.#phase = "done";
      this.#closedByUs = true;
      await this.#client?.close({ timeoutMs: CLOSE_TIMEOUT_MS });
      await Promise.allSettled(this.#callbacks);
      totals.active--;
      totals.finished++;
    }
    const client = this.#client;
    // A caller who speaks first barges in: the greeting starts, then `clear` cuts it before its
    // mark was sent, as it should.
    const greetingCut = this.#o.speakFirst === true && (client?.clears.length ?? 0) > 0;
    const greetingOk = (this.#greetingEchoed || greetingCut) && this.#greetingFrames > 0;
    return {
      index: o.index,
      callSid: this.callSid,
      streamSid: this.streamSid,
      ok: greetingOk && this.#errors.length === 0 && this.#turns.length === o.turns &&
        this.#turns.every((t) => t.answered),
      greeting: {
        received: greetingOk,
        firstFrameMs: Number.isNaN(this.#firstFrameAt)
          ? null
          : this.#firstFrameAt - this.#startSentAt,
        frames: this.#greetingFrames,
      },
      upgradeMs: client === null || Number.isNaN(client.upgradeMs) ? null : client.upgradeMs,
      turns: this.#turns,
      framesSent: this.#framesSent,
      framesReceived: client?.mediaFrames ?? 0,
      marksReceived: client?.marks.length ?? 0,
      clears: client?.clears.length ?? 0,
      interArrival: client?.interArrival ?? new MsHistogram(),
      gapsOver40: client?.gapsOver40 ?? 0,
      underruns: client?.underruns ?? 0,
      durationMs: o.scheduler.now() - began,
      errors: this.#errors,
    };
  }

  async #connect(): Promise<void> {
    const o = this.#o;
    const twiml = await requestTwiml(o.target, {
      callSid: this.callSid,
      accountSid: this.accountSid,
      from: `+9725${(10_000_000 + o.index).toString().slice(-8)}`,
      to: "+97230000000",
    }, { signal: o.signal });
    if (twiml.kind === "busy") throw new Error("Kav answered busy (<Reject>)");
    this.#statusCallback = twiml.statusCallback;
    this.#action = twiml.action;
    let client: TwilioClient;
    try {
      client = await TwilioClient.connect({
        url: connectUrl(o.target, twiml.streamUrl),
        headers: signatureHeaders(o.target, twiml.streamUrl),
        callSid: this.callSid,
        streamSid: this.streamSid,
        accountSid: this.accountSid,
        // Twilio passes the TwiML's <Parameter>s on as customParameters.
        customParameters: twiml.parameters,
        scheduler: o.scheduler,
        keepAudio: false,
        keepMessages: false,
        fastMedia: !o.strict,
        listener: this.#listener,
      });
    } catch {
      throw new Error(`Cannot open WebSocket for stream ${JSON.stringify(twiml.streamUrl)}`);
    }
    this.#client = client;
    client.closed.then((event) => {
      if (!this.#closedByUs && this.#phase !== "done") {
        this.#error(
          `Kav closed the socket (code ${event.code}${event.reason ? ` ${event.reason}` : ""})`,
        );
      }
      this.#finished.resolve();
    });
    // Interrupted (Ctrl-C): hang up like a caller, with `stop`.
    o.signal.addEventListener("abort", this.#onAbort, { once: true });
    this.#openedAt = o.scheduler.now();
    client.sendConnected();
    this.#tick = o.scheduler.task((now) => this.#onTick(now), (error) => this.#fail(error));
    this.#next = this.#openedAt + START_DELAY_MS;
    this.#tick.at(this.#next);
  }

  /** What the call does with what Kav sends (the client has already checked and timed it). */
  readonly #listener = {
    media: (at: number, _bytes: number): void => {
      if (this.#phase === "done") return;
      if (Number.isNaN(this.#firstFrameAt)) this.#firstFrameAt = at;
      this.#o.totals.framesReceived++;
      if (this.#phase === "awaiting") {
        this.#answerFrames++;
        if (Number.isNaN(this.#answerFirstAt)) this.#answerFirstAt = at;
      } else if (!this.#greetingMarked) {
        this.#greetingFrames++;
      }
    },
    mark: (_at: number, name: string): void => {
      if (name === "greeting_end") this.#greetingMarked = true;
      else if (this.#phase === "awaiting") this.#answerMarks.push(name);
    },
    echo: (name: string): void => {
      if (name === "greeting_end") this.#greetingEchoed = true;
    },
    invalid: (raw: string | null, why: string): void => {
      if (this.#phase === "done") return;
      this.#error(
        raw === null
          ? "Kav sent a binary frame"
          : `Kav sent an invalid message (${why}): ${raw.slice(0, 80)}`,
      );
    },
    error: (error: unknown): void => this.#fail(error),
  };

  #sendStart(now: number): void {
    this.#client?.sendStart();
    this.#startSentAt = now;
    this.#phase = "greeting";
    this.#streamEvent(this.#statusCallback, "stream-started");
  }

  #onTick(now: number): void {
    if (this.#phase === "done") return;
    if (this.#phase === "connecting") {
      this.#sendStart(now);
      this.#schedule(now);
      return;
    }
    const o = this.#o;
    let payload = SILENCE_FRAME;
    switch (this.#phase) {
      case "greeting":
        if (o.speakFirst === true && this.#turn === 0) {
          this.#pauseUntil = now;
          this.#phase = "pause";
        } else if (this.#greetingEchoed) this.#pause(now);
        else if (now - this.#startSentAt > o.greetingTimeoutMs) {
          this.#error(`No greeting within ${o.greetingTimeoutMs} ms`);
          this.#pause(now);
        }
        break;
      case "pause":
        if (now >= this.#pauseUntil) {
          if (this.#turn < o.turns) {
            this.#line = o.lines[(o.index + this.#turn) % o.lines.length];
            this.#linePos = 0;
            this.#phase = "speaking";
            o.totals.turnsPlayed++;
          } else {
            this.#phase = "tail";
          }
        }
        break;
      case "awaiting":
        this.#checkAnswer(now);
        break;
      case "tail":
        if (now - this.#openedAt >= o.minDurationMs) {
          this.#stop();
          return;
        }
        break;
      case "speaking":
        break;
    }
    if (this.#phase === "speaking") {
      const line = this.#line as CallerLine;
      payload = line.frames[this.#linePos++];
      if (this.#linePos >= line.frames.length) {
        this.#phase = "awaiting";
        this.#lineEndAt = now;
        this.#answerFirstAt = NaN;
        this.#answerFrames = 0;
        this.#answerMarks = [];
      }
    }
    this.#client?.sendEncodedMedia(payload);
    this.#framesSent++;
    o.totals.framesSent++;
    this.#schedule(now);
  }

  #schedule(now: number): void {
    this.#next += FRAME_MS;
    if (now - this.#next > RESYNC_MS) this.#next = now + FRAME_MS;
    this.#tick?.at(this.#next);
  }

  #pause(now: number): void {
    this.#phase = "pause";
    this.#pauseUntil = now + this.#o.pauseMs;
  }

  #checkAnswer(now: number): void {
    const o = this.#o;
    const client = this.#client as TwilioClient;
    const answered = this.#answerMarks.length > 0 && client.pendingEchoes === 0 &&
      now - client.lastMediaAt >= o.quietMs && client.playoutEndsAt <= now;
    const timedOut = now - this.#lineEndAt > o.answerTimeoutMs;
    if (!answered && !timedOut) return;
    const line = this.#line as CallerLine;
    this.#turns.push({
      line: line.name,
      text: line.text,
      answered,
      answerLatencyMs: Number.isNaN(this.#answerFirstAt)
        ? null
        : this.#answerFirstAt - this.#lineEndAt,
      answerFrames: this.#answerFrames,
      marks: this.#answerMarks,
    });
    if (answered) o.totals.turnsAnswered++;
    else this.#error(`No answer to "${line.name}" within ${o.answerTimeoutMs} ms`);
    this.#turn++;
    this.#pause(now);
  }

  readonly #onAbort = (): void => {
    if (this.#phase !== "done") this.#stop();
  };

  #stop(): void {
    this.#phase = "done";
    this.#tick?.cancel();
    this.#client?.sendStop();
    this.#streamEvent(this.#statusCallback, "stream-stopped");
    this.#streamEvent(this.#action, "stream-stopped");
    this.#finished.resolve();
  }

  #streamEvent(url: string | null, streamEvent: string): void {
    if (!this.#o.statusCallbacks || url === null) return;
    const o = this.#o;
    this.#callbacks.push(
      postStreamEvent(o.target, url, {
        callSid: this.callSid,
        accountSid: this.accountSid,
        streamSid: this.streamSid,
        streamEvent,
      }).then((status) => {
        if (status !== 204) this.#error(`Status callback ${streamEvent} answered HTTP ${status}`);
      }, (error) => this.#error(`Status callback ${streamEvent} failed: ${String(error)}`)),
    );
  }

  #fail(error: unknown): void {
    this.#error(error instanceof Error ? error.message : String(error));
    this.#finished.resolve();
  }

  #error(message: string): void {
    if (this.#errors.length < 20) this.#errors.push(message);
    this.#o.totals.errors++;
  }
}
