/**
 * The TX worker: the only writer to a call's WebSocket (media, mark, clear; SPEC 2).
 *
 * Pacing keeps a *playhead*: the clock time at which the audio sent so far finishes playing at
 * Twilio. A frame is sent while `playhead - now < lead + 4`, then `playhead += 20`, so the worker
 * runs on an absolute 20 ms cadence `lead` to `lead` + 4 ms ahead: after the first burst its ticks
 * fall on the shared 4 ms phase grid (`PHASE_GRID_MS`), with every other call's. When idle it
 * resyncs `playhead = now` and sends at once; when a tick is so late that the playhead fell more
 * than a frame behind, it counts a late tick and resyncs too (never a catch-up burst). Marks go out right after the media before them. `clear()`
 * is a control lane: queue emptied, `clear` sent at once, clock reset. While the socket's
 * `bufferedAmount` is above the limit the worker pauses (polling each 20 ms) instead of growing
 * memory.
 */
import { FRAME_MS } from "../audio/frames.ts";
import type { Logger } from "../observe/log.ts";
import { txFrameSent, txLateTick } from "../observe/metrics.ts";
import type { OutboundEncoder } from "../twilio/protocol.ts";
import type { MarkTracker } from "./marks.ts";
import { onPhaseGridBefore, PHASE_GRID_MS, type Scheduler, type Task } from "./scheduler.ts";
import { type TxItem, TxQueue } from "./tx_queue.ts";

/** The part of a WebSocket the worker uses (Deno's server socket supports `bufferedAmount`). */
export interface TxSocket {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: string): void;
}

/** A tick that finds the playhead more than this far behind counts as late and resyncs, ms. */
export const TX_RESYNC_MS = FRAME_MS;
const OPEN = 1;

export interface TxWorkerOptions {
  readonly socket: TxSocket;
  readonly scheduler: Scheduler;
  readonly marks: MarkTracker;
  readonly log: Logger;
  /** `audio.tx_queue_frames`. */
  readonly queueFrames: number;
  /** `audio.tx_lead_ms`: audio allowed ahead of real time. */
  readonly leadMs: number;
  /** `audio.tx_max_buffered_bytes`: pause above this socket backlog. */
  readonly maxBufferedBytes: number;
  /** A failing `send` ends the call; the worker stops first. */
  readonly onError: (error: unknown) => void;
}

export class TxWorker {
  readonly queue: TxQueue;
  readonly #socket: TxSocket;
  readonly #scheduler: Scheduler;
  readonly #marks: MarkTracker;
  readonly #log: Logger;
  readonly #lead: number;
  readonly #maxBuffered: number;
  readonly #task: Task;
  #encoder: OutboundEncoder | null = null;
  #running = false;
  #clearPending = false;
  #paused = false;
  #playhead = 0;
  #frames = 0;
  #lateTicks = 0;
  #pausedTicks = 0;
  #windowFrames = 0;
  #windowLateMs = 0;
  /** Deadline of the pending run (for lateness), NaN when none. */
  #lastDeadline = NaN;
  /** The pending run was scheduled with frames waiting (so lateness means a gap). */
  #backlogScheduled = false;

