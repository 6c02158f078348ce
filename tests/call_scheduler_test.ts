import assert from "node:assert/strict";
import { ManualScheduler } from "./support/manual_scheduler.ts";
import { RealtimeScheduler, sleepUntil } from "../src/call/scheduler.ts";

Deno.test("RealtimeScheduler runs many tasks in deadline order on one timer", async () => {
  const scheduler = new RealtimeScheduler();
  const start = scheduler.now();
  const ran: number[] = [];
  /** Per run: the deadline, the `now` the task was given, and the clock read inside the task. */
  const runs: { deadline: number; given: number; clock: number }[] = [];
  const tasks = Array.from({ length: 200 }, (_, i) => {
    const deadline = start + 5 + (i * 37) % 50;
    const task = scheduler.task((now) => {
      ran.push(deadline);
      runs.push({ deadline, given: now, clock: performance.now() });
    });
    task.at(deadline);
    return task;
  });
  tasks[0].cancel();
  assert.equal(scheduler.pending, 199);
  await sleepUntil(scheduler, start + 80, {});
  assert.equal(ran.length, 199);
  assert.deepEqual([...ran].sort((a, b) => a - b), ran, "deadline order");
  for (const run of runs) {
    // A pass runs what is due within 1 ms (SLACK_MS), never earlier than that.
    assert.ok(run.clock >= run.deadline - 1, `ran ${run.deadline - run.clock} ms early`);
    // An early run is told its deadline; a late one the clock, read before it ran.
    const expected = run.given === run.deadline ||
      (run.given > run.deadline && run.given <= run.clock);
    assert.ok(expected, JSON.stringify(run));
  }
  assert.equal(scheduler.pending, 0);
});

Deno.test("RealtimeScheduler isolates a throwing task and re-arms a rescheduled one", async () => {
  const scheduler = new RealtimeScheduler();
  const errors: unknown[] = [];
  let ticks = 0;
  const bad = scheduler.task(() => {
    throw new Error("tick failed");
  }, (e) => errors.push(e));
  const good = scheduler.task((now) => {
    if (++ticks < 5) good.at(now + 2);
  });
  bad.at(scheduler.now() + 1);
  good.at(scheduler.now() + 1);
  await sleepUntil(scheduler, scheduler.now() + 60, {});
  assert.equal(errors.length, 1);
  assert.match(String(errors[0]), /tick failed/);
  assert.equal(ticks, 5);
  assert.equal(good.scheduled, false);
  assert.ok(Number.isNaN(good.deadline));
});

Deno.test("sleepUntil() rejects with the signal's reason and leaves no timer behind", async () => {
  const scheduler = new RealtimeScheduler();
  const controller = new AbortController();
  const sleeping = sleepUntil(scheduler, scheduler.now() + 60_000, { signal: controller.signal });
  controller.abort(new Error("call ended"));
  await assert.rejects(sleeping, /call ended/);
  assert.equal(scheduler.pending, 0);
  await assert.rejects(sleepUntil(scheduler, 0, { signal: controller.signal }), /call ended/);
});

Deno.test("ManualScheduler.advance() runs tasks at their exact deadlines; jump() runs them late", () => {
  const clock = new ManualScheduler(100);
  const seen: [string, number][] = [];
  const a = clock.task((now) => seen.push(["a", now]));
  const b = clock.task((now) => {
    seen.push(["b", now]);
    if (now < 160) b.at(now + 30);
  });
  a.at(120);
  b.at(110);
  clock.advance(60);
  assert.deepEqual(seen, [["b", 110], ["a", 120], ["b", 140]]); // b's next run is due at 170
  assert.equal(clock.now(), 160);
  a.at(170);
  clock.jump(25);
  assert.deepEqual(seen.slice(3).sort(), [["a", 185], ["b", 185]]);
  assert.throws(() => clock.advance(-1), /move the clock back/);
  assert.throws(() => a.at(NaN), /schedule a task/);
});
