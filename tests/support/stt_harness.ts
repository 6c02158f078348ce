/**
 * Helpers for the Google STT session tests: a session on the real client against the local Speech
 * server (`speech_server.ts`), real-time audio feeding, and a caller line that keeps writing 20 ms
 * frames (silence between utterances) the way the RX worker does.
 */
import type { SttConfig } from "../../src/config/types.ts";

/** The STT settings the Google provider reads (not `stt.openai`). */
type GoogleSttConfig = Omit<SttConfig, "openai">;
import { createLogger } from "../../src/observe/log.ts";
import { createGoogleStt, type GoogleSttOptions } from "../../src/stt/google.ts";
import type { SpeechSession, SttEvent, SttProvider } from "../../src/stt/types.ts";
import { type Clip, fixtureClips } from "../../tools/sandbox/sandbox.ts";
import { type SpeechServer, startSpeechServer } from "../../tools/sandbox/speech_server.ts";
import { concatBytes } from "../../tools/bytes.ts";

export const CLIPS: readonly Clip[] = fixtureClips();

/** The fixture clip named `name` ("appointment", "hours", "goodbye", "tomorrow"). */
export function clip(name: string): Clip {
  const found = CLIPS.find((c) => c.name === name);
  if (!found) throw new Error(`Cannot find fixture clip "${name}"`);
  return found;
}

/** μ-law digital silence. */
export function silence(ms: number): Uint8Array {
  return new Uint8Array(ms * 8).fill(0xff);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function sttConfig(
  endpoint: string,
  overrides: Partial<SttConfig["google"]> = {},
  restartAfterS = 290,
): GoogleSttConfig {
  return {
    provider: "google",
    batch_ms: 40,
    partial_debounce_ms: 90,
    timeout_ms: 320,
    vad_hangover_ms: 180,
    restart_after_s: restartAfterS,
    google: {
      endpoint,
      fallback_endpoint: null,
      insecure: true,
      model: "phone_call",
      use_enhanced: true,
      ...overrides,
    },
  };
}

export interface Harness {
  readonly stt: SttProvider;
  readonly session: SpeechSession;
  readonly events: SttEvent[];
  readonly lines: string[];
  readonly abort: AbortController;
  /** Closes the session and provider and waits for the results iterator to finish. */
  finish(): Promise<void>;
}

export function openSession(config: GoogleSttConfig, options: GoogleSttOptions = {}): Harness {
  const lines: string[] = [];
  const log = createLogger((line) => lines.push(line));
  const stt = createGoogleStt(config, { log, ...options });
  const abort = new AbortController();
  const session = stt.open({
    language: "he-IL",
    signal: abort.signal,
    log: log.child({ call: "CAtest" }),
  });
  const events: SttEvent[] = [];
  const reading = (async () => {
    for await (const event of session.results()) events.push(event);
  })();
  return {
    stt,
    session,
    events,
    lines,
    abort,
    async finish() {
      await session.close();
      await reading;
      await stt.close();
    },
  };
}

/** Writes 20 ms frames, `framesPerTick` every 20 ms (1 = real time), on absolute deadlines. */
export async function feed(
  session: SpeechSession,
  audio: Uint8Array,
  framesPerTick = 1,
): Promise<void> {
  let next = performance.now();
  for (let at = 0; at < audio.length; at += 160 * framesPerTick) {
    for (let k = 0; k < framesPerTick; k++) {
      const from = at + k * 160;
      if (from < audio.length) {
        session.write(audio.subarray(from, Math.min(from + 160, audio.length)));
      }
    }
    next += 20;
    const wait = next - performance.now();
    if (wait > 0) await sleep(wait);
  }
}

export async function waitFor(
  what: string,
  condition: () => boolean,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await sleep(20);
  }
}

export function finals(events: readonly SttEvent[]): string[] {
  return events.flatMap((e) => e.type === "final" ? [e.text] : []);
}

export async function withServer(
  options: Parameters<typeof startSpeechServer>[0],
  fn: (server: SpeechServer) => Promise<void>,
): Promise<void> {
  const server = await startSpeechServer(options);
  try {
    await fn(server);
  } finally {
    await server.close();
  }
}

/**
 * A caller's line: from `start()` until `stop()` it writes one 20 ms frame per tick on absolute
 * deadlines (resync when late, no burst), taking frames from what `say()` queued, else silence.
 * Everything it wrote is kept in `written`, in order.
 */
export class CallerLine {
  readonly #session: SpeechSession;
  readonly #queue: { audio: Uint8Array; at: number; done: () => void }[] = [];
  readonly #written: Uint8Array[] = [];
  #running: Promise<void> | null = null;
  #stopped = false;

  constructor(session: SpeechSession) {
    this.#session = session;
  }

  /** Every byte written so far. */
  get written(): Uint8Array {
    return concatBytes(...this.#written);
  }

  start(): void {
    this.#running ??= this.#run();
  }

  /** Queues `audio`; resolves once its last frame was written. */
  say(audio: Uint8Array): Promise<void> {
    return new Promise((resolve) => this.#queue.push({ audio, at: 0, done: resolve }));
  }

  /** `ms` of silence from now (the line's own frames). */
  pause(ms: number): Promise<void> {
    return this.say(silence(ms));
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#running;
    for (const item of this.#queue.splice(0)) item.done();
  }

  async #run(): Promise<void> {
    const quiet = silence(20);
    let next = performance.now();
    while (!this.#stopped) {
      const item = this.#queue[0];
      let frame = quiet;
      if (item) {
        frame = item.audio.subarray(item.at, item.at + 160);
        item.at += frame.length;
        if (item.at >= item.audio.length) {
          this.#queue.shift();
          item.done();
        }
      }
      this.#session.write(frame);
      this.#written.push(frame);
      next += 20;
      const now = performance.now();
      if (now - next > 40) next = now + 20;
      const wait = next - now;
      if (wait > 0) await sleep(wait);
    }
  }
}
