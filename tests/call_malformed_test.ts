import assert from "node:assert/strict";
import { renderMetrics } from "../src/observe/metrics.ts";
import type { MalformedReason } from "../src/twilio/protocol.ts";
import { patternAudio, startCallServer, testCallConfig, waitUntil } from "./support/call_server.ts";
import type { TwilioClient } from "../tools/twilio/client.ts";

function malformedCount(reason: MalformedReason): number {
  const line = renderMetrics().split("\n").find((l) =>
    l.startsWith(`kav_malformed_messages_total{reason="${reason}"}`)
  );
  return line === undefined ? 0 : Number(line.split(" ")[1]);
}

const CASES: { reason: MalformedReason; send: (client: TwilioClient) => void }[] = [
  { reason: "invalid_json", send: (c) => c.sendRaw('{"event":"media",') },
  { reason: "binary", send: (c) => c.sendRaw(new Uint8Array([1, 2, 3])) },
  {
    reason: "unknown_event",
    send: (c) => c.sendRaw(JSON.stringify({ event: "hangup", streamSid: c.streamSid })),
  },
  {
    reason: "bad_base64",
    send: (c) =>
      c.sendRaw(JSON.stringify({
        event: "media",
        sequenceNumber: "9",
        streamSid: c.streamSid,
        media: { track: "inbound", chunk: "9", timestamp: "160", payload: "%%%" },
      })),
  },
  {
    reason: "oversized",
    send: (c) =>
      c.sendRaw(JSON.stringify({ event: "mark", streamSid: c.streamSid, x: "a".repeat(5000) })),
  },
  { reason: "duplicate_start", send: (c) => c.sendStart() },
  {
    reason: "wrong_stream_sid",
    send: (c) =>
      c.sendRaw(JSON.stringify({
        event: "media",
        sequenceNumber: "9",
        streamSid: "MZ-someone-else",
        media: { track: "inbound", chunk: "9", timestamp: "160", payload: "AAAA" },
      })),
  },
  {
    reason: "invalid_shape",
    send: (c) => c.sendRaw(JSON.stringify({ event: "mark", streamSid: c.streamSid, mark: 3 })),
  },
];

Deno.test("CallSession logs, counts and skips each kind of malformed input; the call goes on", async () => {
  const server = await startCallServer({
    config: testCallConfig({ server: { max_ws_message_bytes: 4096 } }),
  });
  try {
    const before = new Map(CASES.map((c) => [c.reason, malformedCount(c.reason)]));
    const beforeStart = malformedCount("before_start");
    const bad = await server.connect();
    const good = await server.connect();
    // Media before start, then a normal start.
    bad.sendMedia(patternAudio(1, 9));
    bad.begin();
    good.begin();
    const audioBad = patternAudio(50, 5);
    const audioGood = patternAudio(100, 6);
    const goodStreaming = good.streamAudio(audioGood);
    await bad.streamAudio(audioBad.subarray(0, 160 * 25));
    for (const c of CASES) c.send(bad);
    await bad.streamAudio(audioBad.subarray(160 * 25));
    await goodStreaming;
    bad.sendStop();
    good.sendStop();
    const endedBad = await server.store.waitForEnded(bad.callSid, { timeoutMs: 5000 });
    const endedGood = await server.store.waitForEnded(good.callSid, { timeoutMs: 5000 });

    assert.equal(endedBad.outcome, "completed", "the call went on to its stop");
    assert.equal(endedBad.counters.malformed, CASES.length + 1);
    assert.equal(endedGood.counters.malformed, 0);
    const [sttBad, sttGood] = server.stt.sessions;
    assert.deepEqual(sttBad.bytes(), audioBad, "media before and after the junk reached STT");
    assert.deepEqual(sttGood.bytes(), audioGood, "the other call is unaffected");

    for (const c of CASES) {
      assert.equal(malformedCount(c.reason), (before.get(c.reason) ?? 0) + 1, c.reason);
    }
    assert.equal(malformedCount("before_start"), beforeStart + 1);
    const warnings = server.lines.filter((l) => l.includes("[WS]") && l.includes("malformed"));
    assert.equal(warnings.length, CASES.length + 1);
    for (const c of CASES) {
      assert.ok(warnings.some((w) => w.includes(`reason=${c.reason}`)), c.reason);
      assert.ok(warnings.some((w) => w.includes(`call=${bad.callSid}`)));
    }
    assert.ok(warnings.some((w) => / call=conn-\d+ .*reason=before_start/.test(w)));
    assert.equal(server.store.events(bad.callSid, "malformed").length, CASES.length);
    // The duplicate start did not replace the stream's identity.
    assert.equal(server.store.calls.get(bad.callSid)?.started.streamSid, bad.streamSid);
  } finally {
    await server.close();
  }
});

