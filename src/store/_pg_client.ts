/**
 * The PostgreSQL client (the npm `postgres` driver) as the fleet store uses it: a small bounded
 * pool, short connect timeout, BIGINT epoch-ms columns read as numbers, and the one rule that sorts
 * failures into "wait and retry" and "this record can never be written".
 */
import postgres from "postgres";

/** One pool (a `postgres.Sql`); queries wait for a free connection, never open more than `max`. */
export type PgSql = postgres.Sql;
/** What a query runs on: the pool, or a transaction of it. */
export type PgQueryable = postgres.Sql | postgres.TransactionSql;

export interface PgClientOptions {
  /** `storage.url`: "postgres://user@host[:port][,host2]/db[?options]", without a password. */
  readonly url: string;
  /** From PGPASSWORD or the credential db_password; null sends none (trust or peer auth). */
  readonly password: string | null;
  /** Pool size (default 4: the writer, the CRM outbox, retention and a read). */
  readonly max?: number;
  /** Seconds to wait for a connection (default 5). */
  readonly connectTimeoutS?: number;
  /** Shown in `pg_stat_activity` ("kav <node>"). */
  readonly applicationName?: string;
}

/** int8 (oid 20) parsed as a number: epoch ms and counts stay far below 2^53. */
const INT8_AS_NUMBER = {
  to: 20,
  from: [20],
  serialize: (value: unknown) => String(value),
  parse: (value: string) => Number(value),
};

/** Opens a pool; connections are made on first use, so this never waits for the database. */
export function createPgClient(options: PgClientOptions): PgSql {
  return postgres(options.url, {
    // The driver would fall back to the environment's PGPASSWORD; the config already read it.
    ...(options.password === null ? {} : { password: options.password }),
    max: options.max ?? 4,
    connect_timeout: options.connectTimeoutS ?? 5,
    idle_timeout: 300,
    // Seconds before reconnecting after a failed connection; the driver's default grows to 20 s,
    // which would keep records waiting that long after the database is back.
    backoff: (retries: number) => Math.min(0.05 * 2 ** retries, 1),
    onnotice: () => {},
    types: { int8: INT8_AS_NUMBER },
    connection: { application_name: options.applicationName ?? "kav" },
  });
}

/** The SQLSTATE of a server error, or null for a driver or network error. */
export function sqlState(error: unknown): string | null {
  if (typeof error !== "object" || error === null) return null;
  const code = (error as { code?: unknown }).code;
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) ? code : null;
}

/**
 * Whether the server refused this data for good: data exceptions (class 22, e.g. a bad encoding)
 * and integrity violations (23). Everything else (connection lost, shut down, timeouts, locks,
 * disk full) may pass, so the records wait.
 */
export function isRejectedForGood(error: unknown): boolean {
  const state = sqlState(error);
  return state !== null && (state.startsWith("22") || state.startsWith("23"));
}

/** Whether retrying will not help at start: bad password or role (28), no such database (3D). */
export function isConfigurationError(error: unknown): boolean {
  const state = sqlState(error);
  return state !== null && (state.startsWith("28") || state.startsWith("3D"));
}

/** A one-line description without the URL or the password. */
export function describePgError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const state = sqlState(error);
  const code = (error as { code?: unknown }).code;
  const tag = state ?? (typeof code === "string" ? code : null);
  return tag === null ? error.message : `${error.message} (${tag})`;
}

/**
 * Settles like `work`, or rejects after `ms` with a TimeoutError (the work goes on; its result is
 * dropped, so callers must only time out idempotent work).
 */
export async function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new DOMException(`${what} took over ${ms} ms`, "TimeoutError")),
      ms,
    );
  });
  // The loser must not surface as an unhandled rejection.
  work.catch(() => {});
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
