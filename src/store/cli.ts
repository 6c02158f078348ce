/**
 * `kav calls [--since 1h] [--limit N] [--json] [--redact]` and
 * `kav call <CallSid> [--json] [--redact]`: read the call store (read-only, safe while Kav runs).
 */
import { readCommandLine } from "../command_line.ts";
import { type CallReader, type CallRow, openCallReader } from "./read.ts";
import { formatCallDetail, formatCallTable, redactCall, redactDetail } from "./_cli_format.ts";

export interface CallsCommandOptions {
  /** The SQLite file (`storage.path`). */
  readonly storagePath: string;
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

function listCalls(reader: CallReader, flags: Flags, now: number, out: (l: string) => void) {
  const sinceMs = now - parseSince(flags.since);
  let calls: CallRow[] = reader.listCalls({ sinceMs, limit: flags.limit });
  if (flags.redact) calls = calls.map(redactCall);
  if (flags.json) out(JSON.stringify({ since: new Date(sinceMs).toISOString(), calls }, null, 2));
  else for (const line of formatCallTable(calls)) out(line);
}

/**
 * Runs `calls …` or `call …` (`args[0]` is the subcommand). Resolves to the exit code: 0 done,
 * 1 the store or call could not be read, 2 bad usage.
 */
export function runCallsCommand(
  args: readonly string[],
  options: CallsCommandOptions,
): Promise<number> {
  // node:sqlite is synchronous; the promise keeps the door open for an async reader.
  return Promise.resolve(run(args, options));
}

function run(args: readonly string[], options: CallsCommandOptions): number {
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
  let reader: ReturnType<typeof openCallReader>;
  try {
    reader = openCallReader(options.storagePath);
  } catch (error) {
    err((error as Error).message);
    return 1;
  }
  try {
    if (command === "calls") {
      listCalls(reader, flags, (options.now ?? Date.now)(), out);
      return 0;
    }
    const callSid = flags.positional[0];
    const found = reader.getCall(callSid);
    if (!found) {
      err(`Cannot find call "${callSid}" in "${options.storagePath}"`);
      return 1;
    }
    const detail = flags.redact ? redactDetail(found) : found;
    if (flags.json) out(JSON.stringify(detail, null, 2));
    else for (const line of formatCallDetail(detail)) out(line);
    return 0;
  } catch (error) {
    err(`Cannot read call store "${options.storagePath}": ${(error as Error).message}`);
    return 1;
  } finally {
    reader.close();
  }
}
