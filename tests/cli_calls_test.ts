import assert from "node:assert/strict";
import { createLogger } from "../src/observe/log.ts";
import { openCallStore } from "../src/store/sqlite.ts";
import { openCallReader } from "../src/store/read.ts";
import { parseSince, runCallsCommand } from "../src/store/cli.ts";
import type { CallStore, TurnRecord } from "../src/store/types.ts";

const T0 = Date.UTC(2025, 0, 15, 10, 0, 0);
const NOW = T0 + 3600_000;
const FROM = "+972501234567";
const TO = "+97231234567";
const HEBREW = ["שלום", "תור", "בשמחה", "שלישי"];

function agentTiming(e2e: number) {
  return {
    end_of_turn_delay: 320,
    stt_final_delay: 150,
    llm_ttft: 300,
    tts_ttfb: 90,
    e2e_latency: e2e,
    server_latency: 4.5,
  };
}

const TURNS: TurnRecord[] = [
  {
    index: 0,
    speaker: "agent",
    text: "שלום, הגעתם לקו",
    generated: null,
    cut: false,
    startedAt: T0,
    endedAt: T0 + 2000,
    timings: null,
  },
  {
    index: 1,
    speaker: "caller",
    text: "אני רוצה לקבוע תור",
    generated: null,
    cut: false,
    startedAt: T0 + 2500,
    endedAt: T0 + 4000,
    timings: null,
  },
  {
    index: 2,
    speaker: "agent",
    text: "בשמחה, לאיזה יום",
    generated: "בשמחה, לאיזה יום? יש לנו מקום ביום שלישי",
    cut: true,
    startedAt: T0 + 4800,
    endedAt: T0 + 6000,
    timings: agentTiming(800),
  },
  {
    index: 3,
    speaker: "agent",
    text: "יום שלישי בעשר",
    generated: null,
    cut: false,
    startedAt: T0 + 8000,
    endedAt: T0 + 9000,
    timings: agentTiming(1000),
  },
];

function record(store: CallStore): void {
  store.callStarted({
    callSid: "CA_DONE",
    streamSid: "MZ_DONE",
    accountSid: "AC1",
    from: FROM,
    to: TO,
    customParameters: { Lead: "42" },
    startedAt: T0,
  });
  for (const turn of TURNS) store.turnCompleted("CA_DONE", turn);
  store.event("CA_DONE", { kind: "mark", at: T0 + 2000, detail: "greeting_end" });
  store.event("CA_DONE", { kind: "barge_in", at: T0 + 5900, detail: "" });
  store.event("CA_DONE", { kind: "dtmf", at: T0 + 7000, detail: "7" });
  store.callEnded("CA_DONE", {
    endedAt: T0 + 10_000,
    outcome: "completed",
    reason: "stop received",
    counters: {
      rx_frames: 500,
      rx_drops: 1,
      tx_frames: 400,
      tx_drops: 0,
      tx_late: 2,
      malformed: 0,
    },
  });
  store.callStarted({
    callSid: "CA_OLD",
    streamSid: "MZ_OLD",
    accountSid: "AC1",
    from: "+972509999999",
    to: TO,
    customParameters: {},
    startedAt: T0 - 2 * 86_400_000,
  });
  store.callStarted({
    callSid: "CA_LIVE",
    streamSid: "MZ_LIVE",
    accountSid: "AC1",
    from: "+972508888888",
    to: TO,
    customParameters: {},
    startedAt: NOW - 60_000,
  });
}

async function withStore(run: (path: string) => Promise<void>, keepOpen = false): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "kav_cli_" });
  const path = `${dir}/kav.db`;
  const store = await openCallStore({ path, log: createLogger(() => {}), retentionDays: 0 });
  record(store);
  await store.flush();
  if (!keepOpen) await store.close();
  try {
    await run(path);
  } finally {
    if (keepOpen) await store.close();
    await Deno.remove(dir, { recursive: true });
  }
}

async function cli(path: string, ...args: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCallsCommand(args, {
    storagePath: path,
    out: (line) => out.push(line),
    err: (line) => err.push(line),
    now: () => NOW,
  });
  return { code, out: out.join("\n"), err: err.join("\n") };
}

Deno.test("kav calls prints time, call, from, duration, turns, outcome and e2e p50", async () => {
  await withStore(async (path) => {
    const { code, out, err } = await cli(path, "calls");
    assert.equal(code, 0, err);
    const lines = out.split("\n");
    assert.match(lines[0], /^TIME\s+CALL\s+FROM\s+DURATION\s+TURNS\s+OUTCOME\s+E2E P50$/);
    assert.equal(lines.length, 3, "header, CA_DONE, CA_LIVE (CA_OLD is older than 24h)");
    assert.match(
      lines[1],
      /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+CA_DONE\s+\+972501234567\s+10\.0s\s+4\s+completed\s+900 ms$/,
    );
    assert.match(lines[2], /CA_LIVE\s+\+972508888888\s+-\s+0\s+active\s+-$/);
  });
});

Deno.test("kav calls --since narrows the window and --json parses", async () => {
  await withStore(async (path) => {
    const recent = await cli(path, "calls", "--since", "30m", "--json");
    assert.equal(recent.code, 0, recent.err);
    const parsed = JSON.parse(recent.out);
    assert.deepEqual(parsed.calls.map((c: { callSid: string }) => c.callSid), ["CA_LIVE"]);
    assert.equal(parsed.since, new Date(NOW - 30 * 60_000).toISOString());
    const all = JSON.parse((await cli(path, "calls", "--since=3d", "--json")).out);
    assert.deepEqual(all.calls.map((c: { callSid: string }) => c.callSid), [
      "CA_OLD",
      "CA_DONE",
      "CA_LIVE",
    ]);
    assert.equal(all.calls[1].latency.e2e_latency.p50, 900);
    assert.equal(all.calls[1].turns, 4);
    const limited = JSON.parse(
      (await cli(path, "calls", "--since", "3d", "--limit", "1", "--json")).out,
    );
    assert.deepEqual(limited.calls.map((c: { callSid: string }) => c.callSid), ["CA_LIVE"]);
  });
});

