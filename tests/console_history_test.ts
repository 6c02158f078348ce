/**
 * The console's call history (src/store/history.ts) over both stores: the same calls written to
 * SQLite and to a real PostgreSQL answer the same searches (filters, pages, Hebrew words).
 */
import assert from "node:assert/strict";
import { createLogger } from "../src/observe/log.ts";
import { openCallStore } from "../src/store/sqlite.ts";
import { openPostgresStore } from "../src/store/postgres.ts";
import {
  type CallHistory,
  hasHistory,
  type HistoryQuery,
  numberDigits,
  searchWords,
} from "../src/store/history.ts";
import type { CallOutcome, CallStore } from "../src/store/types.ts";
import { PG_PASSWORD, POSTGRES_UNAVAILABLE, startPostgres } from "../tools/sandbox/postgres.ts";

const T0 = Date.UTC(2025, 0, 15, 10, 0, 0);
const log = createLogger(() => {});

interface Sample {
  readonly callSid: string;
  readonly from: string;
  readonly startedAt: number;
  readonly outcome: CallOutcome | null;
  readonly said: readonly string[];
}

const SAMPLES: readonly Sample[] = [
  {
    callSid: "CA01",
    from: "+972501111111",
    startedAt: T0,
    outcome: "completed",
    said: ["אני רוצה לקבוע תור למחר", "בשמחה, באיזו שעה?"],
  },
  {
    callSid: "CA02",
    from: "+972502222222",
    startedAt: T0 + 60_000,
    outcome: "interrupted",
    said: ["What are your opening hours", "We open at nine"],
  },
  {
    callSid: "CA03",
    from: "+972503333333",
    startedAt: T0 + 120_000,
    outcome: "completed",
    said: ["אפשר לבטל את התורים שלי", "Sure, cancelling TOMORROW"],
  },
  {
    callSid: "CA04",
    from: "+972501111111",
    startedAt: T0 + 180_000,
    outcome: null,
    said: ["שלום"],
  },
];

function write(store: CallStore): void {
  for (const sample of SAMPLES) {
    store.callStarted({
      callSid: sample.callSid,
      streamSid: `MZ${sample.callSid}`,
      accountSid: "AC1",
      from: sample.from,
      to: "+97231234567",
      customParameters: {},
      startedAt: sample.startedAt,
    });
    sample.said.forEach((text, index) =>
      store.turnCompleted(sample.callSid, {
        index,
        speaker: index % 2 === 0 ? "caller" : "agent",
        text,
        generated: null,
        cut: false,
        startedAt: sample.startedAt + index * 2000,
        endedAt: sample.startedAt + index * 2000 + 1500,
        timings: null,
      })
    );
    if (sample.outcome !== null) {
      store.callEnded(sample.callSid, {
        endedAt: sample.startedAt + 30_000,
        outcome: sample.outcome,
        reason: "test",
        counters: {
          rx_frames: 1,
          rx_drops: 0,
          tx_frames: 1,
          tx_drops: 0,
          tx_late: 0,
          malformed: 0,
        },
      });
    }
  }
}

async function sids(history: CallHistory, query: Partial<HistoryQuery>): Promise<string[]> {
  const rows = await history.searchCalls({ limit: 50, ...query });
  return rows.map((row) => row.callSid);
}

