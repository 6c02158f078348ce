/**
 * `server.max_calls` as places to take: a `CallManager` takes one for each media socket it accepts
 * and gives it back when the call has ended. With call workers (SPEC 8) every worker's manager
 * takes from the same process-wide count (`src/workers/shared_state.ts`), so a burst spread over
 * the workers can never admit more than `max_calls`.
 */

export interface CallAdmission {
  /** `server.max_calls`. */
  readonly max: number;
  /** Takes a place; false when all are taken. */
  tryTake(): boolean;
  /** Gives back a place taken by `tryTake`. */
  give(): void;
  /** Places taken now, over the whole process. */
  taken(): number;
  /** A process-wide connection number, for the `conn-N` name a call has before `start`. */
  nextConnection(): number;
}

/** The count of one event loop (calls on the main thread, `server.workers = 1`). */
export class LocalAdmission implements CallAdmission {
  readonly max: number;
  #taken = 0;
  #connections = 0;

  constructor(max: number) {
    this.max = max;
  }

  tryTake(): boolean {
    if (this.#taken >= this.max) return false;
    this.#taken++;
    return true;
  }

  give(): void {
    if (this.#taken > 0) this.#taken--;
  }

  taken(): number {
    return this.#taken;
  }

  nextConnection(): number {
    return ++this.#connections;
  }
}
