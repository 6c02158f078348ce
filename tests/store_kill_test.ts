/**
 * A process SIGKILLed mid-call after two completed turns: at the next open the call is closed as
 * `interrupted` and holds both turns. This file is also the child: `deno run store_kill_test.ts
 * store-kill-child <path>` writes the call and waits to be killed.
 */
import assert from "node:assert/strict";
import { createLogger } from "../src/observe/log.ts";
import { openCallStore } from "../src/store/sqlite.ts";
import type { TurnRecord } from "../src/store/types.ts";

const CHILD_ARG = "store-kill-child";
const T0 = Date.UTC(2025, 0, 15, 10, 0, 0);

function turn(index: number, speaker: "caller" | "agent", e2e: number | null): TurnRecord {
  return {
    index,
    speaker,
    text: `turn ${index}`,
    generated: null,
    cut: false,
    startedAt: T0 + index * 3000,
    endedAt: T0 + index * 3000 + 2000,
    timings: e2e === null ? null : {
      end_of_turn_delay: 300,
      stt_final_delay: 120,
      llm_ttft: 250,
      tts_ttfb: 80,
      e2e_latency: e2e,
      server_latency: 5,
    },
  };
}

async function child(path: string): Promise<void> {
  const store = await openCallStore({ path, log: createLogger(() => {}), retentionDays: 0 });
  store.callStarted({
    callSid: "CA_KILLED",
    streamSid: "MZ_KILLED",
    accountSid: "AC1",
    from: "+972500000001",
    to: "+972300000002",
    customParameters: {},
    startedAt: T0,
  });
  store.turnCompleted("CA_KILLED", turn(0, "caller", null));
  store.event("CA_KILLED", { kind: "mark", at: T0 + 2500, detail: "s1" });
  store.turnCompleted("CA_KILLED", turn(1, "agent", 700));
  await store.flush();
  await Deno.stdout.write(new TextEncoder().encode("flushed\n"));
  // Mid-call: the store stays open (timers live) until the parent kills us.
  await new Promise(() => {});
}

if (Deno.args[0] === CHILD_ARG) await child(Deno.args[1]);

Deno.test("a SIGKILLed call keeps its completed turns and is closed as interrupted at restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kav_kill_" });
  const path = `${dir}/kav.db`;
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL(import.meta.url).pathname, CHILD_ARG, path],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let status: Deno.CommandStatus | null = null;
  try {
    const reader = process.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!seen.includes("flushed\n")) {
      const { value, done } = await reader.read();
      assert.ok(!done, `child exited before flushing: ${seen}`);
      seen += value;
    }
    process.kill("SIGKILL");
    await reader.cancel();
    status = await process.status;
    assert.equal(status.signal, "SIGKILL");
    const lines: string[] = [];
    const store = await openCallStore({
      path,
      log: createLogger((line) => lines.push(line)),
      retentionDays: 0,
    });
    try {
      const detail = store.getCall("CA_KILLED");
      assert.ok(detail, "the call row survived the kill");
      assert.equal(detail.call.outcome, "interrupted");
      assert.deepEqual(detail.turns, [turn(0, "caller", null), turn(1, "agent", 700)]);
      assert.equal(detail.events.length, 1);
      // Closed at its last known activity (the second turn's end), not at restart time.
      assert.equal(detail.call.endedAt, turn(1, "agent", 700).endedAt);
      assert.equal(detail.call.counters, null);
      assert.deepEqual(detail.call.latency.e2e_latency, { p50: 700, p90: 700 });
      assert.ok(lines.some((l) => l.includes("[STORE] call closed as interrupted call=CA_KILLED")));
    } finally {
      await store.close();
    }
  } finally {
    if (status === null) {
      try {
        process.kill("SIGKILL");
      } catch {
        // Already gone.
      }
      await process.status;
    }
    await Deno.remove(dir, { recursive: true });
  }
});
