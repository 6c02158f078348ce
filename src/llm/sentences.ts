/**
 * Cuts a streamed LLM reply into sentences so each can go to TTS as soon as it is complete.
 *
 * A sentence ends at a terminator (`. ! ? … ׃ ;`, possibly repeated, then any closing quotes or
 * brackets) followed by whitespace, or at a newline. The character after the terminator must be
 * seen first, so a sentence is released when the next delta arrives (or at `flush()`). Not split:
 * decimals and dotted names (`3.5`, `example.com`: no whitespace after the dot), known
 * abbreviations and single-letter initials before a period (`Dr. Cohen`, `J. Smith`), and a
 * fragment with no letter yet (`1. ` list numbers). Run-ons longer than `maxChars` are cut at the
 * last comma-like mark in the second half of the window, else at the last space.
 */

const TERMINATORS = ".!?…׃;";
/** Closing quotes and brackets that stay with the sentence they follow. */
const CLOSERS = "\"'”’»)]}״׳";
/** Marks a run-on is preferably cut after. */
const SOFT_BREAKS = ",:—–";
const ABBREVIATIONS = new Set([
  "mr",
  "mrs",
  "ms",
  "dr",
  "prof",
  "sr",
  "jr",
  "st",
  "vs",
  "e.g",
  "i.e",
  "etc",
  "no",
  "approx",
]);

const WHITESPACE = /\s/;
const LETTER = /\p{L}/u;
const UPPER_INITIAL = /^\p{Lu}$/u;
const LEADING_PUNCTUATION = /^[^\p{L}\p{N}]+/u;

export interface SentenceCutterOptions {
  /** Longest sentence released without a terminator, in UTF-16 units; default 160. */
  readonly maxChars?: number;
}

/** Accumulates token deltas; `push` returns the sentences they completed. */
export class SentenceCutter {
  readonly #maxChars: number;
  #buffer = "";
  /** Index in the buffer before which no split point remains undecided. */
  #scanned = 0;

  constructor(options: SentenceCutterOptions = {}) {
    const maxChars = options.maxChars ?? 160;
    if (!(maxChars >= 8)) {
      throw new RangeError(`Cannot create sentence cutter: maxChars "${maxChars}" is below 8`);
    }
    this.#maxChars = maxChars;
  }

  /** Appends a delta (any split, even mid-word) and returns the sentences it completed. */
  push(delta: string): string[] {
    const out: string[] = [];
    // The buffer never starts with whitespace, so cut positions do not depend on the split.
    this.#buffer += this.#buffer === "" ? delta.trimStart() : delta;
    for (;;) {
      this.#scan(out);
      if (this.#buffer.length <= this.#maxChars) return out;
      this.#cutRunOn(out);
    }
  }

  /** Returns what is left as a last sentence (null if only whitespace) and resets. */
  flush(): string | null {
    const rest = this.#buffer.trim();
    this.#buffer = "";
    this.#scanned = 0;
    return rest === "" ? null : rest;
  }

  #emit(out: string[], end: number): void {
    const sentence = this.#buffer.slice(0, end).trim();
    if (sentence !== "") out.push(sentence);
    this.#buffer = this.#buffer.slice(end).trimStart();
    this.#scanned = 0;
  }

  /** Emits sentences that end within `maxChars`; stops where a run-on cut must decide. */
  #scan(out: string[]): void {
    let i = this.#scanned;
    while (i < this.#buffer.length && i < this.#maxChars) {
      const c = this.#buffer[i];
      if (c === "\n") {
        this.#emit(out, i + 1);
        i = 0;
        continue;
      }
      if (!TERMINATORS.includes(c)) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < this.#buffer.length && TERMINATORS.includes(this.#buffer[j])) j++;
      while (j < this.#buffer.length && CLOSERS.includes(this.#buffer[j])) j++;
      if (j === this.#buffer.length) break; // the next character decides
      if (j > this.#maxChars) break; // too long: the run-on cut decides
      if (WHITESPACE.test(this.#buffer[j]) && this.#endsSentence(i, j)) {
        this.#emit(out, j);
        i = 0;
        continue;
      }
      i = j;
    }
    this.#scanned = i;
  }

  /** Whether the terminator run `[start, end)` ends a sentence (whitespace follows it). */
  #endsSentence(start: number, end: number): boolean {
    const head = this.#buffer.slice(0, start);
    if (!LETTER.test(head)) return false;
    const isSinglePeriod = this.#buffer[start] === "." && (end === start + 1 ||
      !TERMINATORS.includes(this.#buffer[start + 1]));
    if (!isSinglePeriod) return true;
    const at = head.search(/\S+$/);
    const word = at < 0 ? "" : head.slice(at).replace(LEADING_PUNCTUATION, "");
    if (ABBREVIATIONS.has(word.toLowerCase())) return false;
    return !UPPER_INITIAL.test(word);
  }

  #cutRunOn(out: string[]): void {
    const window = this.#buffer.slice(0, this.#maxChars + 1);
    let cut = -1;
    for (let i = window.length - 1; i >= this.#maxChars >> 1; i--) {
      if (
        SOFT_BREAKS.includes(window[i]) && i + 1 < window.length && WHITESPACE.test(window[i + 1])
      ) {
        cut = i + 1;
        break;
      }
    }
    if (cut < 0) {
      for (let i = window.length - 1; i > 0; i--) {
        if (WHITESPACE.test(window[i])) {
          cut = i;
          break;
        }
      }
    }
    if (cut <= 0) cut = this.#maxChars;
    this.#emit(out, cut);
  }
}

/** Turns a stream of token deltas into a stream of sentences (the rest is flushed at the end). */
export async function* cutSentences(
  deltas: AsyncIterable<string>,
  options: SentenceCutterOptions = {},
): AsyncGenerator<string> {
  const cutter = new SentenceCutter(options);
  for await (const delta of deltas) yield* cutter.push(delta);
  const rest = cutter.flush();
  if (rest !== null) yield rest;
}
