/**
 * Twilio Media Streams wire protocol (bidirectional `<Connect><Stream>`), pure: text in, a validated
 * discriminated union out; outbound messages built as exact JSON strings. No socket here.
 * Shapes: twilio-media-streams.md sections 1-2.
 */

import { decodeBase64, MEDIA_PREFIX, parseMediaFast, type PayloadDecoder } from "./_media_fast.ts";
export type { PayloadDecoder } from "./_media_fast.ts";

export interface ConnectedMessage {
  readonly event: "connected";
  readonly protocol: string;
  readonly version: string;
}

export interface MediaFormat {
  readonly encoding: string;
  readonly sampleRate: number;
  readonly channels: number;
}

export interface StartMessage {
  readonly event: "start";
  readonly sequenceNumber: number;
  readonly streamSid: string;
  readonly start: {
    readonly accountSid: string;
    readonly streamSid: string;
    readonly callSid: string;
    readonly tracks: readonly string[];
    /** Absent from the message ⇒ null (Twilio documents it as always μ-law 8000 Hz mono). */
    readonly mediaFormat: MediaFormat | null;
    /** TwiML `<Parameter>` pairs; `{}` when absent. */
    readonly customParameters: Readonly<Record<string, string>>;
  };
}

export interface MediaMessage {
  readonly event: "media";
  readonly sequenceNumber: number;
  readonly streamSid: string;
  readonly media: {
    readonly track: string;
    /** Message counter from 1. */
    readonly chunk: number;
    /** Presentation time, ms from the start of the stream. */
    readonly timestamp: number;
    /** Raw μ-law 8000 Hz, decoded from base64. */
    readonly payload: Uint8Array;
  };
}

export interface DtmfMessage {
  readonly event: "dtmf";
  readonly sequenceNumber: number;
  readonly streamSid: string;
  readonly dtmf: { readonly track: string; readonly digit: string };
}

export interface MarkMessage {
  readonly event: "mark";
  readonly sequenceNumber: number;
  readonly streamSid: string;
  readonly mark: { readonly name: string };
}

export interface StopMessage {
  readonly event: "stop";
  readonly sequenceNumber: number;
  readonly streamSid: string;
  readonly stop: { readonly accountSid: string; readonly callSid: string };
}

export type InboundMessage =
  | ConnectedMessage
  | StartMessage
  | MediaMessage
  | DtmfMessage
  | MarkMessage
  | StopMessage;

/**
 * Why an inbound message was rejected: the first six come from `parseInbound`, the last three from
 * `InboundStream` (label values of `kav_malformed_messages_total`).
 */
export type MalformedReason =
  | "invalid_json"
  | "invalid_shape"
  | "unknown_event"
  | "bad_base64"
  | "binary"
  | "oversized"
  | "before_start"
  | "duplicate_start"
  | "wrong_stream_sid";

export type ParseResult =
  | { readonly ok: true; readonly msg: InboundMessage }
  | { readonly ok: false; readonly reason: MalformedReason; readonly error: string };

type Json = Record<string, unknown>;

/** Thrown inside the parser only; turned into `{ ok: false }` at the boundary. */
class Invalid {
  constructor(readonly reason: MalformedReason, readonly error: string) {}
}

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function object(parent: Json, key: string): Json {
  const value = parent[key];
  if (!isObject(value)) throw new Invalid("invalid_shape", `Expected object at "${key}"`);
  return value;
}

function string(parent: Json, key: string): string {
  const value = parent[key];
  if (typeof value !== "string") throw new Invalid("invalid_shape", `Expected string at "${key}"`);
  return value;
}

const DIGITS = /^\d{1,15}$/;
/** What Twilio sends as a DTMF digit; anything else is junk, neither passed on nor stored. */
const DTMF_DIGIT = /^[0-9*#A-D]$/;
/** Twilio sids are "CA"/"MZ" + 32 hex; any printable ASCII up to 64 chars is let through. */
const SID = /^[\x21-\x7e]{1,64}$/;

/** A value for error text: never throws (JSON may hold `{"toString":1}`), at most 40 chars. */
function preview(value: unknown): string {
  const text = typeof value === "object" && value !== null
    ? (Array.isArray(value) ? "an array" : "an object")
    : String(value);
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}

/** Twilio sends counters as decimal strings; a plain non-negative integer is accepted too. */
function count(parent: Json, key: string): number {
  const value = parent[key];
  if (typeof value === "string" && DIGITS.test(value)) return Number(value);
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) return value;
  throw new Invalid(
    "invalid_shape",
    `Expected a number string at "${key}": got "${preview(value)}"`,
  );
}

