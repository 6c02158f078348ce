/**
 * A session's per-utterance `Recognize` periods, and the way back to streaming. While a period is
 * on, each batch goes to a `RecognizeWorker` and the session's ring keeps only the audio that no
 * utterance queued for `Recognize` covers (from the worker's `openFrom`). From time to time (after
 * `resumeFirstMs`, then doubling up to `resumeMaxMs`) a `StreamProbe` tries streaming again, only
 * at an utterance boundary: nothing being segmented, queued or recognized. When the probe's stream
 * answers, `leave()` ends the period, and the session replays the ring into the stream, which thus
 * starts exactly where `Recognize` stopped: no word recognized twice, none lost.
 */
import type { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";
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
  /** Workers of earlier periods still recognizing the utterances they had queued. */
  readonly #retired = new Set<RecognizeWorker>();
  #probe: StreamProbe | null = null;
  #probeTimer: Timer | null = null;
  #probeDue = false;
  #stopped = false;
  /** The last wait before a streaming retry (ms); 0 when streaming has been healthy since. */
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
      maxPending: tuning.maxPendingUtterances,
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
    if (!this.#worker) return;
    this.#worker.push(chunk);
    this.#trim();
    this.#maybeProbe();
  }

  /**
   * Ends the period (a probe's stream answered): the worker forgets the utterance it was cutting,
   * whose audio is still in the ring, and only finishes the utterances it had queued, which all
   * end before the ring begins.
   */
  leave(): void {
    const worker = this.#worker;
    this.#worker = null;
    this.#cancelProbe();
    if (!worker) return;
    worker.retire();
    for (const old of this.#retired) if (old.idle) this.#retired.delete(old);
    if (!worker.idle) this.#retired.add(worker);
  }

  /** Streaming has proved healthy: the next period's first retry waits `resumeFirstMs` again. */
  resetBackoff(): void {
    this.#delayMs = 0;
  }

  /**
   * The call is ending: no more retries; the current worker's last utterance is flushed, and every
   * worker's queued utterances are recognized (at most `timeoutMs`).
   */
  async drain(timeoutMs: number): Promise<void> {
    this.stop();
    const workers = [...this.#retired];
    if (this.#worker) workers.push(this.#worker);
    await Promise.all(workers.map((worker) => worker.drain(timeoutMs)));
  }

  /** No more retries (a stream being opened is cancelled). */
  stop(): void {
    this.#stopped = true;
    this.#cancelProbe();
  }

  /** Keeps in the ring only the audio that no utterance queued for `Recognize` covers. */
  #trim(): void {
    if (this.#worker) this.#deps.ring.trimTo(this.#workerBase + this.#worker.openFrom);
  }

  /** Plans the next streaming retry: `resumeFirstMs`, then doubling up to `resumeMaxMs`. */
  #schedule(): void {
    if (this.#stopped) return;
    const { resumeFirstMs, resumeMaxMs } = this.#deps.tuning;
    this.#delayMs = this.#delayMs === 0 ? resumeFirstMs : Math.min(this.#delayMs * 2, resumeMaxMs);
    this.#probeTimer = this.#deps.timers.later(this.#delayMs, () => {
      this.#probeTimer = null;
      this.#probeDue = true;
      this.#maybeProbe();
    });
  }

  /**
   * Starts a due retry at an utterance boundary, so every result so far has been delivered. Until
   * its stream answers, audio keeps going to `Recognize`; the hand-over is safe whenever it comes.
   */
  #maybeProbe(): void {
    if (!this.#probeDue || this.#probe || this.#stopped || !this.#worker?.idle) return;
    this.#probeDue = false;
    const { probe: where, tuning, log, onStream } = this.#deps;
    const probe: StreamProbe = new StreamProbe({
      ...where,
      timeoutMs: tuning.resumeOpenTimeoutMs,
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
