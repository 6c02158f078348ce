import assert from "node:assert/strict";
import type { AgentFactory } from "../src/call/agent.ts";
import {
  patternAudio,
  recordingAgents,
  runConcurrentCalls,
  startCallServer,
  testCallConfig,
  waitUntil,
} from "./support/call_server.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

Deno.test("CallManager runs 20 concurrent streaming calls without loss", async () => {
  const server = await startCallServer({ greeting: patternAudio(25, 1) });
  try {
    const audio = patternAudio(100, 2); // 2 s each
    const clients = await runConcurrentCalls(server, 20, { audio });
    assert.equal(server.manager.active <= 20, true);
    const ended = await Promise.all(
      clients.map((c) => server.store.waitForEnded(c.callSid, { timeoutMs: 10_000 })),
    );
    for (const e of ended) {
      assert.equal(e.outcome, "completed");
      assert.equal(e.counters.rx_frames, 100);
      assert.equal(e.counters.rx_drops, 0);
      assert.equal(e.counters.malformed, 0);
    }
    assert.equal(server.stt.sessions.length, 20);
    for (const s of server.stt.sessions) assert.deepEqual(s.bytes(), audio);
    for (const c of clients) {
      assert.ok(c.mediaFrames >= 20, `greeting frames: ${c.mediaFrames}`);
      assert.equal(c.invalid.length, 0);
    }
    assert.equal(new Set(ended.map((e) => e.counters.tx_frames)).size, 1, "same greeting for all");
    await waitUntil(() => server.manager.active === 0, { timeoutMs: 5000, what: "all ended" });
  } finally {
    await server.close();
  }
});

Deno.test("CallManager closes a call with no media for idle_media_timeout_s", async () => {
  const config = testCallConfig({ server: { idle_media_timeout_s: 0.3 } });
  const server = await startCallServer({ config });
  try {
    const client = await server.connect();
    client.begin();
    await client.streamSilence(200);
    const ended = await server.store.waitForEnded(client.callSid, { timeoutMs: 5000 });
    assert.equal(ended.outcome, "idle");
    assert.equal(server.store.events(client.callSid, "limit").length, 1);
    const closed = await client.closed;
    assert.equal(closed.code, 1000);
  } finally {
    await server.close();
  }
});

Deno.test("CallManager closes a call at max_call_duration_s even while media flows", async () => {
  const config = testCallConfig({ server: { max_call_duration_s: 0.5 } });
  const server = await startCallServer({ config });
  try {
    const client = await server.connect();
    client.begin();
    const sent = await client.streamSilence(3000);
    assert.ok(sent < 100, `stream stopped by the close after ${sent} frames`);
    const ended = await server.store.waitForEnded(client.callSid, { timeoutMs: 5000 });
    assert.equal(ended.outcome, "max_duration");
  } finally {
    await server.close();
  }
});

Deno.test("CallManager.drain() waits for calls, then closes the rest as drained", async () => {
  const server = await startCallServer();
  try {
    const finishing = await server.connect();
    const lingering = await server.connect();
    finishing.begin();
    lingering.begin();
    await waitUntil(() => server.store.calls.size === 2, { timeoutMs: 5000, what: "starts" });
    const draining = server.manager.drain({ timeoutMs: 400 });
    assert.equal(server.manager.canAccept(), false);
    finishing.sendStop();
    const result = await draining;
    assert.deepEqual(result, { finished: 1, forced: 1 });
    assert.equal(server.store.calls.get(finishing.callSid)?.ended?.outcome, "completed");
    assert.equal(server.store.calls.get(lingering.callSid)?.ended?.outcome, "drained");
    assert.ok(server.lines.some((l) => l.includes("drain timeout, closing active calls")));
    await assert.rejects(TwilioClient.connect({ url: server.url }), /Cannot open WebSocket/);
    assert.equal(server.manager.active, 0);
  } finally {
    await server.close();
  }
});

