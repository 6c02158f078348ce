import assert from "node:assert/strict";
import { ManualScheduler } from "./support/manual_scheduler.ts";
import { MarkTracker } from "../src/call/marks.ts";
import { QueueOutbound } from "../src/call/outbound.ts";
import { RxQueue } from "../src/call/rx_queue.ts";
import { RxWorker } from "../src/call/rx_worker.ts";
import { TxWorker } from "../src/call/tx_worker.ts";
import { OutboundEncoder } from "../src/twilio/protocol.ts";
import { createLogger } from "../src/observe/log.ts";
import type { SpeechSession, SttEvent } from "../src/stt/types.ts";

function frame(n: number): Uint8Array {
  return new Uint8Array(160).fill(n & 0xff);
}

class FakeSpeech implements SpeechSession {
  readonly ready: Promise<void>;
  readonly writes: { at: number; first: number }[] = [];
  open!: () => void;
  constructor(readonly clock: ManualScheduler, readonly error?: Error) {
    this.ready = new Promise((resolve) => {
      this.open = resolve;
    });
  }
  write(mulaw: Uint8Array): void {
    if (this.error) throw this.error;
    this.writes.push({ at: this.clock.now(), first: mulaw[0] });
  }
  async *results(): AsyncIterable<SttEvent> {}
  close(): Promise<void> {
    return Promise.resolve();
  }
}

function rxSetup(options: { maxBatch?: number; error?: Error } = {}) {
  const clock = new ManualScheduler();
  const speech = new FakeSpeech(clock, options.error);
  const queue = new RxQueue<Uint8Array>(200, () => true);
  const errors: unknown[] = [];
  const rx = new RxWorker({
    queue,
    speech,
    scheduler: clock,
    onError: (e) => errors.push(e),
    maxBatch: options.maxBatch,
  });
  return { clock, speech, queue, rx, errors };
}

Deno.test("rxWorker() holds frames until the session is ready, then catches up in batches", async () => {
  const { clock, speech, queue, rx } = rxSetup();
  rx.start();
  for (let i = 0; i < 100; i++) {
    queue.tryPush(frame(i));
    clock.advance(20);
  }
  assert.equal(speech.writes.length, 0, "nothing written before ready");
  assert.equal(queue.size, 100, "nothing dropped while the session opens");
  speech.open();
  await speech.ready;
  clock.advance(20);
  assert.equal(speech.writes.length, 10, "a bounded batch per tick");
  clock.advance(180);
  assert.equal(speech.writes.length, 100);
  assert.deepEqual(speech.writes.map((w) => w.first), Array.from({ length: 100 }, (_, i) => i));
  rx.stop({ flush: false });
});

Deno.test("rxWorker() keeps an absolute 20 ms cadence and resyncs after a tick >40 ms late", async () => {
  const { clock, speech, queue, rx } = rxSetup({ maxBatch: 1 });
  for (let i = 0; i < 50; i++) queue.tryPush(frame(i));
  speech.open();
  await speech.ready;
  rx.start();
  clock.advance(60);
  assert.deepEqual(speech.writes.map((w) => w.at), [20, 40, 60]);
  clock.jump(30); // now 90, tick due at 80 is 10 ms late: keep the absolute grid
  clock.advance(10);
  assert.deepEqual(speech.writes.slice(3).map((w) => w.at), [90, 100]);
  assert.equal(rx.lateTicks, 0);
  clock.jump(75); // now 175, due at 120: 55 ms late ⇒ resync to now + 20, on the 4 ms grid
  assert.equal(rx.lateTicks, 1);
  clock.advance(41);
  assert.deepEqual(speech.writes.slice(5).map((w) => w.at), [175, 196, 216]);
  rx.stop({ flush: false });
});

Deno.test("rxWorker() stop({ flush: true }) writes what is left once ready", async () => {
  const { speech, queue, rx } = rxSetup();
  rx.start();
  for (let i = 0; i < 30; i++) queue.tryPush(frame(i));
  assert.equal(rx.stop({ flush: true }), 0, "not ready: nothing to flush into");
  speech.open();
  await speech.ready;
  assert.equal(rx.stop({ flush: true }), 30);
  assert.equal(speech.writes.length, 30);
});

