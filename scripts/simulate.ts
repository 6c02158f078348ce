/**
 * The call simulator: places N simultaneous Twilio-like calls against a running Kav and reports
 * what a caller would have heard.
 *
 *   deno task simulate -- [--url http://127.0.0.1:8080] [--calls 5] [--turns 1] [--json] ...
 *
 * Each call does what Twilio does: `POST /twiml` (the Voice URL), opens the `<Stream>` WebSocket,
 * sends `connected`, `start` and 50 media frames a second, echoes every mark when the audio before
 * it has played (at once on `clear`), posts the stream status callbacks, and ends with `stop`.
 * Requests are signed (X-Twilio-Signature) when an auth token is given. The caller stays silent
 * while the greeting plays, says one line (a Hebrew fixture clip, or `--audio`), waits in silence
 * for the answer, `--turns` times.
 *
 * How the report knows a turn was transcribed: Kav starts an answer only after it decided the
 * caller's turn from the speech-to-text transcript, and every answer sentence is followed by a
 * mark named `a<reply>_<sentence>`. So an answer mark arriving after the caller's line (with its
 * audio) proves the line was transcribed and answered. The transcript itself is in Kav's call
 * record (`deno task calls`). The greeting counts as received when its frames and its
 * `greeting_end` mark arrived.
 *
 * Exit status: 0 when every call got its greeting and all its answers without error, 1 otherwise,
 * 2 on a usage error.
 */
import { basename } from "node:path";
import { parseWav } from "../src/audio/wav.ts";
import { readCommandLine } from "../src/command_line.ts";
import {
  encodeLine,
  fixtureLines,
  type SimTotals,
  simulate,
  type SimulationReport,
} from "../tools/twilio/simulation.ts";
import type { CallerLine } from "../tools/twilio/caller.ts";
import { normalizeBaseUrl } from "../tools/twilio/http.ts";
import { simulateActs } from "../tools/twilio/acts.ts";

export const USAGE = `Places simultaneous Twilio-like calls against a Kav server and reports them.

Usage: deno task simulate -- [options]

  --url URL             Kav's address (default http://127.0.0.1:8080)
  --public-url URL      Kav's server.public_url, which signatures cover (default: --url)
  --auth-token TOKEN    sign requests (default: env TWILIO_AUTH_TOKEN; unsigned when unset)
  --calls N             simultaneous calls (default 1)
  --ramp SECONDS        spread the call starts over this time (default 1)
  --turns N             caller lines per call (default 1)
  --duration SECONDS    keep each call open (caller silent) until it is this old (default 0)
  --audio FILE          caller audio: WAV (8 kHz mono, mu-law or PCM16) or raw mu-law
                        (default: the Hebrew fixture clips, which the sandbox recognizes)
  --answer-timeout S    seconds to wait for each answer (default 15)
  --no-callbacks        do not POST the stream status callbacks
  --keys DIGITS         try the agent's acts on one call (docs/agent-actions.md): say --turns
                        lines, type DIGITS on the keypad, then follow Kav's <Connect action> and
                        <Dial action> answers as Twilio would (against \`deno task dev\`: "0"
                        transfers, "9" hangs up; every line the caller says calls a tool)
  --dial-status STATUS  how the pretended dial ends: no-answer (default), busy, failed, completed
  --json                print the report as JSON (progress still goes to stderr)
  --quiet               no progress line
  --help
`;

export interface SimulateArgs {
  readonly url: string;
  readonly publicUrl: string | null;
  readonly authToken: string | null;
  readonly calls: number;
  readonly rampS: number;
  readonly turns: number;
  readonly durationS: number;
  readonly audio: string | null;
  readonly answerTimeoutS: number;
  readonly callbacks: boolean;
  /** Try the agent's acts on one call: keys to type (null: the load simulation). */
  readonly keys: string | null;
  readonly dialStatus: string;
  readonly json: boolean;
  readonly quiet: boolean;
}

