/**
 * The fleet store against a real PostgreSQL (tools/sandbox/postgres.ts): the same records as
 * SQLite, migrations when nodes start together, the journal while the database is away, across a
 * restart, data errors, retention once per fleet, and `kav calls` reading the fleet.
 */
import assert from "node:assert/strict";
import { createLogger, type Logger } from "../src/observe/log.ts";
import { openCallStore } from "../src/store/sqlite.ts";
import {
  openPostgresStore,
  type OpenPostgresStoreOptions,
  type PostgresCallStore,
} from "../src/store/postgres.ts";
import { runCallsCommand } from "../src/store/cli.ts";
import { PG_SCHEMA_VERSION } from "../src/store/_pg_schema.ts";
import type { CallStore, TurnRecord } from "../src/store/types.ts";
import { renderMetrics } from "../src/observe/metrics.ts";
import { recordAgentActs } from "./support/agent_acts_records.ts";
import {
  type LocalPostgres,
  PG_PASSWORD,
  POSTGRES_UNAVAILABLE,
  startPostgres,
} from "../tools/sandbox/postgres.ts";

const T0 = Date.UTC(2025, 0, 15, 10, 0, 0);
const ignore = POSTGRES_UNAVAILABLE !== null;

function collectingLogger(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  return { log: createLogger((line) => lines.push(line)), lines };
}

function turn(index: number, speaker: "caller" | "agent", e2e: number | null): TurnRecord {
  return {
    index,
    speaker,
    text: speaker === "caller" ? `שלום ${index}` : `תשובה ${index}`,
    generated: speaker === "agent" && index % 3 === 0 ? `תשובה ארוכה ${index}` : null,
    cut: speaker === "agent" && index % 3 === 0,
    startedAt: T0 + index * 3000,
    endedAt: T0 + index * 3000 + 2000,
    timings: e2e === null ? null : {
      end_of_turn_delay: 300,
      stt_final_delay: 120 + index,
      llm_ttft: 250,
      tts_ttfb: 80,
      e2e_latency: e2e,
      server_latency: 5.5,
    },
  };
}

/** A call of `turns` turns with a mark after each agent turn; ended unless `end` is false. */
function simulateCall(
  store: CallStore,
  callSid: string,
  options: { turns?: number; end?: boolean; startedAt?: number } = {},
): void {
  const startedAt = options.startedAt ?? T0;
  store.callStarted({
    callSid,
    streamSid: `MZ${callSid}`,
    accountSid: "AC1",
    from: "+972501111111",
    to: "+97231111111",
    customParameters: { Lead: "7" },
    startedAt,
  });
  for (let i = 0; i < (options.turns ?? 4); i++) {
    const agent = i % 2 === 1;
    store.turnCompleted(callSid, turn(i, agent ? "agent" : "caller", agent ? 600 + i * 10 : null));
    if (agent) {
      store.event(callSid, { kind: "mark", at: startedAt + i * 3000 + 2500, detail: `a${i}` });
    }
  }
  if (options.end === false) return;
  store.callEnded(callSid, {
    endedAt: startedAt + 60_000,
    outcome: "completed",
    reason: "stop received",
    counters: {
      rx_frames: 3000,
      rx_drops: 0,
      tx_frames: 2000,
      tx_drops: 1,
      tx_late: 2,
      malformed: 0,
    },
  });
}

interface Fixture {
  readonly pg: LocalPostgres;
  readonly dir: string;
  /** Options for a node on database `db`. */
  node(
    db: string,
    nodeId: string,
    extra?: Partial<OpenPostgresStoreOptions>,
  ): OpenPostgresStoreOptions;
}