Deno.test("rxWorker() reports a failing write and stops", async () => {
  const { clock, speech, queue, rx, errors } = rxSetup({ error: new Error("write broke") });
  rx.start();
  queue.tryPush(frame(1));
  speech.open();
  await speech.ready;
  clock.advance(100);
  assert.equal(errors.length, 1);
  assert.match(String(errors[0]), /write broke/);
  assert.equal(clock.pending, 0, "no further ticks");
});

class FakeSocket {
  readyState = 1;
  bufferedAmount = 0;
  readonly sent: { at: number; event: string; name?: string; first?: number }[] = [];
  constructor(readonly clock: ManualScheduler) {}
  send(data: string): void {
    const msg = JSON.parse(data);
    this.sent.push({
      at: this.clock.now(),
      event: msg.event,
      name: msg.mark?.name,
      first: msg.media ? Uint8Array.fromBase64(msg.media.payload)[0] : undefined,
    });
  }
  media() {
    return this.sent.filter((s) => s.event === "media");
  }
}

function txSetup(options: { lead?: number; capacity?: number } = {}) {
  const clock = new ManualScheduler(1000);
  const socket = new FakeSocket(clock);
  const marks = new MarkTracker();
  const lines: string[] = [];
  const errors: unknown[] = [];
  const tx = new TxWorker({
    socket,
    scheduler: clock,
    marks,
    log: createLogger((line) => lines.push(line)),
    queueFrames: options.capacity ?? 144,
    leadMs: options.lead ?? 60,
    maxBufferedBytes: 10_000,
    onError: (e) => errors.push(e),
  });
  tx.start(new OutboundEncoder("MZ1"));
  const out = new QueueOutbound(tx, marks);
  return { clock, socket, marks, tx, out, lines, errors };
}

const signal = new AbortController().signal;

