/**
 * Mark bookkeeping for one stream. Twilio echoes a mark when the audio before it has played, and
 * also echoes every mark still buffered when it receives `clear`; the echo looks the same either
 * way, so we remember which marks were pending when we sent `clear` (twilio-media-streams.md 2).
 */
import type { MarkEcho } from "./agent.ts";

const PLAYED: MarkEcho = Object.freeze({ played: true });
const CLEARED: MarkEcho = Object.freeze({ played: false });

export class MarkTracker {
  /** Sent, not yet echoed, oldest first. Marks are per sentence, not per frame: an array is fine. */
  readonly #pending: string[] = [];
  /** Names pending when `clear` went out, with multiplicity. */
  readonly #cleared = new Map<string, number>();

  /** Names sent and not yet echoed, oldest first. */
  get pending(): readonly string[] {
    return this.#pending;
  }

  /** Marks awaiting an echo after a `clear`. */
  get clearedPending(): number {
    let n = 0;
    for (const count of this.#cleared.values()) n += count;
    return n;
  }

  /** The TX worker sent a mark. */
  sent(name: string): void {
    this.#pending.push(name);
  }

  /** The TX worker sent `clear`: every pending mark will come back, played or not. */
  clearSent(): void {
    for (const name of this.#pending) this.#cleared.set(name, (this.#cleared.get(name) ?? 0) + 1);
    this.#pending.length = 0;
  }

  /** Twilio echoed `name`. Returns how it relates to playback, or null for a mark we never sent. */
  echoed(name: string): MarkEcho | null {
    const count = this.#cleared.get(name);
    if (count !== undefined) {
      if (count <= 1) this.#cleared.delete(name);
      else this.#cleared.set(name, count - 1);
      return CLEARED;
    }
    const index = this.#pending.indexOf(name);
    if (index < 0) return null;
    this.#pending.splice(index, 1);
    return PLAYED;
  }
}