Deno.test("kav call prints the transcript with per-turn timings and what barge-in cut", async () => {
  await withStore(async (path) => {
    const { code, out, err } = await cli(path, "call", "CA_DONE");
    assert.equal(code, 0, err);
    assert.match(out, /^Call CA_DONE \(stream MZ_DONE, account AC1\)$/m);
    assert.match(out, /^From \+972501234567 to \+97231234567$/m);
    assert.match(out, /outcome completed: stop received$/m);
    assert.match(out, /^Counters: rx_frames=500 rx_drops=1 tx_frames=400 tx_drops=0 tx_late=2/m);
    assert.match(out, /^ {2}e2e_latency\s+900\s+980$/m);
    assert.match(out, /^ {2}#1\s+\+2\.5s\s+caller\s+"אני רוצה לקבוע תור"$/m);
    assert.match(out, /^ {2}#2\s+\+4\.8s\s+agent\s+"בשמחה, לאיזה יום"\s+\[cut by barge-in\]$/m);
    assert.match(out, /not played: "\? יש לנו מקום ביום שלישי"$/m);
    assert.match(out, /ms: eot=320 stt=150 ttft=300 ttfb=90 e2e=800 server=4\.5$/m);
    assert.match(out, /^Events \(1 marks not listed\)$/m);
    assert.match(out, /^\s+\+7\.0s\s+dtmf\s+7$/m);
  });
});

Deno.test("kav call --json parses to the stored record", async () => {
  await withStore(async (path) => {
    const { code, out } = await cli(path, "call", "CA_DONE", "--json");
    assert.equal(code, 0);
    const reader = openCallReader(path);
    try {
      assert.deepEqual(JSON.parse(out), JSON.parse(JSON.stringify(reader.getCall("CA_DONE"))));
    } finally {
      reader.close();
    }
    assert.deepEqual(JSON.parse(out).turns, TURNS);
  });
});

Deno.test("kav call --redact hides phone numbers, transcript text and DTMF digits", async () => {
  await withStore(async (path) => {
    for (const extra of [[], ["--json"]]) {
      const { code, out } = await cli(path, "call", "CA_DONE", "--redact", ...extra);
      assert.equal(code, 0);
      for (const secret of [FROM, TO, "972", "42", ...HEBREW]) {
        assert.ok(!out.includes(secret), `"${secret}" leaked in ${extra.join(" ")}:\n${out}`);
      }
      assert.ok(out.includes("CA_DONE"), "the sid stays, to find the call");
    }
    const text = (await cli(path, "call", "CA_DONE", "--redact")).out;
    assert.match(text, /^From \[redacted\] to \[redacted\]$/m);
    assert.match(text, /#1 .*"\[18 chars\]"$/m);
    assert.match(text, /dtmf {2}\[redacted\]$/m);
    assert.match(text, /e2e=800/, "timings are not personal data");
    const table = (await cli(path, "calls", "--redact")).out;
    assert.ok(!table.includes("+972"), table);
  });
});

Deno.test("kav calls reads a store that a running Kav has open", async () => {
  await withStore(async (path) => {
    const { code, out } = await cli(path, "calls", "--json");
    assert.equal(code, 0);
    assert.equal(JSON.parse(out).calls.length, 2);
  }, true);
});

Deno.test("kav calls reports a missing store, an unknown call and bad usage", async () => {
  const missing = await cli("/nonexistent/kav.db", "calls");
  assert.equal(missing.code, 1);
  assert.equal(missing.err, 'Cannot open call store "/nonexistent/kav.db": no such file');
  await withStore(async (path) => {
    const unknown = await cli(path, "call", "CA_NOPE");
    assert.equal(unknown.code, 1);
    assert.equal(unknown.err, `Cannot find call "CA_NOPE" in "${path}"`);
    const cases: [string[], RegExp][] = [
      [["calls", "--since", "yesterday"], /^Cannot parse --since "yesterday": expected a number/],
      [["calls", "--since"], /^Cannot use --since: a value is required/],
      [["calls", "--limit", "0"], /^Cannot use --limit "0": expected a positive integer/],
      [["calls", "--verbose"], /^Cannot use option "--verbose"/],
      [["call"], /^Cannot show a call: give one CallSid/],
      [["calls", "extra"], /^Cannot use "extra"/],
      [["list"], /^Cannot run "list": expected calls or call/],
      [[], /^Cannot run "": expected calls or call/],
    ];
    for (const [args, message] of cases) {
      const result = await cli(path, ...args);
      assert.equal(result.code, 2, args.join(" "));
      assert.match(result.err, message);
      assert.match(result.err, /Usage:/);
      assert.equal(result.out, "");
    }
  });
});

Deno.test("kav calls on a store with no recent calls says so", async () => {
  await withStore(async (path) => {
    const { code, out } = await cli(path, "calls", "--since", "10s");
    assert.equal(code, 0);
    assert.equal(out, "No calls in that period");
  });
});

Deno.test("parseSince() reads s, m, h and d", () => {
  assert.deepEqual(["90s", "30m", "1h", "2d", "1.5h"].map(parseSince), [
    90_000,
    1_800_000,
    3_600_000,
    172_800_000,
    5_400_000,
  ]);
  assert.throws(() => parseSince("5w"), RangeError);
});
