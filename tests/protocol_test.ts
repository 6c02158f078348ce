import assert from "node:assert/strict";
import fc from "fast-check";
import {
  clearMessage,
  markMessage,
  mediaMessage,
  OutboundEncoder,
  parseInbound,
} from "../src/twilio/protocol.ts";
import { decodeBase64 } from "../src/twilio/_media_fast.ts";
import { PayloadSlab } from "../src/twilio/payload_slab.ts";

const SID = "MZ18ad3ab5a668481ce02b83e7395059f0";
const START = {
  event: "start",
  sequenceNumber: "1",
  streamSid: SID,
  start: {
    accountSid: "AC123",
    streamSid: SID,
    callSid: "CA123",
    tracks: ["inbound"],
    mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
    customParameters: { From: "+972501234567", To: "+97231234567" },
  },
};

function parsed(value: unknown) {
  const result = parseInbound(JSON.stringify(value));
  if (!result.ok) throw new Error(`expected ok, got ${result.reason}: ${result.error}`);
  return result.msg;
}

function rejected(text: string) {
  const result = parseInbound(text);
  if (result.ok) throw new Error(`expected an error for ${text}`);
  return result;
}

Deno.test("parseInbound() reads connected and start with custom parameters", () => {
  assert.deepEqual(parsed({ event: "connected", protocol: "Call", version: "1.0.0" }), {
    event: "connected",
    protocol: "Call",
    version: "1.0.0",
  });
  const msg = parsed(START);
  assert.equal(msg.event, "start");
  if (msg.event !== "start") return;
  assert.equal(msg.sequenceNumber, 1);
  assert.equal(msg.start.callSid, "CA123");
  assert.deepEqual(msg.start.customParameters, { From: "+972501234567", To: "+97231234567" });
  assert.deepEqual(msg.start.mediaFormat, {
    encoding: "audio/x-mulaw",
    sampleRate: 8000,
    channels: 1,
  });
});

Deno.test("parseInbound() decodes media payload and string numbers", () => {
  const payload = new Uint8Array([0xff, 0x7f, 0x00, 0x80, 1, 2, 3]);
  const msg = parsed({
    event: "media",
    sequenceNumber: "4",
    streamSid: SID,
    media: { track: "inbound", chunk: "2", timestamp: "5", payload: payload.toBase64() },
  });
  assert.equal(msg.event, "media");
  if (msg.event !== "media") return;
  assert.equal(msg.sequenceNumber, 4);
  assert.equal(msg.media.chunk, 2);
  assert.equal(msg.media.timestamp, 5);
  assert.deepEqual(msg.media.payload, payload);
});

Deno.test("parseInbound() reads dtmf, mark and stop", () => {
  const dtmf = parsed({
    event: "dtmf",
    streamSid: SID,
    sequenceNumber: "5",
    dtmf: { track: "inbound_track", digit: "1" },
  });
  assert.deepEqual(dtmf, {
    event: "dtmf",
    sequenceNumber: 5,
    streamSid: SID,
    dtmf: { track: "inbound_track", digit: "1" },
  });
  const mark = parsed({
    event: "mark",
    sequenceNumber: "4",
    streamSid: SID,
    mark: { name: "a b" },
  });
  assert.deepEqual(mark, {
    event: "mark",
    sequenceNumber: 4,
    streamSid: SID,
    mark: { name: "a b" },
  });
  const stop = parsed({
    event: "stop",
    sequenceNumber: "5",
    streamSid: SID,
    stop: { accountSid: "AC1", callSid: "CA1" },
  });
  assert.deepEqual(stop, {
    event: "stop",
    sequenceNumber: 5,
    streamSid: SID,
    stop: { accountSid: "AC1", callSid: "CA1" },
  });
});

Deno.test("parseInbound() rejects invalid JSON, non-objects and unknown events", () => {
  assert.equal(rejected("{not json").reason, "invalid_json");
  assert.equal(rejected("[1,2]").reason, "invalid_shape");
  assert.equal(rejected("null").reason, "invalid_shape");
  const unknown = rejected(JSON.stringify({ event: "hangup", streamSid: SID }));
  assert.equal(unknown.reason, "unknown_event");
  assert.match(unknown.error, /"hangup"/);
  assert.equal(rejected(JSON.stringify({ streamSid: SID })).reason, "unknown_event");
});

