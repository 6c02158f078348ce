/**
 * One call's Google streaming recognition session. The audio written since the last final lives in
 * an `AudioRing`, which is both the send queue (the gRPC stream is fed from it as back-pressure
 * allows, so `write()` never waits) and the replay buffer: whenever the stream is replaced (age limit
 * at an utterance boundary, server error or end, open retry, fallback endpoint), the new stream starts
 * with the ring's audio, and a final trims the ring at its `resultEndTime`. So no word is lost and
 * none is recognized twice. When no stream can be opened, audio goes to per-utterance `Recognize`,
 * and streaming is tried again from time to time (backing off) while no utterance is in progress;
 * once a stream answers, the audio not yet in a recognized utterance is replayed into it.
 */
import type { protos } from "@google-cloud/speech";
import type { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import { AudioRing } from "./_audio_ring.ts";
import { EventQueue } from "./_event_queue.ts";
import { GrpcCode, grpcCode, toProviderError } from "../providers/grpc.ts";
import { countError } from "../providers/policy.ts";
import { RecognizeMode } from "./_recognize_mode.ts";
import type { RecognizedText } from "./_recognize_worker.ts";
import { readResponse } from "./_response.ts";
import { hasSpeech, Segmenter } from "./_segmenter.ts";
import type { Response, Stream } from "./_stream_probe.ts";
import { Timers } from "./_timers.ts";
import type { SttTuning } from "./_tuning.ts";
import { reportAudioLost } from "./_utterance_queue.ts";
import type { SpeechSession, SttEvent } from "./types.ts";

/** Trailing silence replayed after a restart in a quiet moment: 200 ms of μ-law. */
const QUIET_REPLAY_BYTES = 1600;
/** Batches whose write time is remembered, to time finals: 128 × 40 ms ≈ 5 s. */
const WRITE_TIMES = 128;

export interface GoogleSessionDeps {
  /** Primary endpoint, then the fallback one if configured. */
  readonly endpoints: readonly string[];
  /** A new StreamingRecognize call on `endpoint`'s shared client; rejects if the client cannot start. */
  readonly openStream: (endpoint: string) => Promise<Stream>;
  readonly streamingConfig: protos.google.cloud.speech.v1.IStreamingRecognitionConfig;
  /** Recognizes one utterance (primary, then fallback endpoint); rejects with a `ProviderError`. */
  readonly recognize: (
    audio: Uint8Array,
    options: { signal: AbortSignal },
  ) => Promise<readonly RecognizedText[]>;
  readonly batchBytes: number;
  readonly restartAfterMs: number;
  readonly tuning: SttTuning;
  readonly now: () => number;
  readonly log: Logger;
  readonly signal: AbortSignal;
}

/**
 * Modes: "streaming" (one gRPC stream at a time, replaced as needed), "recognize" (no stream could
 * be opened on any endpoint: energy-segmented utterances go to `Recognize`, and streaming is tried
 * again now and then; see `_recognize_mode.ts`), "closed".
 */
export class GoogleSpeechSession implements SpeechSession {
  readonly ready: Promise<void>;
  readonly #deps: GoogleSessionDeps;
  readonly #ring: AudioRing;
  readonly #quiet = new Segmenter({ collect: false });
  readonly #events: EventQueue<SttEvent>;
  readonly #timers = new Timers();
  readonly #batch: Uint8Array;
  #batchFill = 0;
  #resolveReady: () => void = () => {};
  #isReady = false;
  #mode: "streaming" | "recognize" | "closed" = "streaming";
  #endpoint = 0;
  #attempts = 0;
  /** Open streams in a row that failed sooner than `minHealthyStreamMs` after they started. */
  #youngDeaths = 0;
  #stream: Stream | null = null;
  #generation = 0;
  #opening = false;
  #open = false;
  /** The stream has sent headers or a message: it is alive, whatever it hears. */
  #answered = false;
  /** When speech first went into the stream while it had not answered yet; null if none has. */
  #speechSentAt: number | null = null;
  /** `#ring.droppedBytes` already reported as lost. */
  #lostBytes = 0;
  #degraded = false;
  /** Ring end offset and time of the last `WRITE_TIMES` batches (a circular log, no allocation). */
  readonly #writeEnds = new Float64Array(WRITE_TIMES);
  readonly #writeTimes = new Float64Array(WRITE_TIMES);
  #writes = 0;
  #startedAt = 0;
  #base = 0;
  #sent = 0;
  #blocked = false;
  #partialPending = false;
  readonly #fallback: RecognizeMode;
  #closing: Promise<void> | null = null;
  #ending = false;
  /** Aborts every `Recognize` call at shutdown. */
  readonly #recognizeAbort = new AbortController();
  #closed: (() => void) | null = null;
  readonly #onAbort = () => this.#shutdown();

  constructor(deps: GoogleSessionDeps) {
    this.#deps = deps;
    this.#ring = new AudioRing(deps.tuning.ringBytes);
    this.#events = new EventQueue(deps.tuning.eventCapacity);
    this.#batch = new Uint8Array(deps.batchBytes);
    this.ready = new Promise((resolve) => this.#resolveReady = resolve);
    this.#fallback = new RecognizeMode({
      ring: this.#ring,
      recognize: deps.recognize,
      emit: (event) => this.#events.push(event),
      probe: deps,
      onStream: (stream, endpoint, first) => this.#resume(stream, endpoint, first),
      tuning: deps.tuning,
      timers: this.#timers,
      log: deps.log,
      signal: this.#recognizeAbort.signal,
    });
    if (deps.signal.aborted) {
      this.#shutdown();
      return;
    }
    deps.signal.addEventListener("abort", this.#onAbort, { once: true });
    this.#timers.later(deps.tuning.readyGraceMs, () => {
      if (this.#isReady || this.#mode !== "streaming") return;
      deps.log.warn("STT", "stream ready assumed, no response headers yet", {
        ms: deps.tuning.readyGraceMs,
      });
      this.#markReady();
    });
    this.#startStream();
  }

  write(mulaw: Uint8Array): void {
    if (this.#mode === "closed" || this.#ending) return;
    let at = 0;
    while (at < mulaw.length) {
      const n = Math.min(this.#batch.length - this.#batchFill, mulaw.length - at);
      // Whole frames fit as they are: no view object per write (50 a second per call).
      this.#batch.set(n === mulaw.length ? mulaw : mulaw.subarray(at, at + n), this.#batchFill);
      this.#batchFill += n;
      at += n;
      if (this.#batchFill === this.#batch.length) this.#flushBatch();
    }
    this.#quiet.push(mulaw);
    if (this.#mode !== "streaming") return;
    if (this.#stream && !this.#answered) this.#watchUnanswered();
    if (this.#open) this.#maybeRestartByAge(false);
  }

  /**
   * A stream that has never answered is judged by what it was given: speech with no result within
   * `resultTimeoutMs` means it is dead (a server that took the call but does not recognize), so
   * it is replaced like a failed open, and its audio replayed. A quiet line proves nothing.
   */
  #watchUnanswered(): void {
    const now = this.#deps.now();
    if (this.#speechSentAt === null) {
      if (this.#quiet.trailingSilenceMs === 0) this.#speechSentAt = now;
      return;
    }
    const { resultTimeoutMs } = this.#deps.tuning;
    if (now - this.#speechSentAt < resultTimeoutMs) return;
    this.#deps.log.warn("STT", "stream gave no result for speech", { ms: resultTimeoutMs });
    this.#detach();
    this.#openFailed(toProviderError("stt", "Speech stream is not recognizing", {
      code: GrpcCode.DEADLINE_EXCEEDED,
      details: `No result within ${resultTimeoutMs} ms of speech`,
    }));
  }

  results(): AsyncIterable<SttEvent> {
    return this.#events;
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#ending = true;
    this.#flushBatch();
    const { closeTimeoutMs } = this.#deps.tuning;
    // Recognize mode's last utterance, and any queued before streaming resumed.
    const waits = [this.#fallback.drain(closeTimeoutMs)];
    if (this.#mode === "streaming" && (this.#stream || this.#opening)) {
      // Half-close once the ring is sent, then wait for the last finals (bounded).
      const finished = new Promise<void>((resolve) => this.#closed = resolve);
      const timer = this.#timers.later(closeTimeoutMs, () => this.#closed?.());
      this.#pump();
      waits.push(finished.then(() => this.#timers.cancel(timer)));
    }
    await Promise.all(waits);
    this.#shutdown();
  }

  /** Ends everything now: stream cancelled, timers cleared, results iterator finished. */
  #shutdown(): void {
    if (this.#mode === "closed") return;
    this.#mode = "closed";
    this.#setDegraded(false);
    this.#deps.signal.removeEventListener("abort", this.#onAbort);
    this.#detach();
    this.#fallback.stop();
    this.#recognizeAbort.abort();
    this.#timers.clear();
    this.#closed?.();
    this.#events.end();
    this.#markReady();
  }

  #flushBatch(): void {
    if (this.#batchFill === 0) return;
    const batch = this.#batchFill === this.#batch.length
      ? this.#batch
      : this.#batch.subarray(0, this.#batchFill);
    this.#ring.append(batch);
    this.#batchFill = 0;
    const slot = this.#writes++ % WRITE_TIMES;
    this.#writeEnds[slot] = this.#ring.end;
    this.#writeTimes[slot] = this.#deps.now();
    if (this.#ring.droppedBytes !== this.#lostBytes) {
      // No final for longer than the ring holds (a stream that hears but never finalizes).
      reportAudioLost(this.#deps.log, {
        provider: "google",
        bytes: this.#ring.droppedBytes - this.#lostBytes,
        reason: "replay_buffer_full",
      });
      this.#lostBytes = this.#ring.droppedBytes;
    }
    if (this.#mode === "recognize") {
      this.#fallback.push(batch.slice()); // the utterance being cut keeps it
      return;
    }
    this.#pump();
  }

  /** Sends ring audio to the stream until it is all sent or the stream asks us to wait. */
  #pump(): void {
    const stream = this.#stream;
    if (!stream || this.#blocked || this.#mode !== "streaming") return;
    while (this.#sent < this.#ring.end) {
      this.#sent = Math.max(this.#sent, this.#ring.begin);
      const chunk = this.#ring.read(this.#sent, this.#batch.length);
      if (chunk.length === 0) break;
      this.#sent += chunk.length;
      if (!stream.write({ audioContent: chunk })) {
        this.#blocked = true;
        stream.once("drain", () => {
          if (stream !== this.#stream) return;
          this.#blocked = false;
          this.#pump();
        });
        return;
      }
    }
    if (this.#ending && this.#sent >= this.#ring.end) stream.end();
  }

  #startStream(): void {
    const endpoint = this.#deps.endpoints[this.#endpoint];
    const generation = ++this.#generation;
    this.#attempts++;
    this.#opening = true;
    this.#deps.log.info("STT", "stream opening", { endpoint, attempt: this.#attempts });
    this.#deps.openStream(endpoint).then((stream) => {
      if (generation !== this.#generation || this.#mode !== "streaming") {
        stream.on("error", () => {});
        stream.cancel();
        return;
      }
      this.#attach(stream);
    }, (error: unknown) => {
      if (generation !== this.#generation || this.#mode !== "streaming") return;
      this.#openFailed(toProviderError("stt", `Cannot open speech stream at "${endpoint}"`, error));
    });
  }

  /** `configSent`: a probe already wrote the streaming config. */
  #attach(stream: Stream, configSent = false): void {
    this.#opening = false;
    this.#stream = stream;
    this.#open = false;
    this.#blocked = false;
    this.#startedAt = this.#deps.now();
    this.#base = this.#ring.begin;
    this.#sent = this.#ring.begin;
    this.#partialPending = false;
    this.#answered = false;
    // Replayed speech counts as sent: a stream that never answers it is as dead as one that never
    // answers the caller's next words.
    this.#speechSentAt = this.#ring.end > this.#ring.begin &&
        hasSpeech(this.#ring.read(this.#ring.begin, this.#ring.end - this.#ring.begin))
      ? this.#deps.now()
      : null;
    stream.on("metadata", () => {
      this.#answered = true;
      this.#onOpen(stream);
    });
    stream.on("data", (response: Response) => this.#onData(stream, response));
    stream.on("error", (error: unknown) => this.#onFailure(stream, error));
    stream.on("end", () => this.#onFailure(stream, null));
    if (!configSent) stream.write({ streamingConfig: this.#deps.streamingConfig });
    this.#pump();
  }

  #onOpen(stream: Stream): void {
    if (stream !== this.#stream || this.#open) return;
    this.#open = true;
    this.#deps.log.info("STT", "stream open", {
      endpoint: this.#deps.endpoints[this.#endpoint],
      replay_ms: Math.round((this.#ring.end - this.#base) / 8),
    });
    this.#markReady();
  }

  #onData(stream: Stream, response: Response): void {
    if (stream !== this.#stream) return;
    this.#answered = true;
    this.#onOpen(stream);
    if (response.error && response.error.code) {
      // An error carried in the message body (google.rpc.Status) instead of the call status.
      this.#onFailure(stream, { code: response.error.code, details: response.error.message });
      return;
    }
    const { partial, finals } = readResponse(response);
    if (partial || finals.length > 0) this.#attempts = 0; // the stream works
    for (const final of finals) {
      this.#partialPending = false;
      // Without `resultEndTime` the final covers at most what was sent: a restart then never
      // sends audio already transcribed again (no duplicated turn).
      this.#ring.trimTo(
        final.endMs === null
          ? this.#sent
          : Math.min(this.#base + Math.round(final.endMs * 8), this.#sent),
      );
      if (final.text !== "") {
        this.#events.push({ type: "final", text: final.text, confidence: final.confidence });
        if (final.endMs !== null) this.#observeLatency(this.#base + final.endMs * 8);
      }
    }
    if (partial) {
      this.#partialPending = true;
      this.#events.push({ type: "partial", text: partial.text, stability: partial.stability });
    }
    if (finals.length > 0 && !this.#ending) this.#maybeRestartByAge(true);
  }

  /** `error` null means the server ended the stream with OK. */
  #onFailure(stream: Stream, error: unknown): void {
    if (stream !== this.#stream) return;
    this.#detach(false);
    if (this.#ending) {
      this.#closed?.();
      return;
    }
    const endpoint = this.#deps.endpoints[this.#endpoint];
    const failure = error ?? { code: GrpcCode.UNKNOWN, details: "Stream ended by the server" };
    const { minHealthyStreamMs } = this.#deps.tuning;
    const providerError = toProviderError("stt", `Cannot stream speech at "${endpoint}"`, failure);
    countError(providerError);
    // A stream that dies right after opening, with no result, counts as a failed open (backoff,
    // fallback), so a server that keeps refusing mid-stream cannot make us replay in a tight loop.
    // Results do not prove much (replayed audio gives some at once): streams that keep dying young
    // also end in a failed open, with no retry left on this endpoint.
    const young = this.#deps.now() - this.#startedAt < minHealthyStreamMs;
    if (this.#open) this.#youngDeaths = young ? this.#youngDeaths + 1 : 0;
    // A stream that lived proves streaming works: a later recognize period starts its backoff anew.
    if (this.#open && !young) this.#fallback.resetBackoff();
    if (this.#open && young && this.#youngDeaths >= this.#deps.tuning.openAttempts) {
      this.#attempts = this.#deps.tuning.openAttempts;
      this.#openFailed(providerError);
    } else if (!this.#open || (this.#attempts > 0 && young)) {
      this.#openFailed(providerError);
    } else if (grpcCode(error) === GrpcCode.OUT_OF_RANGE) {
      this.#replace("duration_limit");
    } else {
      this.#events.push({ type: "error", error: providerError, fatal: false });
      this.#replace(error === null ? "ended" : "error");
    }
  }

  #openFailed(error: ProviderError): void {
    // Every failed open counts, whatever found it (a stream's failure is counted once).
    countError(error);
    this.#detach(false);
    this.#opening = false;
    if (this.#ending) {
      this.#closed?.();
      return;
    }
    const { log, tuning, endpoints } = this.#deps;
    log.warn("STT", "stream open failed", {
      endpoint: endpoints[this.#endpoint],
      attempt: this.#attempts,
      category: error.category,
    });
    if (error.retryable && this.#attempts < tuning.openAttempts) {
      this.#timers.later(tuning.openBackoffMs, () => this.#startStream());
    } else if (this.#endpoint + 1 < endpoints.length) {
      this.#endpoint++;
      this.#attempts = 0;
      this.#youngDeaths = 0;
      this.#events.push({ type: "error", error, fatal: false });
      log.warn("STT", "using fallback endpoint", { endpoint: endpoints[this.#endpoint] });
      this.#startStream();
    } else {
      this.#enterRecognize(error);
    }
  }

  #maybeRestartByAge(afterFinal: boolean): void {
    const { now, restartAfterMs, tuning } = this.#deps;
    const age = Math.max(now() - this.#startedAt, (this.#sent - this.#base) / 8);
    if (age < restartAfterMs) return;
    const quiet = !this.#partialPending && this.#quiet.trailingSilenceMs >= tuning.quietRestartMs;
    if (afterFinal || quiet || age >= restartAfterMs + tuning.forceRestartSlackMs) {
      if (quiet && !afterFinal) {
        // The caller has been silent for quietRestartMs and no partial is pending: the audio since
        // the last final holds nothing left to recognize. Replaying it all would make the new
        // stream as old as this one (replayed audio counts) and restart it again at once.
        this.#ring.trimTo(this.#ring.end - QUIET_REPLAY_BYTES);
      }
      this.#replace("age");
    }
  }

  /** Swaps in a new stream that starts with the audio since the last final. */
  #replace(reason: string): void {
    this.#detach();
    metrics.sttRestarted();
    this.#events.push({ type: "restart", reason });
    this.#deps.log.info("STT", "stream restart", { reason });
    this.#attempts = 0;
    this.#startStream();
  }

  #enterRecognize(error: ProviderError): void {
    this.#mode = "recognize";
    this.#setDegraded(true);
    this.#youngDeaths = 0;
    this.#fallback.enter(error);
    this.#markReady();
  }

  /**
   * A streaming retry's stream answered (headers seen, config sent): back to streaming. The ring
   * holds the audio from where `Recognize` stopped, and is replayed into the stream.
   */
  #resume(stream: Stream, endpoint: number, first: Response | null): void {
    if (this.#mode !== "recognize" || this.#ending) {
      stream.on("error", () => {});
      stream.cancel();
      return;
    }
    this.#fallback.leave();
    this.#mode = "streaming";
    this.#setDegraded(false);
    this.#endpoint = endpoint;
    // A resumed stream that dies at once counts as a failed open (retries, then recognize again).
    this.#attempts = 1;
    metrics.sttRestarted();
    this.#events.push({ type: "restart", reason: "streaming resumed" });
    this.#deps.log.info("STT", "streaming resumed", { endpoint: this.#deps.endpoints[endpoint] });
    this.#attach(stream, true);
    this.#onOpen(stream);
    if (first) this.#onData(stream, first);
  }

  /** Forgets the current stream; `cancel` false when the call already ended (error or status). */
  #detach(cancel = true): void {
    this.#generation++;
    const stream = this.#stream;
    if (!stream) return;
    this.#stream = null;
    stream.removeAllListeners();
    stream.on("error", () => {}); // a cancelled call still reports CANCELLED
    if (cancel) stream.cancel();
  }

  /** Final latency: from when the audio at `offset` (its end) was written, to now. */
  #observeLatency(offset: number): void {
    const oldest = Math.max(0, this.#writes - WRITE_TIMES);
    for (let i = oldest; i < this.#writes; i++) {
      const slot = i % WRITE_TIMES;
      if (this.#writeEnds[slot] >= offset) {
        const ms = this.#deps.now() - this.#writeTimes[slot];
        metrics.sttFinalLatencyObserved("google", ms / 1000);
        return;
      }
    }
  }

  #setDegraded(degraded: boolean): void {
    if (degraded === this.#degraded) return;
    this.#degraded = degraded;
    metrics.sttDegraded(degraded ? 1 : -1);
  }

  #markReady(): void {
    if (this.#isReady) return;
    this.#isReady = true;
    this.#resolveReady();
  }
}
