/**
 * Call-store benchmark: `deno run --allow-all scripts/bench_store.ts [--calls 200] [--seconds 10]`.
 *
 * 1. Burst: every call's whole record (start, turns, events, end) queued at once; measures
 *    writes/s to disk and how late a 20 ms paced ticker (a stand-in for the TX worker) runs while
 *    the queue drains.
 * 2. Steady: `calls` live calls writing at a talking call's rate (a turn every 3 s, a mark every
 *    second); measures flush latency (enqueue → on disk) and the ticker's lateness against the
 *    same ticker with no store running.
 * Prints one JSON document, then a table.
 */
import { readCommandLine } from "../src/command_line.ts";
import { createLogger } from "../src/observe/log.ts";
import { openCallStore, type SqliteCallStore } from "../src/store/sqlite.ts";
import type { TurnRecord } from "../src/store/types.ts";
import { quantile } from "../tools/stats.ts";

interface Args {
  calls: number;
  seconds: number;
}

const OPTIONS = { calls: { type: "string" }, seconds: { type: "string" } } as const;

function parseArgs(argv: readonly string[]): Args {
  const { values } = readCommandLine(argv, OPTIONS);
  const positive = (name: keyof typeof OPTIONS, fallback: number): number => {
    const raw = values[name];
    const value = Number(raw ?? fallback);
    if (!(value > 0)) throw new RangeError(`Cannot use --${name} ${JSON.stringify(raw)}`);
    return value;
  };
  return { calls: positive("calls", 200), seconds: positive("seconds", 10) };
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

/** A 20 ms absolute-deadline loop like the TX worker; records how late each tick fires (ms). */
function startTicker(): { stop(): number[] } {
  const lateness: number[] = [];
  let next = performance.now() + 20;
  let timer: ReturnType<typeof setTimeout>;
  const tick = () => {
    const now = performance.now();
    lateness.push(now - next);
    next += 20;
    // Resync like the TX worker: no catch-up burst after a long stall.
    if (now - next > 40) next = now + 20;
    timer = setTimeout(tick, Math.max(0, next - performance.now()));
  };
  timer = setTimeout(tick, 20);
  return {
    stop() {
      clearTimeout(timer);
      return lateness;
    },
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function turn(index: number, at: number): TurnRecord {
  const agent = index % 2 === 1;
  return {
    index,
    speaker: agent ? "agent" : "caller",
    text: agent ? "בשמחה, יש לנו מקום ביום שלישי בעשר בבוקר" : "אני רוצה לקבוע תור לשבוע הבא",
    generated: null,
    cut: false,
    startedAt: at - 2000,
    endedAt: at,
    timings: agent
      ? {
        end_of_turn_delay: 320,
        stt_final_delay: 140,
        llm_ttft: 250 + index,
        tts_ttfb: 90,
        e2e_latency: 700 + index,
        server_latency: 4,
      }
      : null,
  };
}

function startCall(store: SqliteCallStore, sid: string, now: number): void {
  store.callStarted({
    callSid: sid,
    streamSid: "MZ" + sid.slice(2),
    accountSid: "AC1",
    from: "+972500000000",
    to: "+97230000000",
    customParameters: { Lead: sid },
    startedAt: now,
  });
}

function endCall(store: SqliteCallStore, sid: string, now: number): void {
  store.callEnded(sid, {
    endedAt: now,
    outcome: "completed",
    reason: "bench",
    counters: {
      rx_frames: 500,
      rx_drops: 0,
      tx_frames: 400,
      tx_drops: 0,
      tx_late: 0,
      malformed: 0,
    },
  });
}

async function burst(store: SqliteCallStore, calls: number) {
  const now = Date.now();
  let ops = 0;
  for (let c = 0; c < calls; c++) {
    const sid = `CA_BURST_${c}`;
    startCall(store, sid, now);
    for (let t = 0; t < 20; t++) store.turnCompleted(sid, turn(t, now + t * 3000));
    for (let e = 0; e < 40; e++) {
      store.event(sid, { kind: "mark", at: now + e * 1000, detail: `s${e}` });
    }
    endCall(store, sid, now + 60_000);
    ops += 62;
  }
  const ticker = startTicker();
  const started = performance.now();
  await store.flush();
  const seconds = (performance.now() - started) / 1000;
  await sleep(100);
  const late = ticker.stop();
  return {
    ops,
    flush_s: round(seconds),
    writes_per_s: Math.round(ops / seconds),
    ticker_late_p99_ms: round(quantile(late, 0.99)),
    ticker_late_max_ms: round(Math.max(0, ...late)),
  };
}

async function tickerOnly(seconds: number) {
  const ticker = startTicker();
  await sleep(seconds * 1000);
  return ticker.stop();
}

async function steady(store: SqliteCallStore, calls: number, seconds: number) {
  const sids = Array.from({ length: calls }, (_, c) => `CA_LIVE_${c}`);
  const turnIndex = new Array<number>(calls).fill(0);
  const start = Date.now();
  for (const sid of sids) startCall(store, sid, start);
  const ticker = startTicker();
  const flushMs: number[] = [];
  let ops = calls;
  let maxDepth = 0;
  const end = performance.now() + seconds * 1000;
  for (let step = 0; performance.now() < end; step++) {
    // 100 ms steps: each call writes a mark every 1 s and a turn every 3 s, staggered.
    const now = Date.now();
    for (let c = 0; c < calls; c++) {
      if ((step + c) % 10 === 0) {
        store.event(sids[c], { kind: "mark", at: now, detail: `s${step}` });
        ops++;
      }
      if ((step + c) % 30 === 0) {
        store.turnCompleted(sids[c], turn(turnIndex[c]++, now));
        ops++;
      }
    }
    maxDepth = Math.max(maxDepth, store.pending());
    const t0 = performance.now();
    const flushed = store.flush();
    await Promise.all([flushed.then(() => flushMs.push(performance.now() - t0)), sleep(100)]);
  }
  for (const sid of sids) endCall(store, sid, Date.now());
  ops += calls;
  await store.flush();
  const late = ticker.stop();
  return { ops, flushMs, late, maxDepth, writesPerS: Math.round(ops / seconds) };
}

async function main(): Promise<void> {
  const args = parseArgs(Deno.args);
  const dir = await Deno.makeTempDir({ prefix: "kav_bench_store_" });
  const store = await openCallStore({
    path: `${dir}/kav.db`,
    log: createLogger(() => {}),
    retentionDays: 0,
  });
  try {
    const baseline = await tickerOnly(Math.min(5, args.seconds));
    const burstResult = await burst(store, args.calls);
    const live = await steady(store, args.calls, args.seconds);
    const result = {
      calls: args.calls,
      seconds: args.seconds,
      burst: burstResult,
      steady: {
        ops: live.ops,
        writes_per_s: live.writesPerS,
        max_queue_depth: live.maxDepth,
        flush_latency_p50_ms: round(quantile(live.flushMs, 0.5)),
        flush_latency_p99_ms: round(quantile(live.flushMs, 0.99)),
        ticker_late_p50_ms: round(quantile(live.late, 0.5)),
        ticker_late_p99_ms: round(quantile(live.late, 0.99)),
        ticker_late_max_ms: round(Math.max(0, ...live.late)),
      },
      baseline: {
        ticker_late_p50_ms: round(quantile(baseline, 0.5)),
        ticker_late_p99_ms: round(quantile(baseline, 0.99)),
        ticker_late_max_ms: round(Math.max(0, ...baseline)),
      },
    };
    console.log(JSON.stringify(result, null, 2));
    const rows: [string, string | number][] = [
      ["burst: ops written", result.burst.ops],
      ["burst: writes/s", result.burst.writes_per_s],
      [
        "burst: 20 ms ticker late p99 / max (ms)",
        `${result.burst.ticker_late_p99_ms} / ${result.burst.ticker_late_max_ms}`,
      ],
      [`steady (${args.calls} calls): writes/s`, result.steady.writes_per_s],
      ["steady: max queue depth", result.steady.max_queue_depth],
      [
        "steady: flush latency p50 / p99 (ms)",
        `${result.steady.flush_latency_p50_ms} / ${result.steady.flush_latency_p99_ms}`,
      ],
      [
        "steady: ticker late p50 / p99 / max (ms)",
        `${result.steady.ticker_late_p50_ms} / ${result.steady.ticker_late_p99_ms} / ${result.steady.ticker_late_max_ms}`,
      ],
      [
        "no store: ticker late p50 / p99 / max (ms)",
        `${result.baseline.ticker_late_p50_ms} / ${result.baseline.ticker_late_p99_ms} / ${result.baseline.ticker_late_max_ms}`,
      ],
    ];
    const width = Math.max(...rows.map(([label]) => label.length));
    for (const [label, value] of rows) console.log(`${label.padEnd(width)}  ${value}`);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await main();
