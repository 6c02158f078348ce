/**
 * Google Cloud Speech-to-Text (v1, `npm:@google-cloud/speech`) as an `SttProvider`. One gRPC client
 * (channel) per endpoint, shared by all calls; one streaming session per call (see
 * `_google_session.ts` for restarts, replay and the fallbacks).
 */
// The v1 client alone: the package index also loads v1p1beta1, v2 and 5 MB of generated
// protobuf code, ~7 MB of heap that every major GC would mark again.
import * as v1 from "@google-cloud/speech/v1";
import type { protos } from "@google-cloud/speech";
import type { SttConfig } from "../config/types.ts";
import { createLogger, type Logger } from "../observe/log.ts";
import { ProviderError } from "../errors.ts";
import { observe } from "../providers/policy.ts";
import { type GoogleSessionDeps, GoogleSpeechSession } from "./_google_session.ts";
import { STT_TUNING, type SttTuning } from "./_tuning.ts";
import {
  connectEagerly,
  gaxClientOptions,
  GaxClientPool,
  raceSignal,
  toProviderError,
  unaryCallOptions,
} from "../providers/grpc.ts";
import type { RecognizedText } from "./_recognize_worker.ts";
import type { SpeechSession, SttOpenOptions, SttProvider } from "./types.ts";

export { STT_TUNING, type SttTuning };
/** One call's session, also driven directly by `scripts/bench_stt_recovery.ts` (write-path cost). */
export { type GoogleSessionDeps, GoogleSpeechSession };

type RecognitionConfig = protos.google.cloud.speech.v1.IRecognitionConfig;

export interface GoogleSttOptions {
  /** Service-account JSON (`google.credentials_path`); null uses ADC. Ignored when insecure. */
  readonly credentialsPath?: string | null;
  /** For provider-level lines (client creation); sessions log through `open({ log })`. */
  readonly log?: Logger;
  /** Clock in ms (tests). */
  readonly now?: () => number;
  /** Overrides of the frozen retry/buffer numbers (tests). */
  readonly tuning?: Partial<SttTuning>;
}

/**
 * Creates the Google STT provider. Audio is `MULAW` 8000 Hz mono; the model and enhanced flag come
 * from `stt.google`, the language from each `open()`. `stt.google.insecure` selects plaintext gRPC
 * with no Google credential lookup (local servers only).
 */
export function createGoogleStt(
  config: Omit<SttConfig, "openai">,
  options: GoogleSttOptions = {},
): SttProvider {
  const tuning: SttTuning = Object.freeze({ ...STT_TUNING, ...options.tuning });
  const now = options.now ?? (() => performance.now());
  const providerLog = options.log ?? createLogger();
  const credentialsPath = options.credentialsPath ?? null;
  const clients = new GaxClientPool((endpoint) => {
    providerLog.info("STT", "client created", { endpoint, insecure: config.google.insecure });
    return new v1.SpeechClient(gaxClientOptions(endpoint, config.google.insecure, credentialsPath));
  });
  const endpoints = [config.google.endpoint];
  if (config.google.fallback_endpoint) endpoints.push(config.google.fallback_endpoint);
  // batch_ms of μ-law at 8000 Hz is 8 bytes per ms; at least one 20 ms frame.
  const batchBytes = Math.max(160, Math.round(config.batch_ms * 8));

  function recognitionConfig(language: string): RecognitionConfig {
    return {
      encoding: "MULAW",
      sampleRateHertz: 8000,
      audioChannelCount: 1,
      languageCode: language,
      model: config.google.model,
      useEnhanced: config.google.use_enhanced,
    };
  }

  /** One `Recognize` call; rejects with a `ProviderError`, or with `signal.reason` once aborted. */
  async function recognizeAt(
    endpoint: string,
    language: string,
    audio: Uint8Array,
    signal: AbortSignal,
  ): Promise<RecognizedText[]> {
    try {
      const client = await raceSignal(clients.get(endpoint), signal);
      const call = client.recognize(
        { config: recognitionConfig(language), audio: { content: audio } },
        unaryCallOptions(tuning.recognizeTimeoutMs, signal),
      );
      const [response] = await raceSignal(call, signal);
      const texts: RecognizedText[] = [];
      for (const result of response.results ?? []) {
        const best = result.alternatives?.[0];
        const text = (best?.transcript ?? "").trim();
        if (text !== "") texts.push({ text, confidence: best?.confidence ?? 0 });
      }
      return texts;
    } catch (error) {
      if (signal.aborted) throw error;
      throw toProviderError("stt", `Cannot recognize speech at "${endpoint}"`, error);
    }
  }

  /** Primary first; a retryable failure (or a refused language) moves on to the fallback endpoint. */
  async function recognize(
    language: string,
    audio: Uint8Array,
    signal: AbortSignal,
  ): Promise<readonly RecognizedText[]> {
    let lastError: unknown = null;
    for (const endpoint of endpoints) {
      try {
        return await observe(
          "stt",
          "recognize",
          () => recognizeAt(endpoint, language, audio, signal),
        );
      } catch (error) {
        if (signal.aborted || !(error instanceof ProviderError)) throw error;
        lastError = error;
        if (!error.retryable && error.category !== "invalid_request") throw error;
      }
    }
    throw lastError;
  }

  return {
    open(open: SttOpenOptions): SpeechSession {
      return new GoogleSpeechSession({
        endpoints,
        openStream: async (endpoint) => (await clients.get(endpoint))._streamingRecognize(),
        streamingConfig: {
          config: recognitionConfig(open.language),
          interimResults: true,
          singleUtterance: false,
        },
        recognize: (audio, { signal }) => recognize(open.language, audio, signal),
        batchBytes,
        restartAfterMs: config.restart_after_s * 1000,
        tuning,
        now,
        log: open.log,
        signal: open.signal,
      });
    },
    async warm(): Promise<void> {
      await Promise.all(endpoints.map(async (endpoint) => {
        try {
          await connectEagerly((await clients.get(endpoint)).speechStub);
        } catch (error) {
          providerLog.warn("STT", "client not ready at boot", {
            endpoint,
            error: error instanceof Error ? error.message : String(error),
          });
        }
      }));
    },
    close(): Promise<void> {
      return clients.close();
    },
  };
}
