/**
 * A scheduler whose clock only moves when told: for unit tests of the paced workers and for
 * simulations faster than real time.
 */
import { HeapScheduler } from "../../src/call/scheduler.ts";

export class ManualScheduler extends HeapScheduler {
  #now: number;

  /** `start`: the initial clock value, ms. */
  constructor(start = 0) {
    super();
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  protected rearm(): void {
    // Nothing to arm: `advance` runs tasks.
  }

  /**
   * Moves the clock forward by `ms`, stopping at each deadline on the way (tasks see the exact
   * deadline as "now", i.e. they are on time). Returns how many tasks ran.
   */
  advance(ms: number): number {
    if (ms < 0) throw new RangeError(`Cannot move the clock back by "${ms}" ms`);
    const target = this.#now + ms;
    let runs = 0;
    for (;;) {
      const next = this.heap.peek();
      if (next === undefined || next.deadline > target) break;
      if (next.deadline > this.#now) this.#now = next.deadline;
      runs += this.runDue(this.#now, 1);
    }
    this.#now = target;
    return runs;
  }

  /**
   * Jumps the clock forward by `ms` without stopping on the way, then runs what is due: every
   * overdue task sees the late clock, as after a stalled event loop. Returns how many tasks ran.
   */
  jump(ms: number): number {
    if (ms < 0) throw new RangeError(`Cannot move the clock back by "${ms}" ms`);
    this.#now += ms;
    return this.runDue(this.#now, 10_000);
  }
}
