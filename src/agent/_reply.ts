/**
 * One agent answer: the LLM stream is read into sentences by one task while a second task turns
 * each sentence into audio (TTS) and queues it with a mark after it. Reading never waits on
 * playback, so a slow TX queue cannot look like an LLM stall. Marks tell what the caller heard.
 *
 * Tools (SPEC 6): every request offers the tools; text the model streams before its calls is
 * spoken at once, the calls run (`_tool_round.ts`), their results go back as `tool` messages and
 * the next answer streams as usual, up to `MAX_TOOL_ROUNDS` rounds (the last request offers none).
 * A built-in action (`end_call`, `transfer_call`) leaves the answer holding it; the conversation
 * carries it out once everything spoken was heard.
 */
import { ProviderError } from "../errors.ts";
import { SentenceCutter } from "../llm/sentences.ts";
import type { ChatMessage, LlmProvider, ToolCall } from "../llm/types.ts";
import { retry, type RetryPolicy } from "../providers/policy.ts";
import type { TurnTimings } from "../store/types.ts";
import type { TtsProvider } from "../tts/types.ts";
import type { AgentContext, CallAction } from "../call/agent.ts";
import type { ToolBox, ToolCaller } from "./tools.ts";
import { ToolRound } from "./_tool_round.ts";
import { firstChunk, once, raceAbort } from "./_streams.ts";
import type { EndOfTurn, TurnClock } from "./turns.ts";

/** Requests of one answer that offer tools; the one after them offers none, so it must speak. */
export const MAX_TOOL_ROUNDS = 4;

export interface ReplyOptions {
  readonly id: number;
  readonly turn: EndOfTurn;
  /** The messages to send, read once `before` settled (earlier answers' tools have results). */
  readonly history: () => readonly ChatMessage[];
  readonly before: Promise<unknown>;
  /** The model's functions; null or none offered: a plain answer. */
  readonly tools: ToolBox | null;
  readonly caller: ToolCaller;
  /** `call.filler_after_ms`. */
  readonly fillerAfterMs: number;
  /** A tool's cached filler audio (boot-time), or null (then it is synthesized). */
  readonly fillerAudio: (tool: string) => Uint8Array | null;
  readonly ctx: AgentContext;
  readonly llm: LlmProvider;
  readonly tts: TtsProvider;
  /** Cached apology audio (boot-time); null when it could not be synthesized. */
  readonly apology: Uint8Array | null;
  readonly apologyText: string;
  readonly clock: TurnClock;
  /** Called when audio first gets queued, so turn-taking knows the agent speaks. */
  readonly onSpeaking: () => void;
}

/** A sentence to speak, the cached apology after a provider failure, or a tool's filler. */
interface SpokenItem {
  readonly text: string;
  readonly apology: boolean;
  /** The request (0-based) it was spoken in (a filler: the one whose tools it covered). */
  readonly round: number;
  readonly filler?: boolean;
  /** Cached audio, played instead of synthesizing `text`. */
  readonly audio?: Uint8Array | null;
}

/** A sentence's TTS: one retry of a retryable failure, after a short jittered wait (a live call). */
const TTS_RETRY: RetryPolicy = Object.freeze({
  attempts: 2,
  firstMs: 100,
  maxMs: 100,
  jitter: 0.5,
});

/** Starts the answer at once; see the module comment. */
export function speakReply(options: ReplyOptions): AgentReply {
  return new AgentReply(options);
}

export class AgentReply {
  readonly done: Promise<void>;
  readonly startedAtEpoch = Date.now();
  /** Set by the conversation once the turn is in the store. */
  recorded = false;
  #cut = false;
  readonly #o: ReplyOptions;
  readonly #controller = new AbortController();
  readonly #signal: AbortSignal;
  readonly #items: SpokenItem[] = [];
  #itemsEnded = false;
  #wakeSpeaker: (() => void) | null = null;
  /** Mark name → index of the spoken item it follows. */
  readonly #marks = new Map<string, number>();
  readonly #played = new Set<number>();
  readonly #spoken: SpokenItem[] = [];
  #echoesPending = 0;
  #pipelineDone = false;
  #audioQueued = false;
  #llmStartAt = 0;
  #firstTokenAt: number | null = null;
  #firstSentenceAt: number | null = null;
  #ttsStartAt: number | null = null;
  #ttsAudioAt: number | null = null;
  #firstFrameAt: number | null = null;
  /** First frame of the answer proper (not a filler). */
  #answerFrameAt: number | null = null;
  readonly #rounds: ToolRound[] = [];
  #fillerUsed = false;
  /** The request being read (0-based). */
  #round = 0;
  /** Provider time before the first sentence: LLM requests and tool waits, ms. */
  #providerMs = 0;
  #providerToFirstSentence: number | null = null;

