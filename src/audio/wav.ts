/**
 * WAV (RIFF) reading for Kav's audio: 8000 Hz mono, μ-law or PCM16. Used for synthesized speech
 * (Google wraps MULAW in a WAV header) and the simulator's caller audio; never on the 20 ms path.
 */
import { SAMPLE_RATE } from "./frames.ts";
import { encodeMulaw, MULAW_TO_PCM } from "./mulaw.ts";

/** Sample encodings Kav reads. */
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
/** WAVE_FORMAT_MULAW. */
export const FORMAT_MULAW = 7;
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

/** Whether `bytes` start with a RIFF/WAVE header (anything else is taken as raw audio). */
export function isWav(bytes: Uint8Array): boolean {
  if (bytes.length < 12) return false;
  const view = new DataView(bytes.buffer, bytes.byteOffset, 12);
  return fourCc(view, 0) === "RIFF" && fourCc(view, 8) === "WAVE";
}

/** What a WAV file's `fmt ` chunk says, and its `data` chunk's samples (a view, not a copy). */
export interface WavChunks {
  /** Format tag: 1 PCM, 7 μ-law (the real tag for WAVE_FORMAT_EXTENSIBLE). */
  readonly format: number;
  readonly channels: number;
  /** Samples per second. */
  readonly sampleRate: number;
  readonly bitsPerSample: number;
  readonly data: Uint8Array;
}

/**
 * Walks a RIFF/WAVE file's chunks up to `data`. Unknown chunks (LIST, fact, …) are skipped; a data
 * chunk that declares 0 bytes or runs past the end (streamed writers such as `espeak-ng --stdout`)
 * is read to the end of the file.
 * @throws TypeError when the bytes are not a WAV file or its chunks are cut short.
 */
export function readWavChunks(bytes: Uint8Array): WavChunks {
  if (!isWav(bytes)) {
    throw new TypeError(`Cannot read WAV: no RIFF/WAVE header in "${bytes.length}" bytes`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
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
      const end = declared === 0 || body + declared > bytes.length ? bytes.length : body + declared;
      return { ...fmt, data: bytes.subarray(body, end) };
    }
    // Chunks are padded to an even size.
    offset = body + declared + (declared & 1);
  }
  throw new TypeError(`Cannot read WAV: no ${fmt === null ? "fmt" : "data"} chunk found`);
}

/**
 * Parses a RIFF/WAVE file holding 8000 Hz mono μ-law or PCM16 and returns its audio as μ-law (a
 * copy). Chunks as `readWavChunks`.
 * @throws TypeError when the bytes are not a supported WAV file; RangeError for another rate or
 *   channel count.
 */
export function parseWav(bytes: Uint8Array): WavAudio {
  const chunks = readWavChunks(bytes);
  return { ...convert(chunks, chunks.data), sampleRate: chunks.sampleRate };
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
    for (let i = 0; i < mulaw.length; i++) {
      view.setInt16(offset + i * 2, MULAW_TO_PCM[mulaw[i]], true);
    }
  }
  return out;
}
