/**
 * Runs N simulated Twilio calls against one Kav (`caller.ts`) on one shared scheduler, with a
 * progress callback once per second, and sums them up. Used by `simulate.ts` and the benchmarks.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { frameAt, frameCount } from "../../src/audio/frames.ts";
import { RealtimeScheduler } from "../../src/call/scheduler.ts";
import { type CallerLine, type CallResult, newTotals, runCall, type SimTotals } from "./caller.ts";
import { type IntervalSummary, MsHistogram, round1, type Spread, spread } from "../stats.ts";
import type { KavTarget } from "./http.ts";

export type { CallerLine, CallResult, SimTotals };

export interface SimulationOptions {
  readonly target: KavTarget;
  readonly calls: number;
  /** Calls start evenly spread over this many ms. */
  readonly rampMs: number;
  readonly turns: number;
  readonly minDurationMs: number;
  readonly lines: readonly CallerLine[];
  readonly greetingTimeoutMs?: number;
  readonly answerTimeoutMs?: number;
  readonly quietMs?: number;
  readonly pauseMs?: number;
  readonly statusCallbacks?: boolean;
  readonly strict?: boolean;
  readonly speakFirst?: boolean;
  readonly signal?: AbortSignal;
  /** Called once a second with the live counters and the seconds elapsed. */
  readonly onProgress?: (totals: Readonly<SimTotals>, elapsedS: number) => void;
  /** Called when the last call has been placed. */
  readonly onAllStarted?: () => void;
}

/** One call as reported (JSON-ready). */
export interface CallReport {
  readonly index: number;
  readonly callSid: string;
  readonly ok: boolean;
  readonly greeting: CallResult["greeting"];
  readonly upgradeMs: number | null;
  readonly turns: CallResult["turns"];
  readonly framesSent: number;
  readonly framesReceived: number;
  readonly marksReceived: number;
  readonly clears: number;
  readonly interArrivalMs: IntervalSummary;
  readonly gapsOver40: number;
  readonly underruns: number;
  readonly durationS: number;
  readonly errors: readonly string[];
}

/** The counts every report of many calls carries (a simulation's, a bench generator's). */
export interface CallCounts {
  readonly calls: number;
  readonly ok: number;
  readonly greetings: number;
  readonly turnsPlayed: number;
  readonly turnsAnswered: number;
  readonly framesSent: number;
  readonly framesReceived: number;
  readonly gapsOver40: number;
  readonly underruns: number;
  readonly clears: number;
  readonly errors: number;
  /** Distinct error messages with their counts (first 10). */
  readonly errorKinds: readonly { message: string; count: number }[];
}

export interface OverallReport extends CallCounts {
  readonly interArrivalMs: IntervalSummary;
  /** `start` → first greeting frame, ms. */
  readonly greetingFirstFrameMs: Spread;
  /** WebSocket upgrade request → open, ms. */
  readonly upgradeMs: Spread;
  /** Caller's last frame → first answer frame, ms (includes STT, LLM and TTS). */
  readonly answerLatencyMs: Spread;
  readonly wallS: number;
}

export interface SimulationReport {
  readonly overall: OverallReport;
  readonly calls: readonly CallReport[];
  /** Every call's agent-frame intervals together. */
  readonly histogram: MsHistogram;
}

/** Cuts μ-law audio into 20 ms frames (last one padded with silence) and base64-encodes them. */
export function encodeLine(name: string, text: string, mulaw: Uint8Array): CallerLine {
  const n = frameCount(mulaw.length);
  const frames: string[] = [];
  for (let i = 0; i < n; i++) frames.push(frameAt(mulaw, i).toBase64());
  return { name, text, frames };
}

/** The repository's Hebrew fixture clips (`tools/sandbox/fixtures/clips.json`), which the sandbox recognizes. */
export function fixtureLines(): CallerLine[] {
  const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "sandbox", "fixtures");
  const texts: Record<string, string> = JSON.parse(Deno.readTextFileSync(join(dir, "clips.json")));
  return Object.entries(texts).map(([file, text]) =>
    encodeLine(file.replace(/\.ulaw$/, ""), text, Deno.readFileSync(join(dir, "audio", file)))
  );
}

