/**
 * `deno task bench`: the numbers of SPEC section 5, measured in one run (about 7 minutes on 2 cores).
 *
 *   deno task bench [-- --steps 25,50,100,200,400,800] [--quick] [--no-pin] [--skip-variants]
 *
 * Kav runs as a subprocess (`_bench_kav.ts`, i.e. `runKav` with a config file) pinned to core 0 with
 * `taskset`; the local provider servers (gRPC Speech and TTS, OpenAI-compatible SSE; answering
 * instantly) run in this process, pinned to core 1 with the load generators and the status-callback
 * prober. Signatures are validated; every simulated request is signed.
 *
 * 1. Ramp: 25 → 50 → … calls, each call 22 s of caller audio at 50 fps (silence, 3 fixture lines,
 *    silence), agent answers flowing. Stops at the first step where an invariant breaks: all calls
 *    complete, 0 inbound frames dropped or lost, 0 agent frames lost, agent-frame inter-arrival p99
 *    (at the client) within 20 ± 3 ms, signed status-callback p99 < 5 ms. Per step, over a steady
 *    window with every call up: Kav's CPU (from /proc/<pid>/stat) and RSS (/proc/<pid>/status).
 * 2. Server-added latency per turn (`server_latency` in Kav's store: STT final → first agent frame
 *    on the wire, LLM and TTS time taken out).
 * 3. Pacing off (`audio.tx_lead_ms` huge) at 100 calls: what pacing buys.
 * 4. Store on vs off at 200 calls (issue 6): TX p99 must not move by more than 1 ms.
 * 5. STT slow to open (2 s) with 50 calls speaking from their first frame: inbound frames lost.
 *
 * Prints tables and writes `bench/results/<timestamp>.json` and `bench/results/latest.json`.
 */
import { DatabaseSync } from "node:sqlite";
import { startProviderServers, type ProviderServers } from "../tests/support/sandbox.ts";
import {
  canPin,
  CLK_TCK,
  pinProcess,
  processCpuSeconds,
  processRssMiB,
  useNice,
} from "./_bench_proc.ts";
import { freePort, type KavProcess, type Prober, sleep, startKav, startProber } from "./_bench_procs.ts";
import {
  cpuSlope,
  formatSteps,
  serverLatency,
  type ServerLatency,
  stepExtras,
} from "./_bench_report.ts";
import { runStep, type StepOptions, type StepResult } from "./_bench_step.ts";
import { round2 } from "./_sim_stats.ts";

/** Calls of the unmeasured warm-up each fresh Kav gets. */
const WARMUP_CALLS = 20;
/** Priority of Kav and of the measuring processes (see `useNice`). */
const NICE = -10;

interface BenchArgs {
  steps: number[];
  durationMs: number;
  windowMs: number;
  turns: number;
  pin: boolean;
  nice: boolean;
  variants: boolean;
  keep: boolean;
  /** Keep ramping after a step breaks an invariant (profiling). */
  keepGoing: boolean;
  /** Extra `deno run` flags for Kav (experiments, e.g. V8 heap flags). */
  kavFlags: string[];
  /** Kav logs event-loop stalls over 20 ms (`_bench_kav.ts --lag-probe`). */
  lagProbe: boolean;
  out: string;
}

function parseArgs(argv: readonly string[]): BenchArgs {
  const args: BenchArgs = {
    steps: [25, 50, 100, 200, 400, 800],
    durationMs: 22_000,
    windowMs: 10_000,
    turns: 3,
    pin: true,
    nice: true,
    variants: true,
    keep: false,
    keepGoing: false,
    kavFlags: [],
    lagProbe: false,
    out: new URL("../bench/results/", import.meta.url).pathname,
  };
  for (let i = 0; i < argv.length; i++) {
    switch (argv[i]) {
      case "--steps":
        args.steps = (argv[++i] ?? "").split(",").map(Number);
        if (args.steps.some((n) => !Number.isInteger(n) || n < 1)) {
          throw new RangeError(`Cannot use --steps ${JSON.stringify(argv[i])}`);
        }
        break;
      case "--quick":
        args.steps = [25, 50];
        args.durationMs = 14_000;
        args.windowMs = 5_000;
        args.turns = 2;
        break;
      case "--no-pin":
        args.pin = false;
        break;
      case "--no-nice":
        args.nice = false;
        break;
      case "--skip-variants":
        args.variants = false;
        break;
      case "--keep":
        args.keep = true;
        break;
      case "--keep-going":
        args.keepGoing = true;
        break;
      case "--kav-flag":
        args.kavFlags.push(argv[++i] ?? "");
        break;
      case "--lag-probe":
        args.lagProbe = true;
        break;
      case "--out":
        args.out = argv[++i] ?? args.out;
        break;
      default:
        throw new RangeError(`Unknown option ${JSON.stringify(argv[i])}`);
    }
  }
  return args;
}

