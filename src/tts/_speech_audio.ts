/**
 * An OpenAI-compatible speech answer, chunk by chunk as it arrives, to what Twilio plays: μ-law
 * 8000 Hz in whole 20 ms frames. The answer is raw PCM16 little-endian ("pcm", at a configured
 * rate; OpenAI's is 24 kHz) or a WAV file of PCM16 at any rate ("wav", its header read as it comes,
 * a streamed data size of 0 or 0xFFFFFFFF meaning "to the end"). Chunks split anywhere, even inside
 * a sample or the header. Conversion is the polyphase resampler of `src/audio/resample.ts`.
 */
import { FRAME_BYTES } from "../audio/frames.ts";
import { encodeMulaw } from "../audio/mulaw.ts";
import { Resampler } from "../audio/resample.ts";
import { ProviderError } from "../errors.ts";

const PHONE_RATE = 8000;
const FORMAT_PCM = 1;
const FORMAT_EXTENSIBLE = 0xfffe;
/** A header this large without a data chunk is not a WAV stream we can play. */
const MAX_HEADER_BYTES = 64 * 1024;

function fourcc(bytes: Uint8Array, at: number): string {
  return String.fromCharCode(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

export class SpeechAudioDecoder {
  readonly #format: "pcm" | "wav";
  #resampler: Resampler | null;
  /** WAV bytes before the data chunk, until the header is complete. */
  #header: Uint8Array | null;
  /** Data bytes still expected from a WAV with a declared size; Infinity otherwise. */
  #dataLeft = Infinity;
  /** A byte of a sample split across chunks. */
  #oddByte = -1;
  /** μ-law not yet making a whole frame. */
  #frameRest = new Uint8Array(0);
  #ended = false;

  /** `sampleRate`: the rate of "pcm" answers (a WAV's header gives its own). */
  constructor(format: "pcm" | "wav", sampleRate: number) {
    this.#format = format;
    this.#resampler = format === "pcm" ? new Resampler(sampleRate, PHONE_RATE) : null;
    this.#header = format === "wav" ? new Uint8Array(0) : null;
  }

  /** The sample rate of the answer, once known. */
  get sampleRate(): number | null {
    return this.#resampler?.inRate ?? null;
  }

  /** The next bytes of the answer; returns the μ-law of the whole frames now complete. */
  push(bytes: Uint8Array): Uint8Array {
    if (this.#ended) throw new TypeError("Cannot push speech audio after end()");
    let data = bytes;
    if (this.#header !== null) {
      const found = this.#readHeader(concat(this.#header, bytes));
      if (found === null) return new Uint8Array(0);
      data = found;
    }
    if (this.#dataLeft !== Infinity) {
      data = data.subarray(0, Math.min(data.length, this.#dataLeft));
      this.#dataLeft -= data.length;
    }
    return this.#frames(this.#convert(data), false);
  }

  /** The answer is complete: returns the rest (the last frame may be short). */
  end(): Uint8Array {
    if (this.#ended) return new Uint8Array(0);
    this.#ended = true;
    if (this.#header !== null) {
      throw new ProviderError(
        "tts",
        "server",
        `Cannot find audio in a WAV answer of "${this.#header.length}" bytes`,
      );
    }
    const tail = encodeMulaw((this.#resampler as Resampler).end());
    return this.#frames(tail, true);
  }

  /** PCM16 bytes (maybe odd in number) → μ-law at 8 kHz. */
  #convert(data: Uint8Array): Uint8Array {
    if (data.length === 0) return data;
    let bytes = data;
    if (this.#oddByte >= 0) {
      bytes = concat(Uint8Array.of(this.#oddByte), data);
      this.#oddByte = -1;
    }
    const count = bytes.length >> 1;
    if (bytes.length & 1) this.#oddByte = bytes[bytes.length - 1];
    const view = new DataView(bytes.buffer, bytes.byteOffset, count * 2);
    const pcm = new Int16Array(count);
    for (let i = 0; i < count; i++) pcm[i] = view.getInt16(i * 2, true);
    return encodeMulaw((this.#resampler as Resampler).push(pcm));
  }

  /** Whole frames of `rest + mulaw`; keeps the remainder unless `last`. */
  #frames(mulaw: Uint8Array, last: boolean): Uint8Array {
    const all = concat(this.#frameRest, mulaw);
    if (last) {
      this.#frameRest = new Uint8Array(0);
      return all;
    }
    const whole = all.length - (all.length % FRAME_BYTES);
    this.#frameRest = all.slice(whole);
    return all.subarray(0, whole);
  }

  /** Walks the RIFF chunks; returns the data bytes after the header once it is complete. */
  #readHeader(bytes: Uint8Array): Uint8Array | null {
    if (bytes.length >= 12 && (fourcc(bytes, 0) !== "RIFF" || fourcc(bytes, 8) !== "WAVE")) {
      throw new ProviderError("tts", "server", "Cannot read the WAV answer: no RIFF/WAVE header");
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let at = 12;
    while (at + 8 <= bytes.length) {
      const id = fourcc(bytes, at);
      const size = view.getUint32(at + 4, true);
      const body = at + 8;
      if (id === "data") {
        if (this.#resampler === null) {
          throw new ProviderError("tts", "server", "Cannot read the WAV answer: data before fmt");
        }
        this.#header = null;
        // A streamed WAV may declare 0 or 0xFFFFFFFF: the data runs to the end then.
        this.#dataLeft = size === 0 || size === 0xffffffff ? Infinity : size;
        return bytes.subarray(body);
      }
      if (body + size > bytes.length) break; // the rest of this chunk is still to come
      if (id === "fmt ") this.#readFmt(view, body, size);
      at = body + size + (size & 1);
    }
    if (bytes.length > MAX_HEADER_BYTES) {
      throw new ProviderError("tts", "server", "Cannot read the WAV answer: no data chunk");
    }
    this.#header = bytes;
    return null;
  }

  #readFmt(view: DataView, at: number, size: number): void {
    if (size < 16) {
      throw new ProviderError(
        "tts",
        "server",
        `Cannot read the WAV answer: fmt of "${size}" bytes`,
      );
    }
    let format = view.getUint16(at, true);
    // WAVE_FORMAT_EXTENSIBLE keeps the real format tag in the first 2 bytes of the sub-format GUID.
    if (format === FORMAT_EXTENSIBLE && size >= 26) format = view.getUint16(at + 24, true);
    const channels = view.getUint16(at + 2, true);
    const rate = view.getUint32(at + 4, true);
    const bits = view.getUint16(at + 14, true);
    if (format !== FORMAT_PCM || bits !== 16 || channels !== 1 || rate < 1000 || rate > 192_000) {
      throw new ProviderError(
        "tts",
        "invalid_request",
        `Cannot play the WAV answer: "format ${format}, ${bits} bits, ${channels} ch, ${rate} Hz" (need 16-bit PCM mono)`,
      );
    }
    this.#resampler = new Resampler(rate, PHONE_RATE);
  }
}
