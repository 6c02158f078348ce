/**
 * WAV (RIFF) reading and writing for Kav's audio: 8000 Hz mono, μ-law or PCM16. Used for fixtures,
 * the call simulator and exports; never on the 20 ms path.
 */
import { decodeMulaw, encodeMulaw, SAMPLE_RATE } from "./mulaw.ts";

/** Sample encodings Kav reads and writes. */
export type WavEncoding = "mulaw" | "pcm16";

/** A parsed WAV file, its audio converted to 8000 Hz mono μ-law (Twilio's media format). */
export interface WavAudio {
  /** How the samples were stored in the file. */
  readonly encoding: WavEncoding;
  /** Always 8000 (anything else is rejected). */
  readonly sampleRate: number;
  /** One byte per sample, 8000 samples per second. */
  readonly mulaw: Uint8Array;
}

const FORMAT_PCM = 1;
const FORMAT_MULAW = 7;
const FORMAT_EXTENSIBLE = 0xfffe;

function fourCc(view: DataView, offset: number): string {
  return String.fromCharCode(
    view.getUint8(offset),
    view.getUint8(offset + 1),
    view.getUint8(offset + 2),
    view.getUint8(offset + 3),
  );
}

interface FmtChunk {
  readonly format: number;
  readonly channels: number;
  readonly sampleRate: number;
  readonly bitsPerSample: number;
}

function readFmt(view: DataView, offset: number, size: number): FmtChunk {
  if (size < 16) throw new TypeError(`Cannot read WAV: fmt chunk of "${size}" bytes is too short`);
  let format = view.getUint16(offset, true);
  // WAVE_FORMAT_EXTENSIBLE keeps the real format tag in the first 2 bytes of the sub-format GUID.
  if (format === FORMAT_EXTENSIBLE && size >= 26) format = view.getUint16(offset + 24, true);
  return {
    format,
    channels: view.getUint16(offset + 2, true),
    sampleRate: view.getUint32(offset + 4, true),
    bitsPerSample: view.getUint16(offset + 14, true),
  };
}

function encodingOf(fmt: FmtChunk): WavEncoding {
  if (fmt.format === FORMAT_MULAW && fmt.bitsPerSample === 8) return "mulaw";
  if (fmt.format === FORMAT_PCM && fmt.bitsPerSample === 16) return "pcm16";
  throw new TypeError(
    `Cannot read WAV: format "${fmt.format}" with "${fmt.bitsPerSample}" bits per sample is not supported (need μ-law or PCM16)`,
  );
}

/**
 * Parses a RIFF/WAVE file holding 8000 Hz mono μ-law or PCM16 and returns its audio as μ-law.
 * Unknown chunks (LIST, fact, …) are skipped; a data chunk whose declared size runs past the end
 * (streamed writers such as `espeak-ng --stdout`) is read to the end of the file.
 * @throws TypeError when the bytes are not a supported WAV file; RangeError for another rate or
 *   channel count.
 */
export function parseWav(bytes: Uint8Array): WavAudio {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 12 || fourCc(view, 0) !== "RIFF" || fourCc(view, 8) !== "WAVE") {
    throw new TypeError(`Cannot read WAV: no RIFF/WAVE header in "${bytes.length}" bytes`);
  }
  let fmt: FmtChunk | null = null;
  let offset = 12;
  while (offset + 8 <= bytes.length) {
    const id = fourCc(view, offset);
    const declared = view.getUint32(offset + 4, true);
    const body = offset + 8;
    if (id === "fmt ") {
      if (body + declared > bytes.length) {
        throw new TypeError(`Cannot read WAV: fmt chunk of "${declared}" bytes is truncated`);
      }
      fmt = readFmt(view, body, declared);
    } else if (id === "data") {
      if (fmt === null) throw new TypeError("Cannot read WAV: data chunk comes before fmt");
      const end = Math.min(body + declared, bytes.length);
      return { ...convert(fmt, bytes.subarray(body, end)), sampleRate: fmt.sampleRate };
    }
    // Chunks are padded to an even size.
    offset = body + declared + (declared & 1);
  }
  throw new TypeError(`Cannot read WAV: no ${fmt === null ? "fmt" : "data"} chunk found`);
}

function convert(fmt: FmtChunk, data: Uint8Array): { encoding: WavEncoding; mulaw: Uint8Array } {
  const encoding = encodingOf(fmt);
  if (fmt.sampleRate !== SAMPLE_RATE || fmt.channels !== 1) {
    throw new RangeError(
      `Cannot read WAV: "${fmt.sampleRate}" Hz with "${fmt.channels}" channels is not supported (need 8000 Hz mono)`,
    );
  }
  switch (encoding) {
    case "mulaw":
      return { encoding, mulaw: data.slice() };
    case "pcm16": {
      const samples = data.length >> 1;
      const view = new DataView(data.buffer, data.byteOffset, samples * 2);
      const pcm = new Int16Array(samples);
      for (let i = 0; i < samples; i++) pcm[i] = view.getInt16(i * 2, true);
      return { encoding, mulaw: encodeMulaw(pcm) };
    }
    default: {
      const unreachable: never = encoding;
      throw new TypeError(`Cannot read WAV: unknown encoding "${unreachable}"`);
    }
  }
}

function writeAscii(view: DataView, offset: number, text: string): void {
  for (let i = 0; i < text.length; i++) view.setUint8(offset + i, text.charCodeAt(i));
}

/**
 * Writes 8000 Hz mono μ-law audio as a WAV file, stored as μ-law (format 7, with the `fact`
 * chunk non-PCM formats require) or converted to PCM16 (plays everywhere).
 */
export function writeWav(
  mulaw: Uint8Array,
  options: { readonly encoding?: WavEncoding } = {},
): Uint8Array {
  const encoding = options.encoding ?? "mulaw";
  const isMulaw = encoding === "mulaw";
  const bytesPerSample = isMulaw ? 1 : 2;
  const dataSize = mulaw.length * bytesPerSample;
  const fmtSize = isMulaw ? 18 : 16;
  const factSize = isMulaw ? 12 : 0;
  const header = 12 + 8 + fmtSize + factSize + 8;
  const padding = dataSize & 1;
  const out = new Uint8Array(header + dataSize + padding);
  const view = new DataView(out.buffer);
  writeAscii(view, 0, "RIFF");
  view.setUint32(4, out.length - 8, true);
  writeAscii(view, 8, "WAVE");
  writeAscii(view, 12, "fmt ");
  view.setUint32(16, fmtSize, true);
  view.setUint16(20, isMulaw ? FORMAT_MULAW : FORMAT_PCM, true);
  view.setUint16(22, 1, true);
  view.setUint32(24, SAMPLE_RATE, true);
  view.setUint32(28, SAMPLE_RATE * bytesPerSample, true);
  view.setUint16(32, bytesPerSample, true);
  view.setUint16(34, bytesPerSample * 8, true);
  let offset = 36;
  if (isMulaw) {
    view.setUint16(offset, 0, true); // cbSize: no extra format bytes
    offset += 2;
    writeAscii(view, offset, "fact");
    view.setUint32(offset + 4, 4, true);
    view.setUint32(offset + 8, mulaw.length, true);
    offset += 12;
  }
  writeAscii(view, offset, "data");
  view.setUint32(offset + 4, dataSize, true);
  offset += 8;
  if (isMulaw) {
    out.set(mulaw, offset);
  } else {
    const pcm = decodeMulaw(mulaw);
    for (let i = 0; i < pcm.length; i++) view.setInt16(offset + i * 2, pcm[i], true);
  }
  return out;
}
