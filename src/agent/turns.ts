/**
 * Turn-taking for one call: a pure state machine over VAD transitions and STT events, with an
 * injected clock. It decides when the caller's turn ended and when the caller barges in.
 *
 * Rules (all times in ms on `clock.now()`, which must be the clock the VAD's `atMs` is on):
 * - **Partials** are debounced: `partial(text)` fires once no newer partial arrived for
 *   `partial_debounce_ms`, and never after the utterance's final.
 * - **End of turn** comes from the STT final, or — when the final is slow — `timeout_ms` after the
 *   later of the last partial and the VAD's speech end, if the VAD is still silent then (text =
 *   last partial). Caller speech (VAD start) cancels the timeout; a new partial re-arms it.
 * - **One turn per utterance.** After a timeout-decided turn, the utterance's final only fires
 *   `final(text)`. It opens a second turn only if the VAD heard the caller speak again after the
 *   decision and the final's text differs from the decided text; that turn's text is the part
 *   after the decided text when the final starts with it, else the whole final.
 * - **Barge-in** fires once per agent utterance, at the VAD's speech onset while
 *   `setAgentSpeaking(true)` is in force (`at` = onset time), so `clear` can go out ~40 ms after
 *   the caller starts. Waiting for a partial to confirm would cost Google's 300+ ms, past the
 *   100 ms budget; instead a partial is a fallback trigger when the VAD missed soft speech, and
 *   only for an utterance begun after the last turn (a late partial of the turn being answered
 *   never cuts the agent). Speech already in progress when the agent starts does not fire.
 */
import type { SttConfig } from "../config/types.ts";
import type { SttEvent } from "../stt/types.ts";
import { createVad, type Vad, type VadTransition } from "../audio/vad.ts";

/** Time source and one-shot timers; tests pass a fake. */
export interface TurnClock {
  /** Current time, ms. */
  now(): number;
  /** Runs `fn` after `ms` milliseconds; the returned function cancels it. */
  setTimer(ms: number, fn: () => void): () => void;
}

/** `performance.now()` and `setTimeout`. */
export const systemClock: TurnClock = {
  now: () => performance.now(),
  setTimer(ms, fn) {
    const id = setTimeout(fn, ms);
    return () => clearTimeout(id);
  },
};

/** A decided caller turn. Times in ms on the detector's clock. */
export interface EndOfTurn {
  readonly text: string;
  /** What decided it: the STT final, the partial timeout, or keys typed on the keypad. */
  readonly reason: "final" | "timeout" | "keypad";
  /**
   * End of the caller's last voiced frame (VAD): the VAD's speech end, or the last voiced frame
   * while the VAD is still in its hangover; null when the VAD heard no speech.
   */
  readonly speechEndAt: number | null;
  readonly decidedAt: number;
  /** When the STT final arrived; null for a timeout-decided turn. */
  readonly finalAt: number | null;
}

export interface BargeIn {
  /** Caller speech onset (VAD), or the partial's arrival when a partial triggered it. */
  readonly at: number;
  readonly cause: "vad" | "partial";
}

/** Outputs; handlers run synchronously inside the input call (or timer) and must not throw. */
export interface TurnHandlers {
  partial?(text: string): void;
  final?(text: string): void;
  endOfTurn?(turn: EndOfTurn): void;
  bargeIn?(event: BargeIn): void;
}

export type TurnSettings = Pick<
  SttConfig,
  "partial_debounce_ms" | "timeout_ms" | "vad_hangover_ms"
>;

type Phase = "idle" | "open" | "decided";

function normalize(text: string): string {
  return text.trim().replace(/\s+/g, " ");
}

