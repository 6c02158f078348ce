/** What one synthesis request may set besides the text. */
export interface TtsRequestOptions {
  readonly signal?: AbortSignal;
  /** Overrides the provider's configured voice. */
  readonly voice?: string;
}

/** Text to raw μ-law 8000 Hz mono audio, no header. */
export interface TtsProvider {
  /** The whole audio of `text` at once (cached phrases; providers that cannot stream). */
  synthesize(text: string, options: TtsRequestOptions): Promise<Uint8Array>;
  /**
   * The audio of `text` as it arrives: whole 20 ms frames (160 bytes each), only the last chunk
   * may be shorter. Absent when the provider answers in one piece (Google). Rejects with a
   * `ProviderError`, or with `signal.reason` when aborted.
   */
  stream?(text: string, options: TtsRequestOptions): AsyncIterable<Uint8Array>;
  close(): Promise<void>;
}