Deno.test("parseInbound() rejects bad base64 and wrong field types", () => {
  const media = (payload: unknown, chunk: unknown = "1") =>
    JSON.stringify({
      event: "media",
      sequenceNumber: "2",
      streamSid: SID,
      media: { track: "inbound", chunk, timestamp: "0", payload },
    });
  assert.equal(rejected(media("@@not base64@@")).reason, "bad_base64");
  assert.equal(rejected(media(42)).reason, "invalid_shape");
  assert.equal(rejected(media("AAAA", "x1")).reason, "invalid_shape");
  assert.equal(rejected(media("AAAA", "-1")).reason, "invalid_shape");
  const noSid = { ...START, streamSid: undefined };
  assert.equal(rejected(JSON.stringify(noSid)).reason, "invalid_shape");
  const badParams = { ...START, start: { ...START.start, customParameters: { a: 1 } } };
  assert.match(rejected(JSON.stringify(badParams)).error, /customParameters\.a/);
  const noMark = { event: "mark", sequenceNumber: "1", streamSid: SID, mark: {} };
  assert.equal(rejected(JSON.stringify(noMark)).reason, "invalid_shape");
});

Deno.test("parseInbound() rejects binary frames and messages over maxBytes, counted in UTF-8", () => {
  const binary = parseInbound(new Uint8Array([123, 125]).buffer);
  assert.deepEqual(binary, { ok: false, reason: "binary", error: "Cannot handle a binary frame" });
  const mark = (name: string) =>
    JSON.stringify({ event: "mark", sequenceNumber: "1", streamSid: SID, mark: { name } });
  const ascii = mark("a".repeat(100));
  assert.ok(parseInbound(ascii, { maxBytes: ascii.length }).ok, "exactly the limit passes");
  const over = parseInbound(ascii, { maxBytes: ascii.length - 1 });
  assert.deepEqual(over.ok ? null : [over.reason, over.error], [
    "oversized",
    `Cannot handle a message over ${ascii.length - 1} bytes`,
  ]);
  // Hebrew: 2 bytes a character in UTF-8, so fewer characters than the limit can still be over it.
  const hebrew = mark("ש".repeat(100));
  const bytes = new TextEncoder().encode(hebrew).length;
  assert.ok(hebrew.length < bytes);
  assert.ok(parseInbound(hebrew, { maxBytes: bytes }).ok);
  const cut = parseInbound(hebrew, { maxBytes: bytes - 1 });
  assert.equal(cut.ok ? null : cut.reason, "oversized");
});

Deno.test("parseInbound() rejects a DTMF digit other than 0-9 * # A-D", () => {
  const dtmf = (digit: string) =>
    JSON.stringify({ event: "dtmf", sequenceNumber: "1", streamSid: SID, dtmf: { digit } });
  for (const digit of ["0", "9", "*", "#", "A", "D"]) {
    assert.ok(parseInbound(dtmf(digit)).ok, digit);
  }
  for (const digit of ["", "E", "a", "12", " 1", "\u0661"]) {
    const result = rejected(dtmf(digit));
    assert.equal(result.reason, "invalid_shape", digit);
    assert.match(result.error, /DTMF digit/);
  }
});

Deno.test("parseInbound() rejects a start whose sids Kav could not record or answer", () => {
  const start = (streamSid: string, inner: string, callSid: string) =>
    JSON.stringify({ ...START, streamSid, start: { ...START.start, streamSid: inner, callSid } });
  assert.ok(parseInbound(start(SID, SID, "CA" + "f".repeat(32))).ok);
  for (
    const [outer, inner, call] of [
      [SID, SID, ""],
      [SID, SID, "CA 1"],
      [SID, SID, "C".repeat(65)],
      ["", "", "CA1"],
      ["MZ\n1", "MZ\n1", "CA1"],
      [SID, "MZ-other", "CA1"],
    ]
  ) {
    const result = rejected(start(outer, inner, call));
    assert.deepEqual([result.reason, result.error], [
      "invalid_shape",
      "Cannot start a stream with malformed sids",
    ], `${outer} ${inner} ${call}`);
  }
});

