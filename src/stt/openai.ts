/**
 * Speech-to-text over an OpenAI-compatible `POST {base_url}/audio/transcriptions` (OpenAI's
 * gpt-4o-transcribe, an on-prem Whisper server, vLLM) with `npm:openai`, as an `SttProvider`. Such
 * servers take whole files, so Kav's own VAD cuts the call into utterances (`_utterance_session.ts`)
 * and each goes up as a WAV (PCM16, 8000 Hz, mono: what every server decodes) in a multipart form
 * with the model, the language (the primary subtag of `call.language`: "he" for "he-IL") and the
 * optional prompt. With `stt.openai.stream`, the answer is read as SSE and its text deltas become
 * partials: OpenAI's `transcript.text.delta` / `transcript.text.done` events, or vLLM's
 * `transcription.chunk` objects (`choices[0].delta.content`, `finish_reason` on the last).
 */
import OpenAI, { toFile } from "openai";
import { writeWav } from "../audio/wav.ts";
import type { SttConfig } from "../config/types.ts";
import { ProviderError } from "../errors.ts";
import { mapOpenAiError } from "../providers/openai_errors.ts";
import { createLogger, type Logger } from "../observe/log.ts";
import { observe } from "../providers/policy.ts";
import {
  type Transcribe,
  UTTERANCE_TUNING,
  UtteranceSession,
  type UtteranceTuning,
} from "./_utterance_session.ts";
import type { SpeechSession, SttOpenOptions, SttProvider } from "./types.ts";

export { UTTERANCE_TUNING, type UtteranceTuning };

/** Used when no key is configured: on-prem servers ignore it, but the SDK requires one. */
const PLACEHOLDER_KEY = "kav-no-api-key";

export interface OpenAiSttOptions {
  /** For provider-level lines; sessions log through `open({ log })`. */
  readonly log?: Logger;
  /** Clock in ms (tests). */
  readonly now?: () => number;
  /** Overrides of the frozen retry/buffer numbers (tests). */
  readonly tuning?: Partial<UtteranceTuning>;
}

/** "he-IL" → "he": the ISO-639-1 code the transcription API takes. */
export function transcriptionLanguage(language: string): string {
  return language.split("-")[0].toLowerCase();
}

function record(value: unknown): Record<string, unknown> | null {
  return typeof value === "object" && value !== null ? value as Record<string, unknown> : null;
}

/** One SSE event's text: a delta, the whole text when done, or nothing. */
function readEvent(event: unknown): { delta?: string; done?: string; finished?: boolean } {
  const e = record(event);
  if (e === null) return {};
  if (e.type === "transcript.text.delta" && typeof e.delta === "string") return { delta: e.delta };
  if (e.type === "transcript.text.done" && typeof e.text === "string") {
    return { done: e.text, finished: true };
  }
  // vLLM: chat-completion-like chunks.
  if (e.object === "transcription.chunk" && Array.isArray(e.choices)) {
    const choice = record(e.choices[0]);
    const content = record(choice?.delta)?.content;
    return {
      delta: typeof content === "string" ? content : undefined,
      finished: typeof choice?.finish_reason === "string",
    };
  }
  return {};
}

/** Creates the provider: one client per server (primary, fallback), shared by all calls. */
export function createOpenAiStt(config: SttConfig, options: OpenAiSttOptions = {}): SttProvider {
  const settings = config.openai;
  const tuning: UtteranceTuning = Object.freeze({ ...UTTERANCE_TUNING, ...options.tuning });
  const now = options.now ?? (() => performance.now());
  const providerLog = options.log ?? createLogger();
  const servers = [settings.base_url];
  if (settings.fallback_base_url !== null) servers.push(settings.fallback_base_url);
  const clients = servers.map((baseURL) =>
    new OpenAI({
      apiKey: settings.api_key ?? PLACEHOLDER_KEY,
      baseURL,
      organization: null,
      project: null,
      webhookSecret: null,
      maxRetries: 0,
      // Kav's own deadline below covers the streamed body too.
      timeout: settings.timeout_ms + 1000,
      logLevel: "off",
    })
  );
  providerLog.info("STT", "openai transcription", {
    servers: servers.length,
    model: settings.model,
    stream: settings.stream,
  });

  async function transcribeAt(
    server: number,
    language: string,
    audio: Uint8Array,
    signal: AbortSignal,
    onPartial: (text: string) => void,
  ): Promise<string> {
    const action = `Transcription at "${servers[server]}"`;
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), settings.timeout_ms);
    const both = AbortSignal.any([signal, deadline.signal]);
    try {
      const body = {
        file: await toFile(writeWav(audio, { encoding: "pcm16" }), "utterance.wav", {
          type: "audio/wav",
        }),
        model: settings.model,
        language,
        response_format: "json" as const,
        ...(settings.prompt === null ? {} : { prompt: settings.prompt }),
      };
      if (!settings.stream) {
        const result = await clients[server].audio.transcriptions.create(
          { ...body, stream: false },
          { signal: both },
        );
        return result.text;
      }
      const events = await clients[server].audio.transcriptions.create(
        { ...body, stream: true },
        { signal: both },
      );
      let text = "";
      let done: string | null = null;
      let finished = false;
      for await (const event of events) {
        const read = readEvent(event);
        if (read.delta) {
          text += read.delta;
          onPartial(text);
        }
        if (read.done !== undefined) done = read.done;
        if (read.finished) finished = true;
      }
      // The SDK ends the iteration quietly when the request is aborted.
      both.throwIfAborted();
      if (!finished) {
        throw new ProviderError("stt", "connectivity", `${action} ended before the text was done`);
      }
      return done ?? text;
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw deadline.signal.aborted
        ? new ProviderError("stt", "timeout", `${action} took over ${settings.timeout_ms} ms`)
        : mapOpenAiError("stt", action, error);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The primary first; a failure that may be retried moves on to the fallback server. */
  function transcriber(language: string): Transcribe {
    return async (audio, { signal, onPartial }) => {
      let lastError: unknown = null;
      for (let server = 0; server < servers.length; server++) {
        try {
          return await observe(
            "stt",
            "transcribe",
            () => transcribeAt(server, language, audio, signal, onPartial),
          );
        } catch (error) {
          if (signal.aborted) throw error;
          lastError = error;
          if (!(error instanceof ProviderError) || !error.retryable) throw error;
        }
      }
      throw lastError;
    };
  }

  return {
    open(open: SttOpenOptions): SpeechSession {
      return new UtteranceSession({
        provider: "openai",
        transcribe: transcriber(transcriptionLanguage(open.language)),
        segmenter: {
          hangoverMs: settings.silence_ms,
          maxUtteranceMs: settings.max_utterance_s * 1000,
        },
        tuning,
        log: open.log,
        signal: open.signal,
        now,
      });
    },
    close: () => Promise.resolve(),
  };
}
