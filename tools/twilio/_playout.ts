/**
 * The receiving half of `TwilioClient`: checks every message against the exact outbound shapes
 * Twilio accepts, plays media on a virtual clock (20 ms per 160 bytes), measures the agent's frame
 * cadence, and echoes each mark when the audio before it would have finished, or at once on
 * `clear` (twilio-media-streams.md 2).
 *
 * With `fastMedia`, a media message is recognised by its exact prefix and its size read from the
 * base64 length, without JSON parsing or decoding (what a load generator of hundreds of calls can
 * afford); every other message is still parsed and checked.
 */
import { FRAME_MS } from "../../src/audio/frames.ts";
import type { Scheduler, Task } from "../../src/call/scheduler.ts";
import { MsHistogram } from "../stats.ts";

export interface ReceivedMessage {
  /** Arrival time, ms on the client's scheduler clock. */
  readonly at: number;
  readonly event: string;
  readonly data: Readonly<Record<string, unknown>>;
}

export interface MarkEchoRecord {
  readonly name: string;
  /** When the mark arrived and when it was echoed, ms. */
  readonly receivedAt: number;
  readonly echoedAt: number;
  /** Echoed because of a `clear` (its audio may not have played). */
  readonly cleared: boolean;
}

/** Told of what the server sends as it arrives (times in ms on the scheduler clock). */
export interface TwilioClientListener {
  /** A media message carrying `bytes` bytes of audio. */
  media?(at: number, bytes: number): void;
  mark?(at: number, name: string): void;
  clear?(at: number): void;
  /** A mark went back to the server: its audio played, or a `clear` flushed it. */
  echo?(name: string, at: number, cleared: boolean): void;
  /** A message that is not one of Twilio's accepted outbound shapes; `raw` null when binary. */
  invalid?(raw: string | null, why: string): void;
  /** An error thrown while echoing marks (default: reported on stderr). */
  error?(error: unknown): void;
}

interface PendingMark {
  readonly name: string;
  readonly receivedAt: number;
  readonly due: number;
}

/** A parsed outbound message, or why it is not one of Twilio's accepted shapes. */
type Outbound =
  | { readonly event: "media"; readonly payload: string; readonly data: Record<string, unknown> }
  | { readonly event: "mark"; readonly name: string; readonly data: Record<string, unknown> }
  | { readonly event: "clear"; readonly data: Record<string, unknown> }
  | { readonly event: "invalid"; readonly why: string };

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function exactKeys(value: unknown, keys: readonly string[]): value is Record<string, unknown> {
  return isObject(value) && Object.keys(value).length === keys.length &&
    keys.every((k) => k in value);
}

/** Checks one message against the exact shapes Twilio accepts, for the stream `streamSid`. */
function parseOutbound(raw: string, streamSid: string): Outbound {
  let data: unknown;
  try {
    data = JSON.parse(raw);
  } catch {
    return { event: "invalid", why: "not JSON" };
  }
  if (!isObject(data)) return { event: "invalid", why: "not an object" };
  if (data.streamSid !== streamSid) return { event: "invalid", why: "wrong streamSid" };
  switch (data.event) {
    case "media":
      return exactKeys(data, ["event", "streamSid", "media"]) &&
          exactKeys(data.media, ["payload"]) && typeof data.media.payload === "string"
        ? { event: "media", payload: data.media.payload, data }
        : { event: "invalid", why: "bad media shape" };
    case "mark":
      return exactKeys(data, ["event", "streamSid", "mark"]) && exactKeys(data.mark, ["name"]) &&
          typeof data.mark.name === "string"
        ? { event: "mark", name: data.mark.name, data }
        : { event: "invalid", why: "bad mark shape" };
    case "clear":
      return exactKeys(data, ["event", "streamSid"])
        ? { event: "clear", data }
        : { event: "invalid", why: "bad clear shape" };
    default:
      return { event: "invalid", why: `unknown event ${JSON.stringify(data.event)}` };
  }
}

