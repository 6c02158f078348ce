/**
 * A bounded single-consumer event queue exposed as an async iterable. Policy when full: drop the
 * oldest event and count it (recognition events arrive a few per second; a full queue means the
 * consumer is gone, and the newest partial/final is the useful one).
 */
export class EventQueue<T> {
  readonly #items: (T | undefined)[];
  #head = 0;
  #size = 0;
  #ended = false;
  #dropped = 0;
  #wake: (() => void) | null = null;

  /** `capacity` events at most are held. */
  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`Cannot create event queue of capacity "${capacity}"`);
    }
    this.#items = new Array(capacity);
  }

  get size(): number {
    return this.#size;
  }
  /** Events discarded because the queue was full. */
  get dropped(): number {
    return this.#dropped;
  }
  get ended(): boolean {
    return this.#ended;
  }

  /** Adds an event; ignored after `end()`. */
  push(item: T): void {
    if (this.#ended) return;
    const capacity = this.#items.length;
    if (this.#size === capacity) {
      this.#items[this.#head] = undefined;
      this.#head = (this.#head + 1) % capacity;
      this.#size--;
      this.#dropped++;
    }
    this.#items[(this.#head + this.#size) % capacity] = item;
    this.#size++;
    this.#signal();
  }

  /** No more events; the iterator finishes after draining what is queued. */
  end(): void {
    this.#ended = true;
    this.#signal();
  }

  #signal(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T, void, undefined> {
    for (;;) {
      while (this.#size > 0) {
        const item = this.#items[this.#head] as T;
        this.#items[this.#head] = undefined;
        this.#head = (this.#head + 1) % this.#items.length;
        this.#size--;
        yield item;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
  }
}
