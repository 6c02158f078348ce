/**
 * An in-process `SttProvider` for tests: sessions become ready after a configurable delay, record
 * every byte written (in order), and emit whatever partial/final events the test scripts.
 */
import type { SpeechSession, SttEvent, SttOpenOptions, SttProvider } from "../../src/stt/types.ts";

export interface LocalSpeechOptions {
  /** Delay before `ready` resolves, ms (0 = next macrotask). */
  readonly readyDelayMs?: number;
  /** Called for each new session (e.g. to script events). */
  readonly onOpen?: (session: LocalSpeechSession) => void;
  /** When set, `write` throws this (to test a failing provider). */
  readonly writeError?: Error;
}

export class LocalSpeechSession implements SpeechSession {
  readonly ready: Promise<void>;
  readonly language: string;
  #isReady = false;
  #closed = false;
  #buffer = new Uint8Array(16_000);
  #length = 0;
  #writes = 0;
  #writesBeforeReady = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #events: SttEvent[] = [];
  #wake: (() => void) | null = null;
  readonly #writeError: Error | undefined;

  constructor(options: SttOpenOptions & { readyDelayMs: number; writeError?: Error }) {
    this.language = options.language;
    this.#writeError = options.writeError;
    this.ready = new Promise<void>((resolve) => {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#isReady = true;
        resolve();
      }, options.readyDelayMs);
    });
  }

  get isReady(): boolean {
    return this.#isReady;
  }
  get closed(): boolean {
    return this.#closed;
  }
  /** `write` calls so far. */
  get writes(): number {
    return this.#writes;
  }
  /** `write` calls made before `ready` resolved (the contract says none). */
  get writesBeforeReady(): number {
    return this.#writesBeforeReady;
  }
  /** Bytes written so far. */
  get length(): number {
    return this.#length;
  }

  /** Everything written, in order (a copy). */
  bytes(): Uint8Array {
    return this.#buffer.slice(0, this.#length);
  }

  write(mulaw: Uint8Array): void {
    if (this.#writeError !== undefined) throw this.#writeError;
    if (!this.#isReady) this.#writesBeforeReady++;
    this.#writes++;
    if (this.#length + mulaw.length > this.#buffer.length) {
      const grown = new Uint8Array(Math.max(this.#buffer.length * 2, this.#length + mulaw.length));
      grown.set(this.#buffer.subarray(0, this.#length));
      this.#buffer = grown;
    }
    this.#buffer.set(mulaw, this.#length);
    this.#length += mulaw.length;
  }

  /** Delivers `event` through `results()` (ignored once closed). */
  emit(event: SttEvent): void {
    if (this.#closed) return;
    this.#events.push(event);
    this.#wake?.();
  }

  async *results(): AsyncIterable<SttEvent> {
    let next = 0;
    while (true) {
      if (next < this.#events.length) {
        yield this.#events[next++];
        continue;
      }
      if (this.#closed) return;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
      this.#wake = null;
    }
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      if (this.#timer !== undefined) clearTimeout(this.#timer);
      this.#timer = undefined;
      this.#wake?.();
    }
    return Promise.resolve();
  }
}

export class LocalSttProvider implements SttProvider {
  readonly sessions: LocalSpeechSession[] = [];
  readonly #options: LocalSpeechOptions;
  #closed = false;

  constructor(options: LocalSpeechOptions = {}) {
    this.#options = options;
  }

  get closed(): boolean {
    return this.#closed;
  }

  open(options: SttOpenOptions): LocalSpeechSession {
    const session = new LocalSpeechSession({
      ...options,
      readyDelayMs: this.#options.readyDelayMs ?? 0,
      writeError: this.#options.writeError,
    });
    this.sessions.push(session);
    this.#options.onOpen?.(session);
    return session;
  }

  close(): Promise<void> {
    this.#closed = true;
    return Promise.all(this.sessions.map((s) => s.close())).then(() => {});
  }
}