/** Decoded size of `length` base64 characters ending in `padding` "=" signs. */
function base64Bytes(length: number, padding: number): number {
  return (length >> 2) * 3 - padding;
}

export interface PlayoutOptions {
  readonly scheduler: Scheduler;
  readonly streamSid: string;
  readonly keepAudio: boolean;
  readonly keepMessages: boolean;
  readonly fastMedia: boolean;
  /** Sends a mark's echo; null: marks are not echoed. */
  readonly echo: ((name: string) => void) | null;
  readonly listener: TwilioClientListener | undefined;
}

export class Playout {
  readonly received: ReceivedMessage[] = [];
  readonly mediaArrivals: number[] = [];
  readonly marks: string[] = [];
  readonly echoes: MarkEchoRecord[] = [];
  readonly clears: number[] = [];
  readonly invalid: string[] = [];
  /** Intervals between consecutive media messages with no mark or clear between them, ms. */
  readonly interArrival: MsHistogram = new MsHistogram();
  mediaFrames = 0;
  underruns = 0;
  /** Such intervals over two frames' time (40 ms). */
  gapsOver40 = 0;
  lastMediaAt = NaN;
  /** When the audio received so far will have played, ms. */
  playoutEnd = -Infinity;
  readonly #o: PlayoutOptions;
  readonly #scheduler: Scheduler;
  readonly #listener: TwilioClientListener | undefined;
  readonly #mediaPrefix: string;
  readonly #pending: PendingMark[] = [];
  readonly #task: Task;
  readonly #checks = new Set<() => void>();
  #chunks: Uint8Array[] = [];
  #markSinceMedia = true;
  #closed = false;

