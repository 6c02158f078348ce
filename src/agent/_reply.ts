/**
 * One agent answer: the LLM stream is read into sentences by one task while a second task turns
 * each sentence into audio (TTS) and queues it with a mark after it. Reading never waits on
 * playback, so a slow TX queue cannot look like an LLM stall. Marks tell what the caller heard.
 */
import { ProviderError } from "../errors.ts";
import { SentenceCutter } from "../llm/sentences.ts";
import type { ChatMessage, LlmProvider } from "../llm/types.ts";
import type { TurnTimings } from "../store/types.ts";
import type { TtsProvider } from "../tts/types.ts";
import type { AgentContext } from "../call/agent.ts";
import type { EndOfTurn, TurnClock } from "./turns.ts";

export interface ReplyOptions {
  readonly id: number;
  readonly turn: EndOfTurn;
  readonly history: readonly ChatMessage[];
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

/** A sentence to speak, or the cached apology after a provider failure. */
type SpokenItem = { readonly text: string; readonly apology: boolean };

const TTS_ATTEMPTS = 2;

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

  constructor(options: ReplyOptions) {
    this.#o = options;
    this.#signal = AbortSignal.any([options.ctx.signal, this.#controller.signal]);
    this.done = Promise.all([this.#readLlm(), this.#speak()]).then(() => {
      this.#pipelineDone = true;
    });
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
      server_latency: frame === null ? null : frame - turn.decidedAt - llmSpan - ttsSpan,
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
    const cutter = new SentenceCutter();
    this.#llmStartAt = clock.now();
    try {
      for await (
        const delta of this.#o.llm.stream(this.#o.history, { signal: this.#signal, log: ctx.log })
      ) {
        if (typeof delta !== "string") continue;
        if (this.#firstTokenAt === null) this.#firstTokenAt = clock.now();
        for (const sentence of cutter.push(delta)) {
          this.#firstSentenceAt ??= clock.now();
          this.#push({ text: sentence, apology: false });
        }
      }
      const rest = cutter.flush();
      if (rest !== null) {
        this.#firstSentenceAt ??= clock.now();
        this.#push({ text: rest, apology: false });
      }
      if (this.#firstSentenceAt === null) {
        // Silence on a phone line is a fault too: an empty answer gets the apology.
        throw new ProviderError("llm", "server", "Streaming chat completion returned no text");
      }
    } catch (error) {
      if (!this.#signal.aborted) {
        this.#providerFailed("llm", error);
        this.#firstSentenceAt ??= clock.now();
        this.#push({ text: this.#o.apologyText, apology: true });
      }
    } finally {
      this.#endItems();
      if (this.#signal.aborted && !ctx.signal.aborted) ctx.log.info("LLM", "answer cancelled");
    }
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
   * TTS (one retry), then the apology; queues the audio (as it arrives, when the provider streams)
   * and a mark. False: stop speaking. An apology ends the answer: what would follow it no longer
   * fits. A stream that breaks after some audio was queued keeps that audio and its mark, then
   * the apology follows.
   */
  async #speakItem(item: SpokenItem): Promise<boolean> {
    let spoken = item;
    let audio = item.apology ? once(await this.#apologyAudio()) : await this.#synthesize(item.text);
    if (audio === null && !item.apology && !this.#signal.aborted) {
      spoken = { text: this.#o.apologyText, apology: true };
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
    let onFirstFrameSent = first ? () => (this.#firstFrameAt ??= this.#o.clock.now()) : undefined;
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
      await this.#speakItem({ text: this.#o.apologyText, apology: true });
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
   * The audio of `text`, with one retry: whole from `synthesize`, or from `stream` once its first
   * chunk has come (a stream that fails before any audio is retried like a failed request).
   */
  async #synthesize(text: string): Promise<AsyncIterable<Uint8Array> | null> {
    const { clock, tts } = this.#o;
    for (let attempt = 1; attempt <= TTS_ATTEMPTS; attempt++) {
      if (this.#signal.aborted) return null;
      const startedAt = clock.now();
      try {
        const audio = tts.stream
          ? await firstChunk(tts.stream(text, { signal: this.#signal }))
          : once(await tts.synthesize(text, { signal: this.#signal }));
        if (this.#ttsStartAt === null) {
          this.#ttsStartAt = startedAt;
          this.#ttsAudioAt = clock.now();
        }
        return audio;
      } catch (error) {
        if (this.#signal.aborted) return null;
        this.#providerFailed("tts", error, attempt < TTS_ATTEMPTS);
      }
    }
    return null;
  }

  #providerFailed(provider: "llm" | "tts", error: unknown, willRetry = false): void {
    const { ctx } = this.#o;
    const category = error instanceof ProviderError ? error.category : "server";
    const message = error instanceof Error ? error.message : String(error);
    // The provider adapters count `kav_provider_errors_total` themselves.
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

/** `audio` as a one-chunk stream; null stays null. */
function once(audio: Uint8Array | null): AsyncIterable<Uint8Array> | null {
  if (audio === null) return null;
  return (async function* () {
    yield audio;
  })();
}

/** Waits for the first chunk of `stream` (rejecting as it does), then replays it before the rest. */
async function firstChunk(stream: AsyncIterable<Uint8Array>): Promise<AsyncIterable<Uint8Array>> {
  const iterator = stream[Symbol.asyncIterator]();
  const head = await iterator.next();
  return (async function* () {
    try {
      if (head.done) return;
      yield head.value;
      for (;;) {
        const next = await iterator.next();
        if (next.done) return;
        yield next.value;
      }
    } finally {
      // Stops the download when playing stopped early (barge-in, clear).
      await iterator.return?.();
    }
  })();
}
