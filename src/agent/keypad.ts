/**
 * Keypad input (SPEC 6): DTMF digits gathered into one caller turn. `#` ends the input at once (it
 * is not part of it); otherwise a pause of `pauseMs` after the last key does. A long run of keys is
 * cut at `MAX_KEYPAD_DIGITS`.
 */
import type { TurnClock } from "./turns.ts";

/** The pause after the last key that ends the input, ms. */
export const KEYPAD_PAUSE_MS = 1500;
export const MAX_KEYPAD_DIGITS = 32;

/** What the model reads for keys the caller typed. */
export function keypadMessage(digits: string): string {
  return `(The caller typed on the phone keypad: ${digits === "" ? "#" : digits})`;
}

export class KeypadGatherer {
  readonly #clock: TurnClock;
  readonly #pauseMs: number;
  readonly #onInput: (digits: string, startedAt: number) => void;
  #digits = "";
  #startedAt = 0;
  #cancel: (() => void) | null = null;
  #closed = false;

  /** `onInput` gets the digits and when the first key came (clock ms). */
  constructor(
    clock: TurnClock,
    onInput: (digits: string, startedAt: number) => void,
    options: { pauseMs?: number } = {},
  ) {
    this.#clock = clock;
    this.#onInput = onInput;
    this.#pauseMs = options.pauseMs ?? KEYPAD_PAUSE_MS;
  }

  /** One key ("0"-"9", "*", "#", "A"-"D"). */
  press(digit: string): void {
    if (this.#closed) return;
    if (this.#digits === "" && this.#cancel === null) this.#startedAt = this.#clock.now();
    this.#cancel?.();
    this.#cancel = null;
    if (digit === "#") return this.#submit();
    this.#digits += digit;
    if (this.#digits.length >= MAX_KEYPAD_DIGITS) return this.#submit();
    this.#cancel = this.#clock.setTimer(this.#pauseMs, () => {
      this.#cancel = null;
      this.#submit();
    });
  }

  close(): void {
    this.#closed = true;
    this.#cancel?.();
    this.#cancel = null;
  }

  #submit(): void {
    const digits = this.#digits;
    this.#digits = "";
    this.#onInput(digits, this.#startedAt);
  }
}
