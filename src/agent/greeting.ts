/**
 * The greeting (SPEC 2): the cached audio queued into the TX queue when the call starts, followed by
 * the mark `greeting_end`, and recorded once as an agent turn. `Greeting` is its one owner: it
 * queues it, knows while it plays, and records it when its mark comes back as played, when the
 * caller barges into it, or when the call ends first.
 *
 * By the marks rule (what the caller heard counts, what was generated does not), a greeting whose
 * mark never came back as played is recorded as not heard and leaves the LLM history.
 */
import { frameCount } from "../audio/frames.ts";
import type { AgentContext, MarkEcho } from "../call/agent.ts";
import type { ChatMessage } from "../llm/types.ts";

/** The mark queued after the greeting (SPEC 2). */
export const GREETING_MARK = "greeting_end";

export interface GreetingOptions {
  /** `call.greeting`: what the audio says ("" for none). */
  readonly text: string;
  /**
   * The cached audio, raw μ-law 8000 Hz; null when boot could not synthesize it. Without audio the
   * mark still goes out (so the call's start looks the same) and nothing is recorded.
   */
  readonly audio: Uint8Array | null;
  /** Numbers the greeting's turn among the call's turns (called once, when it is recorded). */
  readonly nextTurnIndex: () => number;
}

export class Greeting {
  readonly #ctx: AgentContext;
  readonly #nextTurnIndex: () => number;
  /** The greeting as the LLM sees it; empty when there is nothing to record or it was not heard. */
  #history: readonly ChatMessage[];
  /** Text and start (epoch ms) while it waits to be recorded; null once recorded or when none. */
  #pending: { readonly text: string; readonly startedAt: number } | null;
  #playing = true;

  /**
   * Queues the greeting and its mark now (the first frames synchronously, so the TX worker sends
   * them at once) and logs `GREETING queued`.
   */
  static start(ctx: AgentContext, options: GreetingOptions): Greeting {
    const audio = options.audio ?? new Uint8Array(0);
    const ignore = () => {};
    // Both reject only when the call ends first.
    ctx.out.play(audio, { signal: ctx.signal }).catch(ignore);
    ctx.out.mark(GREETING_MARK, { signal: ctx.signal }).catch(ignore);
    ctx.log.info("CALL", "GREETING queued", { frames: frameCount(audio.length) });
    return new Greeting(ctx, options);
  }

  /**
   * No greeting: the stream connects back a caller after a failed transfer (SPEC 6), and the agent
   * speaks first with what it knows instead. Nothing is queued or recorded.
   */
  static skip(ctx: AgentContext, nextTurnIndex: () => number): Greeting {
    const greeting = new Greeting(ctx, { text: "", audio: null, nextTurnIndex });
    greeting.#playing = false;
    return greeting;
  }

  private constructor(ctx: AgentContext, options: GreetingOptions) {
    this.#ctx = ctx;
    this.#nextTurnIndex = options.nextTurnIndex;
    // Without audio nothing was said.
    const said = options.text !== "" && options.audio !== null;
    this.#pending = said ? { text: options.text, startedAt: Date.now() } : null;
    this.#history = said ? [{ role: "assistant", content: options.text }] : [];
  }

  /** True until its mark comes back (played or cleared) or the caller barges in. */
  get playing(): boolean {
    return this.#playing;
  }

  /** The greeting as LLM history: one assistant message, unless there was none or it was not heard. */
  history(): readonly ChatMessage[] {
    return this.#history;
  }

  /** Takes the greeting's mark echo; false for any other mark. */
  onMark(name: string, echo: MarkEcho): boolean {
    if (name !== GREETING_MARK) return false;
    this.#playing = false;
    // A cleared echo follows a clear: either a barge-in, which already recorded it as cut, or an
    // answer superseded while it played; then `close()` records it as not heard.
    if (echo.played) this.#record({ heard: true, cut: false });
    return true;
  }

  /** The caller barged in: it stops playing and is recorded as cut, not heard. */
  cut(): void {
    this.#playing = false;
    this.#record({ heard: false, cut: true });
  }

  /** The call is ending: a greeting not recorded yet was never heard (its mark never came back). */
  close(): void {
    this.#record({ heard: false, cut: false });
  }

  /** Records the greeting as an agent turn, once. */
  #record(how: { heard: boolean; cut: boolean }): void {
    const pending = this.#pending;
    if (pending === null) return;
    this.#pending = null;
    if (!how.heard) this.#history = [];
    const ctx = this.#ctx;
    ctx.store.turnCompleted(ctx.callSid, {
      index: this.#nextTurnIndex(),
      speaker: "agent",
      text: how.heard ? pending.text : "",
      generated: how.heard ? null : pending.text,
      cut: how.cut,
      startedAt: pending.startedAt,
      endedAt: Date.now(),
      timings: null,
    });
  }
}