/** One call's turn detector. Inputs after `close()` are ignored. */
export class TurnDetector {
  readonly #settings: TurnSettings;
  readonly #on: TurnHandlers;
  readonly #clock: TurnClock;
  readonly #vad: Vad;
  #phase: Phase = "idle";
  #closed = false;
  #callerSpeaking = false;
  #agentSpeaking = false;
  #bargeArmed = false;
  #lastPartial = "";
  #speechEndAt: number | null = null;
  #decidedText = "";
  #spokeAfterDecision = false;
  #pendingPartial: string | null = null;
  #lastEmittedPartial = "";
  #cancelDebounce: (() => void) | null = null;
  #cancelTimeout: (() => void) | null = null;

  constructor(
    settings: TurnSettings,
    handlers: TurnHandlers,
    options: { readonly clock?: TurnClock } = {},
  ) {
    this.#settings = settings;
    this.#on = handlers;
    this.#clock = options.clock ?? systemClock;
    this.#vad = createVad(settings);
  }

  /** Whether the VAD currently hears the caller. */
  get callerSpeaking(): boolean {
    return this.#callerSpeaking;
  }

  /** Whether the agent is marked as speaking. */
  get agentSpeaking(): boolean {
    return this.#agentSpeaking;
  }

  /**
   * Runs one 20 ms μ-law frame starting at `atMs` through the detector's own VAD (built from
   * `vad_hangover_ms`) and feeds the transition, if any, to `vad()`.
   */
  pushAudio(frame: Uint8Array, atMs: number): VadTransition | null {
    if (this.#closed) return null;
    const transition = this.#vad.push(frame, atMs);
    if (transition !== null) this.vad(transition);
    return transition;
  }

  /** A VAD transition (from `pushAudio` or an external VAD). */
  vad(transition: VadTransition): void {
    if (this.#closed) return;
    switch (transition.type) {
      case "speechStart":
        this.#callerSpeaking = true;
        // A speech end belongs to the speech before it: never carry it into a later turn.
        this.#speechEndAt = null;
        this.#stopTimeout();
        if (this.#phase === "idle") this.#openUtterance();
        else if (this.#phase === "decided") this.#spokeAfterDecision = true;
        if (this.#agentSpeaking && this.#bargeArmed) this.#bargeIn(transition.atMs, "vad");
        return;
      case "speechEnd":
        this.#callerSpeaking = false;
        this.#speechEndAt = transition.atMs;
        if (this.#phase === "open" && this.#lastPartial !== "") this.#armTimeout();
        return;
      default: {
        const unreachable: never = transition;
        throw new TypeError(`Cannot handle VAD transition "${JSON.stringify(unreachable)}"`);
      }
    }
  }

  /** One STT event. */
  stt(event: SttEvent): void {
    if (this.#closed) return;
    switch (event.type) {
      case "partial":
        return this.#onPartial(normalize(event.text));
      case "final":
        return this.#onFinal(normalize(event.text));
      case "restart":
      case "error":
        // A replaced stream replays its audio, so a pending final may still come: keep state.
        return;
      default: {
        const unreachable: never = event;
        throw new TypeError(`Cannot handle STT event "${JSON.stringify(unreachable)}"`);
      }
    }
  }

  /** Marks agent playback on/off; turning it on re-arms barge-in. */
  setAgentSpeaking(speaking: boolean): void {
    if (this.#closed) return;
    this.#agentSpeaking = speaking;
    this.#bargeArmed = speaking;
  }

  /** Cancels timers; later inputs are ignored. Idempotent. */
  close(): void {
    this.#closed = true;
    this.#stopTimeout();
    this.#stopDebounce();
  }

  #openUtterance(): void {
    this.#phase = "open";
    this.#lastPartial = "";
    this.#speechEndAt = null;
    this.#lastEmittedPartial = "";
  }

  /** After a final: a caller still speaking has already begun the next utterance. */
  #endUtterance(): void {
    if (this.#callerSpeaking) {
      this.#openUtterance();
    } else {
      this.#phase = "idle";
      this.#lastPartial = "";
    }
  }

  #onPartial(text: string): void {
    if (text === "") return;
    if (this.#phase === "idle") this.#openUtterance();
    this.#pendingPartial = text;
    this.#stopDebounce();
    this.#cancelDebounce = this.#clock.setTimer(this.#settings.partial_debounce_ms, () => {
      this.#cancelDebounce = null;
      this.#flushPartial();
    });
    if (this.#phase !== "open") return;
    this.#lastPartial = text;
    if (!this.#callerSpeaking) this.#armTimeout();
    if (this.#agentSpeaking && this.#bargeArmed) this.#bargeIn(this.#clock.now(), "partial");
  }

  #flushPartial(): void {
    const text = this.#pendingPartial;
    this.#pendingPartial = null;
    if (text === null || text === this.#lastEmittedPartial) return;
    this.#lastEmittedPartial = text;
    this.#on.partial?.(text);
  }

  #onFinal(finalText: string): void {
    const now = this.#clock.now();
    this.#stopDebounce();
    this.#pendingPartial = null;
    this.#stopTimeout();
    if (finalText !== "") this.#on.final?.(finalText);
    if (this.#phase === "decided") return this.#finishDecided(finalText, now);
    const text = finalText !== "" ? finalText : this.#lastPartial;
    const speechEndAt = this.#speechEnd();
    this.#endUtterance();
    if (text === "") return;
    this.#on.endOfTurn?.({ text, reason: "final", speechEndAt, decidedAt: now, finalAt: now });
  }

  /** The final of an utterance whose turn the timeout already decided. */
  #finishDecided(finalText: string, now: number): void {
    const decided = this.#decidedText;
    const resumed = this.#spokeAfterDecision;
    this.#decidedText = "";
    this.#spokeAfterDecision = false;
    if (!resumed || finalText === "" || finalText === decided) {
      // A plain duplicate. Speech heard since the decision is then its own utterance, and the
      // speech end the VAD reported for it (if any) is kept.
      this.#phase = resumed ? "open" : "idle";
      this.#lastPartial = "";
      return;
    }
    const rest = finalText.startsWith(decided) ? finalText.slice(decided.length).trim() : "";
    const text = rest !== "" ? rest : finalText;
    const speechEndAt = this.#speechEnd();
    this.#endUtterance();
    this.#on.endOfTurn?.({ text, reason: "final", speechEndAt, decidedAt: now, finalAt: now });
  }

  /**
   * The caller's speech end for a turn decided now: the VAD's, or — when the final beat the VAD's
   * hangover (the usual case: the final comes as the audio ends) — the end of the last voiced
   * frame the detector's own VAD heard.
   */
  #speechEnd(): number | null {
    if (this.#speechEndAt !== null || !this.#callerSpeaking) return this.#speechEndAt;
    return this.#vad.lastVoicedEndMs;
  }

  #armTimeout(): void {
    this.#stopTimeout();
    this.#cancelTimeout = this.#clock.setTimer(this.#settings.timeout_ms, () => {
      this.#cancelTimeout = null;
      this.#decideByTimeout();
    });
  }

  #decideByTimeout(): void {
    if (this.#phase !== "open" || this.#callerSpeaking || this.#lastPartial === "") return;
    const text = this.#lastPartial;
    this.#phase = "decided";
    this.#decidedText = text;
    this.#spokeAfterDecision = false;
    this.#on.endOfTurn?.({
      text,
      reason: "timeout",
      speechEndAt: this.#speechEndAt,
      decidedAt: this.#clock.now(),
      finalAt: null,
    });
  }

  #bargeIn(at: number, cause: BargeIn["cause"]): void {
    this.#bargeArmed = false;
    this.#on.bargeIn?.({ at, cause });
  }

  #stopTimeout(): void {
    this.#cancelTimeout?.();
    this.#cancelTimeout = null;
  }

  #stopDebounce(): void {
    this.#cancelDebounce?.();
    this.#cancelDebounce = null;
  }
}
