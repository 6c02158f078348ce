/**
 * Issue 7: a peer that stops reading cannot grow Kav's memory without bound. The client here is a
 * raw TCP WebSocket client that does the handshake, sends `connected` + `start`, and never reads
 * again; its agent speaks without end. Once the kernel's socket buffers are full, Deno's
 * `bufferedAmount` grows; the TX worker pauses at `audio.tx_max_buffered_bytes` (the TX queue then
 * holds the agent back: back-pressure), and after `TX_STALL_CLOSE_S` of stall the call is closed
 * and recorded. A reading call on the same server is never paused.
 *
 * `audio.tx_lead_ms` is set huge so TX sends as fast as the socket takes it: at the real-time pace
 * the kernel buffers (several MB on loopback) would take minutes to fill. Nothing else changes.
 */
import assert from "node:assert/strict";
import type { AgentFactory, CallAgent } from "../src/call/agent.ts";
import type { CallSession } from "../src/call/session.ts";
import { TX_STALL_CLOSE_S } from "../src/call/_session_timers.ts";
import { startCallServer, testCallConfig, waitUntil } from "./support/call_server.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const MAX_BUFFERED = 64 * 1024;
const TX_QUEUE_FRAMES = 144;
/** One outbound media message for a 160-byte frame: JSON + 216 base64 chars, well under this. */
const MEDIA_MESSAGE_MAX = 400;

/** A client→server text frame (RFC 6455 5.2: FIN, opcode 1, masked). */
function maskedTextFrame(text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  const n = payload.length;
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const frame = new Uint8Array(head + 4 + n);
  frame[0] = 0x81;
  if (n < 126) frame[1] = 0x80 | n;
  else if (n < 65536) {
    frame[1] = 0x80 | 126;
    new DataView(frame.buffer).setUint16(2, n);
  } else {
    frame[1] = 0x80 | 127;
    new DataView(frame.buffer).setBigUint64(2, BigInt(n));
  }
  const mask = crypto.getRandomValues(new Uint8Array(4));
  frame.set(mask, head);
  for (let i = 0; i < n; i++) frame[head + 4 + i] = payload[i] ^ mask[i & 3];
  return frame;
}

/** Upgrades, starts a stream, and from then on never reads. */
async function stalledClient(port: number, callSid: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(
    "GET /ws/twilio-media HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n" +
      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
      "Sec-WebSocket-Version: 13\r\n\r\n",
  ));
  // Read only the 101 response head (it arrives before any frame is sent).
  let head = "";
  const buffer = new Uint8Array(1);
  while (!head.endsWith("\r\n\r\n")) {
    if (await conn.read(buffer) === null) throw new Error("Connection closed during upgrade");
    head += String.fromCharCode(buffer[0]);
  }
  assert.match(head, /^HTTP\/1\.1 101/);
  const streamSid = "MZ" + callSid.slice(2);
  await conn.write(maskedTextFrame('{"event":"connected","protocol":"Call","version":"1.0.0"}'));
  await conn.write(maskedTextFrame(JSON.stringify({
    event: "start",
    sequenceNumber: "1",
    streamSid,
    start: {
      accountSid: "AC" + "0".repeat(32),
      streamSid,
      callSid,
      tracks: ["inbound"],
      mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
      customParameters: {},
    },
  })));
  return conn;
}

/** An agent that speaks `seconds` of audio (Infinity: until the call ends). */
function speakers(secondsFor: (callSid: string) => number): AgentFactory {
  const second = new Uint8Array(8000).map((_, i) => (i * 5) & 0x7f);
  return (ctx) => {
    (async () => {
      for (let s = 0; s < secondsFor(ctx.callSid) && !ctx.signal.aborted; s++) {
        await ctx.out.play(second, { signal: ctx.signal });
      }
    })().catch(() => {
      // The call ended mid-play.
    });
    const agent: CallAgent = {
      onInboundAudio: () => {},
      onSpeech: () => {},
      onMark: () => {},
      onDtmf: () => {},
      close: () => Promise.resolve(),
    };
    return agent;
  };
}

Deno.test("a client that stops reading pauses its call at tx_max_buffered_bytes, bounded, then the call is closed", async () => {
  const stalledSid = "CA" + "5".repeat(32);
  const server = await startCallServer({
    config: testCallConfig({
      audio: {
        tx_lead_ms: 3_600_000,
        tx_max_buffered_bytes: MAX_BUFFERED,
        tx_queue_frames: TX_QUEUE_FRAMES,
      },
    }),
    agentFactory: speakers((sid) => sid === stalledSid ? Infinity : 20),
  });
  const port = Number(new URL(server.url).port);
  let conn: Deno.TcpConn | null = null;
  let reader: TwilioClient | null = null;
  try {
    conn = await stalledClient(port, stalledSid);
    reader = await server.connect();
    reader.begin();
    await waitUntil(
      () => server.manager.sessions().filter((s) => s.callSid !== null).length === 2,
      { timeoutMs: 10_000, what: "two started calls" },
    );
    const sessions = server.manager.sessions();
    const stalled = sessions.find((s) => s.callSid === stalledSid) as CallSession;
    const healthy = sessions.find((s) => s.callSid === reader!.callSid) as CallSession;
    assert.ok(stalled && healthy);

    await waitUntil(() => stalled.txBacklog.pausedTicks > 0, {
      timeoutMs: 60_000,
      what: "TX paused on the stalled socket",
    });
    assert.ok(server.lines.some((l) => l.includes(`call=${stalledSid}`) && l.includes("pausing")));

    // While paused, Kav holds at most the socket's backlog (one tick's sends past the limit) and
    // a full TX queue; the endless agent waits instead of queueing more.
    let maxBuffered = 0;
    let maxQueued = 0;
    const until = Date.now() + 3000;
    while (Date.now() < until && server.manager.active === 2) {
      const backlog = stalled.txBacklog;
      maxBuffered = Math.max(maxBuffered, backlog.bufferedBytes);
      maxQueued = Math.max(maxQueued, backlog.queuedFrames);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const bound = MAX_BUFFERED + TX_QUEUE_FRAMES * MEDIA_MESSAGE_MAX;
    assert.ok(maxBuffered > MAX_BUFFERED, `reached the limit (${maxBuffered} bytes buffered)`);
    assert.ok(maxBuffered <= bound, `${maxBuffered} bytes buffered, bound ${bound}`);
    assert.ok(maxQueued <= TX_QUEUE_FRAMES, `${maxQueued} frames queued`);

    // Given up after the stall limit: closed and recorded; the reading call was never paused.
    const ended = await server.store.waitForEnded(stalledSid, {
      timeoutMs: (TX_STALL_CLOSE_S + 20) * 1000,
    });
    assert.equal(ended.outcome, "interrupted");
    assert.equal(ended.reason, "socket stalled");
    assert.equal(server.store.events(stalledSid, "limit").length, 1);
    assert.equal(healthy.txBacklog.pausedTicks, 0);
    assert.ok(reader.mediaFrames > 0);
    await waitUntil(() => server.manager.active === 1, { timeoutMs: 5000, what: "one call left" });
    assert.equal(server.manager.sessions()[0], healthy, "the reading call goes on");
  } finally {
    conn?.close();
    await reader?.close();
    await server.close();
  }
});