function number(parent: Json, key: string): number {
  const value = parent[key];
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new Invalid("invalid_shape", `Expected number at "${key}"`);
  }
  return value;
}

function stringRecord(parent: Json, key: string): Record<string, string> {
  const value = parent[key];
  if (value === undefined || value === null) return {};
  if (!isObject(value)) throw new Invalid("invalid_shape", `Expected object at "${key}"`);
  const out: Record<string, string> = {};
  for (const k of Object.keys(value)) {
    const v = value[k];
    if (typeof v !== "string") {
      throw new Invalid("invalid_shape", `Expected string at "${key}.${k}"`);
    }
    out[k] = v;
  }
  return out;
}

function decodePayload(media: Json): Uint8Array {
  const text = string(media, "payload");
  const payload = decodeBase64(text);
  if (payload === null) {
    throw new Invalid(
      "bad_base64",
      `Cannot decode media payload of ${text.length} chars as base64`,
    );
  }
  return payload;
}

function parseStart(m: Json): StartMessage {
  const start = object(m, "start");
  const tracks = start["tracks"];
  if (
    tracks !== undefined && !(Array.isArray(tracks) && tracks.every((t) => typeof t === "string"))
  ) {
    throw new Invalid("invalid_shape", `Expected string array at "tracks"`);
  }
  const streamSid = string(m, "streamSid");
  const callSid = string(start, "callSid");
  // Not a stream Kav could record or answer: printable sids, and the same streamSid twice.
  if (!SID.test(callSid) || !SID.test(streamSid) || string(start, "streamSid") !== streamSid) {
    throw new Invalid("invalid_shape", "Cannot start a stream with malformed sids");
  }
  let mediaFormat: MediaFormat | null = null;
  if (start["mediaFormat"] !== undefined) {
    const f = object(start, "mediaFormat");
    mediaFormat = {
      encoding: string(f, "encoding"),
      sampleRate: number(f, "sampleRate"),
      channels: number(f, "channels"),
    };
  }
  return {
    event: "start",
    sequenceNumber: count(m, "sequenceNumber"),
    streamSid,
    start: {
      accountSid: string(start, "accountSid"),
      streamSid,
      callSid,
      tracks: (tracks as string[] | undefined) ?? ["inbound"],
      mediaFormat,
      customParameters: stringRecord(start, "customParameters"),
    },
  };
}

function parseObject(m: Json): InboundMessage {
  const event = m["event"];
  switch (event) {
    case "connected":
      return { event, protocol: string(m, "protocol"), version: string(m, "version") };
    case "start":
      return parseStart(m);
    case "media": {
      const media = object(m, "media");
      return {
        event,
        sequenceNumber: count(m, "sequenceNumber"),
        streamSid: string(m, "streamSid"),
        media: {
          track: typeof media["track"] === "string" ? media["track"] : "inbound",
          chunk: count(media, "chunk"),
          timestamp: count(media, "timestamp"),
          payload: decodePayload(media),
        },
      };
    }
    case "dtmf": {
      const dtmf = object(m, "dtmf");
      if (!DTMF_DIGIT.test(string(dtmf, "digit"))) {
        throw new Invalid("invalid_shape", "Cannot handle a DTMF digit that is not 0-9*#A-D");
      }
      return {
        event,
        sequenceNumber: count(m, "sequenceNumber"),
        streamSid: string(m, "streamSid"),
        dtmf: {
          track: typeof dtmf["track"] === "string" ? dtmf["track"] : "inbound_track",
          digit: string(dtmf, "digit"),
        },
      };
    }
    case "mark":
      return {
        event,
        sequenceNumber: count(m, "sequenceNumber"),
        streamSid: string(m, "streamSid"),
        mark: { name: string(object(m, "mark"), "name") },
      };
    case "stop": {
      const stop = isObject(m["stop"]) ? m["stop"] : {};
      return {
        event,
        sequenceNumber: count(m, "sequenceNumber"),
        streamSid: string(m, "streamSid"),
        stop: {
          accountSid: typeof stop["accountSid"] === "string" ? stop["accountSid"] : "",
          callSid: typeof stop["callSid"] === "string" ? stop["callSid"] : "",
        },
      };
    }
    default:
      throw new Invalid("unknown_event", `Cannot handle event "${preview(event)}"`);
  }
}

