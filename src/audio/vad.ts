/**
 * Energy voice-activity detector for 8000 Hz μ-law phone audio, fed one 20 ms frame at a time.
 *
 * A frame is voiced when its RMS level is above both an absolute minimum (`minSpeechDbfs`) and the
 * noise floor plus `marginDb`. The noise floor is the minimum frame level over the last ~2 s
 * (speech always dips between syllables, steady noise does not), so a steady hum or line noise
 * stops counting as speech once it has filled the window; until then a prior of -60 dBFS (a
 * typical PSTN floor) stands in, so speech at the very start of a call is still heard.
 * Speech starts after `onsetFrames` consecutive voiced frames (40 ms by default) and ends once no
 * voiced frame was seen for `hangoverMs`. While speaking, frames only need to clear the threshold
 * minus `hysteresisDb`, which keeps soft word endings inside the utterance.
 */
import { SAMPLE_RATE } from "./frames.ts";
import { frameDbfs } from "./mulaw.ts";
import type { SttConfig } from "../config/types.ts";

/** A change of speech state. Times are ms on the caller's clock (the `atMs` passed to `push`). */
export type VadTransition =
  /** `atMs`: start of the first voiced frame of the onset run. */
  | { readonly type: "speechStart"; readonly atMs: number }
  /** `atMs`: end of the last voiced frame (not the end of the hangover). */
  | { readonly type: "speechEnd"; readonly atMs: number };

export interface VadOptions {
  /** Silence after the last voiced frame before speech ends, ms (`stt.vad_hangover_ms`). */
  readonly hangoverMs: number;
  /** Consecutive voiced frames that start speech; default 2 (40 ms of 20 ms frames). */
  readonly onsetFrames?: number;
  /** Level a frame must exceed above the noise floor, dB; default 12. */
  readonly marginDb?: number;
  /** Frames at or below this level are never voiced, dBFS; default -45. */
  readonly minSpeechDbfs?: number;
  /** How much lower the threshold is while speaking, dB; default 6. */
  readonly hysteresisDb?: number;
  /** Assumed floor until the window has seen real audio, dBFS; default -60. */
  readonly priorFloorDbfs?: number;
}

/** Floor window: BLOCKS blocks of BLOCK_FRAMES frames each (2 s of 20 ms frames). */
const BLOCKS = 10;
const BLOCK_FRAMES = 10;

/** Builds the VAD Kav uses for a call from the STT settings. */
export function createVad(stt: Pick<SttConfig, "vad_hangover_ms">): Vad {
  return new Vad({ hangoverMs: stt.vad_hangover_ms });
}

/** One call's VAD. `push` allocates nothing except on a transition (a few per utterance). */
export class Vad {
  readonly #hangoverMs: number;
  readonly #onsetFrames: number;
  readonly #marginDb: number;
  readonly #minSpeechDbfs: number;
  readonly #hysteresisDb: number;
  readonly #priorFloorDbfs: number;
  /** Minimum level of each block of the floor window; the current block is `#block`. */
  readonly #blockMin = new Float64Array(BLOCKS);
  #block = 0;
  #blockFrames = 0;
  #floorDbfs = 0;
  #speaking = false;
  /** Consecutive voiced frames while not speaking, and when the first of them started. */
  #run = 0;
  #runStartAt = 0;
  /** End of the last voiced frame while speaking. */
  #lastVoicedEnd = 0;

  constructor(options: VadOptions) {
    if (!(options.hangoverMs >= 0)) {
      throw new RangeError(`Cannot create VAD: hangover "${options.hangoverMs}" ms is negative`);
    }
    this.#hangoverMs = options.hangoverMs;
    this.#onsetFrames = Math.max(1, Math.floor(options.onsetFrames ?? 2));
    this.#marginDb = options.marginDb ?? 12;
    this.#minSpeechDbfs = options.minSpeechDbfs ?? -45;
    this.#hysteresisDb = options.hysteresisDb ?? 6;
    this.#priorFloorDbfs = options.priorFloorDbfs ?? -60;
    this.reset();
  }

  /** Whether speech is in progress (between `speechStart` and `speechEnd`). */
  get speaking(): boolean {
    return this.#speaking;
  }

  /** End of the last voiced frame of the speech in progress (ms), or null when not speaking. */
  get lastVoicedEndMs(): number | null {
    return this.#speaking ? this.#lastVoicedEnd : null;
  }

  /** Current noise-floor estimate, dBFS. */
  get floorDbfs(): number {
    return this.#floorDbfs;
  }

  /** Forgets all state, as for a new call. */
  reset(): void {
    this.#blockMin.fill(this.#priorFloorDbfs);
    this.#block = 0;
    this.#blockFrames = 0;
    this.#floorDbfs = this.#priorFloorDbfs;
    this.#speaking = false;
    this.#run = 0;
    this.#runStartAt = 0;
    this.#lastVoicedEnd = 0;
  }

  /**
   * Feeds one μ-law frame (normally 160 bytes, 20 ms) that starts at `atMs` and returns the
   * transition it causes, if any.
   */
  push(frame: Uint8Array, atMs: number): VadTransition | null {
    const level = frameDbfs(frame);
    const endAt = atMs + (frame.length * 1000) / SAMPLE_RATE;
    this.#trackFloor(level);
    let threshold = this.#floorDbfs + this.#marginDb;
    if (threshold < this.#minSpeechDbfs) threshold = this.#minSpeechDbfs;
    if (this.#speaking) {
      if (level > threshold - this.#hysteresisDb) {
        this.#lastVoicedEnd = endAt;
        return null;
      }
      if (endAt - this.#lastVoicedEnd < this.#hangoverMs) return null;
      this.#speaking = false;
      this.#run = 0;
      return { type: "speechEnd", atMs: this.#lastVoicedEnd };
    }
    if (level <= threshold) {
      this.#run = 0;
      return null;
    }
    if (this.#run === 0) this.#runStartAt = atMs;
    this.#run++;
    if (this.#run < this.#onsetFrames) return null;
    this.#speaking = true;
    this.#lastVoicedEnd = endAt;
    return { type: "speechStart", atMs: this.#runStartAt };
  }

  /** Sliding minimum over BLOCKS × BLOCK_FRAMES frames, O(BLOCKS) per frame, no allocation. */
  #trackFloor(level: number): void {
    if (this.#blockFrames === BLOCK_FRAMES) {
      this.#block = (this.#block + 1) % BLOCKS;
      this.#blockFrames = 0;
    }
    const min = this.#blockMin;
    min[this.#block] = this.#blockFrames === 0 ? level : Math.min(min[this.#block], level);
    this.#blockFrames++;
    let floor = min[0];
    for (let i = 1; i < BLOCKS; i++) if (min[i] < floor) floor = min[i];
    this.#floorDbfs = floor;
  }
}
