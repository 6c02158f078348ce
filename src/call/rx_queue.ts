/**
 * The inbound queue between the socket and the RX worker (SPEC 2, `rx_q`). Pushing never waits.
 * Policy: when `capacity` media frames are queued, the *oldest media* frame is dropped and counted;
 * control items are never dropped.
 */
import { Ring } from "./ring.ts";

/** Room for control items beyond the media capacity (they are rare: dtmf, marks, stop). */
const CONTROL_SLACK = 64;

export class RxQueue<T> {
  readonly #ring: Ring<T>;
  readonly #isMedia: (item: T) => boolean;
  readonly #capacity: number;
  #media = 0;
  #drops = 0;
  #received = 0;

  /**
   * `capacity`: media frames held (e.g. `audio.rx_queue_frames`, 200 = 4 s).
   * `isMedia`: tells droppable media items from control items.
   */
  constructor(capacity: number, isMedia: (item: T) => boolean) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`Cannot create an RX queue of capacity "${capacity}"`);
    }
    this.#capacity = capacity;
    this.#isMedia = isMedia;
    this.#ring = new Ring<T>(capacity + CONTROL_SLACK);
  }

  /** Items queued (media and control). */
  get size(): number {
    return this.#ring.size;
  }

  /** Media frames queued (never more than the capacity). */
  get mediaSize(): number {
    return this.#media;
  }

  /** Media frames dropped since creation. */
  get drops(): number {
    return this.#drops;
  }

  /** Items accepted since creation (including media later dropped). */
  get received(): number {
    return this.#received;
  }

  /**
   * Queues `item` without waiting. Returns false only when a control item finds the queue full of
   * control items (a flood no real stream produces); the item is then not queued.
   */
  tryPush(item: T): boolean {
    const media = this.#isMedia(item);
    if (media && this.#media >= this.#capacity) this.#dropOldestMedia();
    if (!this.#ring.push(item)) {
      if (!media) return false;
      // The ring is full of control items plus media: make room from the media side.
      if (this.#media === 0) {
        this.#received++;
        this.#drops++;
        return true; // the new frame itself is the oldest droppable media
      }
      this.#dropOldestMedia();
      this.#ring.push(item);
    }
    if (media) this.#media++;
    this.#received++;
    return true;
  }

  /** Removes and returns the oldest item, or undefined. */
  take(): T | undefined {
    const item = this.#ring.take();
    if (item !== undefined && this.#isMedia(item)) this.#media--;
    return item;
  }

  /** Empties the queue; returns how many items were removed. */
  clear(): number {
    this.#media = 0;
    return this.#ring.clear();
  }

  #dropOldestMedia(): void {
    const head = this.#ring.peek();
    // The common case: media at the head, O(1). A control item at the head needs a scan.
    const index = head !== undefined && this.#isMedia(head)
      ? 0
      : this.#ring.findIndex(this.#isMedia);
    if (index < 0) return;
    this.#ring.removeAt(index);
    this.#media--;
    this.#drops++;
  }
}
