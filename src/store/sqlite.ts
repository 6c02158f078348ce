/**
 * The call store on `node:sqlite`. Callers only enqueue; `_write_queue.ts` applies the queue in
 * batched transactions off the 20 ms paths (its header states the queue policy: unbounded, never
 * drops a record SQLite can accept). WAL checkpoints (the only fsyncs) run on a worker thread.
 *
 * Durability: WAL with synchronous=NORMAL. A commit survives a killed process (power loss may lose
 * the last commits), and a completed turn is committed within `flushIntervalMs` of
 * `turnCompleted`. At the next open, calls a killed process left open are closed as `interrupted`.
 */
import { DatabaseSync } from "node:sqlite";
import type { CrmConfig } from "../config/types.ts";
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import type {
  CallEvent,
  CallStarted,
  CallStore,
  DialEndedRecord,
  EndRecord,
  ToolCallRecord,
  TransferRecord,
  TurnRecord,
} from "./types.ts";
import { migrate } from "./_schema.ts";
import { type StoreOp, StoreWriter } from "./_writer.ts";
import { STORE_DEFAULTS, type StoreTuning, WriteQueue } from "./_write_queue.ts";
import { RETENTION_CHUNK, sweepRetentionChunk, sweepRetentionOrphans } from "./_retention.ts";
import { type Checkpointer, startCheckpointer } from "./_checkpointer.ts";
import { type CrmBackoff, CrmOutbox, sqliteOutboxTable } from "./crm_outbox.ts";
import { type CallDetail, CallReader, type CallRow } from "./read.ts";
import type { CallHistory, HistorySource } from "./history.ts";
import { openSqliteHistory } from "./_sqlite_history.ts";

export { STORE_DEFAULTS, type StoreTuning };

export interface OpenCallStoreOptions {
  readonly path: string;
  readonly log: Logger;
  /** `server.node_id`, written on each call row. */
  readonly nodeId?: string;
  /** Calls older than this many days are deleted at open and daily; 0 keeps everything. */
  readonly retentionDays: number;
  /** CRM delivery; absent or a null url disables it. */
  readonly crm?: Pick<CrmConfig, "url" | "secret">;
  /** Epoch ms clock. */
  readonly now?: () => number;
  readonly tuning?: Partial<StoreTuning>;
  readonly crmDelivery?: { backoff?: CrmBackoff; timeoutMs?: number; random?: () => number };
}

interface StoreParts {
  readonly db: DatabaseSync;
  readonly path: string;
  readonly log: Logger;
  readonly now: () => number;
  readonly tuning: StoreTuning;
  readonly writer: StoreWriter;
  readonly outbox: CrmOutbox | null;
  readonly checkpointer: Checkpointer;
  readonly retentionDays: number;
}

/** Use {@link openCallStore}. */
export class SqliteCallStore implements CallStore, HistorySource {
  readonly #db: DatabaseSync;
  readonly #path: string;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #queue: WriteQueue;
  readonly #reader: CallReader;
  readonly #outbox: CrmOutbox | null;
  readonly #checkpointer: Checkpointer;
  readonly #retentionDays: number;
  #retentionTimer: ReturnType<typeof setInterval> | undefined;
  #closed: Promise<void> | null = null;

  constructor(parts: StoreParts) {
    this.#db = parts.db;
    this.#path = parts.path;
    this.#log = parts.log;
    this.#now = parts.now;
    this.#reader = new CallReader(parts.db);
    this.#outbox = parts.outbox;
    this.#checkpointer = parts.checkpointer;
    this.#retentionDays = parts.retentionDays;
    this.#queue = new WriteQueue({ ...parts, onOutboxInsert: () => this.#outbox?.notify() });
    if (parts.retentionDays > 0) {
      const timer = setInterval(() => void this.sweepRetention(), parts.tuning.retentionIntervalMs);
      // A daily chore must not keep a finished process alive.
      Deno.unrefTimer(timer);
      this.#retentionTimer = timer;
    }
  }

  callStarted(call: CallStarted): void {
    this.#push({ kind: "start", call });
  }
  turnCompleted(callSid: string, turn: TurnRecord): void {
    this.#push({ kind: "turn", callSid, turn });
  }
  event(callSid: string, event: CallEvent): void {
    this.#push({ kind: "event", callSid, event });
  }
  callEnded(callSid: string, ended: EndRecord): void {
    this.#push({ kind: "end", callSid, ended });
  }
  toolCall(callSid: string, tool: ToolCallRecord): void {
    this.#push({ kind: "tool", callSid, tool });
  }
  transfer(callSid: string, transfer: TransferRecord): void {
    this.#push({ kind: "transfer", callSid, transfer });
  }
  dialEnded(callSid: string, dial: DialEndedRecord): void {
    this.#push({ kind: "dial", callSid, dial });
  }

  pending(): number {
    return this.#queue.pending();
  }

  /** Resolves when every write queued before the call is on disk; rejects if a batch fails. */
  flush(): Promise<void> {
    return this.#queue.flush();
  }

  /** Drains the queue (retrying up to `closeTimeoutMs`), stops CRM delivery and closes the file. */
  close(): Promise<void> {
    this.#closed ??= this.#shutdown();
    return this.#closed;
  }

