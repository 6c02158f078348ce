import assert from "node:assert/strict";
import fc from "fast-check";
import { frameAt, frameCount } from "../src/audio/frames.ts";
import { MarkTracker } from "../src/call/marks.ts";
import { Ring } from "../src/call/ring.ts";
import { RxQueue } from "../src/call/rx_queue.ts";
import { TxQueue } from "../src/call/tx_queue.ts";

type RxItem = { media: number } | { control: string };
const isMedia = (item: RxItem) => "media" in item;

Deno.test("Ring keeps FIFO order across wrap-around and removeAt()", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 8 }),
      fc.array(fc.oneof(fc.nat(100), fc.constant(-1), fc.constant(-2))),
      (capacity, ops) => {
        const ring = new Ring<number>(capacity);
        const model: number[] = [];
        for (const op of ops) {
          if (op === -1) assert.equal(ring.take(), model.shift());
          else if (op === -2) {
            const i = model.length >> 1;
            assert.equal(ring.removeAt(i), model.splice(i, 1)[0]);
          } else {
            assert.equal(ring.push(op), model.length < capacity);
            if (model.length < capacity) model.push(op);
          }
          assert.equal(ring.size, model.length);
          assert.equal(ring.peek(), model[0]);
        }
        for (let k = 0; k < model.length; k++) assert.equal(ring.at(k), model[k]);
      },
    ),
  );
  assert.throws(() => new Ring(0), /capacity "0"/);
});

Deno.test("RxQueue drops the oldest media frame when full, never a control item", () => {
  const q = new RxQueue<RxItem>(3, isMedia);
  q.tryPush({ control: "start" });
  for (let i = 1; i <= 3; i++) q.tryPush({ media: i });
  q.tryPush({ control: "dtmf" });
  q.tryPush({ media: 4 }); // full: media 1 goes, behind the control item at the head
  q.tryPush({ media: 5 }); // media 2 goes
  assert.equal(q.drops, 2);
  assert.equal(q.mediaSize, 3);
  const out: RxItem[] = [];
  for (let item = q.take(); item !== undefined; item = q.take()) out.push(item);
  assert.deepEqual(out, [
    { control: "start" },
    { media: 3 },
    { control: "dtmf" },
    { media: 4 },
    { media: 5 },
  ]);
  assert.equal(q.received, 7);
});

Deno.test("RxQueue keeps control items beyond the media capacity", () => {
  const q = new RxQueue<RxItem>(2, isMedia);
  q.tryPush({ media: 1 });
  q.tryPush({ media: 2 });
  for (let i = 0; i < 10; i++) assert.equal(q.tryPush({ control: `c${i}` }), true);
  assert.equal(q.size, 12);
  assert.equal(q.drops, 0);
  q.tryPush({ media: 3 });
  assert.equal(q.drops, 1);
  assert.deepEqual(q.take(), { media: 2 });
});

Deno.test("RxQueue never waits and counts every drop (model check)", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 6 }), fc.array(fc.boolean()), (cap, pushes) => {
      const q = new RxQueue<RxItem>(cap, isMedia);
      let sent = 0;
      for (const media of pushes) {
        q.tryPush(media ? { media: sent++ } : { control: "x" });
        assert.ok(q.mediaSize <= cap);
      }
      const kept: number[] = [];
      for (let item = q.take(); item !== undefined; item = q.take()) {
        if ("media" in item) kept.push(item.media);
      }
      assert.equal(kept.length + q.drops, sent);
      // What survives is the newest media, in order.
      assert.deepEqual(kept, Array.from({ length: kept.length }, (_, i) => sent - kept.length + i));
    }),
  );
});

Deno.test("TxQueue push() waits when full and resumes in order (back-pressure)", async () => {
  let wakes = 0;
  const q = new TxQueue(2, () => wakes++);
  const results: boolean[] = [];
  const pushes = [1, 2, 3, 4].map((n) =>
    q.push(new Uint8Array([n])).then((ok) => {
      results.push(ok);
    })
  );
  await Promise.resolve();
  assert.equal(q.size, 2);
  assert.equal(q.waiting, 2);
  assert.equal(q.tryPush(new Uint8Array([9])), false, "no cutting in front of waiters");
  const taken: number[] = [];
  for (let i = 0; i < 4; i++) taken.push((q.take() as Uint8Array)[0]);
  await Promise.all(pushes);
  assert.deepEqual(taken, [1, 2, 3, 4]);
  assert.deepEqual(results, [true, true, true, true]);
  assert.equal(wakes, 2, "onItem fires for direct pushes; waiters enter on take()");
});

Deno.test("TxQueue counts a run of frames in frames and gives it back one view at a time", async () => {
  const q = new TxQueue(4);
  const run = new Uint8Array(160 * 3).map((_, i) => Math.floor(i / 160));
  assert.equal(q.tryPush(run), true);
  assert.equal(q.size, 3, "a 3-frame run takes 3 slots");
  assert.equal(q.tryPush(new Uint8Array(320)), false, "2 more frames do not fit in 4");
  const waiting = q.push(new Uint8Array(320).fill(7));
  assert.equal(q.tryPush("m"), false, "no cutting in front of a waiter");
  const first = q.take() as Uint8Array;
  assert.equal(first.length, 160);
  assert.equal(first.buffer, run.buffer, "a view, not a copy");
  assert.equal(first[0], 0);
  assert.equal(q.waiting, 0, "the freed slot plus the free one let the 2-frame run in");
  assert.equal(q.size, 4);
  assert.equal(await waiting, true);
  const rest: number[] = [];
  for (let item = q.take(); item !== undefined; item = q.take()) {
    assert.ok(item instanceof Uint8Array && item.length === 160);
    rest.push(item[0]);
  }
  assert.deepEqual(rest, [1, 2, 7, 7]);
  assert.equal(q.size, 0);
});

