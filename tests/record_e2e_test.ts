/**
 * Issue 6, end to end against the real Kav process: a simulated call leaves its full record, the
 * `kav call` / `kav calls` CLI (run as a subprocess on the same database) prints it, and
 * `[log] transcripts = false` keeps the text out of the `[PARTIAL]`/`[FINAL]` lines.
 */
import assert from "node:assert/strict";
import type { CallDetail, CallRow } from "../src/store/read.ts";
import { fixtureClip, runKavCli, sayAndWait, startKavProcess } from "./support/kav_process.ts";
import { startProviderServers } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT_MS = 30_000;
const FROM = "+972501234567";
const TO = "+97237654321";
const ANSWER = "בשמחה, נקבע לך תור למחר.";
const GREETING = "שלום, הגעתם לקו הבדיקות.";

Deno.test("a simulated call leaves its full record and kav call / kav calls print it", async (t) => {
  const clip = fixtureClip("appointment");
  const servers = await startProviderServers();
  const kav = await startKavProcess({
    servers,
    extra: `[log]\ntranscripts = false\n[call]\ngreeting = "${GREETING}"`,
  });
  let client: TwilioClient | null = null;
  try {
    servers.llm.script(ANSWER);
    client = await TwilioClient.connect({
      url: kav.mediaUrl,
      customParameters: { From: FROM, To: TO, CallSid: "ignored-here", Campaign: "spring" },
    });
    const sid = client.callSid;
    const from = kav.lines.length;
    client.begin();
    await client.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
    await sayAndWait(client, clip.audio, client.waitForEcho("a1_0", { timeoutMs: TIMEOUT_MS }));
    // A key pressed as the caller hangs up: recorded as a DTMF event, too late to be a keypad turn
    // (keypad turns themselves are tested in conversation_keypad_test.ts).
    client.sendDtmf("5");
    client.sendStop();
    await client.closed;
    await kav.waitForLine(new RegExp(`\\[CALL\\] call=${sid} ended outcome=completed`), {
      timeoutMs: TIMEOUT_MS,
      from,
    });
    kav.kill("SIGTERM");
    assert.equal((await kav.status).code, 0, kav.log());

    await t.step("[FINAL] and [PARTIAL] lines carry no text with transcripts = false", () => {
      const finals = kav.lines.filter((l) => l.includes(`[FINAL] call=${sid}`));
      const partials = kav.lines.filter((l) => l.includes(`[PARTIAL] call=${sid}`));
      assert.equal(finals.length, 1, kav.log());
      assert.ok(partials.length > 0, kav.log());
      for (const line of [...finals, ...partials]) {
        assert.match(line, / chars=\d+$/);
        assert.doesNotMatch(line, /[\u0590-\u05ff]|"/, line);
      }
      assert.ok(finals[0].endsWith(` chars=${clip.text.length}`), finals[0]);
    });

    const shown = await runKavCli(kav.configPath, ["call", sid, "--json"]);
    assert.equal(shown.code, 0, shown.stderr);
    const detail = JSON.parse(shown.stdout) as CallDetail;
    // The greeting, when recorded as played, is the agent's turn 0.
    const g = detail.turns[0]?.text === GREETING ? 1 : 0;

    await t.step("the call row holds sids, numbers, parameters, times, counters, p50/p90", () => {
      const call = detail.call;
      assert.equal(call.callSid, sid);
      assert.equal(call.streamSid, client!.streamSid);
      assert.equal(call.accountSid, client!.accountSid);
      assert.equal(call.from, FROM);
      assert.equal(call.to, TO);
      assert.deepEqual(call.customParameters, {
        From: FROM,
        To: TO,
        CallSid: "ignored-here",
        Campaign: "spring",
      });
      assert.equal(call.outcome, "completed");
      assert.equal(call.reason, "stop");
      assert.ok(call.endedAt !== null && call.endedAt > call.startedAt);
      assert.ok(Math.abs(call.startedAt - Date.now()) < 120_000, "start time is now-ish");
      assert.equal(call.turns, g + 2);
      const counters = call.counters;
      assert.ok(counters !== null);
      // Greeting, then at least the clip as agent speech back: both directions carried audio.
      assert.ok(counters.rx_frames >= Math.floor(clip.audio.length / 160), `${counters.rx_frames}`);
      assert.ok(counters.tx_frames > 0);
      assert.equal(counters.malformed, 0);
      for (const name of ["e2e_latency", "llm_ttft", "tts_ttfb"] as const) {
        const { p50, p90 } = call.latency[name];
        assert.ok(typeof p50 === "number" && p50 >= 0, `${name} p50 ${p50}`);
        assert.ok(typeof p90 === "number" && p90 >= p50, `${name} p90 ${p90}`);
      }
    });

    await t.step("the caller and agent turns carry text and timings", () => {
      assert.equal(detail.turns.length, g + 2);
      if (g === 1) {
        assert.equal(detail.turns[0].speaker, "agent");
        assert.equal(detail.turns[0].cut, false);
      }
      const [caller, agent] = detail.turns.slice(g);
      assert.equal(caller.speaker, "caller");
      assert.equal(caller.index, g);
      assert.equal(caller.text, clip.text);
      assert.ok(caller.endedAt >= caller.startedAt);
      assert.equal(agent.speaker, "agent");
      assert.equal(agent.index, g + 1);
      assert.equal(agent.text, ANSWER);
      assert.equal(agent.cut, false);
      assert.equal(agent.generated, null);
      assert.ok(agent.startedAt >= caller.startedAt);
      const timings = agent.timings;
      assert.ok(timings !== null);
      assert.ok(timings.e2e_latency !== null && timings.e2e_latency > 0);
      assert.ok(timings.llm_ttft !== null && timings.tts_ttfb !== null);
      // One measured turn: its value is the call's p50 (stored to the microsecond).
      const p50 = detail.call.latency.e2e_latency.p50;
      assert.ok(p50 !== null && Math.abs(p50 - timings.e2e_latency) < 0.001, `${p50}`);
    });

    await t.step("events hold the echoed marks and the DTMF digit", () => {
      const marks = detail.events.filter((e) => e.kind === "mark").map((e) => e.detail);
      assert.deepEqual(marks, ["greeting_end", "a1_0"]);
      assert.deepEqual(
        detail.events.filter((e) => e.kind === "dtmf").map((e) => e.detail),
        ["5"],
      );
      const times = detail.events.map((e) => e.at);
      assert.deepEqual(times, [...times].sort((a, b) => a - b), "events are in time order");
    });

    await t.step("kav call prints the transcript with timings", async () => {
      const text = await runKavCli(kav.configPath, ["call", sid]);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, new RegExp(`^Call ${sid} \\(stream ${client!.streamSid}`));
      assert.ok(text.stdout.includes(`From ${FROM} to ${TO}`), text.stdout);
      assert.ok(text.stdout.includes(JSON.stringify(clip.text)), text.stdout);
      assert.ok(text.stdout.includes(JSON.stringify(ANSWER)), text.stdout);
      assert.match(text.stdout, /outcome completed: stop/);
      assert.ok(text.stdout.includes(`Transcript (${g + 2} turns)`), text.stdout);
      assert.match(text.stdout, /ms: .*e2e=\d/);
      assert.match(text.stdout, /dtmf {2}5/);
    });

    await t.step("kav calls lists the call, as a table and as JSON", async () => {
      const table = await runKavCli(kav.configPath, ["calls"]);
      assert.equal(table.code, 0, table.stderr);
      const row = table.stdout.split("\n").find((l) => l.includes(sid));
      assert.ok(row, table.stdout);
      assert.match(
        row,
        new RegExp(`${sid}\\s+\\${FROM}\\s+\\d+\\.\\ds\\s+${g + 2}\\s+completed\\s+\\d`),
      );
      const json = await runKavCli(kav.configPath, ["calls", "--json"]);
      assert.equal(json.code, 0, json.stderr);
      const calls = (JSON.parse(json.stdout) as { calls: CallRow[] }).calls;
      assert.deepEqual(calls.map((c) => c.callSid), [sid]);
      assert.deepEqual(calls[0], detail.call);
    });

    await t.step("kav call --redact hides numbers, parameters and text", async () => {
      for (const args of [["call", sid, "--redact"], ["call", sid, "--redact", "--json"]]) {
        const out = await runKavCli(kav.configPath, args);
        assert.equal(out.code, 0, out.stderr);
        for (const secret of [FROM, TO, "spring", clip.text, ANSWER, GREETING, "dtmf  5"]) {
          assert.ok(!out.stdout.includes(secret), `${args.join(" ")} shows ${secret}`);
        }
        assert.doesNotMatch(out.stdout, /[\u0590-\u05ff]/);
        assert.ok(out.stdout.includes(sid));
      }
      const calls = await runKavCli(kav.configPath, ["calls", "--redact"]);
      assert.equal(calls.code, 0, calls.stderr);
      assert.ok(!calls.stdout.includes(FROM) && calls.stdout.includes(sid), calls.stdout);
    });
  } finally {
    await client?.close();
    await kav.close();
    await servers.close();
  }
});
