/**
 * The pieces call workers share (SPEC 8), on real threads where threads matter: the `max_calls`
 * count in shared memory, the call state kept by the main thread, the metrics sum, and the
 * request/reply channel.
 */
import assert from "node:assert/strict";
import { Worker } from "node:worker_threads";
import { HandOffBoard } from "../src/call/hand_off.ts";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import {
  type FamilySnapshot,
  mergeSnapshots,
  type MetricsSnapshot,
  renderSnapshot,
  retiredPart,
} from "../src/observe/metrics.ts";
import { type Reply, Requests, type WorkerRequest } from "../src/workers/protocol.ts";
import { LOG_BATCH_MS, Outbox } from "../src/workers/remote.ts";
import { SharedProcessState } from "../src/workers/shared_state.ts";
import { answerHandOff } from "../src/workers/supervisor.ts";
import type { Command, ThreadData } from "./support/workers_thread.ts";

const THREAD = new URL("./support/workers_thread.ts", import.meta.url);

interface Thread {
  readonly worker: Worker;
  send(command: Command): void;
  next(type: string): Promise<Record<string, unknown>>;
}

function startThread(data: ThreadData, onRequest?: (id: number, body: WorkerRequest) => void) {
  const worker = new Worker(THREAD, { workerData: data });
  const waiting: { type: string; resolve: (m: Record<string, unknown>) => void }[] = [];
  const up = Promise.withResolvers<void>();
  worker.on("message", (message: Record<string, unknown>) => {
    if (message.type === "up") return up.resolve();
    if (message.type === "request") {
      return onRequest?.(message.id as number, message.body as WorkerRequest);
    }
    const at = waiting.findIndex((w) => w.type === message.type);
    if (at >= 0) waiting.splice(at, 1)[0].resolve(message);
  });
  const thread: Thread = {
    worker,
    send: (command) => worker.postMessage(command),
    next: (type) => new Promise((resolve) => waiting.push({ type, resolve })),
  };
  return up.promise.then(() => thread);
}

Deno.test("max_calls is one count: 4 threads racing for 100 places take exactly 100", async () => {
  const state = SharedProcessState.create(4);
  const go = new SharedArrayBuffer(8);
  const threads = await Promise.all(
    [0, 1, 2, 3].map((slot) =>
      startThread({ shared: state.buffer, slot, go, max: 100, attempts: 5000 })
    ),
  );
  try {
    const results = threads.map((t) => t.next("taken"));
    for (const t of threads) t.send({ type: "take" });
    await new Promise((resolve) => setTimeout(resolve, 50));
    Atomics.store(new Int32Array(go), 0, 1);
    Atomics.notify(new Int32Array(go), 0);
    const taken = (await Promise.all(results)).map((r) => r.taken as number);
    assert.equal(taken.reduce((a, b) => a + b, 0), 100, `by thread: ${taken}`);
    assert.equal(state.totalTaken(), 100);
    assert.deepEqual([0, 1, 2, 3].map((slot) => state.taken(slot)), taken);
    // A place given back can be taken again; a dead worker's places are freed at once. The giver
    // is the thread that took most (at least 25 of the 100: a thread may have taken none).
    const giver = taken.indexOf(Math.max(...taken));
    const dead = (giver + 1) % 4;
    const given = threads[giver].next("given");
    threads[giver].send({ type: "give", count: taken[giver] });
    await given;
    assert.equal(state.totalTaken(), 100 - taken[giver]);
    state.clearSlot(dead);
    assert.equal(state.totalTaken(), 100 - taken[giver] - taken[dead]);
    assert.ok(state.tryTake(giver, 100));
  } finally {
    await Promise.all(threads.map((t) => t.worker.terminate()));
  }
});

Deno.test("max_calls never over-admits while 4 threads take and give back at the limit", async () => {
  const state = SharedProcessState.create(4);
  const go = new SharedArrayBuffer(8);
  const threads = await Promise.all(
    [0, 1, 2, 3].map((slot) =>
      startThread({ shared: state.buffer, slot, go, max: 2, attempts: 1_000_000 })
    ),
  );
  try {
    const results = threads.map((t) => t.next("churned"));
    for (const t of threads) t.send({ type: "churn" });
    await new Promise((resolve) => setTimeout(resolve, 50));
    Atomics.store(new Int32Array(go), 0, 1);
    Atomics.notify(new Int32Array(go), 0);
    const done = await Promise.all(results);
    assert.deepEqual(done.map((r) => r.over), [0, 0, 0, 0], JSON.stringify(done));
    assert.ok(done.every((r) => (r.taken as number) > 0), JSON.stringify(done));
    assert.equal(state.totalTaken(), 0);
  } finally {
    await Promise.all(threads.map((t) => t.worker.terminate()));
  }
});

