/** A binary min-heap of task slots keyed by deadline; slots know their index so removal is O(log n). */

/** One task's heap entry, allocated once per task. */
export interface TaskSlot {
  deadline: number;
  /** Position in the heap array, -1 when not scheduled. */
  index: number;
  readonly run: (now: number) => void;
  readonly onError: (error: unknown) => void;
}

export class TaskHeap {
  readonly #items: TaskSlot[] = [];

  get size(): number {
    return this.#items.length;
  }

  peek(): TaskSlot | undefined {
    return this.#items[0];
  }

  /** Inserts the slot, or moves it if already scheduled. */
  set(slot: TaskSlot, deadline: number): void {
    if (Number.isNaN(deadline)) throw new RangeError(`Cannot schedule a task at "${deadline}"`);
    if (slot.index >= 0) {
      const old = slot.deadline;
      slot.deadline = deadline;
      if (deadline < old) this.#up(slot.index);
      else this.#down(slot.index);
      return;
    }
    slot.deadline = deadline;
    slot.index = this.#items.length;
    this.#items.push(slot);
    this.#up(slot.index);
  }

  remove(slot: TaskSlot): void {
    const i = slot.index;
    if (i < 0) return;
    const items = this.#items;
    const last = items.pop() as TaskSlot;
    slot.index = -1;
    if (last === slot) return;
    items[i] = last;
    last.index = i;
    this.#up(i);
    this.#down(last.index);
  }

  #up(i: number): void {
    const items = this.#items;
    const slot = items[i];
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = items[parent];
      if (p.deadline <= slot.deadline) break;
      items[i] = p;
      p.index = i;
      i = parent;
    }
    items[i] = slot;
    slot.index = i;
  }

  #down(i: number): void {
    const items = this.#items;
    const n = items.length;
    const slot = items[i];
    for (;;) {
      const left = 2 * i + 1;
      if (left >= n) break;
      const right = left + 1;
      const child = right < n && items[right].deadline < items[left].deadline ? right : left;
      if (items[child].deadline >= slot.deadline) break;
      items[i] = items[child];
      items[i].index = i;
      i = child;
    }
    items[i] = slot;
    slot.index = i;
  }
}
