import assert from "node:assert/strict";
import { sharedScheduler, sleepUntil } from "../src/call/scheduler.ts";
import {
  patternAudio,
  recordingAgents,
  startCallServer,
  testCallConfig,
  waitUntil,
} from "./support/call_server.ts";

function sleep(ms: number): Promise<void> {
  return sleepUntil(sharedScheduler(), performance.now() + ms, {});
}

function indexOfLine(lines: string[], text: string): number {
  return lines.findIndex((l) => l.includes(text));
}

Deno.test("CallSession logs the start-up lines once each, in order", async () => {
  const server = await startCallServer({ speech: { readyDelayMs: 300 } });
  try {
    const client = await server.connect();
    client.begin();
    await client.waitForEcho("greeting_end", { timeoutMs: 10_000 });
    const lines = server.lines;
    const order = [
      "RX_WORKER started",
      "TX_WORKER started",
      "STT_SESSION init requested",
      "GREETING queued",
    ].map((t) => indexOfLine(lines, t));
    assert.ok(order.every((i) => i >= 0), lines.join("\n"));
    assert.deepEqual([...order].sort((a, b) => a - b), order);
    const ready = indexOfLine(lines, "STT_SESSION ready");
    assert.ok(ready > order[2], "ready comes after init requested");
    for (const text of ["RX_WORKER started", "STT_SESSION ready", "GREETING queued"]) {
      assert.equal(lines.filter((l) => l.includes(text)).length, 1, text);
    }
    assert.match(lines[order[3]], / \[CALL\] call=CA[0-9a-f]+ GREETING queued/);
    assert.match(lines[order[0]], / \[CALL\] call=conn-\d+ RX_WORKER started/);
  } finally {
    await server.close();
  }
});

Deno.test("CallSession feeds every inbound byte, in order, to an STT session ready after 2 s", async () => {
  const server = await startCallServer({ speech: { readyDelayMs: 2000 } });
  try {
    const client = await server.connect();
    const audio = patternAudio(150, 3); // 3 s: 2 s queued while STT opens, then live
    client.begin();
    assert.equal(await client.streamAudio(audio), 150);
    client.sendStop();
    const ended = await server.store.waitForEnded(client.callSid, { timeoutMs: 10_000 });
    const speech = server.stt.sessions[0];
    assert.equal(speech.writesBeforeReady, 0);
    assert.equal(ended.counters.rx_drops, 0);
    assert.equal(ended.counters.rx_frames, 150);
    assert.equal(speech.length, audio.length);
    assert.deepEqual(speech.bytes(), audio);
    assert.equal(ended.outcome, "completed");
  } finally {
    await server.close();
  }
});

Deno.test("CallSession plays 10 s spoken at once: 500 frames, none dropped, 50 fps, greeting first", async () => {
  const greeting = patternAudio(50, 1);
  const speech = patternAudio(500, 2);
  const agents = recordingAgents({ speak: speech, markName: "speech_end" });
  const server = await startCallServer({ greeting, agentFactory: agents.factory });
  try {
    const client = await server.connect();
    client.begin();
    await client.waitForEcho("speech_end", { timeoutMs: 30_000 });
    await sleep(100); // anything extra would show up now
    assert.equal(client.mediaFrames, 550);
    const heard = client.audio();
    assert.deepEqual(heard.subarray(0, greeting.length), greeting, "greeting heard first");
    assert.deepEqual(heard.subarray(greeting.length), speech, "then all of the speech, in order");
    const mean = client.meanIntervalMs();
    console.log(
      `mean interval ${mean.toFixed(2)} ms over 550 frames, underruns ${client.underruns}`,
    );
    assert.ok(Math.abs(mean - 20) <= 0.5, `mean interval ${mean} ms`);
    assert.deepEqual(client.marks, ["greeting_end", "speech_end"]);
    const greetingEnd = client.echoes[0];
    assert.equal(greetingEnd.name, "greeting_end");
    assert.equal(greetingEnd.cleared, false);
    const t = client.mediaArrivals;
    assert.ok(greetingEnd.receivedAt >= t[49], "mark sent after the greeting's last frame");
    assert.ok(greetingEnd.receivedAt <= t[50], "and before the speech's first frame");
    assert.ok(greetingEnd.echoedAt - t[0] >= 900, "echoed once the greeting has played");
    await waitUntil(() => agents.agents[0].marks.length === 2, { timeoutMs: 5000, what: "echoes" });
    assert.deepEqual(agents.agents[0].marks, [
      { name: "greeting_end", played: true },
      { name: "speech_end", played: true },
    ]);
    assert.equal(await agents.agents[0].played, true);
    client.sendStop();
    const ended = await server.store.waitForEnded(client.callSid, { timeoutMs: 5000 });
    assert.equal(ended.counters.tx_frames, 550);
  } finally {
    await server.close();
  }
});

Deno.test("CallSession sends the greeting's first frame within 50 ms of start", async () => {
  const server = await startCallServer();
  try {
    const latencies: number[] = [];
    for (let i = 0; i < 3; i++) {
      const client = await server.connect();
      client.sendConnected();
      await sleep(60); // let the client's TCP ack settle (its socket has Nagle on)
      const sentAt = performance.now();
      client.sendStart();
      await client.waitForFrames(1, { timeoutMs: 5000 });
      latencies.push(client.mediaArrivals[0] - sentAt);
      client.sendStop();
      await client.closed;
    }
    console.log(
      `start → first greeting frame: ${latencies.map((l) => l.toFixed(1)).join(", ")} ms`,
    );
    assert.ok(Math.min(...latencies) < 50, `latencies ${latencies}`);
  } finally {
    await server.close();
  }
});