const OPTIONS = {
  url: { type: "string" },
  "public-url": { type: "string" },
  "auth-token": { type: "string" },
  calls: { type: "string" },
  ramp: { type: "string" },
  turns: { type: "string" },
  duration: { type: "string" },
  audio: { type: "string" },
  "answer-timeout": { type: "string" },
  "no-callbacks": { type: "boolean" },
  keys: { type: "string" },
  "dial-status": { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/** `--name N`: a number >= 0 (a whole one when `integer`), or `fallback` when not given. */
function count(
  name: string,
  raw: string | undefined,
  options: { fallback: number; integer: boolean },
): number {
  if (raw === undefined) return options.fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0 || (options.integer && !Number.isInteger(n))) {
    throw new RangeError(`Cannot use --${name} ${JSON.stringify(raw)}: expected a number >= 0`);
  }
  return n;
}

/** Parses the command line; throws RangeError naming the bad option. */
export function parseSimulateArgs(
  argv: readonly string[],
  env: { TWILIO_AUTH_TOKEN?: string } = {},
): SimulateArgs | "help" {
  const { values } = readCommandLine(argv, OPTIONS);
  if (values.help) return "help";
  const args: SimulateArgs = {
    url: values.url ?? "http://127.0.0.1:8080",
    publicUrl: values["public-url"] ?? null,
    authToken: values["auth-token"] ?? (env.TWILIO_AUTH_TOKEN || null),
    calls: count("calls", values.calls, { fallback: 1, integer: true }),
    rampS: count("ramp", values.ramp, { fallback: 1, integer: false }),
    turns: count("turns", values.turns, { fallback: 1, integer: true }),
    durationS: count("duration", values.duration, { fallback: 0, integer: false }),
    audio: values.audio ?? null,
    answerTimeoutS: count("answer-timeout", values["answer-timeout"], {
      fallback: 15,
      integer: false,
    }),
    callbacks: !values["no-callbacks"],
    keys: values.keys ?? null,
    dialStatus: values["dial-status"] ?? "no-answer",
    json: values.json ?? false,
    quiet: values.quiet ?? false,
  };
  if (args.calls < 1) throw new RangeError("Cannot simulate fewer than 1 call");
  if (args.keys !== null && !/^[0-9*#A-D]*$/.test(args.keys)) {
    throw new RangeError(`Cannot type --keys ${JSON.stringify(args.keys)}: use 0-9, *, # and A-D`);
  }
  if (!["no-answer", "busy", "failed", "canceled", "completed"].includes(args.dialStatus)) {
    throw new RangeError(
      `Cannot use --dial-status ${
        JSON.stringify(args.dialStatus)
      }: no-answer, busy, failed, canceled or completed`,
    );
  }
  normalizeBaseUrl(args.url);
  if (args.publicUrl !== null) normalizeBaseUrl(args.publicUrl);
  return args;
}

/** The caller's lines: `--audio` (WAV or raw μ-law) or the fixture clips. */
export function callerLines(audioPath: string | null): CallerLine[] {
  if (audioPath === null) return fixtureLines();
  const bytes = Deno.readFileSync(audioPath);
  const isWav = bytes.length >= 12 && new TextDecoder().decode(bytes.subarray(0, 4)) === "RIFF";
  const mulaw = isWav ? parseWav(bytes).mulaw : bytes;
  if (mulaw.length === 0) {
    throw new RangeError(`Cannot play ${JSON.stringify(audioPath)}: no audio`);
  }
  return [encodeLine(basename(audioPath), "", mulaw)];
}

function cell(value: number | string | null, width: number): string {
  const text = value === null || (typeof value === "number" && Number.isNaN(value))
    ? "-"
    : String(value);
  return text.padStart(width);
}

/** The human report: one row per call, then the totals. */
export function formatReport(report: SimulationReport): string {
  const lines: string[] = [];
  lines.push(
    "call  greeting  first_ms  turns  answered  sent  recv  ia_p50  ia_p99  ia_max  gaps>40  underruns  errors",
  );
  for (const c of report.calls) {
    const answered = c.turns.filter((t) => t.answered).length;
    lines.push(
      [
        cell(c.index + 1, 4),
        cell(c.greeting.received ? "yes" : "NO", 8),
        cell(c.greeting.firstFrameMs, 8),
        cell(c.turns.length, 5),
        cell(`${answered}/${c.turns.length}`, 8),
        cell(c.framesSent, 4),
        cell(c.framesReceived, 4),
        cell(c.interArrivalMs.p50, 6),
        cell(c.interArrivalMs.p99, 6),
        cell(c.interArrivalMs.max, 6),
        cell(c.gapsOver40, 7),
        cell(c.underruns, 9),
        cell(c.errors.length, 6),
      ].join("  "),
    );
    for (const error of c.errors.slice(0, 3)) lines.push(`      ! ${error}`);
  }
  const o = report.overall;
  lines.push("");
  lines.push(
    `calls ${o.calls}: ${o.ok} ok, ${o.greetings} greetings received, ` +
      `${o.turnsAnswered}/${o.turnsPlayed} turns transcribed and answered, ${o.errors} errors`,
  );
  lines.push(`frames: ${o.framesSent} sent, ${o.framesReceived} received`);
  lines.push(
    `agent frame inter-arrival ms: p1 ${o.interArrivalMs.p1}, p50 ${o.interArrivalMs.p50}, ` +
      `p99 ${o.interArrivalMs.p99}, max ${o.interArrivalMs.max}; gaps > 40 ms: ${o.gapsOver40}; ` +
      `underruns: ${o.underruns}`,
  );
  lines.push(
    `first greeting frame after start, ms: p50 ${o.greetingFirstFrameMs.p50}, ` +
      `p95 ${o.greetingFirstFrameMs.p95}, max ${o.greetingFirstFrameMs.max}`,
  );
  lines.push(
    `WebSocket upgrade, ms: p50 ${o.upgradeMs.p50}, p95 ${o.upgradeMs.p95}, max ${o.upgradeMs.max}`,
  );
  lines.push(
    `first answer frame after the caller's line, ms: p50 ${o.answerLatencyMs.p50}, ` +
      `p95 ${o.answerLatencyMs.p95}, max ${o.answerLatencyMs.max}`,
  );
  for (const kind of o.errorKinds) lines.push(`error x${kind.count}: ${kind.message}`);
  return lines.join("\n");
}

/** The `--json` document: the overall figures and every call. */
export function reportJson(report: SimulationReport): string {
  return JSON.stringify({ overall: report.overall, calls: report.calls }, null, 2);
}

function progressLine(t: Readonly<SimTotals>, elapsedS: number, calls: number): string {
  return `[${elapsedS.toFixed(0).padStart(3)} s] calls ${t.started}/${calls} placed, ` +
    `${t.active} active, ${t.finished} done | frames ${t.framesSent} out, ${t.framesReceived} in | ` +
    `turns ${t.turnsAnswered}/${t.turnsPlayed} answered | errors ${t.errors}`;
}

export async function main(argv: readonly string[]): Promise<number> {
  let args: SimulateArgs | "help";
  let lines: CallerLine[];
  try {
    args = parseSimulateArgs(argv, { TWILIO_AUTH_TOKEN: Deno.env.get("TWILIO_AUTH_TOKEN") });
    if (args === "help") {
      console.log(USAGE);
      return 0;
    }
    lines = callerLines(args.audio);
  } catch (error) {
    console.error(`${error instanceof Error ? error.message : String(error)}\n\n${USAGE}`);
    return 2;
  }
  const baseUrl = normalizeBaseUrl(args.url);
  if (args.keys !== null) {
    const ok = await simulateActs({
      target: {
        baseUrl,
        publicUrl: normalizeBaseUrl(args.publicUrl ?? baseUrl),
        authToken: args.authToken,
      },
      lines,
      turns: args.turns,
      keys: args.keys,
      dialStatus: args.dialStatus,
      answerTimeoutMs: args.answerTimeoutS * 1000,
      print: (line) => console.log(line),
    });
    return ok ? 0 : 1;
  }
  const tty = Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  let lastPrinted = -Infinity;
  const stop = new AbortController();
  const onSigint = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSigint);
  let report: SimulationReport;
  try {
    report = await simulate({
      target: {
        baseUrl,
        publicUrl: normalizeBaseUrl(args.publicUrl ?? baseUrl),
        authToken: args.authToken,
      },
      calls: args.calls,
      rampMs: args.rampS * 1000,
      turns: args.turns,
      minDurationMs: args.durationS * 1000,
      lines,
      answerTimeoutMs: args.answerTimeoutS * 1000,
      statusCallbacks: args.callbacks,
      signal: stop.signal,
      onProgress: args.quiet ? undefined : (totals, elapsedS) => {
        // A terminal gets one line rewritten each second; a pipe or file a line every 5 s.
        if (!tty && elapsedS - lastPrinted < 5 && totals.finished < args.calls) return;
        lastPrinted = elapsedS;
        const text = progressLine(totals, elapsedS, (args as SimulateArgs).calls);
        Deno.stderr.writeSync(encoder.encode(tty ? `\r\x1b[K${text}` : `${text}\n`));
      },
    });
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
  if (tty && !args.quiet) Deno.stderr.writeSync(encoder.encode("\n"));
  console.log(args.json ? reportJson(report) : formatReport(report));
  return report.overall.ok === report.overall.calls ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
