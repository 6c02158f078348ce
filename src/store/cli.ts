/**
 * `kav calls [--since 1h] [--limit N] [--json] [--redact]` and
 * `kav call <CallSid> [--json] [--redact]`: read the call store (read-only, safe while Kav runs).
 * With `storage.url` they read the fleet's PostgreSQL: every node's calls.
 */
import { readCommandLine } from "../command_line.ts";
import { type CallDetail, type CallRow, openCallReader } from "./read.ts";
import { formatCallDetail, formatCallTable, redactCall, redactDetail } from "./_cli_format.ts";
import { createPgClient, describePgError } from "./_pg_client.ts";
import { PgCallReader } from "./_pg_read.ts";
import { PG_SCHEMA_VERSION, pgSchemaVersion } from "./_pg_schema.ts";

export interface CallsCommandOptions {
  /** The SQLite file (`storage.path`). */
  readonly storagePath: string;
  /** `storage.url`: read the fleet's PostgreSQL instead of the SQLite file. */
  readonly storageUrl?: string | null;
  /** `storage.password` for `storageUrl`. */
  readonly storagePassword?: string | null;
  /** Standard output, one line per call; default `console.log`. */
  readonly out?: (line: string) => void;
  /** Errors and usage; default `console.error`. */
  readonly err?: (line: string) => void;
  /** Epoch ms clock, for `--since`. */
  readonly now?: () => number;
}

export const CALLS_USAGE = [
  "Usage:",
  "  kav calls [--since 24h] [--limit 100] [--json] [--redact]",
  "  kav call <CallSid> [--json] [--redact]",
  "--since takes a number and s, m, h or d; --redact hides numbers and transcript text.",
].join("\n");

const UNITS: Readonly<Record<string, number>> = { s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 };

/** "90s" | "30m" | "1h" | "2d" → ms; throws a `RangeError` naming the value. */
export function parseSince(value: string): number {
  const match = /^(\d+(?:\.\d+)?)([smhd])$/.exec(value.trim());
  if (!match) {
    throw new RangeError(
      `Cannot parse --since "${value}": expected a number and s, m, h or d (e.g. 1h)`,
    );
  }
  return Number(match[1]) * UNITS[match[2]];
}

interface Flags {
  readonly positional: string[];
  readonly json: boolean;
  readonly redact: boolean;
  readonly since: string;
  readonly limit: number;
}

const OPTIONS = {
  json: { type: "boolean" },
  redact: { type: "boolean" },
  since: { type: "string" },
  limit: { type: "string" },
} as const;

function parseFlags(args: readonly string[]): Flags {
  const { values, positionals } = readCommandLine(args, OPTIONS, { positionals: true });
  const limit = Number(values.limit ?? 100);
  if (!Number.isInteger(limit) || limit < 1) {
    throw new RangeError(`Cannot use --limit "${values.limit}": expected a positive integer`);
  }
  return {
    positional: positionals,
    json: values.json ?? false,
    redact: values.redact ?? false,
    since: values.since ?? "24h",
    limit,
  };
}

/** The reads the commands need, from SQLite or PostgreSQL. */
interface RecordsReader {
  listCalls(options: { sinceMs: number; limit: number }): Promise<CallRow[]> | CallRow[];
  getCall(callSid: string): Promise<CallDetail | null> | CallDetail | null;
  close(): Promise<void> | void;
}

/** Opens the PostgreSQL reader; throws an Error naming the store when it cannot be read. */
async function openPgReader(url: string, password: string | null): Promise<RecordsReader> {
  const sql = createPgClient({ url, password, max: 1, applicationName: "kav calls" });
  try {
    const version = await pgSchemaVersion(sql);
    if (version !== PG_SCHEMA_VERSION) {
      throw new RangeError(
        `Cannot read call store "${url}": schema version ${version}, this build reads ${PG_SCHEMA_VERSION}`,
      );
    }
  } catch (error) {
    await sql.end({ timeout: 1 }).catch(() => {});
    if (error instanceof RangeError) throw error;
    throw new Error(`Cannot open call store "${url}": ${describePgError(error)}`, {
      cause: error,
    });
  }
  const reader = new PgCallReader(sql);
  return {
    listCalls: (options) => reader.listCalls(options),
    getCall: (callSid) => reader.getCall(callSid),
    close: () => sql.end({ timeout: 1 }),
  };
}

async function listCalls(
  reader: RecordsReader,
  flags: Flags,
  now: number,
  out: (l: string) => void,
) {
  const sinceMs = now - parseSince(flags.since);
  let calls: CallRow[] = await reader.listCalls({ sinceMs, limit: flags.limit });
  if (flags.redact) calls = calls.map(redactCall);
  if (flags.json) out(JSON.stringify({ since: new Date(sinceMs).toISOString(), calls }, null, 2));
  else for (const line of formatCallTable(calls)) out(line);
}

/**
 * Runs `calls …` or `call …` (`args[0]` is the subcommand). Resolves to the exit code: 0 done,
 * 1 the store or call could not be read, 2 bad usage.
 */
export async function runCallsCommand(
  args: readonly string[],
  options: CallsCommandOptions,
): Promise<number> {
  const out = options.out ?? ((line: string) => console.log(line));
  const err = options.err ?? ((line: string) => console.error(line));
  const [command, ...rest] = args;
  let flags: Flags;
  try {
    flags = parseFlags(rest);
    if (command === "calls") {
      if (flags.positional.length > 0) throw new RangeError(`Cannot use "${flags.positional[0]}"`);
      parseSince(flags.since);
    } else if (command === "call") {
      if (flags.positional.length !== 1) {
        throw new RangeError("Cannot show a call: give one CallSid");
      }
    } else {
      throw new RangeError(`Cannot run "${command ?? ""}": expected calls or call`);
    }
  } catch (error) {
    err((error as Error).message);
    err(CALLS_USAGE);
    return 2;
  }
  const url = options.storageUrl ?? null;
  const where = url ?? options.storagePath;
  let reader: RecordsReader;
  try {
    reader = url === null
      ? openCallReader(options.storagePath)
      : await openPgReader(url, options.storagePassword ?? null);
  } catch (error) {
    err((error as Error).message);
    return 1;
  }
  try {
    if (command === "calls") {
      await listCalls(reader, flags, (options.now ?? Date.now)(), out);
      return 0;
    }
    const callSid = flags.positional[0];
    const found = await reader.getCall(callSid);
    if (!found) {
      err(`Cannot find call "${callSid}" in "${where}"`);
      return 1;
    }
    const detail = flags.redact ? redactDetail(found) : found;
    if (flags.json) out(JSON.stringify(detail, null, 2));
    else for (const line of formatCallDetail(detail)) out(line);
    return 0;
  } catch (error) {
    err(`Cannot read call store "${where}": ${(error as Error).message}`);
    return 1;
  } finally {
    await reader.close();
  }
}
