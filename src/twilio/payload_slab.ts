/**
 * Decodes media payloads into a ring of preallocated 160-byte frames. A call receives 50 payloads
 * a second; decoded one by one, each was a new `ArrayBuffer` whose backing store the next scavenge
 * had to sweep (at 100 calls, 3.2-3.6 ms of the slowest scavenge pauses of about 6 ms).
 *
 * A decode goes into the one free slot, which the next decode overwrites, until `take()` claims it
 * for a message that was accepted (a rejected message's payload never costs a queued frame). A
 * taken frame stays valid until `slots - 1` later frames are taken. The RX queue holds at most its
 * capacity of frames and everything else copies what it keeps (the speech session, VAD), so
 * `slots` = queue capacity + 2 is enough. A payload of another size is decoded into a new array.
 */
import { FRAME_BYTES } from "../audio/frames.ts";
import { decodeBase64, type PayloadDecoder } from "./_media_fast.ts";

/** Base64 length of one 160-byte frame (53 whole groups plus one padded group). */
const FRAME_BASE64_CHARS = Math.ceil(FRAME_BYTES / 3) * 4;

export class PayloadSlab {
  readonly #frames: Uint8Array[];
  #next = 0;

  constructor(slots: number) {
    if (!Number.isInteger(slots) || slots < 2) {
      throw new RangeError(`Cannot create a payload slab of "${slots}" slots`);
    }
    const bytes = new Uint8Array(slots * FRAME_BYTES);
    this.#frames = Array.from(
      { length: slots },
      (_, i) => bytes.subarray(i * FRAME_BYTES, (i + 1) * FRAME_BYTES),
    );
  }

  /**
   * The bytes of `b64`, or null when it is not base64 (exactly as `decodeBase64`). A frame decoded
   * into the free slot is only valid until the next decode unless it is `take()`n first.
   */
  decode: PayloadDecoder = (b64) => {
    if (b64.length !== FRAME_BASE64_CHARS) return decodeBase64(b64);
    const frame = this.#frames[this.#next];
    let result: { read: number; written: number };
    try {
      result = frame.setFromBase64(b64);
    } catch {
      return null;
    }
    // Fewer bytes (padding inside) or more (no padding): not a plain frame; the general decoder
    // gives the exact answer.
    if (result.read !== b64.length || result.written !== FRAME_BYTES) return decodeBase64(b64);
    return frame;
  };

  /**
   * Keeps `payload` (from `decode`, its message accepted): when it is the free slot, later decodes
   * go to the next one. A payload in its own array needs nothing.
   */
  take(payload: Uint8Array): void {
    if (payload !== this.#frames[this.#next]) return;
    this.#next = this.#next + 1 === this.#frames.length ? 0 : this.#next + 1;
  }
}
