/**
 * The CRM outbox shared by a fleet on one PostgreSQL: every summary is delivered once, by one node,
 * retried with backoff, including when the node sending it is SIGKILLed mid-request (its lease
 * expires and another node sends it). This file is also that node: `deno run pg_crm_test.ts
 * pg-crm-child <url> <crm url> <journal dir>` ends one call, then waits to be killed.
 */
import assert from "node:assert/strict";
import { createLogger } from "../src/observe/log.ts";
import { openPostgresStore, type OpenPostgresStoreOptions } from "../src/store/postgres.ts";
import type { CallStore } from "../src/store/types.ts";
import { type CrmAttempt, startCrmServer } from "../tools/sandbox/crm_server.ts";
import { PG_PASSWORD, POSTGRES_UNAVAILABLE, startPostgres } from "../tools/sandbox/postgres.ts";

const CHILD_ARG = "pg-crm-child";
const T0 = Date.UTC(2025, 0, 15, 10, 0, 0);
const ignore = POSTGRES_UNAVAILABLE !== null;
/** Short lease and poll so a dead node's row moves on within the test. */
const LEASE_MS = 1500;

function endCall(store: CallStore, callSid: string): void {
  store.callStarted({
    callSid,
    streamSid: `MZ${callSid}`,
    accountSid: "AC1",
    from: "+972501111111",
    to: "+97231111111",
    customParameters: {},
    startedAt: T0,
  });
  store.turnCompleted(callSid, {
    index: 0,
    speaker: "caller",
    text: "שלום",
    generated: null,
    cut: false,
    startedAt: T0 + 1000,
    endedAt: T0 + 2000,
    timings: null,
  });
  store.callEnded(callSid, {
    endedAt: T0 + 5000,
    outcome: "completed",
    reason: "stop received",
    counters: {
      rx_frames: 250,
      rx_drops: 0,
      tx_frames: 200,
      tx_drops: 0,
      tx_late: 0,
      malformed: 0,
    },
  });
}

function nodeOptions(
  url: string,
  crmUrl: string,
  nodeId: string,
  journalDir: string,
  timeoutMs: number,
): OpenPostgresStoreOptions {
  return {
    url,
    password: PG_PASSWORD,
    nodeId,
    journalDir,
    log: createLogger(() => {}),
    retentionDays: 0,
    crm: { url: crmUrl, secret: "s3cret" },
    crmDelivery: {
      backoff: { baseMs: 50, capMs: 200 },
      timeoutMs,
      leaseMs: LEASE_MS,
      pollMs: 100,
    },
  };
}

async function child(url: string, crmUrl: string, journalDir: string): Promise<void> {
  // A long request timeout: the request hangs until this node is killed.
  const store = await openPostgresStore(nodeOptions(url, crmUrl, "kav-c", journalDir, 60_000));
  endCall(store, "CA_KILLED_NODE");
  await store.flush();
  await Deno.stdout.write(new TextEncoder().encode("flushed\n"));
  await new Promise(() => {});
}

if (Deno.args[0] === CHILD_ARG) await child(Deno.args[1], Deno.args[2], Deno.args[3]);

/** 2xx answers per delivery id: exactly one each means each summary was delivered once. */
function okCounts(attempts: readonly CrmAttempt[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const a of attempts) {
    if (a.status === 200 && a.deliveryId !== null) {
      counts.set(a.deliveryId, (counts.get(a.deliveryId) ?? 0) + 1);
    }
  }
  return counts;
}

function callSidOf(attempt: CrmAttempt): string {
  return (JSON.parse(attempt.body) as { call: { call_sid: string } }).call.call_sid;
}

