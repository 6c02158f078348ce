/**
 * What every call worker and the main thread read and write without a message: one
 * `SharedArrayBuffer` of 32-bit words, changed only with `Atomics`.
 *
 * - `draining` and `ready`: set by the main thread, read by every worker's `/healthz`, TwiML and
 *   upgrade, so all workers agree at once.
 * - the `max_calls` count: one word per worker slot with the calls that worker holds. A worker
 *   takes a place under a small lock (sum the slots, add to its own), so a burst spread over all
 *   workers never admits more than `max_calls`; giving a place back is one atomic subtraction. The
 *   main thread zeroes a dead worker's slot (its calls are gone) and frees the lock if it died
 *   holding it.
 * - a connection counter, so `conn-N` names are unique in the process.
 * - one heartbeat word per slot that its worker's event loop moves; the main thread replaces a
 *   worker whose heartbeat stops (an isolate out of memory, a loop that never yields).
 */
import type { CallAdmission } from "../call/admission.ts";

const LOCK = 0;
const DRAINING = 1;
const READY = 2;
const CONNECTIONS = 3;
const HEADER = 4;
/** Spins on the admission lock before sleeping 1 ms: the lock is held for a few loads. */
const SPINS = 1000;

export class SharedProcessState {
  readonly buffer: SharedArrayBuffer;
  readonly slots: number;
  readonly #words: Int32Array;

  /** A new state for `slots` workers (main thread). */
  static create(slots: number): SharedProcessState {
    return new SharedProcessState(new SharedArrayBuffer((HEADER + 2 * slots) * 4));
  }

  /** The state `create` made, as a worker sees it (the buffer came by message). */
  constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.#words = new Int32Array(buffer);
    this.slots = (this.#words.length - HEADER) / 2;
  }

  get draining(): boolean {
    return Atomics.load(this.#words, DRAINING) === 1;
  }

  setDraining(): void {
    Atomics.store(this.#words, DRAINING, 1);
  }

  /** Every worker listens (before that `/healthz` says 503 "starting"). */
  get ready(): boolean {
    return Atomics.load(this.#words, READY) === 1;
  }

  setReady(): void {
    Atomics.store(this.#words, READY, 1);
  }

  /** Calls held by the worker in `slot`. */
  taken(slot: number): number {
    return Atomics.load(this.#words, HEADER + slot);
  }

  /** Calls held by every worker. */
  totalTaken(): number {
    let sum = 0;
    for (let slot = 0; slot < this.slots; slot++) sum += Atomics.load(this.#words, HEADER + slot);
    return sum;
  }

  /** Takes one of `max` places for `slot`; false when all are taken. */
  tryTake(slot: number, max: number): boolean {
    this.#lock(slot);
    try {
      if (this.totalTaken() >= max) return false;
      Atomics.add(this.#words, HEADER + slot, 1);
      return true;
    } finally {
      Atomics.store(this.#words, LOCK, 0);
    }
  }

  give(slot: number): void {
    const index = HEADER + slot;
    // Never below zero: a slot zeroed for a dead worker is not given back to again.
    for (;;) {
      const held = Atomics.load(this.#words, index);
      if (held <= 0) return;
      if (Atomics.compareExchange(this.#words, index, held, held - 1) === held) return;
    }
  }

  /**
   * Forgets what a worker that is gone held: zero places, and the lock if it died holding it. Only
   * once the worker can no longer run (terminated), so it cannot take a place afterwards.
   */
  clearSlot(slot: number): void {
    Atomics.store(this.#words, HEADER + slot, 0);
    Atomics.compareExchange(this.#words, LOCK, slot + 1, 0);
    Atomics.store(this.#words, HEADER + this.slots + slot, 0);
  }

  nextConnection(): number {
    return Atomics.add(this.#words, CONNECTIONS, 1) + 1;
  }

  beat(slot: number): void {
    Atomics.add(this.#words, HEADER + this.slots + slot, 1);
  }

  heartbeat(slot: number): number {
    return Atomics.load(this.#words, HEADER + this.slots + slot);
  }

  /** `max_calls` as the worker in `slot` takes it. */
  admission(slot: number, max: number): CallAdmission {
    return {
      max,
      tryTake: () => this.tryTake(slot, max),
      give: () => this.give(slot),
      taken: () => this.totalTaken(),
      nextConnection: () => this.nextConnection(),
    };
  }

  #lock(slot: number): void {
    const owner = slot + 1;
    for (let spins = 0;; spins++) {
      if (Atomics.compareExchange(this.#words, LOCK, 0, owner) === 0) return;
      if (spins >= SPINS) {
        Atomics.wait(this.#words, LOCK, Atomics.load(this.#words, LOCK), 1);
        spins = 0;
      }
    }
  }
}
