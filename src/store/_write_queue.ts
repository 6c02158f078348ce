/**
 * The in-memory write queue in front of SQLite. `push` is an array push (safe on the 20 ms paths);
 * a timer applies the queue in batched transactions, at most `sliceBudgetMs` of main-thread time
 * per slice before yielding to the event loop.
 *
 * Policy: unbounded, never drops a record. Depth is exported as a metric and logged when it
 * crosses `highWater`. A batch that fails for a reason that can pass (locked, disk full, I/O) is
 * rolled back and retried with backoff, in order. A write SQLite rejects outright (it can never
 * succeed) is isolated, logged, counted and dropped, so one bad record cannot block the rest.
 */
import type { DatabaseSync } from "node:sqlite";
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import type { StoreOp, StoreWriter } from "./_writer.ts";

/** Store timings (ms) and sizes; tests and benchmarks override some. */
export interface StoreTuning {
  readonly flushIntervalMs: number;
  readonly batchMaxOps: number;
  /** Main-thread time one flush slice may take before yielding. */
  readonly sliceBudgetMs: number;
  /** SQLite waits this long for a lock held by another connection (blocks the thread). */
  readonly busyTimeoutMs: number;
  readonly retryBaseMs: number;
  readonly retryCapMs: number;
  /** Queue depth that logs a warning (nothing is dropped). */
  readonly highWater: number;
  /** WAL checkpoint period on the worker thread; 0 keeps SQLite's auto-checkpoint. */
  readonly checkpointIntervalMs: number;
  /** How long `close()` keeps retrying failing writes before giving up on them. */
  readonly closeTimeoutMs: number;
  readonly retentionIntervalMs: number;
}

export const STORE_DEFAULTS: StoreTuning = Object.freeze({
  flushIntervalMs: 50,
  batchMaxOps: 128,
  sliceBudgetMs: 2,
  busyTimeoutMs: 50,
  retryBaseMs: 100,
  retryCapMs: 5000,
  highWater: 100_000,
  checkpointIntervalMs: 1000,
  closeTimeoutMs: 5000,
  retentionIntervalMs: 24 * 3600_000,
});

const TRANSIENT =
  /locked|busy|disk i\/o error|disk is full|readonly database|unable to open|out of memory/i;

function isTransient(error: unknown): boolean {
  return error instanceof Error && TRANSIENT.test(error.message);
}

interface Waiter {
  readonly target: number;
  resolve(): void;
  reject(error: Error): void;
}

export interface WriteQueueOptions {
  readonly db: DatabaseSync;
  readonly path: string;
  readonly log: Logger;
  readonly now: () => number;
  readonly tuning: StoreTuning;
  readonly writer: StoreWriter;
  /** Called after a slice that inserted CRM outbox rows. */
  readonly onOutboxInsert: () => void;
}

export class WriteQueue {
  readonly #db: DatabaseSync;
  readonly #path: string;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #tuning: StoreTuning;
  readonly #writer: StoreWriter;
  readonly #onOutboxInsert: () => void;
  #queue: StoreOp[] = [];
  #head = 0;
  /** Ops applied or dropped since open; flush waiters wait for it to reach their target. */
  #settled = 0;
  #enqueued = 0;
  #waiters: Waiter[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerDue = Infinity;
  #failures = 0;
  #aboveHighWater = false;

  constructor(options: WriteQueueOptions) {
    this.#db = options.db;
    this.#path = options.path;
    this.#log = options.log;
    this.#now = options.now;
    this.#tuning = options.tuning;
    this.#writer = options.writer;
    this.#onOutboxInsert = options.onOutboxInsert;
  }

