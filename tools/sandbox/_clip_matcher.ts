/**
 * The fake recognizer's "model": a transcript is keyed by the exact bytes of a clip. Audio is
 * appended as it arrives on one stream; when a clip's bytes appear contiguously the matcher reports
 * a final, and while a growing prefix of a clip is at the end of the audio it reports partials
 * (word by word, proportional to the bytes received). A clip split across two streams never
 * matches, which is how tests prove that nothing was lost or cut across a stream restart.
 */
import { Buffer } from "node:buffer";
import type { Clip } from "./_protos.ts";

/** Bytes of a clip that must be present before a candidate match is tracked (20 ms of μ-law). */
const HEAD_BYTES = 160;

/** What appending audio revealed. Offsets are bytes from the start of this stream's audio. */
export type MatchEvent =
  | {
    readonly kind: "partial";
    readonly text: string;
    readonly stability: number;
    readonly end: number;
  }
  | { readonly kind: "final"; readonly text: string; readonly clip: string; readonly end: number };

interface Candidate {
  searchFrom: number;
  start: number | null;
  matched: number;
  words: number;
}

function sameBytes(a: Uint8Array, aFrom: number, b: Uint8Array, bFrom: number, n: number): boolean {
  for (let i = 0; i < n; i++) if (a[aFrom + i] !== b[bFrom + i]) return false;
  return true;
}

/** One stream's growing audio and the match state of each clip against it. */
export class ClipMatcher {
  readonly #clips: readonly Clip[];
  readonly #words: readonly string[][];
  readonly #state: Candidate[];
  #audio = new Uint8Array(64 * 1024);
  #length = 0;

  constructor(clips: readonly Clip[]) {
    this.#clips = clips;
    this.#words = clips.map((clip) => clip.text.split(/\s+/).filter((w) => w !== ""));
    this.#state = clips.map(() => ({ searchFrom: 0, start: null, matched: 0, words: 0 }));
  }

  /** All audio received so far (a view; copy it to keep it). */
  get audio(): Uint8Array {
    return this.#audio.subarray(0, this.#length);
  }

  /** Appends audio and returns what became recognizable, in order. */
  push(chunk: Uint8Array): MatchEvent[] {
    if (this.#length + chunk.length > this.#audio.length) {
      const grown = new Uint8Array(Math.max(this.#audio.length * 2, this.#length + chunk.length));
      grown.set(this.audio);
      this.#audio = grown;
    }
    this.#audio.set(chunk, this.#length);
    this.#length += chunk.length;
    const events: MatchEvent[] = [];
    for (let i = 0; i < this.#clips.length; i++) this.#scan(i, events);
    events.sort((a, b) => a.end - b.end);
    return events;
  }

  #scan(index: number, events: MatchEvent[]): void {
    const clip = this.#clips[index].audio;
    const state = this.#state[index];
    const view = Buffer.from(this.#audio.buffer, this.#audio.byteOffset, this.#length);
    const head = clip.subarray(0, Math.min(HEAD_BYTES, clip.length));
    for (;;) {
      if (state.start !== null) {
        const upTo = Math.min(this.#length - state.start, clip.length);
        const fresh = upTo - state.matched;
        if (sameBytes(this.#audio, state.start + state.matched, clip, state.matched, fresh)) {
          state.matched = upTo;
        } else {
          state.searchFrom = state.start + 1;
          state.start = null;
          state.matched = 0;
          state.words = 0;
        }
      }
      if (state.start === null) {
        const at = view.indexOf(head, state.searchFrom);
        if (at < 0) {
          state.searchFrom = Math.max(state.searchFrom, this.#length - head.length + 1);
          return;
        }
        const upTo = Math.min(this.#length - at, clip.length);
        if (!sameBytes(this.#audio, at, clip, 0, upTo)) {
          state.searchFrom = at + 1;
          continue;
        }
        state.start = at;
        state.matched = upTo;
      }
      const start = state.start;
      if (state.matched === clip.length) {
        const end = start + clip.length;
        events.push({
          kind: "final",
          text: this.#clips[index].text,
          clip: this.#clips[index].name,
          end,
        });
        state.searchFrom = end;
        state.start = null;
        state.matched = 0;
        state.words = 0;
        continue;
      }
      const words = this.#words[index];
      const count = Math.floor(words.length * state.matched / clip.length);
      if (count > state.words) {
        state.words = count;
        events.push({
          kind: "partial",
          text: words.slice(0, count).join(" "),
          stability: Math.round((0.1 + 0.8 * state.matched / clip.length) * 100) / 100,
          end: this.#length,
        });
      }
      return;
    }
  }
}

/** Finds every clip contained in `audio`, in order of position (the Recognize method's view). */
export function findClips(
  clips: readonly Clip[],
  audio: Uint8Array,
): { text: string; clip: string; end: number }[] {
  const view = Buffer.from(audio.buffer, audio.byteOffset, audio.length);
  const found: { text: string; clip: string; end: number }[] = [];
  for (const clip of clips) {
    let from = 0;
    for (;;) {
      const at = view.indexOf(clip.audio, from);
      if (at < 0) break;
      found.push({ text: clip.text, clip: clip.name, end: at + clip.audio.length });
      from = at + clip.audio.length;
    }
  }
  return found.sort((a, b) => a.end - b.end);
}
