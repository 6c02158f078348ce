/** Per-IP cap on bad-signature requests per minute, in bounded memory. */

/**
 * `counted`: within the cap (answer 403 and log). `limited_first`: the request that crossed the
 * cap (answer 429, log once). `limited`: past it (answer 429 quietly, so a flood cannot flood logs).
 */
export type LimitVerdict = "counted" | "limited_first" | "limited";

const WINDOW_MS = 60_000;
/** Beyond this many distinct IPs in a window, new ones share one bucket. */
const DEFAULT_MAX_TRACKED = 10_000;
const OVERFLOW_KEY = "*";

/** Returns a function that records one bad-signature request from `ip`. */
export function createBadSignatureLimiter(options: {
  readonly perMinute: number;
  readonly maxTracked?: number;
  /** Milliseconds clock; injectable for tests. */
  readonly now?: () => number;
}): (ip: string) => LimitVerdict {
  const { perMinute } = options;
  const maxTracked = options.maxTracked ?? DEFAULT_MAX_TRACKED;
  const now = options.now ?? (() => performance.now());
  const counts = new Map<string, number>();
  let windowStart = now();
  return (ip) => {
    const at = now();
    // Fixed windows: clearing everything each minute keeps memory bounded without a sweep.
    if (at - windowStart >= WINDOW_MS) {
      counts.clear();
      windowStart = at;
    }
    const key = counts.has(ip) || counts.size < maxTracked ? ip : OVERFLOW_KEY;
    const count = (counts.get(key) ?? 0) + 1;
    counts.set(key, count);
    if (count <= perMinute) return "counted";
    return count === perMinute + 1 ? "limited_first" : "limited";
  };
}
