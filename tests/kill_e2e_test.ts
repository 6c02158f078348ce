/**
 * Issue 6, end to end: the real Kav process is SIGKILLed mid-call after two completed turns (the
 * caller spoke and the agent's answer was played, twice). A new Kav on the same database closes
 * the call as `interrupted`, and the record holds all four turns.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../src/config/load.ts";
import type { CallDetail } from "../src/store/read.ts";
import { openCallReader } from "../src/store/read.ts";
import { fixtureClip, runKavCli, sayAndWait, startKavProcess } from "./support/kav_process.ts";
import { startProviderServers } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT_MS = 30_000;
const ANSWERS = ["בשמחה, מתי נוח לך?", "מצוין, קבעתי לך תור למחר בתשע."];

/** Texts of the turns of `sid` on disk (none before the call row exists). */
function storedTurns(path: string, sid: string): string[] {
  const reader = openCallReader(path);
  try {
    return reader.getCall(sid)?.turns.map((turn) => turn.text) ?? [];
  } finally {
    reader.close();
  }
}

async function until(what: string, predicate: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

Deno.test("a SIGKILLed Kav leaves both completed turns, closed as interrupted at restart", async () => {
  const first = fixtureClip("appointment");
  const second = fixtureClip("tomorrow");
  const servers = await startProviderServers();
  const dir = await Deno.makeTempDir({ prefix: "kav-kill-e2e-" });
  const kav = await startKavProcess({ servers, dir });
  let client: TwilioClient | null = null;
  let restarted: Awaited<ReturnType<typeof startKavProcess>> | null = null;
  try {
    servers.llm.script(...ANSWERS);
    client = await TwilioClient.connect({ url: kav.mediaUrl });
    const sid = client.callSid;
    client.begin();
    await client.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
    await sayAndWait(client, first.audio, client.waitForEcho("a1_0", { timeoutMs: TIMEOUT_MS }));
    await sayAndWait(client, second.audio, client.waitForEcho("a2_0", { timeoutMs: TIMEOUT_MS }));
    // Kav completes the agent turn when it gets the echo; the store commits it soon after.
    await until(
      "the second answer stored",
      () => storedTurns(kav.storagePath, sid).includes(ANSWERS[1]),
      TIMEOUT_MS,
    );
    kav.kill("SIGKILL");
    const killed = await kav.status;
    assert.equal(killed.signal, "SIGKILL");
    await client.closed;
    assert.ok(
      !kav.lines.some((l) => l.includes(`call=${sid} ended`)),
      "the call never ended in the killed process",
    );

    restarted = await startKavProcess({ servers, dir });
    await restarted.waitForLine(
      new RegExp(`\\[STORE\\] call closed as interrupted call=${sid}`),
      { timeoutMs: TIMEOUT_MS },
    );
    const shown = await runKavCli(restarted.configPath, ["call", sid, "--json"]);
    assert.equal(shown.code, 0, shown.stderr);
    const detail = JSON.parse(shown.stdout) as CallDetail;
    assert.equal(detail.call.outcome, "interrupted");
    assert.ok(detail.call.endedAt !== null && detail.call.endedAt >= detail.call.startedAt);
    const greeting = (await loadConfig(kav.configPath)).call.greeting;
    const turns = detail.turns.map((turn) => [turn.index, turn.speaker, turn.text, turn.cut]);
    // The greeting, when recorded, is the agent's turn 0.
    const g = turns[0]?.[2] === greeting ? 1 : 0;
    assert.deepEqual(turns, [
      ...(g === 1 ? [[0, "agent", greeting, false]] : []),
      [g, "caller", first.text, false],
      [g + 1, "agent", ANSWERS[0], false],
      [g + 2, "caller", second.text, false],
      [g + 3, "agent", ANSWERS[1], false],
    ]);
    for (const agent of [detail.turns[g + 1], detail.turns[g + 3]]) {
      assert.ok((agent.timings?.e2e_latency ?? 0) > 0, JSON.stringify(agent.timings));
    }
    // Percentiles are computed when a call is closed, the interrupted close included.
    assert.ok(detail.call.latency.e2e_latency.p50 !== null, JSON.stringify(detail.call.latency));
    assert.deepEqual(
      detail.events.filter((e) => e.kind === "mark").map((e) => e.detail),
      ["greeting_end", "a1_0", "a2_0"],
    );
    restarted.kill("SIGTERM");
    assert.equal((await restarted.status).code, 0, restarted.log());
  } finally {
    await client?.close();
    await kav.close();
    await restarted?.close();
    await servers.close();
    await Deno.remove(dir, { recursive: true });
  }
});
