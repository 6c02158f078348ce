/**
 * One benchmark step: N simultaneous talking calls against a running Kav, measured over a steady
 * window while all of them are up, then checked against SPEC section 5's invariants.
 */
import type { LoadReport } from "./_bench_load.ts";
import {
  coreBusyPct,
  coreTicks,
  probeCoreMs,
  processCpuSeconds,
  processRssMiB,
} from "./_bench_proc.ts";
import {
  type KavCounters,
  type KavProcess,
  type Prober,
  scrapeCounters,
  sleep,
  startGenerator,
} from "./_bench_procs.ts";
import {
  type IntervalSummary,
  MsHistogram,
  quantile,
  round1,
  round2,
  type Spread,
  spread,
} from "../tools/stats.ts";
import type { WebhookWindow } from "./_bench_webhook.ts";
import { startWireCapture, type WireReport } from "./_bench_wire.ts";

/** SPEC 5: TX inter-arrival p99 within 20 ± 3 ms; status-callback p99 under 5 ms. */
export const TX_P99_RANGE_MS = [17, 23] as const;
export const WEBHOOK_P99_LIMIT_MS = 5;
/** Calls per generator process (one process cannot drive 800 calls on a shared core). */
export const CALLS_PER_GENERATOR = Number(Deno.env.get("KAV_BENCH_CALLS_PER_GENERATOR") ?? 200);

export interface StepOptions {
  readonly label: string;
  readonly kav: KavProcess;
  readonly prober: Prober;
  readonly calls: number;
  readonly turns: number;
  readonly durationMs: number;
  /** Measurement window, starting `settleMs` after the last call was placed. */
  readonly windowMs: number;
  readonly settleMs: number;
  readonly loadCore: number | null;
  readonly token: string;
  readonly speakFirst?: boolean;
  /** Also measure on the wire with `tcpdump` (when it can run). */
  readonly wire?: boolean;
}

/** Kav's timing from a loopback capture (`_bench_wire.ts`): no client-side scheduling in it. */
export interface WireTiming {
  readonly tx: IntervalSummary & { readonly gapsOver40: number };
  /** Status callbacks answered within the measurement window, request to response. */
  readonly webhook: { readonly count: number; readonly p50: number; readonly p99: number };
  readonly mediaFrames: number;
  readonly packets: number;
  readonly kernelDrops: number;
  readonly brokenFlows: number;
}

export interface StepResult {
  readonly label: string;
  readonly calls: number;
  /** All invariants held (timing measured at the client, i.e. the load generators). */
  readonly held: boolean;
  /**
   * All invariants held with the timing measured on the wire (Kav's own packets, kernel
   * timestamps: no load-generator scheduling in it); null without a capture.
   */
  readonly heldOnWire: boolean | null;
  /** Calls failed or frames were lost (not just a timing invariant missed). */
  readonly hardFailure: boolean;
  readonly failures: readonly string[];
  /** Epoch ms of the step's start and end (to find its turns in the store). */
  readonly startedAt: number;
  readonly endedAt: number;
  readonly kav: {
    /** % of one core over the window. */
    readonly cpuPct: number;
    readonly cpuPerCallPct: number;
    readonly rssMiB: number;
    /** Calls Kav had open at the window's end. */
    readonly activeAtWindowEnd: number;
    /** TX ticks late enough to resync (Kav's own count). */
    readonly txLateTicks: number;
  };
  readonly tx: IntervalSummary & {
    readonly gapsOver40: number;
    readonly underruns: number;
    /** Share of intervals under 2 ms (frames sent back to back), %. */
    readonly burstPct: number;
  };
  readonly webhook: WebhookWindow;
  readonly greetingFirstFrameMs: Spread;
  /** WebSocket upgrade request → open at the client (SPEC: no slower than status callbacks). */
  readonly upgradeMs: Spread;
  readonly answerMs: Spread;
  readonly inbound: {
    readonly sent: number;
    readonly kavReceived: number;
    readonly dropped: number;
  };
  readonly agent: { readonly kavSent: number; readonly received: number; readonly dropped: number };
  readonly outcome: {
    readonly ok: number;
    readonly greetings: number;
    readonly turnsPlayed: number;
    readonly turnsAnswered: number;
    readonly clears: number;
    readonly errors: number;
    readonly errorKinds: readonly { message: string; count: number }[];
  };
  readonly load: {
    readonly generators: number;
    /** Worst generator timer lateness, p99, ms (a busy generator skews client-side timing). */
    readonly lagP99Ms: number;
    /** Busy % of the load core and of Kav's core (Kav included) over the window. */
    readonly loadCoreBusyPct: number;
    readonly kavCoreBusyPct: number;
    /**
     * CPU of the load side over the window, % of one core: the generators, the prober and this
     * process (the provider servers). Unpinned, this is what the load took from Kav's cores.
     */
    readonly cpuPct: number;
  };
  /** Measured on the wire; null when `tcpdump` could not run. */
  readonly wire: WireTiming | null;
  /**
   * A fixed loop's time on Kav's core (ms, `probeCoreMs`) just before and just after the step:
   * the machine's speed, which moves on a shared VM.
   */
  readonly coreProbeMs: { readonly before: number; readonly after: number };
  /** The merged agent-frame intervals (not serialized). */
  readonly histogram: MsHistogram;
}

