import assert from "node:assert/strict";
import { encodeMulaw, frameDbfs } from "../src/audio/mulaw.ts";
import { decodeMulaw } from "../tools/bytes.ts";
import { createVad, Vad, type VadTransition } from "../src/audio/vad.ts";
import { concatBytes } from "../tools/bytes.ts";

/**
 * Real Hebrew speech: the shared clips (espeak-ng he → 8000 Hz μ-law, trimmed) and our own
 * longer sentence with pauses, made with
 * `espeak-ng -v he -w he.wav "שלום, אני רוצה לקבוע תור לרופא ביום שלישי בבוקר"` and
 * `sox he.wav -r 8000 -c 1 -e u-law -t raw tests/fixtures/vad/appointment_long.ulaw`.
 */
const FIXTURES = [
  "tests/fixtures/vad/appointment_long.ulaw",
  ...listClips("tools/sandbox/fixtures/audio"),
];
const HANGOVER_MS = 180;
/** A 20 ms window above this level counts as voiced for the ground truth. */
const TRUTH_DBFS = -50;

function listClips(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].filter((e) => e.isFile && e.name.endsWith(".ulaw"))
      .map((e) => `${dir}/${e.name}`).sort();
  } catch {
    return [];
  }
}

/** Seeded PRNG (mulberry32) so noise is the same on every run. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Digital silence as phones send it: a mix of 0xFF (+0) and 0x7F (−0). */
function silence(bytes: number, seed = 1): Uint8Array {
  const next = random(seed);
  return Uint8Array.from({ length: bytes }, () => next() < 0.5 ? 0xff : 0x7f);
}

/** White noise with the given RMS level, as μ-law. */
function noise(bytes: number, dbfs: number, seed = 7): Uint8Array {
  const next = random(seed);
  const rms = 32768 * 10 ** (dbfs / 20);
  // Uniform noise on [-a, a] has RMS a/√3.
  const amplitude = rms * Math.sqrt(3);
  return encodeMulaw(Int16Array.from({ length: bytes }, () => (next() * 2 - 1) * amplitude));
}

function tone(ms: number, dbfs: number, hz = 400): Uint8Array {
  const amplitude = 32768 * 10 ** (dbfs / 20) * Math.SQRT2;
  return encodeMulaw(
    Int16Array.from(
      { length: ms * 8 },
      (_, i) => amplitude * Math.sin((2 * Math.PI * hz * i) / 8000),
    ),
  );
}

/** Sample-wise sum of two μ-law signals (for speech over noise). */
function mix(a: Uint8Array, b: Uint8Array): Uint8Array {
  const x = decodeMulaw(a);
  const y = decodeMulaw(b);
  return encodeMulaw(Int16Array.from(x, (s, i) => Math.max(-32768, Math.min(32767, s + y[i]))));
}

interface Seen {
  readonly transition: VadTransition;
  /** End of the frame whose push returned it: when Kav knows. */
  readonly detectedAt: number;
}

/** Feeds `audio` in 20 ms frames timed from 0 and returns the transitions. */
function run(vad: Vad, audio: Uint8Array): Seen[] {
  const seen: Seen[] = [];
  for (let at = 0; at + 160 <= audio.length; at += 160) {
    const transition = vad.push(audio.subarray(at, at + 160), at / 8);
    if (transition !== null) seen.push({ transition, detectedAt: at / 8 + 20 });
  }
  return seen;
}

/** First and last 20 ms windows of the clip above TRUTH_DBFS, as ms from the clip start. */
function voicedSpan(clip: Uint8Array): { first: number; lastEnd: number } {
  let first = -1;
  let lastEnd = -1;
  for (let at = 0; at + 160 <= clip.length; at += 160) {
    if (frameDbfs(clip.subarray(at, at + 160)) <= TRUTH_DBFS) continue;
    if (first < 0) first = at / 8;
    lastEnd = at / 8 + 20;
  }
  assert.ok(first >= 0, "clip has no voiced frame");
  return { first, lastEnd };
}

for (const path of FIXTURES) {
  Deno.test(`Vad detects speech onset and end in ${path.split("/").pop()}`, () => {
    const clip = Deno.readFileSync(path);
    // An odd lead so speech starts mid-frame, as it does on a real call.
    const leadBytes = 4100;
    const audio = concatBytes(silence(leadBytes), clip, silence(8000));
    const span = voicedSpan(clip);
    const truthStart = leadBytes / 8 + span.first;
    const truthEnd = leadBytes / 8 + span.lastEnd;
    const seen = run(new Vad({ hangoverMs: HANGOVER_MS }), audio);

    assert.ok(seen.length >= 2 && seen.length % 2 === 0, JSON.stringify(seen));
    const first = seen[0];
    assert.equal(first.transition.type, "speechStart");
    assert.ok(
      first.detectedAt - truthStart <= 60,
      `onset detected ${first.detectedAt - truthStart} ms after the first voiced frame`,
    );
    assert.ok(Math.abs(first.transition.atMs - truthStart) <= 40, JSON.stringify(first));
    for (let i = 0; i < seen.length; i++) {
      assert.equal(seen[i].transition.type, i % 2 === 0 ? "speechStart" : "speechEnd");
    }
    const last = seen[seen.length - 1];
    assert.ok(
      Math.abs(last.transition.atMs - truthEnd) <= 40,
      `end at ${last.transition.atMs}, last voiced frame ends at ${truthEnd}`,
    );
    // The end is reported once the hangover has passed, not before and not much after.
    const wait = last.detectedAt - last.transition.atMs;
    assert.ok(wait >= HANGOVER_MS && wait < HANGOVER_MS + 20, `end reported after ${wait} ms`);
  });
}