  constructor(options: TxWorkerOptions) {
    this.#socket = options.socket;
    this.#scheduler = options.scheduler;
    this.#marks = options.marks;
    this.#log = options.log;
    this.#lead = Math.max(0, options.leadMs);
    this.#maxBuffered = options.maxBufferedBytes;
    const onError = options.onError;
    this.#task = options.scheduler.task(this.#tick, (error) => {
      this.stop();
      onError(error);
    });
    this.queue = new TxQueue(options.queueFrames, this.#wake);
  }

  /** Media frames sent. */
  get framesSent(): number {
    return this.#frames;
  }
  /** Ticks so late the playhead fell behind by more than a frame (an audible gap). */
  get lateTicks(): number {
    return this.#lateTicks;
  }
  /** Ticks skipped because the socket's send buffer was over the limit. */
  get pausedTicks(): number {
    return this.#pausedTicks;
  }

  /** Enables sending; needs the stream's encoder (from `start`). */
  start(encoder: OutboundEncoder): void {
    this.#encoder = encoder;
    this.#running = true;
    this.#playhead = this.#scheduler.now();
    if (this.queue.size > 0) this.#wake();
  }

  /** Stops sending; queued items stay (the call is ending). */
  stop(): void {
    this.#running = false;
    this.#task.cancel();
  }

  /** Barge-in: empty the queue, send `clear` now, reset the clock. */
  clear(): void {
    this.queue.clear();
    this.#clearPending = true;
    this.#task.cancel();
    this.#lastDeadline = NaN;
    this.#tick(this.#scheduler.now());
  }

  /** Frames sent and the worst tick lateness (ms) since the last call; resets the window. */
  takeWindow(): { frames: number; lateMsMax: number } {
    const out = { frames: this.#windowFrames, lateMsMax: this.#windowLateMs };
    this.#windowFrames = 0;
    this.#windowLateMs = 0;
    return out;
  }

  #wake = (): void => {
    if (!this.#running || this.#task.scheduled) return;
    // New audio starts now (its lead goes at once); only the cadence after it is on the grid.
    const now = this.#scheduler.now();
    this.#lastDeadline = now;
    this.#task.at(now);
  };

  #tick = (now: number): void => {
    const encoder = this.#encoder;
    if (!this.#running || encoder === null) return;
    const socket = this.#socket;
    if (socket.readyState !== OPEN) return; // closing: the session ends the call
    const late = now - this.#lastDeadline; // NaN when run directly (clear)
    this.#lastDeadline = NaN;
    if (late > this.#windowLateMs) this.#windowLateMs = late;
    if (this.#clearPending) {
      this.#clearPending = false;
      socket.send(encoder.clear());
      this.#marks.clearSent();
      this.#playhead = now;
    }
    if (socket.bufferedAmount > this.#maxBuffered) {
      if (!this.#paused) {
        this.#paused = true;
        this.#log.warn("TX", "socket stalled, pausing", { buffered: socket.bufferedAmount });
      }
      this.#pausedTicks++;
      this.#schedule(now + FRAME_MS);
      return;
    }
    if (this.#paused) {
      this.#paused = false;
      this.#log.info("TX", "socket drained, resuming", { buffered: socket.bufferedAmount });
    }
    if (this.#playhead < now) {
      // Idle (woken by a push) or late: restart the clock here, never burst to catch up.
      if (this.#backlogScheduled && now - this.#playhead > TX_RESYNC_MS) {
        this.#lateTicks++;
        txLateTick();
      }
      this.#playhead = now;
    }
    const queue = this.queue;
    const lead = this.#lead;
    // Ticks fall on the phase grid at or before `playhead - lead`, so allow one grid step more.
    while (queue.size > 0 && this.#playhead - now < lead + PHASE_GRID_MS) {
      const item = queue.take() as TxItem;
      if (!(item instanceof Uint8Array)) {
        this.#control(encoder, item);
        continue;
      }
      socket.send(encoder.media(item));
      this.#playhead += FRAME_MS;
      this.#frames++;
      this.#windowFrames++;
      txFrameSent();
    }
    // A mark right behind the last frame sent goes now, not a tick later.
    while (queue.size > 0 && !(queue.peek() instanceof Uint8Array)) {
      this.#control(encoder, queue.take() as string | (() => void));
    }
    this.#backlogScheduled = queue.size > 0;
    if (this.#backlogScheduled) this.#schedule(this.#playhead - lead);
  };

  /**
   * Runs the tick at the last phase-grid point before `time`: up to 4 ms early, which the send
   * condition allows (the lead is `lead` to `lead` + 4 ms), never late. Rounding up instead would
   * make the first interval after each burst up to 24 ms.
   */
  #schedule(time: number): void {
    const at = onPhaseGridBefore(time);
    this.#lastDeadline = at;
    this.#task.at(at);
  }

  #control(encoder: OutboundEncoder, item: string | (() => void)): void {
    if (typeof item === "function") {
      item();
      return;
    }
    this.#socket.send(encoder.mark(item));
    this.#marks.sent(item);
  }
}
