/**
 * Issue 18 end to end: real Kav processes (`main.ts`, the start task's flags) on one real
 * PostgreSQL. Two nodes: a call on each is visible from the other's `kav calls`; a node SIGKILLed
 * mid-call leaves its completed turns, and closes the call as `interrupted` when it comes back.
 * PostgreSQL stopped for 30 s while 20 calls talk: every call completes, /healthz stays ok, and
 * once it is back every turn of every call is stored exactly once.
 */
import assert from "node:assert/strict";
import type { CallDetail, CallRow } from "../src/store/read.ts";
import { fixtureClip, runKavCli, sayAndWait, startKavProcess } from "./support/kav_process.ts";
import { PG_PASSWORD, POSTGRES_UNAVAILABLE, startPostgres } from "../tools/sandbox/postgres.ts";
import { startProviderServers } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT_MS = 60_000;
const ENV = { PGPASSWORD: PG_PASSWORD };
/** One sentence, so each answer is one mark: `a<n>_0`. */
const ANSWER = "בסדר, רשמתי את זה.";
const ignore = POSTGRES_UNAVAILABLE !== null;

function fleetToml(url: string, node: string, extra = ""): string {
  return `[server]\nnode_id = "${node}"\n[storage]\nurl = "${url}"\n${extra}`;
}