/** Places the calls, waits for all of them, and reports. */
export async function simulate(options: SimulationOptions): Promise<SimulationReport> {
  const scheduler = new RealtimeScheduler();
  const totals = newTotals();
  const signal = options.signal ?? new AbortController().signal;
  const began = performance.now();
  const progress = options.onProgress === undefined ? undefined : setInterval(
    () => options.onProgress?.(totals, (performance.now() - began) / 1000),
    1000,
  );
  const runs: Promise<CallResult>[] = [];
  try {
    for (let i = 0; i < options.calls; i++) {
      const startAt = began + (options.calls <= 1 ? 0 : (i * options.rampMs) / options.calls);
      const wait = startAt - performance.now();
      if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
      if (signal.aborted) break;
      runs.push(runCall({
        index: i,
        target: options.target,
        scheduler,
        lines: options.lines,
        turns: options.turns,
        minDurationMs: options.minDurationMs,
        greetingTimeoutMs: options.greetingTimeoutMs ?? 10_000,
        answerTimeoutMs: options.answerTimeoutMs ?? 15_000,
        quietMs: options.quietMs ?? 700,
        pauseMs: options.pauseMs ?? 400,
        statusCallbacks: options.statusCallbacks ?? true,
        strict: options.strict ?? true,
        speakFirst: options.speakFirst,
        totals,
        signal,
      }));
    }
    options.onAllStarted?.();
    const results = await Promise.all(runs);
    return summarize(results, (performance.now() - began) / 1000);
  } finally {
    if (progress !== undefined) clearInterval(progress);
    options.onProgress?.(totals, (performance.now() - began) / 1000);
  }
}

function summarize(results: readonly CallResult[], wallS: number): SimulationReport {
  const histogram = new MsHistogram();
  const firstFrames: number[] = [];
  const upgrades: number[] = [];
  const answers: number[] = [];
  const kinds = new Map<string, number>();
  let sent = 0, received = 0, gaps = 0, underruns = 0, clears = 0, errors = 0;
  let played = 0, answered = 0, greetings = 0, ok = 0;
  const calls: CallReport[] = results.map((r) => {
    histogram.merge(r.interArrival);
    if (r.greeting.firstFrameMs !== null) firstFrames.push(r.greeting.firstFrameMs);
    if (r.upgradeMs !== null) upgrades.push(r.upgradeMs);
    for (const turn of r.turns) {
      played++;
      if (turn.answered) answered++;
      if (turn.answerLatencyMs !== null) answers.push(turn.answerLatencyMs);
    }
    for (const message of r.errors) {
      // Group by message shape: numbers (codes, ms, frames) vary between calls.
      const kind = message.replace(/\d+/g, "N");
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    }
    sent += r.framesSent;
    received += r.framesReceived;
    gaps += r.gapsOver40;
    underruns += r.underruns;
    clears += r.clears;
    errors += r.errors.length;
    if (r.greeting.received) greetings++;
    if (r.ok) ok++;
    return {
      index: r.index,
      callSid: r.callSid,
      ok: r.ok,
      greeting: {
        ...r.greeting,
        firstFrameMs: r.greeting.firstFrameMs === null ? null : round1(r.greeting.firstFrameMs),
      },
      upgradeMs: r.upgradeMs === null ? null : round1(r.upgradeMs),
      turns: r.turns.map((t) => ({
        ...t,
        answerLatencyMs: t.answerLatencyMs === null ? null : round1(t.answerLatencyMs),
      })),
      framesSent: r.framesSent,
      framesReceived: r.framesReceived,
      marksReceived: r.marksReceived,
      clears: r.clears,
      interArrivalMs: r.interArrival.summary(),
      gapsOver40: r.gapsOver40,
      underruns: r.underruns,
      durationS: round1(r.durationMs / 1000),
      errors: r.errors,
    };
  });
  return {
    overall: {
      calls: results.length,
      ok,
      greetings,
      turnsPlayed: played,
      turnsAnswered: answered,
      framesSent: sent,
      framesReceived: received,
      interArrivalMs: histogram.summary(),
      gapsOver40: gaps,
      underruns,
      clears,
      greetingFirstFrameMs: spread(firstFrames),
      upgradeMs: spread(upgrades),
      answerLatencyMs: spread(answers),
      errors,
      errorKinds: [...kinds].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([message, count]) => ({
        message,
        count,
      })),
      wallS: round1(wallS),
    },
    calls,
    histogram,
  };
}
