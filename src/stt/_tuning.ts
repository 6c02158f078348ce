/** The Google STT session's retry and buffering numbers, in one frozen object (STYLE pattern 7). */
export interface SttTuning {
  /**
   * Open attempts per endpoint. SPEC "retry 3 times" is read with its acceptance test: a stream
   * refused 3 times moves on to the fallback endpoint, so 3 attempts in all.
   */
  readonly openAttempts: number;
  /** Wait between open attempts (ms), the same each time (SPEC: "3 times with 200 ms backoff"). */
  readonly openBackoffMs: number;
  /** `ready` resolves anyway this long after the first open started (ms); audio stays buffered. */
  readonly readyGraceMs: number;
  /** `close()` waits this long for the last results before cancelling (ms). */
  readonly closeTimeoutMs: number;
  /** Deadline of one `Recognize` call (ms). */
  readonly recognizeTimeoutMs: number;
  /** Replay buffer size in bytes of μ-law (240,000 = 30 s). */
  readonly ringBytes: number;
  /** Past the age limit with no final, restart once this much silence ends the audio (ms). */
  readonly quietRestartMs: number;
  /** Past the age limit by this much, restart even mid-speech (Google's hard limit is near) (ms). */
  readonly forceRestartSlackMs: number;
  /**
   * A stream that fails sooner than this after starting, with no result, is a failed open; so are
   * `openAttempts` such streams in a row, results or not (replayed audio gives results at once) (ms).
   */
  readonly minHealthyStreamMs: number;
  /** In recognize mode, streaming is tried again this long after recognize mode began (ms). */
  readonly resumeFirstMs: number;
  /** Each failed try doubles the wait before the next, up to this (ms). */
  readonly resumeMaxMs: number;
  /**
   * A stream that took the config and has neither failed nor ended this long after is up (ms).
   * Response headers are not waited for: many servers send them only with the first result.
   */
  readonly acceptGraceMs: number;
  /**
   * A stream that has never answered is dead once speech was sent into it this long ago with no
   * result (ms). Silence on a quiet line proves nothing and never counts.
   */
  readonly resultTimeoutMs: number;
  /**
   * Wait before sending a failed `Recognize` utterance again (ms); doubles up to the max, less up
   * to `RESEND_JITTER` at random (the provider policy's `backoffMs`).
   */
  readonly recognizeRetryFirstMs: number;
  readonly recognizeRetryMaxMs: number;
  readonly eventCapacity: number;
}

export const STT_TUNING: SttTuning = Object.freeze({
  openAttempts: 3,
  openBackoffMs: 200,
  readyGraceMs: 3000,
  closeTimeoutMs: 2000,
  recognizeTimeoutMs: 10_000,
  ringBytes: 240_000,
  quietRestartMs: 800,
  forceRestartSlackMs: 8000,
  minHealthyStreamMs: 1000,
  resumeFirstMs: 2000,
  resumeMaxMs: 30_000,
  acceptGraceMs: 300,
  resultTimeoutMs: 4000,
  recognizeRetryFirstMs: 250,
  recognizeRetryMaxMs: 2000,
  eventCapacity: 256,
});
