/**
 * Google Cloud Text-to-Speech (v1, `npm:@google-cloud/text-to-speech`) as a `TtsProvider`. Audio is
 * requested directly as MULAW 8000 Hz (what Twilio plays), so there is no resampling; Google wraps
 * MULAW in a WAV header ("Audio content returned as MULAW also contains a WAV header",
 * cloud_tts.proto), which is parsed chunk by chunk and removed. One attempt per call: retries and the
 * cached apology belong to the caller.
 */
// The v1 client alone: the package index also loads v1p1beta1, v2 and 5 MB of generated
// protobuf code, ~7 MB of heap that every major GC would mark again.
import * as v1 from "@google-cloud/text-to-speech/v1";
import { SAMPLE_RATE } from "../audio/frames.ts";
import { FORMAT_MULAW, isWav, readWavChunks, type WavChunks } from "../audio/wav.ts";
import type { TtsConfig } from "../config/types.ts";
import { ProviderError } from "../errors.ts";
import * as metrics from "../observe/metrics.ts";
import {
  gaxClientOptions,
  GaxClientPool,
  raceSignal,
  toProviderError,
  unaryCallOptions,
} from "../providers/grpc.ts";
import { observe } from "../providers/policy.ts";
import type { TtsProvider } from "./types.ts";

export interface GoogleTtsOptions {
  /** Service-account JSON (`google.credentials_path`); null uses ADC. Ignored when insecure. */
  readonly credentialsPath?: string | null;
  /** Deadline of one SynthesizeSpeech call (ms). */
  readonly timeoutMs?: number;
}

/**
 * The samples of a RIFF/WAVE file's `data` chunk (a view), after checking its `fmt ` chunk says
 * μ-law, 8000 Hz, mono. Bytes without a RIFF header are returned as they are (already raw).
 * Throws a non-retryable `ProviderError` for any other format: Kav never resamples.
 */
export function stripWavHeader(bytes: Uint8Array): Uint8Array {
  if (!isWav(bytes)) return bytes;
  let wav: WavChunks;
  try {
    wav = readWavChunks(bytes);
  } catch (error) {
    throw new ProviderError(
      "tts",
      "server",
      `Cannot find audio in synthesized WAV of "${bytes.length}" bytes`,
      { cause: error },
    );
  }
  if (wav.format !== FORMAT_MULAW || wav.channels !== 1 || wav.sampleRate !== SAMPLE_RATE) {
    const got = `format ${wav.format}, ${wav.sampleRate} Hz, ${wav.channels} ch`;
    throw new ProviderError("tts", "invalid_request", `Cannot use synthesized audio: "${got}"`);
  }
  return wav.data;
}

function toBytes(content: Uint8Array | string | null | undefined): Uint8Array {
  if (content === null || content === undefined) return new Uint8Array(0);
  if (typeof content !== "string") return content;
  // The REST transport returns base64; gRPC returns bytes.
  return Uint8Array.from(atob(content), (c) => c.charCodeAt(0));
}

/**
 * Creates the Google TTS provider: `language` (from `call.language`) and `voice` (`tts.voice`,
 * overridable per request). `tts.google.insecure` selects plaintext gRPC with no credential lookup.
 */
export function createGoogleTts(
  config: Omit<TtsConfig, "openai"> & { readonly language: string },
  options: GoogleTtsOptions = {},
): TtsProvider {
  const endpoint = config.google.endpoint;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const clients = new GaxClientPool((at) =>
    new v1.TextToSpeechClient(
      gaxClientOptions(at, config.google.insecure, options.credentialsPath ?? null),
    )
  );

  return {
    async synthesize(text, { signal, voice }): Promise<Uint8Array> {
      if (text.trim() === "") return new Uint8Array(0);
      signal?.throwIfAborted();
      return await observe("tts", "synthesize", async () => {
        const startedAt = performance.now();
        try {
          const client = await raceSignal(clients.get(endpoint), signal);
          const call = client.synthesizeSpeech(
            {
              input: { text },
              voice: { languageCode: config.language, name: voice ?? config.voice },
              audioConfig: { audioEncoding: "MULAW", sampleRateHertz: 8000 },
            },
            unaryCallOptions(timeoutMs, signal),
          );
          const [response] = await raceSignal(call, signal);
          // A unary answer: its first byte comes with its last.
          metrics.ttsFirstByteObserved("google", (performance.now() - startedAt) / 1000);
          // A copy: a plain Uint8Array that does not pin the decoder's larger message buffer.
          return new Uint8Array(stripWavHeader(toBytes(response.audioContent)));
        } catch (error) {
          if (signal?.aborted) throw signal.reason;
          throw toProviderError("tts", `Cannot synthesize speech at "${endpoint}"`, error);
        }
      });
    },
    close(): Promise<void> {
      return clients.close();
    },
  };
}
