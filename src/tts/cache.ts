/**
 * Fixed phrases (greeting, apologies) synthesized once at boot and served synchronously, so the
 * greeting's first frame can leave within 50 ms of `start` and a provider fault still has something
 * to say. Reloadable: a reload swaps in the new set at once and keeps a phrase's old audio when its
 * new synthesis fails.
 */
import { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";
import { retry } from "../providers/policy.ts";
import type { TtsProvider } from "./types.ts";

/** Retry numbers for boot-time synthesis, in one frozen object (the provider policy's shape). */
export interface PhraseCacheRetry {
  /** Attempts per phrase, the first included. */
  readonly attempts: number;
  /** Wait after the first failure (ms), doubled after each next one. */
  readonly backoffMs: number;
  /** Longest wait (ms). */
  readonly maxBackoffMs: number;
  /** Share of each wait drawn at random (see `RetryPolicy.jitter`). */
  readonly jitter: number;
}

export const PHRASE_CACHE_RETRY: PhraseCacheRetry = Object.freeze({
  attempts: 3,
  backoffMs: 500,
  maxBackoffMs: 4000,
  jitter: 0.2,
});

/** What a load did: names synthesized, and the ones that failed with why. */
export interface PhraseLoadReport {
  readonly loaded: readonly string[];
  readonly failed: readonly { readonly name: string; readonly error: Error }[];
}

interface Entry {
  readonly text: string;
  readonly audio: Uint8Array;
}

export class PhraseCache {
  readonly #tts: TtsProvider;
  readonly #retry: PhraseCacheRetry;
  readonly #log: Logger | null;
  #phrases: Readonly<Record<string, string>>;
  #entries = new Map<string, Entry>();

  /** `phrases` maps a name ("greeting", "apology") to its text. Nothing is synthesized until `load`. */
  constructor(
    tts: TtsProvider,
    phrases: Readonly<Record<string, string>>,
    options: { retry?: Partial<PhraseCacheRetry>; log?: Logger } = {},
  ) {
    this.#tts = tts;
    this.#phrases = { ...phrases };
    this.#retry = Object.freeze({ ...PHRASE_CACHE_RETRY, ...options.retry });
    this.#log = options.log ?? null;
  }

  /** Raw μ-law 8000 Hz audio of `name`, or null when it is unknown or not synthesized. */
  get(name: string): Uint8Array | null {
    return this.#entries.get(name)?.audio ?? null;
  }

  /** Names with audio. */
  get names(): string[] {
    return [...this.#entries.keys()];
  }

  /** Synthesizes every phrase (with retry); resolves with a report, never rejects unless aborted. */
  load(options: { signal?: AbortSignal } = {}): Promise<PhraseLoadReport> {
    return this.reload({ signal: options.signal });
  }

  /** Re-synthesizes (optionally a new phrase set) and swaps it in; failures keep the old audio. */
  async reload(
    options: { signal?: AbortSignal; phrases?: Readonly<Record<string, string>> } = {},
  ): Promise<PhraseLoadReport> {
    const phrases = options.phrases ? { ...options.phrases } : this.#phrases;
    const names = Object.keys(phrases);
    const results = await Promise.allSettled(
      names.map((name) => this.#synthesize(name, phrases[name], options.signal)),
    );
    options.signal?.throwIfAborted();
    const next = new Map<string, Entry>();
    const loaded: string[] = [];
    const failed: { name: string; error: Error }[] = [];
    results.forEach((result, i) => {
      const name = names[i];
      if (result.status === "fulfilled") {
        next.set(name, { text: phrases[name], audio: result.value });
        loaded.push(name);
        return;
      }
      const error = result.reason instanceof Error
        ? result.reason
        : new Error(String(result.reason));
      failed.push({ name, error });
      const old = this.#entries.get(name);
      if (old) next.set(name, old);
      this.#log?.error("TTS", "phrase synthesis failed", {
        phrase: name,
        kept_old: old !== undefined,
        category: error instanceof ProviderError ? error.category : "unknown",
      });
    });
    this.#phrases = phrases;
    this.#entries = next;
    this.#log?.info("TTS", "phrases cached", { loaded: loaded.length, failed: failed.length });
    return { loaded, failed };
  }

  #synthesize(name: string, text: string, signal: AbortSignal | undefined): Promise<Uint8Array> {
    const { attempts, backoffMs, maxBackoffMs, jitter } = this.#retry;
    return retry(async () => {
      const audio = await this.#tts.synthesize(text, { signal });
      if (audio.length === 0) {
        throw new ProviderError(
          "tts",
          "invalid_request",
          `Cannot cache phrase "${name}": no audio`,
        );
      }
      return audio;
    }, {
      attempts,
      firstMs: backoffMs,
      maxMs: maxBackoffMs,
      jitter,
      signal,
      onRetry: (_error, attempt) => {
        this.#log?.warn("TTS", "phrase synthesis retry", { phrase: name, attempt });
      },
    });
  }
}
