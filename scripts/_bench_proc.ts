/**
 * Process and machine figures for the benchmark, read from `/proc` (Linux): a process's CPU time
 * and resident memory, and each core's busy time; plus CPU pinning with `taskset`.
 */

/** Clock ticks per second of `/proc` CPU times (USER_HZ; 100 on every Linux build in practice). */
export const CLK_TCK: number = (() => {
  try {
    const out = new Deno.Command("getconf", { args: ["CLK_TCK"], stdout: "piped", stderr: "null" })
      .outputSync();
    const n = Number(new TextDecoder().decode(out.stdout).trim());
    return Number.isFinite(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

/** User + system CPU seconds used so far by `pid` (all its threads). */
export function processCpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  // Fields after "(comm)": state is field 3, utime 14, stime 15 (proc(5)).
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** Resident memory of `pid`, MiB (`VmRSS`). */
export function processRssMiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  return match === null ? NaN : Number(match[1]) / 1024;
}

/** Busy and total ticks of each core (`cpuN` lines of /proc/stat). */
export function coreTicks(): { busy: number; total: number }[] {
  const out: { busy: number; total: number }[] = [];
  for (const line of Deno.readTextFileSync("/proc/stat").split("\n")) {
    const match = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (match === null) continue;
    const v = match[2].trim().split(/\s+/).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    const idle = v[3] + (v[4] ?? 0);
    const total = v.slice(0, 8).reduce((a, b) => a + (b || 0), 0);
    out[Number(match[1])] = { busy: total - idle, total };
  }
  return out;
}

/** Busy share (%) of each core between two `coreTicks()` readings. */
export function coreBusyPct(
  before: readonly { busy: number; total: number }[],
  after: readonly { busy: number; total: number }[],
): number[] {
  return after.map((a, i) => {
    const b = before[i];
    const total = a.total - b.total;
    return total > 0 ? (100 * (a.busy - b.busy)) / total : NaN;
  });
}

/** Whether `taskset` can be used (Linux with util-linux, at least 2 CPUs). */
export function canPin(): boolean {
  if (navigator.hardwareConcurrency < 2) return false;
  try {
    return new Deno.Command("taskset", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/** Pins an existing process (all its threads) to `core`. */
export function pinProcess(pid: number, core: number): boolean {
  try {
    return new Deno.Command("taskset", {
      args: ["-a", "-cp", String(core), String(pid)],
      stdout: "null",
      stderr: "null",
    }).outputSync().success;
  } catch {
    return false;
  }
}

/**
 * Scheduling priority of the measured and measuring processes (`nice` value; null = unchanged).
 * On a shared machine, other users' jobs are not pinned and land on Kav's core too; at -10 they
 * cannot pass for Kav's own latency. CPU time figures do not depend on it.
 */
let niceness: number | null = null;

/** Sets the `nice` value `pinPrefix` applies; returns false if not permitted. */
export function useNice(value: number | null): boolean {
  if (value === null) {
    niceness = null;
    return true;
  }
  try {
    const ok = new Deno.Command("nice", { args: ["-n", String(value), "true"], stderr: "piped" })
      .outputSync();
    // nice(1) only warns when it cannot raise priority; the warning is the signal.
    if (!ok.success || ok.stderr.length > 0) return false;
  } catch {
    return false;
  }
  niceness = value;
  return true;
}

/** The command prefix that runs a program on `core` at the chosen priority. */
export function pinPrefix(core: number | null): string[] {
  const nice = niceness === null ? [] : ["nice", "-n", String(niceness)];
  return [...nice, ...(core === null ? [] : ["taskset", "-c", String(core)])];
}

/** Fixed integer work, timed 5 times; prints the median in ms. */
const SPEED_PROBE = `
const times = [];
let x = 1;
for (let r = 0; r < 5; r++) {
  const t = performance.now();
  for (let i = 0; i < 2e7; i++) x = (Math.imul(x, 1664525) + 1013904223) | 0;
  times.push(performance.now() - t);
}
times.sort((a, b) => a - b);
console.log(String(times[2] + (x === 0.5 ? 1 : 0)));
`;

/**
 * How fast `core` is right now: the median time (ms) of a fixed loop, run on it in a fresh Deno.
 * On a shared VM the same loop was seen taking 150 ms and 380 ms seconds apart, so each step
 * records one before and one after; a step whose figures moved with it is the machine, not Kav.
 */
export async function probeCoreMs(core: number | null): Promise<number> {
  const argv = [...pinPrefix(core), Deno.execPath(), "eval", SPEED_PROBE];
  const out = await new Deno.Command(argv[0], { args: argv.slice(1), stderr: "null" }).output();
  const ms = Number(new TextDecoder().decode(out.stdout).trim());
  return out.success && Number.isFinite(ms) ? Math.round(ms * 10) / 10 : NaN;
}
