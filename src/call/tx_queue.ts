/**
 * The outbound queue between producers (greeting, agent) and the TX worker (SPEC 2, `tx_q`).
 *
 * Capacity and size count 20 ms frames (a mark or notification takes one slot). Audio goes in as
 * *runs* of whole frames (one view for many frames) and comes out a frame at a time: a sentence
 * queued as 144 frame views kept 144 small objects alive for up to 3 s, and at a hundred calls those
 * were most of what every scavenge had to copy and then promote.
 *
 * Policy: back-pressure, never drop. A push waits while the queue lacks room for the item (or while
 * earlier pushes wait, to keep order); an item larger than the whole queue enters an empty queue.
 * `clear()` (barge-in) empties the queue and starts a new *epoch*: waiting pushes resolve `false`
 * and their items are discarded, and so is any later push that still carries the old epoch, so a
 * cleared utterance's remaining frames are simply not queued. None of this is an error. An aborted
 * push rejects with `signal.reason`.
 */
import { FRAME_BYTES } from "../audio/frames.ts";
import { Ring } from "./ring.ts";

/**
 * μ-law audio to send as `media`: one frame (at most 160 bytes, sent as it is) or a run of whole
 * 160-byte frames; a string: the name of a mark to send; a function: a notification the TX worker
 * calls when it reaches it (right after the frame before).
 */
export type TxItem = Uint8Array | string | (() => void);

/** Slots `item` takes: its frames, or one. */
function slotsOf(item: TxItem): number {
  return item instanceof Uint8Array && item.length > FRAME_BYTES
    ? Math.ceil(item.length / FRAME_BYTES)
    : 1;
}

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
  readonly #capacity: number;
  /** Slots used: frames queued (the head run's sent frames excluded) plus control items. */
  #used = 0;
  /** Bytes of the head run already taken. */
  #headOffset = 0;
  #epoch = 0;

  /**
   * `capacity`: items held (`audio.tx_queue_frames`; a mark takes one slot).
   * `onItem`: called after an item is queued (the TX worker's wake-up; must be cheap).
   */
  constructor(capacity: number, onItem: () => void = () => {}) {
    // Every item takes at least one slot, so the ring never holds more items than slots.
    this.#ring = new Ring<TxItem>(capacity);
    // Producers per call are few (greeting, agent); more waiters than items would be a bug.
    this.#waiters = new Ring<Waiter>(capacity);
    this.#capacity = capacity;
    this.#onItem = onItem;
  }

  get capacity(): number {
    return this.#capacity;
  }

  /** Slots used: frames queued plus marks and notifications. */
  get size(): number {
    return this.#used;
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
    if (epoch !== this.#epoch || this.#waiters.size > 0 || !this.#enter(item)) return false;
    this.#onItem();
    return true;
  }

  /** Queues `item` if it fits (or the queue is empty). */
  #enter(item: TxItem): boolean {
    const slots = slotsOf(item);
    if (this.#used > 0 && this.#used + slots > this.#capacity) return false;
    if (!this.#ring.push(item)) return false;
    this.#used += slots;
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

  /** The oldest item (a run stays whole until its last frame is taken), or undefined. */
  peek(): TxItem | undefined {
    return this.#ring.peek();
  }

  /**
   * Removes and returns the oldest frame or control item: a run gives one 160-byte view per call.
   * Waiting pushes enter, in order, as soon as the freed slots hold them.
   */
  take(): TxItem | undefined {
    const head = this.#ring.peek();
    if (head === undefined) return undefined;
    let item: TxItem;
    if (head instanceof Uint8Array && head.length > FRAME_BYTES) {
      const from = this.#headOffset;
      const to = from + FRAME_BYTES;
      item = head.subarray(from, to);
      if (to < head.length) {
        this.#headOffset = to;
      } else {
        this.#headOffset = 0;
        this.#ring.take();
      }
    } else {
      item = head;
      this.#ring.take();
    }
    this.#used--;
    while (this.#waiters.size > 0 && this.#enter((this.#waiters.peek() as Waiter).item)) {
      const waiter = this.#waiters.take() as Waiter;
      waiter.signal?.removeEventListener("abort", waiter.onAbort);
      waiter.resolve(true);
    }
    return item;
  }

  /**
   * Empties the queue, discards waiting pushes (they resolve `false`) and starts a new epoch.
   * Returns how many slots were discarded (waiters' items not included).
   */
  clear(): number {
    this.#epoch++;
    const removed = this.#used;
    this.#ring.clear();
    this.#used = 0;
    this.#headOffset = 0;
    while (this.#waiters.size > 0) {
      const waiter = this.#waiters.take() as Waiter;
      waiter.signal?.removeEventListener("abort", waiter.onAbort);
      waiter.resolve(false);
    }
    return removed;
  }
}
