import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { createLogger, type Logger } from "../src/observe/log.ts";
import { openCallStore } from "../src/store/sqlite.ts";
import { openCallReader } from "../src/store/read.ts";
import { summarize } from "../src/store/_stats.ts";
import { LATENCY_NAMES, SCHEMA_VERSION } from "../src/store/_schema.ts";
import { startCheckpointer } from "../src/store/_checkpointer.ts";
import type { CallEnded, CallEvent, CallStarted, TurnRecord } from "../src/store/types.ts";
import { recordAgentActs } from "./support/agent_acts_records.ts";

function collectingLogger(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  return { log: createLogger((line) => lines.push(line)), lines };
}

async function tempDb(): Promise<{ path: string; dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: "kav_store_" });
  return { dir, path: `${dir}/kav.db` };
}

const T0 = Date.UTC(2025, 0, 15, 10, 0, 0);

function started(callSid: string, startedAt = T0): CallStarted {
  return {
    callSid,
    streamSid: "MZ" + callSid.slice(2),
    accountSid: "AC123",
    from: "+972501234567",
    to: "+97231234567",
    customParameters: { FirstName: "Dana", Lead: "42" },
    startedAt,
  };
}

function timings(e2e: number | null, ttft: number | null) {
  return {
    end_of_turn_delay: 320,
    stt_final_delay: 150,
    llm_ttft: ttft,
    tts_ttfb: 90,
    e2e_latency: e2e,
    server_latency: 4.5,
  };
}

function turns(base = T0): TurnRecord[] {
  return [
    {
      index: 0,
      speaker: "agent",
      text: "שלום, הגעתם לקו",
      generated: null,
      cut: false,
      startedAt: base,
      endedAt: base + 2000,
      timings: null,
    },
    {
      index: 1,
      speaker: "caller",
      text: "אני רוצה לקבוע תור",
      generated: null,
      cut: false,
      startedAt: base + 2500,
      endedAt: base + 4000,
      timings: null,
    },
    {
      index: 2,
      speaker: "agent",
      text: "בשמחה, לאיזה יום",
      generated: "בשמחה, לאיזה יום? יש לנו מקום ביום שלישי",
      cut: true,
      startedAt: base + 4800,
      endedAt: base + 6000,
      timings: timings(800, 300),
    },
    {
      index: 3,
      speaker: "agent",
      text: "יום שלישי בעשר",
      generated: null,
      cut: false,
      startedAt: base + 8000,
      endedAt: base + 9000,
      timings: timings(1000, 500),
    },
  ];
}

const EVENTS: CallEvent[] = [
  { kind: "mark", at: T0 + 2000, detail: "greeting_end" },
  { kind: "barge_in", at: T0 + 5900, detail: "partial during agent speech" },
  { kind: "clear", at: T0 + 5901, detail: "" },
  { kind: "dtmf", at: T0 + 7000, detail: "5" },
  { kind: "stt_restart", at: T0 + 7100, detail: "stream age 290 s" },
  { kind: "provider_error", at: T0 + 7200, detail: "tts timeout" },
];

const ENDED: CallEnded = {
  endedAt: T0 + 10_000,
  outcome: "completed",
  reason: "stop received",
  counters: { rx_frames: 500, rx_drops: 1, tx_frames: 400, tx_drops: 0, tx_late: 2, malformed: 3 },
};