async function withPostgres(fn: (fx: Fixture) => Promise<void>): Promise<void> {
  const pg = await startPostgres();
  const dir = await Deno.makeTempDir({ prefix: "kav_pg_store_" });
  try {
    await fn({
      pg,
      dir,
      node: (db, nodeId, extra = {}) => ({
        url: pg.urlFor(db),
        password: PG_PASSWORD,
        nodeId,
        journalDir: `${dir}/${nodeId}/pg-journal`,
        log: collectingLogger().log,
        retentionDays: 0,
        tuning: { retryBaseMs: 20, retryCapMs: 200, spillIntervalMs: 50, closeTimeoutMs: 500 },
        ...extra,
      }),
    });
  } finally {
    await pg.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "openPostgresStore() records a call as the SQLite store does, naming its node",
  ignore,
  async fn() {
    await withPostgres(async ({ pg, dir, node }) => {
      await pg.createDatabase("same");
      const store = await openPostgresStore(node("same", "kav-a"));
      const sqlite = await openCallStore({
        path: `${dir}/kav.db`,
        log: collectingLogger().log,
        retentionDays: 0,
        nodeId: "kav-a",
      });
      try {
        for (const s of [store, sqlite] as CallStore[]) {
          simulateCall(s, "CA1", { turns: 6 });
          simulateCall(s, "CA2", { turns: 1, end: false, startedAt: T0 + 1000 });
          s.event("CA1", { kind: "stream_status", at: T0 + 61_000, detail: "stream-stopped" });
          // A turn written again (an agent turn cut after it was first recorded) replaces it.
          s.turnCompleted("CA1", { ...turn(3, "agent", 640), text: "תשו", cut: true });
          await s.flush();
        }
        const fromPg = await store.getCall("CA1");
        assert.ok(fromPg);
        assert.deepEqual(fromPg, sqlite.getCall("CA1"));
        assert.equal(fromPg.call.node, "kav-a");
        assert.equal(fromPg.turns.length, 6);
        assert.equal(fromPg.call.outcome, "completed");
        assert.deepEqual(fromPg.call.latency.e2e_latency, { p50: 630, p90: 646 });
        assert.deepEqual(
          await store.listCalls({ sinceMs: 0 }),
          sqlite.listCalls({ sinceMs: 0 }),
        );
        assert.equal(await store.getCall("CA_NONE"), null);
        assert.equal(store.pending(), 0);
        assert.equal(store.behind, false);
      } finally {
        await store.close();
        await sqlite.close();
      }
    });
  },
});

Deno.test({
  name:
    "openPostgresStore() migrates once when four nodes start together, and refuses a newer schema",
  ignore,
  async fn() {
    await withPostgres(async ({ pg, node }) => {
      await pg.createDatabase("race");
      const stores = await Promise.all(
        ["n1", "n2", "n3", "n4"].map((id) => openPostgresStore(node("race", id))),
      );
      const admin = pg.admin("race");
      try {
        const rows = await admin`SELECT version FROM kav_schema ORDER BY version`;
        // Each migration applied once, in order.
        const versions = Array.from({ length: PG_SCHEMA_VERSION }, (_, i) => i + 1);
        assert.deepEqual(rows.map((r) => r.version), versions);
        stores.forEach((store, i) => simulateCall(store, `CA_RACE_${i}`));
        await Promise.all(stores.map((store) => store.flush()));
        assert.equal((await stores[0].listCalls({ sinceMs: 0 })).length, 4);
      } finally {
        await Promise.all(stores.map((store) => store.close()));
      }
      await admin`INSERT INTO kav_schema (version, applied_at, node_id) VALUES (99, 0, 'future')`;
      await assert.rejects(
        openPostgresStore(node("race", "n5")),
        new RegExp(
          "^RangeError: Cannot use the PostgreSQL store: schema version 99 is newer than " +
            `this build's ${PG_SCHEMA_VERSION}$`,
        ),
      );
    });
  },
});

Deno.test({
  name: "openPostgresStore() names a wrong password or a missing database at start",
  ignore,
  async fn() {
    await withPostgres(async ({ node }) => {
      await assert.rejects(
        openPostgresStore({ ...node("postgres", "n1"), password: "wrong" }),
        (error: Error) => {
          assert.match(error.message, /^Cannot use the PostgreSQL store: .*password.*\(28P01\)$/);
          assert.ok(!error.message.includes("wrong"), "the password is not echoed");
          return true;
        },
      );
      await assert.rejects(
        openPostgresStore(node("nosuchdb", "n1")),
        /^Error: Cannot use the PostgreSQL store: database "nosuchdb" does not exist \(3D000\)$/,
      );
    });
  },
});

