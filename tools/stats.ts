/**
 * The statistics of the simulator, the benchmarks and the tests: an allocation-free fixed-bin
 * histogram of milliseconds (0.1 ms bins) that gives percentiles without keeping every sample, and
 * the one quantile (nearest rank), median and spread of arrays of figures.
 */

/** Bins per millisecond (0.1 ms bins; edges computed as i / 10 to stay exact in decimal). */
const PER_MS = 10;

/** Counts millisecond samples in 0.1 ms bins up to `maxMs`; larger samples share one top bin. */
export class MsHistogram {
  readonly #bins: Uint32Array;
  #count = 0;
  #sum = 0;
  #max = -Infinity;
  #min = Infinity;

  /** `maxMs`: the exact range (default 250 ms, 10 KB of bins). */
  constructor(maxMs = 250) {
    this.#bins = new Uint32Array(Math.ceil(maxMs * PER_MS) + 1);
  }

  get count(): number {
    return this.#count;
  }
  /** Largest sample, ms (NaN when empty). */
  get max(): number {
    return this.#count === 0 ? NaN : this.#max;
  }
  get min(): number {
    return this.#count === 0 ? NaN : this.#min;
  }
  get mean(): number {
    return this.#count === 0 ? NaN : this.#sum / this.#count;
  }

  add(ms: number): void {
    const top = this.#bins.length - 1;
    let bin = Math.floor(ms * PER_MS);
    if (bin < 0) bin = 0;
    else if (bin > top) bin = top;
    this.#bins[bin]++;
    this.#count++;
    this.#sum += ms;
    if (ms > this.#max) this.#max = ms;
    if (ms < this.#min) this.#min = ms;
  }

  /** Adds every sample of `other` (same range). */
  merge(other: MsHistogram): void {
    const bins = other.#bins;
    if (bins.length !== this.#bins.length) {
      throw new RangeError(
        `Cannot merge histograms of ${bins.length} and ${this.#bins.length} bins`,
      );
    }
    for (let i = 0; i < bins.length; i++) this.#bins[i] += bins[i];
    this.#count += other.#count;
    this.#sum += other.#sum;
    if (other.#max > this.#max) this.#max = other.#max;
    if (other.#min < this.#min) this.#min = other.#min;
  }

  /**
   * The `q` quantile (0..1), ms: the upper edge of the bin holding it, so p99 = 20.3 means 99 % of
   * samples were below 20.3 ms. The top bin reports the exact maximum. NaN when empty.
   */
  quantile(q: number): number {
    if (this.#count === 0) return NaN;
    const rank = Math.max(1, Math.ceil(q * this.#count));
    let seen = 0;
    const top = this.#bins.length - 1;
    for (let i = 0; i <= top; i++) {
      seen += this.#bins[i];
      if (seen >= rank) return i === top ? this.#max : Math.min((i + 1) / PER_MS, this.#max);
    }
    return this.#max;
  }

  /** Samples above `ms` (bin resolution). */
  countAbove(ms: number): number {
    let n = 0;
    for (let i = Math.floor(ms * PER_MS) + 1; i < this.#bins.length; i++) n += this.#bins[i];
    return n;
  }

  /** Share of samples at or below `ms`, 0..1 (bin resolution). */
  shareBelow(ms: number): number {
    if (this.#count === 0) return NaN;
    let n = 0;
    const last = Math.min(this.#bins.length - 1, Math.floor(ms * PER_MS));
    for (let i = 0; i <= last; i++) n += this.#bins[i];
    return n / this.#count;
  }

  /** A compact JSON form (non-empty bins only), for sending between processes. */
  toJSON(): HistogramJson {
    const bins: [number, number][] = [];
    for (let i = 0; i < this.#bins.length; i++) {
      if (this.#bins[i] > 0) bins.push([i, this.#bins[i]]);
    }
    return {
      size: this.#bins.length,
      bins,
      count: this.#count,
      sum: this.#sum,
      max: this.#count === 0 ? null : this.#max,
      min: this.#count === 0 ? null : this.#min,
    };
  }

  /** Rebuilds a histogram from `toJSON()`. */
  static fromJSON(json: HistogramJson): MsHistogram {
    const h = new MsHistogram((json.size - 1) / PER_MS);
    for (const [i, n] of json.bins) h.#bins[i] = n;
    h.#count = json.count;
    h.#sum = json.sum;
    h.#max = json.max ?? -Infinity;
    h.#min = json.min ?? Infinity;
    return h;
  }

  /** The summary printed in reports (ms, 0.1 ms resolution). */
  summary(): IntervalSummary {
    return {
      count: this.#count,
      p1: round1(this.quantile(0.01)),
      p50: round1(this.quantile(0.5)),
      p99: round1(this.quantile(0.99)),
      max: round1(this.max),
    };
  }
}

export interface HistogramJson {
  readonly size: number;
  readonly bins: readonly (readonly [number, number])[];
  readonly count: number;
  readonly sum: number;
  readonly max: number | null;
  readonly min: number | null;
}

/** Percentiles of a histogram, ms. */
export interface IntervalSummary {
  readonly count: number;
  readonly p1: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

/**
 * The `q` quantile (0..1) of ascending `sorted` by nearest rank: the smallest value with at least
 * `q` of the values at or below it, so p50 of [1, 2, 3, 4] is 2. NaN when empty.
 */
export function quantileOfSorted(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/** The `q` quantile (nearest rank, see `quantileOfSorted`) of `values`; sorts a copy. */
export function quantile(values: readonly number[], q: number): number {
  return quantileOfSorted(ascending(values), q);
}

/** The middle value, or the mean of the two middle ones; NaN when empty. */
export function median(values: readonly number[]): number {
  const sorted = ascending(values);
  const mid = sorted.length >> 1;
  if (sorted.length === 0) return NaN;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** How a set of latencies spreads (ms, rounded). */
export interface Spread {
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly max: number;
}

/** p50, p95, p99 and max of `values`, each through `round` (default one decimal); NaN when empty. */
export function spread(values: readonly number[], round: (n: number) => number = round1): Spread {
  const sorted = ascending(values);
  return {
    p50: round(quantileOfSorted(sorted, 0.5)),
    p95: round(quantileOfSorted(sorted, 0.95)),
    p99: round(quantileOfSorted(sorted, 0.99)),
    max: round(sorted.length === 0 ? NaN : sorted[sorted.length - 1]),
  };
}

function ascending(values: readonly number[]): number[] {
  return [...values].sort((a, b) => a - b);
}

/** One decimal (NaN stays NaN, which JSON prints as null). */
export function round1(n: number): number {
  return Math.round(n * 10) / 10;
}

/** Two decimals. */
export function round2(n: number): number {
  return Math.round(n * 100) / 100;
}
