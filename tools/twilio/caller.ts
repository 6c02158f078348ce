/**
 * One simulated Twilio call for `simulate.ts` and the benchmarks: the Voice URL request, the media
 * WebSocket (`connected`, `start`, `media` at 50 fps on an absolute 20 ms schedule, `stop`), marks
 * echoed when the audio before them would have finished playing (or at once on `clear`), and the
 * stream status callbacks, all as Twilio does (twilio-media-streams.md).
 *
 * The caller: silence while the greeting plays, then one line (a clip), then silence until the
 * agent's answer has played, for `turns` turns, then silence until `minDurationMs`, then `stop`.
 *
 * Cheap enough for hundreds of calls in one process: every call's clock is a task on one shared
 * scheduler (one timer), media payloads are base64-encoded once for all calls, and received media
 * is recognised by its exact prefix without JSON parsing or base64 decoding (other messages are
 * parsed and checked).
 */
import { FRAME_MS } from "../../src/audio/frames.ts";
import type { Scheduler, Task } from "../../src/call/scheduler.ts";
import { MsHistogram } from "../stats.ts";
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

interface PendingMark {
  readonly name: string;
  readonly due: number;
}

/** μ-law silence (0xFF), one 20 ms frame, base64. */
export const SILENCE_FRAME: string = new Uint8Array(160).fill(0xff).toBase64();
/** `connected` → `start`: sent apart so Nagle cannot hold `start` behind `connected`, ms. */
const START_DELAY_MS = 50;
/** A frame tick this late restarts the caller's clock (no burst), ms. */
const RESYNC_MS = 200;

let sidCounter = 0;

