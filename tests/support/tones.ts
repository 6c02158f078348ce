/** Test tones and their measurement: sine waves, RMS, and a tone's frequency from its zero crossings. */

/** `ms` of a sine at `hz`, sampled at `rate`, as PCM16. */
export function sine(
  options: { hz: number; rate: number; ms: number; amplitude?: number },
): Int16Array {
  const { hz, rate, ms } = options;
  const amplitude = options.amplitude ?? 10_000;
  const out = new Int16Array(Math.round(rate * ms / 1000));
  for (let i = 0; i < out.length; i++) {
    out[i] = Math.round(amplitude * Math.sin(2 * Math.PI * hz * i / rate));
  }
  return out;
}

/** RMS of `samples[from, to)`. */
export function rms(samples: Int16Array, from = 0, to = samples.length): number {
  let sum = 0;
  for (let i = from; i < to; i++) sum += samples[i] * samples[i];
  return to > from ? Math.sqrt(sum / (to - from)) : 0;
}

/**
 * The frequency of the tone in `samples` (Hz), from its first to its last rising zero crossing
 * (each placed between samples by linear interpolation), and how many periods that spans.
 */
export function measureTone(samples: Int16Array, rate: number): { hz: number; periods: number } {
  let first = -1;
  let last = -1;
  let periods = -1;
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1];
    const b = samples[i];
    if (a < 0 && b >= 0) {
      const at = i - 1 + a / (a - b);
      if (first < 0) first = at;
      last = at;
      periods++;
    }
  }
  if (periods < 1) return { hz: 0, periods: 0 };
  return { hz: periods * rate / (last - first), periods };
}

/** Index of the first and one past the last sample whose magnitude exceeds `threshold`. */
export function soundSpan(samples: Int16Array, threshold: number): { from: number; to: number } {
  let from = -1;
  let to = -1;
  for (let i = 0; i < samples.length; i++) {
    if (Math.abs(samples[i]) > threshold) {
      if (from < 0) from = i;
      to = i + 1;
    }
  }
  return { from: Math.max(0, from), to: Math.max(0, to) };
}
