/**
 * The fast path of `parseInbound` for the message a call receives 50 times a second, exactly as
 * Twilio writes it (twilio-media-streams.md section 1: this key order, no whitespace):
 *
 *   {"event":"media","sequenceNumber":"4","streamSid":"MZ…","media":{"track":"inbound",
 *    "chunk":"2","timestamp":"5","payload":"…"}}
 *
 * It reads the fields by position, with no JSON object tree and no regular expression per number
 * (measured: ~40 % less CPU than `JSON.parse` + validation for this message).
 * Anything else (another key order, whitespace, escapes, a bad number or payload) returns null and
 * the general parser decides, so for every text this accepts the result equals what `JSON.parse`
 * plus validation would give.
 */
import type { MediaMessage } from "./protocol.ts";

/** How every media message in Twilio's layout starts. */
export const MEDIA_PREFIX = '{"event":"media"';
const HEAD = `${MEDIA_PREFIX},"sequenceNumber":"`;
const SID = '","streamSid":"';
const TRACK = '","media":{"track":"';
const CHUNK = '","chunk":"';
const TIMESTAMP = '","timestamp":"';
const PAYLOAD = '","payload":"';
const TAIL = '"}}';
/** Characters a JSON string cannot hold raw (controls), or that would end or escape it. */
// deno-lint-ignore no-control-regex -- raw control characters are exactly what JSON forbids here
const NOT_PLAIN = /[\u0000-\u001f"\\]/;

/** The decimal counter in `text[from, to)` (1-15 digits, as `count()` accepts), or -1. */
function digits(text: string, from: number, to: number): number {
  const n = to - from;
  if (n < 1 || n > 15) return -1;
  let value = 0;
  for (let i = from; i < to; i++) {
    const c = text.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return -1;
    value = value * 10 + c;
  }
  return value;
}

/** A plain JSON string's content from `from` to the next quote, or null; `end` gets the quote. */
function plain(text: string, from: number, end: { at: number }): string | null {
  const quote = text.indexOf('"', from);
  if (quote < 0) return null;
  const value = text.slice(from, quote);
  if (NOT_PLAIN.test(value)) return null;
  end.at = quote;
  return value;
}

/** Turns a base64 payload into bytes; null when it is not base64. */
export type PayloadDecoder = (b64: string) => Uint8Array | null;

/** Decodes a base64 payload; null when it is not base64. */
export function decodeBase64(b64: string): Uint8Array | null {
  try {
    return Uint8Array.fromBase64(b64);
  } catch {
    return null;
  }
}

/**
 * The media message in `text` when it has Twilio's exact layout, else null (see above).
 * `decode` turns the payload into bytes (a `PayloadSlab` reuses its frames).
 */
export function parseMediaFast(
  text: string,
  decode: PayloadDecoder = decodeBase64,
): MediaMessage | null {
  if (!text.startsWith(HEAD) || !text.endsWith(TAIL)) return null;
  const end = { at: 0 };
  const seqEnd = text.indexOf('"', HEAD.length);
  const sequenceNumber = digits(text, HEAD.length, seqEnd);
  if (sequenceNumber < 0 || !text.startsWith(SID, seqEnd)) return null;
  const streamSid = plain(text, seqEnd + SID.length, end);
  if (streamSid === null || !text.startsWith(TRACK, end.at)) return null;
  const track = plain(text, end.at + TRACK.length, end);
  if (track === null || !text.startsWith(CHUNK, end.at)) return null;
  const chunkFrom = end.at + CHUNK.length;
  const chunkEnd = text.indexOf('"', chunkFrom);
  const chunk = digits(text, chunkFrom, chunkEnd);
  if (chunk < 0 || !text.startsWith(TIMESTAMP, chunkEnd)) return null;
  const tsFrom = chunkEnd + TIMESTAMP.length;
  const tsEnd = text.indexOf('"', tsFrom);
  const timestamp = digits(text, tsFrom, tsEnd);
  if (timestamp < 0 || !text.startsWith(PAYLOAD, tsEnd)) return null;
  const payloadFrom = tsEnd + PAYLOAD.length;
  const payloadEnd = text.length - TAIL.length;
  if (payloadEnd < payloadFrom) return null;
  const b64 = text.slice(payloadFrom, payloadEnd);
  if (NOT_PLAIN.test(b64)) return null;
  const payload = decode(b64);
  if (payload === null) return null;
  return {
    event: "media",
    sequenceNumber,
    streamSid,
    media: { track, chunk, timestamp, payload },
  };
}
