/**
 * The pieces under the Google STT session: the replay ring, the energy segmenter, the event queue,
 * response reading, gRPC error mapping and endpoint parsing; and the fake server's clip matcher,
 * whose "a split clip is never recognized" rule the session tests rely on.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ProviderError } from "../src/errors.ts";
import { AudioRing } from "../src/stt/_audio_ring.ts";
import { EventQueue } from "../src/stt/_event_queue.ts";
import { GrpcCode, parseEndpoint, toProviderError } from "../src/providers/grpc.ts";
import { durationMs, readResponse } from "../src/stt/_response.ts";
import { createLogger } from "../src/observe/log.ts";
import { RecognizeWorker } from "../src/stt/_recognize_worker.ts";
import { RecognizeMode } from "../src/stt/_recognize_mode.ts";
import { Timers } from "../src/stt/_timers.ts";
import { STT_TUNING } from "../src/stt/_tuning.ts";
import { levelDbfs, Segmenter } from "../src/stt/_segmenter.ts";
import type { SttEvent } from "../src/stt/types.ts";
import { ClipMatcher, findClips } from "../tools/sandbox/_clip_matcher.ts";
import { type Clip, fixtureClips } from "../tools/sandbox/sandbox.ts";
import { concatBytes } from "../tools/bytes.ts";

const CLIPS: Clip[] = fixtureClips();

function silence(ms: number): Uint8Array {
  return new Uint8Array(ms * 8).fill(0xff);
}

function contains(haystack: Uint8Array, needle: Uint8Array): boolean {
  return findClips([{ name: "x", text: "x", audio: needle }], haystack).length > 0;
}

/** The bytes of `view` as a plain Uint8Array (`AudioRing.read` hands out pooled Buffers). */
function bytesOf(view: Uint8Array): Uint8Array {
  return new Uint8Array(view);
}

Deno.test("AudioRing reads by absolute offset, trims at a final and drops the oldest when full", () => {
  const ring = new AudioRing(12, 4); // starts at 4 bytes and grows to 12
  for (let i = 0; i < 3; i++) ring.append(new Uint8Array(4).fill(i));
  assert.equal(ring.begin, 0);
  assert.equal(ring.end, 12);
  assert.deepEqual(bytesOf(ring.read(2, 4)), new Uint8Array([0, 0, 1, 1]), "reads across appends");
  assert.deepEqual(bytesOf(ring.read(5, 2)), new Uint8Array([1, 1]));
  ring.trimTo(6);
  assert.equal(ring.begin, 6);
  assert.deepEqual(
    bytesOf(ring.read(0, 3)),
    new Uint8Array([1, 1, 2]),
    "reads below begin start at begin",
  );
  ring.append(new Uint8Array(4).fill(3)); // 6 bytes were trimmed, so no drop (wraps around)
  assert.equal(ring.droppedBytes, 0);
  assert.deepEqual(bytesOf(ring.read(6, 100)), new Uint8Array([1, 1, 2, 2, 2, 2, 3, 3, 3, 3]));
  ring.append(new Uint8Array(4).fill(4)); // full: drops the 2 oldest bytes
  assert.equal(ring.droppedBytes, 2);
  assert.equal(ring.begin, 8);
  assert.deepEqual(
    bytesOf(ring.read(8, 100)),
    new Uint8Array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]),
  );
  assert.equal(ring.read(ring.end, 4).length, 0);
  assert.throws(() => new AudioRing(0), RangeError);
});

Deno.test("AudioRing copies what it is given and hands out copies", () => {
  const ring = new AudioRing(8, 2);
  const batch = new Uint8Array([1, 2, 3]);
  ring.append(batch);
  batch.fill(9); // the session reuses its batch buffer
  const read = ring.read(0, 3);
  assert.deepEqual(bytesOf(read), new Uint8Array([1, 2, 3]));
  ring.trimTo(3);
  ring.append(new Uint8Array(8).fill(7)); // overwrites the trimmed bytes
  assert.deepEqual(
    bytesOf(read),
    new Uint8Array([1, 2, 3]),
    "an array already handed out never changes",
  );
  ring.append(new Uint8Array(20).fill(5)); // larger than the ring: only the newest 8 bytes stay
  assert.equal(ring.end, 31);
  assert.equal(ring.begin, 23);
  assert.equal(ring.droppedBytes, 20);
  assert.deepEqual(bytesOf(ring.read(0, 100)), new Uint8Array(8).fill(5));
});

