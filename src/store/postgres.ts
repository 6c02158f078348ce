/**
 * The fleet call store on PostgreSQL (`storage.url`): every Kav node of a fleet writes its calls to
 * one database, reads see the whole fleet, CRM summaries are delivered once across nodes and
 * retention runs once. Callers only enqueue; `_pg_queue.ts` writes in batched transactions off the
 * 20 ms paths and keeps records in memory and a disk journal while the database is away (its
 * header states the policy).
 *
 * Durability: a completed turn is committed within `flushIntervalMs` (plus a round trip) of
 * `turnCompleted` while the database answers; while it does not, within `spillIntervalMs` it is in
 * the journal, which the next start writes before anything else.
 */
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
import type { StoreOp } from "./_writer.ts";
import type { CallDetail, CallRow } from "./read.ts";
import type { CallHistory, HistorySource } from "./history.ts";
import { type CrmBackoff, CrmOutbox } from "./crm_outbox.ts";
import { createPgClient, describePgError, isConfigurationError, type PgSql } from "./_pg_client.ts";
import { Journal } from "./_journal.ts";
import { PgCallReader } from "./_pg_read.ts";
import { pgOutboxTable } from "./_pg_outbox.ts";
import { PG_STORE_DEFAULTS, type PgStoreTuning, PgWriteQueue } from "./_pg_queue.ts";
import { claimChore, sweepPgRetention } from "./_pg_retention.ts";
import { PgWriter } from "./_pg_writer.ts";

export { PG_STORE_DEFAULTS, type PgStoreTuning };

export interface PgCrmDelivery {
  readonly backoff?: CrmBackoff;
  readonly timeoutMs?: number;
  readonly random?: () => number;
  /** How long a node keeps a row it took (default twice the timeout plus 5 s). */
  readonly leaseMs?: number;
  /** How often to look for rows other nodes left (default 10 s). */
  readonly pollMs?: number;
}

export interface OpenPostgresStoreOptions {
  /** `storage.url`. */
  readonly url: string;
  /** `storage.password` (PGPASSWORD or the credential db_password). */
  readonly password: string | null;
  /** `server.node_id`. */
  readonly nodeId: string;
  /** The outage journal's directory (under the state directory). */
  readonly journalDir: string;
  readonly log: Logger;
  /** Calls older than this many days are deleted (by one node of the fleet); 0 keeps everything. */
  readonly retentionDays: number;
  readonly crm?: Pick<CrmConfig, "url" | "secret">;
  /** Epoch ms clock. */
  readonly now?: () => number;
  readonly tuning?: Partial<PgStoreTuning>;
  readonly crmDelivery?: PgCrmDelivery;
  /** Connections at most (default 4). */
  readonly poolSize?: number;
  /** How long `open` waits for the database before starting behind (default 5000 ms). */
  readonly startWaitMs?: number;
}

const DEFAULT_CRM_TIMEOUT_MS = 10_000;

/** Use {@link openPostgresStore}. */
export class PostgresCallStore implements CallStore, HistorySource {
  readonly #options: OpenPostgresStoreOptions;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #tuning: PgStoreTuning;
  readonly #boot = crypto.randomUUID();
  readonly #queue: PgWriteQueue;
  readonly #outbox: CrmOutbox | null;
  #pool: PgSql;
  #retentionTimer: ReturnType<typeof setInterval> | undefined;
  #closed: Promise<void> | null = null;