Deno.test("TxQueue takes a run larger than itself only when empty, and clear() drops a half-sent run", async () => {
  const q = new TxQueue(2);
  q.tryPush("m0");
  const big = q.push(new Uint8Array(160 * 5));
  assert.equal(q.waiting, 1);
  assert.equal(q.take(), "m0");
  assert.equal(await big, true, "an empty queue takes any run (no deadlock)");
  assert.equal(q.size, 5);
  q.take();
  assert.equal(q.clear(), 4, "clear() reports the slots it dropped");
  assert.equal(q.size, 0);
  assert.equal(q.take(), undefined);
  q.tryPush(new Uint8Array([9]));
  assert.deepEqual(q.take(), new Uint8Array([9]), "the next item starts at its first byte");
});

Deno.test("TxQueue gives back every frame and mark in order, whatever the run sizes", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 6 }),
      fc.array(fc.oneof(fc.integer({ min: 1, max: 9 }), fc.constant(0)), { maxLength: 20 }),
      async (capacity, items) => {
        const q = new TxQueue(capacity);
        let next = 0;
        const expected: (number | string)[] = [];
        const runs = items.map((frames, k): string | Uint8Array => {
          if (frames === 0) {
            expected.push(`m${k}`);
            return `m${k}`;
          }
          const run = new Uint8Array(160 * frames);
          for (let f = 0; f < frames; f++) {
            run[f * 160] = next & 0xff;
            expected.push(next++ & 0xff);
          }
          return run;
        });
        // One producer, as in a call: each push waits for room before the next.
        const pushed = (async () => {
          const results: boolean[] = [];
          for (const run of runs) results.push(await q.push(run));
          return results;
        })();
        const got: (number | string)[] = [];
        for (let spins = 0; got.length < expected.length && spins < 10_000; spins++) {
          assert.ok(q.size <= Math.max(capacity, 9));
          const item = q.take();
          if (item === undefined) await Promise.resolve();
          else got.push(typeof item === "string" ? item : (item as Uint8Array)[0]);
        }
        assert.deepEqual(await pushed, runs.map(() => true));
        assert.deepEqual(got, expected);
        assert.equal(q.size, 0);
      },
    ),
  );
});

Deno.test("TxQueue clear() discards waiters and old-epoch pushes without error", async () => {
  const q = new TxQueue(1);
  await q.push("m0");
  const epoch = q.epoch;
  const waiting = q.push(new Uint8Array([1]), { epoch });
  assert.equal(q.clear(), 1);
  assert.equal(await waiting, false);
  assert.equal(q.size, 0);
  assert.equal(q.epoch, epoch + 1);
  assert.equal(await q.push(new Uint8Array([2]), { epoch }), false, "old epoch is discarded");
  assert.equal(q.size, 0);
  assert.equal(await q.push(new Uint8Array([3])), true, "new pushes queue normally");
  assert.equal(q.size, 1);
});

Deno.test("TxQueue push() rejects with the signal's reason when aborted", async () => {
  const q = new TxQueue(1);
  q.tryPush("full");
  const controller = new AbortController();
  const waiting = q.push("next", { signal: controller.signal });
  controller.abort(new Error("hung up"));
  await assert.rejects(waiting, /hung up/);
  assert.equal(q.waiting, 0);
  q.take();
  assert.equal(q.size, 0, "the aborted item never enters");
  await assert.rejects(q.push("x", { signal: controller.signal }), /hung up/);
});

Deno.test("frameAt() cuts 160-byte frames and pads the last with 0xFF", () => {
  const audio = new Uint8Array(400).map((_, i) => i & 0x7f);
  assert.equal(frameCount(400), 3);
  assert.equal(frameCount(0), 0);
  const frames = [0, 1, 2].map((i) => frameAt(audio, i));
  for (const f of frames) assert.equal(f.length, 160);
  assert.deepEqual(frames[2].subarray(0, 80), audio.subarray(320));
  assert.ok(frames[2].subarray(80).every((b) => b === 0xff));
  assert.equal(frames[0].buffer, audio.buffer, "whole frames are views");
  assert.notEqual(frames[2].buffer, audio.buffer, "the padded tail is a copy");
  assert.throws(() => frameAt(audio, 3), /frame "3"/);
  assert.throws(() => frameAt(audio, -1), /frame "-1"/);
});

Deno.test("MarkTracker tells played marks from marks pending at clear", () => {
  const marks = new MarkTracker();
  marks.sent("a");
  marks.sent("b");
  assert.deepEqual(marks.echoed("a"), { played: true });
  marks.sent("c");
  marks.clearSent();
  assert.deepEqual(marks.pending, []);
  marks.sent("b"); // a name reused after the clear
  assert.deepEqual(marks.echoed("b"), { played: false });
  assert.deepEqual(marks.echoed("c"), { played: false });
  assert.deepEqual(marks.echoed("b"), { played: true });
  assert.equal(marks.echoed("zzz"), null);
  assert.equal(marks.clearedPending, 0);
});