Deno.test("CallManager.drain() stops waiting when its signal aborts", async () => {
  const server = await startCallServer();
  try {
    const client = await server.connect();
    client.begin();
    await waitUntil(() => server.store.calls.size === 1, { timeoutMs: 5000, what: "start" });
    const controller = new AbortController();
    const draining = server.manager.drain({ timeoutMs: 60_000, signal: controller.signal });
    controller.abort();
    assert.deepEqual(await draining, { finished: 0, forced: 1 });
    assert.equal(server.store.calls.get(client.callSid)?.ended?.outcome, "drained");
    assert.deepEqual(await server.manager.drain({ timeoutMs: 0 }), { finished: 0, forced: 0 });
  } finally {
    await server.close();
  }
});

Deno.test("CallManager refuses sockets over max_calls", async () => {
  const config = testCallConfig({ server: { max_calls: 1 } });
  const server = await startCallServer({ config });
  try {
    const first = await server.connect();
    first.begin();
    assert.equal(server.manager.canAccept(), false);
    await assert.rejects(TwilioClient.connect({ url: server.url }), /Cannot open WebSocket/);
    // attach() itself also refuses (a caller that skipped canAccept()).
    const extra = await waitForAttachRefusal(server.url, server.manager);
    assert.equal(extra.code, 1013);
  } finally {
    await server.close();
  }
});

async function waitForAttachRefusal(
  url: string,
  manager: { attach(s: WebSocket, m: { remoteAddr: string }): unknown },
): Promise<{ code: number }> {
  const controller = new AbortController();
  let result: unknown = "unset";
  const side = Deno.serve({
    port: 0,
    hostname: "127.0.0.1",
    signal: controller.signal,
    onListen() {},
  }, (request) => {
    const { socket, response } = Deno.upgradeWebSocket(request);
    result = manager.attach(socket, { remoteAddr: "127.0.0.1" });
    return response;
  });
  try {
    const ws = new WebSocket(url.replace(/:\d+\//, `:${side.addr.port}/`));
    const code = await new Promise<number>((resolve) => {
      ws.addEventListener("close", (e) => resolve(e.code), { once: true });
    });
    assert.equal(result, null);
    return { code };
  } finally {
    controller.abort();
    await side.finished;
  }
}

Deno.test("A failing agent factory ends only its own call", async () => {
  let n = 0;
  const good = recordingAgents();
  const factory: AgentFactory = (ctx) => {
    if (++n === 1) throw new Error("agent exploded");
    return good.factory(ctx);
  };
  const server = await startCallServer({ agentFactory: factory });
  try {
    const broken = await server.connect();
    broken.begin();
    const brokenEnd = await server.store.waitForEnded(broken.callSid, { timeoutMs: 5000 });
    assert.equal(brokenEnd.outcome, "error");
    assert.match(brokenEnd.reason, /agent exploded/);
    assert.ok(
      server.lines.some((l) => l.includes(`call=${broken.callSid}`) && l.includes("call failed")),
    );
    const fine = await server.connect();
    fine.begin();
    const audio = patternAudio(25, 3);
    await fine.streamAudio(audio);
    fine.sendStop();
    const fineEnd = await server.store.waitForEnded(fine.callSid, { timeoutMs: 5000 });
    assert.equal(fineEnd.outcome, "completed");
    assert.deepEqual(server.stt.sessions[1].bytes(), audio);
  } finally {
    await server.close();
  }
});

Deno.test("A speech session whose write throws ends the call with outcome error", async () => {
  const server = await startCallServer({ speech: { writeError: new Error("stt write failed") } });
  try {
    const client = await server.connect();
    client.begin();
    await client.streamSilence(200);
    const ended = await server.store.waitForEnded(client.callSid, { timeoutMs: 5000 });
    assert.equal(ended.outcome, "error");
    assert.match(ended.reason, /stt write failed/);
    assert.equal(server.stt.sessions[0].closed, true);
  } finally {
    await server.close();
  }
});

Deno.test("An agent can hang up its call", async () => {
  const agents = recordingAgents();
  const server = await startCallServer({ agentFactory: agents.factory });
  try {
    const client = await server.connect();
    client.begin();
    await waitUntil(() => agents.agents.length === 1, { timeoutMs: 5000, what: "agent" });
    agents.agents[0].ctx.hangup("caller said goodbye");
    const ended = await server.store.waitForEnded(client.callSid, { timeoutMs: 5000 });
    assert.equal(ended.outcome, "completed");
    assert.equal(ended.reason, "caller said goodbye");
    assert.equal((await client.closed).code, 1000);
  } finally {
    await server.close();
  }
});
