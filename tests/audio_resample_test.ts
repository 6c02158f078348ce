import assert from "node:assert/strict";
import { resample, Resampler } from "../src/audio/resample.ts";
import { encodeMulaw } from "../src/audio/mulaw.ts";
import { decodeMulaw } from "../tools/bytes.ts";
import { measureTone, rms, sine } from "./support/tones.ts";

Deno.test("resample() keeps a 1 kHz tone at 1 kHz and its length, through μ-law", () => {
  const input = sine({ hz: 1000, rate: 24_000, ms: 1000, amplitude: 16_000 });
  const out = resample(input, 24_000, 8000);
  assert.equal(out.length, 8000, "1 s in, 1 s out: no drift");
  const heard = decodeMulaw(encodeMulaw(out));
  const tone = measureTone(heard, 8000);
  assert.ok(Math.abs(tone.hz - 1000) < 1, `${tone.hz} Hz`);
  const gainDb = 20 * Math.log10(rms(out, 100, out.length - 100) / rms(input));
  assert.ok(Math.abs(gainDb) < 0.05, `${gainDb} dB in the passband`);
});

Deno.test("resample() passes 300-3400 Hz flat and removes what would alias", () => {
  for (const hz of [300, 1000, 2000, 3000, 3400]) {
    const input = sine({ hz, rate: 24_000, ms: 500, amplitude: 10_000 });
    const out = resample(input, 24_000, 8000);
    const gainDb = 20 * Math.log10(rms(out, 100, out.length - 100) / rms(input));
    assert.ok(Math.abs(gainDb) < 0.1, `${hz} Hz: ${gainDb} dB`);
  }
  // Above 4 kHz nothing may fold back into the band (5 kHz would alias to 3 kHz).
  for (const [rate, hz] of [[24_000, 4100], [24_000, 5000], [24_000, 9000], [22_050, 5000]]) {
    const input = sine({ hz, rate, ms: 500, amplitude: 30_000 });
    const out = resample(input, rate, 8000);
    const level = rms(out, 100, out.length - 100);
    // PCM16 rounds anything below half a step to 0: 0.5 / 21213 is -93 dB.
    const attenuationDb = 20 * Math.log10(Math.max(level, 0.5) / rms(input));
    assert.ok(attenuationDb < -80, `${rate} Hz input, ${hz} Hz: ${attenuationDb} dB`);
  }
});

Deno.test("Resampler gives the same samples however the input is chunked", () => {
  const input = sine({ hz: 700, rate: 24_000, ms: 2000, amplitude: 12_000 });
  const whole = resample(input, 24_000, 8000);
  const resampler = new Resampler(24_000, 8000);
  const parts: Int16Array[] = [];
  let size = 1;
  for (let at = 0; at < input.length;) {
    const n = Math.min(size, input.length - at);
    parts.push(resampler.push(input.subarray(at, at + n)));
    at += n;
    size = (size * 7 + 3) % 997 + 1; // 1 sample to about 1000, odd sizes included
  }
  parts.push(resampler.end());
  const chunked = new Int16Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    chunked.set(part, at);
    at += part.length;
  }
  assert.deepEqual(chunked, whole);
});

Deno.test("Resampler keeps durations exact for other rates and passes 8 kHz through", () => {
  for (const rate of [16_000, 22_050, 44_100, 48_000, 11_025]) {
    for (const ms of [20, 333, 1000]) {
      const samples = Math.round(rate * ms / 1000);
      const out = resample(new Int16Array(samples), rate, 8000);
      assert.equal(out.length, Math.ceil(samples * 8000 / rate), `${rate} Hz, ${ms} ms`);
    }
    const tone = measureTone(resample(sine({ hz: 1000, rate, ms: 500 }), rate, 8000), 8000);
    assert.ok(Math.abs(tone.hz - 1000) < 1, `${rate}: ${tone.hz} Hz`);
  }
  const same = new Resampler(8000, 8000);
  const input = sine({ hz: 440, rate: 8000, ms: 100 });
  assert.deepEqual(same.push(input), input);
  assert.equal(same.end().length, 0);
});

Deno.test("Resampler refuses bad rates and input after end()", () => {
  assert.throws(() => new Resampler(0, 8000), RangeError);
  assert.throws(() => new Resampler(24_000, 8000.5), RangeError);
  const resampler = new Resampler(24_000, 8000);
  resampler.end();
  assert.throws(() => resampler.push(new Int16Array(3)), TypeError);
  assert.equal(resampler.end().length, 0, "end() twice gives nothing more");
});
