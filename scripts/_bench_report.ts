/** The benchmark's printed tables and its headline figures (SPEC section 5). */
import type { StepResult } from "./_bench_step.ts";
import { round1, round2, type Spread, spread } from "../tools/stats.ts";

export interface ServerLatency extends Spread {
  readonly turns: number;
}

export function serverLatency(values: readonly number[]): ServerLatency {
  return { turns: values.length, ...spread(values, round2) };
}

/** Least-squares slope of Kav's CPU % against calls: the cost of one more call, % of a core. */
export function cpuSlope(steps: readonly StepResult[]): number {
  if (steps.length < 2) return NaN;
  const xs = steps.map((s) => s.calls);
  const ys = steps.map((s) => s.kav.cpuPct);
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  let num = 0, den = 0;
  for (let i = 0; i < xs.length; i++) {
    num += (xs[i] - mx) * (ys[i] - my);
    den += (xs[i] - mx) ** 2;
  }
  return den === 0 ? NaN : num / den;
}

function pad(value: unknown, width: number): string {
  const text = value === null || (typeof value === "number" && Number.isNaN(value))
    ? "-"
    : String(value);
  return text.padStart(width);
}

const COLUMNS: readonly [string, number, (s: StepResult, x: StepExtras) => unknown][] = [
  ["step", 11, (s) => s.label],
  ["calls", 5, (s) => s.calls],
  ["held", 4, (s) => (s.held ? "yes" : "NO")],
  ["cpu%", 6, (s) => s.kav.cpuPct],
  ["cpu%/call", 9, (s) => s.kav.cpuPerCallPct],
  ["+cpu%/call", 10, (_, x) => x.addedCpuPct],
  ["rss_MiB", 7, (s) => s.kav.rssMiB],
  ["MiB/call", 8, (_, x) => x.rssPerCallMiB],
  ["tx_p50", 6, (s) => s.tx.p50],
  ["tx_p99", 6, (s) => s.tx.p99],
  ["tx_max", 6, (s) => s.tx.max],
  ["burst%", 6, (s) => s.tx.burstPct],
  ["gaps", 5, (s) => s.tx.gapsOver40],
  ["under", 5, (s) => s.tx.underruns],
  ["wh_p50", 6, (s) => s.webhook.p50],
  ["wh_p99", 6, (s) => s.webhook.p99],
  ["greet_p95", 9, (s) => s.greetingFirstFrameMs.p95],
  ["upg_p99", 7, (s) => s.upgradeMs?.p99 ?? null],
  ["srv_p95", 7, (_, x) => x.server?.p95 ?? null],
  ["rx_drop", 7, (s) => s.inbound.dropped],
  ["tx_drop", 7, (s) => s.agent.dropped],
  ["ok", 7, (s) => `${s.outcome.ok}/${s.calls}`],
  ["load%", 5, (s) => s.load.loadCoreBusyPct],
  ["lag99", 5, (s) => s.load.lagP99Ms],
  ["probe_ms", 11, (s) => `${s.coreProbeMs.before}/${s.coreProbeMs.after}`],
];

/** Per-step figures computed across steps. */
export interface StepExtras {
  readonly addedCpuPct: number | null;
  readonly rssPerCallMiB: number;
  readonly server: ServerLatency | null;
}

export function stepExtras(
  steps: readonly StepResult[],
  idleRssMiB: number,
  server: ReadonlyMap<StepResult, ServerLatency>,
): StepExtras[] {
  return steps.map((s, i) => {
    const prev = i > 0 ? steps[i - 1] : null;
    return {
      addedCpuPct: prev === null
        ? null
        : round2((s.kav.cpuPct - prev.kav.cpuPct) / (s.calls - prev.calls)),
      rssPerCallMiB: round2((s.kav.rssMiB - idleRssMiB) / s.calls),
      server: server.get(s) ?? null,
    };
  });
}

/** The steps as a fixed-width table. */
export function formatSteps(steps: readonly StepResult[], extras: readonly StepExtras[]): string {
  const header = COLUMNS.map(([name, width]) => pad(name, width)).join(" ");
  const rows = steps.map((s, i) =>
    COLUMNS.map(([, width, get]) => pad(get(s, extras[i]), width)).join(" ")
  );
  const notes = steps.flatMap((s) =>
    s.failures.map((f) => `  ${s.label} ${s.calls}: ${f}`).concat(
      s.outcome.errorKinds.slice(0, 3).map((k) =>
        `  ${s.label} ${s.calls}: x${k.count} ${k.message}`
      ),
    )
  );
  return [header, ...rows, ...notes].join("\n");
}

export { round1 };