  /** Calls started at or after `sinceMs` (epoch ms), oldest first. Sees only flushed writes. */
  listCalls(options: { sinceMs: number; limit?: number }): CallRow[] {
    return this.#reader.listCalls(options);
  }

  /** A call with its turns and events, or null. Sees only flushed writes. */
  getCall(callSid: string): CallDetail | null {
    return this.#reader.getCall(callSid);
  }

  /** The console's history: reads on a thread of their own (see `_sqlite_history.ts`). */
  openHistory(): Promise<CallHistory> {
    return openSqliteHistory({ path: this.#path, log: this.#log, fallback: this.#reader });
  }

  /** CRM summaries not yet delivered (0 with CRM off). */
  crmPending(): number {
    return this.#outbox?.pending() ?? 0;
  }

  /** Deletes calls past retention in small transactions; returns how many. */
  async sweepRetention(): Promise<number> {
    if (this.#retentionDays <= 0 || !this.#db.isOpen) return 0;
    const cutoff = this.#now() - this.#retentionDays * 86_400_000;
    let total = 0;
    try {
      for (;;) {
        const deleted = sweepRetentionChunk(this.#db, cutoff);
        total += deleted;
        if (deleted < RETENTION_CHUNK) break;
        // Yield between chunks so the media paths keep their cadence.
        await new Promise((resolve) => setTimeout(resolve, 0));
        if (!this.#db.isOpen) break;
      }
      if (this.#db.isOpen) sweepRetentionOrphans(this.#db, cutoff);
    } catch (error) {
      this.#log.warn("STORE", "retention sweep failed", { error: String(error) });
    }
    if (total > 0) {
      this.#log.info("STORE", "retention deleted calls", {
        count: total,
        days: this.#retentionDays,
      });
    }
    return total;
  }

  #push(op: StoreOp): void {
    if (this.#closed) {
      this.#log.error("STORE", "write after close dropped", { kind: op.kind });
      return;
    }
    this.#queue.push(op);
  }

  async #shutdown(): Promise<void> {
    clearInterval(this.#retentionTimer);
    await this.#queue.drain();
    await this.#outbox?.close();
    await this.#checkpointer.stop();
    metrics.watchStoreQueue(() => 0);
    metrics.watchCrmOutbox(() => 0);
    this.#db.close();
  }
}

function openError(path: string, error: unknown): Error {
  if (error instanceof RangeError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new Error(`Cannot open call store "${path}": ${message}`, { cause: error });
}

/** Pragmas, migrations, then closes the calls a killed process left open. */
function prepare(db: DatabaseSync, options: OpenCallStoreOptions, busyTimeoutMs: number) {
  const { path, log } = options;
  db.exec(`PRAGMA busy_timeout = ${Math.max(0, Math.round(busyTimeoutMs))}`);
  const mode = db.prepare("PRAGMA journal_mode = WAL").get()?.journal_mode;
  if (mode !== "wal") log.warn("STORE", "not in WAL mode", { mode: String(mode) });
  db.exec("PRAGMA synchronous = NORMAL");
  migrate(db, path);
  const writer = new StoreWriter(db, {
    log,
    crm: (options.crm?.url ?? null) !== null,
    nodeId: options.nodeId ?? null,
  });
  db.exec("BEGIN IMMEDIATE");
  const interrupted = writer.closeInterrupted((options.now ?? Date.now)());
  db.exec("COMMIT");
  for (const callSid of interrupted) {
    log.warn("STORE", "call closed as interrupted", { call: callSid });
  }
  return writer;
}

/**
 * Opens (creating and migrating as needed) the store at `path`, closes calls a killed process left
 * open as `interrupted`, applies retention, and resumes CRM delivery of undelivered summaries.
 */
export async function openCallStore(options: OpenCallStoreOptions): Promise<SqliteCallStore> {
  const { path, log } = options;
  const tuning: StoreTuning = { ...STORE_DEFAULTS, ...options.tuning };
  const now = options.now ?? Date.now;
  let db: DatabaseSync;
  try {
    db = new DatabaseSync(path);
  } catch (error) {
    throw openError(path, error);
  }
  let writer: StoreWriter;
  try {
    writer = prepare(db, options, tuning.busyTimeoutMs);
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK");
    db.close();
    throw openError(path, error);
  }
  const checkpointer: Checkpointer = tuning.checkpointIntervalMs > 0 && path !== ":memory:"
    ? await startCheckpointer({ db, path, log, intervalMs: tuning.checkpointIntervalMs })
    : { offThread: false, stop: () => Promise.resolve() };
  const crmUrl = options.crm?.url ?? null;
  const outbox = crmUrl === null ? null : new CrmOutbox({
    table: sqliteOutboxTable(db),
    url: crmUrl,
    secret: options.crm?.secret ?? null,
    log,
    now,
    ...options.crmDelivery,
  });
  const store = new SqliteCallStore({
    db,
    path,
    log,
    now,
    tuning,
    writer,
    outbox,
    checkpointer,
    retentionDays: options.retentionDays,
  });
  await store.sweepRetention();
  metrics.watchStoreQueue(() => store.pending());
  metrics.watchCrmOutbox(() => store.crmPending());
  outbox?.notify();
  return store;
}
