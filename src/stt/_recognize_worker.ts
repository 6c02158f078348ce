/**
 * The degraded path when streaming cannot be opened: audio is cut into utterances by energy and each
 * utterance is sent to `Recognize` one at a time, in order, off the media path (`push` only segments
 * and enqueues; it never waits). An utterance whose call fails with a retryable error stays at the
 * head of the queue and is sent again after a backoff, so an outage delays words but loses none.
 * Audio is given up only past a bound (the caller's `dropOldest`), when the provider refuses it for
 * good, or when the call ends first; every such loss is logged and counted with its length.
 */
import { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import { Segmenter, type SegmenterOptions, type Utterance } from "./_segmenter.ts";
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
  /** Wait before the first resend of a failed utterance (ms); doubles per failure up to `retryMaxMs`. */
  readonly retryFirstMs: number;
  readonly retryMaxMs: number;
  readonly segmenter?: Partial<SegmenterOptions>;
}

/** Why audio was given up; the `reason` of `kav_stt_dropped_utterances_total`. */
export type AudioLossReason = "backlog_full" | "refused" | "call_ended" | "replay_buffer_full";

/** Logs and counts `bytes` of μ-law given up for `reason`. */
export function reportAudioLost(log: Logger, bytes: number, reason: AudioLossReason): void {
  if (bytes <= 0) return;
  metrics.sttUtteranceDropped("google", reason, bytes / 8000);
  log.warn("STT", "audio lost", { ms: Math.round(bytes / 8), reason });
}

export class RecognizeWorker {
  readonly #options: RecognizeWorkerOptions;
  readonly #segmenter: Segmenter;
  /** Utterances not yet recognized, oldest first; the head may be in flight. */
  readonly #pending: Utterance[] = [];
  #running: Promise<void> | null = null;
  /** Aborts the call in flight and the backoff wait (`stop`, `dropOldest` of the head). */
  #attempt: AbortController | null = null;
  /** Failed calls in a row; 0 once a call succeeds. */
  #failures = 0;
  #failingSince = 0;
  #stopped = false;

  constructor(options: RecognizeWorkerOptions) {
    this.#options = options;
    this.#segmenter = new Segmenter(options.segmenter);
  }

  /** No utterance is being segmented, none waits and no `Recognize` call is in flight. */
  get idle(): boolean {
    return !this.#segmenter.inSpeech && this.#pending.length === 0 && this.#running === null;
  }

  /** The last `Recognize` call failed: its utterance waits to be sent again. */
  get failing(): boolean {
    return this.#failures > 0;
  }

  /** Utterances waiting to be recognized (the one in flight included). */
  get pending(): number {
    return this.#pending.length;
  }

  /**
   * Offset (bytes since the first `push`) of the oldest audio not recognized yet: the oldest queued
   * utterance, else the open point of the segmenter. Audio from there on is lost if the worker
   * stops now, so the session keeps it for replay.
   */
  get unrecognizedFrom(): number {
    return this.#pending[0]?.start ?? this.#segmenter.openFrom;
  }

  /** Feeds audio; completed utterances are queued for recognition. Never waits. */
  push(mulaw: Uint8Array): void {
    if (this.#stopped) return;
    for (const utterance of this.#segmenter.push(mulaw)) this.#enqueue(utterance);
  }

  /** Gives up the oldest queued utterance (aborting its call if in flight); false if none. */
  dropOldest(reason: AudioLossReason): boolean {
    const head = this.#pending.shift();
    if (!head) return false;
    // The head is the one in flight or waiting to be resent: its attempt is now stale.
    if (this.#running) this.#attempt?.abort();
    reportAudioLost(this.#options.log, head.audio.length, reason);
    return true;
  }

  /**
   * Takes no more audio, aborts the call in flight and forgets every queued utterance: their audio
   * is still in the session's ring, which a stream replays. A result that arrives later is ignored.
   */
  stop(): void {
    this.#stopped = true;
    this.#pending.length = 0;
    this.#attempt?.abort();
  }

  /**
   * Ends the audio and waits (at most `timeoutMs`) for the queued utterances to be recognized;
   * what is still queued then is lost, and reported.
   */
  async drain(timeoutMs: number): Promise<void> {
    if (!this.#stopped) {
      const last = this.#segmenter.flush();
      if (last) this.#enqueue(last);
    }
    const running = this.#running;
    if (running) {
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
    const left = this.#pending.reduce((sum, u) => sum + u.audio.length, 0);
    this.stop();
    reportAudioLost(this.#options.log, left, "call_ended");
  }

  #enqueue(utterance: Utterance): void {
    if (this.#options.signal.aborted) return;
    this.#pending.push(utterance);
    this.#running ??= this.#run().finally(() => this.#running = null);
  }

  async #run(): Promise<void> {
    const { signal, emit, log } = this.#options;
    while (!this.#stopped && !signal.aborted) {
      const head = this.#pending[0];
      if (!head) return;
      const attempt = new AbortController();
      this.#attempt = attempt;
      const callSignal = AbortSignal.any([signal, attempt.signal]);
      let texts: readonly RecognizedText[] | null = null;
      let failure: ProviderError | null = null;
      try {
        texts = await this.#options.recognize(head.audio, { signal: callSignal });
      } catch (error) {
        failure = error instanceof ProviderError
          ? error
          : new ProviderError("stt", "server", "Cannot recognize utterance", { cause: error });
      }
      // Stopped, or this utterance was given up while its call was in flight: the result is stale.
      if (callSignal.aborted || this.#pending[0] !== head) continue;
      if (texts !== null) {
        this.#pending.shift();
        if (this.#failures > 0) {
          log.info("STT", "recognize recovered", {
            after_ms: Math.round(performance.now() - this.#failingSince),
            failures: this.#failures,
          });
          this.#failures = 0;
        }
        for (const { text, confidence } of texts) {
          if (text !== "") emit({ type: "final", text, confidence });
        }
        continue;
      }
      const error = failure as ProviderError;
      if (!error.retryable) {
        // Sending the same audio again cannot help (e.g. the language is refused).
        this.#pending.shift();
        log.warn("STT", "recognize refused", { category: error.category });
        emit({ type: "error", error, fatal: true });
        reportAudioLost(log, head.audio.length, "refused");
        continue;
      }
      if (this.#failures++ === 0) {
        this.#failingSince = performance.now();
        emit({ type: "error", error, fatal: false });
      }
      const waitMs = Math.min(
        this.#options.retryMaxMs,
        this.#options.retryFirstMs * 2 ** (this.#failures - 1),
      );
      metrics.sttRetried("google");
      log.warn("STT", "recognize failed, will resend", {
        category: error.category,
        ms: Math.round(head.audio.length / 8),
        queued: this.#pending.length,
        retry_ms: waitMs,
      });
      await abortableSleep(waitMs, callSignal);
    }
  }
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