  constructor(options: PlayoutOptions) {
    this.#o = options;
    this.#scheduler = options.scheduler;
    this.#listener = options.listener;
    this.#mediaPrefix = `{"event":"media","streamSid":${
      JSON.stringify(options.streamSid)
    },"media":{"payload":"`;
    this.#task = options.scheduler.task(
      (now) => this.#echoDue(now),
      options.listener?.error?.bind(options.listener),
    );
  }

  /** Marks received and not yet echoed. */
  get pendingEchoes(): number {
    return this.#pending.length;
  }

  /** Handles one WebSocket message from the server. */
  receive(raw: unknown): void {
    const at = this.#scheduler.now();
    if (typeof raw !== "string") {
      this.#invalid(null, "binary frame");
      return;
    }
    const prefix = this.#mediaPrefix;
    if (this.#o.fastMedia && raw.startsWith(prefix) && raw.endsWith('"}}')) {
      const length = raw.length - prefix.length - 3;
      const padding = raw.charCodeAt(raw.length - 4) === 61
        ? (raw.charCodeAt(raw.length - 5) === 61 ? 2 : 1)
        : 0;
      const keep = this.#o.keepAudio || this.#o.keepMessages;
      const payload = keep ? raw.slice(prefix.length, raw.length - 3) : null;
      if (this.#o.keepMessages) {
        const data = { event: "media", streamSid: this.#o.streamSid, media: { payload } };
        this.#record(at, "media", data);
      }
      this.#media(at, base64Bytes(length, padding), payload);
      this.#check();
      return;
    }
    const message = parseOutbound(raw, this.#o.streamSid);
    switch (message.event) {
      case "media": {
        const payload = message.payload;
        const padding = payload.endsWith("==") ? 2 : payload.endsWith("=") ? 1 : 0;
        this.#record(at, "media", message.data);
        this.#media(at, base64Bytes(payload.length, padding), payload);
        break;
      }
      case "mark":
        this.#record(at, "mark", message.data);
        this.#mark(at, message.name);
        break;
      case "clear":
        this.#record(at, "clear", message.data);
        this.#clear(at);
        break;
      case "invalid":
        this.#invalid(raw, message.why);
        return;
    }
    this.#check();
  }

  /** Everything received as audio, in order. */
  audio(): Uint8Array {
    let length = 0;
    for (const c of this.#chunks) length += c.length;
    const out = new Uint8Array(length);
    let offset = 0;
    for (const c of this.#chunks) {
      out.set(c, offset);
      offset += c.length;
    }
    return out;
  }

  /** The socket closed: stop echoing, settle waiters. */
  closed(): void {
    this.#closed = true;
    this.#task.cancel();
    this.#check();
  }

  waitFor(predicate: () => boolean, options: { timeoutMs: number; what?: string }): Promise<void> {
    if (predicate()) return Promise.resolve();
    const what = options.what ?? "condition";
    return new Promise((resolve, reject) => {
      const finish = (error?: Error) => {
        clearTimeout(timer);
        this.#checks.delete(check);
        if (error) reject(error);
        else resolve();
      };
      const check = () => {
        if (predicate()) finish();
        else if (this.#closed) finish(new Error(`Socket closed before ${what}`));
      };
      const timer = setTimeout(
        () => finish(new Error(`Timed out after ${options.timeoutMs} ms waiting for ${what}`)),
        options.timeoutMs,
      );
      this.#checks.add(check);
      if (this.#closed) check();
    });
  }

  #check(): void {
    if (this.#checks.size === 0) return;
    for (const check of [...this.#checks]) check();
  }

  #record(at: number, event: string, data: Readonly<Record<string, unknown>>): void {
    if (this.#o.keepMessages) this.received.push({ at, event, data });
  }

  #invalid(raw: string | null, why: string): void {
    this.invalid.push(raw ?? "<binary>");
    this.#listener?.invalid?.(raw, why);
    this.#check();
  }

  #media(at: number, bytes: number, payload: string | null): void {
    if (this.#o.keepAudio && payload !== null) this.#chunks.push(Uint8Array.fromBase64(payload));
    // Within one utterance (no mark since the previous frame): the cadence, and whether the
    // playout ran dry before this frame came (an audible gap).
    if (!this.#markSinceMedia) {
      const interval = at - this.lastMediaAt;
      this.interArrival.add(interval);
      if (interval > 2 * FRAME_MS) this.gapsOver40++;
      if (this.playoutEnd < at) this.underruns++;
    }
    this.#markSinceMedia = false;
    this.lastMediaAt = at;
    this.playoutEnd = Math.max(this.playoutEnd, at) + bytes / 8;
    this.mediaFrames++;
    if (this.#o.keepMessages) this.mediaArrivals.push(at);
    this.#listener?.media?.(at, bytes);
  }

  #mark(at: number, name: string): void {
    this.marks.push(name);
    this.#markSinceMedia = true;
    this.#listener?.mark?.(at, name);
    if (this.#o.echo === null) return;
    // "when the audio ends (or if there is no audio buffered)"
    this.#pending.push({ name, receivedAt: at, due: Math.max(at, this.playoutEnd) });
    if (!this.#task.scheduled) this.#task.at(this.#pending[0].due);
  }

  #clear(at: number): void {
    this.clears.push(at);
    this.playoutEnd = at;
    this.#markSinceMedia = true;
    this.#task.cancel();
    this.#listener?.clear?.(at);
    for (const mark of this.#pending.splice(0)) this.#send(mark, at, true);
  }

  #echoDue(now: number): void {
    let sent = 0;
    while (sent < this.#pending.length && this.#pending[sent].due <= now) {
      this.#send(this.#pending[sent], now, false);
      sent++;
    }
    this.#pending.splice(0, sent);
    if (this.#pending.length > 0 && !this.#closed) this.#task.at(this.#pending[0].due);
    this.#check();
  }

  #send(mark: PendingMark, at: number, cleared: boolean): void {
    if (this.#closed) return;
    this.echoes.push({ name: mark.name, receivedAt: mark.receivedAt, echoedAt: at, cleared });
    this.#o.echo?.(mark.name);
    this.#listener?.echo?.(mark.name, at, cleared);
  }
}
