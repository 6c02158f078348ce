/**
 * Micro-benchmark of the shared scheduler's wake-up accuracy: `tasks` paced loops of 10 µs work
 * re-arming every 20 ms for `seconds`, on the current `RealtimeScheduler` (one chained `setTimeout`
 * per pass, 1 ms slack) with the loops' phases spread evenly over the period or on the workers'
 * 4 ms phase grid, and on an alternative (a shared 1 ms `setInterval` tick while a deadline is
 * near).
 * Reports each run's lateness (wall clock at the callback minus its deadline; negative = early) and
 * the process CPU. Usage: `deno run -A scripts/bench_timers.ts [--tasks 1,100,400] [--seconds 5]`.
 * Prints a table, then JSON.
 */
import { readCommandLine } from "../src/command_line.ts";
import {
  HeapScheduler,
  PHASE_GRID_MS,
  RealtimeScheduler,
  type Scheduler,
} from "../src/call/scheduler.ts";
import { quantileOfSorted } from "../tools/stats.ts";

const SLACK_MS = 0.5;
const NEAR_MS = 2;
const TIMEOUT_EARLY_MS = 1;

/**
 * The alternative measured against `RealtimeScheduler` (one `setTimeout` re-armed per pass, which
 * cannot wake twice within ~2.1 ms): a one-shot `setTimeout` for a far deadline and a shared 1 ms
 * `setInterval` tick while a deadline is within `NEAR_MS`, running what is due within `SLACK_MS`.
 */
class IntervalTickScheduler extends HeapScheduler {
  #timer: ReturnType<typeof setTimeout> | undefined;
  #armedFor = Infinity;
  #tick: ReturnType<typeof setInterval> | undefined;
  #inPass = false;
  now(): number {
    return performance.now();
  }
  protected rearm(): void {
    if (this.#inPass) return;
    const next = this.heap.peek();
    if (next === undefined) {
      this.#disarm();
      this.#stopTick();
      return;
    }
    const ahead = next.deadline - this.now();
    if (ahead <= NEAR_MS) {
      this.#disarm();
      this.#tick ??= setInterval(this.#pass, 1);
      return;
    }
    this.#stopTick();
    if (this.#timer !== undefined && this.#armedFor <= next.deadline) return;
    this.#disarm();
    this.#armedFor = next.deadline;
    this.#timer = setTimeout(this.#fire, Math.floor(ahead - TIMEOUT_EARLY_MS));
  }
  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#armedFor = Infinity;
  }
  #stopTick(): void {
    if (this.#tick !== undefined) clearInterval(this.#tick);
    this.#tick = undefined;
  }
  #fire = (): void => {
    this.#timer = undefined;
    this.#armedFor = Infinity;
    this.#pass();
  };
  #pass = (): void => {
    this.#inPass = true;
    try {
      this.runDue(this.now() + SLACK_MS, 10_000);
    } finally {
      this.#inPass = false;
    }
    this.rearm();
  };
}

interface Row {
  scheduler: string;
  tasks: number;
  runs: number;
  p1: number;
  p50: number;
  p99: number;
  max: number;
  interval_p99_dev: number;
  cpuPct: number;
}

function cpuTicks(): number {
  const fields = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return Number(fields[11]) + Number(fields[12]); // utime + stime
}

/** Busy work per run, µs (a call's tick is ~10-20 µs), so a pass of many tasks takes time. */
const WORK_US = 10;

/**
 * `grid`: 0 spreads the loops' phases evenly over 20 ms; otherwise each phase is rounded up to a
 * multiple of `grid` ms, as the workers do with `PHASE_GRID_MS`.
 */
async function measure(
  name: string,
  scheduler: Scheduler,
  tasks: number,
  seconds: number,
  grid = 0,
) {
  const late: number[] = [];
  const intervalDev: number[] = [];
  const endAt = scheduler.now() + seconds * 1000;
  const start = Math.ceil((scheduler.now() + 50) / 20) * 20;
  let live = tasks;
  const done = Promise.withResolvers<void>();
  for (let i = 0; i < tasks; i++) {
    const phase = (20 * i) / tasks;
    let deadline = start + (grid > 0 ? Math.ceil(phase / grid) * grid : phase);
    let last = NaN;
    const task = scheduler.task(() => {
      const began = performance.now();
      while (performance.now() - began < WORK_US / 1000) { /* the task's work */ }
      const wall = performance.now();
      late.push(wall - deadline);
      if (!Number.isNaN(last)) intervalDev.push(Math.abs(wall - last - 20));
      last = wall;
      deadline += 20;
      if (deadline < endAt) task.at(deadline);
      else if (--live === 0) done.resolve();
    });
    task.at(deadline);
  }
  const t0 = performance.now();
  const c0 = cpuTicks();
  await done.promise;
  const cpuPct = ((cpuTicks() - c0) * 10 / (performance.now() - t0)) * 100; // clock ticks are 10 ms
  late.sort((a, b) => a - b);
  intervalDev.sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return {
    scheduler: name,
    tasks,
    runs: late.length,
    p1: r(quantileOfSorted(late, 0.01)),
    p50: r(quantileOfSorted(late, 0.5)),
    p99: r(quantileOfSorted(late, 0.99)),
    max: r(late[late.length - 1]),
    interval_p99_dev: r(quantileOfSorted(intervalDev, 0.99)),
    cpuPct: Math.round(cpuPct * 10) / 10,
  } satisfies Row;
}

if (import.meta.main) {
  const { values } = readCommandLine(Deno.args, {
    tasks: { type: "string", default: "1,100,400" },
    seconds: { type: "string", default: "5" },
  });
  const counts = values.tasks.split(",").map(Number);
  const seconds = Number(values.seconds);
  if (counts.some((n) => !Number.isInteger(n) || n < 1) || !(seconds > 0)) {
    throw new RangeError(`Cannot use --tasks "${values.tasks}" --seconds "${values.seconds}"`);
  }
  const rows: Row[] = [];
  for (const tasks of counts) {
    rows.push(await measure("RealtimeScheduler", new RealtimeScheduler(), tasks, seconds));
    rows.push(
      await measure(
        `RealtimeScheduler, ${PHASE_GRID_MS} ms phase grid`,
        new RealtimeScheduler(),
        tasks,
        seconds,
        PHASE_GRID_MS,
      ),
    );
    rows.push(await measure("1 ms interval tick", new IntervalTickScheduler(), tasks, seconds));
  }
  console.log(
    "| scheduler | tasks | runs | lateness p1 / p50 / p99 / max ms | |interval - 20| p99 ms | CPU % |",
  );
  console.log("| --- | --- | --- | --- | --- | --- |");
  for (const w of rows) {
    console.log(
      `| ${w.scheduler} | ${w.tasks} | ${w.runs} | ${w.p1} / ${w.p50} / ${w.p99} / ${w.max} | ${w.interval_p99_dev} | ${w.cpuPct} |`,
    );
  }
  console.log(JSON.stringify({ deno: Deno.version.deno, seconds, rows }));
}