Deno.test("CallSession logs RX and TX telemetry once per second with the call sid", async () => {
  const server = await startCallServer();
  try {
    const client = await server.connect();
    client.begin();
    await client.streamSilence(2200);
    const lines = server.linesFor(client.callSid);
    const rx = lines.filter((l) => l.includes("[RX]"));
    const tx = lines.filter((l) => l.includes("[TX]"));
    assert.ok(rx.length >= 1 && rx.length <= 3, rx.join("\n"));
    assert.ok(tx.length >= 1);
    const sid = client.callSid;
    assert.match(
      rx.at(-1)!,
      new RegExp(`\\[RX\\] call=${sid} fps_in=\\d+ q=\\d+ drops=0 write_ms=`),
    );
    assert.match(tx[0], new RegExp(`\\[TX\\] call=${sid} fps=\\d+ q=\\d+ drops=0 late_ms_max=`));
    const fps = Number(/fps_in=(\d+)/.exec(rx.at(-1)!)![1]);
    assert.ok(fps >= 40 && fps <= 60, `fps_in=${fps}`);
  } finally {
    await server.close();
  }
});

Deno.test("CallSession delivers speech events, marks and dtmf to the agent and records them", async () => {
  const agents = recordingAgents();
  const server = await startCallServer({
    agentFactory: agents.factory,
    config: testCallConfig({ transcripts: false }),
  });
  try {
    const client = await server.connect();
    client.begin();
    await client.streamSilence(200);
    const session = server.stt.sessions[0];
    session.emit({ type: "partial", text: "שלום", stability: 0.5 });
    session.emit({ type: "final", text: "שלום לכם", confidence: 0.9 });
    client.sendDtmf("5");
    await client.waitForEcho("greeting_end", { timeoutMs: 5000 });
    await sleep(50);
    const agent = agents.agents[0];
    assert.deepEqual(agent.speech.map((e) => e.type), ["partial", "final"]);
    assert.deepEqual(agent.dtmf, ["5"]);
    assert.ok(agent.inbound >= 10);
    const lines = server.linesFor(client.callSid);
    assert.ok(lines.some((l) => l.includes("[FINAL]") && l.includes("chars=8")));
    assert.ok(!lines.some((l) => l.includes("שלום")), "no transcript text when disabled");
    assert.equal(server.store.events(client.callSid, "dtmf")[0].detail, "5");
    assert.equal(server.store.events(client.callSid, "mark")[0].detail, "greeting_end");
    client.sendStop();
    await server.store.waitForEnded(client.callSid, { timeoutMs: 5000 });
    assert.equal(agent.closed, true);
    assert.equal(agent.ctx.signal.aborted, true);
  } finally {
    await server.close();
  }
});

Deno.test("CallSession barge-in: clear goes out, queued audio is dropped, pending marks come back cut", async () => {
  const agents = recordingAgents({ speak: patternAudio(50, 4), markName: "s1" });
  const config = testCallConfig({ audio: { tx_lead_ms: 2000 } }); // s1 goes out long before it plays
  const server = await startCallServer({
    agentFactory: agents.factory,
    greeting: new Uint8Array(0),
    config,
  });
  try {
    const client = await server.connect();
    client.begin();
    const agent = agents.agents[0] ?? undefined;
    await client.waitFor(() => client.marks.includes("s1"), { timeoutMs: 5000, what: "s1" });
    const ctx = agents.agents[0].ctx;
    await waitUntil(() => agents.agents[0].marks.length === 1, {
      timeoutMs: 5000,
      what: "greeting_end echo",
    });
    assert.deepEqual(ctx.out.pendingMarks, ["s1"]);
    const more = ctx.out.play(patternAudio(250, 5), { signal: ctx.signal }); // 5 s: most stays queued
    await client.waitForFrames(60, { timeoutMs: 5000 });
    assert.ok(ctx.out.queuedFrames > 0);
    ctx.out.clear();
    assert.equal(await more, false, "the rest of the utterance is not queued");
    await client.waitFor(() => client.clears.length === 1, { timeoutMs: 5000, what: "clear" });
    await waitUntil(() => agents.agents[0].marks.length === 2, {
      timeoutMs: 5000,
      what: "s1 echo",
    });
    assert.equal(agent, undefined, "the agent is created at start, not at connect");
    assert.deepEqual(agents.agents[0].marks, [
      { name: "greeting_end", played: true },
      { name: "s1", played: false },
    ]);
    assert.deepEqual(ctx.out.pendingMarks, []);
    assert.equal(ctx.out.queuedFrames, 0);
    const framesAtClear = client.mediaFrames;
    await sleep(150);
    assert.equal(client.mediaFrames, framesAtClear, "nothing after the clear");
    assert.ok(framesAtClear < 300, `${framesAtClear} frames: the queued rest was dropped`);
    assert.equal(server.store.events(client.callSid, "clear").length, 1);
  } finally {
    await server.close();
  }
});
