/** Text to raw μ-law 8000 Hz mono audio, no header. */
export interface TtsProvider {
  synthesize(text: string, options: { signal?: AbortSignal; voice?: string }): Promise<Uint8Array>;
  close(): Promise<void>;
}
