/**
 * The fleet store's write path. `push` is an array push (safe on the 20 ms paths); one pump task,
 * the only writer, applies records to PostgreSQL in batched transactions every `flushIntervalMs`.
 *
 * Policy when the database is down or slow: calls never wait. Records queue in memory; while
 * writes fail they move to the disk journal every `spillIntervalMs` (and at once past
 * `memoryMaxOps`), so a restart, or a killed process, loses at most the last moments. When writes
 * succeed again the journal is written first, then memory: every record in push order, each once
 * (writes are idempotent). `[STORE] store behind` and `kav_store_behind` say when records wait;
 * `[STORE] store caught up` when they are all in. A record the server refuses for good (a data
 * error) is isolated, logged and dropped so it cannot hold the rest back.
 *
 * Start: migrations (under an advisory lock), then the journal left by an earlier run, then this
 * node's calls an earlier boot left open are closed as `interrupted`, then live records.
 */
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import type { StoreOp } from "./_writer.ts";
import type { Journal } from "./_journal.ts";
import type { PgWriter, QueuedOp } from "./_pg_writer.ts";
import { migratePostgres } from "./_pg_schema.ts";
import {
  describePgError,
  isRejectedForGood,
  type PgQueryable,
  type PgSql,
  withTimeout,
} from "./_pg_client.ts";

/** Fleet-store timings (ms) and sizes; tests and benchmarks override some. */
export interface PgStoreTuning {
  readonly flushIntervalMs: number;
  readonly batchMaxOps: number;
  readonly retryBaseMs: number;
  readonly retryCapMs: number;
  /** Records held in memory before they go to the journal even while writes succeed (slow DB). */
  readonly memoryMaxOps: number;
  /** While writes fail, how often records in memory move to the journal. */
  readonly spillIntervalMs: number;
  /** A transaction that takes longer fails (and its pool is replaced: the connection may hang). */
  readonly writeTimeoutMs: number;
  /** How long `close()` keeps trying to write before leaving the rest in the journal. */
  readonly closeTimeoutMs: number;
  readonly retentionIntervalMs: number;
}

export const PG_STORE_DEFAULTS: PgStoreTuning = Object.freeze({
  flushIntervalMs: 50,
  batchMaxOps: 128,
  retryBaseMs: 100,
  retryCapMs: 5000,
  memoryMaxOps: 10_000,
  spillIntervalMs: 250,
  writeTimeoutMs: 10_000,
  closeTimeoutMs: 5000,
  retentionIntervalMs: 24 * 3600_000,
});

interface Waiter {
  readonly target: number;
  resolve(): void;
  reject(error: Error): void;
}

export interface PgWriteQueueOptions {
  readonly log: Logger;
  readonly now: () => number;
  readonly tuning: PgStoreTuning;
  readonly writer: PgWriter;
  readonly journal: Journal;
  readonly nodeId: string;
  /** This process's boot id. */
  readonly boot: string;
  /** The current pool; `reset()` replaces one that may hang on a dead connection. */
  readonly pool: { get(): PgSql; reset(): void };
  readonly onOutboxInsert: () => void;
  /** Once, after the migrations (the CRM outbox and retention may start). */
  readonly onReady: () => void;
}

type Stage = "migrate" | "replay" | "live";

export class PgWriteQueue {
  readonly #o: PgWriteQueueOptions;
  readonly #tuning: PgStoreTuning;
  #memory: QueuedOp[] = [];
  #head = 0;
  #seq = 0;
  /** Every record of this boot up to this sequence number is written (or dropped). */
  #appliedSeq = 0;
  #waiters: Waiter[] = [];
  #stage: Stage = "migrate";
  #failures = 0;
  #retryAt = 0;
  #behindSince: number | null = null;
  #journalFailed = false;
  #closing = false;
  #closeDeadline = Infinity;
  #wake: (() => void) | null = null;
  #kicked = false;
  #flushTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #running: Promise<void>;
  readonly #firstAttempt = Promise.withResolvers<unknown>();

  constructor(options: PgWriteQueueOptions) {
    this.#o = options;
    this.#tuning = options.tuning;
    if (options.journal.count > 0) {
      this.#behindSince = performance.now();
      options.log.warn("STORE", "store behind: journal from an earlier run to write", {
        records: options.journal.count,
      });
    }
    this.#running = this.#pump();
  }

  /** Resolves after the first migration attempt: null when it worked, else its error. */
  firstAttempt(): Promise<unknown> {
    return this.#firstAttempt.promise;
  }

  push(op: StoreOp): void {
    this.#memory.push({ boot: this.#o.boot, seq: ++this.#seq, op });
    if (this.#memPending() >= this.#tuning.memoryMaxOps) this.#wakeUp();
    else if (this.#failures === 0 && this.#flushTimer === undefined) {
      this.#flushTimer = setTimeout(() => {
        this.#flushTimer = undefined;
        this.#wakeUp();
      }, this.#tuning.flushIntervalMs);
    }
  }