Deno.test("Segmenter cuts speech separated by silence into whole utterances", () => {
  const [a, b] = CLIPS;
  const segmenter = new Segmenter();
  const audio = concatBytes(silence(500), a.audio, silence(900), b.audio, silence(900));
  const utterances: Uint8Array[] = [];
  // Odd-sized writes: windows must be assembled across calls.
  for (let at = 0; at < audio.length; at += 333) {
    for (const u of segmenter.push(audio.subarray(at, at + 333))) {
      assert.deepEqual(
        u.audio,
        audio.subarray(u.start, u.start + u.audio.length),
        "start is right",
      );
      utterances.push(u.audio);
    }
  }
  assert.equal(utterances.length, 2);
  assert.ok(contains(utterances[0], a.audio) && !contains(utterances[0], b.audio));
  assert.ok(contains(utterances[1], b.audio));
  assert.equal(segmenter.inSpeech, false);
  assert.ok(segmenter.trailingSilenceMs >= 800);
  assert.equal(segmenter.flush(), null);
});

Deno.test("Segmenter ignores clicks, cuts overlong speech and flushes the last utterance", () => {
  const click = new Uint8Array(160).fill(0x00); // one loud 20 ms window
  const short = new Segmenter();
  assert.deepEqual(short.push(concatBytes(silence(200), click, silence(1000))), []);

  const long = new Segmenter({ maxUtteranceMs: 1000 });
  const tone = concatBytes(...CLIPS.map((c) => c.audio));
  const cut = long.push(tone);
  assert.ok(cut.length >= 1 && cut.every((u) => u.audio.length <= 1000 * 8 + 300 * 8));

  const open = new Segmenter();
  assert.deepEqual(open.push(concatBytes(silence(100), CLIPS[0].audio)), []);
  const last = open.flush();
  assert.ok(last !== null && contains(last.audio, CLIPS[0].audio));
  assert.ok(levelDbfs(silence(20)) <= -119 && levelDbfs(CLIPS[0].audio) > -40);
});

/** Loud pseudo-random μ-law bytes (a burst of "speech") from a seed. */
function noise(ms: number, seed: number): Uint8Array {
  const out = new Uint8Array(ms * 8);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < out.length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = (x >>> 24) & 0x7f ^ 0x40; // never a near-silent code
  }
  return out;
}

function indexOfBytes(haystack: Uint8Array, needle: Uint8Array, from: number): number {
  const found = findClips([{ name: "n", text: "n", audio: needle }], haystack.subarray(from));
  return found.length === 0 ? -1 : from + found[0].end - needle.length;
}

