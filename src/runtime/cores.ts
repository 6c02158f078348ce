/**
 * How many cores this process may use: `server.workers = 0` starts one call worker per core. Three
 * limits can each be lower than the machine's core count, and the lowest wins:
 *
 * - the CPU affinity mask (`taskset`, systemd `CPUAffinity=`): `Cpus_allowed_list` in
 *   `/proc/self/status`, what sched_getaffinity(2) returns;
 * - a cgroup CPU quota (systemd `CPUQuota=`, a container's `--cpus`): `cpu.max` (cgroup v2) or
 *   `cpu.cfs_quota_us` / `cpu.cfs_period_us` (v1), in this cgroup and every ancestor. A quota counts
 *   whole cores, rounded down: CFS stops every thread of the group for the rest of its period once
 *   the quota is spent, so a worker more than the quota pays for in time would stall all of them;
 * - the runtime's own count (`navigator.hardwareConcurrency`, which already honours affinity and
 *   quotas). Deno lets only `--allow-all` read `/proc` and `/sys`; under the least-privilege service
 *   this is the one figure left, and it says the same.
 */

/** Reads a whole small file, or null when it is missing or may not be read. */
export type TextReader = (path: string) => string | null;

export interface CoreCount {
  /** Cores to use: the lowest of the limits below, at least 1. */
  readonly cores: number;
  /** CPUs in the affinity mask; null when unreadable. */
  readonly affinity: number | null;
  /** The tightest cgroup quota in cores (fractional); null when none is set or unreadable. */
  readonly quota: number | null;
  /** `navigator.hardwareConcurrency`. */
  readonly runtime: number;
}

/** CPUs in a kernel CPU list ("0-3,8,10-11"); null when it does not parse. */
export function parseCpuList(text: string): number | null {
  const trimmed = text.trim();
  if (trimmed === "") return null;
  let count = 0;
  for (const part of trimmed.split(",")) {
    const range = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (range === null) return null;
    const first = Number(range[1]);
    const last = range[2] === undefined ? first : Number(range[2]);
    if (last < first) return null;
    count += last - first + 1;
  }
  return count;
}

/** The affinity mask's CPU count from `/proc/self/status`; null when the line is absent. */
export function affinityFromStatus(status: string): number | null {
  const line = /^Cpus_allowed_list:\s*(.*)$/m.exec(status);
  return line === null ? null : parseCpuList(line[1]);
}

/** Cores a cgroup v2 `cpu.max` ("150000 100000", "max 100000") allows; null for no limit. */
export function quotaFromCpuMax(text: string): number | null {
  const [quota, period] = text.trim().split(/\s+/);
  if (quota === undefined || quota === "max") return null;
  const q = Number(quota);
  const p = Number(period ?? "100000");
  return Number.isFinite(q) && q > 0 && Number.isFinite(p) && p > 0 ? q / p : null;
}

/** Cores a cgroup v1 CFS quota allows (`cpu.cfs_quota_us` -1 means none); null for no limit. */
export function quotaFromCfs(quotaUs: string, periodUs: string): number | null {
  const q = Number(quotaUs.trim());
  const p = Number(periodUs.trim());
  return Number.isFinite(q) && q > 0 && Number.isFinite(p) && p > 0 ? q / p : null;
}

/** The directory and its ancestors, deepest first: "/a/b" → ["/a/b", "/a", ""]. */
function ancestry(path: string): string[] {
  const parts = path.split("/").filter((part) => part !== "");
  const out: string[] = [];
  for (let n = parts.length; n >= 0; n--) {
    out.push(n === 0 ? "" : "/" + parts.slice(0, n).join("/"));
  }
  return out;
}

function lowest(values: readonly (number | null)[]): number | null {
  const known = values.filter((v): v is number => v !== null);
  return known.length === 0 ? null : Math.min(...known);
}

/**
 * The tightest CPU quota over this process's cgroup and its ancestors, from `/proc/self/cgroup`
 * (v2's "0::/path" line, or v1's "cpu" controller line); null when none is set or nothing is
 * readable. A path that is not under the mount (a cgroup namespace) falls back to the mount's root.
 */
export function cgroupQuota(read: TextReader, root = "/sys/fs/cgroup"): number | null {
  const membership = read("/proc/self/cgroup");
  if (membership === null) return null;
  const quotas: (number | null)[] = [];
  for (const line of membership.split("\n")) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line.trim());
    if (m === null) continue;
    const [, , controllers, path] = m;
    if (controllers === "") {
      // cgroup v2 (unified): at the root of a pure v2 system, or under "unified" in a hybrid one.
      for (const mount of [root, `${root}/unified`]) {
        for (const dir of ancestry(path)) {
          const text = read(`${mount}${dir}/cpu.max`);
          if (text !== null) quotas.push(quotaFromCpuMax(text));
        }
      }
    } else if (controllers.split(",").includes("cpu")) {
      for (const mount of [`${root}/cpu`, `${root}/cpu,cpuacct`, `${root}/cpuacct,cpu`]) {
        for (const dir of ancestry(path)) {
          const quota = read(`${mount}${dir}/cpu.cfs_quota_us`);
          const period = read(`${mount}${dir}/cpu.cfs_period_us`);
          if (quota !== null && period !== null) quotas.push(quotaFromCfs(quota, period));
        }
      }
    }
  }
  return lowest(quotas);
}

/** Reads a file synchronously; null when it is missing or Deno may not read it. */
export const readSystemFile: TextReader = (path) => {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return null;
  }
};

/** The cores this process may use (see the module comment). */
export function availableCores(
  read: TextReader = readSystemFile,
  runtime: number = navigator.hardwareConcurrency,
): CoreCount {
  const status = read("/proc/self/status");
  const affinity = status === null ? null : affinityFromStatus(status);
  const quota = cgroupQuota(read);
  const wholeQuota = quota === null ? null : Math.max(1, Math.floor(quota));
  const cores = Math.max(1, lowest([affinity, wholeQuota, runtime]) ?? 1);
  return { cores, affinity, quota, runtime };
}