Deno.test("mediaMessage(), markMessage(), clearMessage() build Twilio's exact shapes", () => {
  const payload = new Uint8Array(160).fill(0xff);
  const media = JSON.parse(mediaMessage(SID, payload));
  assert.deepEqual(media, {
    event: "media",
    streamSid: SID,
    media: { payload: payload.toBase64() },
  });
  assert.deepEqual(Object.keys(media), ["event", "streamSid", "media"]);
  assert.deepEqual(JSON.parse(markMessage(SID, 'say "hi"')), {
    event: "mark",
    streamSid: SID,
    mark: { name: 'say "hi"' },
  });
  assert.deepEqual(JSON.parse(clearMessage(SID)), { event: "clear", streamSid: SID });
});

Deno.test("OutboundEncoder escapes the streamSid once and matches the plain builders", () => {
  fc.assert(
    fc.property(fc.string(), fc.uint8Array({ maxLength: 400 }), fc.string(), (sid, audio, name) => {
      const encoder = new OutboundEncoder(sid);
      assert.equal(encoder.media(audio), mediaMessage(sid, audio));
      assert.equal(encoder.mark(name), markMessage(sid, name));
      assert.equal(encoder.clear(), clearMessage(sid));
      const back = JSON.parse(encoder.media(audio));
      assert.equal(back.streamSid, sid);
      assert.deepEqual(Uint8Array.fromBase64(back.media.payload), audio);
    }),
  );
});

Deno.test("parseInbound() round-trips any media payload", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 480 }), fc.nat(), (audio, seq) => {
      const text = JSON.stringify({
        event: "media",
        sequenceNumber: String(seq),
        streamSid: SID,
        media: { track: "inbound", chunk: String(seq), timestamp: "20", payload: audio.toBase64() },
      });
      const result = parseInbound(text);
      assert.ok(result.ok);
      if (result.ok && result.msg.event === "media") {
        assert.deepEqual(result.msg.media.payload, audio);
        assert.equal(result.msg.sequenceNumber, seq);
      } else assert.fail("expected a media message");
    }),
  );
});

Deno.test("parseInbound() gives the same result on its media fast path as on the JSON path", () => {
  // Pretty-printing the same JSON forces the general path (the fast path needs Twilio's exact
  // layout, no whitespace), so it is the reference for any text.
  const reference = (text: string) => {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return { ok: false, reason: "invalid_json" };
    }
    const result = parseInbound(JSON.stringify(value, null, 1));
    return result.ok ? result : { ok: false, reason: result.reason };
  };
  const outcome = (text: string) => {
    const result = parseInbound(text);
    return result.ok ? result : { ok: false, reason: result.reason };
  };
  const counter = fc.oneof(
    fc.nat({ max: 1e6 }).map(String),
    fc.constantFrom("", "007", "1e3", "-1", "1.5", " 1", "9999999999999999"),
    fc.string({ maxLength: 4 }),
  );
  const text = fc.oneof(fc.constantFrom(SID, "inbound", ""), fc.string({ maxLength: 12 }));
  const payload = fc.oneof(
    fc.uint8Array({ maxLength: 200 }).map((b) => b.toBase64()),
    fc.constantFrom("@@", "AA\nAA", "AA AA", "AAA=", "=", 'A"A'),
    fc.string({ maxLength: 8 }),
  );
  const escaped = (s: string) => JSON.stringify(s).slice(1, -1);
  fc.assert(
    fc.property(
      counter,
      text,
      text,
      counter,
      counter,
      payload,
      fc.boolean(),
      (seq, sid, track, chunk, ts, b64, raw) => {
        // `raw` inserts values unescaped (invalid JSON when they hold quotes or controls).
        const v = raw ? (s: string) => s : escaped;
        const message = `{"event":"media","sequenceNumber":"${v(seq)}","streamSid":"${v(sid)}",` +
          `"media":{"track":"${v(track)}","chunk":"${v(chunk)}","timestamp":"${v(ts)}",` +
          `"payload":"${v(b64)}"}}`;
        assert.deepEqual(outcome(message), reference(message));
      },
    ),
    { numRuns: 2000 },
  );
});

