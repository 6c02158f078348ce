import assert from "node:assert/strict";
import alawmulaw from "alawmulaw";
import {
  encodeMulaw,
  energyToDbfs,
  frameDbfs,
  frameEnergy,
  MIN_DBFS,
  MULAW_TO_PCM,
} from "../src/audio/mulaw.ts";
import { parseWav } from "../src/audio/wav.ts";
import { concatBytes, decodeMulaw } from "../tools/bytes.ts";
import { commandRuns, ignoredWhen } from "./support/requires.ts";

/** Every μ-law byte once, then a ramp: covers the whole table. */
const ALL_BYTES = Uint8Array.from({ length: 512 }, (_, i) => i & 0xff);

interface WavSpec {
  format: number;
  channels?: number;
  rate?: number;
  bits: number;
  data: Uint8Array;
  /** Chunks inserted before fmt. */
  before?: Uint8Array[];
  /** WAVE_FORMAT_EXTENSIBLE with this real format in the sub-format GUID. */
  extensible?: boolean;
  /** Declared data size, when it should lie. */
  declaredData?: number;
}

function chunk(id: string, body: Uint8Array, declared = body.length): Uint8Array {
  const out = new Uint8Array(8 + body.length + (body.length & 1));
  const view = new DataView(out.buffer);
  for (let i = 0; i < 4; i++) out[i] = id.charCodeAt(i);
  view.setUint32(4, declared, true);
  out.set(body, 8);
  return out;
}

/** Builds a WAV by hand, field by field. */
function buildWav(spec: WavSpec): Uint8Array {
  const channels = spec.channels ?? 1;
  const rate = spec.rate ?? 8000;
  const fmt = new Uint8Array(spec.extensible ? 40 : 16);
  const view = new DataView(fmt.buffer);
  view.setUint16(0, spec.extensible ? 0xfffe : spec.format, true);
  view.setUint16(2, channels, true);
  view.setUint32(4, rate, true);
  view.setUint32(8, (rate * channels * spec.bits) / 8, true);
  view.setUint16(12, (channels * spec.bits) / 8, true);
  view.setUint16(14, spec.bits, true);
  if (spec.extensible) {
    view.setUint16(16, 22, true);
    view.setUint16(18, spec.bits, true);
    view.setUint16(24, spec.format, true);
  }
  const body = concatBytes(
    new TextEncoder().encode("WAVE"),
    ...(spec.before ?? []),
    chunk("fmt ", fmt),
    chunk("data", spec.data, spec.declaredData),
  );
  return concatBytes(chunk("RIFF", body));
}

function pcmBytes(samples: Int16Array): Uint8Array {
  const out = new Uint8Array(samples.length * 2);
  const view = new DataView(out.buffer);
  samples.forEach((s, i) => view.setInt16(i * 2, s, true));
  return out;
}

Deno.test("MULAW_TO_PCM matches alawmulaw for every byte", () => {
  for (let byte = 0; byte < 256; byte++) {
    const expected = alawmulaw.mulaw.decodeSample(byte);
    // The library returns −0 for 0x7F; an Int16Array stores 0.
    assert.ok(MULAW_TO_PCM[byte] === expected, `byte ${byte}: ${MULAW_TO_PCM[byte]} ≠ ${expected}`);
  }
  assert.equal(MULAW_TO_PCM[0xff], 0);
  assert.equal(MULAW_TO_PCM[0x7f], 0);
});

Deno.test("encodeMulaw() and decodeMulaw() round-trip every μ-law code", () => {
  const decoded = decodeMulaw(ALL_BYTES);
  const encoded = encodeMulaw(decoded);
  for (let i = 0; i < ALL_BYTES.length; i++) {
    // 0x7F (−0) encodes back as 0xFF (+0); every other code is exact.
    const expected = ALL_BYTES[i] === 0x7f ? 0xff : ALL_BYTES[i];
    assert.equal(encoded[i], expected, `byte ${ALL_BYTES[i]}`);
  }
});

Deno.test("frameEnergy() is 0 for silence and grows with level", () => {
  assert.equal(frameEnergy(new Uint8Array(160).fill(0xff)), 0);
  assert.equal(frameEnergy(new Uint8Array(160).fill(0x7f)), 0);
  assert.equal(frameEnergy(new Uint8Array(0)), 0);
  assert.equal(frameDbfs(new Uint8Array(160).fill(0xff)), MIN_DBFS);
  const quiet = encodeMulaw(Int16Array.from({ length: 160 }, (_, i) => (i % 2 ? 100 : -100)));
  const loud = encodeMulaw(Int16Array.from({ length: 160 }, (_, i) => (i % 2 ? 10000 : -10000)));
  const expected = decodeMulaw(loud).reduce((sum, s) => sum + s * s, 0) / 160;
  assert.equal(frameEnergy(loud), expected);
  assert.ok(frameEnergy(quiet) < frameEnergy(loud));
  // A ±10000 square wave is 20·log10(10000/32768) ≈ −10.3 dBFS.
  assert.ok(Math.abs(frameDbfs(loud) + 10.3) < 0.3, String(frameDbfs(loud)));
  assert.equal(energyToDbfs(32768 * 32768), 0);
  assert.equal(energyToDbfs(-1), MIN_DBFS);
});

