/**
 * A `SpeechSession` for recognizers that take whole utterances (OpenAI-compatible transcription):
 * the shared `UtteranceQueue` (the mechanism under the Google per-utterance fallback too) cuts the
 * call's audio with Kav's VAD and transcribes each utterance in order, one at a time, off the media
 * path (`write` only segments and enqueues).
 *
 * No utterance is lost silently. A request that fails and may be retried is tried again, after
 * `retryFirstMs` doubling up to `retryMaxMs`, until it answers; later utterances wait behind it, so
 * finals keep the caller's order. An utterance is given up only when the server refuses it for good
 * (a 4xx other than 408/429), when more than `maxPendingMs` of audio waits (the oldest goes), or when
 * the call ends before it could be transcribed; each of those is logged with the audio lost and
 * counted in `kav_stt_dropped_utterances_total` and `kav_stt_dropped_audio_seconds_total`. Every
 * failed request is an error event (one per request, as the call records them).
 */
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import { EventQueue } from "./_event_queue.ts";
import type { SegmenterOptions } from "./_segmenter.ts";
import { UtteranceQueue } from "./_utterance_queue.ts";
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

/** Bytes of μ-law per millisecond. */
const BYTES_PER_MS = 8;

export class UtteranceSession implements SpeechSession {
  readonly ready: Promise<void> = Promise.resolve();
  readonly #o: UtteranceSessionOptions;
  readonly #events: EventQueue<SttEvent>;
  readonly #queue: UtteranceQueue<string>;
  #closing: Promise<void> | null = null;

  constructor(options: UtteranceSessionOptions) {
    this.#o = options;
    const { provider, tuning, log, now } = options;
    const events = new EventQueue<SttEvent>(tuning.eventCapacity);
    this.#events = events;
    this.#queue = new UtteranceQueue<string>({
      provider,
      send: (audio, { signal }) =>
        options.transcribe(audio, {
          signal,
          onPartial: (partial) => {
            if (!signal.aborted && partial.trim() !== "") {
              events.push({ type: "partial", text: partial, stability: 0.5 });
            }
          },
        }),
      retry: { firstMs: tuning.retryFirstMs, maxMs: tuning.retryMaxMs },
      maxPendingBytes: tuning.maxPendingMs * BYTES_PER_MS,
      segmenter: options.segmenter,
      log,
      signal: options.signal,
      now,
      onQueued: (utterance) => {
        log.info("STT", "utterance queued", {
          provider,
          ms: Math.round(utterance.audio.length / BYTES_PER_MS),
          pending: this.#queue.pending,
        });
      },
      onResult: (text, utterance) => {
        metrics.sttFinalLatencyObserved(provider, (now() - utterance.queuedAt) / 1000);
        const final = text.trim();
        if (final !== "") events.push({ type: "final", text: final, confidence: 0 });
      },
      onFailure: (error, utterance, { waitMs }) => {
        events.push({ type: "error", error, fatal: false });
        if (waitMs === null) return; // given up next, logged as a loss
        log.warn("STT", "transcription failed, retrying", {
          provider,
          category: error.category,
          attempt: utterance.attempts,
          next_ms: waitMs,
          ms: Math.round(utterance.audio.length / BYTES_PER_MS),
        });
      },
    });
  }

  /** Utterances waiting or being transcribed. */
  get pending(): number {
    return this.#queue.pending;
  }

  write(mulaw: Uint8Array): void {
    this.#queue.push(mulaw);
  }

  results(): AsyncIterable<SttEvent> {
    return this.#events;
  }

  /**
   * Sends the utterance in progress, waits (at most `closeTimeoutMs`) for every waiting utterance
   * to be transcribed, then gives up the rest (logged and counted) and ends `results()`.
   */
  close(): Promise<void> {
    this.#closing ??= this.#queue.drain(this.#o.tuning.closeTimeoutMs).then(() =>
      this.#events.end()
    );
    return this.#closing;
  }
}