Deno.test("Segmenter.openFrom marks where the audio not yet in an utterance begins", () => {
  const part = fc.oneof(
    fc.record({ kind: fc.constant("silence"), ms: fc.integer({ min: 0, max: 1500 }) }),
    fc.record({ kind: fc.constant("speech"), ms: fc.integer({ min: 120, max: 900 }) }),
  );
  fc.assert(
    fc.property(
      fc.array(part, { minLength: 1, maxLength: 8 }),
      fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 8 }),
      fc.integer({ min: 0, max: 100 }),
      (parts, sizes, cutPercent) => {
        const speech: [number, number][] = [];
        const pieces: Uint8Array[] = [];
        let length = 0;
        parts.forEach((p, i) => {
          const bytes = p.kind === "silence" ? silence(p.ms) : noise(p.ms, i + 1);
          if (p.kind === "speech") speech.push([length, length + bytes.length]);
          pieces.push(bytes);
          length += bytes.length;
        });
        const audio = concatBytes(...pieces);
        const cut = Math.floor(audio.length * cutPercent / 100);
        const segmenter = new Segmenter();
        const covered: [number, number][] = [];
        let pushed = 0;
        let previous = 0;
        for (let k = 0; pushed < cut; k++) {
          const n = Math.min(sizes[k % sizes.length], cut - pushed);
          const before = segmenter.openFrom;
          const wasInSpeech = segmenter.inSpeech;
          const utterances = segmenter.push(audio.subarray(pushed, pushed + n));
          pushed += n;
          const after = segmenter.openFrom;
          assert.ok(before >= previous && after >= before && after <= pushed, "monotonic");
          previous = after;
          let from = before;
          utterances.forEach(({ audio: u, start }, i) => {
            const at = indexOfBytes(audio, u, from);
            assert.ok(at >= 0, "an utterance is a slice of the audio");
            assert.equal(start, at, "its start is where it is in the audio");
            if (i === 0 && wasInSpeech) assert.equal(at, before, "it began at openFrom");
            assert.ok(at + u.length <= after, "it ends before the new openFrom");
            covered.push([at, at + u.length]);
            from = at + u.length;
          });
        }
        // Nothing lost: speech before openFrom is in a returned utterance.
        const openFrom = segmenter.openFrom;
        for (const [start, end] of speech) {
          for (let b = start; b < Math.min(end, openFrom); b += 80) {
            assert.ok(covered.some(([s, e]) => s <= b && b < e), `speech byte ${b} covered`);
          }
        }
        // Nothing repeated: what is not settled is exactly the utterance in progress.
        const inSpeech = segmenter.inSpeech;
        const rest = segmenter.flush();
        if (inSpeech) {
          // null: too little speech so far to be an utterance (flush drops it as noise).
          if (rest !== null) {
            assert.deepEqual(rest.audio, audio.subarray(openFrom, cut));
            assert.equal(rest.start, openFrom);
          }
        } else {
          assert.equal(rest, null);
          assert.ok(cut - openFrom <= 300 * 8 + 160, "only the preroll and a partial window");
        }
      },
    ),
    { numRuns: 150 },
  );
});

/** A RecognizeWorker whose `recognize` answers from `answer`, recording each call's length. */
function worker(answer: (audio: Uint8Array, call: number) => Promise<string>) {
  const calls: number[] = [];
  const events: SttEvent[] = [];
  const lines: string[] = [];
  const abort = new AbortController();
  const w = new RecognizeWorker({
    recognize: async (audio) => {
      calls.push(audio.length);
      return [{ text: await answer(audio, calls.length), confidence: 0.9 }];
    },
    emit: (event) => events.push(event),
    log: createLogger((line) => lines.push(line)),
    signal: abort.signal,
    retryFirstMs: 10,
    retryMaxMs: 40,
  });
  const texts = () => events.flatMap((e) => e.type === "final" ? [e.text] : []);
  return { w, calls, events, lines, abort, texts };
}

const unavailable = () => new ProviderError("stt", "connectivity", "The service is unavailable");

Deno.test("RecognizeWorker resends a failed utterance, in order, until it is recognized", async () => {
  let failing = 3;
  const { w, calls, events, lines, texts } = worker((audio) => {
    if (failing-- > 0) return Promise.reject(unavailable());
    return Promise.resolve(`utterance of ${audio.length}`);
  });
  const first = concatBytes(silence(400), noise(500, 7), silence(700));
  const second = concatBytes(noise(300, 9), silence(700));
  w.push(first);
  assert.equal(w.unrecognizedFrom, 100 * 8, "from the first utterance's 300 ms preroll on");
  w.push(second);
  assert.equal(w.pending, 2);
  await w.drain(5000);
  assert.equal(calls.length, 5, "three failures, then both utterances once");
  assert.equal(calls[0], calls[3], "the failed utterance was sent again");
  assert.deepEqual(texts(), [`utterance of ${calls[3]}`, `utterance of ${calls[4]}`]);
  assert.equal(events.filter((e) => e.type === "error").length, 1, "one error per outage");
  assert.equal(lines.filter((l) => l.includes("recognize failed, will resend")).length, 3);
  assert.ok(lines.some((l) => l.includes("recognize recovered") && l.includes("failures=3")));
  assert.ok(!lines.some((l) => l.includes("audio lost")));
  assert.equal(w.idle, true);
});