async function until(what: string, predicate: () => Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** The caller says `clip`, then waits (streaming silence) for the echo of answer `n`. */
function exchange(client: TwilioClient, n: number, clip: string): Promise<void> {
  return sayAndWait(
    client,
    fixtureClip(clip).audio,
    client.waitForEcho(`a${n}_0`, { timeoutMs: TIMEOUT_MS }),
  );
}

Deno.test({
  name:
    "two Kav nodes on one PostgreSQL: each sees the other's calls; a SIGKILLed node's turns stay",
  ignore,
  async fn() {
    const pg = await startPostgres();
    const servers = await startProviderServers({ llm: { reply: () => ANSWER } });
    const url = await pg.createDatabase("fleet");
    const admin = pg.admin("fleet");
    const bDir = await Deno.makeTempDir({ prefix: "kav-fleet-b-" });
    const a = await startKavProcess({ servers, extra: fleetToml(url, "kav-a"), env: ENV });
    const b = await startKavProcess({
      servers,
      extra: fleetToml(url, "kav-b"),
      env: ENV,
      dir: bDir,
    });
    let restarted: Awaited<ReturnType<typeof startKavProcess>> | null = null;
    const clients: TwilioClient[] = [];
    try {
      // A call that ends on node A.
      const onA = await TwilioClient.connect({ url: a.mediaUrl });
      clients.push(onA);
      onA.begin();
      await onA.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
      await exchange(onA, 1, "appointment");
      onA.sendStop();
      await until("A's call completed", async () => {
        const [row] = await admin`SELECT outcome FROM calls WHERE call_sid = ${onA.callSid}`;
        return row?.outcome === "completed";
      }, TIMEOUT_MS);

      // A call on node B, killed after two completed exchanges.
      const onB = await TwilioClient.connect({ url: b.mediaUrl });
      clients.push(onB);
      onB.begin();
      await onB.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
      await exchange(onB, 1, "appointment");
      await exchange(onB, 2, "tomorrow");
      await until("B's second answer stored", async () => {
        const rows = await admin`SELECT text FROM turns WHERE call_sid = ${onB.callSid}
          AND speaker = 'agent' AND text = ${ANSWER}`;
        return rows.length === 2;
      }, TIMEOUT_MS);
      b.kill("SIGKILL");
      assert.equal((await b.status).signal, "SIGKILL");
      await onB.closed;

      // Each node's CLI reads the whole fleet (B's too, while B is down).
      const listed = await runKavCli(b.configPath, ["calls", "--json"], ENV);
      assert.equal(listed.code, 0, listed.stderr);
      const calls = (JSON.parse(listed.stdout) as { calls: CallRow[] }).calls;
      assert.deepEqual(
        calls.map((c) => [c.callSid, c.node, c.outcome]),
        [[onA.callSid, "kav-a", "completed"], [onB.callSid, "kav-b", null]],
      );
      const fromA = await runKavCli(a.configPath, ["call", onB.callSid, "--json"], ENV);
      assert.equal(fromA.code, 0, fromA.stderr);
      const killed = JSON.parse(fromA.stdout) as CallDetail;
      const caller = [fixtureClip("appointment").text, fixtureClip("tomorrow").text];
      // The greeting, when recorded, is turn 0; then both completed exchanges.
      assert.ok([4, 5].includes(killed.turns.length), JSON.stringify(killed.turns));
      assert.deepEqual(
        killed.turns.slice(-4).map((t) => [t.speaker, t.text]),
        [["caller", caller[0]], ["agent", ANSWER], ["caller", caller[1]], ["agent", ANSWER]],
      );
      const table = await runKavCli(a.configPath, ["calls"], ENV);
      assert.match(table.stdout, new RegExp(onB.callSid));

      // Node A never closes node B's call; B does when it comes back.
      restarted = await startKavProcess({
        servers,
        extra: fleetToml(url, "kav-b"),
        env: ENV,
        dir: bDir,
      });
      await restarted.waitForLine(
        new RegExp(`\\[STORE\\] call closed as interrupted call=${onB.callSid}`),
        { timeoutMs: TIMEOUT_MS },
      );
      assert.ok(!a.lines.some((l) => l.includes("closed as interrupted")), a.log());
      const after = await runKavCli(a.configPath, ["call", onB.callSid, "--json"], ENV);
      const closed = JSON.parse(after.stdout) as CallDetail;
      assert.equal(closed.call.outcome, "interrupted");
      assert.deepEqual(closed.turns, killed.turns);
      for (const node of [a, restarted]) {
        node.kill("SIGTERM");
        assert.equal((await node.status).code, 0, node.log());
      }
    } finally {
      await Promise.allSettled(clients.map((c) => c.close()));
      await a.close();
      await b.close();
      await restarted?.close();
      await servers.close();
      await pg.close();
      await Deno.remove(bDir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "PostgreSQL stopped for 30 s while 20 calls talk: every call completes, every turn stored once",
  ignore,
  async fn() {
    const CALLS = 20;
    const OUTAGE_MS = 30_000;
    const pg = await startPostgres();
    const servers = await startProviderServers({ llm: { reply: () => ANSWER } });
    const url = await pg.createDatabase("outage");
    const kav = await startKavProcess({
      servers,
      extra: fleetToml(url, "kav-a", "[server]\nmax_calls = 100\n"),
      env: ENV,
    });
    const clients: TwilioClient[] = [];
    try {
      for (let i = 0; i < CALLS; i++) {
        const client = await TwilioClient.connect({ url: kav.mediaUrl });
        clients.push(client);
        client.begin();
      }
      await Promise.all(
        clients.map(async (c) => {
          await c.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
          await exchange(c, 1, "appointment");
        }),
      );
      await pg.stop();
      const stoppedAt = Date.now();
      // Two exchanges each while the database is down, then silence until 30 s have passed.
      await Promise.all(clients.map(async (c) => {
        await exchange(c, 2, "hours");
        await exchange(c, 3, "tomorrow");
        const left = OUTAGE_MS - (Date.now() - stoppedAt);
        if (left > 0) await c.streamSilence(left);
      }));
      const health = await fetch(`${kav.baseUrl}/healthz`);
      assert.equal(health.status, 200, "healthz stays ok");
      await health.body?.cancel();
      const metrics = await (await fetch(`${kav.baseUrl}/metrics`)).text();
      assert.match(metrics, /^kav_store_behind 1$/m);
      assert.match(metrics, /^kav_store_journal_records [1-9]\d*$/m);
      await kav.waitForLine(/\[STORE\] store behind: records wait/, { timeoutMs: 1000 });
      await pg.start();
      await Promise.all(clients.map(async (c) => {
        await exchange(c, 4, "appointment");
        c.sendStop();
        await c.closed;
      }));
      await kav.waitForLine(/\[STORE\] store caught up/, { timeoutMs: TIMEOUT_MS });

      const admin = pg.admin("outage");
      await until("every call ended in the database", async () => {
        const [{ n }] =
          await admin`SELECT count(*)::int AS n FROM calls WHERE ended_at IS NOT NULL`;
        return n === CALLS;
      }, TIMEOUT_MS);
      const greeting =
        (await admin`SELECT text FROM turns WHERE idx = 0 AND speaker = 'agent' LIMIT 1`)
          .length > 0;
      for (const c of clients) {
        const sid = c.callSid;
        const [call] = await admin`SELECT outcome FROM calls WHERE call_sid = ${sid}`;
        assert.equal(call?.outcome, "completed", sid);
        const turns = await admin`SELECT idx, speaker, text FROM turns WHERE call_sid = ${sid}
          ORDER BY idx`;
        const g = greeting ? 1 : 0;
        assert.deepEqual(
          turns.slice(g).map((t) => [t.idx, t.speaker, t.speaker === "agent" ? t.text : "·"]),
          [1, 2, 3, 4].flatMap((n) => [
            [g + 2 * (n - 1), "caller", "·"],
            [g + 2 * (n - 1) + 1, "agent", ANSWER],
          ]),
          sid,
        );
        const marks = await admin`SELECT detail FROM events WHERE call_sid = ${sid}
          AND kind = 'mark' ORDER BY at, id`;
        assert.deepEqual(
          marks.map((m) => m.detail),
          ["greeting_end", "a1_0", "a2_0", "a3_0", "a4_0"],
          `${sid}: each mark once, in order`,
        );
      }
      assert.ok(
        !kav.lines.some((l) => /write rejected|already recorded|unknown or ended|lost/.test(l)),
        kav.log(),
      );
      kav.kill("SIGTERM");
      assert.equal((await kav.status).code, 0, kav.log());
    } finally {
      await Promise.allSettled(clients.map((c) => c.close()));
      await kav.close();
      await servers.close();
      await pg.close();
    }
  },
});