Deno.test("txWorker() sends the lead at once, then one frame per 20 ms", async () => {
  const { clock, socket, out } = txSetup();
  const audio = new Uint8Array(160 * 10).map((_, i) => Math.floor(i / 160));
  assert.equal(await out.play(audio, { signal }), true);
  clock.advance(0);
  assert.deepEqual(socket.media().map((s) => s.at), [1000, 1000, 1000, 1000]);
  clock.advance(200);
  const times = socket.media().map((s) => s.at);
  assert.deepEqual(times.slice(4), [1020, 1040, 1060, 1080, 1100, 1120]);
  assert.deepEqual(socket.media().map((s) => s.first), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
});

Deno.test("txWorker() starts new audio at once, then sends on the 4 ms phase grid", async () => {
  const { clock, socket, out } = txSetup();
  clock.jump(7); // idle at 1007, off the grid
  assert.equal(await out.play(new Uint8Array(160 * 8), { signal }), true);
  clock.advance(0);
  assert.deepEqual(socket.media().map((s) => s.at), [1007, 1007, 1007, 1007], "the lead, now");
  clock.advance(100);
  // Playhead 1087 after the burst: the next frame may go from 1087 - 60 = 1027, on the grid 1024.
  assert.deepEqual(socket.media().slice(4).map((s) => s.at), [1024, 1044, 1064, 1084]);
  assert.ok(socket.media().every((s, i) => i < 4 || s.at % 4 === 0));
});

Deno.test("txWorker() resyncs after a late tick instead of bursting", async () => {
  const { clock, socket, out, tx } = txSetup();
  await out.play(new Uint8Array(160 * 50), { signal });
  clock.advance(100); // 4 + 5 frames, playhead at 1000 + 9*20 = 1180
  const before = socket.media().length;
  clock.jump(300); // the loop stalled: now 1400, audio ran dry at 1180
  assert.equal(tx.lateTicks, 1);
  assert.equal(socket.media().length - before, 4, "only the lead is refilled, no catch-up");
  clock.advance(20);
  assert.equal(socket.media().length - before, 5);
});

Deno.test("txWorker() sends a mark right after the media before it", async () => {
  const { clock, socket, out, marks } = txSetup({ lead: 0 });
  await out.play(frame(1), { signal });
  await out.mark("m1", { signal });
  await out.play(frame(2), { signal });
  clock.advance(0);
  assert.deepEqual(socket.sent.map((s) => [s.event, s.at]), [["media", 1000], ["mark", 1000]]);
  assert.deepEqual(marks.pending, ["m1"]);
  clock.advance(20);
  assert.deepEqual(socket.sent.map((s) => s.event), ["media", "mark", "media"]);
});

Deno.test("txWorker() clear() empties the queue, sends clear at once and resets the clock", async () => {
  const { clock, socket, out, marks, tx } = txSetup();
  const first = out.play(new Uint8Array(160 * 300), { signal }); // more than the queue holds
  clock.advance(10);
  const mark = out.mark("never-sent", { signal }); // queued behind the waiting play
  out.clear();
  assert.equal(socket.sent.at(-1)?.event, "clear");
  assert.equal(socket.sent.at(-1)?.at, 1010, "sent without waiting for a tick");
  assert.equal(tx.queue.size, 0);
  assert.equal(await first, false, "the cut utterance stops queueing");
  assert.equal(await mark, false, "a mark requested before the clear is discarded");
  const sentBefore = socket.media().length;
  await out.play(frame(7), { signal });
  clock.advance(0);
  const after = socket.media().slice(sentBefore);
  assert.deepEqual(after.map((s) => [s.at, s.first]), [[1010, 7]], "new audio starts now");
  assert.ok(!socket.sent.some((s) => s.name === "never-sent"));
  assert.deepEqual(marks.pending, []);
});

Deno.test("txWorker() pauses while the socket's buffer is over the limit", async () => {
  const { clock, socket, out, tx, lines } = txSetup();
  await out.play(new Uint8Array(160 * 40), { signal });
  clock.advance(0);
  socket.bufferedAmount = 50_000;
  const before = socket.media().length;
  clock.advance(200);
  assert.equal(socket.media().length, before, "nothing sent while stalled");
  assert.ok(tx.pausedTicks >= 9);
  assert.equal(lines.filter((l) => l.includes("socket stalled")).length, 1);
  socket.bufferedAmount = 0;
  clock.advance(20);
  assert.ok(socket.media().length - before <= 4, "resumes without a burst");
  assert.equal(lines.filter((l) => l.includes("socket drained")).length, 1);
});

Deno.test("Outbound.play() applies back-pressure and never drops a frame", async () => {
  const { clock, socket, out } = txSetup({ capacity: 8 });
  const audio = new Uint8Array(160 * 100).map((_, i) => Math.floor(i / 160));
  let done = false;
  const playing = out.play(audio, { signal }).then((ok) => {
    done = ok;
  });
  await Promise.resolve();
  assert.equal(done, false, "waits while the queue is full");
  for (let i = 0; i < 150 && !done; i++) {
    clock.advance(20);
    await Promise.resolve();
  }
  await playing;
  clock.advance(1000);
  assert.deepEqual(socket.media().map((s) => s.first), Array.from({ length: 100 }, (_, i) => i));
  const times = socket.media().map((s) => s.at);
  for (let i = 4; i < times.length; i++) assert.equal(times[i] - times[i - 1], 20);
});

Deno.test("Outbound serializes plays and reports the first frame on the wire", async () => {
  const { clock, socket, out } = txSetup({ capacity: 4 });
  let firstAt = NaN;
  const a = out.play(new Uint8Array(160 * 6).fill(1), { signal });
  const b = out.play(new Uint8Array(160 * 6).fill(2), {
    signal,
    onFirstFrameSent: () => firstAt = clock.now(),
  });
  for (let i = 0; i < 40; i++) {
    clock.advance(20);
    await Promise.resolve();
  }
  await Promise.all([a, b]);
  const order = socket.media().map((s) => s.first);
  assert.deepEqual(order, [...Array(6).fill(1), ...Array(6).fill(2)]);
  const firstOfB = socket.media()[6].at;
  assert.equal(firstAt, firstOfB);
});

Deno.test("txWorker() reports a failing send and stops", async () => {
  const { clock, socket, out, errors } = txSetup();
  socket.send = () => {
    throw new Error("socket broke");
  };
  await out.play(frame(1), { signal });
  clock.advance(100);
  assert.equal(errors.length, 1);
  assert.match(String(errors[0]), /socket broke/);
});
