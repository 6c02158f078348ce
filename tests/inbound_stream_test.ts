import assert from "node:assert/strict";
import { InboundStream } from "../src/twilio/inbound_stream.ts";
import type { MalformedReason } from "../src/twilio/protocol.ts";

const SID = "MZ" + "a".repeat(32);
const START = JSON.stringify({
  event: "start",
  sequenceNumber: "1",
  streamSid: SID,
  start: { accountSid: "AC1", streamSid: SID, callSid: "CA" + "b".repeat(32), tracks: ["inbound"] },
});

function media(streamSid: string, fill: number, seq = 2): string {
  const payload = new Uint8Array(160).fill(fill).toBase64();
  return `{"event":"media","sequenceNumber":"${seq}","streamSid":"${streamSid}","media":` +
    `{"track":"inbound","chunk":"${seq}","timestamp":"${seq * 20}","payload":"${payload}"}}`;
}

function event(name: "dtmf" | "mark" | "stop", streamSid: string): string {
  const body = name === "dtmf"
    ? { dtmf: { digit: "5" } }
    : name === "mark"
    ? { mark: { name: "greeting_end" } }
    : { stop: {} };
  return JSON.stringify({ event: name, sequenceNumber: "3", streamSid, ...body });
}

function reason(stream: InboundStream, data: unknown): MalformedReason | "ok" {
  const result = stream.read(data);
  return result.ok ? "ok" : result.reason;
}

Deno.test("InboundStream accepts nothing but connected before start, then only its own stream", () => {
  const stream = new InboundStream({ maxBytes: 4096, payloadSlots: 4 });
  assert.equal(reason(stream, '{"event":"connected","protocol":"Call","version":"1.0.0"}'), "ok");
  assert.equal(reason(stream, media(SID, 1)), "before_start");
  for (const name of ["dtmf", "mark", "stop"] as const) {
    assert.equal(reason(stream, event(name, SID)), "before_start", name);
  }
  assert.equal(reason(stream, START), "ok");
  const again = stream.read(START.replaceAll(SID, "MZ-second"));
  assert.deepEqual(again.ok ? null : [again.reason, again.error], [
    "duplicate_start",
    'Cannot start again as "MZ-second"',
  ]);
  assert.equal(reason(stream, media(SID, 1)), "ok");
  assert.equal(reason(stream, media("MZ-other", 1)), "wrong_stream_sid");
  for (const name of ["dtmf", "mark", "stop"] as const) {
    assert.equal(reason(stream, event(name, SID)), "ok", name);
    assert.equal(reason(stream, event(name, "MZ-other")), "wrong_stream_sid", name);
  }
  assert.equal(reason(stream, new Uint8Array(3)), "binary");
  assert.equal(reason(stream, media(SID, 1).padEnd(4097)), "oversized");
});

Deno.test("InboundStream waits for a valid start after one with malformed sids", () => {
  const stream = new InboundStream({ maxBytes: 4096, payloadSlots: 4 });
  assert.equal(reason(stream, START.replaceAll(SID, "MZ 1")), "invalid_shape");
  assert.equal(reason(stream, media(SID, 1)), "before_start");
  assert.equal(reason(stream, START), "ok");
});

Deno.test("InboundStream: rejected media never overwrites an accepted payload", () => {
  const slots = 3;
  const stream = new InboundStream({ maxBytes: 4096, payloadSlots: slots });
  const before = stream.read(media(SID, 0xee));
  assert.equal(before.ok, false, "media before start");
  stream.read(START);
  const kept: Uint8Array[] = [];
  for (let i = 1; i < slots; i++) {
    const read = stream.read(media(SID, i));
    assert.ok(read.ok && read.msg.event === "media");
    kept.push(read.msg.media.payload);
    // Another stream's media, many times: decoded, then rejected.
    for (let k = 0; k < 10; k++) {
      assert.equal(reason(stream, media("MZ-other", 0x70 + k)), "wrong_stream_sid");
    }
  }
  assert.deepEqual(kept.map((p) => [p.length, p[0], p[159]]), [[160, 1, 1], [160, 2, 2]]);
});