Deno.test("RecognizeWorker.stop() abandons the call in flight and every queued utterance", async () => {
  let release: (text: string) => void = () => {};
  const { w, calls, texts, lines } = worker(() => new Promise((resolve) => release = resolve));
  w.push(concatBytes(silence(400), noise(500, 7), silence(700))); // queued, in flight
  w.push(concatBytes(noise(300, 9), silence(700))); // queued behind it
  w.push(concatBytes(silence(100), noise(300, 11))); // being cut
  assert.equal(calls.length, 1);
  assert.equal(w.unrecognizedFrom, 100 * 8, "everything from the first utterance on");
  w.stop();
  release("too late");
  await w.drain(1000);
  assert.deepEqual(texts(), [], "a result that comes after stop() is ignored");
  assert.equal(calls.length, 1, "nothing more is sent");
  assert.ok(!lines.some((l) => l.includes("audio lost")), "stop() loses nothing: the ring has it");
});

Deno.test("RecognizeWorker reports what it gives up: refused audio, the oldest past the bound, the rest at the end", async () => {
  const { w, calls, texts, lines, events } = worker((_audio, call) =>
    call === 1
      ? Promise.reject(new ProviderError("stt", "invalid_request", "Bad language"))
      : Promise.reject(unavailable())
  );
  w.push(concatBytes(silence(400), noise(500, 7), silence(700))); // refused for good: lost
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.ok(lines.some((l) => l.includes("recognize refused")));
  assert.ok(lines.some((l) => /audio lost .*ms=\d+ reason=refused/.test(l)), lines.join("\n"));
  assert.ok(events.some((e) => e.type === "error" && e.fatal));
  w.push(concatBytes(noise(300, 9), silence(700)));
  w.push(concatBytes(noise(400, 13), silence(700)));
  assert.equal(w.pending, 2);
  assert.equal(w.dropOldest("backlog_full"), true);
  assert.ok(lines.some((l) => /audio lost .*reason=backlog_full/.test(l)));
  assert.equal(w.pending, 1);
  await w.drain(100);
  assert.ok(lines.some((l) => /audio lost .*reason=call_ended/.test(l)), "what the end cut off");
  assert.deepEqual(texts(), []);
  assert.ok(calls.length >= 2);
});

Deno.test("RecognizeMode.leave() trims what Recognize answered since the last batch: the stream never hears it again", async () => {
  const ring = new AudioRing(STT_TUNING.ringBytes);
  const events: SttEvent[] = [];
  const timers = new Timers();
  const abort = new AbortController();
  const mode = new RecognizeMode({
    ring,
    recognize: () => Promise.resolve([{ text: "recognized", confidence: 0.9 }]),
    emit: (event) => events.push(event),
    probe: {
      endpoints: ["127.0.0.1:9"],
      openStream: () => Promise.reject(new Error("not used")),
      streamingConfig: {},
    },
    onStream: () => {},
    tuning: { ...STT_TUNING, resumeFirstMs: 60_000 },
    timers,
    log: createLogger(() => {}),
    signal: abort.signal,
  });
  mode.enter(unavailable());
  // As the session does: every batch goes to the ring, then to the mode.
  const push = (audio: Uint8Array) => {
    ring.append(audio);
    mode.push(audio);
  };
  push(concatBytes(silence(400), noise(500, 7), silence(700))); // one utterance, sent at once
  assert.equal(ring.begin, 100 * 8, "held from the utterance (with its preroll) on");
  await new Promise((resolve) => setTimeout(resolve, 10)); // Recognize answers; no batch since
  assert.deepEqual(events.flatMap((e) => e.type === "final" ? [e.text] : []), ["recognized"]);
  mode.leave(); // a probe's stream is up now
  assert.ok(ring.begin >= 1000 * 8, `the replay starts after the recognized audio (${ring.begin})`);
  mode.stop();
  timers.clear();
});

Deno.test("EventQueue drops the oldest when full and ends after draining", async () => {
  const queue = new EventQueue<number>(2);
  queue.push(1);
  queue.push(2);
  queue.push(3);
  assert.equal(queue.dropped, 1);
  queue.end();
  queue.push(4);
  const seen: number[] = [];
  for await (const n of queue) seen.push(n);
  assert.deepEqual(seen, [2, 3]);
  assert.throws(() => new EventQueue(0), RangeError);
});

