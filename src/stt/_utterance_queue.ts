/**
 * The one per-utterance recognition mechanism, under both the Google `Recognize` fallback
 * (`_recognize_worker.ts`) and the OpenAI-compatible transcription (`_utterance_session.ts`): Kav's
 * VAD (`Segmenter`) cuts the audio into utterances, and each is sent, one at a time and in order,
 * off the media path (`push` only segments and enqueues; it never waits). An utterance whose request
 * fails with a retryable error stays at the head of the queue and is sent again after the provider
 * policy's backoff (`retry`), so an outage delays words but loses none, and later utterances wait
 * behind it. Audio is given up only past a bound (`maxPendingBytes`, or the owner's `dropOldest`),
 * when the provider refuses it for good, or when the call ends first; each loss is logged and
 * counted with its length (`reportAudioLost`).
 */
import { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import { retry, type RetryPolicy } from "../providers/policy.ts";
import { Segmenter, type SegmenterOptions, type Utterance } from "./_segmenter.ts";

/** Bytes of μ-law per millisecond. */
const BYTES_PER_MS = 8;

/** Share of a resend's wait drawn at random (see `RetryPolicy.jitter`). */
export const RESEND_JITTER = 0.2;

/** Why audio was given up; the `reason` of `kav_stt_dropped_utterances_total`. */
export type AudioLossReason = "backlog_full" | "refused" | "call_ended" | "replay_buffer_full";

/** Audio given up: `attempts` is set when it was a queued utterance (requests made for it). */
export interface AudioLoss {
  readonly provider: string;
  readonly bytes: number;
  readonly reason: AudioLossReason;
  readonly attempts?: number;
}

/** Logs (`[STT] ... audio lost ms=N reason=R`) and counts `bytes` of μ-law given up. */
export function reportAudioLost(log: Logger, loss: AudioLoss): void {
  const { provider, bytes, reason, attempts } = loss;
  if (bytes <= 0) return;
  metrics.sttUtteranceDropped(provider, reason, bytes / (BYTES_PER_MS * 1000));
  log.error("STT", attempts === undefined ? "audio lost" : "utterance dropped, audio lost", {
    provider,
    ms: Math.round(bytes / BYTES_PER_MS),
    reason,
    attempts,
  });
}

/** An utterance in the queue. */
export interface QueuedUtterance extends Utterance {
  /** When it was queued (ms, the queue's clock). */
  readonly queuedAt: number;
  /** Requests made for it so far. */
  attempts: number;
}

export interface UtteranceQueueOptions<R> {
  /** The `provider` label of the STT metrics ("google", "openai"). */
  readonly provider: string;
  /** One request for one utterance; rejects with a `ProviderError` (anything else is retried). */
  readonly send: (audio: Uint8Array, options: { signal: AbortSignal }) => Promise<R>;
  /**
   * Wait before a resend: `firstMs` doubling to `maxMs` while the same utterance keeps failing,
   * `jitter` (default `RESEND_JITTER`) drawn at random so that calls cut off together by one outage
   * do not all come back at once.
   */
  readonly retry: Pick<RetryPolicy, "firstMs" | "maxMs" | "jitter">;
  /** Audio waiting at most (bytes of μ-law); past it the oldest utterance goes. Default: no bound. */
  readonly maxPendingBytes?: number;
  readonly segmenter?: Partial<SegmenterOptions>;
  readonly log: Logger;
  /** The owner's signal: aborting stops every request and wait at once. */
  readonly signal: AbortSignal;
  /** Clock in ms (`queuedAt`). */
  readonly now?: () => number;
  readonly onQueued?: (utterance: QueuedUtterance) => void;
  /**
   * `utterance`'s answer, in queue order. `recovered`: the failed requests before it in a row and
   * how long they lasted (ms), or null when the last request did not fail.
   */
  readonly onResult: (
    result: R,
    utterance: QueuedUtterance,
    recovered: { readonly failures: number; readonly ms: number } | null,
  ) => void;
  /**
   * A request for `utterance` failed: `waitMs` is the wait before it is sent again, or null when
   * the failure is final and the utterance is given up next. `failures`: failed requests in a row;
   * `queued`: utterances waiting, this one included.
   */
  readonly onFailure: (
    error: ProviderError,
    utterance: QueuedUtterance,
    next: { readonly failures: number; readonly waitMs: number | null; readonly queued: number },
  ) => void;
}

export class UtteranceQueue<R> {
  readonly #o: UtteranceQueueOptions<R>;
  readonly #segmenter: Segmenter;
  readonly #now: () => number;
  /** Not recognized yet, oldest first; the head may be in flight. Touched once per utterance. */
  readonly #pending: QueuedUtterance[] = [];
  #pendingBytes = 0;
  #running: Promise<void> | null = null;
  /** Aborts the head's request in flight and its backoff wait (`stop`, the head given up). */
  #attempt: AbortController | null = null;
  /** Failed requests in a row; 0 once one succeeds. */
  #failures = 0;
  #failingSince = 0;
  /** `stop()`: nothing more is sent or reported. */
  #stopped = false;
  /** `drain()` began: no more audio is taken. */
  #ending = false;

  constructor(options: UtteranceQueueOptions<R>) {
    this.#o = options;
    this.#segmenter = new Segmenter(options.segmenter);
    this.#now = options.now ?? (() => performance.now());
  }

  /** No utterance is being cut, none waits and no request is in flight. */
  get idle(): boolean {
    return !this.#segmenter.inSpeech && this.#pending.length === 0 && this.#running === null;
  }

  /** The last request failed: its utterance waits to be sent again. */
  get failing(): boolean {
    return this.#failures > 0;
  }

  /** Utterances waiting (the one in flight included). */
  get pending(): number {
    return this.#pending.length;
  }

  /**
   * Offset (bytes since the first `push`) of the oldest audio not recognized yet: the oldest queued
   * utterance, else the open point of the segmenter. Audio from there on is lost if the queue stops
   * now, so an owner with a replay buffer keeps it.
   */
  get unrecognizedFrom(): number {
    return this.#pending[0]?.start ?? this.#segmenter.openFrom;
  }

  /** Feeds audio; completed utterances are queued. Never waits. */
  push(mulaw: Uint8Array): void {
    if (this.#stopped || this.#ending) return;
    for (const utterance of this.#segmenter.push(mulaw)) this.#enqueue(utterance);
  }

  /** Gives up the oldest utterance (aborting its request if in flight); false if none. */
  dropOldest(reason: AudioLossReason): boolean {
    const head = this.#pending[0];
    if (!head) return false;
    this.#drop(head, reason);
    return true;
  }

  /**
   * Takes no more audio, aborts the request in flight and forgets every queued utterance without
   * reporting a loss: the owner still has their audio (a replay ring). A later answer is ignored.
   */
  stop(): void {
    this.#stopped = true;
    this.#pending.length = 0;
    this.#pendingBytes = 0;
    this.#attempt?.abort();
  }

  /**
   * Ends the audio (the utterance being cut is queued) and waits, at most `timeoutMs` and not at all
   * once the owner's signal is aborted, for the queue to empty; what is still queued then is given
   * up and reported, one loss per utterance.
   */
  async drain(timeoutMs: number): Promise<void> {
    const { signal } = this.#o;
    if (!this.#stopped && !this.#ending && !signal.aborted) {
      const last = this.#segmenter.flush();
      if (last) this.#enqueue(last);
    }
    this.#ending = true;
    const running = this.#running;
    if (running && !signal.aborted) {
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
    for (const utterance of [...this.#pending]) this.#drop(utterance, "call_ended");
    this.stop();
    await this.#running;
  }

  #enqueue(cut: Utterance): void {
    if (this.#o.signal.aborted) return;
    const utterance: QueuedUtterance = { ...cut, queuedAt: this.#now(), attempts: 0 };
    this.#pending.push(utterance);
    this.#pendingBytes += utterance.audio.length;
    const max = this.#o.maxPendingBytes ?? Infinity;
    while (this.#pendingBytes > max && this.#pending.length > 1) {
      this.#drop(this.#pending[0], "backlog_full");
    }
    this.#o.onQueued?.(utterance);
    this.#running ??= this.#run().finally(() => this.#running = null);
  }

  /** Out of the queue (its request aborted when it is the head), the loss logged and counted. */
  #drop(utterance: QueuedUtterance, reason: AudioLossReason): void {
    const at = this.#pending.indexOf(utterance);
    if (at < 0) return;
    this.#pending.splice(at, 1);
    this.#pendingBytes -= utterance.audio.length;
    // Only the head is ever in flight or waiting to be resent: its attempt is now stale.
    if (at === 0) this.#attempt?.abort();
    reportAudioLost(this.#o.log, {
      provider: this.#o.provider,
      bytes: utterance.audio.length,
      reason,
      attempts: utterance.attempts,
    });
  }

  async #run(): Promise<void> {
    const { signal } = this.#o;
    while (!this.#stopped && !signal.aborted) {
      const head = this.#pending[0];
      if (!head) return;
      const attempt = new AbortController();
      this.#attempt = attempt;
      const request = AbortSignal.any([signal, attempt.signal]);
      let result: R;
      try {
        result = await retry((n) => this.#send(head, n, request), {
          ...this.#o.retry,
          jitter: this.#o.retry.jitter ?? RESEND_JITTER,
          attempts: Infinity,
          signal: request,
          onRetry: (error, _n, waitMs) => this.#failed(error, head, waitMs),
        });
      } catch (error) {
        // Stopped, or this utterance was given up while in flight or waiting: nothing to do.
        if (request.aborted || this.#pending[0] !== head) continue;
        // Final (`retry` passes on only what sending again cannot help, e.g. a refused language).
        const final = error as ProviderError;
        this.#o.onFailure(final, head, {
          failures: this.#failures,
          waitMs: null,
          queued: this.#pending.length,
        });
        this.#drop(head, "refused");
        continue;
      }
      if (request.aborted || this.#pending[0] !== head) continue; // a stale answer
      this.#pending.shift();
      this.#pendingBytes -= head.audio.length;
      const recovered = this.#failures === 0
        ? null
        : { failures: this.#failures, ms: Math.round(this.#now() - this.#failingSince) };
      this.#failures = 0;
      this.#o.onResult(result, head, recovered);
    }
  }

  /** One request; a failure that is no `ProviderError` (and no abort) counts as a server fault. */
  #send(head: QueuedUtterance, attempt: number, signal: AbortSignal): Promise<R> {
    head.attempts = attempt;
    return this.#o.send(head.audio, { signal }).catch((error: unknown) => {
      if (signal.aborted || error instanceof ProviderError) throw error;
      throw new ProviderError("stt", "server", "Cannot recognize an utterance", { cause: error });
    });
  }

  #failed(error: ProviderError, head: QueuedUtterance, waitMs: number): void {
    if (this.#failures++ === 0) this.#failingSince = this.#now();
    metrics.sttRetried(this.#o.provider);
    this.#o.onFailure(error, head, {
      failures: this.#failures,
      waitMs,
      queued: this.#pending.length,
    });
  }
}
