/**
 * One media stream's inbound side, still pure (no socket): each WebSocket message is parsed and
 * validated by `parseInbound`, then checked against the stream so far: nothing but `connected`
 * before `start`, one `start`, and every later event for that start's streamSid
 * (twilio-media-streams.md section 1).
 *
 * Media payloads are decoded into a `PayloadSlab`; the slot is taken only once the message is
 * accepted, so rejected media (another stream's, or before `start`) never overwrites a frame still
 * waiting in the RX queue.
 */
import { PayloadSlab } from "./payload_slab.ts";
import { type MalformedReason, parseInbound, type ParseResult } from "./protocol.ts";

export interface InboundStreamOptions {
  /** `server.max_ws_message_bytes`. */
  readonly maxBytes: number;
  /**
   * Decoded frames that must stay valid at once: the RX queue's capacity + 2 (see
   * `payload_slab.ts`).
   */
  readonly payloadSlots: number;
}

function rejected(reason: MalformedReason, error: string): ParseResult {
  return { ok: false, reason, error };
}

export class InboundStream {
  readonly #maxBytes: number;
  readonly #payloads: PayloadSlab;
  /** The accepted `start`'s streamSid; null before it. */
  #streamSid: string | null = null;

  constructor(options: InboundStreamOptions) {
    this.#maxBytes = options.maxBytes;
    this.#payloads = new PayloadSlab(options.payloadSlots);
  }

  /**
   * The message in `data` (`MessageEvent.data`) when it is valid for this stream, else why not.
   * Never throws. An accepted media payload stays valid until `payloadSlots - 1` later media
   * messages are accepted; copy what must live longer.
   */
  read(data: unknown): ParseResult {
    const parsed = parseInbound(data, { maxBytes: this.#maxBytes, decode: this.#payloads.decode });
    if (!parsed.ok) return parsed;
    const msg = parsed.msg;
    const sid = this.#streamSid;
    switch (msg.event) {
      case "connected":
        return parsed;
      case "start":
        if (sid !== null) {
          return rejected(
            "duplicate_start",
            `Cannot start again as "${msg.streamSid.slice(0, 64)}"`,
          );
        }
        this.#streamSid = msg.streamSid;
        return parsed;
      case "media":
        if (sid === null) return rejected("before_start", "Media before start");
        if (msg.streamSid !== sid) return wrongStream(msg.streamSid);
        this.#payloads.take(msg.media.payload);
        return parsed;
      case "dtmf":
      case "mark":
      case "stop":
        if (sid === null) return rejected("before_start", "Stream event before start");
        if (msg.streamSid !== sid) return wrongStream(msg.streamSid);
        return parsed;
      default: {
        const never: never = msg;
        throw new TypeError(`Cannot check message "${JSON.stringify(never)}"`);
      }
    }
  }
}

function wrongStream(streamSid: string): ParseResult {
  return rejected("wrong_stream_sid", `Cannot handle stream "${streamSid.slice(0, 64)}"`);
}
