/** The timers one owner started, so that all of them can be cleared at once when it closes. */
export type Timer = ReturnType<typeof setTimeout>;

export class Timers {
  readonly #ids = new Set<Timer>();

  /** Runs `fn` after `ms` milliseconds unless cancelled or cleared first. */
  later(ms: number, fn: () => void): Timer {
    const id = setTimeout(() => {
      this.#ids.delete(id);
      fn();
    }, ms);
    this.#ids.add(id);
    return id;
  }

  cancel(id: Timer): void {
    clearTimeout(id);
    this.#ids.delete(id);
  }

  clear(): void {
    for (const id of this.#ids) clearTimeout(id);
    this.#ids.clear();
  }
}
