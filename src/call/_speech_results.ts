/** The call's reading of its speech session's results: logged, recorded, handed to the agent. */
import type { Logger } from "../observe/log.ts";
import type { CallEventKind } from "../store/types.ts";
import type { SpeechSession, SttEvent } from "../stt/types.ts";

export interface SpeechSink {
  /** The call's current logger (it changes at `start`). */
  readonly log: () => Logger;
  readonly transcripts: boolean;
  readonly event: (kind: CallEventKind, detail: string) => void;
  readonly deliver: (event: SttEvent) => void;
  readonly fail: (error: unknown) => void;
}

/**
 * Reads `speech.results()` until it ends: logs `[PARTIAL]`/`[FINAL]` (text only when
 * `log.transcripts`), records restarts and provider errors, and hands every event to the agent.
 */
export function consumeSpeech(speech: SpeechSession, sink: SpeechSink): Promise<void> {
  return (async () => {
    for await (const event of speech.results()) {
      const log = sink.log();
      switch (event.type) {
        case "partial":
        case "final": {
          const tag = event.type === "partial" ? "PARTIAL" : "FINAL";
          if (sink.transcripts) log.info(tag, JSON.stringify(event.text));
          else log.info(tag, "", { chars: event.text.length });
          break;
        }
        case "restart":
          log.info("STT", "stream restarted", { reason: event.reason });
          sink.event("stt_restart", event.reason);
          break;
        case "error":
          log.warn("STT", "provider error", {
            category: event.error.category,
            fatal: event.fatal,
          });
          sink.event("provider_error", `stt ${event.error.category}`);
          break;
        default: {
          const never: never = event;
          throw new TypeError(`Cannot handle speech event "${JSON.stringify(never)}"`);
        }
      }
      sink.deliver(event);
    }
  })().catch(sink.fail);
}
