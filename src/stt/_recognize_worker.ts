/**
 * The Google session's degraded path when streaming cannot be opened: the shared
 * `UtteranceQueue` (energy-cut utterances sent one at a time, in order, a failed one resent after a
 * backoff) with `Recognize` as its request. One error event per outage, a fatal one when
 * `Recognize` refuses an utterance for good; finals as they come.
 */
import type { Logger } from "../observe/log.ts";
import type { SegmenterOptions } from "./_segmenter.ts";
import { UtteranceQueue } from "./_utterance_queue.ts";
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

export class RecognizeWorker extends UtteranceQueue<readonly RecognizedText[]> {
  constructor(options: RecognizeWorkerOptions) {
    const { emit, log } = options;
    super({
      provider: "google",
      send: options.recognize,
      retry: { firstMs: options.retryFirstMs, maxMs: options.retryMaxMs },
      segmenter: options.segmenter,
      log,
      signal: options.signal,
      onResult: (texts, _utterance, recovered) => {
        if (recovered) {
          log.info("STT", "recognize recovered", {
            after_ms: recovered.ms,
            failures: recovered.failures,
          });
        }
        for (const { text, confidence } of texts) {
          if (text !== "") emit({ type: "final", text, confidence });
        }
      },
      onFailure: (error, utterance, { failures, waitMs, queued }) => {
        if (waitMs === null) {
          // Sending the same audio again cannot help (e.g. the language is refused).
          log.warn("STT", "recognize refused", { category: error.category });
          emit({ type: "error", error, fatal: true });
          return;
        }
        if (failures === 1) emit({ type: "error", error, fatal: false });
        log.warn("STT", "recognize failed, will resend", {
          category: error.category,
          ms: Math.round(utterance.audio.length / 8),
          queued,
          retry_ms: waitMs,
        });
      },
    });
  }
}
