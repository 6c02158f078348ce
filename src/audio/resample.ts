/**
 * Streaming sample-rate conversion of PCM16 mono by a rational factor (e.g. OpenAI's 24 kHz speech
 * to the 8 kHz of a phone line), with a polyphase FIR low-pass: a Kaiser-windowed sinc cutting at
 * 0.92 × the lower Nyquist frequency with 80 dB stopband attenuation, so nothing above the output's
 * Nyquist frequency folds back into the band (no aliasing).
 *
 * Why not a library: npm's well-kept choice, `@alexanderolsen/libsamplerate-js` (libsamplerate in
 * WebAssembly), builds a new WebAssembly instance (about 25 MB of memory) per converter, and a call
 * needs one per answer; its streaming API cannot mark the end of input, so the filter's tail is
 * lost. `wave-resampler` converts whole buffers only, so chunked audio would click at every seam.
 *
 * Timing: output sample k sits at input time k·in/out exactly (the filter's delay is compensated),
 * and `end()` emits every output sample whose time falls within the input, so the output lasts
 * ceil(n·out/in) samples for n input samples, whatever the chunking: no drift, no shift.
 */

/** Stopband attenuation of the anti-aliasing filter (dB). */
const STOPBAND_DB = 80;
/** The passband ends here and the stopband starts at the lower Nyquist frequency (× Nyquist). */
const PASSBAND_EDGE = 0.84;

interface Design {
  /** Upsampling factor L and downsampling factor M (in·L/M = out, reduced). */
  readonly up: number;
  readonly down: number;
  /** Taps per phase. */
  readonly taps: number;
  /** Prototype filter centre, in samples at the rate in·L. */
  readonly centre: number;
  /** `taps` coefficients per phase, phase-major; coefficient j weighs input n_max − j. */
  readonly table: Float32Array;
}

const designs = new Map<string, Design>();

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

/** Zeroth-order modified Bessel function of the first kind (series; converges fast for β ≤ 20). */
function besselI0(x: number): number {
  let sum = 1;
  let term = 1;
  const half = x / 2;
  for (let k = 1; k < 50; k++) {
    term *= (half / k) * (half / k);
    sum += term;
    if (term < sum * 1e-12) break;
  }
  return sum;
}

/** The polyphase filter converting `inRate` to `outRate`, built once per pair and shared. */
function design(inRate: number, outRate: number): Design {
  const key = `${inRate}/${outRate}`;
  const cached = designs.get(key);
  if (cached) return cached;
  const divisor = gcd(inRate, outRate);
  const up = outRate / divisor;
  const down = inRate / divisor;
  const highRate = inRate * up;
  const nyquist = Math.min(inRate, outRate) / 2;
  const stopHz = nyquist;
  const passHz = nyquist * PASSBAND_EDGE;
  const cutoff = (passHz + stopHz) / 2 / highRate; // cycles per high-rate sample
  const transition = 2 * Math.PI * (stopHz - passHz) / highRate; // radians per sample
  // Kaiser's estimates of the window's length and shape for the wanted attenuation.
  let length = Math.ceil((STOPBAND_DB - 7.95) / (2.285 * transition)) + 1;
  length += up - ((length - 1) % up); // whole taps per phase, odd-centred
  if (length % 2 === 0) length += up;
  const beta = 0.1102 * (STOPBAND_DB - 8.7);
  const centre = (length - 1) / 2;
  const prototype = new Float64Array(length);
  const i0Beta = besselI0(beta);
  let sum = 0;
  for (let i = 0; i < length; i++) {
    const t = i - centre;
    const sinc = t === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * t) / (Math.PI * t);
    const r = t / centre;
    const window = besselI0(beta * Math.sqrt(Math.max(0, 1 - r * r))) / i0Beta;
    prototype[i] = sinc * window;
    sum += prototype[i];
  }
  // Unity gain at DC for every phase: the zero-stuffed signal lost a factor `up` of its energy.
  const taps = Math.ceil(length / up);
  const table = new Float32Array(up * taps);
  for (let phase = 0; phase < up; phase++) {
    for (let j = 0; j < taps; j++) {
      const i = phase + j * up;
      table[phase * taps + j] = i < length ? prototype[i] * up / sum : 0;
    }
  }
  const built: Design = { up, down, taps, centre, table };
  designs.set(key, built);
  return built;
}

/** One stream's converter: push chunks of any size, then `end()` once. */
export class Resampler {
  readonly inRate: number;
  readonly outRate: number;
  readonly #design: Design | null;
  /** Input history from absolute index `#bufferStart` on (negative indices are zeros). */
  #buffer: Float32Array;
  #bufferStart: number;
  #bufferLength = 0;
  /** Input samples pushed. */
  #pushed = 0;
  /** Index of the next output sample. */
  #next = 0;
  #ended = false;

