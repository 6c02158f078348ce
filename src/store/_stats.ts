/**
 * Percentile with linear interpolation between closest ranks (numpy's default): p50 of [100, 200] is
 * 150. `sorted` must be ascending; returns null for an empty list.
 */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = (p / 100) * (sorted.length - 1);
  const low = Math.floor(rank);
  const high = Math.ceil(rank);
  const value = sorted[low] + (sorted[high] - sorted[low]) * (rank - low);
  // Timings are ms; a tenth of a microsecond is noise and makes JSON noisy.
  return Math.round(value * 10_000) / 10_000;
}

/** p50 and p90 of the finite values in `values` (nulls skipped). */
export function summarize(
  values: readonly (number | null)[],
): { p50: number | null; p90: number | null } {
  const finite = values.filter((v): v is number => v !== null && Number.isFinite(v));
  finite.sort((a, b) => a - b);
  return { p50: percentile(finite, 50), p90: percentile(finite, 90) };
}
