/**
 * G.711 μ-law helpers on top of `npm:alawmulaw`: a decode table built once, per-frame energy for
 * the VAD (no allocation), and the PCM16 → μ-law conversion for WAV import.
 */
import alawmulaw from "alawmulaw";

const codec = alawmulaw.mulaw;

/** Full-scale PCM16 amplitude, the 0 dBFS reference. */
const FULL_SCALE = 32768;

/** Energies at or below this (all-zero frames) report this level instead of -Infinity. */
export const MIN_DBFS = -100;

/** μ-law byte → PCM16 sample, built once from the library's decoder. */
export const MULAW_TO_PCM: Int16Array = buildDecodeTable();

/** μ-law byte → squared PCM16 sample; a frame's energy is then 160 lookups and adds. */
const SQUARES: Float64Array = buildSquares(MULAW_TO_PCM);

function buildDecodeTable(): Int16Array {
  const table = new Int16Array(256);
  for (let byte = 0; byte < 256; byte++) table[byte] = codec.decodeSample(byte);
  return table;
}

function buildSquares(decoded: Int16Array): Float64Array {
  const squares = new Float64Array(256);
  for (let byte = 0; byte < 256; byte++) squares[byte] = decoded[byte] * decoded[byte];
  return squares;
}

/**
 * Mean square of one μ-law frame, in PCM16 units squared (0 for silence, at most 32124² ≈ 1.03e9,
 * μ-law's largest sample). Allocates nothing; an empty frame has energy 0.
 */
export function frameEnergy(frame: Uint8Array): number {
  const length = frame.length;
  if (length === 0) return 0;
  let sum = 0;
  for (let i = 0; i < length; i++) sum += SQUARES[frame[i]];
  return sum / length;
}

/** A mean-square energy as dB relative to full scale, floored at `MIN_DBFS`. */
export function energyToDbfs(energy: number): number {
  if (energy <= 0) return MIN_DBFS;
  const db = 10 * Math.log10(energy / (FULL_SCALE * FULL_SCALE));
  return db < MIN_DBFS ? MIN_DBFS : db;
}

/** RMS level of one μ-law frame in dBFS (`MIN_DBFS` for digital silence). Allocates nothing. */
export function frameDbfs(frame: Uint8Array): number {
  return energyToDbfs(frameEnergy(frame));
}

/** PCM16 samples → μ-law bytes (for WAV import and fixtures). */
export function encodeMulaw(pcm: Int16Array): Uint8Array {
  const bytes = new Uint8Array(pcm.length);
  // The library returns the complemented code as a signed number; keep the low byte.
  for (let i = 0; i < pcm.length; i++) bytes[i] = codec.encodeSample(pcm[i]) & 0xff;
  return bytes;
}
