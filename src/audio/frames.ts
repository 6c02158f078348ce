/** Telephony audio framing: μ-law 8000 Hz mono, cut into the 20 ms frames Kav sends and paces. */

/** Samples per second of Twilio media (μ-law, mono). */
export const SAMPLE_RATE = 8000;
/** Duration of one frame, ms. */
export const FRAME_MS = 20;
/** Bytes (= samples) in one 20 ms μ-law frame. */
export const FRAME_BYTES = 160;
/** Twilio's and G.711's μ-law silence byte (+0); 0x7F (−0) decodes to 0 as well. */
export const MULAW_SILENCE = 0xff;

/** Number of 20 ms frames `bytes` of μ-law audio fills (the last one possibly partial). */
export function frameCount(bytes: number): number {
  return Math.ceil(bytes / FRAME_BYTES);
}

/**
 * Frame `index` of `mulaw`: a view (no copy) for whole frames; the last partial frame is copied
 * and padded with μ-law silence so every frame is exactly 160 bytes.
 */
export function frameAt(mulaw: Uint8Array, index: number): Uint8Array {
  const start = index * FRAME_BYTES;
  if (index < 0 || start >= mulaw.length) {
    throw new RangeError(`Cannot take frame "${index}" of ${mulaw.length} bytes`);
  }
  const end = start + FRAME_BYTES;
  if (end <= mulaw.length) return mulaw.subarray(start, end);
  const padded = new Uint8Array(FRAME_BYTES).fill(MULAW_SILENCE);
  padded.set(mulaw.subarray(start));
  return padded;
}

/** `ms` of μ-law silence, whole frames (rounded up). */
export function silence(ms: number): Uint8Array {
  return new Uint8Array(frameCount(Math.ceil(ms * SAMPLE_RATE / 1000)) * FRAME_BYTES).fill(
    MULAW_SILENCE,
  );
}