function kavToml(servers: ProviderServers, port: number, dbPath: string): string {
  return `[server]
listen = "127.0.0.1:${port}"
public_url = "http://127.0.0.1:${port}"
drain_timeout_s = 5
max_calls = 2000
[twilio]
validate_signatures = true
[stt.google]
endpoint = "${servers.speech.address}"
fallback_endpoint = ""
insecure = true
[tts.google]
endpoint = "${servers.tts.address}"
insecure = true
[llm]
base_url = "${servers.llm.baseUrl}"
model = "sandbox"
timeout_ms = 8000
[storage]
path = "${dbPath}"
`;
}

/** `server_latency` (ms) and start time (epoch ms) of every agent turn in Kav's store. */
function agentTurns(dbPath: string): { ms: number; at: number }[] {
  const db = new DatabaseSync(dbPath, { readOnly: true });
  try {
    return db.prepare(
      "SELECT server_latency AS ms, started_at AS at FROM turns " +
        "WHERE speaker = 'agent' AND server_latency IS NOT NULL",
    ).all() as { ms: number; at: number }[];
  } finally {
    db.close();
  }
}

/** The turns that started within any of `steps`. */
function latencyOf(
  turns: readonly { ms: number; at: number }[],
  steps: readonly StepResult[],
): ServerLatency {
  return serverLatency(
    turns.filter((t) => steps.some((s) => t.at >= s.startedAt && t.at <= s.endedAt)).map((t) => t.ms),
  );
}

/** `[LAG]` lines (`_bench_kav.ts --lag-probe`) logged between two epoch times. */
function lagStalls(logPath: string, from: number, to: number): { count: number; maxMs: number } {
  let count = 0;
  let maxMs = 0;
  for (const line of Deno.readTextFileSync(logPath).split("\n")) {
    const match = /^(\S+) \[LAG\] stalled_ms=([\d.]+)/.exec(line);
    if (match === null) continue;
    const at = Date.parse(match[1]);
    if (at < from || at > to) continue;
    count++;
    maxMs = Math.max(maxMs, Number(match[2]));
  }
  return { count, maxMs };
}

/** The JSON form of a step (without its histogram). */
function stepJson(step: StepResult): Omit<StepResult, "histogram"> {
  const { histogram: _, ...rest } = step;
  return rest;
}

