/**
 * Energy-based utterance segmenter over μ-law 8000 Hz audio, for the per-utterance `Recognize`
 * fallback and for finding quiet moments to restart a stream. Works on 20 ms windows; a window is
 * speech when its RMS level is above `thresholdDbfs`. An utterance starts at the first speech window
 * (with `prerollMs` of audio before it, so a soft onset is not cut) and ends after `hangoverMs` of
 * non-speech (longer than the pauses inside a sentence). No allocation per window.
 */
import alawmulaw from "alawmulaw";

const WINDOW_BYTES = 160; // 20 ms at 8000 Hz, one byte per sample

/** Squared linear value of each μ-law byte, normalized to full scale = 1. */
const SQUARES: Float64Array = (() => {
  const table = new Float64Array(256);
  for (let i = 0; i < 256; i++) {
    const v = alawmulaw.mulaw.decodeSample(i) / 32768;
    table[i] = v * v;
  }
  return table;
})();

/** RMS level of `mulaw[from, to)` in dBFS (-120 for digital silence). */
export function levelDbfs(mulaw: Uint8Array, from = 0, to = mulaw.length): number {
  if (to <= from) return -120;
  let sum = 0;
  for (let i = from; i < to; i++) sum += SQUARES[mulaw[i]];
  return Math.max(-120, 10 * Math.log10(sum / (to - from) + 1e-12));
}

/** An utterance the segmenter cut: its audio (a copy) and where it began (bytes since the first push). */
export interface Utterance {
  readonly audio: Uint8Array;
  readonly start: number;
}

export interface SegmenterOptions {
  /** Speech when a 20 ms window is louder than this (dBFS). */
  readonly thresholdDbfs: number;
  /** Silence that ends an utterance (ms). */
  readonly hangoverMs: number;
  /** Audio kept before the first speech window (ms). */
  readonly prerollMs: number;
  /** Utterances with less speech than this are noise and dropped (ms). */
  readonly minSpeechMs: number;
  /** An utterance longer than this is cut and emitted (ms). */
  readonly maxUtteranceMs: number;
  /** False: only track `trailingSilenceMs`, keep no audio (streaming mode). */
  readonly collect: boolean;
}

export const SEGMENTER_DEFAULTS: SegmenterOptions = Object.freeze({
  thresholdDbfs: -50,
  hangoverMs: 600,
  prerollMs: 300,
  minSpeechMs: 100,
  maxUtteranceMs: 15_000,
  collect: true,
});

/** Splits a continuous μ-law stream into utterances. */
export class Segmenter {
  readonly #options: SegmenterOptions;
  readonly #window = new Uint8Array(WINDOW_BYTES);
  #windowFill = 0;
  readonly #preroll: Uint8Array;
  #prerollAt = 0;
  #prerollFill = 0;
  #utterance: Uint8Array | null = null;
  #utteranceLength = 0;
  #speechMs = 0;
  #silenceMs = 0;
  #trailingSilenceMs = 0;
  /** Bytes pushed so far; the segmenter's own offsets count from its first byte. */
  #pushed = 0;
  /** Offset of the first byte of the utterance in progress (its preroll included). */
  #utteranceStart = 0;

  constructor(options: Partial<SegmenterOptions> = {}) {
    this.#options = { ...SEGMENTER_DEFAULTS, ...options };
    this.#preroll = new Uint8Array(Math.max(WINDOW_BYTES, this.#options.prerollMs * 8));
  }