async function waitIdle(baseUrl: string, timeoutMs: number): Promise<KavCounters> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const counters = await scrapeCounters(baseUrl);
    if (counters.activeCalls === 0 || performance.now() > deadline) return counters;
    await sleep(250);
  }
}

/** Runs one step; `kavCore`/`loadCore` name the cores whose busy time is reported. */
export async function runStep(
  o: StepOptions,
  cores: { kav: number | null; load: number | null },
): Promise<StepResult> {
  const before = await waitIdle(o.kav.baseUrl, 30_000);
  const probeBefore = await probeCoreMs(cores.kav);
  const capture = o.wire === true
    ? await startWireCapture(
      Number(new URL(o.kav.baseUrl).port),
      await Deno.makeTempFile({ suffix: ".pcap" }),
      o.loadCore,
    )
    : null;
  const startedAt = Date.now();
  const rampMs = Math.min(8000, o.calls * 10);
  const count = Math.ceil(o.calls / CALLS_PER_GENERATOR);
  const generators = Array.from({ length: count }, (_, i) => {
    const calls = Math.floor(o.calls / count) + (i < o.calls % count ? 1 : 0);
    return startGenerator({
      baseUrl: o.kav.baseUrl,
      token: o.token,
      core: o.loadCore,
      calls,
      rampMs,
      turns: o.turns,
      durationMs: o.durationMs,
      speakFirst: o.speakFirst,
    });
  });
  await Promise.all(generators.map((g) => g.placed));
  await sleep(o.settleMs);
  const loadPids = [Deno.pid, o.prober.pid, ...generators.map((g) => g.pid)];
  const loadCpu = () => loadPids.reduce((sum, pid) => sum + processCpuOrZero(pid), 0);
  const cpu0 = processCpuSeconds(o.kav.pid);
  const load0 = loadCpu();
  const cores0 = coreTicks();
  await o.prober.window(); // drop what came before the window
  const windowFrom = Date.now();
  const t0 = performance.now();
  await sleep(o.windowMs);
  const cpu1 = processCpuSeconds(o.kav.pid);
  const load1 = loadCpu();
  const cores1 = coreTicks();
  const seconds = (performance.now() - t0) / 1000;
  const rssMiB = processRssMiB(o.kav.pid);
  const webhook = await o.prober.window();
  const windowTo = Date.now();
  const active = (await scrapeCounters(o.kav.baseUrl)).activeCalls;
  const reports: LoadReport[] = await Promise.all(generators.map((g) => g.report));
  const after = await waitIdle(o.kav.baseUrl, 30_000);
  const endedAt = Date.now();
  const probeAfter = await probeCoreMs(cores.kav);
  const wire = capture === null ? null : wireTiming(await capture.stop(), windowFrom, windowTo);

  const histogram = new MsHistogram();
  const lag = new MsHistogram();
  const firstFrames: number[] = [];
  const upgrades: number[] = [];
  const answers: number[] = [];
  const kinds = new Map<string, number>();
  let sent = 0, received = 0, gaps = 0, underruns = 0, ok = 0, greetings = 0, played = 0;
  let answered = 0, clears = 0, errors = 0;
  for (const r of reports) {
    histogram.merge(MsHistogram.fromJSON(r.interArrival));
    lag.merge(MsHistogram.fromJSON(r.lag));
    firstFrames.push(...r.firstFrameMs);
    upgrades.push(...r.upgradeMs);
    answers.push(...r.answerMs);
    for (const k of r.errorKinds) kinds.set(k.message, (kinds.get(k.message) ?? 0) + k.count);
    sent += r.framesSent;
    received += r.framesReceived;
    gaps += r.gapsOver40;
    underruns += r.underruns;
    ok += r.ok;
    greetings += r.greetings;
    played += r.turnsPlayed;
    answered += r.turnsAnswered;
    clears += r.clears;
    errors += r.errors;
  }
  const cpuPct = (100 * (cpu1 - cpu0)) / seconds;
  const busy = coreBusyPct(cores0, cores1);
  const inbound = {
    sent,
    kavReceived: after.rxFrames - before.rxFrames,
    dropped: after.rxDrops - before.rxDrops,
  };
  const agent = {
    kavSent: after.txFrames - before.txFrames,
    received,
    dropped: after.txFrames - before.txFrames - received,
  };
  const tx = histogram.summary();
  const failures: string[] = [];
  if (ok !== o.calls) failures.push(`${o.calls - ok} of ${o.calls} calls incomplete`);
  if (inbound.dropped !== 0 || inbound.kavReceived !== inbound.sent) {
    failures.push(
      `inbound: ${inbound.sent} sent, ${inbound.kavReceived} received, ${inbound.dropped} dropped`,
    );
  }
  if (agent.dropped !== 0) {
    failures.push(`agent frames: ${agent.kavSent} sent, ${received} received`);
  }
  if (!(tx.p99 >= TX_P99_RANGE_MS[0] && tx.p99 <= TX_P99_RANGE_MS[1])) {
    failures.push(`TX p99 ${tx.p99} ms outside ${TX_P99_RANGE_MS.join("-")} ms`);
  }
  if (!(webhook.p99 < WEBHOOK_P99_LIMIT_MS) || webhook.errors > 0) {
    failures.push(`status callback p99 ${webhook.p99} ms, ${webhook.errors} errors`);
  }
  const hardFailure = ok !== o.calls || inbound.dropped !== 0 ||
    inbound.kavReceived !== inbound.sent || agent.dropped !== 0;
  const heldOnWire = wire === null ? null : !hardFailure && webhook.errors === 0 &&
    wire.tx.p99 >= TX_P99_RANGE_MS[0] && wire.tx.p99 <= TX_P99_RANGE_MS[1] &&
    wire.webhook.p99 < WEBHOOK_P99_LIMIT_MS;
  return {
    label: o.label,
    calls: o.calls,
    held: failures.length === 0,
    heldOnWire,
    hardFailure,
    failures,
    startedAt,
    endedAt,
    kav: {
      cpuPct: round2(cpuPct),
      cpuPerCallPct: round2(cpuPct / o.calls),
      rssMiB: round1(rssMiB),
      activeAtWindowEnd: active,
      txLateTicks: after.txLate - before.txLate,
    },
    tx: {
      ...tx,
      gapsOver40: gaps,
      underruns,
      burstPct: round1(100 * histogram.shareBelow(2)),
    },
    webhook,
    greetingFirstFrameMs: spread(firstFrames),
    upgradeMs: spread(upgrades),
    answerMs: spread(answers),
    inbound,
    agent,
    outcome: {
      ok,
      greetings,
      turnsPlayed: played,
      turnsAnswered: answered,
      clears,
      errors,
      errorKinds: [...kinds].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([message, count]) => ({
        message,
        count,
      })),
    },
    load: {
      generators: count,
      lagP99Ms: round1(lag.quantile(0.99)),
      loadCoreBusyPct: round1(cores.load === null ? NaN : busy[cores.load]),
      kavCoreBusyPct: round1(cores.kav === null ? NaN : busy[cores.kav]),
      cpuPct: round1((100 * (load1 - load0)) / seconds),
    },
    wire,
    coreProbeMs: { before: probeBefore, after: probeAfter },
    histogram,
  };
}

/** A process's CPU seconds, 0 once it has exited. */
function processCpuOrZero(pid: number): number {
  try {
    return processCpuSeconds(pid);
  } catch {
    return 0;
  }
}

function wireTiming(report: WireReport, from: number, to: number): WireTiming {
  const latencies = report.webhooks.filter((w) => w.at >= from && w.at <= to).map((w) => w.ms);
  return {
    tx: { ...report.tx.summary(), gapsOver40: report.tx.countAbove(40) },
    webhook: {
      count: latencies.length,
      p50: round2(quantile(latencies, 0.5)),
      p99: round2(quantile(latencies, 0.99)),
    },
    mediaFrames: report.mediaFrames,
    packets: report.packets,
    kernelDrops: report.kernelDrops,
    brokenFlows: report.brokenFlows,
  };
}