/** The searches every store must answer alike. */
async function checkSearches(history: CallHistory): Promise<void> {
  assert.deepEqual(await sids(history, {}), ["CA04", "CA03", "CA02", "CA01"], "newest first");
  assert.deepEqual(await sids(history, { text: "תור" }), ["CA01"], "a whole Hebrew word");
  assert.deepEqual(await sids(history, { text: "תור" }), ["CA01"]);
  assert.deepEqual(await sids(history, { text: "התור" }), ["CA03"], "a word's start: התורים");
  assert.deepEqual(await sids(history, { text: "רוצה מחר" }), [], "every word, as word starts");
  assert.deepEqual(await sids(history, { text: "רוצה לקבוע" }), ["CA01"]);
  assert.deepEqual(await sids(history, { text: "tomorrow" }), ["CA03"], "case-insensitive");
  assert.deepEqual(await sids(history, { text: "OPEN" }), ["CA02"], "open finds opening");
  assert.deepEqual(await sids(history, { text: "nine hours" }), [], "words of different turns");
  assert.deepEqual(await sids(history, { text: '"; DROP TABLE calls; --' }), []);
  assert.deepEqual(await sids(history, { text: " ,.!? " }), ["CA04", "CA03", "CA02", "CA01"]);
  assert.deepEqual(await sids(history, { number: "50-111" }), ["CA04", "CA01"]);
  assert.deepEqual(await sids(history, { number: "+972 50 333" }), ["CA03"]);
  assert.deepEqual(await sids(history, { outcome: "completed" }), ["CA03", "CA01"]);
  assert.deepEqual(await sids(history, { outcome: "open" }), ["CA04"]);
  assert.deepEqual(
    await sids(history, { sinceMs: T0 + 60_000, untilMs: T0 + 180_000 }),
    ["CA03", "CA02"],
    "since is inclusive, until exclusive",
  );
  assert.deepEqual(await sids(history, { outcome: "completed", text: "שלי" }), ["CA03"]);
  // Pages: newest first, then the calls before the last one of the page.
  const first = await history.searchCalls({ limit: 2 });
  assert.deepEqual(first.map((row) => row.callSid), ["CA04", "CA03"]);
  const last = first[first.length - 1];
  assert.deepEqual(
    await sids(history, { limit: 2, before: { startedAt: last.startedAt, callSid: last.callSid } }),
    ["CA02", "CA01"],
  );
  const one = await history.getCall("CA01");
  assert.equal(one?.turns.length, 2);
  assert.equal(one?.turns[0].text, "אני רוצה לקבוע תור למחר");
  assert.equal(await history.getCall("CA99"), null);
  const row = (await history.searchCalls({ limit: 1, text: "שלום" }))[0];
  assert.equal(row.callSid, "CA04");
  assert.equal(row.turns, 1);
  assert.equal(row.outcome, null);
}

Deno.test("searchWords() keeps runs of letters and digits of any script, lowercased", () => {
  assert.deepEqual(searchWords("  Hello, שלום-עולם 42!"), ["hello", "שלום", "עולם", "42"]);
  assert.deepEqual(searchWords('"*) OR 1=1 --'), ["or", "1"]);
  assert.deepEqual(searchWords("a b c d e f g h i j").length, 8);
  assert.equal(numberDigits("+972 (54) 123-4567"), "972541234567");
});

Deno.test("SQLite history answers filters, pages and Hebrew searches from its reader thread", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kav_history_" });
  const store = await openCallStore({ path: `${dir}/kav.db`, log, retentionDays: 0 });
  try {
    write(store);
    await store.flush();
    assert.ok(hasHistory(store));
    const history = await store.openHistory();
    try {
      await checkSearches(history);
      // A replaced turn (INSERT OR REPLACE, as after a replay) leaves only its new text indexed.
      store.turnCompleted("CA02", {
        index: 1,
        speaker: "agent",
        text: "We close at five",
        generated: null,
        cut: false,
        startedAt: T0 + 62_000,
        endedAt: T0 + 63_000,
        timings: null,
      });
      await store.flush();
      assert.deepEqual(await sids(history, { text: "nine" }), []);
      assert.deepEqual(await sids(history, { text: "close five" }), ["CA02"]);
    } finally {
      await history.close();
    }
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SQLite history reads in-thread when the reader thread cannot load", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kav_history_" });
  const lines: string[] = [];
  const store = await openCallStore({
    path: `${dir}/kav.db`,
    log: createLogger((line) => lines.push(line)),
    retentionDays: 0,
  });
  try {
    write(store);
    await store.flush();
    const { openSqliteHistory } = await import("../src/store/_sqlite_history.ts");
    const { CallReader } = await import("../src/store/read.ts");
    const { DatabaseSync } = await import("node:sqlite");
    const db = new DatabaseSync(`${dir}/kav.db`, { readOnly: true });
    try {
      const history = await openSqliteHistory({
        path: `${dir}/kav.db`,
        log: createLogger((line) => lines.push(line)),
        fallback: new CallReader(db),
        // Loads but dies at once, like a compiled binary missing the worker module.
        workerUrl: "data:application/javascript,throw new Error('no worker here')",
      });
      await checkSearches(history);
      assert.ok(lines.some((line) => /history reads on the main thread/.test(line)), lines.join());
    } finally {
      db.close();
    }
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "PostgreSQL history answers the same searches as SQLite",
  ignore: POSTGRES_UNAVAILABLE !== null,
  async fn() {
    const pg = await startPostgres();
    const dir = await Deno.makeTempDir({ prefix: "kav_pg_history_" });
    try {
      const store = await openPostgresStore({
        url: await pg.createDatabase("history"),
        password: PG_PASSWORD,
        nodeId: "n1",
        journalDir: `${dir}/pg-journal`,
        log,
        retentionDays: 0,
      });
      try {
        write(store);
        await store.flush();
        const history = await store.openHistory();
        await checkSearches(history);
        await history.close();
      } finally {
        await store.close();
      }
    } finally {
      await pg.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
