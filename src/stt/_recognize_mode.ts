/**
 * A session's per-utterance `Recognize` periods, and the way back to streaming. While a period is
 * on, each batch goes to a `RecognizeWorker`, and the session's ring keeps all the audio the worker
 * has not had recognized yet (from its `unrecognizedFrom`): utterances waiting for a resend after a
 * failed call, the one in flight, and the one being cut. From time to time (after `resumeFirstMs`,
 * then doubling up to `resumeMaxMs`) a `StreamProbe` tries streaming again. When its stream is up,
 * `leave()` stops the worker (a call in flight is abandoned, its result ignored) and the session
 * replays the ring into the stream, which thus starts exactly where `Recognize` stopped: no word
 * recognized twice, none lost.
 */
import type { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";
import { backoffMs } from "../providers/policy.ts";
import type { AudioRing } from "./_audio_ring.ts";
import { type RecognizedText, RecognizeWorker } from "./_recognize_worker.ts";
import {
  type Response,
  type Stream,
  StreamProbe,
  type StreamProbeOptions,
} from "./_stream_probe.ts";
import type { Timer, Timers } from "./_timers.ts";
import type { SttTuning } from "./_tuning.ts";
import type { SttEvent } from "./types.ts";

export interface RecognizeModeDeps {
  /** The session's replay ring; the session appends every batch, this trims it. */
  readonly ring: AudioRing;
  readonly recognize: (
    audio: Uint8Array,
    options: { signal: AbortSignal },
  ) => Promise<readonly RecognizedText[]>;
  readonly emit: (event: SttEvent) => void;
  /** Where probes open streams: endpoints, `openStream` and the streaming config. */
  readonly probe: Pick<StreamProbeOptions, "endpoints" | "openStream" | "streamingConfig">;
  /** A probe's stream answered: the session takes it (after calling `leave()`). */
  readonly onStream: (stream: Stream, endpoint: number, first: Response | null) => void;
  readonly tuning: SttTuning;
  /** The session's timers (all cleared when it closes). */
  readonly timers: Timers;
  readonly log: Logger;
  /** Aborts every `Recognize` call (session shutdown). */
  readonly signal: AbortSignal;
}

export class RecognizeMode {
  readonly #deps: RecognizeModeDeps;
  #worker: RecognizeWorker | null = null;
  /** Ring offset of the worker's first byte (its segmenter counts from there). */
  #workerBase = 0;
  #probe: StreamProbe | null = null;
  #probeTimer: Timer | null = null;
  #probeDue = false;
  #stopped = false;
  /** Streaming retries planned since streaming was last healthy. */
  #retries = 0;
  /** The last wait before a streaming retry (ms). */
  #delayMs = 0;

  constructor(deps: RecognizeModeDeps) {
    this.#deps = deps;
  }

  /** Whether a period is on. */
  get active(): boolean {
    return this.#worker !== null;
  }

  /**
   * Starts a period: the ring's audio (not covered by any final) goes to a new worker first, so
   * nothing said while failing over is lost; the next streaming retry is scheduled.
   */
  enter(error: ProviderError): void {
    const { ring, recognize, emit, log, tuning, signal } = this.#deps;
    emit({ type: "error", error, fatal: false });
    log.warn("STT", "streaming unavailable, using per-utterance recognize", {
      category: error.category,
    });
    const worker = new RecognizeWorker({
      recognize,
      emit,
      log,
      signal,
      retryFirstMs: tuning.recognizeRetryFirstMs,
      retryMaxMs: tuning.recognizeRetryMaxMs,
    });
    this.#worker = worker;
    this.#workerBase = ring.begin;
    for (let at = ring.begin; at < ring.end;) {
      const chunk = ring.read(at, ring.end - at);
      worker.push(chunk);
      at += chunk.length;
    }
    this.#trim();
    this.#schedule();
  }

  /** A batch the session has just appended to the ring. Never waits. */
  push(chunk: Uint8Array): void {
    const worker = this.#worker;
    if (!worker) return;
    worker.push(chunk);
    // The bound: the unrecognized audio must fit in the ring, or the ring would drop it unseen.
    const { ring } = this.#deps;
    const limit = ring.capacity - chunk.length;
    while (ring.end - (this.#workerBase + worker.unrecognizedFrom) > limit) {
      if (!worker.dropOldest("backlog_full")) break;
    }
    this.#trim();
    this.#maybeProbe();
  }

  /**
   * Ends the period (a probe's stream is up): the worker stops, and everything it had not had
   * recognized is still in the ring, from which the session replays it into the stream.
   */
  leave(): void {
    // Utterances recognized since the last batch are in the ring until trimmed: trim first, or the
    // stream would hear them again.
    this.#trim();
    const worker = this.#worker;
    this.#worker = null;
    this.#cancelProbe();
    worker?.stop();
  }

  /** Streaming has proved healthy: the next period's first retry waits `resumeFirstMs` again. */
  resetBackoff(): void {
    this.#retries = 0;
  }

  /**
   * The call is ending: no more retries; the current worker's last utterance is flushed, and every
   * worker's queued utterances are recognized (at most `timeoutMs`).
   */
  async drain(timeoutMs: number): Promise<void> {
    this.stop();
    await this.#worker?.drain(timeoutMs);
  }

  /** No more retries (a stream being opened is cancelled). */
  stop(): void {
    this.#stopped = true;
    this.#cancelProbe();
  }

  /** Keeps in the ring exactly the audio not recognized yet. */
  #trim(): void {
    if (this.#worker) this.#deps.ring.trimTo(this.#workerBase + this.#worker.unrecognizedFrom);
  }

  /** Plans the next streaming retry: `resumeFirstMs`, then doubling up to `resumeMaxMs`. */
  #schedule(): void {
    if (this.#stopped) return;
    const { resumeFirstMs, resumeMaxMs } = this.#deps.tuning;
    // Exact waits (no jitter): one session's retries, whose next_ms the log states.
    this.#delayMs = backoffMs(++this.#retries, { firstMs: resumeFirstMs, maxMs: resumeMaxMs });
    this.#probeTimer = this.#deps.timers.later(this.#delayMs, () => {
      this.#probeTimer = null;
      this.#probeDue = true;
      this.#maybeProbe();
    });
  }

  /**
   * Starts a due retry at an utterance boundary while `Recognize` works (no call it made is
   * wasted), or at once while `Recognize` fails too. Until the stream is up, audio keeps going to
   * `Recognize`; the hand-over is safe whenever it comes, since the ring holds everything not
   * recognized yet.
   */
  #maybeProbe(): void {
    const worker = this.#worker;
    if (!this.#probeDue || this.#probe || this.#stopped || !worker) return;
    if (!worker.idle && !worker.failing) return;
    this.#probeDue = false;
    const { probe: where, tuning, log, onStream } = this.#deps;
    const probe: StreamProbe = new StreamProbe({
      ...where,
      acceptMs: tuning.acceptGraceMs,
      log,
      onOpen: (stream, endpoint, first) => {
        if (this.#probe === probe) this.#probe = null;
        onStream(stream, endpoint, first);
      },
      onFailed: (error) => {
        if (this.#probe !== probe) return;
        this.#probe = null;
        this.#schedule();
        log.warn("STT", "streaming retry failed, still using per-utterance recognize", {
          category: error.category,
          next_ms: this.#delayMs,
        });
      },
    });
    this.#probe = probe;
    probe.start();
  }

  #cancelProbe(): void {
    this.#probeDue = false;
    if (this.#probeTimer !== null) this.#deps.timers.cancel(this.#probeTimer);
    this.#probeTimer = null;
    this.#probe?.cancel();
    this.#probe = null;
  }
}
