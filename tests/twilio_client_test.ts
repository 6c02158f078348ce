/**
 * The one Twilio-like client (tools/twilio/client.ts) against a scripted WebSocket server: the
 * load generator's fast media path reads exactly what the checked path reads, and both echo marks
 * like Twilio (when their audio has played, at once on `clear`).
 */
import assert from "node:assert/strict";
import { TwilioClient } from "../tools/twilio/client.ts";
import { ManualScheduler } from "./support/manual_scheduler.ts";

/** Sizes chosen for each base64 padding: 160 bytes ends "==", 161 "=", 159 none. */
const SIZES = [160, 161, 159];

function bytes(n: number, seed: number): Uint8Array {
  return new Uint8Array(n).map((_, i) => (i * 7 + seed) & 0xff);
}

/** Sends the script once `start` arrives; resolves the echoes the client sent back. */
function startScriptServer() {
  const echoes: string[] = [];
  const stop = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: stop.signal, onListen() {} },
    (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (e) => {
        const message = JSON.parse(e.data);
        if (message.event === "mark") echoes.push(message.mark.name);
        if (message.event !== "start") return;
        const sid = message.start.streamSid as string;
        const send = (data: unknown) => socket.send(JSON.stringify(data));
        const media = (payload: Uint8Array) =>
          send({ event: "media", streamSid: sid, media: { payload: payload.toBase64() } });
        media(bytes(SIZES[0], 1));
        send({ event: "mark", streamSid: sid, mark: { name: "m1" } });
        media(bytes(SIZES[1], 2));
        send({ event: "clear", streamSid: sid });
        socket.send(`{"event":"media","streamSid":"${sid}","media":{"payload":"AAAA","x":1}}`);
        send({ event: "media", streamSid: "MZ-someone-else", media: { payload: "AAAA" } });
        socket.send(new Uint8Array([1, 2, 3]));
        media(bytes(SIZES[2], 3));
        send({ event: "mark", streamSid: sid, mark: { name: "done" } });
      };
      return response;
    },
  );
  return {
    url: `ws://127.0.0.1:${server.addr.port}/`,
    echoes,
    async close() {
      stop.abort();
      await server.finished;
    },
  };
}

for (const fastMedia of [false, true]) {
  Deno.test(`TwilioClient reads media, marks, clear and bad messages (fastMedia ${fastMedia})`, async () => {
    const server = startScriptServer();
    const scheduler = new ManualScheduler(1000);
    const heard: number[] = [];
    const invalid: string[] = [];
    const client = await TwilioClient.connect({
      url: server.url,
      scheduler,
      fastMedia,
      listener: {
        media: (_at, n) => heard.push(n),
        invalid: (_raw, why) => invalid.push(why),
      },
    });
    try {
      client.begin();
      await client.waitFor(() => client.marks.includes("done"), { timeoutMs: 5000, what: "done" });
      assert.deepEqual(heard, SIZES);
      assert.equal(client.mediaFrames, 3);
      assert.deepEqual(
        client.audio(),
        new Uint8Array([...bytes(160, 1), ...bytes(161, 2), ...bytes(159, 3)]),
      );
      assert.deepEqual(client.received.map((m) => m.event), [
        "media",
        "mark",
        "media",
        "clear",
        "media",
        "mark",
      ]);
      assert.deepEqual(invalid, ["bad media shape", "wrong streamSid", "binary frame"]);
      assert.equal(client.invalid.length, 3);
      assert.deepEqual(client.clears, [1000]);
      // The clear flushed m1 at once; "done" waits for the 159 bytes before it to play.
      assert.deepEqual(client.echoes.map((e) => [e.name, e.cleared]), [["m1", true]]);
      assert.equal(client.playoutEndsAt, 1000 + 159 / 8);
      assert.equal(client.pendingEchoes, 1);
      scheduler.advance(19);
      assert.equal(client.pendingEchoes, 1);
      scheduler.advance(1);
      assert.deepEqual(client.echoes.map((e) => [e.name, e.echoedAt, e.cleared]), [
        ["m1", 1000, true],
        ["done", 1000 + 159 / 8, false],
      ]);
      for (let i = 0; i < 500 && server.echoes.length < 2; i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      assert.deepEqual(server.echoes, ["m1", "done"]);
    } finally {
      await client.close();
      await server.close();
    }
  });
}

Deno.test("TwilioClient without keepMessages still counts, times and echoes", async () => {
  const server = startScriptServer();
  const scheduler = new ManualScheduler();
  const client = await TwilioClient.connect({
    url: server.url,
    scheduler,
    fastMedia: true,
    keepAudio: false,
    keepMessages: false,
  });
  try {
    client.begin();
    await client.waitFor(() => client.marks.includes("done"), { timeoutMs: 5000, what: "done" });
    assert.equal(client.mediaFrames, 3);
    assert.deepEqual(client.received, []);
    assert.deepEqual(client.mediaArrivals, []);
    assert.equal(client.audio().length, 0);
    // 160 bytes, then a mark: a new utterance; 161 bytes, then clear; so no interval is counted.
    assert.equal(client.interArrival.count, 0);
    scheduler.advance(20);
    assert.deepEqual(client.echoes.map((e) => e.name), ["m1", "done"]);
  } finally {
    await client.close();
    await server.close();
  }
});
