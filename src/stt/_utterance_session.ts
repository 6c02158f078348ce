/**
 * A `SpeechSession` for recognizers that take whole utterances (OpenAI-compatible transcription):
 * Kav's own VAD segmentation (`Segmenter`, the one the Google per-utterance fallback uses) cuts the
 * call's audio into utterances, and each is transcribed in order, one at a time, off the media
 * path (`write` only segments and enqueues).
 *
 * No utterance is lost silently. A request that fails and may be retried is tried again, after
 * `retryFirstMs` doubling up to `retryMaxMs`, until it answers; later utterances wait behind it, so
 * finals keep the caller's order. An utterance is given up only when the server refuses it for good
 * (a 4xx other than 408/429), when more than `maxPendingMs` of audio waits (the oldest goes), or when
 * the call ends before it could be transcribed; each of those is logged with the audio lost and
 * counted in `kav_stt_dropped_utterances_total` and `kav_stt_dropped_audio_seconds_total`.
 */
import { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import { EventQueue } from "./_event_queue.ts";
import { Segmenter, type SegmenterOptions } from "./_segmenter.ts";
import type { SpeechSession, SttEvent } from "./types.ts";

/** One transcription request; resolves with the text (maybe empty), rejects with a ProviderError. */
export type Transcribe = (
  utterance: Uint8Array,
  options: { readonly signal: AbortSignal; readonly onPartial: (text: string) => void },
) => Promise<string>;

/** Retry and buffering numbers, in one frozen object (STYLE pattern 7). */
export interface UtteranceTuning {
  /** Wait before the first retry of a failed request (ms); doubled for each next one. */
  readonly retryFirstMs: number;
  /** Longest wait between retries (ms). */
  readonly retryMaxMs: number;
  /** Audio waiting for transcription at most (ms of μ-law); past it the oldest is dropped. */
  readonly maxPendingMs: number;
  /** `close()` waits this long for the last utterances to be transcribed (ms). */
  readonly closeTimeoutMs: number;
  readonly eventCapacity: number;
}

export const UTTERANCE_TUNING: UtteranceTuning = Object.freeze({
  retryFirstMs: 250,
  retryMaxMs: 1000,
  maxPendingMs: 120_000,
  // Within the call core's 2 s cap on closing the speech session.
  closeTimeoutMs: 1500,
  eventCapacity: 256,
});

export interface UtteranceSessionOptions {
  /** Provider name for metrics ("openai"). */
  readonly provider: string;
  readonly transcribe: Transcribe;
  readonly segmenter: Partial<SegmenterOptions>;
  readonly tuning: UtteranceTuning;
  readonly log: Logger;
  /** The call's signal: aborting stops every request at once. */
  readonly signal: AbortSignal;
  /** Clock in ms. */
  readonly now: () => number;
}

interface Utterance {
  readonly audio: Uint8Array;
  /** When the segmenter cut it (ms, `now()`). */
  readonly cutAt: number;
  attempts: number;
  /** Aborts its request in flight when it is dropped. */
  readonly dropped: AbortController;
}

/** Bytes of μ-law per millisecond. */
const BYTES_PER_MS = 8;

export class UtteranceSession implements SpeechSession {
  readonly ready: Promise<void> = Promise.resolve();
  readonly #o: UtteranceSessionOptions;
  readonly #segmenter: Segmenter;
  readonly #events: EventQueue<SttEvent>;
  /** Oldest first; the head is the one being transcribed. Touched once per utterance. */
  readonly #pending: Utterance[] = [];
  #pendingBytes = 0;
  #running: Promise<void> | null = null;
  #closing: Promise<void> | null = null;
  #ended = false;

  constructor(options: UtteranceSessionOptions) {
    this.#o = options;
    this.#segmenter = new Segmenter(options.segmenter);
    this.#events = new EventQueue<SttEvent>(options.tuning.eventCapacity);
  }

  /** Utterances waiting or being transcribed. */
  get pending(): number {
    return this.#pending.length;
  }

  write(mulaw: Uint8Array): void {
    if (this.#ended) return;
    for (const { audio } of this.#segmenter.push(mulaw)) this.#enqueue(audio);
  }

  results(): AsyncIterable<SttEvent> {
    return this.#events;
  }

  /**
   * Sends the utterance in progress, waits (at most `closeTimeoutMs`) for every waiting utterance
   * to be transcribed, then gives up the rest (logged and counted) and ends `results()`.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const last = this.#segmenter.flush();
    if (last !== null && !this.#o.signal.aborted) this.#enqueue(last.audio);
    this.#ended = true;
    const running = this.#running;
    if (running !== null && !this.#o.signal.aborted) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        running,
        new Promise<void>((resolve) => timer = setTimeout(resolve, this.#o.tuning.closeTimeoutMs)),
      ]);
      clearTimeout(timer);
    }
    // Dropping aborts the request in flight and the retry wait, so the worker ends at once.
    for (const utterance of [...this.#pending]) this.#drop(utterance, "call_ended");
    await running;
    this.#events.end();
  }

  #enqueue(audio: Uint8Array): void {
    const { tuning, log, provider } = this.#o;
    const utterance: Utterance = {
      audio,
      cutAt: this.#o.now(),
      attempts: 0,
      dropped: new AbortController(),
    };
    this.#pending.push(utterance);
    this.#pendingBytes += audio.length;
    while (this.#pendingBytes > tuning.maxPendingMs * BYTES_PER_MS && this.#pending.length > 1) {
      this.#drop(this.#pending[0], "backlog");
    }
    log.info("STT", "utterance queued", {
      provider,
      ms: Math.round(audio.length / BYTES_PER_MS),
      pending: this.#pending.length,
    });
    this.#running ??= this.#run().finally(() => this.#running = null);
  }

  /** Gives `utterance` up: out of the queue, its request aborted, the loss logged and counted. */
  #drop(utterance: Utterance, reason: "backlog" | "refused" | "call_ended"): void {
    const at = this.#pending.indexOf(utterance);
    if (at < 0) return;
    this.#pending.splice(at, 1);
    this.#pendingBytes -= utterance.audio.length;
    utterance.dropped.abort();
    const seconds = utterance.audio.length / BYTES_PER_MS / 1000;
    metrics.sttUtteranceDropped(this.#o.provider, reason, seconds);
    this.#o.log.error("STT", "utterance dropped, its words are lost", {
      provider: this.#o.provider,
      reason,
      ms: Math.round(seconds * 1000),
      attempts: utterance.attempts,
    });
  }

  async #run(): Promise<void> {
    const { signal, tuning, provider, log } = this.#o;
    let delay = tuning.retryFirstMs;
    while (this.#pending.length > 0 && !signal.aborted) {
      const utterance = this.#pending[0];
      utterance.attempts++;
      const request = AbortSignal.any([signal, utterance.dropped.signal]);
      try {
        const text = await this.#o.transcribe(utterance.audio, {
          signal: request,
          onPartial: (partial) => {
            if (!request.aborted && partial.trim() !== "") {
              this.#events.push({ type: "partial", text: partial, stability: 0.5 });
            }
          },
        });
        if (request.aborted) continue;
        this.#pending.shift();
        this.#pendingBytes -= utterance.audio.length;
        delay = tuning.retryFirstMs;
        metrics.sttFinalLatencyObserved(provider, (this.#o.now() - utterance.cutAt) / 1000);
        const final = text.trim();
        if (final !== "") this.#events.push({ type: "final", text: final, confidence: 0 });
      } catch (error) {
        if (signal.aborted) return;
        if (utterance.dropped.signal.aborted) continue;
        const mapped = error instanceof ProviderError
          ? error
          : new ProviderError("stt", "server", "Cannot transcribe an utterance", { cause: error });
        this.#events.push({ type: "error", error: mapped, fatal: false });
        if (!mapped.retryable) {
          this.#drop(utterance, "refused");
          continue;
        }
        metrics.sttRetried(provider);
        log.warn("STT", "transcription failed, retrying", {
          provider,
          category: mapped.category,
          attempt: utterance.attempts,
          next_ms: delay,
          ms: Math.round(utterance.audio.length / BYTES_PER_MS),
        });
        await this.#sleep(delay, request);
        delay = Math.min(delay * 2, tuning.retryMaxMs);
      }
    }
  }

  /** Waits `ms`, or less when `signal` aborts (call ended, utterance dropped). */
  #sleep(ms: number, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
    });
  }
}