  constructor(options: OpenPostgresStoreOptions, journal: Journal) {
    this.#options = options;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
    this.#tuning = { ...PG_STORE_DEFAULTS, ...options.tuning };
    this.#pool = this.#createPool();
    const crmUrl = options.crm?.url ?? null;
    const delivery = options.crmDelivery ?? {};
    const timeoutMs = delivery.timeoutMs ?? DEFAULT_CRM_TIMEOUT_MS;
    this.#outbox = crmUrl === null ? null : new CrmOutbox({
      table: pgOutboxTable({
        pool: () => this.#pool,
        nodeId: options.nodeId,
        leaseMs: delivery.leaseMs ?? 2 * timeoutMs + 5000,
        now: this.#now,
      }),
      url: crmUrl,
      secret: options.crm?.secret ?? null,
      log: this.#log,
      now: this.#now,
      backoff: delivery.backoff,
      timeoutMs,
      random: delivery.random,
      // One row per lease: a batch would hold rows while earlier ones are sent.
      batch: 1,
      pollMs: delivery.pollMs ?? 10_000,
    });
    this.#queue = new PgWriteQueue({
      log: this.#log,
      now: this.#now,
      tuning: this.#tuning,
      writer: new PgWriter({ nodeId: options.nodeId, log: this.#log, crm: crmUrl !== null }),
      journal,
      nodeId: options.nodeId,
      boot: this.#boot,
      pool: { get: () => this.#pool, reset: () => this.#resetPool() },
      onOutboxInsert: () => this.#outbox?.notify(),
      onReady: () => this.#ready(),
    });
  }

  /** Resolves after the first migration attempt: null when it worked, else its error. */
  firstAttempt(): Promise<unknown> {
    return this.#queue.firstAttempt();
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

  /** Records not yet in the database (memory and journal). */
  pending(): number {
    return this.#queue.pending();
  }

  /** Whether records are waiting for the database. */
  get behind(): boolean {
    return this.#queue.behind;
  }

  /** This process's boot id (call rows carry it). */
  get bootId(): string {
    return this.#boot;
  }

  /** Resolves when every record queued before the call is in the database; rejects if a write fails. */
  flush(): Promise<void> {
    return this.#queue.flush();
  }

  /** Writes what it can (up to `closeTimeoutMs`), journals the rest, stops delivery, closes the pool. */
  close(): Promise<void> {
    this.#closed ??= this.#shutdown();
    return this.#closed;
  }

  /** Calls of the whole fleet started at or after `sinceMs`, oldest first. */
  listCalls(options: { sinceMs: number; limit?: number }): Promise<CallRow[]> {
    return new PgCallReader(this.#pool).listCalls(options);
  }

  /** A call of any node with its turns and events, or null. */
  getCall(callSid: string): Promise<CallDetail | null> {
    return new PgCallReader(this.#pool).getCall(callSid);
  }

  /** The console's history: the whole fleet's calls, read over the pool. */
  openHistory(): Promise<CallHistory> {
    const reader = () => new PgCallReader(this.#pool);
    return Promise.resolve({
      searchCalls: (query) => reader().searchCalls(query),
      getCall: (callSid) => reader().getCall(callSid),
      close: () => Promise.resolve(),
    });
  }

  /** CRM summaries not yet delivered by any node, as last counted (0 with CRM off). */
  crmPending(): number {
    return this.#outbox?.pending() ?? 0;
  }

  /**
   * Deletes calls past retention if no node of the fleet did within the retention interval;
   * returns how many (0 when another node's turn or retention is off).
   */
  async sweepRetention(): Promise<number> {
    const days = this.#options.retentionDays;
    if (days <= 0 || this.#closed) return 0;
    const now = this.#now();
    try {
      const mine = await claimChore(this.#pool, {
        name: "retention",
        nodeId: this.#options.nodeId,
        now,
        intervalMs: this.#tuning.retentionIntervalMs,
      });
      if (!mine) return 0;
      const count = await sweepPgRetention(this.#pool, now - days * 86_400_000);
      if (count > 0) this.#log.info("STORE", "retention deleted calls", { count, days });
      return count;
    } catch (error) {
      this.#log.warn("STORE", "retention sweep failed", { error: describePgError(error) });
      return 0;
    }
  }

  #push(op: StoreOp): void {
    if (this.#closed) {
      this.#log.error("STORE", "write after close dropped", { kind: op.kind });
      return;
    }
    this.#queue.push(op);
  }

  #createPool(): PgSql {
    return createPgClient({
      url: this.#options.url,
      password: this.#options.password,
      max: this.#options.poolSize,
      applicationName: `kav ${this.#options.nodeId}`,
    });
  }

  #resetPool(): void {
    const old = this.#pool;
    this.#pool = this.#createPool();
    old.end({ timeout: 0 }).catch(() => {});
  }

  /** After the migrations: CRM delivery resumes, retention starts. */
  #ready(): void {
    this.#outbox?.notify();
    if (this.#options.retentionDays <= 0 || this.#closed) return;
    void this.sweepRetention();
    const timer = setInterval(() => void this.sweepRetention(), this.#tuning.retentionIntervalMs);
    // A daily chore must not keep a finished process alive.
    Deno.unrefTimer(timer);
    this.#retentionTimer = timer;
  }

  async #shutdown(): Promise<void> {
    clearInterval(this.#retentionTimer);
    await this.#queue.close();
    await this.#outbox?.close();
    metrics.watchStoreQueue(() => 0);
    metrics.watchStoreBehind(() => false, () => 0);
    metrics.watchCrmOutbox(() => 0);
    await this.#pool.end({ timeout: 1 }).catch(() => {});
  }
}

/**
 * Opens the fleet store: reads the journal an earlier run left, starts writing (migrations first),
 * and waits up to `startWaitMs` for the database. A bad password, role or database name, or a
 * schema newer than this build, is an error; a database that does not answer is not (records wait
 * in the journal until it does).
 */
export async function openPostgresStore(
  options: OpenPostgresStoreOptions,
): Promise<PostgresCallStore> {
  const journal = await Journal.open(options.journalDir, options.log);
  const store = new PostgresCallStore(options, journal);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const waited = new Promise<"waiting">((resolve) => {
    timer = setTimeout(() => resolve("waiting"), options.startWaitMs ?? 5000);
  });
  const first = await Promise.race([store.firstAttempt(), waited]);
  clearTimeout(timer);
  if (first instanceof RangeError) {
    await store.close();
    throw first;
  }
  if (first !== null && isConfigurationError(first)) {
    await store.close();
    throw new Error(`Cannot use the PostgreSQL store: ${describePgError(first)}`, {
      cause: first,
    });
  }
  if (first !== null) {
    options.log.warn("STORE", "database unavailable at start: records wait in the journal", {
      error: first === "waiting" ? "no answer yet" : describePgError(first),
    });
  }
  metrics.watchStoreQueue(() => store.pending());
  metrics.watchStoreBehind(() => store.behind, () => journal.count);
  metrics.watchCrmOutbox(() => store.crmPending());
  return store;
}
