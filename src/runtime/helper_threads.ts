/**
 * Runs V8's helper threads (concurrent GC marking and sweeping, background compilation) at a lower
 * priority than the event loop. Where they share a core with it (a one-core VM, a busy host, the
 * SPEC's pinned benchmark), the kernel otherwise splits the core evenly between them in 4 ms
 * slices while a GC cycle marks, and every frame and webhook answer waits behind those slices
 * (measured at 100 calls on one core, three runs each: status-callback p99 4.3-15 ms, 7.6-8.8 ms
 * lowered by 10). With a core to spare the priority changes nothing. The helpers are not starved:
 * at +10 they still get about a tenth of a busy core, and all of an idle one. Linux only
 * (`/proc/self/task`, per-thread nice).
 */
import { getPriority, setPriority } from "node:os";

/** V8's platform workers call themselves "V8 DefaultWorker" (15 characters kept in `comm`). */
const HELPER_PREFIX = "V8 ";
/** The weakest nice value Linux allows. */
const NICEST = 19;

/** What the lowering needs from the system (tests inject their own). */
export interface ThreadSystem {
  /** Thread ids of this process. Throws where there is no `/proc`. */
  threadIds(): number[];
  /** The thread's name, or null when it has gone. */
  threadName(tid: number): string | null;
  /** The thread's nice value; `tid` 0 is the calling thread. */
  getNice(tid: number): number;
  setNice(tid: number, nice: number): void;
}

export type HelperLowering =
  | { readonly ok: true; readonly threads: number; readonly nice: number }
  | { readonly ok: false; readonly reason: string };

/** This process, through `/proc/self/task` and `setpriority(2)` on thread ids. */
export const LINUX_THREADS: ThreadSystem = {
  threadIds() {
    const ids: number[] = [];
    for (const entry of Deno.readDirSync("/proc/self/task")) {
      const tid = Number(entry.name);
      if (Number.isInteger(tid) && tid > 0) ids.push(tid);
    }
    return ids;
  },
  threadName(tid) {
    try {
      return Deno.readTextFileSync(`/proc/self/task/${tid}/comm`).trimEnd();
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return null;
      throw error;
    }
  },
  getNice: (tid) => getPriority(tid),
  setNice: (tid, nice) => setPriority(tid, nice),
};

/**
 * Sets every V8 helper thread to this process's nice value plus `increment` (at most 19). The
 * main thread and Deno's own threads keep theirs. `increment` 0 leaves everything as it is.
 */
export function lowerHelperThreads(
  increment: number,
  system: ThreadSystem = LINUX_THREADS,
): HelperLowering {
  if (!Number.isInteger(increment) || increment < 0 || increment > NICEST) {
    throw new RangeError(`Cannot lower helper threads by "${increment}"`);
  }
  if (increment === 0) return { ok: false, reason: "disabled (server.helper_thread_nice = 0)" };
  let threads = 0;
  try {
    const nice = Math.min(NICEST, system.getNice(0) + increment);
    for (const tid of system.threadIds()) {
      if (!system.threadName(tid)?.startsWith(HELPER_PREFIX)) continue;
      system.setNice(tid, nice);
      threads++;
    }
    return threads === 0
      ? { ok: false, reason: "no V8 helper threads found" }
      : { ok: true, threads, nice };
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      // Least-privilege runs (the bundle, the executable): systemd's ExecStartPost does it there.
      return { ok: false, reason: "not permitted: Deno reads /proc/self only with --allow-all" };
    }
    const why = error instanceof Error ? error.message : String(error);
    return { ok: false, reason: `cannot read or set thread priorities: ${why}` };
  }
}
