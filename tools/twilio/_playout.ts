/**
 * The receiving half of `TwilioClient`: records what the server sends, checks the exact outbound
 * shapes, plays media on a virtual clock and echoes marks when their audio would have finished.
 */
import type { Scheduler, Task } from "../../src/call/scheduler.ts";

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

interface PendingMark {
  readonly name: string;
  readonly receivedAt: number;
  readonly due: number;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function exactKeys(value: unknown, keys: readonly string[]): value is Record<string, unknown> {
  if (!isObject(value)) return false;
  const own = Object.keys(value);
  return own.length === keys.length && keys.every((k) => k in value);
}

/** Whether `data` is exactly one of Twilio's accepted outbound shapes (no extra keys). */
function validOutbound(data: Record<string, unknown>): boolean {
  if (typeof data["streamSid"] !== "string") return false;
  switch (data["event"]) {
    case "media":
      return exactKeys(data, ["event", "streamSid", "media"]) &&
        exactKeys(data["media"], ["payload"]) && typeof data["media"]["payload"] === "string";
    case "mark":
      return exactKeys(data, ["event", "streamSid", "mark"]) &&
        exactKeys(data["mark"], ["name"]) && typeof data["mark"]["name"] === "string";
    case "clear":
      return exactKeys(data, ["event", "streamSid"]);
    default:
      return false;
  }
}

export class Playout {
  readonly received: ReceivedMessage[] = [];
  readonly mediaArrivals: number[] = [];
  readonly marks: string[] = [];
  readonly echoes: MarkEchoRecord[] = [];
  readonly clears: number[] = [];
  readonly invalid: string[] = [];
  underruns = 0;
  readonly #scheduler: Scheduler;
  readonly #keepAudio: boolean;
  readonly #echo: ((name: string) => void) | null;
  readonly #pending: PendingMark[] = [];
  readonly #task: Task;
  readonly #checks = new Set<() => void>();
  #chunks: Uint8Array[] = [];
  #playoutEnd = -Infinity;
  #lastWasMark = true;
  #closed = false;

  constructor(options: {
    scheduler: Scheduler;
    keepAudio: boolean;
    echo: ((name: string) => void) | null;
  }) {
    this.#scheduler = options.scheduler;
    this.#keepAudio = options.keepAudio;
    this.#echo = options.echo;
    this.#task = options.scheduler.task((now) => this.#echoDue(now));
  }

  /** Handles one WebSocket message from the server. */
  receive(raw: unknown): void {
    const at = this.#scheduler.now();
    let data: unknown;
    try {
      data = typeof raw === "string" ? JSON.parse(raw) : undefined;
    } catch {
      data = undefined;
    }
    if (!isObject(data) || !validOutbound(data)) {
      this.invalid.push(typeof raw === "string" ? raw : "<binary>");
      this.#check();
      return;
    }
    const event = data["event"] as string;
    this.received.push({ at, event, data });
    if (event === "media") this.#media(at, (data["media"] as { payload: string }).payload);
    else if (event === "mark") this.#mark(at, (data["mark"] as { name: string }).name);
    else this.#clear(at);
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
    for (const check of [...this.#checks]) check();
  }

  #media(at: number, payload: string): void {
    const bytes = Uint8Array.fromBase64(payload);
    if (this.#keepAudio) this.#chunks.push(bytes);
    // Playout ran dry in the middle of an utterance (no mark since the previous frame).
    if (this.mediaArrivals.length > 0 && !this.#lastWasMark && this.#playoutEnd < at) {
      this.underruns++;
    }
    this.mediaArrivals.push(at);
    this.#lastWasMark = false;
    this.#playoutEnd = Math.max(this.#playoutEnd, at) + bytes.length / 8;
  }

  #mark(at: number, name: string): void {
    this.marks.push(name);
    this.#lastWasMark = true;
    if (this.#echo === null) return;
    // "when the audio ends (or if there is no audio buffered)"
    this.#pending.push({ name, receivedAt: at, due: Math.max(at, this.#playoutEnd) });
    if (!this.#task.scheduled) this.#task.at(this.#pending[0].due);
  }

  #clear(at: number): void {
    this.clears.push(at);
    this.#playoutEnd = at;
    this.#lastWasMark = true;
    this.#task.cancel();
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
    this.#echo?.(mark.name);
  }
}