export interface InboundOptions {
  /** Largest message accepted, UTF-8 bytes (`server.max_ws_message_bytes`); default: any size. */
  readonly maxBytes?: number;
  /** Turns a media payload into bytes (a `PayloadSlab` reuses its frames); default: a new array. */
  readonly decode?: PayloadDecoder;
}

/** Whether `data` (a WebSocket message) starts like a media message: the call's 50-a-second case. */
export function looksLikeMedia(data: unknown): boolean {
  return typeof data === "string" && data.startsWith(MEDIA_PREFIX);
}

/**
 * Parses and validates one inbound WebSocket message (`MessageEvent.data`). Never throws. Binary
 * frames and messages over `maxBytes` are rejected before parsing; the exact byte count is only
 * computed when the character count leaves doubt. Media in Twilio's exact layout takes a fast path
 * (`_media_fast.ts`) with the same result.
 */
export function parseInbound(data: unknown, options: InboundOptions = {}): ParseResult {
  if (typeof data !== "string") {
    return { ok: false, reason: "binary", error: "Cannot handle a binary frame" };
  }
  const text = data;
  const maxBytes = options.maxBytes ?? Infinity;
  if (
    text.length > maxBytes ||
    (text.length * 3 > maxBytes && new TextEncoder().encode(text).length > maxBytes)
  ) {
    return {
      ok: false,
      reason: "oversized",
      error: `Cannot handle a message over ${maxBytes} bytes`,
    };
  }
  const media = parseMediaFast(text, options.decode ?? decodeBase64);
  if (media !== null) return { ok: true, msg: media };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return {
      ok: false,
      reason: "invalid_json",
      error: `Cannot parse message of ${text.length} chars as JSON`,
    };
  }
  if (!isObject(value)) {
    return { ok: false, reason: "invalid_shape", error: "Expected a JSON object message" };
  }
  try {
    return { ok: true, msg: parseObject(value) };
  } catch (error) {
    if (error instanceof Invalid) return { ok: false, reason: error.reason, error: error.error };
    throw error;
  }
}

/**
 * Builds outbound messages for one stream. The JSON-escaped streamSid is computed once, so a media
 * message costs one base64 encode and one concatenation.
 */
export class OutboundEncoder {
  readonly streamSid: string;
  readonly #mediaPrefix: string;
  readonly #markPrefix: string;
  readonly #clear: string;

  constructor(streamSid: string) {
    this.streamSid = streamSid;
    const sid = JSON.stringify(streamSid);
    this.#mediaPrefix = `{"event":"media","streamSid":${sid},"media":{"payload":"`;
    this.#markPrefix = `{"event":"mark","streamSid":${sid},"mark":{"name":`;
    this.#clear = `{"event":"clear","streamSid":${sid}}`;
  }

  /** `{"event":"media","streamSid":…,"media":{"payload":"<base64 μ-law>"}}` */
  media(payload: Uint8Array): string {
    return this.#mediaPrefix + payload.toBase64() + '"}}';
  }

  /** `{"event":"mark","streamSid":…,"mark":{"name":…}}` */
  mark(name: string): string {
    return this.#markPrefix + JSON.stringify(name) + "}}";
  }

  /** `{"event":"clear","streamSid":…}` */
  clear(): string {
    return this.#clear;
  }
}

/** One outbound `media` message (use `OutboundEncoder` on hot paths: it escapes the sid once). */
export function mediaMessage(streamSid: string, payload: Uint8Array): string {
  return `{"event":"media","streamSid":${
    JSON.stringify(streamSid)
  },"media":{"payload":"${payload.toBase64()}"}}`;
}

/** One outbound `mark` message. */
export function markMessage(streamSid: string, name: string): string {
  return `{"event":"mark","streamSid":${JSON.stringify(streamSid)},"mark":{"name":${
    JSON.stringify(name)
  }}}`;
}

/** One outbound `clear` message. */
export function clearMessage(streamSid: string): string {
  return `{"event":"clear","streamSid":${JSON.stringify(streamSid)}}`;
}