function mediaText(payload: string): string {
  return JSON.stringify({
    event: "media",
    sequenceNumber: "4",
    streamSid: SID,
    media: { track: "inbound", chunk: "2", timestamp: "20", payload },
  });
}

Deno.test("PayloadSlab decodes exactly as decodeBase64, whatever the text", () => {
  const slab = new PayloadSlab(4);
  const frame = fc.uint8Array({ minLength: 160, maxLength: 160 }).map((b) => b.toBase64());
  // 216 characters is a frame's length: every variant of that length must still decode exactly.
  const sameLength = fc.tuple(frame, fc.nat(215), fc.constantFrom("=", " ", "@", "\n", "A", "/"))
    .map(([b64, at, c]) => b64.slice(0, at) + c + b64.slice(at + 1));
  const unpadded = fc.uint8Array({ minLength: 162, maxLength: 162 }).map((b) => b.toBase64());
  const any = fc.oneof(
    frame,
    sameLength,
    unpadded,
    fc.uint8Array({ maxLength: 200 }).map((b) => b.toBase64()),
    fc.string({ maxLength: 220 }),
  );
  fc.assert(
    fc.property(any, (b64) => {
      const expected = decodeBase64(b64);
      const got = slab.decode(b64);
      if (expected === null) assert.equal(got, null);
      else assert.deepEqual(got === null ? null : Array.from(got), Array.from(expected));
    }),
    { numRuns: 3000 },
  );
});

Deno.test("PayloadSlab reuses a taken frame only after `slots` later frames are taken", () => {
  const slab = new PayloadSlab(3);
  const frameOf = (n: number) => new Uint8Array(160).fill(n).toBase64();
  const taken = (n: number) => {
    const frame = slab.decode(frameOf(n)) as Uint8Array;
    slab.take(frame);
    return frame;
  };
  const decoded = [1, 2, 3].map(taken);
  assert.deepEqual(decoded.map((f) => f[0]), [1, 2, 3], "3 frames live at once stay intact");
  assert.equal(new Set(decoded.map((f) => f.buffer)).size, 1, "all in one buffer");
  const fourth = taken(4);
  assert.equal(fourth, decoded[0], "the 4th frame takes the 1st slot");
  assert.equal(decoded[1][0], 2);
  const odd = slab.decode(new Uint8Array(80).fill(9).toBase64()) as Uint8Array;
  assert.equal(odd.length, 80, "another size gets its own array");
  assert.notEqual(odd.buffer, fourth.buffer);
  slab.take(odd);
  assert.equal(slab.decode("@".repeat(216)), null);
  assert.equal(taken(5)[0], 5);
  assert.equal(decoded[1][0], 5, "a bad or odd payload takes no slot");
  assert.throws(() => new PayloadSlab(1), /payload slab of "1" slots/);
});

Deno.test("PayloadSlab decodes into one free slot until a frame is taken", () => {
  const slab = new PayloadSlab(2);
  const frameOf = (n: number) => new Uint8Array(160).fill(n).toBase64();
  const kept = slab.decode(frameOf(1)) as Uint8Array;
  slab.take(kept);
  // Rejected messages: decoded, never taken. However many, they reuse the free slot.
  const rejected = [2, 3, 4, 5].map((n) => slab.decode(frameOf(n)) as Uint8Array);
  assert.equal(new Set(rejected).size, 1, "one slot for all of them");
  assert.notEqual(rejected[0], kept);
  assert.equal(kept[0], 1, "the taken frame is intact");
  assert.equal(rejected[0][0], 5);
});

Deno.test("parseInbound() with a PayloadSlab gives what it gives without one", () => {
  const slab = new PayloadSlab(8);
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 480 }), (audio) => {
      const text = mediaText(audio.toBase64());
      assert.deepEqual(parseInbound(text, { decode: slab.decode }), parseInbound(text));
    }),
  );
});