Deno.test("CallSession survives a flood of junk and keeps logging bounded", async () => {
  const server = await startCallServer();
  try {
    const client = await server.connect();
    client.begin();
    for (let i = 0; i < 500; i++) client.sendRaw(`junk ${i}`);
    const audio = patternAudio(20, 7);
    await client.streamAudio(audio);
    client.sendStop();
    const ended = await server.store.waitForEnded(client.callSid, { timeoutMs: 5000 });
    assert.equal(ended.counters.malformed, 500);
    assert.deepEqual(server.stt.sessions[0].bytes(), audio);
    const warnings = server.lines.filter((l) => l.includes("[WS]"));
    assert.ok(warnings.length <= 20, `${warnings.length} warning lines`);
  } finally {
    await server.close();
  }
});

Deno.test("CallSession ends as interrupted when the socket closes without stop", async () => {
  const server = await startCallServer();
  try {
    const client = await server.connect();
    client.begin();
    await client.streamSilence(100);
    await client.close(); // no stop: Twilio dropped the connection
    const ended = await server.store.waitForEnded(client.callSid, { timeoutMs: 5000 });
    assert.equal(ended.outcome, "interrupted");
    await waitUntil(() => server.manager.active === 0, { timeoutMs: 5000, what: "no calls" });
  } finally {
    await server.close();
  }
});

Deno.test("CallSession keeps queued audio intact when rejected media arrives while rx_q is full", async () => {
  // STT opens late, so accepted frames wait in a 4-frame rx_q (the oldest dropped when full) while
  // media for another stream is rejected in between: its payload must not land in a queued frame.
  const server = await startCallServer({
    config: testCallConfig({ audio: { rx_queue_frames: 4 } }),
    speech: { readyDelayMs: 500 },
  });
  try {
    const client = await server.connect();
    client.begin();
    const audio = patternAudio(8, 11);
    const junk = new Uint8Array(160).fill(0x7e).toBase64();
    const foreign = (n: number) =>
      `{"event":"media","sequenceNumber":"${n}","streamSid":"MZ-someone-else","media":` +
      `{"track":"inbound","chunk":"${n}","timestamp":"${n * 20}","payload":"${junk}"}}`;
    for (let i = 0; i < 8; i++) {
      client.sendMedia(audio.subarray(i * 160, (i + 1) * 160));
      for (let k = 0; k < 3; k++) client.sendRaw(foreign(100 + i * 3 + k));
    }
    await waitUntil(() => server.stt.sessions.length === 1, { timeoutMs: 5000, what: "STT" });
    const speech = server.stt.sessions[0];
    await waitUntil(() => speech.length === 4 * 160, { timeoutMs: 5000, what: "4 frames to STT" });
    client.sendStop();
    const ended = await server.store.waitForEnded(client.callSid, { timeoutMs: 5000 });
    assert.equal(ended.counters.malformed, 24);
    assert.equal(ended.counters.rx_drops, 4);
    assert.deepEqual(speech.bytes(), audio.subarray(4 * 160), "the newest 4 frames, as sent");
  } finally {
    await server.close();
  }
});