Deno.test("Vad stays silent on digital silence", () => {
  assert.deepEqual(run(new Vad({ hangoverMs: HANGOVER_MS }), silence(8000 * 10)), []);
});

Deno.test("Vad stays silent on phone-line noise", () => {
  for (const dbfs of [-70, -60, -50]) {
    const seen = run(new Vad({ hangoverMs: HANGOVER_MS }), noise(8000 * 10, dbfs));
    assert.deepEqual(seen, [], `noise at ${dbfs} dBFS`);
  }
});

Deno.test("Vad ignores a one-frame click", () => {
  const audio = concatBytes(silence(8000), tone(20, -6), silence(8000));
  assert.deepEqual(run(new Vad({ hangoverMs: HANGOVER_MS }), audio), []);
});

Deno.test("Vad absorbs steady loud noise into its floor and still hears speech over it", () => {
  const clip = Deno.readFileSync(FIXTURES[0]);
  const lead = 8000 * 4;
  const background = noise(lead + clip.length + 8000, -40);
  const speech = concatBytes(
    new Uint8Array(lead).fill(0xff),
    clip,
    new Uint8Array(8000).fill(0xff),
  );
  const vad = new Vad({ hangoverMs: HANGOVER_MS });
  const seen = run(vad, mix(background, speech));
  // The first 2 s may count as speech while the floor window fills; after that, only the clip.
  const afterWindow = seen.filter((s) => s.detectedAt > 2500);
  assert.ok(afterWindow.length >= 2, JSON.stringify(seen));
  const onset = afterWindow[0];
  assert.equal(onset.transition.type, "speechStart");
  const truthStart = lead / 8 + voicedSpan(clip).first;
  assert.ok(onset.detectedAt >= truthStart, `false onset at ${onset.detectedAt}`);
  assert.ok(
    onset.detectedAt - truthStart <= 100,
    `onset after ${onset.detectedAt - truthStart} ms`,
  );
  assert.ok(vad.floorDbfs > -45 && vad.floorDbfs < -35, `floor ${vad.floorDbfs}`);
});

Deno.test("Vad reports the end at the last voiced frame and bridges gaps shorter than the hangover", () => {
  const audio = concatBytes(
    silence(4000),
    tone(300, -20),
    silence(160 * 8), // 160 ms < hangover: same utterance
    tone(300, -20),
    silence(200 * 8), // 200 ms > hangover: a new utterance
    tone(200, -20),
    silence(8000),
  );
  const seen = run(new Vad({ hangoverMs: HANGOVER_MS }), audio);
  assert.deepEqual(seen.map((s) => [s.transition.type, s.transition.atMs]), [
    ["speechStart", 500],
    ["speechEnd", 1260],
    ["speechStart", 1460],
    ["speechEnd", 1660],
  ]);
  // Frame [1420, 1440) is the first to end a full hangover after 1260.
  assert.equal(seen[1].detectedAt, 1440);
});

Deno.test("createVad() takes the hangover from the STT settings", () => {
  const audio = concatBytes(silence(4000), tone(300, -20), silence(8000));
  const short = run(createVad({ vad_hangover_ms: 100 }), audio);
  const long = run(createVad({ vad_hangover_ms: 400 }), audio);
  assert.equal(short[1].transition.atMs, 800);
  assert.equal(long[1].transition.atMs, 800);
  assert.equal(short[1].detectedAt, 900);
  assert.equal(long[1].detectedAt, 1200);
});

Deno.test("Vad.reset() forgets speech in progress", () => {
  const vad = new Vad({ hangoverMs: HANGOVER_MS });
  run(vad, concatBytes(silence(4000), tone(200, -20)));
  assert.equal(vad.speaking, true);
  vad.reset();
  assert.equal(vad.speaking, false);
  assert.deepEqual(run(vad, silence(8000)), []);
});

Deno.test("Vad rejects a negative hangover", () => {
  assert.throws(() => new Vad({ hangoverMs: -1 }), RangeError);
  assert.throws(() => new Vad({ hangoverMs: Number.NaN }), RangeError);
});
