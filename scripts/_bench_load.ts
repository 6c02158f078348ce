/**
 * One load-generator process of the benchmark (several run side by side on the load core): places
 * `--calls` simulated calls (`tools/twilio/simulation.ts`, media recognised without parsing) and prints NDJSON
 * on stdout: `{"event":"placed"}` once every call has been placed, then one `{"event":"report"}`
 * with what the benchmark merges across processes. It also measures its own event-loop lag, so a
 * saturated generator is visible rather than blamed on Kav.
 *
 *   deno run -A scripts/_bench_load.ts --url URL --public-url URL --token T --calls N
 *     --ramp-ms MS --turns N --duration-ms MS [--speak-first]
 */
import { readCommandLine } from "../src/command_line.ts";
import { type CallCounts, fixtureLines, simulate } from "../tools/twilio/simulation.ts";
import { type HistogramJson, MsHistogram } from "../tools/stats.ts";

/** What one generator reports (merged by `bench.ts`). */
export interface LoadReport extends CallCounts {
  readonly event: "report";
  readonly interArrival: HistogramJson;
  /** `start` → first greeting frame, per call, ms. */
  readonly firstFrameMs: readonly number[];
  readonly upgradeMs: readonly number[];
  /** Caller's line end → first answer frame, per turn, ms. */
  readonly answerMs: readonly number[];
  /** This process's timer lateness (10 ms probe), ms. */
  readonly lag: HistogramJson;
}

const OPTIONS = {
  url: { type: "string", default: "http://127.0.0.1:8080" },
  "public-url": { type: "string" },
  token: { type: "string" },
  calls: { type: "string", default: "1" },
  "ramp-ms": { type: "string", default: "1000" },
  turns: { type: "string", default: "1" },
  "duration-ms": { type: "string", default: "0" },
  "speak-first": { type: "boolean", default: false },
} as const;

function write(line: unknown): void {
  Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify(line) + "\n"));
}

if (import.meta.main) {
  const { values } = readCommandLine(Deno.args, OPTIONS);
  const baseUrl = values.url;
  const lag = new MsHistogram();
  let expected = performance.now() + 10;
  const probe = setInterval(() => {
    const now = performance.now();
    lag.add(Math.max(0, now - expected));
    expected = now + 10;
  }, 10);
  const report = await simulate({
    target: {
      baseUrl,
      publicUrl: values["public-url"] ?? baseUrl,
      authToken: values.token ?? null,
    },
    calls: Number(values.calls),
    rampMs: Number(values["ramp-ms"]),
    turns: Number(values.turns),
    minDurationMs: Number(values["duration-ms"]),
    lines: fixtureLines(),
    answerTimeoutMs: 15_000,
    strict: false,
    speakFirst: values["speak-first"],
    onAllStarted: () => write({ event: "placed" }),
  });
  clearInterval(probe);
  const o = report.overall;
  const firstFrameMs: number[] = [];
  const upgradeMs: number[] = [];
  const answerMs: number[] = [];
  for (const call of report.calls) {
    if (call.greeting.firstFrameMs !== null) firstFrameMs.push(call.greeting.firstFrameMs);
    if (call.upgradeMs !== null) upgradeMs.push(call.upgradeMs);
    for (const turn of call.turns) {
      if (turn.answerLatencyMs !== null) answerMs.push(turn.answerLatencyMs);
    }
  }
  const out: LoadReport = {
    event: "report",
    calls: o.calls,
    ok: o.ok,
    greetings: o.greetings,
    turnsPlayed: o.turnsPlayed,
    turnsAnswered: o.turnsAnswered,
    framesSent: o.framesSent,
    framesReceived: o.framesReceived,
    gapsOver40: o.gapsOver40,
    underruns: o.underruns,
    clears: o.clears,
    interArrival: report.histogram.toJSON(),
    firstFrameMs,
    upgradeMs,
    answerMs,
    errors: o.errors,
    errorKinds: o.errorKinds,
    lag: lag.toJSON(),
  };
  write(out);
  Deno.exit(0);
}
