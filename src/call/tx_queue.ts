/**
 * The outbound queue between producers (greeting, agent) and the TX worker (SPEC 2, `tx_q`).
 *
 * Policy: back-pressure, never drop. A push waits while the queue is full (or while earlier pushes
 * wait, to keep order). `clear()` (barge-in) empties the queue and starts a new *epoch*: waiting
 * pushes resolve `false` and their items are discarded, and so is any later push that still
 * carries the old epoch, so a cleared utterance's remaining frames are simply not queued. None of
 * this is an error. An aborted push rejects with `signal.reason`.
 */
import { Ring } from "./ring.ts";

/**
 * A 20 ms μ-law frame (160 bytes) to send as `media`; a string: the name of a mark to send; a
 * function: a notification the TX worker calls when it reaches it (right after the frame before).
 */
export type TxItem = Uint8Array | string | (() => void);

interface Waiter {
  readonly item: TxItem;
  readonly resolve: (queued: boolean) => void;
  readonly reject: (reason: unknown) => void;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: () => void;
}

export interface TxPushOptions {
  readonly signal?: AbortSignal;
  /** The epoch the producer started in; a push from an older epoch is discarded (`false`). */
  readonly epoch?: number;
}

const RESOLVED_TRUE = Promise.resolve(true);
const RESOLVED_FALSE = Promise.resolve(false);

export class TxQueue {
  readonly #ring: Ring<TxItem>;
  readonly #waiters: Ring<Waiter>;
  readonly #onItem: () => void;
  #epoch = 0;

  /**
   * `capacity`: items held (`audio.tx_queue_frames`; a mark takes one slot).
   * `onItem`: called after an item is queued (the TX worker's wake-up; must be cheap).
   */
  constructor(capacity: number, onItem: () => void = () => {}) {
    this.#ring = new Ring<TxItem>(capacity);
    // Producers per call are few (greeting, agent); more waiters than items would be a bug.
    this.#waiters = new Ring<Waiter>(capacity);
    this.#onItem = onItem;
  }

  get capacity(): number {
    return this.#ring.capacity;
  }

  /** Items queued. */
  get size(): number {
    return this.#ring.size;
  }

  /** Pushes waiting for room. */
  get waiting(): number {
    return this.#waiters.size;
  }

  /** Incremented by every `clear()`. */
  get epoch(): number {
    return this.#epoch;
  }

  /** Queues `item` now if there is room and nobody waits; never waits. */
  tryPush(item: TxItem, epoch: number = this.#epoch): boolean {
    if (epoch !== this.#epoch || this.#waiters.size > 0 || !this.#ring.push(item)) return false;
    this.#onItem();
    return true;
  }

  /** Queues `item`, waiting while full. Resolves `true` when queued, `false` when cleared. */
  push(item: TxItem, options: TxPushOptions = {}): Promise<boolean> {
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const epoch = options.epoch ?? this.#epoch;
    if (epoch !== this.#epoch) return RESOLVED_FALSE;
    if (this.tryPush(item, epoch)) return RESOLVED_TRUE;
    return new Promise<boolean>((resolve, reject) => {
      const onAbort = () => {
        const index = this.#waiters.findIndex((w) => w === waiter);
        if (index >= 0) this.#waiters.removeAt(index);
        reject(signal?.reason);
      };
      const waiter: Waiter = { item, resolve, reject, signal, onAbort };
      if (!this.#waiters.push(waiter)) {
        reject(
          new RangeError(`Cannot wait for TX room: "${this.#waiters.size}" pushes already wait`),
        );
        return;
      }
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** The oldest item, or undefined. */
  peek(): TxItem | undefined {
    return this.#ring.peek();
  }

  /** Removes and returns the oldest item; the first waiting push takes the freed slot. */
  take(): TxItem | undefined {
    const item = this.#ring.take();
    if (item !== undefined && this.#waiters.size > 0) {
      const waiter = this.#waiters.take() as Waiter;
      waiter.signal?.removeEventListener("abort", waiter.onAbort);
      this.#ring.push(waiter.item);
      waiter.resolve(true);
    }
    return item;
  }

  /**
   * Empties the queue, discards waiting pushes (they resolve `false`) and starts a new epoch.
   * Returns how many queued items were discarded (waiters' items not included).
   */
  clear(): number {
    this.#epoch++;
    const removed = this.#ring.clear();
    while (this.#waiters.size > 0) {
      const waiter = this.#waiters.take() as Waiter;
      waiter.signal?.removeEventListener("abort", waiter.onAbort);
      waiter.resolve(false);
    }
    return removed;
  }
}
