/**
 * The degraded path when streaming cannot be opened: audio is cut into utterances by energy and each
 * utterance is sent to `Recognize` one at a time, off the media path (`push` only segments and
 * enqueues; it never waits). Policy when too many utterances wait: drop the oldest and count it.
 */
import { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";
import { Segmenter, type SegmenterOptions } from "./_segmenter.ts";
import type { SttEvent } from "./types.ts";

/** One transcript returned by a `Recognize` call. */
export interface RecognizedText {
  readonly text: string;
  readonly confidence: number;
}

export interface RecognizeWorkerOptions {
  /** One `Recognize` call; rejects with a `ProviderError`. */
  readonly recognize: (
    audio: Uint8Array,
    options: { signal: AbortSignal },
  ) => Promise<readonly RecognizedText[]>;
  readonly emit: (event: SttEvent) => void;
  readonly log: Logger;
  readonly signal: AbortSignal;
  /** Utterances waiting for a call at most. */
  readonly maxPending: number;
  readonly segmenter?: Partial<SegmenterOptions>;
}

export class RecognizeWorker {
  readonly #options: RecognizeWorkerOptions;
  #segmenter: Segmenter;
  readonly #pending: Uint8Array[] = [];
  #running: Promise<void> | null = null;
  #dropped = 0;
  #retired = false;

  constructor(options: RecognizeWorkerOptions) {
    this.#options = options;
    this.#segmenter = new Segmenter(options.segmenter);
  }

  /** Utterances discarded because too many were waiting. */
  get dropped(): number {
    return this.#dropped;
  }

  /** No utterance is being segmented, none waits and no `Recognize` call is in flight. */
  get idle(): boolean {
    return !this.#segmenter.inSpeech && this.#pending.length === 0 && this.#running === null;
  }

  /**
   * Offset (bytes since the first `push`) of the oldest audio not yet in a queued utterance (see
   * `Segmenter.openFrom`): audio from there on would not be recognized if the worker stopped now.
   */
  get openFrom(): number {
    return this.#segmenter.openFrom;
  }

  /** Feeds audio; completed utterances are queued for recognition. Never waits. */
  push(mulaw: Uint8Array): void {
    if (this.#retired) return;
    for (const utterance of this.#segmenter.push(mulaw)) this.#enqueue(utterance);
  }

  /**
   * Takes no more audio and forgets the utterance being segmented (its audio, from `openFrom`, went
   * elsewhere); the utterances already queued are still recognized and reported.
   */
  retire(): void {
    this.#retired = true;
    this.#segmenter = new Segmenter(this.#options.segmenter);
  }

  /** Ends the audio and waits (at most `timeoutMs`) for the queued utterances to be recognized. */
  async drain(timeoutMs: number): Promise<void> {
    const last = this.#segmenter.flush();
    if (last) this.#enqueue(last);
    const running = this.#running;
    if (!running) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        running,
        new Promise<void>((resolve) => timer = setTimeout(resolve, timeoutMs)),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  #enqueue(utterance: Uint8Array): void {
    if (this.#options.signal.aborted) return;
    if (this.#pending.length >= this.#options.maxPending) {
      // Not the 20 ms path: this runs once per utterance.
      this.#pending.shift();
      this.#dropped++;
      this.#options.log.warn("STT", "recognize backlog full, utterance dropped", {
        dropped: this.#dropped,
      });
    }
    this.#pending.push(utterance);
    this.#running ??= this.#run().finally(() => this.#running = null);
  }

  async #run(): Promise<void> {
    const { signal, emit, log } = this.#options;
    for (;;) {
      const audio = this.#pending.shift();
      if (!audio || signal.aborted) return;
      try {
        const texts = await this.#options.recognize(audio, { signal });
        for (const { text, confidence } of texts) {
          if (text !== "") emit({ type: "final", text, confidence });
        }
      } catch (error) {
        if (signal.aborted) return;
        const providerError = error instanceof ProviderError
          ? error
          : new ProviderError("stt", "server", "Cannot recognize utterance", { cause: error });
        log.warn("STT", "recognize failed", {
          category: providerError.category,
          ms: Math.round(audio.length / 8),
        });
        emit({ type: "error", error: providerError, fatal: !providerError.retryable });
      }
    }
  }
}
