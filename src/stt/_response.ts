/**
 * Reads one `StreamingRecognizeResponse` as google-gax decodes it: the interim hypothesis (all
 * non-final results concatenated, most stable first) and the finals with their end time on the
 * stream's audio clock.
 */
import type { protos } from "@google-cloud/speech";

type Response = protos.google.cloud.speech.v1.IStreamingRecognizeResponse;

/** A final result; `endMs` is `resultEndTime` from the start of the stream's audio, if present. */
export interface FinalResult {
  readonly text: string;
  readonly confidence: number;
  readonly endMs: number | null;
}

export interface ReadResponse {
  readonly partial: { readonly text: string; readonly stability: number } | null;
  readonly finals: readonly FinalResult[];
}

/** Milliseconds of a protobuf Duration as decoded by google-gax (seconds may be a string or Long). */
export function durationMs(value: unknown): number | null {
  if (typeof value !== "object" || value === null) return null;
  const { seconds, nanos } = value as { seconds?: unknown; nanos?: unknown };
  const s = seconds === null || seconds === undefined ? 0 : Number(String(seconds));
  const n = typeof nanos === "number" ? nanos : 0;
  return Number.isFinite(s) ? s * 1000 + n / 1e6 : null;
}

export function readResponse(response: Response): ReadResponse {
  let partial = "";
  let stability = 0;
  const finals: FinalResult[] = [];
  for (const result of response.results ?? []) {
    const best = result.alternatives?.[0];
    const text = (best?.transcript ?? "").trim();
    if (result.isFinal) {
      finals.push({
        text,
        confidence: best?.confidence ?? 0,
        endMs: durationMs(result.resultEndTime),
      });
    } else if (text !== "") {
      if (partial === "") stability = result.stability ?? 0;
      partial = partial === "" ? text : `${partial} ${text}`;
    }
  }
  return { partial: partial === "" ? null : { text: partial, stability }, finals };
}