Deno.test({
  name: "two nodes draining one outbox deliver each summary exactly once, retrying failures",
  ignore,
  async fn() {
    const pg = await startPostgres();
    const crm = await startCrmServer({ failFirst: 4 });
    const dir = await Deno.makeTempDir({ prefix: "kav_pg_crm_" });
    const url = await pg.createDatabase("crm");
    const a = await openPostgresStore(nodeOptions(url, crm.url, "kav-a", `${dir}/a`, 2000));
    const b = await openPostgresStore(nodeOptions(url, crm.url, "kav-b", `${dir}/b`, 2000));
    try {
      const sids: string[] = [];
      for (let i = 0; i < 12; i++) {
        const sid = `CA_${i}`;
        sids.push(sid);
        endCall(i % 2 === 0 ? a : b, sid);
      }
      await Promise.all([a.flush(), b.flush()]);
      await crm.waitFor(() => crm.accepted().length === sids.length, 20_000);
      // Past a lease and a few polls: nothing is sent again.
      await new Promise((resolve) => setTimeout(resolve, LEASE_MS + 500));
      const counts = okCounts(crm.attempts);
      assert.equal(counts.size, sids.length);
      assert.ok([...counts.values()].every((n) => n === 1), JSON.stringify([...counts]));
      assert.deepEqual(crm.accepted().map(callSidOf).sort(), [...sids].sort());
      assert.equal(crm.attempts.filter((x) => x.status === 503).length, 4, "failures retried");
      const admin = pg.admin("crm");
      const rows = await admin`SELECT delivered_by, lease_owner FROM crm_outbox
        WHERE delivered_at IS NOT NULL`;
      assert.equal(rows.length, sids.length);
      assert.ok(
        rows.every((r) => ["kav-a", "kav-b"].includes(r.delivered_by) && r.lease_owner === null),
      );
      assert.equal(a.crmPending() + b.crmPending(), 0);
    } finally {
      await a.close();
      await b.close();
      await crm.close();
      await pg.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a node SIGKILLed mid-delivery: another node sends the summary after the lease, once",
  ignore,
  async fn() {
    const pg = await startPostgres();
    // The first request (the doomed node's) hangs until the server closes.
    const crm = await startCrmServer({ hangFirst: 1 });
    const dir = await Deno.makeTempDir({ prefix: "kav_pg_crm_kill_" });
    const url = await pg.createDatabase("crmkill");
    const process = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        new URL(import.meta.url).pathname,
        CHILD_ARG,
        url,
        crm.url,
        `${dir}/c`,
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    let killed = false;
    let b: Awaited<ReturnType<typeof openPostgresStore>> | null = null;
    try {
      const reader = process.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let seen = "";
      while (!seen.includes("flushed\n")) {
        const { value, done } = await reader.read();
        assert.ok(!done, `child exited before flushing: ${seen}`);
        seen += value;
      }
      await crm.waitFor(() => crm.attempts.length === 1, 15_000);
      assert.equal(crm.attempts[0].status, 0, "the request is in flight");
      process.kill("SIGKILL");
      killed = true;
      await reader.cancel();
      assert.equal((await process.status).signal, "SIGKILL");
      const leasedAt = performance.now();
      b = await openPostgresStore(nodeOptions(url, crm.url, "kav-b", `${dir}/b`, 2000));
      endCall(b, "CA_LIVE_NODE");
      await b.flush();
      await crm.waitFor(() => crm.accepted().length === 2, 15_000);
      await new Promise((resolve) => setTimeout(resolve, 500));
      const killedSummary = crm.accepted().find((x) => callSidOf(x) === "CA_KILLED_NODE");
      assert.ok(killedSummary, "the dead node's summary was delivered");
      assert.equal(killedSummary.deliveryId, crm.attempts[0].deliveryId, "same delivery id");
      assert.ok(
        killedSummary.at - crm.attempts[0].at >= LEASE_MS - 100,
        "not before the lease ran out",
      );
      assert.ok(performance.now() - leasedAt < 10_000);
      const counts = okCounts(crm.attempts);
      assert.deepEqual([...counts.values()], [1, 1]);
      const [row] = await pg.admin("crmkill")`SELECT delivered_by, node_id FROM crm_outbox
        WHERE call_sid = 'CA_KILLED_NODE'`;
      assert.deepEqual({ ...row }, { delivered_by: "kav-b", node_id: "kav-c" });
    } finally {
      if (!killed) {
        try {
          process.kill("SIGKILL");
        } catch {
          // Gone.
        }
        await process.status;
      }
      await b?.close();
      await crm.close();
      await pg.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
