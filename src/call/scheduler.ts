/**
 * The clock every paced loop runs on. One shared scheduler serves all calls: a min-heap of task
 * deadlines and a single `setTimeout` armed for the earliest one, so 400 calls cost one timer, and
 * a tick allocates nothing (tasks are reusable handles). Tests drive a `ManualScheduler` (`tests/support/`) instead.
 */
import { TaskHeap, type TaskSlot } from "./_task_heap.ts";

/** A reusable, re-armable callback. At most one pending run at a time. */
export interface Task {
  /** Whether a run is pending. */
  readonly scheduled: boolean;
  /** The pending run's deadline (ms on the scheduler clock), or NaN. */
  readonly deadline: number;
  /** Runs the callback at `time` (ms, scheduler clock), replacing any pending run. */
  at(time: number): void;
  cancel(): void;
}

/** Monotonic milliseconds plus deadline callbacks. */
export interface Scheduler {
  /** Milliseconds on a monotonic clock (fractional). */
  now(): number;
  /**
   * Creates a task; `run` receives the clock when it runs (never less than the deadline: a run up
   * to 1 ms early counts as on time). An exception from `run` goes to
   * `onError` (default: logged to stderr) and never reaches other tasks.
   */
  task(run: (now: number) => void, onError?: (error: unknown) => void): Task;
}

function reportError(error: unknown): void {
  console.error("Scheduled task failed", error);
}

/** Shared bookkeeping of the real and manual schedulers. */
export abstract class HeapScheduler implements Scheduler {
  protected readonly heap = new TaskHeap();
  abstract now(): number;
  /** Called after the earliest deadline may have changed. */
  protected abstract rearm(): void;

  task(run: (now: number) => void, onError: (error: unknown) => void = reportError): Task {
    const slot: TaskSlot = { deadline: NaN, index: -1, run, onError };
    const heap = this.heap;
    const rearm = () => this.rearm();
    return {
      get scheduled() {
        return slot.index >= 0;
      },
      get deadline() {
        return slot.index >= 0 ? slot.deadline : NaN;
      },
      at(time: number) {
        heap.set(slot, time);
        rearm();
      },
      cancel() {
        if (slot.index < 0) return;
        heap.remove(slot);
        rearm();
      },
    };
  }

  /** Runs every task due by `limit`; returns how many ran. Bounded so a task can't spin forever. */
  protected runDue(limit: number, maxRuns: number): number {
    let runs = 0;
    while (runs < maxRuns) {
      const slot = this.heap.peek();
      if (slot === undefined || slot.deadline > limit) break;
      this.heap.remove(slot);
      runs++;
      try {
        // A pass may run a task up to SLACK_MS early; it sees its deadline as "now" then.
        const now = this.now();
        slot.run(now > slot.deadline ? now : slot.deadline);
      } catch (error) {
        try {
          slot.onError(error);
        } catch (nested) {
          reportError(nested);
        }
      }
    }
    return runs;
  }

  /** Tasks pending (for tests and telemetry). */
  get pending(): number {
    return this.heap.size;
  }
}

/**
 * The paced loops' phase grid, ms. Every call's RX deadlines and TX sends fall on multiples of it,
 * so all calls share 5 phases per 20 ms: each pass then runs tasks that are exactly due, in the
 * same groups every period, instead of tasks up to 1 ms early or late. `scripts/bench_timers.ts`
 * (loops of 10 µs work, one core), |interval - 20| p99 on the grid against phases spread evenly:
 * 1.03 ms against 2.02 at 50 loops, 0.98 against 2.01 at 200, 1.86 against 1.95 at 800.
 */
export const PHASE_GRID_MS = 4;

/** The first grid point at or after `time` (see `PHASE_GRID_MS`). */
export function onPhaseGrid(time: number): number {
  return Math.ceil(time / PHASE_GRID_MS) * PHASE_GRID_MS;
}

/** The last grid point at or before `time` (see `PHASE_GRID_MS`). */
export function onPhaseGridBefore(time: number): number {
  return Math.floor(time / PHASE_GRID_MS) * PHASE_GRID_MS;
}

/**
 * A task due at most this far ahead runs in the current pass (a run at most this early counts as on
 * time). Measured on Deno 2.9: a `setTimeout` armed from a timer callback fires no sooner than
 * ~2.1 ms (delays 0-2 all give ~2.1 ms; larger ones fire ~0.1 ms late), so a pass cannot wake
 * again within 2 ms; running what is due within 1 ms now and the rest ~0.1-1.1 ms late keeps every
 * task within about ±1 ms of its deadline, the best this timer allows (0.3 ms measured worse).
 */
const SLACK_MS = 1;
/** Runs per timer pass before yielding to I/O (a pass of 800 calls' ticks is fine). */
const MAX_RUNS_PER_PASS = 10_000;

/** The wall-clock scheduler: `performance.now()` and one `setTimeout` at a time. */
export class RealtimeScheduler extends HeapScheduler {
  #timer: ReturnType<typeof setTimeout> | undefined;
  #armedFor = Infinity;
  #inPass = false;

  now(): number {
    return performance.now();
  }

  protected rearm(): void {
    if (this.#inPass) return; // the pass re-arms once at its end
    const next = this.heap.peek();
    if (next === undefined) {
      this.#disarm();
      return;
    }
    if (this.#timer !== undefined && this.#armedFor <= next.deadline) return;
    this.#disarm();
    this.#armedFor = next.deadline;
    const delay = Math.max(0, Math.floor(next.deadline - this.now()));
    this.#timer = setTimeout(this.#fire, delay);
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#armedFor = Infinity;
  }

  #fire = (): void => {
    this.#timer = undefined;
    this.#armedFor = Infinity;
    this.#inPass = true;
    try {
      this.runDue(this.now() + SLACK_MS, MAX_RUNS_PER_PASS);
    } finally {
      this.#inPass = false;
    }
    this.rearm();
  };
}

let shared: RealtimeScheduler | undefined;

/** The process-wide scheduler used by every call unless one is injected. */
export function sharedScheduler(): RealtimeScheduler {
  shared ??= new RealtimeScheduler();
  return shared;
}

/**
 * Resolves at `time` (ms on `scheduler`'s clock); rejects with `signal.reason` when aborted. For
 * async code off the per-frame path (the workers use tasks directly).
 */
export function sleepUntil(
  scheduler: Scheduler,
  time: number,
  options: { signal?: AbortSignal },
): Promise<void> {
  const signal = options.signal;
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => {
      task.cancel();
      reject(signal?.reason);
    };
    const task = scheduler.task(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, (error) => {
      signal?.removeEventListener("abort", onAbort);
      reject(error);
    });
    signal?.addEventListener("abort", onAbort, { once: true });
    task.at(time);
  });
}
