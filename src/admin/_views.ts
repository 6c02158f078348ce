/**
 * The JSON the console API answers (docs/console.md lists every field): live calls, history rows
 * and one call's record. Phone numbers (and custom parameters, DTMF digits) are masked unless
 * `log.transcripts` allows personal data; transcripts are shown, as the console is where an
 * operator reads them.
 */
import type { LiveCall, LiveSnapshot } from "../call/live.ts";
import type { CallDetail, CallRow } from "../store/read.ts";
import type { CallEvent } from "../store/types.ts";

/** "+972501234567" → "+•••••••••4567": the last four digits say which call it was. */
export function maskNumber(number: string | null): string | null {
  if (number === null) return null;
  const digits = number.replace(/\D/g, "");
  if (digits.length <= 4) return "•".repeat(digits.length);
  return (number.startsWith("+") ? "+" : "") + "•".repeat(digits.length - 4) + digits.slice(-4);
}

export interface ViewOptions {
  /** `log.transcripts`: numbers and digits shown as they are. */
  readonly personalData: boolean;
}

export interface LiveCallView extends Omit<LiveCall, "from" | "to"> {
  readonly from: string | null;
  readonly to: string | null;
  /** Seconds since the media socket opened. */
  readonly durationS: number;
}

export interface LiveView {
  readonly at: number;
  readonly active: number;
  readonly calls: readonly LiveCallView[];
}

export function liveView(snapshot: LiveSnapshot, options: ViewOptions): LiveView {
  const mask = options.personalData ? (n: string | null) => n : maskNumber;
  return {
    at: snapshot.at,
    active: snapshot.calls.length,
    calls: snapshot.calls.map((call) => ({
      ...call,
      from: mask(call.from),
      to: mask(call.to),
      durationS: Math.max(0, Math.round((snapshot.at - call.connectedAt) / 100) / 10),
    })),
  };
}

export function callRowView(row: CallRow, options: ViewOptions): CallRow {
  if (options.personalData) return row;
  const customParameters: Record<string, string> = {};
  for (const [key, value] of Object.entries(row.customParameters)) {
    customParameters[key] = /^\+?[\d\s()-]{5,}$/.test(value) ? maskNumber(value) ?? "" : value;
  }
  return { ...row, from: maskNumber(row.from), to: maskNumber(row.to), customParameters };
}

/**
 * One call: its row, turns (speaking order), events (time order), and whatever else the record
 * carries (tool calls, transfers: later issues add them; the page shows unknown parts generically).
 */
export function callDetailView(detail: CallDetail, options: ViewOptions): CallDetail {
  const events = options.personalData
    ? detail.events
    : detail.events.map((event): CallEvent =>
      event.kind === "dtmf" ? { ...event, detail: "•".repeat(event.detail.length) } : event
    );
  if (options.personalData) return { ...detail, call: callRowView(detail.call, options), events };
  // Keypad turns are DTMF digits and transfers name numbers: masked like them (SPEC 6 records).
  return {
    ...detail,
    call: callRowView(detail.call, options),
    events,
    turns: detail.turns.map((turn) =>
      turn.input === "keypad" ? { ...turn, text: "•".repeat(turn.text.length) } : turn
    ),
    transfers: detail.transfers.map((transfer) => ({
      ...transfer,
      target: transfer.target.startsWith("+") ? maskNumber(transfer.target) ?? "" : transfer.target,
    })),
  };
}
