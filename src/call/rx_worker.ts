/**
 * The RX worker: the only writer to a call's speech session (SPEC 2). Paced on an absolute 20 ms
 * deadline (`next += 20`; more than 40 ms late ⇒ `next = now + 20` and a late tick). Frames stay in
 * `rx_q` until the session is ready; a backlog is then written in bounded batches per tick so the
 * worker catches up instead of staying behind.
 */
import { FRAME_MS } from "../audio/frames.ts";
import type { SpeechSession } from "../stt/types.ts";
import type { RxQueue } from "./rx_queue.ts";
import { onPhaseGrid, type Scheduler, type Task } from "./scheduler.ts";

/** Lateness beyond which the RX clock resyncs instead of keeping its absolute cadence, ms. */
export const RX_RESYNC_MS = 40;
/** Frames written per tick at most (10 = 200 ms of audio per 20 ms tick: 10x real time). */
export const RX_MAX_BATCH = 10;

export interface RxWorkerOptions {
  readonly queue: RxQueue<Uint8Array>;
  /** The session to write to; may also be given later with `attach()` (frames wait meanwhile). */
  readonly speech?: SpeechSession;
  readonly scheduler: Scheduler;
  /** A failing `write` (a provider bug) ends the call; the worker stops first. */
  readonly onError: (error: unknown) => void;
  readonly maxBatch?: number;
}

export class RxWorker {
  readonly #queue: RxQueue<Uint8Array>;
  #speech: SpeechSession | null = null;
  readonly #scheduler: Scheduler;
  readonly #task: Task;
  readonly #maxBatch: number;
  #ready = false;
  #running = false;
  #next = 0;
  #written = 0;
  #lateTicks = 0;
  #windowWritten = 0;
  #windowWriteMs = 0;
  #windowLateMs = 0;

  constructor(options: RxWorkerOptions) {
    this.#queue = options.queue;
    this.#scheduler = options.scheduler;
    this.#maxBatch = options.maxBatch ?? RX_MAX_BATCH;
    const onError = options.onError;
    this.#task = options.scheduler.task(this.#tick, (error) => {
      this.stop({ flush: false });
      onError(error);
    });
    if (options.speech !== undefined) this.attach(options.speech);
  }

  /** Sets the speech session; writes start once its `ready` resolves. Once only. */
  attach(speech: SpeechSession): void {
    if (this.#speech !== null) throw new Error("Cannot attach a second speech session");
    this.#speech = speech;
    // `ready` never rejects by contract; if a provider breaks it, the session ends the call.
    speech.ready.then(() => {
      this.#ready = true;
    }, () => {});
  }

  /** Whether the speech session has become ready (writes flow). */
  get ready(): boolean {
    return this.#ready;
  }

  /** Frames written to the speech session so far. */
  get written(): number {
    return this.#written;
  }

  /** Ticks that came more than 40 ms late (and resynced the clock). */
  get lateTicks(): number {
    return this.#lateTicks;
  }

  /** Starts the 20 ms cadence; the first tick is one frame from now. */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#next = onPhaseGrid(this.#scheduler.now() + FRAME_MS);
    this.#task.at(this.#next);
  }

  /**
   * Stops the cadence. With `flush` and a ready session, everything still queued is written first
   * (the caller's last words, on `stop`). Returns how many frames were flushed.
   */
  stop(options: { flush: boolean }): number {
    this.#running = false;
    this.#task.cancel();
    if (!options.flush || !this.#ready) return 0;
    return this.#writeUpTo(this.#queue.size);
  }

  /**
   * Frames written, the slowest tick's write time (ms) and the worst lateness (ms) since the last
   * call; resets the window (for the 1 s telemetry line).
   */
  takeWindow(): { written: number; writeMsMax: number; lateMsMax: number } {
    const out = {
      written: this.#windowWritten,
      writeMsMax: this.#windowWriteMs,
      lateMsMax: this.#windowLateMs,
    };
    this.#windowWritten = 0;
    this.#windowWriteMs = 0;
    this.#windowLateMs = 0;
    return out;
  }

  #tick = (now: number): void => {
    if (!this.#running) return;
    const late = now - this.#next;
    if (late > this.#windowLateMs) this.#windowLateMs = late;
    if (late > RX_RESYNC_MS) {
      this.#next = onPhaseGrid(now + FRAME_MS);
      this.#lateTicks++;
    } else {
      this.#next += FRAME_MS;
    }
    if (this.#ready && this.#queue.size > 0) {
      const started = performance.now();
      this.#writeUpTo(this.#maxBatch);
      const took = performance.now() - started;
      if (took > this.#windowWriteMs) this.#windowWriteMs = took;
    }
    this.#task.at(this.#next);
  };

  #writeUpTo(limit: number): number {
    const speech = this.#speech;
    if (speech === null) return 0;
    let n = 0;
    while (n < limit) {
      const frame = this.#queue.take();
      if (frame === undefined) break;
      speech.write(frame);
      n++;
    }
    this.#written += n;
    this.#windowWritten += n;
    return n;
  }
}
