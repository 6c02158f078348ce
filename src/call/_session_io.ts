/** Helpers of `CallSession`: speech results, store events, counters. */
import type { Logger } from "../observe/log.ts";
import { parseInbound, type ParseResult, type PayloadDecoder } from "../twilio/protocol.ts";
import { settlesWithin } from "./_cap.ts";
import type { RxWorker } from "./rx_worker.ts";
import type { CallCounters, CallEventKind, CallStore } from "../store/types.ts";
import type { SpeechSession, SttEvent } from "../stt/types.ts";
import type { RxQueue } from "./rx_queue.ts";
import type { TxWorker } from "./tx_worker.ts";
import type { StartMessage } from "../twilio/protocol.ts";

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

/** Records a call event; the store only enqueues. */
export function recordEvent(
  store: CallStore,
  callSid: string,
  kind: CallEventKind,
  detail: string,
): void {
  store.event(callSid, { kind, at: Date.now(), detail });
}

/** The per-call counters stored with the call's end. */
export function counters(
  rx: RxQueue<Uint8Array>,
  tx: TxWorker | null,
  malformed: number,
): CallCounters {
  return {
    rx_frames: rx.received,
    rx_drops: rx.drops,
    tx_frames: tx?.framesSent ?? 0,
    tx_drops: 0,
    tx_late: tx?.lateTicks ?? 0,
    malformed,
  };
}

/** Cap on each shutdown step (agent, speech session), ms. */
export const CLOSE_STEP_CAP_MS = 2000;

/** Runs one shutdown step, awaited up to `CLOSE_STEP_CAP_MS`; failures are logged, not thrown. */
export async function closeCapped(
  what: string,
  close: () => Promise<void>,
  log: Logger,
): Promise<void> {
  let run: Promise<void>;
  try {
    run = close();
  } catch (error) {
    run = Promise.reject(error);
  }
  run.catch((error) => log.warn("CALL", `${what} close failed`, { error: String(error) }));
  if (!(await settlesWithin(run, CLOSE_STEP_CAP_MS))) {
    log.warn("CALL", `${what} close timed out`, { cap_ms: CLOSE_STEP_CAP_MS });
  }
}

/**
 * Rejects binary frames and messages over `maxBytes` (UTF-8) before parsing the rest. The exact
 * byte count is only computed when the character count leaves doubt. `decode` as `parseInbound`.
 */
export function screenInbound(
  data: unknown,
  maxBytes: number,
  decode?: PayloadDecoder,
): ParseResult {
  if (typeof data !== "string") {
    return { ok: false, reason: "binary", error: "Cannot handle a binary frame" };
  }
  if (
    data.length > maxBytes ||
    (data.length * 3 > maxBytes && new TextEncoder().encode(data).length > maxBytes)
  ) {
    return {
      ok: false,
      reason: "oversized",
      error: `Cannot handle a message over ${maxBytes} bytes`,
    };
  }
  return parseInbound(data, decode);
}

/** The per-second `[RX]` and `[TX]` lines (SPEC 2 telemetry). */
export function logTelemetry(
  log: Logger,
  parts: { rx: RxWorker; rxQueue: RxQueue<Uint8Array>; tx: TxWorker; framesIn: number },
): void {
  const rw = parts.rx.takeWindow();
  const tw = parts.tx.takeWindow();
  const q = parts.rxQueue;
  log.info("RX", "", {
    fps_in: parts.framesIn,
    q: q.size,
    drops: q.drops,
    write_ms: rw.writeMsMax,
  });
  log.info("TX", "", {
    fps: tw.frames,
    q: parts.tx.queue.size,
    drops: 0,
    late_ms_max: tw.lateMsMax,
  });
}

/** What Twilio sends as a DTMF digit; anything else is junk, neither passed on nor stored. */
const DTMF_DIGIT = /^[0-9*#A-D]$/;
/** Twilio sids are "CA"/"MZ" + 32 hex; any printable ASCII up to 64 chars is let through. */
const SID = /^[\x21-\x7e]{1,64}$/;

export function isDtmfDigit(digit: string): boolean {
  return DTMF_DIGIT.test(digit);
}

/** A `start` Kav can record and answer: printable sids, and the same streamSid twice. */
export function saneSids(msg: StartMessage): boolean {
  const start = msg.start;
  return SID.test(start.callSid) && SID.test(start.streamSid) &&
    start.streamSid === msg.streamSid;
}

/** A logger that always writes through `current()` (the call's logger changes at `start`). */
export function followingLogger(current: () => Logger): Logger {
  return {
    info: (tag, message, fields) => current().info(tag, message, fields),
    warn: (tag, message, fields) => current().warn(tag, message, fields),
    error: (tag, message, fields) => current().error(tag, message, fields),
    child: (fields) => current().child(fields),
  };
}