  /** Records not yet in the database: in memory plus in the journal. */
  pending(): number {
    return this.#memPending() + this.#o.journal.count;
  }

  /** Whether records are waiting for the database (down, slow, or a journal to write). */
  get behind(): boolean {
    return this.#behindSince !== null;
  }

  /** Resolves when every record pushed before the call is written; rejects if a write fails. */
  flush(): Promise<void> {
    if (this.#appliedSeq >= this.#seq) return Promise.resolve();
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    this.#waiters.push({ target: this.#seq, resolve, reject });
    if (this.#failures === 0) this.#wakeUp();
    return promise;
  }

  /** Writes what it can within `closeTimeoutMs`; the rest stays in the journal for the next start. */
  async close(): Promise<void> {
    if (!this.#closing) {
      this.#closing = true;
      this.#closeDeadline = performance.now() + this.#tuning.closeTimeoutMs;
    }
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    this.#wakeUp();
    await this.#running;
  }

  #memPending(): number {
    return this.#memory.length - this.#head;
  }

  #wakeUp(): void {
    if (this.#wake !== null) this.#wake();
    else this.#kicked = true;
  }

  #sleep(ms: number): Promise<void> {
    if (this.#kicked) {
      this.#kicked = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wake = null;
        this.#kicked = false;
        resolve();
      };
      const timer = Number.isFinite(ms) ? setTimeout(done, Math.max(0, ms)) : undefined;
      this.#wake = done;
    });
  }

  async #pump(): Promise<void> {
    for (;;) {
      const idle = this.#memPending() === 0 && this.#o.journal.count === 0;
      if (this.#closing && (idle || performance.now() >= this.#closeDeadline)) break;
      if (this.#failures > 0 && performance.now() < this.#retryAt) {
        await this.#spill();
        const until = Math.min(this.#retryAt, this.#closeDeadline);
        await this.#sleep(Math.min(until - performance.now(), this.#tuning.spillIntervalMs));
        continue;
      }
      let worked: boolean;
      try {
        worked = await this.#step();
      } catch (error) {
        this.#failed(error);
        continue;
      }
      if (this.#failures > 0) {
        this.#o.log.info("STORE", "writes resumed", { after_failures: this.#failures });
        this.#failures = 0;
      }
      if (worked) {
        if (this.#memPending() > this.#tuning.memoryMaxOps) {
          this.#markBehind("the database is slow", null);
          await this.#spill();
        }
        continue;
      }
      this.#caughtUp();
      if (this.#closing) break;
      await this.#sleep(Infinity);
    }
    // What could not be written waits in the journal for the next start.
    await this.#spill();
    const waiters = this.#waiters;
    this.#waiters = [];
    const error = new Error(
      "Cannot write call records to PostgreSQL: store closed, kept in journal",
    );
    for (const waiter of waiters) waiter.reject(error);
    this.#firstAttempt.resolve(new Error("Call store closed before the database answered"));
  }

  /** One unit of work; false when there is nothing to write. */
  async #step(): Promise<boolean> {
    const { journal, writer, log } = this.#o;
    if (this.#stage === "migrate") {
      try {
        await withTimeout(
          migratePostgres(this.#o.pool.get(), this.#o.nodeId),
          this.#tuning.writeTimeoutMs,
          "migrating the store",
        );
      } catch (error) {
        this.#firstAttempt.resolve(error);
        if (error instanceof DOMException && error.name === "TimeoutError") this.#o.pool.reset();
        throw error;
      }
      this.#stage = "replay";
      this.#firstAttempt.resolve(null);
      this.#o.onReady();
      return true;
    }
    if (journal.count > 0) {
      const entries = await journal.peek(this.#tuning.batchMaxOps);
      if (entries.length > 0) {
        await this.#write(entries);
        await journal.consume(entries.length);
        this.#applied(entries);
        return true;
      }
    }
    if (this.#stage === "replay") {
      const closed = await this.#transaction((tx) =>
        writer.closeInterrupted(tx, this.#o.boot, this.#o.now())
      );
      for (const callSid of closed) {
        log.warn("STORE", "call closed as interrupted", { call: callSid });
      }
      this.#afterWrite();
      this.#stage = "live";
      return true;
    }
    if (this.#memPending() > 0) {
      const end = Math.min(this.#memory.length, this.#head + this.#tuning.batchMaxOps);
      const entries = this.#memory.slice(this.#head, end);
      await this.#write(entries);
      this.#head = end;
      this.#compact();
      this.#applied(entries);
      return true;
    }
    return false;
  }

  /** One transaction for the batch; on a data error, one per record to drop only the bad ones. */
  async #write(entries: readonly QueuedOp[]): Promise<void> {
    const { writer, log } = this.#o;
    const now = this.#o.now();
    try {
      await this.#transaction(async (tx) => {
        // Turns and events need no answer: pipelined on the transaction's connection (sent in
        // order, one round trip for many). A start or an end reads, so it waits for those first.
        let inflight: Promise<void>[] = [];
        for (const entry of entries) {
          const kind = entry.op.kind;
          if (kind === "turn" || kind === "event" || kind === "tool" || kind === "transfer") {
            inflight.push(writer.apply(tx, entry, now));
            continue;
          }
          await Promise.all(inflight);
          inflight = [];
          await writer.apply(tx, entry, now);
        }
        await Promise.all(inflight);
      });
    } catch (error) {
      if (!isRejectedForGood(error)) throw error;
      for (const entry of entries) {
        try {
          await this.#transaction((tx) => writer.apply(tx, entry, now));
        } catch (single) {
          if (!isRejectedForGood(single)) throw single;
          metrics.storeWriteFailed("dropped");
          log.error("STORE", "write rejected and dropped", {
            kind: entry.op.kind,
            call: entry.op.kind === "start" ? entry.op.call.callSid : entry.op.callSid,
            error: describePgError(single),
          });
        }
      }
    }
    this.#afterWrite();
  }

  async #transaction<T>(work: (tx: PgQueryable) => Promise<T>): Promise<T> {
    const sql = this.#o.pool.get();
    try {
      return await withTimeout(
        sql.begin((tx) => work(tx)) as Promise<T>,
        this.#tuning.writeTimeoutMs,
        "a store transaction",
      );
    } catch (error) {
      // A hung connection would hold every later write: start over on fresh ones.
      if (error instanceof DOMException && error.name === "TimeoutError") this.#o.pool.reset();
      throw error;
    }
  }

  #afterWrite(): void {
    if (this.#o.writer.takeOutboxInserts() > 0) this.#o.onOutboxInsert();
  }

  #applied(entries: readonly QueuedOp[]): void {
    for (const entry of entries) {
      if (entry.boot === this.#o.boot && entry.seq > this.#appliedSeq) this.#appliedSeq = entry.seq;
    }
    if (this.pending() === 0) this.#caughtUp();
    if (this.#waiters.length === 0) return;
    const still: Waiter[] = [];
    for (const waiter of this.#waiters) {
      if (this.#appliedSeq >= waiter.target) waiter.resolve();
      else still.push(waiter);
    }
    this.#waiters = still;
  }

  /** Moves every record in memory to the end of the journal. */
  async #spill(): Promise<void> {
    const count = this.#memPending();
    if (count === 0) return;
    const entries = this.#memory.slice(this.#head);
    try {
      await this.#o.journal.append(entries);
    } catch (error) {
      if (!this.#journalFailed) {
        this.#o.log.error("STORE", "journal write failed, records stay in memory", {
          error: error instanceof Error ? error.message : String(error),
          pending: this.pending(),
        });
      }
      this.#journalFailed = true;
      return;
    }
    this.#journalFailed = false;
    this.#head += entries.length;
    this.#compact();
  }

  #failed(error: unknown): void {
    this.#failures++;
    metrics.storeWriteFailed("retried");
    const message = describePgError(error);
    if (!this.#markBehind("the database is unavailable", message) && this.#failures % 20 === 0) {
      this.#o.log.warn("STORE", "write failed, will retry", {
        error: message,
        pending: this.pending(),
        failures: this.#failures,
      });
    }
    const waiters = this.#waiters;
    this.#waiters = [];
    const rejection = new Error(`Cannot write call records to PostgreSQL: ${message}`, {
      cause: error,
    });
    for (const waiter of waiters) waiter.reject(rejection);
    const { retryBaseMs, retryCapMs } = this.#tuning;
    const delay = Math.min(retryCapMs, retryBaseMs * 2 ** Math.min(20, this.#failures - 1));
    this.#retryAt = performance.now() + delay;
  }

  /** Logs the first moment records start waiting; false when already behind. */
  #markBehind(why: string, error: string | null): boolean {
    if (this.#behindSince !== null) return false;
    this.#behindSince = performance.now();
    this.#o.log.warn("STORE", "store behind: records wait in memory and the journal", {
      reason: why,
      ...(error === null ? {} : { error }),
      pending: this.pending(),
    });
    return true;
  }

  #caughtUp(): void {
    if (this.#behindSince === null) return;
    const behindMs = Math.round(performance.now() - this.#behindSince);
    this.#behindSince = null;
    this.#o.log.info("STORE", "store caught up", { behind_ms: behindMs });
  }

  #compact(): void {
    if (this.#head === this.#memory.length) {
      this.#memory = [];
      this.#head = 0;
    } else if (this.#head > 4096 && this.#head * 2 > this.#memory.length) {
      this.#memory = this.#memory.slice(this.#head);
      this.#head = 0;
    }
  }
}
