/**
 * One try to get streaming back while a session is in per-utterance `Recognize` mode: opens a
 * StreamingRecognize call on each endpoint in turn (one attempt each), sends only the config, and
 * hands the first stream that is up to the session, which then replays its buffered audio into it.
 * A stream is up when it answers (response headers or a first message) or when it has taken the
 * config without failing for `acceptMs`: many servers send headers only with their first result,
 * which never comes before audio. No audio is sent before the hand-over, so a probe that fails
 * cannot have heard any word that `Recognize` is also given. A stream handed over that turns out
 * dead (an error, or no result for speech) is the session's to judge.
 */
import type { protos, v1 } from "@google-cloud/speech";
import type { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";
import { GrpcCode, toProviderError } from "../providers/grpc.ts";
import { countError } from "../providers/policy.ts";
import { Timers } from "./_timers.ts";

/** google-gax's bidi stream (a Duplex with `cancel()`). */
export type Stream = ReturnType<v1.SpeechClient["_streamingRecognize"]>;
export type Response = protos.google.cloud.speech.v1.IStreamingRecognizeResponse;

export interface StreamProbeOptions {
  /** Tried in order; the first one whose stream answers wins. */
  readonly endpoints: readonly string[];
  readonly openStream: (endpoint: string) => Promise<Stream>;
  readonly streamingConfig: protos.google.cloud.speech.v1.IStreamingRecognitionConfig;
  /** A stream that has neither failed nor ended this long after the config is up (ms). */
  readonly acceptMs: number;
  readonly log: Logger;
  /**
   * Called synchronously from the stream's first `metadata` or `data` event (`first` is that
   * message, if any) or once `acceptMs` passed without a failure; the config was written, and the
   * stream is the caller's from then on.
   */
  readonly onOpen: (stream: Stream, endpoint: number, first: Response | null) => void;
  /** Every endpoint failed; `error` is the last endpoint's failure. */
  readonly onFailed: (error: ProviderError) => void;
}

/** Not started until `start()`; after `onOpen`, `onFailed` or `cancel()` it does nothing more. */
export class StreamProbe {
  readonly #options: StreamProbeOptions;
  readonly #timers = new Timers();
  #stream: Stream | null = null;
  #done = false;

  constructor(options: StreamProbeOptions) {
    this.#options = options;
  }

  /** Starts on a later macrotask, so a caller on the media path (`write()`) never waits for it. */
  start(): void {
    this.#timers.later(0, () => {
      if (!this.#done) this.#attempt(0);
    });
  }

  /** Stops the probe; a stream being opened is cancelled, and no callback runs. */
  cancel(): void {
    if (this.#done) return;
    this.#done = true;
    this.#timers.clear();
    this.#drop();
  }

  #attempt(index: number): void {
    const { endpoints, openStream, log } = this.#options;
    const endpoint = endpoints[index];
    log.info("STT", "streaming retry", { endpoint });
    openStream(endpoint).then((stream) => {
      if (this.#done) {
        stream.on("error", () => {});
        stream.cancel();
        return;
      }
      this.#watch(stream, index);
    }, (error: unknown) => {
      if (!this.#done) this.#failed(index, error);
    });
  }

  #watch(stream: Stream, index: number): void {
    const { acceptMs, streamingConfig, onOpen } = this.#options;
    this.#stream = stream;
    const timer = this.#timers.later(acceptMs, () => handOver(null));
    const handOver = (first: Response | null): void => {
      if (stream !== this.#stream) return;
      this.#timers.cancel(timer);
      this.#stream = null;
      this.#done = true;
      stream.off("metadata", onMetadata);
      stream.off("data", onData);
      stream.off("error", onError);
      stream.off("end", onEnd);
      onOpen(stream, index, first);
    };
    const fail = (error: unknown): void => {
      if (stream !== this.#stream) return;
      this.#timers.cancel(timer);
      this.#failed(index, error);
    };
    const onMetadata = (): void => handOver(null);
    const onData = (response: Response): void => {
      // An error carried in the message body (google.rpc.Status) instead of the call status.
      if (response.error && response.error.code) {
        fail({ code: response.error.code, details: response.error.message });
      } else {
        handOver(response);
      }
    };
    const onError = (error: unknown): void => fail(error);
    const onEnd = (): void =>
      fail({ code: GrpcCode.UNKNOWN, details: "Stream ended by the server" });
    stream.on("metadata", onMetadata);
    stream.on("data", onData);
    stream.on("error", onError);
    stream.on("end", onEnd);
    stream.write({ streamingConfig });
  }

  #failed(index: number, failure: unknown): void {
    this.#drop();
    const { endpoints, onFailed } = this.#options;
    const error = toProviderError(
      "stt",
      `Cannot open speech stream at "${endpoints[index]}"`,
      failure,
    );
    countError(error);
    if (index + 1 < endpoints.length) {
      this.#attempt(index + 1);
      return;
    }
    this.#done = true;
    this.#timers.clear();
    onFailed(error);
  }

  /** Cancels the stream being opened, if any. */
  #drop(): void {
    const stream = this.#stream;
    if (!stream) return;
    this.#stream = null;
    stream.removeAllListeners();
    stream.on("error", () => {}); // a cancelled call still reports CANCELLED
    stream.cancel();
  }
}