  constructor(inRate: number, outRate: number) {
    for (const [name, rate] of [["input", inRate], ["output", outRate]] as const) {
      if (!Number.isInteger(rate) || rate < 1000 || rate > 192_000) {
        throw new RangeError(`Cannot resample with ${name} rate "${rate}" Hz`);
      }
    }
    this.inRate = inRate;
    this.outRate = outRate;
    this.#design = inRate === outRate ? null : design(inRate, outRate);
    const taps = this.#design?.taps ?? 1;
    this.#buffer = new Float32Array(Math.max(4096, taps * 4));
    // Zeros before the first sample, so the first outputs need no special case.
    this.#bufferStart = -(taps - 1);
    this.#bufferLength = taps - 1;
  }

  /** Output samples the input pushed so far will give in all (after `end()`). */
  get outputTotal(): number {
    const design = this.#design;
    if (design === null) return this.#pushed;
    return Math.ceil(this.#pushed * design.up / design.down);
  }

  /** Converts `input`; returns the output samples now computable (a new array, maybe empty). */
  push(input: Int16Array): Int16Array {
    if (this.#ended) throw new TypeError("Cannot push to a resampler after end()");
    if (this.#design === null) {
      this.#pushed += input.length;
      return input.slice();
    }
    this.#append(input);
    this.#pushed += input.length;
    return this.#produce(false);
  }

  /** Ends the input: returns the remaining output (the filter's tail, zeros assumed after it). */
  end(): Int16Array {
    if (this.#ended) return new Int16Array(0);
    this.#ended = true;
    if (this.#design === null) return new Int16Array(0);
    return this.#produce(true);
  }

  #append(input: Int16Array): void {
    const taps = (this.#design as Design).taps;
    // Keep only what the next output still needs: from its oldest tap on.
    const keepFrom = Math.max(this.#bufferStart, this.#newestInput(this.#next) - taps + 1);
    const drop = Math.min(keepFrom - this.#bufferStart, this.#bufferLength);
    if (drop > 0) {
      this.#buffer.copyWithin(0, drop, this.#bufferLength);
      this.#bufferLength -= drop;
      this.#bufferStart += drop;
    }
    if (this.#bufferLength + input.length > this.#buffer.length) {
      const grown = new Float32Array(
        Math.max(this.#buffer.length * 2, this.#bufferLength + input.length),
      );
      grown.set(this.#buffer.subarray(0, this.#bufferLength));
      this.#buffer = grown;
    }
    const at = this.#bufferLength;
    for (let i = 0; i < input.length; i++) this.#buffer[at + i] = input[i];
    this.#bufferLength += input.length;
  }

  /** The newest input sample output `k` weighs. */
  #newestInput(k: number): number {
    const design = this.#design as Design;
    return Math.floor((k * design.down + design.centre) / design.up);
  }

  #produce(final: boolean): Int16Array {
    const design = this.#design as Design;
    const { up, down, taps, table, centre } = design;
    const last = final ? this.outputTotal : this.#countReady();
    const count = Math.max(0, last - this.#next);
    const out = new Int16Array(count);
    const buffer = this.#buffer;
    const start = this.#bufferStart;
    const available = this.#bufferStart + this.#bufferLength;
    for (let o = 0; o < count; o++) {
      const position = (this.#next + o) * down + centre;
      const newest = Math.floor(position / up);
      const phase = position - newest * up;
      const row = phase * taps;
      let acc = 0;
      let j = 0;
      // Past the end of the input (only when `final`) the samples are zeros.
      if (newest >= available) j = newest - available + 1;
      // The history always reaches the oldest tap (zeros before the first sample).
      const base = newest - start;
      for (; j < taps; j++) acc += table[row + j] * buffer[base - j];
      const rounded = Math.round(acc);
      out[o] = rounded > 32767 ? 32767 : rounded < -32768 ? -32768 : rounded;
    }
    this.#next += count;
    return out;
  }

  /** Outputs whose newest input sample has arrived. */
  #countReady(): number {
    const design = this.#design as Design;
    // Largest k with floor((k·down + centre)/up) ≤ pushed − 1, capped at the total.
    const k = Math.floor((this.#pushed * design.up - 1 - design.centre) / design.down);
    return Math.min(this.outputTotal, Math.max(0, k + 1));
  }
}

/** Converts a whole buffer (tests, cached phrases). */
export function resample(input: Int16Array, inRate: number, outRate: number): Int16Array {
  const resampler = new Resampler(inRate, outRate);
  const head = resampler.push(input);
  const tail = resampler.end();
  const out = new Int16Array(head.length + tail.length);
  out.set(head);
  out.set(tail, head.length);
  return out;
}
