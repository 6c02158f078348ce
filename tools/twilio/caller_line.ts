/**
 * The caller's side of a live Twilio line for the simulator and the tests: once started, one
 * `media` frame every 20 ms on an absolute schedule, silence unless an utterance is queued, like
 * the inbound track of a real call.
 */
import {
  FRAME_BYTES,
  FRAME_MS,
  frameAt,
  frameCount,
  MULAW_SILENCE,
} from "../../src/audio/frames.ts";
import { sharedScheduler, sleepUntil } from "../../src/call/scheduler.ts";
import type { TwilioClient } from "./client.ts";

const SILENT_FRAME = new Uint8Array(FRAME_BYTES).fill(MULAW_SILENCE);

/** Polls `predicate` every 20 ms; rejects after `timeoutMs` naming `what`. */
export async function waitUntil(
  predicate: () => boolean,
  options: { timeoutMs: number; what: string },
): Promise<void> {
  const deadline = performance.now() + options.timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) {
      throw new Error(`Timed out after ${options.timeoutMs} ms waiting for ${options.what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

interface QueuedFrame {
  readonly frame: Uint8Array;
  readonly onSent?: (at: number) => void;
}

/**
 * The caller's side of the line: once started, one `media` frame every 20 ms on an absolute
 * schedule, silence unless an utterance is queued by `say()`, like the inbound track of a real
 * call. Every frame sent is kept, so tests can compare it with what the speech server received.
 */
export class CallerLine {
  readonly #client: TwilioClient;
  readonly #queue: QueuedFrame[] = [];
  readonly #chunks: Uint8Array[] = [];
  #running: Promise<void> | null = null;
  #stopping = false;
  #align = 1;
  /** Utterances not fully sent: settled (with the frames that left) when the line ends first. */
  readonly #unfinished = new Set<() => void>();

  constructor(client: TwilioClient) {
    this.#client = client;
  }

  /** Frames sent so far. */
  get framesSent(): number {
    return this.#chunks.length;
  }

  /** Starts streaming (silence until `say`). */
  start(): void {
    this.#running ??= this.#run();
  }

  /**
   * Queues `mulaw` (whole frames, last one padded) after anything queued; resolves once its last
   * frame left (or the line ended first), with the send time of each frame sent (ms, shared
   * scheduler clock).
   */
  say(mulaw: Uint8Array): Promise<number[]> {
    const n = frameCount(mulaw.length);
    const sentAt: number[] = [];
    const done = Promise.withResolvers<number[]>();
    const finish = () => {
      this.#unfinished.delete(finish);
      done.resolve(sentAt);
    };
    for (let i = 0; i < n; i++) {
      const last = i === n - 1;
      this.#queue.push({
        frame: frameAt(mulaw, i),
        onSent: (at) => {
          sentAt.push(at);
          if (last) finish();
        },
      });
    }
    if (n === 0) done.resolve(sentAt);
    else this.#unfinished.add(finish);
    return done.promise;
  }

  /** Queues `ms` of silence and waits until it has been sent (the line keeps running after). */
  pause(ms: number): Promise<number[]> {
    return this.say(
      new Uint8Array(Math.max(1, Math.round(ms / FRAME_MS)) * FRAME_BYTES).fill(MULAW_SILENCE),
    );
  }

  /** Everything sent, in order. */
  sent(): Uint8Array {
    const out = new Uint8Array(this.#chunks.length * FRAME_BYTES);
    this.#chunks.forEach((chunk, i) => out.set(chunk, i * FRAME_BYTES));
    return out;
  }

  /**
   * Stops streaming (after at most 20 ms) and waits for the loop to end. `alignFrames`: first pad
   * with silence until the frame count is a multiple of it (e.g. 2, so Kav's 40 ms STT batches
   * are all complete and sent while the call is still live).
   */
  async stop(options: { alignFrames?: number } = {}): Promise<void> {
    this.#align = Math.max(1, options.alignFrames ?? 1);
    this.#stopping = true;
    await this.#running;
  }

  /** Hangs up like Twilio does: the line stops, then `stop`, then the socket closes. */
  async hangUp(): Promise<void> {
    await this.stop();
    this.#client.sendStop();
    await this.#client.close();
  }

  async #run(): Promise<void> {
    try {
      await this.#stream();
    } finally {
      for (const finish of [...this.#unfinished]) finish();
    }
  }

  async #stream(): Promise<void> {
    const scheduler = sharedScheduler();
    const socket = this.#client.socket;
    let next = scheduler.now();
    const done = () => this.#stopping && this.#chunks.length % this.#align === 0;
    while (!done() && socket.readyState === WebSocket.OPEN) {
      const now = scheduler.now();
      if (now - next > 200) next = now;
      if (next > now) await sleepUntil(scheduler, next, {});
      if (done() || socket.readyState !== WebSocket.OPEN) return;
      const item = this.#queue.shift();
      const frame = item?.frame ?? SILENT_FRAME;
      this.#client.sendMedia(frame);
      this.#chunks.push(frame);
      item?.onSent?.(scheduler.now());
      next += FRAME_MS;
    }
  }
}
