/**
 * A fixed-capacity FIFO ring buffer: O(1) push and take, no `Array.shift()`, no allocation after
 * construction. The building block of the RX and TX queues.
 */
export class Ring<T> {
  readonly #slots: (T | undefined)[];
  #head = 0;
  #size = 0;

  /** `capacity`: the most items held at once (>= 1). */
  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`Cannot create a ring of capacity "${capacity}"`);
    }
    this.#slots = new Array<T | undefined>(capacity).fill(undefined);
  }

  get capacity(): number {
    return this.#slots.length;
  }

  get size(): number {
    return this.#size;
  }

  /** Appends `item`; returns false (and changes nothing) when full. */
  push(item: T): boolean {
    const cap = this.#slots.length;
    if (this.#size === cap) return false;
    let i = this.#head + this.#size;
    if (i >= cap) i -= cap;
    this.#slots[i] = item;
    this.#size++;
    return true;
  }

  /** The oldest item, or undefined when empty. */
  peek(): T | undefined {
    return this.#size === 0 ? undefined : this.#slots[this.#head];
  }

  /** The item `offset` places after the oldest, or undefined. */
  at(offset: number): T | undefined {
    if (offset < 0 || offset >= this.#size) return undefined;
    let i = this.#head + offset;
    if (i >= this.#slots.length) i -= this.#slots.length;
    return this.#slots[i];
  }

  /** Removes and returns the oldest item, or undefined when empty. */
  take(): T | undefined {
    if (this.#size === 0) return undefined;
    const item = this.#slots[this.#head];
    this.#slots[this.#head] = undefined; // let it be collected
    this.#head++;
    if (this.#head === this.#slots.length) this.#head = 0;
    this.#size--;
    return item;
  }

  /**
   * Removes the item `offset` places after the oldest, keeping the order of the rest. O(n): for rare
   * paths (dropping an old media frame behind a control event, removing an aborted waiter).
   */
  removeAt(offset: number): T | undefined {
    if (offset < 0 || offset >= this.#size) return undefined;
    if (offset === 0) return this.take();
    const cap = this.#slots.length;
    const item = this.at(offset);
    for (let k = offset; k < this.#size - 1; k++) {
      const to = (this.#head + k) % cap;
      const from = (this.#head + k + 1) % cap;
      this.#slots[to] = this.#slots[from];
    }
    this.#slots[(this.#head + this.#size - 1) % cap] = undefined;
    this.#size--;
    return item;
  }

  /** Index (offset from the oldest) of the first item matching `predicate`, or -1. */
  findIndex(predicate: (item: T) => boolean): number {
    for (let k = 0; k < this.#size; k++) {
      if (predicate(this.at(k) as T)) return k;
    }
    return -1;
  }

  /** Empties the ring; returns how many items were removed. */
  clear(): number {
    const removed = this.#size;
    while (this.#size > 0) this.take();
    this.#head = 0;
    return removed;
  }
}
