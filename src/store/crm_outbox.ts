/**
 * Delivers call summaries from the durable `crm_outbox` table. Rows are inserted in the same
 * transaction as the call's end, so a summary exists iff the end is on disk; this loop POSTs them
 * one at a time and marks them delivered on a 2xx. It never blocks a call: it only reads due rows
 * and updates their state, each a single small statement. The table is SQLite's (below) or
 * PostgreSQL's (`_pg_outbox.ts`, where a lease keeps two nodes from sending the same row).
 *
 * Delivery is at-least-once: a crash between the receiver's 2xx and our update re-sends the row.
 * Each row has a fixed id sent as `X-Kav-Delivery` (and `delivery_id` in the body), so a receiver
 * that keeps the ids it has accepted sees every summary exactly once.
 */
import { createHmac } from "node:crypto";
import type { DatabaseSync } from "node:sqlite";
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";

/** Retry timing, ms. Delay before attempt n+1 is base·2^(n-1) capped, with ±25 % jitter. */
export interface CrmBackoff {
  readonly baseMs: number;
  readonly capMs: number;
}

export const CRM_DEFAULTS = Object.freeze({
  backoff: Object.freeze({ baseMs: 1000, capMs: 5 * 60_000 }),
  /** Per-attempt request timeout, ms. */
  timeoutMs: 10_000,
  /** Rows read per pass. */
  batch: 16,
});

export interface CrmOutboxOptions {
  readonly table: OutboxTable;
  readonly url: string;
  /** HMAC key; null sends no signature header. */
  readonly secret: string | null;
  readonly log: Logger;
  readonly now?: () => number;
  readonly backoff?: CrmBackoff;
  readonly timeoutMs?: number;
  /** In [0, 1); jitter source. */
  readonly random?: () => number;
  /** Rows taken per read (1 where a lease covers one attempt). */
  readonly batch?: number;
  /** Look for due rows at least this often (ms), even with none known: other nodes add rows. */
  readonly pollMs?: number;
}

/** `sha256=<hex HMAC-SHA256(secret, body)>`, the `X-Kav-Signature` value. */
export function signCrmBody(secret: string, body: string): string {
  return "sha256=" + createHmac("sha256", secret).update(body).digest("hex");
}

/** Delay in ms before the attempt after attempt number `attempts` (1-based) failed. */
export function crmRetryDelayMs(
  attempts: number,
  backoff: CrmBackoff,
  random: () => number,
): number {
  const exponential = Math.min(backoff.capMs, backoff.baseMs * 2 ** Math.max(0, attempts - 1));
  return Math.round(exponential * (0.75 + random() * 0.5));
}

/** The error and its cause ("fetch failed: Connection refused"), without the URL (it may carry a token). */
export function describeFailure(error: unknown, url: string): string {
  let text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  const cause = error instanceof Error ? error.cause : undefined;
  if (cause instanceof Error) text += `: ${cause.message}`;
  return text.replaceAll(url, "<crm.url>").replaceAll(new URL(url).host, "<crm.host>");
}

export interface OutboxRow {
  readonly id: string;
  readonly callSid: string;
  readonly body: string;
  /** Attempts recorded before this one. */
  readonly attempts: number;
}

/** Where the outbox rows live. Every method may throw; the loop then waits and tries again. */
export interface OutboxTable {
  /** Up to `limit` rows due at `now`, oldest first, each taken for this deliverer until recorded. */
  claimDue(now: number, limit: number): Promise<OutboxRow[]> | OutboxRow[];
  /** When the next undelivered row becomes due (epoch ms), or null when none is left. */
  nextDueAt(): Promise<number | null> | number | null;
  /** Summaries not yet delivered, as last seen (a metric reads it; it must not block). */
  pending(): number;
  delivered(row: OutboxRow, record: { attempts: number; at: number; status: number | null }):
    | Promise<void>
    | void;
  failed(
    row: OutboxRow,
    record: {
      attempts: number;
      nextAttemptAt: number;
      status: number | null;
      error: string;
    },
  ): Promise<void> | void;
}

/** The SQLite outbox: one process delivers, so a due row needs no lease. */
export function sqliteOutboxTable(db: DatabaseSync): OutboxTable {
  const due = db.prepare(
    `SELECT id, call_sid, body, attempts FROM crm_outbox
     WHERE delivered_at IS NULL AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?`,
  );
  const next = db.prepare(
    "SELECT min(next_attempt_at) AS next FROM crm_outbox WHERE delivered_at IS NULL",
  );
  const count = db.prepare("SELECT count(*) AS n FROM crm_outbox WHERE delivered_at IS NULL");
  const delivered = db.prepare(
    "UPDATE crm_outbox SET attempts = ?, delivered_at = ?, last_status = ?, last_error = NULL WHERE id = ?",
  );
  const failed = db.prepare(
    "UPDATE crm_outbox SET attempts = ?, next_attempt_at = ?, last_status = ?, last_error = ? WHERE id = ?",
  );
  return {
    claimDue: (now, limit) =>
      due.all(now, limit).map((row) => ({
        id: String(row.id),
        callSid: String(row.call_sid),
        body: String(row.body),
        attempts: Number(row.attempts),
      })),
    nextDueAt() {
      const value = next.get()?.next;
      return typeof value === "number" ? value : null;
    },
    pending: () => db.isOpen ? Number(count.get()?.n ?? 0) : 0,
    delivered(row, r) {
      delivered.run(r.attempts, r.at, r.status, row.id);
    },
    failed(row, r) {
      failed.run(r.attempts, r.nextAttemptAt, r.status, r.error, row.id);
    },
  };
}