Deno.test("SharedProcessState: flags, connection numbers, heartbeats, never below zero", () => {
  const state = SharedProcessState.create(2);
  const seen = new SharedProcessState(state.buffer);
  assert.equal(seen.slots, 2);
  assert.equal(seen.draining, false);
  assert.equal(seen.ready, false);
  state.setReady();
  state.setDraining();
  assert.equal(seen.ready, true);
  assert.equal(seen.draining, true);
  assert.deepEqual([state.nextConnection(), seen.nextConnection()], [1, 2]);
  seen.beat(1);
  seen.beat(1);
  assert.equal(state.heartbeat(1), 2);
  assert.equal(state.heartbeat(0), 0);
  const admission = seen.admission(1, 1);
  assert.equal(admission.tryTake(), true);
  assert.equal(admission.tryTake(), false, "max 1");
  state.clearSlot(1);
  admission.give();
  assert.equal(state.taken(1), 0, "a cleared slot is not given back below zero");
  assert.equal(state.heartbeat(1), 0);
});

Deno.test("a hand-off stored from one call worker is answered on another once set resolves", async () => {
  const board = new HandOffBoard();
  const shared = SharedProcessState.create(2).buffer;
  const go = new SharedArrayBuffer(8);
  const answer = (worker: () => Worker) => (id: number, body: WorkerRequest) => {
    if (!body.kind.startsWith("handoff-")) throw new Error(`unexpected ${body.kind}`);
    const value = answerHandOff(
      board,
      body as Extract<WorkerRequest, { kind: `handoff-${string}` }>,
    );
    const reply: Reply = { type: "reply", id, ok: true, value };
    worker().postMessage(reply);
  };
  let a: Thread | null = null;
  let b: Thread | null = null;
  const data = { shared, go, max: 1, attempts: 0 };
  a = await startThread({ ...data, slot: 0 }, answer(() => a!.worker));
  b = await startThread({ ...data, slot: 1 }, answer(() => b!.worker));
  const ask = async (thread: Thread, command: Command) => {
    const got = thread.next("got");
    thread.send(command);
    return (await got).value;
  };
  try {
    assert.equal(await ask(b, { type: "action", callSid: "CA1" }), null, "nothing stored yet");
    const set = a.next("set-done");
    const action = { kind: "transfer", department: "sales", target: "+15550100" } as const;
    a.send({ type: "set", callSid: "CA1", handOff: { action, carry: '{"turn":2}' } });
    await set;
    // Twilio's <Connect action> lands on the other worker, then the <Dial action>, then the
    // stream connected back lands on the first again: each finds what the call's worker stored.
    assert.deepEqual(await ask(b, { type: "action", callSid: "CA1" }), action);
    assert.equal(
      await ask(b, { type: "dial-ended", callSid: "CA1", status: "no-answer" }),
      "sales",
    );
    assert.deepEqual(await ask(a, { type: "take-resume", callSid: "CA1" }), {
      department: "sales",
      dialStatus: "no-answer",
      carry: '{"turn":2}',
    });
    assert.equal(await ask(b, { type: "take-resume", callSid: "CA1" }), null, "taken once");
  } finally {
    await Promise.all([a.worker.terminate(), b.worker.terminate()]);
  }
});

function counter(name: string, series: [string, number][], labelled = true): FamilySnapshot {
  return { kind: "counter", name, help: "h", labelled, series };
}

