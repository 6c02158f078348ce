import type { ProviderError } from "../errors.ts";
import type { Logger } from "../observe/log.ts";

/** What a speech session reports. Times are ms on the session's audio clock (0 = first byte written). */
export type SttEvent =
  | { readonly type: "partial"; readonly text: string; readonly stability: number }
  | { readonly type: "final"; readonly text: string; readonly confidence: number }
  /** The underlying stream was replaced (duration limit, error, fallback); audio was replayed. */
  | { readonly type: "restart"; readonly reason: string }
  /** A provider failure the session recovered from (fatal=false) or could not (fatal=true). */
  | { readonly type: "error"; readonly error: ProviderError; readonly fatal: boolean };

/**
 * One call's streaming recognizer. Only the call's RX worker calls `write`; nothing is written before
 * `ready` resolves (the RX queue holds the audio meanwhile).
 */
export interface SpeechSession {
  /** Resolves once audio can be written (stream open, or fallback mode engaged). Never rejects. */
  readonly ready: Promise<void>;
  /** One or more 20 ms μ-law frames; must not block. The session batches to `stt.batch_ms`. */
  write(mulaw: Uint8Array): void;
  /** Recognition events, ending when the session closes. */
  results(): AsyncIterable<SttEvent>;
  /** Flushes, ends the stream and releases it. Idempotent. */
  close(): Promise<void>;
}

export interface SttOpenOptions {
  readonly language: string;
  readonly signal: AbortSignal;
  readonly log: Logger;
}

/** Opens one session per call. Google is the cloud implementation; an on-prem one sits beside it. */
export interface SttProvider {
  open(options: SttOpenOptions): SpeechSession;
  /**
   * Creates clients and connects ahead of the first call, so the first call is as fast as the
   * hundredth. Never rejects: a provider that cannot connect yet will try again per call.
   */
  warm?(): Promise<void>;
  /** Releases shared clients/channels at shutdown. */
  close(): Promise<void>;
}
