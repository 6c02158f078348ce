/**
 * A call's slow timers on the shared scheduler: limits (idle media, max duration), telemetry and
 * its `[RX]`/`[TX]` lines, the stalled-socket watch.
 */
import type { ServerConfig } from "../config/types.ts";
import type { Logger } from "../observe/log.ts";
import type { CallOutcome } from "../store/types.ts";
import type { RxQueue } from "./rx_queue.ts";
import type { RxWorker } from "./rx_worker.ts";
import type { Scheduler, Task } from "./scheduler.ts";
import type { TxWorker } from "./tx_worker.ts";

/** Telemetry period, ms (SPEC: once per second per call). */
export const TELEMETRY_MS = 1000;
/**
 * Whole telemetry seconds a call's TX may stay paused on a stalled socket (peer not reading, not a
 * frame sent) before the call is closed: Twilio has then heard nothing for this long.
 */
export const TX_STALL_CLOSE_S = 10;

/**
 * Closes the call when no media arrived for `idle_media_timeout_s` (outcome `idle`) or when it has
 * lasted `max_call_duration_s` (outcome `max_duration`). One task, re-armed at the nearer deadline;
 * a media frame only updates a number.
 */
export class CallLimits {
  readonly #scheduler: Scheduler;
  readonly #idleMs: number;
  readonly #maxMs: number;
  readonly #task: Task;
  readonly #onLimit: (outcome: CallOutcome, reason: string) => void;
  #openedAt = 0;
  #lastMedia = 0;

  constructor(
    scheduler: Scheduler,
    server: Pick<ServerConfig, "idle_media_timeout_s" | "max_call_duration_s">,
    onLimit: (outcome: CallOutcome, reason: string) => void,
    onError: (error: unknown) => void,
  ) {
    this.#scheduler = scheduler;
    this.#idleMs = server.idle_media_timeout_s * 1000;
    this.#maxMs = server.max_call_duration_s * 1000;
    this.#onLimit = onLimit;
    this.#task = scheduler.task(this.#check, onError);
  }

  /** Starts both clocks now (socket open). */
  start(): void {
    this.#openedAt = this.#lastMedia = this.#scheduler.now();
    this.#arm();
  }

  stop(): void {
    this.#task.cancel();
  }

  /** A media frame arrived: the idle clock restarts. */
  mediaReceived(): void {
    this.#lastMedia = this.#scheduler.now();
  }

  #arm(): void {
    this.#task.at(Math.min(this.#lastMedia + this.#idleMs, this.#openedAt + this.#maxMs));
  }

  #check = (now: number): void => {
    if (now >= this.#openedAt + this.#maxMs) {
      this.#onLimit("max_duration", `call reached ${this.#maxMs / 1000} s`);
    } else if (now >= this.#lastMedia + this.#idleMs) {
      this.#onLimit("idle", `no media for ${this.#idleMs / 1000} s`);
    } else {
      this.#arm();
    }
  };
}

/** Runs `report` every second on an absolute cadence. */
export class Telemetry {
  readonly #scheduler: Scheduler;
  readonly #task: Task;
  readonly #report: () => void;
  #next = 0;

  constructor(scheduler: Scheduler, report: () => void, onError: (error: unknown) => void) {
    this.#scheduler = scheduler;
    this.#report = report;
    this.#task = scheduler.task(this.#tick, onError);
  }

  start(): void {
    this.#next = this.#scheduler.now() + TELEMETRY_MS;
    this.#task.at(this.#next);
  }

  stop(): void {
    this.#task.cancel();
  }

  #tick = (now: number): void => {
    this.#report();
    this.#next += TELEMETRY_MS;
    if (this.#next <= now) this.#next = now + TELEMETRY_MS;
    this.#task.at(this.#next);
  };
}

/** One telemetry second's figures, kept for the live view. */
export interface TelemetryWindow {
  readonly rxFps: number;
  readonly rxQueue: number;
  readonly txFps: number;
  readonly txQueue: number;
  readonly txLateMsMax: number;
}

/** The per-second `[RX]` and `[TX]` lines (SPEC 2 telemetry); returns what they said. */
export function logTelemetry(
  log: Logger,
  parts: { rx: RxWorker; rxQueue: RxQueue<Uint8Array>; tx: TxWorker; framesIn: number },
): TelemetryWindow {
  const rw = parts.rx.takeWindow();
  const tw = parts.tx.takeWindow();
  const q = parts.rxQueue;
  log.info("RX", "", {
    fps_in: parts.framesIn,
    q: q.size,
    drops: q.drops,
    write_ms: rw.writeMsMax,
  });
  log.info("TX", "", {
    fps: tw.frames,
    q: parts.tx.queue.size,
    drops: 0,
    late_ms_max: tw.lateMsMax,
  });
  return {
    rxFps: parts.framesIn,
    rxQueue: q.size,
    txFps: tw.frames,
    txQueue: parts.tx.queue.size,
    txLateMsMax: tw.lateMsMax,
  };
}

/**
 * Counts the whole telemetry seconds a TX worker stayed paused on a stalled socket (paused ticks
 * grew, not one frame sent). A peer that reads slowly resets it; only a total stall adds up.
 */
export class StallWatch {
  #paused = 0;
  #frames = 0;
  #seconds = 0;

  /** Call once per telemetry tick; returns the stalled seconds so far. */
  tick(tx: { readonly pausedTicks: number; readonly framesSent: number }): number {
    const stalled = tx.pausedTicks > this.#paused && tx.framesSent === this.#frames;
    this.#seconds = stalled ? this.#seconds + 1 : 0;
    this.#paused = tx.pausedTicks;
    this.#frames = tx.framesSent;
    return this.#seconds;
  }
}