Deno.test("mergeSnapshots() sums counters, histograms and gauges series by series", () => {
  const hist = (count: number, sum: number): FamilySnapshot => ({
    kind: "histogram",
    name: "kav_h_seconds",
    help: "h",
    bounds: [0.1, 1],
    labelled: false,
    series: count === 0 ? [] : [["", { counts: [count, count], sum, count }]],
  });
  const gauge = (value: number): FamilySnapshot => ({
    kind: "gauge",
    name: "kav_g",
    help: "g",
    value,
  });
  const a: MetricsSnapshot = [
    gauge(2),
    counter("kav_c_total", [['outcome="completed"', 3]]),
    hist(1, 0.05),
  ];
  const b: MetricsSnapshot = [
    gauge(5),
    counter("kav_c_total", [['outcome="completed"', 1], ['outcome="error"', 2]]),
    hist(0, 0),
  ];
  const text = renderSnapshot(mergeSnapshots([a, b, retiredPart(a)]));
  const families = parsePrometheusText(text);
  assert.equal(sampleValue(families, "kav_g", {}), 7, "gauges of the live ones summed");
  assert.equal(sampleValue(families, "kav_c_total", { outcome: "completed" }), 7);
  assert.equal(sampleValue(families, "kav_c_total", { outcome: "error" }), 2);
  assert.equal(sampleValue(families, "kav_h_seconds_count", {}), 2);
  assert.equal(sampleValue(families, "kav_h_seconds_bucket", { le: "0.1" }), 2);
  assert.deepEqual(retiredPart(a).map((f) => f.kind), ["counter", "histogram"]);
  const empty = renderSnapshot(mergeSnapshots([[counter("kav_x_total", [], false)]]));
  assert.match(empty, /^kav_x_total 0$/m, "an unlabelled counter always shows");
  assert.throws(
    () => mergeSnapshots([[counter("kav_g", [])], [gauge(1)]]),
    /Cannot merge metric kav_g/,
  );
});

Deno.test("Requests: answers, errors, timeouts and a closed link", async () => {
  const channel = new MessageChannel();
  const left = new Requests<WorkerRequest, { "handoff-action": unknown }>(channel.port1);
  const right = new Requests<{ kind: string }, Record<string, unknown>>(channel.port2);
  channel.port2.onmessage = (event) => {
    const message = event.data as { type: string; id: number; body: WorkerRequest };
    if (message.type !== "request") return;
    right.answer(message.id, () => {
      if (message.body.kind === "handoff-action" && message.body.callSid === "bad") {
        throw new RangeError("no such call");
      }
      if (message.body.kind === "handoff-action" && message.body.callSid === "slow") {
        return new Promise(() => {});
      }
      return { sid: message.body.kind === "handoff-action" ? message.body.callSid : null };
    });
  };
  channel.port1.onmessage = (event) => left.settle(event.data as Reply);
  try {
    assert.deepEqual(await left.request({ kind: "handoff-action", callSid: "CA1" }), {
      sid: "CA1",
    });
    await assert.rejects(left.request({ kind: "handoff-action", callSid: "bad" }), /no such call/);
    await assert.rejects(
      left.request({ kind: "handoff-action", callSid: "slow" }, { timeoutMs: 50 }),
      /No answer to handoff-action within 50 ms/,
    );
    const pending = left.request({ kind: "handoff-action", callSid: "slow" });
    left.close("call worker 1 is gone");
    await assert.rejects(pending, /call worker 1 is gone/);
    await assert.rejects(left.request({ kind: "handoff-action", callSid: "CA1" }), /is gone/);
  } finally {
    channel.port1.close();
    channel.port2.close();
  }
});

Deno.test("Outbox: records at the end of their turn, info lines batched, warnings at once, in order", async () => {
  const posted: unknown[] = [];
  const outbox = new Outbox({ postMessage: (message) => posted.push(message) });
  const call = {
    callSid: "CA1",
    streamSid: "MZ1",
    accountSid: "AC1",
    from: null,
    to: null,
    customParameters: {},
    startedAt: 1,
  };
  outbox.logSink("line 1", "info");
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(posted.length, 0, "an info line waits for others");
  outbox.record({ kind: "start", call });
  assert.equal(outbox.pendingRecords, 1);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(posted, [{
    type: "out",
    logs: [["info", "line 1"]],
    records: [{ kind: "start", call }],
  }], "a record goes at the end of its turn, with the lines before it");
  outbox.logSink("line 2", "info");
  outbox.logSink("trouble", "warn");
  assert.deepEqual(posted[1], {
    type: "out",
    logs: [["info", "line 2"], ["warn", "trouble"]],
    records: [],
  });
  outbox.logSink("line 3", "info");
  outbox.post({ type: "metrics", snapshot: [] });
  assert.deepEqual(posted.slice(2), [
    { type: "out", logs: [["info", "line 3"]], records: [] },
    { type: "metrics", snapshot: [] },
  ], "a message goes after what was waiting");
  outbox.logSink("line 4", "info");
  await new Promise((resolve) => setTimeout(resolve, LOG_BATCH_MS + 20));
  assert.deepEqual(posted.at(-1), { type: "out", logs: [["info", "line 4"]], records: [] });
  assert.equal(posted.length, 5);
});
