import { MULAW_TO_PCM } from "../src/audio/mulaw.ts";

/** The parts one after another in a new array. */
export function concatBytes(...parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** μ-law bytes → PCM16 samples, through Kav's decode table (Kav itself only encodes). */
export function decodeMulaw(bytes: Uint8Array): Int16Array {
  const pcm = new Int16Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) pcm[i] = MULAW_TO_PCM[bytes[i]];
  return pcm;
}
