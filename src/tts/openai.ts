/**
 * Text-to-speech over an OpenAI-compatible `POST {base_url}/audio/speech` (OpenAI's
 * gpt-4o-mini-tts, or an on-prem server) with `npm:openai`, as a `TtsProvider`. The answer is read
 * as it arrives, converted from the server's rate (24 kHz for OpenAI's "pcm") to 8 kHz μ-law by a
 * polyphase low-pass resampler, and handed on in whole 20 ms frames, so a sentence starts playing
 * before the server has finished speaking it. One attempt per call: retries and the cached apology
 * belong to the caller, as with Google.
 */
import OpenAI from "openai";
import type { TtsOpenAiConfig } from "../config/types.ts";
import { ProviderError } from "../errors.ts";
import { mapOpenAiError } from "../providers/openai_errors.ts";
import * as metrics from "../observe/metrics.ts";
import { observeStream } from "../providers/policy.ts";
import { SpeechAudioDecoder } from "./_speech_audio.ts";
import type { TtsProvider, TtsRequestOptions } from "./types.ts";

/** Used when no key is configured: on-prem servers ignore it, but the SDK requires one. */
const PLACEHOLDER_KEY = "kav-no-api-key";

export interface OpenAiTtsOptions {
  /** Clock in ms (tests). */
  readonly now?: () => number;
}

/**
 * Creates the provider. `tts.openai.stream = false` drops `stream()`, so callers wait for whole
 * sentences (servers that send the audio in one piece gain nothing from streaming).
 */
export function createOpenAiTts(
  config: TtsOpenAiConfig,
  options: OpenAiTtsOptions = {},
): TtsProvider {
  const now = options.now ?? (() => performance.now());
  const client = new OpenAI({
    apiKey: config.api_key ?? PLACEHOLDER_KEY,
    baseURL: config.base_url,
    organization: null,
    project: null,
    webhookSecret: null,
    maxRetries: 0,
    // Kav's own deadline below covers the body too; the SDK's covers only the headers.
    timeout: config.timeout_ms + 1000,
    logLevel: "off",
  });
  const action = `Speech synthesis at "${config.base_url}"`;

  /** One request, as it arrives; `stream` is this, observed by the provider policy. */
  async function* request(text: string, options: TtsRequestOptions): AsyncGenerator<Uint8Array> {
    if (text.trim() === "") return;
    const { signal } = options;
    signal?.throwIfAborted();
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), config.timeout_ms);
    const both = signal ? AbortSignal.any([signal, deadline.signal]) : deadline.signal;
    const startedAt = now();
    let reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
    try {
      const response = await client.audio.speech.create({
        model: config.model,
        voice: options.voice ?? config.voice,
        input: text,
        response_format: config.response_format,
        ...(config.instructions === null ? {} : { instructions: config.instructions }),
      }, { signal: both });
      if (response.body === null) {
        throw new ProviderError("tts", "server", `${action} answered with no body`);
      }
      const decoder = new SpeechAudioDecoder(config.response_format, config.sample_rate);
      reader = response.body.getReader();
      let first = true;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (value.length === 0) continue;
        if (first) {
          first = false;
          metrics.ttsFirstByteObserved("openai", (now() - startedAt) / 1000);
        }
        const frames = decoder.push(value);
        if (frames.length > 0) yield frames;
      }
      const rest = decoder.end();
      if (rest.length > 0) yield rest;
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      throw deadline.signal.aborted
        ? new ProviderError("tts", "timeout", `${action} took over ${config.timeout_ms} ms`)
        : mapOpenAiError("tts", action, error);
    } finally {
      clearTimeout(timer);
      // Stops the download when the consumer gave up early (barge-in); a no-op after the end.
      if (reader !== null) reader.cancel().catch(() => {});
    }
  }

  function stream(text: string, options: TtsRequestOptions): AsyncGenerator<Uint8Array> {
    return observeStream("tts", "synthesize", () => request(text, options));
  }

  async function synthesize(text: string, options: TtsRequestOptions): Promise<Uint8Array> {
    const chunks: Uint8Array[] = [];
    let length = 0;
    for await (const chunk of stream(text, options)) {
      chunks.push(chunk);
      length += chunk.length;
    }
    const audio = new Uint8Array(length);
    let at = 0;
    for (const chunk of chunks) {
      audio.set(chunk, at);
      at += chunk.length;
    }
    return audio;
  }

  return {
    synthesize,
    ...(config.stream ? { stream } : {}),
    close: () => Promise.resolve(),
  };
}