function newSid(prefix: string): string {
  const random = crypto.getRandomValues(new Uint8Array(8));
  let hex = "";
  for (const byte of random) hex += byte.toString(16).padStart(2, "0");
  return prefix + hex + (++sidCounter).toString(16).padStart(16, "0");
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function exactKeys(value: unknown, keys: readonly string[]): value is Record<string, unknown> {
  return isRecord(value) && Object.keys(value).length === keys.length &&
    keys.every((k) => k in value);
}

/** A parsed outbound message, or why it is not one of Twilio's accepted shapes. */
type Outbound =
  | { readonly event: "media"; readonly bytes: number }
  | { readonly event: "mark"; readonly name: string }
  | { readonly event: "clear" }
  | { readonly event: "invalid"; readonly why: string };

function base64Bytes(length: number, padding: number): number {
  return (length >> 2) * 3 - padding;
}

/** Checks one message against the exact shapes Twilio accepts (twilio-media-streams.md 2). */
function parseOutbound(raw: string, streamSid: string): Outbound {
  let data: unknown;
  try {
    data = JSON.parse(raw);
  } catch {
    return { event: "invalid", why: "not JSON" };
  }
  if (!isRecord(data)) return { event: "invalid", why: "not an object" };
  if (data.streamSid !== streamSid) return { event: "invalid", why: "wrong streamSid" };
  switch (data.event) {
    case "media":
      if (
        exactKeys(data, ["event", "streamSid", "media"]) && exactKeys(data.media, ["payload"]) &&
        typeof data.media.payload === "string"
      ) {
        const payload = data.media.payload;
        return {
          event: "media",
          bytes: base64Bytes(
            payload.length,
            payload.endsWith("==") ? 2 : payload.endsWith("=") ? 1 : 0,
          ),
        };
      }
      return { event: "invalid", why: "bad media shape" };
    case "mark":
      if (
        exactKeys(data, ["event", "streamSid", "mark"]) && exactKeys(data.mark, ["name"]) &&
        typeof data.mark.name === "string"
      ) {
        return { event: "mark", name: data.mark.name };
      }
      return { event: "invalid", why: "bad mark shape" };
    case "clear":
      return exactKeys(data, ["event", "streamSid"])
        ? { event: "clear" }
        : { event: "invalid", why: "bad clear shape" };
    default:
      return { event: "invalid", why: `unknown event ${JSON.stringify(data.event)}` };
  }
}

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
  readonly #histogram = new MsHistogram();
  readonly #pending: PendingMark[] = [];
  readonly #turns: TurnResult[] = [];
  #socket: WebSocket | null = null;
  #tick: Task | null = null;
  #echo: Task | null = null;
  #phase: Phase = "connecting";
  #mediaPrefix = "";
  #parameters: Readonly<Record<string, string>> = {};
  #seq = 0;
  #chunk = 0;
  #next = 0;
  #openedAt = NaN;
  #startSentAt = NaN;
  // Receiving side.
  #framesReceived = 0;
  #marksReceived = 0;
  #clears = 0;
  #lastMediaAt = NaN;
  #markSinceMedia = true;
  #playoutEnd = -Infinity;
  #firstFrameAt = NaN;
  #upgradeMs: number | null = null;
  #greetingFrames = 0;
  #greetingMarked = false;
  #greetingEchoed = false;
  #gaps = 0;
  #underruns = 0;
  // Sending side.
  #framesSent = 0;
  #pauseUntil = 0;
  #turn = 0;
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
      if (this.#socket !== null) await this.#finished.promise;
    } catch (error) {
      this.#error(error instanceof Error ? error.message : String(error));
    } finally {
      this.#tick?.cancel();
      this.#echo?.cancel();
      o.signal.removeEventListener("abort", this.#onAbort);
      this.#phase = "done";
      await this.#close();
      await Promise.allSettled(this.#callbacks);
      totals.active--;
      totals.finished++;
    }
    // A caller who speaks first barges in: the greeting starts, then `clear` cuts it before its
    // mark was sent, as it should.
    const greetingCut = this.#o.speakFirst === true && this.#clears > 0;
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
      upgradeMs: this.#upgradeMs,
      turns: this.#turns,
      framesSent: this.#framesSent,
      framesReceived: this.#framesReceived,
      marksReceived: this.#marksReceived,
      clears: this.#clears,
      interArrival: this.#histogram,
      gapsOver40: this.#gaps,
      underruns: this.#underruns,
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
    const sid = JSON.stringify(this.streamSid);
    this.#mediaPrefix = `{"event":"media","streamSid":${sid},"media":{"payload":"`;
    this.#parameters = twiml.parameters;
    const socket = new WebSocket(connectUrl(o.target, twiml.streamUrl), {
      protocols: ["audio.twilio.com"],
      headers: signatureHeaders(o.target, twiml.streamUrl),
    });
    this.#socket = socket;
    const upgradeStartedAt = performance.now();
    const opened = Promise.withResolvers<void>();
    socket.addEventListener("open", () => opened.resolve(), { once: true });
    socket.addEventListener("error", () => {
      opened.reject(
        new Error(`Cannot open WebSocket for stream ${JSON.stringify(twiml.streamUrl)}`),
      );
    }, { once: true });
    socket.addEventListener("close", (event) => {
      if (!this.#closedByUs && this.#phase !== "done") {
        this.#error(
          `Kav closed the socket (code ${event.code}${event.reason ? ` ${event.reason}` : ""})`,
        );
      }
      this.#finished.resolve();
    });
    await opened.promise;
    this.#upgradeMs = performance.now() - upgradeStartedAt;
    socket.addEventListener("message", (event) => this.#receive(event.data));
    // Interrupted (Ctrl-C): hang up like a caller, with `stop`.
    o.signal.addEventListener("abort", this.#onAbort, { once: true });
    this.#openedAt = o.scheduler.now();
    this.#send('{"event":"connected","protocol":"Call","version":"1.0.0"}');
    this.#tick = o.scheduler.task((now) => this.#onTick(now), (error) => this.#fail(error));
    this.#echo = o.scheduler.task((now) => this.#onEcho(now), (error) => this.#fail(error));
    this.#next = this.#openedAt + START_DELAY_MS;
    this.#tick.at(this.#next);
  }

  #sendStart(now: number): void {
    this.#send(JSON.stringify({
      event: "start",
      sequenceNumber: String(++this.#seq),
      streamSid: this.streamSid,
      start: {
        accountSid: this.accountSid,
        streamSid: this.streamSid,
        callSid: this.callSid,
        tracks: ["inbound"],
        mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
        // Twilio passes the TwiML's <Parameter>s on as customParameters.
        customParameters: this.#parameters,
      },
    }));
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
    this.#sendMedia(payload);
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
    const answered = this.#answerMarks.length > 0 && this.#pending.length === 0 &&
      now - this.#lastMediaAt >= o.quietMs && this.#playoutEnd <= now;
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

  #sendMedia(payload: string): void {
    const chunk = ++this.#chunk;
    this.#send(
      '{"event":"media","sequenceNumber":"' + (++this.#seq) + '","streamSid":"' + this.streamSid +
        '","media":{"track":"inbound","chunk":"' + chunk + '","timestamp":"' +
        (chunk - 1) * FRAME_MS + '","payload":"' + payload + '"}}',
    );
    this.#framesSent++;
    this.#o.totals.framesSent++;
  }

  #send(text: string): void {
    const socket = this.#socket;
    if (socket !== null && socket.readyState === WebSocket.OPEN) socket.send(text);
  }

  #receive(data: unknown): void {
    if (this.#phase === "done") return;
    const now = this.#o.scheduler.now();
    if (typeof data !== "string") {
      this.#error("Kav sent a binary frame");
      return;
    }
    const prefix = this.#mediaPrefix;
    if (!this.#o.strict && data.startsWith(prefix) && data.endsWith('"}}')) {
      const length = data.length - prefix.length - 3;
      const padding = data.charCodeAt(data.length - 4) === 61
        ? (data.charCodeAt(data.length - 5) === 61 ? 2 : 1)
        : 0;
      this.#media(now, base64Bytes(length, padding));
      return;
    }
    const message = parseOutbound(data, this.streamSid);
    switch (message.event) {
      case "media":
        this.#media(now, message.bytes);
        return;
      case "mark":
        this.#mark(now, message.name);
        return;
      case "clear":
        this.#clear(now);
        return;
      case "invalid":
        this.#error(`Kav sent an invalid message (${message.why}): ${data.slice(0, 80)}`);
        return;
    }
  }

  #media(now: number, bytes: number): void {
    if (Number.isNaN(this.#firstFrameAt)) this.#firstFrameAt = now;
    if (!this.#markSinceMedia) {
      const interval = now - this.#lastMediaAt;
      this.#histogram.add(interval);
      if (interval > 2 * FRAME_MS) this.#gaps++;
      if (this.#playoutEnd < now) this.#underruns++;
    }
    this.#markSinceMedia = false;
    this.#lastMediaAt = now;
    this.#playoutEnd = Math.max(this.#playoutEnd, now) + bytes / 8;
    this.#framesReceived++;
    this.#o.totals.framesReceived++;
    if (this.#phase === "awaiting") {
      this.#answerFrames++;
      if (Number.isNaN(this.#answerFirstAt)) this.#answerFirstAt = now;
    } else if (!this.#greetingMarked) {
      this.#greetingFrames++;
    }
  }

  #mark(now: number, name: string): void {
    this.#marksReceived++;
    this.#markSinceMedia = true;
    if (name === "greeting_end") this.#greetingMarked = true;
    else if (this.#phase === "awaiting") this.#answerMarks.push(name);
    // "when the audio ends (or if there is no audio buffered)"
    this.#pending.push({ name, due: Math.max(now, this.#playoutEnd) });
    if (!(this.#echo?.scheduled ?? true)) this.#echo?.at(this.#pending[0].due);
  }

  #clear(now: number): void {
    this.#clears++;
    this.#markSinceMedia = true;
    this.#playoutEnd = now;
    this.#echo?.cancel();
    for (const mark of this.#pending.splice(0)) this.#sendEcho(mark.name);
  }

  #onEcho(now: number): void {
    let n = 0;
    while (n < this.#pending.length && this.#pending[n].due <= now) {
      this.#sendEcho(this.#pending[n].name);
      n++;
    }
    this.#pending.splice(0, n);
    if (this.#pending.length > 0) this.#echo?.at(this.#pending[0].due);
  }

  #sendEcho(name: string): void {
    if (name === "greeting_end") this.#greetingEchoed = true;
    this.#send(
      `{"event":"mark","sequenceNumber":"${++this.#seq}","streamSid":"${this.streamSid}",` +
        `"mark":{"name":${JSON.stringify(name)}}}`,
    );
  }

  readonly #onAbort = (): void => {
    if (this.#phase !== "done") this.#stop();
  };

  #stop(): void {
    this.#phase = "done";
    this.#tick?.cancel();
    this.#echo?.cancel();
    this.#send(JSON.stringify({
      event: "stop",
      sequenceNumber: String(++this.#seq),
      streamSid: this.streamSid,
      stop: { accountSid: this.accountSid, callSid: this.callSid },
    }));
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

  async #close(): Promise<void> {
    const socket = this.#socket;
    if (socket === null) return;
    this.#closedByUs = true;
    if (socket.readyState === WebSocket.CLOSED) return;
    const closed = new Promise<void>((resolve) => {
      socket.addEventListener("close", () => resolve(), { once: true });
    });
    if (socket.readyState <= WebSocket.OPEN) socket.close(1000);
    // A peer that never answers the close handshake must not hang the run.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([closed, new Promise<void>((r) => (timer = setTimeout(r, 5000)))]);
    clearTimeout(timer);
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