  /** Milliseconds of non-speech at the end of the audio seen so far. */
  get trailingSilenceMs(): number {
    return this.#trailingSilenceMs;
  }
  /** Whether an utterance is in progress. */
  get inSpeech(): boolean {
    return this.#utterance !== null;
  }
  /**
   * Offset (bytes since the first push) of the oldest audio not settled yet: the start of the
   * utterance in progress, or, between utterances, of the preroll and the partial window that a
   * next utterance would begin with. Everything before it is in an utterance already returned,
   * or was dropped as silence or noise.
   */
  get openFrom(): number {
    if (this.#utterance !== null) return this.#utteranceStart;
    return this.#pushed - this.#windowFill - this.#prerollFill;
  }

  /** Feeds audio; returns the utterances it completed, oldest first. */
  push(mulaw: Uint8Array): Utterance[] {
    const done: Utterance[] = [];
    this.#pushed += mulaw.length;
    let at = 0;
    while (at < mulaw.length) {
      const n = Math.min(WINDOW_BYTES - this.#windowFill, mulaw.length - at);
      this.#window.set(n === mulaw.length ? mulaw : mulaw.subarray(at, at + n), this.#windowFill);
      this.#windowFill += n;
      at += n;
      if (this.#windowFill === WINDOW_BYTES) {
        this.#windowFill = 0;
        // The window just completed began WINDOW_BYTES before the byte at `at`.
        const utterance = this.#onWindow(
          this.#window,
          this.#pushed - (mulaw.length - at) - WINDOW_BYTES,
        );
        if (utterance) done.push(utterance);
      }
    }
    return done;
  }

  /** Ends the audio: returns the utterance in progress (with any partial window), if it has speech. */
  flush(): Utterance | null {
    if (this.#utterance === null) {
      this.#windowFill = 0;
      return null;
    }
    this.#append(this.#window.subarray(0, this.#windowFill));
    this.#windowFill = 0;
    return this.#finish();
  }

  /** `offset`: where `window` begins, in bytes since the first push. */
  #onWindow(window: Uint8Array, offset: number): Utterance | null {
    const speech = levelDbfs(window) > this.#options.thresholdDbfs;
    this.#trailingSilenceMs = speech ? 0 : this.#trailingSilenceMs + 20;
    if (!this.#options.collect) return null;
    if (this.#utterance === null) {
      if (!speech) {
        this.#remember(window);
        return null;
      }
      this.#utterance = new Uint8Array(Math.max(16_000, this.#preroll.length + WINDOW_BYTES));
      this.#utteranceLength = 0;
      this.#speechMs = 0;
      this.#silenceMs = 0;
      this.#utteranceStart = offset - this.#prerollFill;
      this.#drainPreroll();
    }
    this.#append(window);
    if (speech) {
      this.#speechMs += 20;
      this.#silenceMs = 0;
    } else {
      this.#silenceMs += 20;
    }
    const ms = this.#utteranceLength / 8;
    if (this.#silenceMs >= this.#options.hangoverMs || ms >= this.#options.maxUtteranceMs) {
      return this.#finish();
    }
    return null;
  }

  #finish(): Utterance | null {
    const utterance = this.#utterance;
    const length = this.#utteranceLength;
    const enough = this.#speechMs >= this.#options.minSpeechMs;
    this.#utterance = null;
    this.#utteranceLength = 0;
    this.#speechMs = 0;
    this.#silenceMs = 0;
    return utterance !== null && enough
      ? { audio: utterance.slice(0, length), start: this.#utteranceStart }
      : null;
  }

  #append(bytes: Uint8Array): void {
    let buf = this.#utterance as Uint8Array;
    if (this.#utteranceLength + bytes.length > buf.length) {
      const grown = new Uint8Array(buf.length * 2 + bytes.length);
      grown.set(buf.subarray(0, this.#utteranceLength));
      buf = grown;
      this.#utterance = grown;
    }
    buf.set(bytes, this.#utteranceLength);
    this.#utteranceLength += bytes.length;
  }

  #remember(window: Uint8Array): void {
    const cap = this.#preroll.length;
    for (let i = 0; i < window.length; i++) {
      this.#preroll[this.#prerollAt] = window[i];
      this.#prerollAt = (this.#prerollAt + 1) % cap;
    }
    this.#prerollFill = Math.min(cap, this.#prerollFill + window.length);
  }

  #drainPreroll(): void {
    const cap = this.#preroll.length;
    const start = (this.#prerollAt - this.#prerollFill + cap) % cap;
    for (let i = 0; i < this.#prerollFill; i++) {
      (this.#utterance as Uint8Array)[this.#utteranceLength++] = this.#preroll[(start + i) % cap];
    }
    this.#prerollFill = 0;
  }
}

/** Whether any 20 ms window of `mulaw` is speech by the segmenter's default threshold. */
export function hasSpeech(mulaw: Uint8Array): boolean {
  for (let at = 0; at + WINDOW_BYTES <= mulaw.length; at += WINDOW_BYTES) {
    if (levelDbfs(mulaw, at, at + WINDOW_BYTES) > SEGMENTER_DEFAULTS.thresholdDbfs) return true;
  }
  return false;
}