  constructor(options: ReplyOptions) {
    this.#o = options;
    this.#signal = AbortSignal.any([options.ctx.signal, this.#controller.signal]);
    this.done = Promise.all([this.#readLlm(), this.#speak()]).then(() => {
      this.#pipelineDone = true;
    });
  }

  /** The built-in action the model chose (transfer or hang-up), once its round settled. */
  get action(): CallAction | null {
    for (const round of this.#rounds) if (round.action !== null) return round.action;
    return null;
  }

  /** The caller interrupted before the action: the history will say it was not done. */
  cancelAction(): void {
    for (const round of this.#rounds) if (round.action !== null) round.cancelAction();
  }

  /** Settles when every tool this answer called has its outcome (tools outlive a cut answer). */
  toolsSettled(): Promise<unknown> {
    return Promise.all(this.#rounds.map((round) => round.settled));
  }

  /**
   * What this answer adds to the history, after `toolsSettled()`: per tool round the heard text
   * before the calls (a filler said while they ran included) with the calls and their results,
   * then the heard rest (an apology included: the caller heard it).
   */
  historyMessages(): ChatMessage[] {
    const out: ChatMessage[] = [];
    const heard = (round: number) =>
      this.#spoken.filter((item, i) => item.round === round && this.#played.has(i))
        .map((item) => item.text).join(" ");
    let last = -1;
    for (const round of this.#rounds) {
      out.push(...round.messages(heard(round.round)));
      last = round.round;
    }
    const rounds = new Set(this.#spoken.map((item) => item.round).filter((r) => r > last));
    const rest = [...rounds].sort((a, b) => a - b).map(heard).filter((t) => t !== "").join(" ");
    if (rest !== "") out.push({ role: "assistant", content: rest });
    return out;
  }

  get cut(): boolean {
    return this.#cut;
  }

  /** The reply's number in its call (marks are named `a<id>_<index>`). */
  get id(): number {
    return this.#o.id;
  }

  /** Items queued for playback, those whose marks came back as played, and apologies among them. */
  counts(): { spoken: number; played: number; apology: number } {
    return {
      spoken: this.#spoken.length,
      played: this.#played.size,
      apology: this.#spoken.filter((item) => item.apology).length,
    };
  }

  /** Some audio of this answer reached the TX queue. */
  get audioQueued(): boolean {
    return this.#audioQueued;
  }

  /** Everything was queued (or the answer was cancelled) and every sent mark came back. */
  get finished(): boolean {
    return this.#pipelineDone && this.#echoesPending === 0;
  }

  ownsMark(name: string): boolean {
    return this.#marks.has(name);
  }

  markEchoed(name: string, played: boolean): void {
    const index = this.#marks.get(name);
    if (index === undefined) return;
    this.#marks.delete(name);
    this.#echoesPending--;
    if (played && !this.#cut) this.#played.add(index);
  }

  /** Stops the LLM, TTS and queueing (the caller clears the TX queue). Idempotent. */
  cancel(): void {
    if (!this.#controller.signal.aborted) {
      this.#controller.abort(new DOMException("cut", "AbortError"));
    }
    this.#wakeSpeaker?.();
  }

  /** From now on nothing more counts as heard: the reply was cut by barge-in. */
  markCut(): void {
    this.#cut = true;
  }

  /** The sentences whose marks came back as played, in order: what the caller heard. */
  heardText(): string {
    const parts: string[] = [];
    for (let i = 0; i < this.#spoken.length; i++) {
      if (this.#played.has(i)) parts.push(this.#spoken[i].text);
    }
    return parts.join(" ");
  }

  generatedText(): string {
    return this.#spoken.map((item) => item.text).join(" ");
  }

  timings(): TurnTimings {
    const turn = this.#o.turn;
    const speechEnd = turn.speechEndAt;
    const frame = this.#firstFrameAt;
    const llmSpan = this.#firstSentenceAt === null ? 0 : this.#firstSentenceAt - this.#llmStartAt;
    const ttsSpan = this.#ttsStartAt === null || this.#ttsAudioAt === null
      ? 0
      : this.#ttsAudioAt - this.#ttsStartAt;
    return {
      end_of_turn_delay: speechEnd === null ? null : turn.decidedAt - speechEnd,
      stt_final_delay: speechEnd === null || turn.finalAt === null
        ? null
        : turn.finalAt - speechEnd,
      llm_ttft: this.#firstTokenAt === null ? null : this.#firstTokenAt - this.#llmStartAt,
      tts_ttfb: this.#ttsStartAt === null || this.#ttsAudioAt === null ? null : ttsSpan,
      e2e_latency: frame === null ? null : frame - (speechEnd ?? turn.decidedAt),
      // The answer after a filler waited for the filler to play: that is not Kav's delay.
      server_latency: this.#answerFrameAt === null || this.#fillerUsed
        ? null
        : this.#answerFrameAt - turn.decidedAt - (this.#providerToFirstSentence ?? llmSpan) -
          ttsSpan,
    };
  }

  #push(item: SpokenItem): void {
    this.#items.push(item);
    this.#wakeSpeaker?.();
  }

  #endItems(): void {
    this.#itemsEnded = true;
    this.#wakeSpeaker?.();
  }

  async #readLlm(): Promise<void> {
    const { ctx, clock } = this.#o;
    this.#llmStartAt = clock.now();
    let spokeText = false;
    try {
      // Earlier answers' tools must have their results in the history first (bounded by their
      // timeouts); a new turn cancelling this one stops the wait.
      await raceAbort(this.#o.before, this.#signal);
      const base = this.#o.history();
      const extra: ChatMessage[] = [];
      const specs = this.#o.tools?.specs ?? [];
      for (let round = 0;; round++) {
        this.#round = round;
        const offer = specs.length > 0 && round < MAX_TOOL_ROUNDS && this.action === null;
        const roundStart = clock.now();
        const firstBefore = this.#firstSentenceAt;
        const cutter = new SentenceCutter();
        let text = "";
        let calls: readonly ToolCall[] | null = null;
        const push = (sentence: string) => {
          this.#firstSentenceAt ??= clock.now();
          spokeText = true;
          this.#push({ text: sentence, apology: false, round });
        };
        for await (
          const delta of this.#o.llm.stream([...base, ...extra], {
            signal: this.#signal,
            log: ctx.log,
            tools: offer ? specs : undefined,
          })
        ) {
          if (typeof delta !== "string") {
            calls = delta.calls;
            continue;
          }
          if (this.#firstTokenAt === null) this.#firstTokenAt = clock.now();
          text += delta;
          for (const sentence of cutter.push(delta)) push(sentence);
        }
        const rest = cutter.flush();
        if (rest !== null) push(rest);
        if (firstBefore === null && this.#firstSentenceAt !== null) {
          this.#providerToFirstSentence = this.#providerMs + (this.#firstSentenceAt - roundStart);
        }
        // Calls the request did not offer tools for (a server that ignores that) are not run.
        if (!offer || calls === null || calls.length === 0 || this.#o.tools === null) break;
        const roundEnd = clock.now();
        const toolRound = new ToolRound(round, {
          tools: this.#o.tools,
          calls,
          caller: this.#o.caller,
          ctx,
          clock,
          fillerAfterMs: this.#fillerUsed ? null : this.#o.fillerAfterMs,
          onFiller: (tool, filler) => this.#filler(tool, filler),
        });
        this.#rounds.push(toolRound);
        const outcomes = await raceAbort(toolRound.settled, this.#signal);
        if (this.#providerToFirstSentence === null) {
          this.#providerMs += roundEnd - roundStart + toolRound.waitMs;
        }
        extra.push(...toolRound.messages(text.trim()));
        // The goodbye (or the word about the transfer) was said with the call: done. Else one
        // more request, offering no tools, for it.
        if (outcomes.some((o) => o.action !== null) && spokeText) break;
      }
      if (!spokeText && this.action === null) {
        // Silence on a phone line is a fault too: an empty answer gets the apology.
        throw new ProviderError("llm", "server", "Streaming chat completion returned no text");
      }
    } catch (error) {
      if (!this.#signal.aborted) {
        this.#providerFailed("llm", error);
        this.#firstSentenceAt ??= clock.now();
        this.#push({ text: this.#o.apologyText, apology: true, round: this.#round });
      }
    } finally {
      this.#endItems();
      if (this.#signal.aborted && !ctx.signal.aborted) ctx.log.info("LLM", "answer cancelled");
    }
  }

  /** A tool is slow: its filler (cached at boot) is spoken once, before the answer. */
  #filler(tool: string, text: string): void {
    if (this.#fillerUsed || this.#signal.aborted) return;
    this.#fillerUsed = true;
    this.#o.ctx.log.info("TOOL", "filler", { name: tool });
    this.#push({
      text,
      apology: false,
      round: this.#round,
      filler: true,
      audio: this.#o.fillerAudio(tool),
    });
  }

  async #speak(): Promise<void> {
    let next = 0;
    while (!this.#signal.aborted) {
      if (next < this.#items.length) {
        const item = this.#items[next++];
        const ok = await this.#speakItem(item).catch((error) => {
          if (!this.#signal.aborted) {
            this.#o.ctx.log.error("TTS", "speaking failed", { error: String(error) });
          }
          return false;
        });
        if (!ok) {
          this.cancel();
          return;
        }
        continue;
      }
      if (this.#itemsEnded) return;
      await new Promise<void>((resolve) => (this.#wakeSpeaker = resolve));
      this.#wakeSpeaker = null;
    }
  }

  /**
   * TTS (a retryable failure retried once), then the apology; queues the audio (as it arrives,
   * when the provider streams) and a mark. False: stop speaking. An apology ends the answer: what
   * would follow it no longer fits. A stream that breaks after some audio was queued keeps that
   * audio and its mark, then the apology follows.
   */
  async #speakItem(item: SpokenItem): Promise<boolean> {
    let spoken = item;
    let audio = item.apology
      ? once(await this.#apologyAudio())
      : item.audio
      ? once(item.audio)
      : await this.#synthesize(item.text);
    if (audio === null && !item.apology && !this.#signal.aborted) {
      spoken = { text: this.#o.apologyText, apology: true, round: item.round };
      audio = once(await this.#apologyAudio());
    }
    const last = spoken.apology;
    if (audio === null || this.#signal.aborted) return false;
    const index = this.#spoken.length;
    this.#spoken.push(spoken);
    const out = this.#o.ctx.out;
    const first = !this.#audioQueued;
    this.#audioQueued = true;
    if (first) this.#o.onSpeaking();
    const answer = !spoken.filler && this.#answerFrameAt === null;
    let onFirstFrameSent = first || answer
      ? () => {
        const now = this.#o.clock.now();
        this.#firstFrameAt ??= now;
        if (answer) this.#answerFrameAt ??= now;
      }
      : undefined;
    let broken = false;
    try {
      for await (const chunk of audio) {
        const played = await out.play(chunk, { signal: this.#signal, onFirstFrameSent });
        if (!played) return false;
        onFirstFrameSent = undefined;
      }
    } catch (error) {
      if (this.#signal.aborted) return false;
      this.#providerFailed("tts", error);
      broken = true;
    }
    const name = `a${this.#o.id}_${index}`;
    this.#marks.set(name, index);
    this.#echoesPending++;
    if (!(await out.mark(name, { signal: this.#signal }))) {
      this.#marks.delete(name);
      this.#echoesPending--;
      return false;
    }
    if (broken && !last) {
      await this.#speakItem({ text: this.#o.apologyText, apology: true, round: item.round });
      return false;
    }
    return !last;
  }

  /** The cached apology; when boot could not cache it, one live attempt (TTS may be back). */
  async #apologyAudio(): Promise<Uint8Array | null> {
    if (this.#o.apology !== null) return this.#o.apology;
    if (this.#signal.aborted) return null;
    try {
      return await this.#o.tts.synthesize(this.#o.apologyText, { signal: this.#signal });
    } catch (error) {
      if (!this.#signal.aborted) this.#providerFailed("tts", error);
      return null;
    }
  }

  /**
   * The audio of `text`, retried per `TTS_RETRY` when the failure is retryable: whole from
   * `synthesize`, or from `stream` once its first chunk has come (a stream that fails before any
   * audio is retried like a failed request). Null when it failed for good or was cancelled.
   */
  async #synthesize(text: string): Promise<AsyncIterable<Uint8Array> | null> {
    const { clock, tts } = this.#o;
    const signal = this.#signal;
    if (signal.aborted) return null;
    try {
      return await retry(async () => {
        const startedAt = clock.now();
        const audio = tts.stream
          ? await firstChunk(tts.stream(text, { signal }))
          : once(await tts.synthesize(text, { signal }));
        if (this.#ttsStartAt === null) {
          this.#ttsStartAt = startedAt;
          this.#ttsAudioAt = clock.now();
        }
        return audio;
      }, { ...TTS_RETRY, signal, onRetry: (error) => this.#providerFailed("tts", error, true) });
    } catch (error) {
      if (!signal.aborted) this.#providerFailed("tts", error);
      return null;
    }
  }

  #providerFailed(provider: "llm" | "tts", error: unknown, willRetry = false): void {
    const { ctx } = this.#o;
    const category = error instanceof ProviderError ? error.category : "server";
    const message = error instanceof Error ? error.message : String(error);
    // The provider policy (src/providers/policy.ts) counts `kav_provider_errors_total`.
    ctx.log.warn(provider.toUpperCase(), willRetry ? "failed, retrying" : "failed", {
      category,
      error: message,
    });
    ctx.store.event(ctx.callSid, {
      kind: "provider_error",
      at: Date.now(),
      detail: `${provider} ${category}: ${message}`,
    });
  }
}