  push(op: StoreOp): void {
    this.#queue.push(op);
    this.#enqueued++;
    if (!this.#aboveHighWater && this.pending() >= this.#tuning.highWater) {
      this.#aboveHighWater = true;
      this.#log.warn("STORE", "write queue above high water", { depth: this.pending() });
    }
    // While failing, the retry timer is armed; pushing must not cut its backoff short.
    if (this.#failures === 0) this.#arm(this.#tuning.flushIntervalMs);
  }

  pending(): number {
    return this.#queue.length - this.#head;
  }

  /** Resolves when every op pushed before the call is on disk; rejects if a batch fails. */
  flush(): Promise<void> {
    if (this.pending() === 0) return Promise.resolve();
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    this.#waiters.push({ target: this.#enqueued, resolve, reject });
    if (this.#failures === 0) this.#arm(0);
    return promise;
  }

  /** Flushes, retrying failures for up to `closeTimeoutMs`, then stops the timer. */
  async drain(): Promise<void> {
    const deadline = performance.now() + this.#tuning.closeTimeoutMs;
    while (this.pending() > 0) {
      try {
        await this.flush();
      } catch {
        if (performance.now() > deadline) {
          this.#log.error("STORE", "records lost at close", { pending: this.pending() });
          break;
        }
        await new Promise((resolve) => setTimeout(resolve, this.#tuning.retryBaseMs));
      }
    }
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Schedules a slice in `delayMs` unless one is already due sooner. */
  #arm(delayMs: number): void {
    const due = performance.now() + delayMs;
    if (this.#timer !== undefined) {
      if (this.#timerDue <= due) return;
      clearTimeout(this.#timer);
    }
    this.#timerDue = due;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#timerDue = Infinity;
      this.#slice();
    }, delayMs);
  }

  #slice(): void {
    if (!this.#db.isOpen) return;
    const started = performance.now();
    let failure: Error | null = null;
    while (this.#head < this.#queue.length) {
      const end = Math.min(this.#queue.length, this.#head + this.#tuning.batchMaxOps);
      try {
        this.#transaction(this.#head, end);
        this.#advance(end);
      } catch (error) {
        failure = error instanceof Error ? error : new Error(String(error));
        if (!isTransient(error)) failure = this.#isolate(end);
        if (failure) break;
      }
      if (performance.now() - started > this.#tuning.sliceBudgetMs) break;
    }
    this.#compact();
    if (this.#writer.takeOutboxInserts() > 0) this.#onOutboxInsert();
    if (failure) return this.#failed(failure);
    if (this.#failures > 0) {
      this.#log.info("STORE", "writes resumed", { after_failures: this.#failures });
      this.#failures = 0;
    }
    this.#settle();
    if (this.pending() > 0) this.#arm(0);
  }

  /** Applies queue[head, end) in one transaction. */
  #transaction(head: number, end: number): void {
    const now = this.#now();
    this.#db.exec("BEGIN IMMEDIATE");
    try {
      for (let i = head; i < end; i++) this.#writer.apply(this.#queue[i], now);
      this.#db.exec("COMMIT");
    } catch (error) {
      if (this.#db.isTransaction) this.#db.exec("ROLLBACK");
      throw error;
    }
  }

  /** One op per transaction to find the rejected ones; stops at a transient failure. */
  #isolate(end: number): Error | null {
    while (this.#head < end) {
      try {
        this.#transaction(this.#head, this.#head + 1);
      } catch (error) {
        if (isTransient(error)) return error as Error;
        const op = this.#queue[this.#head];
        metrics.storeWriteFailed("dropped");
        this.#log.error("STORE", "write rejected and dropped", {
          kind: op.kind,
          call: op.kind === "start" ? op.call.callSid : op.callSid,
          error: String(error),
        });
      }
      this.#advance(this.#head + 1);
    }
    return null;
  }

  #advance(to: number): void {
    this.#settled += to - this.#head;
    this.#head = to;
  }

  /** Drops applied ops; the copy happens on this timer, never on the push path. */
  #compact(): void {
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
      this.#aboveHighWater = false;
    } else if (this.#head > 4096 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
  }

  #settle(): void {
    if (this.#waiters.length === 0) return;
    const still: Waiter[] = [];
    for (const waiter of this.#waiters) {
      if (this.#settled >= waiter.target) waiter.resolve();
      else still.push(waiter);
    }
    this.#waiters = still;
  }

  #failed(cause: Error): void {
    this.#failures++;
    metrics.storeWriteFailed("retried");
    if (this.#failures === 1 || this.#failures % 20 === 0) {
      this.#log.warn("STORE", "write failed, will retry", {
        error: cause.message,
        pending: this.pending(),
        failures: this.#failures,
      });
    }
    const error = new Error(`Cannot write call records to "${this.#path}": ${cause.message}`, {
      cause,
    });
    this.#settle();
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) waiter.reject(error);
    const { retryBaseMs, retryCapMs } = this.#tuning;
    this.#arm(Math.min(retryCapMs, retryBaseMs * 2 ** Math.min(20, this.#failures - 1)));
  }
}
