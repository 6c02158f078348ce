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
import { GrpcCode, parseEndpoint, toProviderError } from "../src/stt/_grpc.ts";
import { durationMs, readResponse } from "../src/stt/_response.ts";
import { levelDbfs, Segmenter } from "../src/stt/_segmenter.ts";
import { ClipMatcher, findClips } from "./support/_clip_matcher.ts";
import { type Clip, loadClips } from "./support/_protos.ts";

const CLIPS: Clip[] = loadClips(new URL("./fixtures/clips.json", import.meta.url).pathname);

function silence(ms: number): Uint8Array {
  return new Uint8Array(ms * 8).fill(0xff);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function contains(haystack: Uint8Array, needle: Uint8Array): boolean {
  return findClips([{ name: "x", text: "x", audio: needle }], haystack).length > 0;
}

Deno.test("AudioRing reads by absolute offset, trims at a final and drops the oldest when full", () => {
  const ring = new AudioRing(3);
  for (let i = 0; i < 3; i++) ring.append(new Uint8Array(4).fill(i));
  assert.equal(ring.begin, 0);
  assert.equal(ring.end, 12);
  assert.deepEqual(ring.read(2, 10), new Uint8Array([0, 0]), "never crosses a chunk");
  assert.deepEqual(ring.read(5, 2), new Uint8Array([1, 1]));
  ring.trimTo(6);
  assert.equal(ring.begin, 6);
  assert.deepEqual(ring.read(0, 10), new Uint8Array([1, 1]), "reads below begin start at begin");
  ring.append(new Uint8Array(4).fill(3)); // chunk 0 was trimmed, so no drop
  assert.equal(ring.droppedBytes, 0);
  ring.append(new Uint8Array(4).fill(4)); // full: drops chunk 1 (2 bytes still held)
  assert.equal(ring.droppedBytes, 2);
  assert.equal(ring.begin, 8);
  assert.equal(ring.read(ring.end, 4).length, 0);
  assert.throws(() => new AudioRing(0), RangeError);
});

Deno.test("Segmenter cuts speech separated by silence into whole utterances", () => {
  const [a, b] = CLIPS;
  const segmenter = new Segmenter();
  const audio = concat(silence(500), a.audio, silence(900), b.audio, silence(900));
  const utterances: Uint8Array[] = [];
  // Odd-sized writes: windows must be assembled across calls.
  for (let at = 0; at < audio.length; at += 333) {
    utterances.push(...segmenter.push(audio.subarray(at, at + 333)));
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
  assert.deepEqual(short.push(concat(silence(200), click, silence(1000))), []);

  const long = new Segmenter({ maxUtteranceMs: 1000 });
  const tone = concat(...CLIPS.map((c) => c.audio));
  const cut = long.push(tone);
  assert.ok(cut.length >= 1 && cut.every((u) => u.length <= 1000 * 8 + 300 * 8));

  const open = new Segmenter();
  assert.deepEqual(open.push(concat(silence(100), CLIPS[0].audio)), []);
  const last = open.flush();
  assert.ok(last !== null && contains(last, CLIPS[0].audio));
  assert.ok(levelDbfs(silence(20)) <= -119 && levelDbfs(CLIPS[0].audio) > -40);
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
  const audio = concat(silence(100), clip.audio, silence(100));
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
      const first = new ClipMatcher(CLIPS).push(concat(silence(40), clip.audio.subarray(0, split)));
      const second = new ClipMatcher(CLIPS).push(concat(clip.audio.subarray(split), silence(40)));
      return [...first, ...second].every((e) => e.kind !== "final");
    }),
    { numRuns: 200 },
  );
});