function log(line: string): void {
  console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}`);
}

async function main(): Promise<void> {
  const args = parseArgs(Deno.args);
  const began = performance.now();
  const pinned = args.pin && canPin();
  const cores = { kav: pinned ? 0 : null, load: pinned ? 1 : null };
  // This process runs the provider servers: on the load core, with the generators.
  if (pinned) pinProcess(Deno.pid, 1);
  log(pinned ? "Kav on core 0; providers, load and prober on core 1" : "not pinned (no taskset)");
  const niced = args.nice && useNice(NICE);
  if (niced) log(`Kav, load generators and prober at nice ${NICE} (other jobs on this machine)`);
  const servers = await startProviderServers();
  const token = crypto.randomUUID().replaceAll("-", "");
  const dir = await Deno.makeTempDir({ prefix: "kav-bench-" });
  const common = {
    turns: args.turns,
    durationMs: args.durationMs,
    windowMs: args.windowMs,
    settleMs: 2000,
    loadCore: cores.load,
    token,
  };
  let kav: KavProcess | null = null;
  let prober: Prober | null = null;
  const launch = async (name: string, extraArgs: string[] = []) => {
    const port = freePort();
    const dbPath = `${dir}/${name}.db`;
    kav = await startKav({
      dir,
      name,
      toml: kavToml(servers, port, dbPath),
      port,
      dbPath,
      core: cores.kav,
      token,
      extraArgs: [...extraArgs, ...(args.lagProbe ? ["--lag-probe"] : [])],
      denoFlags: args.kavFlags,
    });
    prober = startProber({ baseUrl: kav.baseUrl, token, core: cores.load });
    // Warm-up, not measured: JIT compilation, gRPC channel, first allocations (a Kav in service
    // has long done these).
    await runStep({
      ...common,
      label: "warmup",
      kav,
      prober,
      calls: WARMUP_CALLS,
      turns: 1,
      durationMs: 8000,
      windowMs: 1000,
    }, cores);
    return { kav, prober };
  };
  const shutdown = async () => {
    await prober?.stop();
    prober = null;
    const code = await kav?.stop();
    if (code !== undefined && code !== 0) log(`Kav exited with ${code} (see ${kav?.logPath})`);
    kav = null;
  };
  const step = (o: Omit<StepOptions, keyof typeof common>, over: Partial<StepOptions> = {}) =>
    runStep({ ...common, ...o, ...over } as StepOptions, cores);

  try {
    // 1. Ramp.
    const ramp = await launch("ramp");
    await sleep(1000);
    const cpu0 = processCpuSeconds(ramp.kav.pid);
    await sleep(3000);
    const idle = {
      cpuPct: round2((100 * (processCpuSeconds(ramp.kav.pid) - cpu0)) / 3),
      rssMiB: round2(processRssMiB(ramp.kav.pid)),
    };
    log(`idle Kav: ${idle.cpuPct}% CPU (status-callback prober running), ${idle.rssMiB} MiB`);
    const steps: StepResult[] = [];
    for (const calls of args.steps) {
      log(`ramp: ${calls} calls`);
      const result = await step({ label: "ramp", kav: ramp.kav, prober: ramp.prober, calls });
      steps.push(result);
      if (args.lagProbe) {
        const stalls = lagStalls(ramp.kav.logPath, result.startedAt, result.endedAt);
        log(`  Kav event-loop stalls > 20 ms: ${stalls.count}, worst ${stalls.maxMs} ms`);
      }
      log(
        `  cpu ${result.kav.cpuPct}%, tx p99 ${result.tx.p99} ms, webhook p99 ${result.webhook.p99} ms, ` +
          `${result.outcome.ok}/${calls} ok${result.held ? "" : `: ${result.failures.join("; ")}`}`,
      );
      if (!result.held && !args.keepGoing) break;
    }
    await shutdown();
    const turns = agentTurns(ramp.kav.dbPath);
    const server = new Map(steps.map((s) => [s, latencyOf(turns, [s])]));
    // Held: the steps before the first that broke an invariant.
    const firstBroken = steps.findIndex((s) => !s.held);
    const held = firstBroken < 0 ? steps : steps.slice(0, firstBroken);
    const top = held.at(-1) ?? null;
    // The headline p95 pools every held step's turns (hundreds of turns).
    const pooled = latencyOf(turns, held);

    // 2-4. Variants.
    const variants: StepResult[] = [];
    let sttSlow: Record<string, unknown> | null = null;
    if (args.variants) {
      log("pacing off: 100 calls, audio.tx_lead_ms = 1e9");
      const off = await launch("pacing_off", ["--tx-lead-ms", "1000000000"]);
      variants.push(await step({ label: "pacing_off", kav: off.kav, prober: off.prober, calls: 100 }));
      await shutdown();

      log("store on: 200 calls (fresh Kav)");
      const on = await launch("store_on");
      variants.push(await step({ label: "store_on", kav: on.kav, prober: on.prober, calls: 200 }));

      log("STT opening in 2 s: 50 calls speaking from their first frame");
      servers.speech.script.openDelayMs = 2000;
      const streamsBefore = servers.speech.stats.streams.length;
      const slow = await step(
        { label: "stt_slow", kav: on.kav, prober: on.prober, calls: 50 },
        { speakFirst: true },
      );
      servers.speech.script.openDelayMs = 0;
      variants.push(slow);
      const streams = servers.speech.stats.streams.slice(streamsBefore);
      const bytesAtStt = streams.reduce((n, s) => n + s.matcher.audio.length, 0);
      sttSlow = {
        calls: 50,
        openDelayMs: 2000,
        framesSent: slow.inbound.sent,
        framesAtKav: slow.inbound.kavReceived,
        rxDropped: slow.inbound.dropped,
        framesAtStt: bytesAtStt / 160,
        framesLost: slow.inbound.sent - bytesAtStt / 160,
        streamsWithFinal: streams.filter((s) => s.finals.length > 0).length,
        greetingFirstFrameMs: slow.greetingFirstFrameMs,
      };
      await shutdown();

      log("store off: 200 calls (fresh Kav, no-op store)");
      const noStore = await launch("store_off", ["--no-store"]);
      variants.push(
        await step({ label: "store_off", kav: noStore.kav, prober: noStore.prober, calls: 200 }),
      );
      await shutdown();
    }

    // Report.
    const extras = stepExtras(steps, idle.rssMiB, server);
    const variantExtras = stepExtras(variants, idle.rssMiB, new Map()).map((x) => ({
      ...x,
      addedCpuPct: null,
    }));
    const storeOn = variants.find((v) => v.label === "store_on");
    const storeOff = variants.find((v) => v.label === "store_off");
    const paced = steps.find((s) => s.calls === 100) ?? null;
    const unpaced = variants.find((v) => v.label === "pacing_off") ?? null;
    const topIndex = top === null ? -1 : steps.indexOf(top);
    const summary = {
      maxCallsAllInvariantsHeld: top?.calls ?? 0,
      cpuPerAddedCallPct: round2(cpuSlope(held)),
      cpuPctAtMax: top?.kav.cpuPct ?? null,
      webhookP99MsAtMax: top?.webhook.p99 ?? null,
      txP99MsAtMax: top?.tx.p99 ?? null,
      rssMiBAtMax: top?.kav.rssMiB ?? null,
      rssPerCallMiBAtMax: topIndex < 0 ? null : extras[topIndex].rssPerCallMiB,
      serverLatencyMs: pooled,
      serverLatencyMsAtMax: top === null ? null : server.get(top) ?? null,
      greetingFirstFrameMsAtMax: top?.greetingFirstFrameMs ?? null,
      sttSlowOpen: sttSlow,
      storeTxP99: storeOn && storeOff
        ? {
          on: storeOn.tx.p99,
          off: storeOff.tx.p99,
          deltaMs: round2(storeOn.tx.p99 - storeOff.tx.p99),
        }
        : null,
      pacing: paced && unpaced
        ? {
          calls: 100,
          paced: { ...paced.tx, burstPct: paced.tx.burstPct },
          unpaced: { ...unpaced.tx },
        }
        : null,
    };
    const result = {
      meta: {
        date: new Date().toISOString(),
        command: `deno task bench${Deno.args.length > 0 ? ` -- ${Deno.args.join(" ")}` : ""}`,
        deno: Deno.version.deno,
        v8: Deno.version.v8,
        cpus: navigator.hardwareConcurrency,
        cpuModel: (() => {
          try {
            return /model name\s*:\s*(.*)/.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ?? null;
          } catch {
            return null;
          }
        })(),
        pinned,
        nice: niced ? NICE : null,
        warmupCalls: WARMUP_CALLS,
        kavCore: cores.kav,
        loadCore: cores.load,
        clkTck: CLK_TCK,
        wallS: Math.round((performance.now() - began) / 1000),
        perCall: {
          callerAudioS: args.durationMs / 1000,
          turns: args.turns,
          windowS: args.windowMs / 1000,
        },
      },
      idle,
      summary,
      steps: steps.map((s, i) => ({ ...stepJson(s), ...extras[i] })),
      variants: variants.map((v, i) => ({ ...stepJson(v), ...variantExtras[i] })),
    };
    await Deno.mkdir(args.out, { recursive: true });
    const stamp = result.meta.date.replace(/[:.]/g, "-");
    const json = JSON.stringify(result, null, 2) + "\n";
    await Deno.writeTextFile(`${args.out}/${stamp}.json`, json);
    await Deno.writeTextFile(`${args.out}/latest.json`, json);
    console.log(JSON.stringify(summary, null, 2));
    console.log("");
    console.log(formatSteps(steps, extras));
    if (variants.length > 0) {
      console.log("");
      console.log(formatSteps(variants, variantExtras));
    }
    console.log("");
    console.log(
      `max calls with all invariants held: ${summary.maxCallsAllInvariantsHeld}; ` +
        `CPU per added call ${summary.cpuPerAddedCallPct}% of a core; ` +
        `server-added latency p95 ${pooled.p95} ms over ${pooled.turns} turns`,
    );
    log(`wrote ${args.out}/${stamp}.json in ${result.meta.wallS} s`);
  } finally {
    await shutdown();
    await servers.close();
    if (args.keep) log(`kept Kav's configs, logs and stores in ${dir}`);
    else await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) await main();
