import { Buffer } from "node:buffer";

/**
 * The session's audio since the last final, addressed by absolute byte offset on the session's
 * audio clock (0 = first byte written; μ-law 8000 Hz, so 8 bytes = 1 ms). It is both the send queue
 * (the stream reads from it at its own pace, honouring back-pressure) and the replay buffer (a new
 * stream starts again from `begin`).
 *
 * One contiguous byte buffer, not a list of chunks: audio held for seconds would otherwise be
 * thousands of small arrays per call, each surviving young-generation GCs and promoted, which made
 * GC pauses the main source of event-loop stalls under load. The buffer starts small and doubles up
 * to its capacity, so memory grows only with audio actually held. Policy when full: drop the
 * oldest bytes and count them.
 */
export class AudioRing {
  readonly #capacity: number;
  #bytes: Uint8Array;
  /** Index in `#bytes` of the byte at offset `#begin`. */
  #head = 0;
  #begin = 0;
  #end = 0;
  #droppedBytes = 0;

  /** Holds at most `capacityBytes` (e.g. 240,000 bytes = 30 s). */
  constructor(capacityBytes: number, initialBytes = 16_384) {
    if (!Number.isInteger(capacityBytes) || capacityBytes < 1) {
      throw new RangeError(`Cannot create audio ring of capacity "${capacityBytes}"`);
    }
    this.#capacity = capacityBytes;
    this.#bytes = new Uint8Array(Math.min(capacityBytes, Math.max(1, initialBytes)));
  }

  /** The most bytes it holds. */
  get capacity(): number {
    return this.#capacity;
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

  /** Copies `audio` in (the caller may reuse its buffer). */
  append(audio: Uint8Array): void {
    let source = audio;
    if (source.length > this.#capacity) {
      // Only the newest `capacity` bytes can be held: what was held and the rest are dropped.
      const skipped = source.length - this.#capacity;
      this.#droppedBytes += this.#end - this.#begin + skipped;
      this.#end += skipped;
      this.#begin = this.#end;
      this.#head = 0;
      source = source.subarray(skipped);
    }
    const held = this.#end - this.#begin;
    if (held + source.length > this.#bytes.length) this.#grow(held + source.length);
    const overflow = held + source.length - this.#bytes.length;
    if (overflow > 0) {
      this.#droppedBytes += overflow;
      this.#skip(overflow);
    }
    const size = this.#bytes.length;
    const tail = (this.#head + this.#end - this.#begin) % size;
    const first = Math.min(source.length, size - tail);
    this.#bytes.set(source.subarray(0, first), tail);
    if (first < source.length) this.#bytes.set(source.subarray(first), 0);
    this.#end += source.length;
  }

  /** Forgets everything before `offset` (clamped to what is held). */
  trimTo(offset: number): void {
    const target = Math.min(Math.max(offset, this.#begin), this.#end);
    this.#skip(target - this.#begin);
  }

  /**
   * A copy of up to `maxBytes` bytes starting at `from`; empty when `from` is at or past the end.
   * `from` below `begin` reads from `begin`. A copy, because the bytes may be overwritten once
   * trimmed while a stream still holds the array. Copied into a pooled `Buffer` (a slice of a
   * shared 8 KB block): a new `Uint8Array` per read was an `ArrayBuffer` per gRPC write, each one
   * more backing store for the next scavenge to sweep (~7x the time, measured).
   */
  read(from: number, maxBytes: number): Uint8Array {
    const at = Math.max(from, this.#begin);
    const length = Math.max(0, Math.min(maxBytes, this.#end - at));
    const out = Buffer.allocUnsafe(length);
    if (length === 0) return out;
    const size = this.#bytes.length;
    const start = (this.#head + at - this.#begin) % size;
    const first = Math.min(length, size - start);
    out.set(this.#bytes.subarray(start, start + first));
    if (first < length) out.set(this.#bytes.subarray(0, length - first), first);
    return out;
  }

  #skip(bytes: number): void {
    if (bytes <= 0) return;
    this.#begin += bytes;
    this.#head = (this.#head + bytes) % this.#bytes.length;
  }

  /** Doubles the buffer (up to capacity) until `needed` bytes fit, unwrapping what is held. */
  #grow(needed: number): void {
    let size = this.#bytes.length;
    while (size < needed && size < this.#capacity) size = Math.min(this.#capacity, size * 2);
    if (size === this.#bytes.length) return;
    const held = this.#end - this.#begin;
    const next = new Uint8Array(size);
    const old = this.#bytes;
    const first = Math.min(held, old.length - this.#head);
    next.set(old.subarray(this.#head, this.#head + first));
    if (first < held) next.set(old.subarray(0, held - first), first);
    this.#bytes = next;
    this.#head = 0;
  }
}
