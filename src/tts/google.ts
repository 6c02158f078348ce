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
import type { TtsConfig } from "../config/types.ts";
import { ProviderError } from "../errors.ts";
import * as metrics from "../observe/metrics.ts";
import {
  gaxClientOptions,
  GaxClientPool,
  raceSignal,
  toProviderError,
  unaryCallOptions,
} from "../stt/_grpc.ts";
import type { TtsProvider } from "./types.ts";

export interface GoogleTtsOptions {
  /** Service-account JSON (`google.credentials_path`); null uses ADC. Ignored when insecure. */
  readonly credentialsPath?: string | null;
  /** Deadline of one SynthesizeSpeech call (ms). */
  readonly timeoutMs?: number;
}

const WAV_MULAW = 7;

function fourcc(bytes: Uint8Array, at: number): string {
  return String.fromCharCode(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
}

/**
 * The samples of a RIFF/WAVE file's `data` chunk (a view), after checking its `fmt ` chunk says
 * μ-law, 8000 Hz, mono. Bytes without a RIFF header are returned as they are (already raw).
 * Throws a non-retryable `ProviderError` for any other format: Kav never resamples.
 */
export function stripWavHeader(bytes: Uint8Array): Uint8Array {
  if (bytes.length < 12 || fourcc(bytes, 0) !== "RIFF" || fourcc(bytes, 8) !== "WAVE") return bytes;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let format: { tag: number; channels: number; rate: number } | null = null;
  let at = 12;
  while (at + 8 <= bytes.length) {
    const id = fourcc(bytes, at);
    const size = view.getUint32(at + 4, true);
    const body = at + 8;
    if (id === "fmt " && size >= 16 && body + 16 <= bytes.length) {
      format = {
        tag: view.getUint16(body, true),
        channels: view.getUint16(body + 2, true),
        rate: view.getUint32(body + 4, true),
      };
    } else if (id === "data") {
      if (!format || format.tag !== WAV_MULAW || format.channels !== 1 || format.rate !== 8000) {
        const got = format
          ? `format ${format.tag}, ${format.rate} Hz, ${format.channels} ch`
          : "no fmt";
        throw new ProviderError("tts", "invalid_request", `Cannot use synthesized audio: "${got}"`);
      }
      // A streamed WAV may declare 0 or 0xFFFFFFFF; the data runs to the end then.
      const end = size === 0 || body + size > bytes.length ? bytes.length : body + size;
      return bytes.subarray(body, end);
    }
    at = body + size + (size % 2); // chunks are padded to an even length
  }
  throw new ProviderError(
    "tts",
    "server",
    `Cannot find audio in synthesized WAV of "${bytes.length}" bytes`,
  );
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
        const mapped = toProviderError("tts", `Cannot synthesize speech at "${endpoint}"`, error);
        metrics.providerError("tts", mapped.category);
        throw mapped;
      }
    },
    close(): Promise<void> {
      return clients.close();
    },
  };
}
