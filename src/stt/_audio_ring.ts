/**
 * The session's audio since the last final, addressed by absolute byte offset on the session's
 * audio clock (0 = first byte written; μ-law 8000 Hz, so 8 bytes = 1 ms). It is both the send queue
 * (the stream reads from it at its own pace, honouring back-pressure) and the replay buffer (a new
 * stream starts again from `begin`). A fixed ring of chunk slots: nothing is shifted, and memory
 * grows only with audio actually held. Policy when full: drop the oldest chunk and count its bytes.
 */
export class AudioRing {
  readonly #chunks: (Uint8Array | null)[];
  readonly #starts: Float64Array;
  #head = 0;
  #count = 0;
  #begin = 0;
  #end = 0;
  #droppedBytes = 0;

  /** Holds at most `capacity` chunks (e.g. 750 chunks of 40 ms = 30 s). */
  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`Cannot create audio ring of capacity "${capacity}"`);
    }
    this.#chunks = new Array(capacity).fill(null);
    this.#starts = new Float64Array(capacity);
  }

  /** Offset of the first byte held. */
  get begin(): number {
    return this.#begin;
  }
  /** Offset just past the last byte held (= total bytes ever appended). */
  get end(): number {
    return this.#end;
  }
  /** Bytes lost because the ring was full (no final for longer than its capacity). */
  get droppedBytes(): number {
    return this.#droppedBytes;
  }

  /** Appends a chunk the ring now owns (the caller must not reuse it). */
  append(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    const capacity = this.#chunks.length;
    if (this.#count === capacity) {
      const oldest = this.#chunks[this.#head] as Uint8Array;
      const oldestEnd = this.#starts[this.#head] + oldest.length;
      this.#droppedBytes += oldestEnd - this.#begin;
      this.#chunks[this.#head] = null;
      this.#head = (this.#head + 1) % capacity;
      this.#count--;
      this.#begin = oldestEnd;
    }
    const slot = (this.#head + this.#count) % capacity;
    this.#chunks[slot] = chunk;
    this.#starts[slot] = this.#end;
    this.#count++;
    this.#end += chunk.length;
  }

  /** Forgets everything before `offset` (clamped to what is held). */
  trimTo(offset: number): void {
    const target = Math.min(Math.max(offset, this.#begin), this.#end);
    const capacity = this.#chunks.length;
    while (this.#count > 0) {
      const chunk = this.#chunks[this.#head] as Uint8Array;
      if (this.#starts[this.#head] + chunk.length > target) break;
      this.#chunks[this.#head] = null;
      this.#head = (this.#head + 1) % capacity;
      this.#count--;
    }
    this.#begin = target;
  }

  /**
   * Up to `maxBytes` contiguous bytes starting at `from` (a view, not a copy), never crossing a
   * chunk; empty when `from` is at or past the end. `from` below `begin` reads from `begin`.
   */
  read(from: number, maxBytes: number): Uint8Array {
    const at = Math.max(from, this.#begin);
    if (at >= this.#end || this.#count === 0) return new Uint8Array(0);
    const capacity = this.#chunks.length;
    // Binary search for the last chunk starting at or before `at`.
    let lo = 0;
    let hi = this.#count - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#starts[(this.#head + mid) % capacity] <= at) lo = mid;
      else hi = mid - 1;
    }
    const slot = (this.#head + lo) % capacity;
    const chunk = this.#chunks[slot] as Uint8Array;
    const offset = at - this.#starts[slot];
    return chunk.subarray(offset, Math.min(chunk.length, offset + maxBytes));
  }
}
