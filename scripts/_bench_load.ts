/**
 * One load-generator process of the benchmark (several run side by side on the load core): places
 * `--calls` simulated calls (`_sim_engine.ts`, media recognised without parsing) and prints NDJSON
 * on stdout: `{"event":"placed"}` once every call has been placed, then one `{"event":"report"}`
 * with what the benchmark merges across processes. It also measures its own event-loop lag, so a
 * saturated generator is visible rather than blamed on Kav.
 *
 *   deno run -A scripts/_bench_load.ts --url URL --public-url URL --token T --calls N
 *     --ramp-ms MS --turns N --duration-ms MS [--speak-first]
 */
import { type CallCounts, fixtureLines, simulate } from "./_sim_engine.ts";
import { type HistogramJson, MsHistogram } from "./_sim_stats.ts";

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

function option(args: readonly string[], name: string, fallback: string): string {
  const at = args.indexOf(name);
  return at >= 0 && at + 1 < args.length ? args[at + 1] : fallback;
}

function write(line: unknown): void {
  Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify(line) + "\n"));
}

if (import.meta.main) {
  const args = Deno.args;
  const baseUrl = option(args, "--url", "http://127.0.0.1:8080");
  const token = option(args, "--token", "");
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
      publicUrl: option(args, "--public-url", baseUrl),
      authToken: token === "" ? null : token,
    },
    calls: Number(option(args, "--calls", "1")),
    rampMs: Number(option(args, "--ramp-ms", "1000")),
    turns: Number(option(args, "--turns", "1")),
    minDurationMs: Number(option(args, "--duration-ms", "0")),
    lines: fixtureLines(),
    answerTimeoutMs: 15_000,
    strict: false,
    speakFirst: args.includes("--speak-first"),
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
