/** The `Outbound` given to agents: a thin layer over the TX queue. */
import { FRAME_BYTES, frameAt, frameCount } from "../audio/frames.ts";
import type { Outbound, PlayOptions } from "./agent.ts";
import type { MarkTracker } from "./marks.ts";
import type { TxWorker } from "./tx_worker.ts";

const IDLE: Promise<unknown> = Promise.resolve();
/** Frames per queued run (0.5 s): few objects per sentence, and room frees up in small steps. */
const RUN_FRAMES = 25;

/**
 * Calls are serialized: a `play` or `mark` starts queueing only when the previous call has queued
 * everything, so two producers (the greeting, an answer) never interleave frames. Each call captures the
 * epoch when it is made, so anything requested before a `clear()` is discarded.
 */
export class QueueOutbound implements Outbound {
  readonly #tx: TxWorker;
  readonly #marks: MarkTracker;
  readonly #onClear: () => void;
  #tail: Promise<unknown> = IDLE;
  #inFlight = 0;

  /** `onClear`: told after each `clear()` (the session records it). */
  constructor(tx: TxWorker, marks: MarkTracker, onClear: () => void = () => {}) {
    this.#tx = tx;
    this.#marks = marks;
    this.#onClear = onClear;
  }

  /**
   * Frames are views into `mulaw` (the caller must not reuse the buffer until played). When no
   * other call is in flight, whatever fits is queued synchronously, before the first await, so the
   * TX worker can start at once.
   */
  play(mulaw: Uint8Array, options: PlayOptions): Promise<boolean> {
    const epoch = this.#tx.queue.epoch;
    return this.#serial(() => this.#play(mulaw, epoch, options));
  }

  mark(name: string, options: { signal: AbortSignal }): Promise<boolean> {
    const epoch = this.#tx.queue.epoch;
    const { signal } = options;
    return this.#serial(() => {
      signal.throwIfAborted();
      return this.#tx.queue.push(name, { signal, epoch });
    });
  }

  clear(): void {
    this.#tx.clear();
    this.#onClear();
  }

  async #play(mulaw: Uint8Array, epoch: number, options: PlayOptions): Promise<boolean> {
    const { signal, onFirstFrameSent } = options;
    signal.throwIfAborted();
    const queue = this.#tx.queue;
    const total = frameCount(mulaw.length);
    const whole = Math.floor(mulaw.length / FRAME_BYTES);
    // Runs of whole frames (views), never more than the queue holds, then the padded tail. With a
    // first-frame notification the first run is one frame, so it fires right after that frame.
    const runFrames = Math.max(1, Math.min(RUN_FRAMES, queue.capacity));
    let frame = 0;
    while (frame < total) {
      const limit = frame === 0 && onFirstFrameSent !== undefined ? 1 : runFrames;
      const frames = Math.min(limit, whole - frame);
      const item = frames > 0
        ? mulaw.subarray(frame * FRAME_BYTES, (frame + frames) * FRAME_BYTES)
        : frameAt(mulaw, frame);
      if (!queue.tryPush(item, epoch) && !(await queue.push(item, { signal, epoch }))) {
        return false;
      }
      if (frame === 0 && onFirstFrameSent !== undefined) {
        // Queued right behind the first frame: the TX worker calls it once that frame is sent.
        if (!queue.tryPush(onFirstFrameSent, epoch)) {
          if (!(await queue.push(onFirstFrameSent, { signal, epoch }))) return false;
        }
      }
      frame += Math.max(frames, 1);
    }
    return true;
  }

  #serial<T>(op: () => Promise<T>): Promise<T> {
    let run: Promise<T>;
    if (this.#inFlight === 0) {
      try {
        run = op();
      } catch (error) {
        run = Promise.reject(error);
      }
    } else {
      run = this.#tail.then(op);
    }
    this.#inFlight++;
    const settled = run.then(() => {
      this.#inFlight--;
    }, () => {
      this.#inFlight--;
    });
    this.#tail = settled;
    return run;
  }

  get pendingMarks(): readonly string[] {
    return this.#marks.pending;
  }

  get queuedFrames(): number {
    return this.#tx.queue.size;
  }
}