Deno.test("parseWav() reads 8000 Hz mono μ-law as is", () => {
  const wav = buildWav({ format: 7, bits: 8, data: ALL_BYTES });
  const audio = parseWav(wav);
  assert.equal(audio.encoding, "mulaw");
  assert.equal(audio.sampleRate, 8000);
  assert.deepEqual(audio.mulaw, ALL_BYTES);
});

Deno.test("parseWav() converts 8000 Hz mono PCM16 to μ-law", () => {
  const pcm = decodeMulaw(ALL_BYTES);
  const audio = parseWav(buildWav({ format: 1, bits: 16, data: pcmBytes(pcm) }));
  assert.equal(audio.encoding, "pcm16");
  assert.deepEqual(audio.mulaw, encodeMulaw(pcm));
});

Deno.test("parseWav() skips unknown and odd-sized chunks and reads WAVE_FORMAT_EXTENSIBLE", () => {
  const list = chunk("LIST", new Uint8Array([1, 2, 3])); // odd: padded to 4
  const audio = parseWav(
    buildWav({ format: 7, bits: 8, data: ALL_BYTES, before: [list], extensible: true }),
  );
  assert.equal(audio.encoding, "mulaw");
  assert.deepEqual(audio.mulaw, ALL_BYTES);
});

Deno.test("parseWav() reads a streamed file whose data size runs past the end", () => {
  const wav = buildWav({ format: 7, bits: 8, data: ALL_BYTES, declaredData: 0xffffffff });
  assert.deepEqual(parseWav(wav).mulaw, ALL_BYTES);
});

Deno.test("parseWav() rejects other rates, channel counts and encodings", () => {
  const pcm16k = buildWav({ format: 1, bits: 16, rate: 16000, data: new Uint8Array(64) });
  assert.throws(() => parseWav(pcm16k), { name: "RangeError", message: /"16000" Hz/ });
  const stereo = buildWav({ format: 7, bits: 8, channels: 2, data: new Uint8Array(64) });
  assert.throws(() => parseWav(stereo), { name: "RangeError", message: /"2" channels/ });
  const pcm8 = buildWav({ format: 1, bits: 8, data: new Uint8Array(64) });
  assert.throws(() => parseWav(pcm8), { name: "TypeError", message: /format "1"/ });
  const alaw = buildWav({ format: 6, bits: 8, data: new Uint8Array(64) });
  assert.throws(() => parseWav(alaw), { name: "TypeError", message: /format "6"/ });
});

Deno.test("parseWav() rejects files that are not complete WAVs", () => {
  assert.throws(() => parseWav(new Uint8Array(0)), { name: "TypeError", message: /RIFF/ });
  assert.throws(() => parseWav(new TextEncoder().encode("RIFF\0\0\0\0AVI LIST")), TypeError);
  const wav = buildWav({ format: 7, bits: 8, data: ALL_BYTES });
  assert.throws(() => parseWav(wav.subarray(0, 30)), { message: /fmt chunk .* truncated/ });
  assert.throws(() => parseWav(wav.subarray(0, 44 - 8)), { message: /no data chunk/ });
  const noFmt = concatBytes(
    chunk("RIFF", concatBytes(new TextEncoder().encode("WAVE"), chunk("data", ALL_BYTES))),
  );
  assert.throws(() => parseWav(noFmt), { message: /data chunk comes before fmt/ });
  const shortFmt = concatBytes(
    chunk("RIFF", concatBytes(new TextEncoder().encode("WAVE"), chunk("fmt ", new Uint8Array(10)))),
  );
  assert.throws(() => parseWav(shortFmt), { message: /"10" bytes is too short/ });
});

const NO_SOX = commandRuns("sox", ["--version"])
  ? null
  : "sox is not installed, apt-get install sox";

Deno.test({
  ...ignoredWhen("parseWav() reads the μ-law and PCM16 files sox writes", NO_SOX),
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const raw = `${dir}/in.ul`;
      // Odd length: the data chunk gets a pad byte in the μ-law file.
      const audio = ALL_BYTES.subarray(0, 301);
      await Deno.writeFile(raw, audio);
      // sox decodes and re-encodes, so μ-law 0x7F (−0) comes back as 0xFF (+0) in both files.
      const expected = encodeMulaw(decodeMulaw(audio));
      const cases = [
        { encoding: "mulaw", args: ["-e", "u-law", "-b", "8"] },
        { encoding: "pcm16", args: ["-e", "signed-integer", "-b", "16"] },
      ] as const;
      for (const c of cases) {
        const path = `${dir}/${c.encoding}.wav`;
        const sox = await new Deno.Command("sox", {
          args: [
            "-t",
            "raw",
            "-r",
            "8000",
            "-c",
            "1",
            "-e",
            "u-law",
            "-b",
            "8",
            raw,
            ...c.args,
            path,
          ],
          stdout: "null",
          stderr: "piped",
        }).output();
        assert.ok(sox.success, new TextDecoder().decode(sox.stderr));
        const parsed = parseWav(await Deno.readFile(path));
        assert.equal(parsed.encoding, c.encoding);
        assert.equal(parsed.sampleRate, 8000);
        assert.deepEqual(parsed.mulaw, expected, c.encoding);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
