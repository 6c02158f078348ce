/**
 * STT session write-path benchmark: `deno run --allow-all scripts/bench_stt_recovery.ts [--frames N]`.
 *
 * Measures what one `SpeechSession.write()` of a 20 ms μ-law frame costs on the media path (the RX
 * worker's call), with the fixture clips separated by 800 ms of silence, in three states:
 * streaming (a stream that takes every write), recognize mode with no streaming retry due, and
 * recognize mode with a retry due at every utterance boundary (every retry fails at once). Providers
 * are in-process fakes answering instantly, so the figures are the session's own work. Per-write
 * times below the timer's resolution read as 0. Prints one JSON document, then a table.
 */
import { PassThrough } from "node:stream";
import { readCommandLine } from "../src/command_line.ts";
import { createLogger } from "../src/observe/log.ts";
import { type GoogleSessionDeps, GoogleSpeechSession, STT_TUNING } from "../src/stt/google.ts";
import { fixtureClips } from "../tools/sandbox/sandbox.ts";
import { concatBytes } from "../tools/bytes.ts";
import { quantileOfSorted } from "../tools/stats.ts";

function parseFrames(argv: readonly string[]): number {
  const { values } = readCommandLine(argv, { frames: { type: "string", default: "50000" } });
  const frames = Number(values.frames);
  if (!Number.isInteger(frames) || frames < 100) {
    throw new RangeError(`Cannot use --frames "${values.frames}": expected a whole number >= 100`);
  }
  return frames;
}

const round = (n: number, digits = 2) => Number(n.toFixed(digits));

/** A StreamingRecognize call. */
type Stream = Awaited<ReturnType<GoogleSessionDeps["openStream"]>>;

/** A stream that accepts every write and never answers (a healthy, silent Google stream). */
function sinkStream(): Stream {
  const stream = new PassThrough({ objectMode: true });
  stream.resume();
  const fake = Object.assign(stream, { cancel: () => stream.destroy() });
  queueMicrotask(() => stream.emit("metadata", {}));
  return fake as unknown as Stream;
}

type State = "streaming" | "recognize" | "recognize_retrying";

async function measure(state: State, audio: Uint8Array, frames: number) {
  const abort = new AbortController();
  const log = createLogger(() => {});
  let recognizeCalls = 0;
  let opens = 0;
  const deps: GoogleSessionDeps = {
    endpoints: ["fake:1"],
    openStream: (_endpoint) => {
      opens++;
      return state === "streaming"
        ? Promise.resolve(sinkStream())
        : Promise.reject(Object.assign(new Error("refused"), { code: 14 }));
    },
    streamingConfig: {},
    recognize: () => {
      recognizeCalls++;
      return Promise.resolve([{ text: "x", confidence: 1 }]);
    },
    batchBytes: 320,
    restartAfterMs: 290_000,
    tuning: {
      ...STT_TUNING,
      openBackoffMs: 1,
      resumeFirstMs: state === "recognize_retrying" ? 1 : 3_600_000,
      resumeMaxMs: state === "recognize_retrying" ? 1 : 3_600_000,
    },
    now: () => performance.now(),
    log,
    signal: abort.signal,
  };
  const session = new GoogleSpeechSession(deps);
  const reading = (async () => {
    for await (const _ of session.results()) { /* drained */ }
  })();
  await session.ready;
  const times = new Float64Array(frames);
  let at = 0;
  const started = performance.now();
  for (let i = 0; i < frames; i++) {
    if (at + 160 > audio.length) at = 0;
    const frame = audio.subarray(at, at + 160);
    at += 160;
    const t0 = performance.now();
    session.write(frame);
    times[i] = performance.now() - t0;
    // Let timers, retries and Recognize replies run between frames, as on the real RX cadence.
    if (i % 50 === 49) await new Promise((resolve) => setTimeout(resolve, 0));
  }
  const elapsed = performance.now() - started;
  await session.close();
  abort.abort();
  await reading;
  times.sort();
  return {
    state,
    frames,
    write_us_mean: round(times.reduce((a, b) => a + b, 0) / frames * 1000),
    write_us_p50: round(quantileOfSorted(times, 0.5) * 1000),
    write_us_p99: round(quantileOfSorted(times, 0.99) * 1000),
    write_us_max: round(times[times.length - 1] * 1000),
    recognize_calls: recognizeCalls,
    stream_opens: opens,
    wall_ms: round(elapsed, 0),
  };
}

const frames = parseFrames(Deno.args);
const clips = fixtureClips();
const gap = new Uint8Array(800 * 8).fill(0xff);
const parts = clips.flatMap((c) => [c.audio, gap]);
const audio = concatBytes(...parts);

const results = [];
for (const state of ["streaming", "recognize", "recognize_retrying"] as const) {
  results.push(await measure(state, audio, frames));
}
console.log(JSON.stringify({ benchmark: "stt_session_write", results }, null, 2));
console.log(
  "\nstate               frames  mean µs  p50 µs  p99 µs  max µs  Recognize calls  stream opens",
);
for (const r of results) {
  console.log(
    `${r.state.padEnd(19)} ${String(r.frames).padStart(6)} ${String(r.write_us_mean).padStart(8)} ${
      String(r.write_us_p50).padStart(7)
    } ${String(r.write_us_p99).padStart(7)} ${String(r.write_us_max).padStart(7)} ${
      String(r.recognize_calls).padStart(16)
    } ${String(r.stream_opens).padStart(13)}`,
  );
}