Deno.test("readResponse() joins interim results and reads final end times", () => {
  const read = readResponse({
    results: [
      { alternatives: [{ transcript: "שלום" }], stability: 0.9 },
      { alternatives: [{ transcript: "אני" }], stability: 0.1 },
    ],
  });
  assert.deepEqual(read, { partial: { text: "שלום אני", stability: 0.9 }, finals: [] });
  const final = readResponse({
    results: [{
      alternatives: [{ transcript: " כן ", confidence: 0.8 }],
      isFinal: true,
      resultEndTime: { seconds: "2", nanos: 500_000_000 },
    }],
  });
  assert.deepEqual(final, {
    partial: null,
    finals: [{ text: "כן", confidence: 0.8, endMs: 2500 }],
  });
  assert.equal(durationMs(null), null);
  assert.equal(durationMs({ nanos: 40_000_000 }), 40);
});

Deno.test("toProviderError() maps gRPC codes to categories and retryability", () => {
  const cases: [number, string, boolean][] = [
    [GrpcCode.UNAVAILABLE, "connectivity", true],
    [GrpcCode.DEADLINE_EXCEEDED, "timeout", true],
    [GrpcCode.RESOURCE_EXHAUSTED, "rate_limit", true],
    [GrpcCode.INVALID_ARGUMENT, "invalid_request", false],
    [GrpcCode.OUT_OF_RANGE, "invalid_request", false],
    [GrpcCode.PERMISSION_DENIED, "authentication", false],
    [GrpcCode.UNAUTHENTICATED, "authentication", false],
    [GrpcCode.CANCELLED, "cancelled", false],
    [GrpcCode.INTERNAL, "server", true],
  ];
  for (const [code, category, retryable] of cases) {
    const error = toProviderError("stt", "Cannot do it", { code, details: "Because." });
    assert.equal(error.category, category, `code ${code}`);
    assert.equal(error.retryable, retryable, `code ${code}`);
    assert.equal(error.provider, "stt");
  }
  const grpcJs = Object.assign(new Error("14 UNAVAILABLE: No connection established."), {
    code: 14,
  });
  assert.equal(
    toProviderError("stt", `Cannot open speech stream at "h:1"`, grpcJs).message,
    `Cannot open speech stream at "h:1": UNAVAILABLE: "No connection established"`,
  );
  const auth = toProviderError(
    "tts",
    "Cannot synthesize",
    new Error("Could not load the default credentials"),
  );
  assert.equal(auth.category, "authentication");
  assert.equal(auth.retryable, false);
  const same = new ProviderError("llm", "timeout", "Cannot stream");
  assert.equal(toProviderError("stt", "x", same), same);
});

Deno.test("parseEndpoint() takes host, host:port and [v6]:port", () => {
  assert.deepEqual(parseEndpoint("speech.googleapis.com"), {
    host: "speech.googleapis.com",
    port: 443,
  });
  assert.deepEqual(parseEndpoint("127.0.0.1:50051"), { host: "127.0.0.1", port: 50051 });
  assert.deepEqual(parseEndpoint("[::1]:8443"), { host: "::1", port: 8443 });
  for (const bad of ["", "host:", "host:99999", "a:b:c", "http://host"]) {
    assert.throws(() => parseEndpoint(bad), TypeError, bad);
  }
});

Deno.test("ClipMatcher reports growing partials, one final, and never a clip split across streams", () => {
  const clip = CLIPS[0];
  const matcher = new ClipMatcher(CLIPS);
  const audio = concatBytes(silence(100), clip.audio, silence(100));
  const events = [];
  for (let at = 0; at < audio.length; at += 320) {
    events.push(...matcher.push(audio.subarray(at, at + 320)));
  }
  const finals = events.filter((e) => e.kind === "final");
  assert.deepEqual(finals.map((e) => e.text), [clip.text]);
  assert.equal(finals[0].end, 800 + clip.audio.length);
  const partials = events.filter((e) => e.kind === "partial").map((e) => e.text);
  assert.ok(partials.length >= 2 && partials.every((p) => clip.text.startsWith(p)));

  fc.assert(
    fc.property(fc.integer({ min: 1, max: clip.audio.length - 1 }), (split) => {
      const first = new ClipMatcher(CLIPS).push(
        concatBytes(silence(40), clip.audio.subarray(0, split)),
      );
      const second = new ClipMatcher(CLIPS).push(
        concatBytes(clip.audio.subarray(split), silence(40)),
      );
      return [...first, ...second].every((e) => e.kind !== "final");
    }),
    { numRuns: 200 },
  );
});