/** Turns and events of `sids` as stored: counts per call, and whether any event is stored twice. */
async function storedCounts(store: PostgresCallStore, sids: readonly string[]) {
  const out: Record<string, { turns: number; marks: string[]; outcome: string | null }> = {};
  for (const sid of sids) {
    const detail = await store.getCall(sid);
    out[sid] = {
      turns: detail?.turns.length ?? 0,
      marks: detail?.events.filter((e) => e.kind === "mark").map((e) => e.detail) ?? [],
      outcome: detail?.call.outcome ?? null,
    };
  }
  return out;
}

Deno.test({
  name:
    "records wait in memory and the journal while PostgreSQL is stopped, then land once, in order",
  ignore,
  async fn() {
    await withPostgres(async ({ pg, dir, node }) => {
      await pg.createDatabase("outage");
      const { log, lines } = collectingLogger();
      const store = await openPostgresStore(node("outage", "kav-a", { log }));
      try {
        simulateCall(store, "CA_BEFORE");
        await store.flush();
        await pg.stop();
        const sids = Array.from({ length: 10 }, (_, i) => `CA_DOWN_${i}`);
        for (const sid of sids) simulateCall(store, sid, { turns: 6 });
        await assert.rejects(store.flush(), /^Error: Cannot write call records to PostgreSQL: /);
        // While failing, records move to the journal within spillIntervalMs.
        const journalDir = `${dir}/kav-a/pg-journal`;
        const journaled = () =>
          Number(/^kav_store_journal_records (\d+)$/m.exec(renderMetrics())?.[1]);
        const deadline = Date.now() + 5000;
        while (journaled() !== store.pending()) {
          assert.ok(Date.now() < deadline, `records reach the journal: ${journaled()}`);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        assert.ok([...Deno.readDirSync(journalDir)].length > 0);
        assert.equal(store.behind, true);
        assert.match(renderMetrics(), /^kav_store_behind 1$/m);
        assert.ok(
          lines.some((l) =>
            /\[STORE\] store behind: records wait .* reason="?the database is unavailable/.test(l)
          ),
          lines.join("\n"),
        );
        assert.equal(store.pending(), 10 * (1 + 6 + 3 + 1));
        await pg.start();
        await store.flush();
        assert.equal(store.pending(), 0);
        assert.equal(store.behind, false);
        assert.ok(
          lines.some((l) => l.includes("[STORE] store caught up behind_ms=")),
          lines.join("\n"),
        );
        assert.deepEqual([...Deno.readDirSync(journalDir)], [], "the journal is emptied");
        const counts = await storedCounts(store, sids);
        for (const sid of sids) {
          assert.deepEqual(counts[sid], {
            turns: 6,
            marks: ["a1", "a3", "a5"],
            outcome: "completed",
          }, sid);
        }
        const admin = pg.admin("outage");
        const [{ n }] = await admin`SELECT count(*)::int AS n FROM events`;
        assert.equal(n, 2 + 3 * 10, "no event twice");
      } finally {
        await store.close();
      }
    });
  },
});

Deno.test({
  name: "a node restarted while PostgreSQL is down writes its journal at the next start, once",
  ignore,
  async fn() {
    await withPostgres(async ({ pg, dir, node }) => {
      await pg.createDatabase("restart");
      const first = await openPostgresStore(node("restart", "kav-a"));
      simulateCall(first, "CA_DONE");
      await first.flush();
      await pg.stop();
      simulateCall(first, "CA_ENDED_DOWN", { turns: 4 });
      simulateCall(first, "CA_OPEN_DOWN", { turns: 3, end: false });
      await first.close();
      const journalDir = `${dir}/kav-a/pg-journal`;
      assert.ok([...Deno.readDirSync(journalDir)].length > 0, "close() left the records on disk");
      await pg.start();
      const { log, lines } = collectingLogger();
      const second = await openPostgresStore(node("restart", "kav-a", { log }));
      try {
        simulateCall(second, "CA_NEW");
        await second.flush();
        const counts = await storedCounts(second, ["CA_ENDED_DOWN", "CA_OPEN_DOWN", "CA_NEW"]);
        assert.deepEqual(counts, {
          CA_ENDED_DOWN: { turns: 4, marks: ["a1", "a3"], outcome: "completed" },
          // The earlier boot's open call is closed as interrupted once its journal is in.
          CA_OPEN_DOWN: { turns: 3, marks: ["a1"], outcome: "interrupted" },
          CA_NEW: { turns: 4, marks: ["a1", "a3"], outcome: "completed" },
        });
        assert.ok(
          lines.some((l) =>
            /store behind: journal from an earlier run to write records=\d+/.test(l)
          ),
        );
        assert.ok(lines.some((l) => l.includes("call closed as interrupted call=CA_OPEN_DOWN")));
        assert.deepEqual([...Deno.readDirSync(journalDir)], []);
      } finally {
        await second.close();
      }
    });
  },
});

Deno.test({
  name: "openPostgresStore() starts while PostgreSQL is down and catches up when it comes",
  ignore,
  async fn() {
    await withPostgres(async ({ pg, node }) => {
      await pg.createDatabase("late");
      await pg.stop();
      const { log, lines } = collectingLogger();
      const store = await openPostgresStore(node("late", "kav-a", { log, startWaitMs: 200 }));
      try {
        assert.ok(
          lines.some((l) => l.includes("[STORE] database unavailable at start")),
          lines.join("\n"),
        );
        simulateCall(store, "CA_EARLY");
        await pg.start();
        await store.flush();
        assert.equal((await store.getCall("CA_EARLY"))?.turns.length, 4);
      } finally {
        await store.close();
      }
    });
  },
});

Deno.test({
  name: "a record PostgreSQL refuses for good is dropped alone, the batch around it lands",
  ignore,
  async fn() {
    await withPostgres(async ({ pg, node }) => {
      await pg.createDatabase("bad");
      const { log, lines } = collectingLogger();
      const store = await openPostgresStore(node("bad", "kav-a", { log }));
      try {
        simulateCall(store, "CA_OK", { end: false });
        // A turn index past INTEGER: 22003 numeric_value_out_of_range, never writable.
        store.turnCompleted("CA_OK", { ...turn(9, "caller", null), index: 2 ** 40 });
        store.turnCompleted("CA_OK", { ...turn(4, "caller", null), text: "nul \0 inside" });
        await store.flush();
        const detail = await store.getCall("CA_OK");
        assert.deepEqual(detail?.turns.map((t) => t.index), [0, 1, 2, 3, 4]);
        assert.equal(detail?.turns[4].text, "nul \uFFFD inside");
        assert.ok(
          lines.some((l) =>
            /\[STORE\] write rejected and dropped kind=turn call=CA_OK .*22003/.test(l)
          ),
          lines.join("\n"),
        );
      } finally {
        await store.close();
      }
    });
  },
});

Deno.test({
  name: "retention runs on one node of the fleet per interval",
  ignore,
  async fn() {
    await withPostgres(async ({ pg, node }) => {
      await pg.createDatabase("retain");
      const now = T0 + 40 * 86_400_000;
      const options = (id: string) =>
        node("retain", id, {
          now: () => now,
          tuning: { retentionIntervalMs: 3600_000 },
        });
      // Retention off while the old calls are written.
      const writer = await openPostgresStore(options("writer"));
      for (let i = 0; i < 5; i++) simulateCall(writer, `CA_OLD_${i}`);
      simulateCall(writer, "CA_RECENT", { startedAt: now - 86_400_000 });
      await writer.flush();
      await writer.close();
      const a = await openPostgresStore({ ...options("kav-a"), retentionDays: 30 });
      const b = await openPostgresStore({ ...options("kav-b"), retentionDays: 30 });
      try {
        // Each node swept once at start; only one found it was its turn.
        const admin = pg.admin("retain");
        const deadline = Date.now() + 5000;
        for (;;) {
          const [{ n }] = await admin`SELECT count(*)::int AS n FROM calls`;
          if (n === 1) break;
          assert.ok(Date.now() < deadline, `retention did not run: ${n} calls`);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        const swept = await Promise.all([a.sweepRetention(), b.sweepRetention()]);
        assert.deepEqual(swept, [0, 0], "within the interval no node sweeps again");
        const [chore] = await admin`SELECT node_id FROM kav_chores WHERE name = 'retention'`;
        assert.ok(["kav-a", "kav-b"].includes(chore.node_id));
        assert.ok(await a.getCall("CA_RECENT"));
        const [{ t }] = await admin`SELECT count(*)::int AS t FROM turns`;
        assert.equal(t, 4, "the old calls' turns went with them");
      } finally {
        await a.close();
        await b.close();
      }
    });
  },
});

Deno.test({
  name: "kav calls and kav call read every node's calls from PostgreSQL",
  ignore,
  async fn() {
    await withPostgres(async ({ pg, dir, node }) => {
      const url = await pg.createDatabase("cli");
      const a = await openPostgresStore(node("cli", "kav-a"));
      const b = await openPostgresStore(node("cli", "kav-b"));
      try {
        simulateCall(a, "CA_ON_A", { startedAt: Date.now() - 60_000 });
        simulateCall(b, "CA_ON_B", { startedAt: Date.now() - 30_000 });
        await Promise.all([a.flush(), b.flush()]);
      } finally {
        await a.close();
        await b.close();
      }
      const run = async (args: string[], password: string | null = PG_PASSWORD) => {
        const out: string[] = [];
        const err: string[] = [];
        const code = await runCallsCommand(args, {
          storagePath: `${dir}/unused.db`,
          storageUrl: url,
          storagePassword: password,
          out: (line) => out.push(line),
          err: (line) => err.push(line),
        });
        return { code, out: out.join("\n"), err: err.join("\n") };
      };
      const listed = await run(["calls", "--json"]);
      assert.equal(listed.code, 0, listed.err);
      const calls = JSON.parse(listed.out).calls as { callSid: string; node: string }[];
      assert.deepEqual(calls.map((c) => [c.callSid, c.node]), [["CA_ON_A", "kav-a"], [
        "CA_ON_B",
        "kav-b",
      ]]);
      const table = await run(["calls"]);
      assert.match(table.out, /^TIME\s+CALL\s+NODE\s+FROM\s+DURATION/);
      assert.match(table.out, /CA_ON_A\s+kav-a\s/);
      assert.match(table.out, /CA_ON_B\s+kav-b\s/);
      const shown = await run(["call", "CA_ON_B"]);
      assert.match(shown.out, /^Answered by node kav-b$/m);
      const one = await run(["call", "CA_ON_B", "--json"]);
      assert.equal(JSON.parse(one.out).turns.length, 4);
      const missing = await run(["call", "CA_NOPE"]);
      assert.deepEqual([missing.code, missing.err], [1, `Cannot find call "CA_NOPE" in "${url}"`]);
      const refused = await run(["calls"], "wrong");
      assert.equal(refused.code, 1);
      assert.match(refused.err, new RegExp(`^Cannot open call store "${url}": .*\\(28P01\\)$`));
      await pg.createDatabase("empty");
      const empty = await runCallsCommand(["calls"], {
        storagePath: "unused",
        storageUrl: pg.urlFor("empty"),
        storagePassword: PG_PASSWORD,
        out: () => {},
        err: (line) =>
          assert.equal(
            line,
            `Cannot read call store "${
              pg.urlFor("empty")
            }": schema version 0, this build reads ${PG_SCHEMA_VERSION}`,
          ),
      });
      assert.equal(empty, 1);
    });
  },
});

Deno.test({
  name:
    "openPostgresStore() keeps tool calls, transfers, dial outcomes, keypad turns and a reopened call as SQLite does",
  ignore,
  async fn() {
    await withPostgres(async ({ pg, dir, node }) => {
      await pg.createDatabase("acts");
      const store = await openPostgresStore(node("acts", "kav-a"));
      const sqlite = await openCallStore({
        path: `${dir}/kav.db`,
        log: collectingLogger().log,
        retentionDays: 0,
        nodeId: "kav-a",
      });
      try {
        for (const s of [store, sqlite] as CallStore[]) {
          recordAgentActs(s, "CA_ACTS", T0);
          await s.flush();
        }
        const fromPg = await store.getCall("CA_ACTS");
        assert.ok(fromPg);
        assert.deepEqual(fromPg, sqlite.getCall("CA_ACTS"));
        assert.equal(fromPg.call.outcome, "agent_hangup");
        assert.equal(fromPg.call.streamSid, "MZ2");
        assert.equal(fromPg.toolCalls.length, 2);
        assert.deepEqual(fromPg.transfers.map((t) => t.dialStatus), ["no-answer"]);
        assert.deepEqual(fromPg.turns.map((t) => t.input ?? "speech"), [
          "keypad",
          "speech",
          "speech",
        ]);
      } finally {
        await store.close();
        await sqlite.close();
      }
    });
  },
});