Deno.test("openCallStore() round-trips a call with turns, events, counters and percentiles", async () => {
  const { dir, path } = await tempDb();
  const { log } = collectingLogger();
  const store = await openCallStore({ path, log, retentionDays: 0 });
  try {
    store.callStarted(started("CA1"));
    for (const turn of turns()) store.turnCompleted("CA1", turn);
    for (const event of EVENTS) store.event("CA1", event);
    store.callEnded("CA1", ENDED);
    assert.ok(store.pending() >= 12, "writes are queued, not applied inline");
    await store.flush();
    assert.equal(store.pending(), 0);
    const detail = store.getCall("CA1");
    assert.ok(detail);
    assert.deepEqual(detail.turns, turns());
    assert.deepEqual(detail.events, EVENTS);
    const { call } = detail;
    assert.equal(call.streamSid, "MZ1");
    assert.equal(call.from, "+972501234567");
    assert.deepEqual(call.customParameters, { FirstName: "Dana", Lead: "42" });
    assert.equal(call.endedAt, ENDED.endedAt);
    assert.equal(call.outcome, "completed");
    assert.equal(call.reason, "stop received");
    assert.deepEqual(call.counters, ENDED.counters);
    assert.equal(call.turns, 4);
    // Two measured agent turns: e2e 800 and 1000 ms, ttft 300 and 500 ms (linear interpolation).
    assert.deepEqual(call.latency.e2e_latency, { p50: 900, p90: 980 });
    assert.deepEqual(call.latency.llm_ttft, { p50: 400, p90: 480 });
    assert.deepEqual(call.latency.server_latency, { p50: 4.5, p90: 4.5 });
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openCallStore() commits from its timer without flush(), visible to another connection", async () => {
  const { dir, path } = await tempDb();
  const store = await openCallStore({ path, log: collectingLogger().log, retentionDays: 0 });
  const reader = openCallReader(path);
  try {
    store.callStarted(started("CA2"));
    store.turnCompleted("CA2", turns()[0]);
    const deadline = Date.now() + 5000;
    while (reader.getCall("CA2")?.turns.length !== 1) {
      assert.ok(Date.now() < deadline, "the queued writes reached disk within 5 s");
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.equal(reader.getCall("CA2")?.call.outcome, null, "an open call has no outcome");
  } finally {
    reader.close();
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("listCalls() returns calls started since a time, oldest first", async () => {
  const { dir, path } = await tempDb();
  const store = await openCallStore({ path, log: collectingLogger().log, retentionDays: 0 });
  try {
    store.callStarted(started("CA_OLD", T0 - 3 * 3600_000));
    store.callStarted(started("CA_B", T0 + 2000));
    store.callStarted(started("CA_A", T0 + 1000));
    store.turnCompleted("CA_A", turns()[1]);
    await store.flush();
    const calls = store.listCalls({ sinceMs: T0 - 3600_000 });
    assert.deepEqual(calls.map((c) => c.callSid), ["CA_A", "CA_B"]);
    assert.equal(calls[0].turns, 1);
    assert.deepEqual(store.listCalls({ sinceMs: 0, limit: 1 }).map((c) => c.callSid), ["CA_B"]);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("callEnded() is ignored with a warning for an unknown or already ended call", async () => {
  const { dir, path } = await tempDb();
  const { log, lines } = collectingLogger();
  const store = await openCallStore({ path, log, retentionDays: 0 });
  try {
    store.callEnded("CA_NONE", ENDED);
    store.callStarted(started("CA3"));
    store.callEnded("CA3", ENDED);
    store.callEnded("CA3", { ...ENDED, outcome: "error", endedAt: T0 + 99_000 });
    await store.flush();
    const call = store.getCall("CA3")?.call;
    assert.equal(call?.outcome, "completed");
    assert.equal(call?.endedAt, ENDED.endedAt);
    assert.equal(lines.filter((l) => l.includes("end of unknown or ended call ignored")).length, 2);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a write SQLite rejects is logged and dropped alone; the rest of its batch is kept", async () => {
  const { dir, path } = await tempDb();
  const { log, lines } = collectingLogger();
  const store = await openCallStore({ path, log, retentionDays: 0 });
  try {
    const [t0, t1, t2] = turns();
    store.callStarted(started("CA4"));
    store.turnCompleted("CA4", t0);
    // text is NOT NULL: SQLite can never accept this row.
    store.turnCompleted("CA4", { ...t1, text: null as unknown as string });
    store.turnCompleted("CA4", t2);
    await store.flush();
    assert.deepEqual(store.getCall("CA4")?.turns.map((t) => t.index), [0, 2]);
    assert.ok(
      lines.some((l) => l.includes("[STORE] write rejected and dropped kind=turn call=CA4")),
    );
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a locked database keeps writes queued, flush() rejects, and they land after the lock goes", async () => {
  const { dir, path } = await tempDb();
  const { log, lines } = collectingLogger();
  const store = await openCallStore({
    path,
    log,
    retentionDays: 0,
    tuning: { busyTimeoutMs: 0, retryBaseMs: 20, retryCapMs: 40 },
  });
  const other = new DatabaseSync(path);
  try {
    other.exec("BEGIN IMMEDIATE");
    store.callStarted(started("CA5"));
    store.turnCompleted("CA5", turns()[0]);
    await assert.rejects(
      store.flush(),
      /^Error: Cannot write call records to ".*kav\.db": database is locked/,
    );
    assert.equal(store.pending(), 2, "nothing was dropped");
    other.exec("COMMIT");
    await store.flush();
    assert.equal(store.pending(), 0);
    assert.equal(store.getCall("CA5")?.turns.length, 1);
    assert.ok(lines.some((l) => l.includes("[STORE] write failed, will retry")));
    assert.ok(lines.some((l) => l.includes("[STORE] writes resumed")));
  } finally {
    if (other.isTransaction) other.exec("ROLLBACK");
    other.close();
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writes after close() are dropped with an error line", async () => {
  const { dir, path } = await tempDb();
  const { log, lines } = collectingLogger();
  const store = await openCallStore({ path, log, retentionDays: 0 });
  store.callStarted(started("CA6"));
  await store.close();
  store.event("CA6", EVENTS[0]);
  assert.equal(store.pending(), 0);
  assert.ok(lines.some((l) => l.includes("[STORE] write after close dropped kind=event")));
  const reader = openCallReader(path);
  try {
    assert.ok(reader.getCall("CA6"), "close() drained the queue first");
    assert.equal(reader.getCall("CA6")?.events.length, 0);
  } finally {
    reader.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("retention deletes ended calls older than retention_days with their rows, at open", async () => {
  const { dir, path } = await tempDb();
  const { log, lines } = collectingLogger();
  const now = T0 + 40 * 86_400_000;
  const first = await openCallStore({ path, log, retentionDays: 0, now: () => now });
  for (const [sid, at] of [["CA_OLD", T0], ["CA_NEW", now - 86_400_000]] as const) {
    first.callStarted(started(sid, at));
    first.turnCompleted(sid, turns(at)[1]);
    first.event(sid, { ...EVENTS[0], at });
    first.callEnded(sid, { ...ENDED, endedAt: at + 10_000 });
  }
  first.turnCompleted("CA_ORPHAN", turns(T0)[1]);
  await first.close();
  const second = await openCallStore({ path, log, retentionDays: 30, now: () => now });
  try {
    assert.equal(second.getCall("CA_OLD"), null);
    assert.ok(second.getCall("CA_NEW"));
    assert.equal(second.getCall("CA_NEW")?.turns.length, 1);
    const reader = openCallReader(path);
    try {
      const left = reader.query("SELECT count(*) AS n FROM turns WHERE call_sid != 'CA_NEW'");
      assert.equal(left[0].n, 0, "turns of deleted and orphaned calls are gone");
      assert.equal(reader.query("SELECT count(*) AS n FROM events")[0].n, 1);
    } finally {
      reader.close();
    }
    assert.ok(lines.some((l) => l.includes("[STORE] retention deleted calls count=1 days=30")));
    assert.equal(await second.sweepRetention(), 0, "a second sweep finds nothing");
  } finally {
    await second.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openCallStore() refuses a database written by a newer schema", async () => {
  const { dir, path } = await tempDb();
  const db = new DatabaseSync(path);
  db.exec("PRAGMA user_version = 99");
  db.close();
  try {
    await assert.rejects(
      openCallStore({ path, log: collectingLogger().log, retentionDays: 0 }),
      (error: Error) => {
        assert.ok(error instanceof RangeError);
        assert.match(error.message, /^Cannot open call store ".*": schema version 99 is newer/);
        return true;
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openCallStore() names the path when the file cannot be opened", async () => {
  await assert.rejects(
    openCallStore({
      path: "/nonexistent/kav/kav.db",
      log: collectingLogger().log,
      retentionDays: 0,
    }),
    /^Error: Cannot open call store "\/nonexistent\/kav\/kav\.db": unable to open database file/,
  );
});

Deno.test("openCallStore() migrates a fresh file to the current schema in WAL mode", async () => {
  const { dir, path } = await tempDb();
  const { log, lines } = collectingLogger();
  const store = await openCallStore({ path, log, retentionDays: 0 });
  await store.close();
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    assert.equal(db.prepare("PRAGMA user_version").get()?.user_version, SCHEMA_VERSION);
    assert.equal(db.prepare("PRAGMA journal_mode").get()?.journal_mode, "wal");
    assert.ok(!lines.some((l) => l.includes("checkpoints on the main thread")), lines.join("\n"));
  } finally {
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openCallStore() names the node on each call and reads calls recorded before as node null", async () => {
  const { dir, path } = await tempDb();
  try {
    // A version 1 file (before node_id) with one call in it.
    const old = new DatabaseSync(path);
    old.exec(
      "CREATE TABLE calls (call_sid TEXT PRIMARY KEY, stream_sid TEXT NOT NULL, account_sid TEXT NOT NULL, from_number TEXT, to_number TEXT, custom_parameters TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER, outcome TEXT, reason TEXT, rx_frames INTEGER, rx_drops INTEGER, tx_frames INTEGER, tx_drops INTEGER, tx_late INTEGER, malformed INTEGER, " +
        LATENCY_NAMES.map((n) => `${n}_p50 REAL, ${n}_p90 REAL`).join(", ") +
        "); CREATE TABLE turns (call_sid TEXT NOT NULL, idx INTEGER NOT NULL, speaker TEXT NOT NULL, text TEXT NOT NULL, generated TEXT, cut INTEGER NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER NOT NULL, has_timings INTEGER NOT NULL, " +
        LATENCY_NAMES.map((n) => `${n} REAL`).join(", ") +
        ", PRIMARY KEY (call_sid, idx)); CREATE TABLE events (id INTEGER PRIMARY KEY, call_sid TEXT NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL); CREATE TABLE crm_outbox (id TEXT PRIMARY KEY, call_sid TEXT NOT NULL, body TEXT NOT NULL, created_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL, delivered_at INTEGER, last_status INTEGER, last_error TEXT);" +
        "INSERT INTO calls (call_sid, stream_sid, account_sid, custom_parameters, started_at, ended_at, outcome, reason) VALUES ('CA_OLD', 'MZ', 'AC', '{}', 1, 2, 'completed', 'stop');" +
        "PRAGMA user_version = 1;",
    );
    old.close();
    const store = await openCallStore({
      path,
      log: collectingLogger().log,
      retentionDays: 0,
      nodeId: "kav-a",
    });
    store.callStarted(started("CA_NEW"));
    await store.flush();
    assert.equal(store.getCall("CA_OLD")?.call.node, null);
    assert.equal(store.getCall("CA_NEW")?.call.node, "kav-a");
    await store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("summarize() interpolates p50/p90 and skips nulls", () => {
  assert.deepEqual(summarize([]), { p50: null, p90: null });
  assert.deepEqual(summarize([null, 7]), { p50: 7, p90: 7 });
  assert.deepEqual(summarize([400, 100, null, 300, 200]), { p50: 250, p90: 370 });
});

Deno.test("startCheckpointer() moves checkpoints off the writer connection", async () => {
  const { dir, path } = await tempDb();
  const db = new DatabaseSync(path);
  db.exec("PRAGMA journal_mode = WAL");
  const { log, lines } = collectingLogger();
  const checkpointer = await startCheckpointer({ db, path, log, intervalMs: 10 });
  try {
    assert.equal(checkpointer.offThread, true);
    assert.equal(db.prepare("PRAGMA wal_autocheckpoint").get()?.wal_autocheckpoint, 0);
    assert.deepEqual(lines, []);
  } finally {
    await checkpointer.stop();
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("startCheckpointer() falls back to SQLite's auto-checkpoint when the worker cannot load", async () => {
  const { dir, path } = await tempDb();
  const db = new DatabaseSync(path);
  db.exec("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0");
  const { log, lines } = collectingLogger();
  const checkpointer = await startCheckpointer({
    db,
    path,
    log,
    intervalMs: 10,
    // Loads but dies at once, like a compiled binary missing the worker module.
    workerUrl: "data:application/javascript,throw new Error('no worker here')",
  });
  try {
    assert.equal(checkpointer.offThread, false);
    assert.equal(db.prepare("PRAGMA wal_autocheckpoint").get()?.wal_autocheckpoint, 1000);
    assert.ok(
      lines.some((l) => l.includes("[STORE] checkpoints on the main thread")),
      lines.join(),
    );
  } finally {
    await checkpointer.stop();
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the store keeps tool calls, transfers with their dial outcome and keypad turns; a caller connected back reopens the call", async () => {
  const { path, dir } = await tempDb();
  const { log } = collectingLogger();
  const store = await openCallStore({ path, log, retentionDays: 0 });
  try {
    recordAgentActs(store, "CA_ACTS", T0, "transferred");
    await store.flush();
    const transferred = store.getCall("CA_ACTS");
    assert.equal(transferred?.call.outcome, "transferred");
    assert.deepEqual(transferred?.transfers.map((t) => t.dialStatus), [null]);
    store.dialEnded("CA_ACTS", { at: T0 + 36_000, status: "no-answer", durationS: null });
    store.callStarted({ ...started("CA_ACTS", T0 + 37_000), streamSid: "MZ2" });
    await store.flush();
    const resumed = store.getCall("CA_ACTS");
    assert.equal(resumed?.call.outcome, null, "connected back: the call is open again");
    assert.equal(resumed?.call.streamSid, "MZ2");
    assert.equal(resumed?.call.startedAt, T0, "the call's start stays the first stream's");
    assert.deepEqual(resumed?.transfers, [{
      at: T0 + 6300,
      department: "sales",
      target: "+97231234500",
      dialStatus: "no-answer",
      dialEndedAt: T0 + 36_000,
      dialDurationS: null,
    }]);
    assert.deepEqual(resumed?.toolCalls.map((t) => [t.name, t.result, t.error, t.ms]), [
      ["lookup_customer", '{"name":"דנה"}', null, 41.25],
      ["open_ticket", null, "timed out after 4000 ms", 4000],
    ]);
    assert.equal(resumed?.turns[0].input, "keypad");
    assert.equal(resumed?.turns[1].input, undefined);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