/** The delivery loop; `notify()` after inserting rows, `close()` to stop. */
export class CrmOutbox {
  readonly #url: string;
  readonly #secret: string | null;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #backoff: CrmBackoff;
  readonly #timeoutMs: number;
  readonly #random: () => number;
  readonly #table: OutboxTable;
  readonly #batch: number;
  readonly #pollMs: number | null;
  readonly #closing = new AbortController();
  /** The current (or last) pass; `#busy` says whether it is still going. */
  #running: Promise<void> = Promise.resolve();
  #busy = false;
  #again = false;
  /** An outbox update failed: wait before reading due rows again instead of spinning. */
  #stalled = false;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: CrmOutboxOptions) {
    this.#table = options.table;
    this.#batch = options.batch ?? CRM_DEFAULTS.batch;
    this.#pollMs = options.pollMs ?? null;
    this.#url = options.url;
    this.#secret = options.secret;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
    this.#backoff = options.backoff ?? CRM_DEFAULTS.backoff;
    this.#timeoutMs = options.timeoutMs ?? CRM_DEFAULTS.timeoutMs;
    this.#random = options.random ?? Math.random;
  }

  /** Summaries not yet delivered. */
  pending(): number {
    if (this.#closing.signal.aborted) return 0;
    return this.#table.pending();
  }

  /** Looks for due rows now (after an insert, or at start to resume rows left by a restart). */
  notify(): void {
    if (this.#closing.signal.aborted) return;
    this.#again = true;
    if (this.#busy) return;
    // Set before the call: a pass with nothing due completes synchronously.
    this.#busy = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#running = this.#loop();
  }

  /** Stops the loop; an attempt in flight is aborted and retried after the next start. */
  async close(): Promise<void> {
    this.#closing.abort(new Error("Call store closing"));
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  async #loop(): Promise<void> {
    try {
      while (this.#again && !this.#closing.signal.aborted) {
        this.#again = false;
        let rows = await this.#readDue();
        while (rows.length > 0 && !this.#closing.signal.aborted && !this.#stalled) {
          for (const row of rows) {
            if (this.#closing.signal.aborted || this.#stalled) break;
            await this.#deliver(row);
          }
          if (this.#closing.signal.aborted || this.#stalled) break;
          rows = await this.#readDue();
        }
      }
    } catch (error) {
      this.#log.error("CRM", "outbox read failed", { error: String(error) });
      this.#stalled = true;
    } finally {
      this.#busy = false;
    }
    await this.#schedule();
  }

  async #readDue(): Promise<OutboxRow[]> {
    return await this.#table.claimDue(this.#now(), this.#batch);
  }

  async #schedule(): Promise<void> {
    if (this.#closing.signal.aborted) return;
    let next: number | null = null;
    try {
      next = await this.#table.nextDueAt();
    } catch (error) {
      this.#log.error("CRM", "outbox read failed", { error: String(error) });
      this.#stalled = true;
    }
    if (this.#stalled) {
      this.#stalled = false;
      next = Math.max(next ?? 0, this.#now() + this.#backoff.baseMs);
    }
    if (this.#pollMs !== null) next = Math.min(next ?? Infinity, this.#now() + this.#pollMs);
    // A pass that was notified meanwhile runs on, and schedules again when it ends.
    if (next === null || this.#busy || this.#closing.signal.aborted) return;
    const delay = Math.min(Math.max(0, next - this.#now()), 2 ** 31 - 1);
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.notify(), delay);
  }

  async #deliver(row: OutboxRow): Promise<void> {
    const attempts = row.attempts + 1;
    const headers: Record<string, string> = {
      "Content-Type": "application/json",
      "X-Kav-Delivery": row.id,
    };
    if (this.#secret !== null) headers["X-Kav-Signature"] = signCrmBody(this.#secret, row.body);
    const timeout = new AbortController();
    const timer = setTimeout(
      () => timeout.abort(new Error(`Timed out after ${this.#timeoutMs} ms`)),
      this.#timeoutMs,
    );
    let status: number | null = null;
    let failure: string | null = null;
    try {
      const response = await fetch(this.#url, {
        method: "POST",
        headers,
        body: row.body,
        signal: AbortSignal.any([this.#closing.signal, timeout.signal]),
      });
      status = response.status;
      await response.body?.cancel();
      if (!response.ok) failure = `status ${status}`;
    } catch (error) {
      failure = describeFailure(error, this.#url);
    } finally {
      clearTimeout(timer);
    }
    await this.#record(row, attempts, status, failure);
  }

  async #record(
    row: OutboxRow,
    attempts: number,
    status: number | null,
    failure: string | null,
  ): Promise<void> {
    const fields = { call: row.callSid, delivery: row.id, attempt: attempts, status };
    try {
      if (failure === null) {
        await this.#table.delivered(row, { attempts, at: this.#now(), status });
        metrics.crmDeliveryAttempt("delivered");
        this.#log.info("CRM", "summary delivered", fields);
        return;
      }
      const delay = crmRetryDelayMs(attempts, this.#backoff, this.#random);
      await this.#table.failed(row, {
        attempts,
        nextAttemptAt: this.#now() + delay,
        status,
        error: failure,
      });
      metrics.crmDeliveryAttempt("failed");
      this.#log.warn("CRM", "delivery failed", { ...fields, error: failure, retry_ms: delay });
    } catch (error) {
      // The row stays due and is tried again later: at-least-once, the delivery id dedups.
      this.#log.error("CRM", "outbox update failed", { ...fields, error: String(error) });
      this.#stalled = true;
    }
  }
}
