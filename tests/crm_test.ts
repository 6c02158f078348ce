import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { createLogger, type Logger } from "../src/observe/log.ts";
import { openCallStore, type OpenCallStoreOptions } from "../src/store/sqlite.ts";
import { openCallReader } from "../src/store/read.ts";
import { CRM_DEFAULTS, crmRetryDelayMs } from "../src/store/crm_outbox.ts";
import type { CrmSummary } from "../src/store/crm_summary.ts";
import type { CallStore } from "../src/store/types.ts";
import { startCrmServer } from "../tools/sandbox/crm_server.ts";
import { recordAgentActs } from "./support/agent_acts_records.ts";

const SECRET = "s3cret-key";
const T0 = Date.UTC(2025, 0, 15, 10, 0, 0);

function collectingLogger(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  return { log: createLogger((line) => lines.push(line)), lines };
}

/** HMAC-SHA256 via WebCrypto, independent of the node:crypto code under test. */
async function hmacHex(secret: string, body: string): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(body));
  return [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function simulateCall(store: CallStore, callSid: string, end = true): void {
  store.callStarted({
    callSid,
    streamSid: "MZ1",
    accountSid: "AC1",
    from: "+972501111111",
    to: "+97231111111",
    customParameters: { Lead: "7" },
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
  store.turnCompleted(callSid, {
    index: 1,
    speaker: "agent",
    text: "היי",
    generated: "היי, במה אפשר לעזור?",
    cut: true,
    startedAt: T0 + 2600,
    endedAt: T0 + 3000,
    timings: {
      end_of_turn_delay: 320,
      stt_final_delay: 140,
      llm_ttft: 210,
      tts_ttfb: 95,
      e2e_latency: 610,
      server_latency: 3,
    },
  });
  if (!end) return;
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

async function withDir(run: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "kav_crm_" });
  try {
    await run(`${dir}/kav.db`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function options(path: string, url: string, log: Logger, secret: string | null = SECRET) {
  return {
    path,
    log,
    retentionDays: 0,
    crm: { url, secret },
    crmDelivery: { backoff: { baseMs: 150, capMs: 300 }, random: () => 0.5, timeoutMs: 2000 },
  } satisfies OpenCallStoreOptions;
}

Deno.test("CRM delivery fails 3 times across a restart, then lands exactly once, signed", async () => {
  const crm = await startCrmServer({ failFirst: 3 });
  const { log, lines } = collectingLogger();
  try {
    await withDir(async (path) => {
      const first = await openCallStore(options(path, crm.url, log));
      simulateCall(first, "CA_CRM");
      // The call's record lands while the CRM is down: delivery never blocks it.
      await first.flush();
      assert.equal(first.getCall("CA_CRM")?.call.outcome, "completed");
      await crm.waitFor(() => crm.attempts.length >= 2);
      await first.close();
      // Closed after two failures: the third failure and the success both happen after restart.
      assert.equal(crm.attempts.length, 2, "no third attempt before the restart");

      const second = await openCallStore(options(path, crm.url, log));
      try {
        await crm.waitFor(() => crm.accepted().length === 1);
        // Several backoff periods more: nothing else may arrive.
        await new Promise((resolve) => setTimeout(resolve, 700));
        assert.deepEqual(crm.attempts.map((a) => a.status), [503, 503, 503, 200]);
        assert.equal(crm.accepted().length, 1);
        const ids = new Set(crm.attempts.map((a) => a.deliveryId));
        assert.equal(ids.size, 1, "every attempt carries the same delivery id");
        const delivered = crm.accepted()[0];
        assert.equal(delivered.signature, `sha256=${await hmacHex(SECRET, delivered.body)}`);
        assert.equal(delivered.contentType, "application/json");
        const summary = JSON.parse(delivered.body) as CrmSummary;
        assert.equal(summary.delivery_id, delivered.deliveryId);
        assert.equal(summary.call.call_sid, "CA_CRM");
        assert.equal(summary.call.outcome, "completed");
        assert.equal(summary.call.duration_ms, 5000);
        assert.equal(summary.call.started_at, "2025-01-15T10:00:00.000Z");
        assert.deepEqual(summary.transcript.map((t) => [t.speaker, t.text, t.cut]), [
          ["caller", "שלום", false],
          ["agent", "היי", true],
        ]);
        assert.equal(summary.transcript[1].generated, "היי, במה אפשר לעזור?");
        assert.deepEqual(summary.latency.e2e_latency, { p50: 610, p90: 610 });
        assert.equal(second.crmPending(), 0);
      } finally {
        await second.close();
      }
      const reader = openCallReader(path);
      try {
        const [row] = reader.query("SELECT attempts, delivered_at, last_status FROM crm_outbox");
        assert.equal(row.last_status, 200);
        assert.equal(typeof row.delivered_at, "number");
      } finally {
        reader.close();
      }
      assert.equal(lines.filter((l) => l.includes("[CRM] summary delivered")).length, 1);
      assert.ok(lines.some((l) => l.includes("[CRM] delivery failed call=CA_CRM")));
      assert.ok(!lines.some((l) => l.includes(SECRET)), "the secret is never logged");
    });
  } finally {
    await crm.close();
  }
});

Deno.test("an unreachable CRM is retried with backoff and its URL is not logged", async () => {
  const gone = await startCrmServer();
  const url = gone.url;
  await gone.close();
  const { log, lines } = collectingLogger();
  await withDir(async (path) => {
    const store = await openCallStore({
      ...options(path, url, log),
      crmDelivery: { backoff: { baseMs: 20, capMs: 40 }, random: () => 0 },
    });
    try {
      simulateCall(store, "CA_DOWN");
      await store.flush();
      const reader = openCallReader(path);
      try {
        const deadline = Date.now() + 10_000;
        let attempts = 0;
        while (attempts < 3) {
          assert.ok(Date.now() < deadline, "three attempts within 10 s");
          await new Promise((resolve) => setTimeout(resolve, 20));
          attempts = Number(reader.query("SELECT attempts FROM crm_outbox")[0]?.attempts ?? 0);
        }
        const [row] = reader.query("SELECT delivered_at, last_error FROM crm_outbox");
        assert.equal(row.delivered_at, null);
        assert.match(String(row.last_error), /<crm\.url>|Connection refused|connect/i);
      } finally {
        reader.close();
      }
      assert.equal(store.crmPending(), 1);
      const failures = lines.filter((l) => l.includes("[CRM] delivery failed call=CA_DOWN"));
      assert.ok(failures.length >= 3);
      assert.ok(!failures.some((l) => l.includes(new URL(url).host)), failures.join("\n"));
    } finally {
      await store.close();
    }
  });
});

Deno.test("a CRM attempt that outlives its timeout is aborted and retried", async () => {
  const crm = await startCrmServer({ hangFirst: 1 });
  const { log, lines } = collectingLogger();
  try {
    await withDir(async (path) => {
      const store = await openCallStore({
        ...options(path, crm.url, log),
        crmDelivery: { backoff: { baseMs: 20, capMs: 40 }, timeoutMs: 200 },
      });
      try {
        simulateCall(store, "CA_SLOW");
        await crm.waitFor(() => crm.accepted().length === 1);
        assert.deepEqual(crm.attempts.map((a) => a.status), [0, 200]);
        assert.ok(lines.some((l) => /\[CRM\] delivery failed .*Timed out after 200 ms/.test(l)));
      } finally {
        await store.close();
      }
    });
  } finally {
    await crm.close();
  }
});

Deno.test("an interrupted call is summarized to the CRM at the next open, unsigned without a secret", async () => {
  const crm = await startCrmServer({ failFirst: 1, failStatus: 400 });
  const { log } = collectingLogger();
  try {
    await withDir(async (path) => {
      const first = await openCallStore(options(path, crm.url, log, null));
      simulateCall(first, "CA_OPEN", false);
      await first.close();
      assert.equal(crm.attempts.length, 0, "an open call sends nothing");
      const second = await openCallStore(options(path, crm.url, log, null));
      try {
        await crm.waitFor(() => crm.accepted().length === 1);
        assert.deepEqual(crm.attempts.map((a) => a.status), [400, 200], "a 4xx is retried too");
        const [delivered] = crm.accepted();
        assert.equal(delivered.signature, null);
        const summary = JSON.parse(delivered.body) as CrmSummary;
        assert.equal(summary.call.outcome, "interrupted");
        assert.equal(summary.call.counters, null);
        assert.equal(summary.transcript.length, 2);
      } finally {
        await second.close();
      }
    });
  } finally {
    await crm.close();
  }
});

Deno.test("a 2xx whose outbox update fails is re-sent with the same delivery id and accepted once", async () => {
  await withDir(async (path) => {
    let other: DatabaseSync | null = null;
    // The first answer goes out while another connection holds the write lock.
    const crm = await startCrmServer({
      onRequest(n) {
        if (n !== 1) return;
        other = new DatabaseSync(path);
        other.exec("BEGIN IMMEDIATE");
      },
    });
    const { log, lines } = collectingLogger();
    const store = await openCallStore({
      ...options(path, crm.url, log),
      tuning: { busyTimeoutMs: 0 },
      crmDelivery: { backoff: { baseMs: 50, capMs: 100 } },
    });
    try {
      simulateCall(store, "CA_AGAIN");
      await store.flush();
      await crm.waitFor(() => lines.some((l) => l.includes("[CRM] outbox update failed")));
      const held = other as DatabaseSync | null;
      assert.ok(held);
      held.exec("COMMIT");
      held.close();
      await crm.waitFor(() => crm.attempts.length === 2 && store.crmPending() === 0);
      assert.deepEqual(crm.attempts.map((a) => a.status), [200, 200]);
      assert.equal(crm.attempts[0].deliveryId, crm.attempts[1].deliveryId);
      assert.equal(crm.attempts[0].body, crm.attempts[1].body, "the body is re-sent byte for byte");
      assert.equal(crm.accepted().length, 1);
    } finally {
      await store.close();
      await crm.close();
    }
  });
});

Deno.test("no outbox rows are written when the CRM url is null", async () => {
  await withDir(async (path) => {
    const store = await openCallStore({
      path,
      log: collectingLogger().log,
      retentionDays: 0,
      crm: { url: null, secret: SECRET },
    });
    simulateCall(store, "CA_NOCRM");
    await store.close();
    const reader = openCallReader(path);
    try {
      assert.equal(reader.query("SELECT count(*) AS n FROM crm_outbox")[0].n, 0);
      assert.equal(reader.getCall("CA_NOCRM")?.call.outcome, "completed");
    } finally {
      reader.close();
    }
  });
});

Deno.test("crmRetryDelayMs() doubles from the base, caps, and jitters by ±25 %", () => {
  assert.deepEqual(CRM_DEFAULTS.backoff, { baseMs: 1000, capMs: 300_000 });
  const backoff = CRM_DEFAULTS.backoff;
  const mid = () => 0.5;
  assert.deepEqual([1, 2, 3, 4].map((n) => crmRetryDelayMs(n, backoff, mid)), [
    1000,
    2000,
    4000,
    8000,
  ]);
  assert.equal(crmRetryDelayMs(30, backoff, mid), 300_000);
  assert.equal(crmRetryDelayMs(1, backoff, () => 0), 750);
  assert.equal(crmRetryDelayMs(1, backoff, () => 0.999999), 1250);
});

Deno.test("CRM summaries carry tool calls, transfers and keypad input; the dial outcome sends the summary again", async () => {
  const crm = await startCrmServer();
  const { log } = collectingLogger();
  try {
    await withDir(async (path) => {
      const store = await openCallStore(options(path, crm.url, log));
      try {
        recordAgentActs(store, "CA_ACTS", Date.UTC(2025, 0, 15, 10), "dialled");
        await crm.waitFor(() => crm.accepted().length === 2);
        // Two rows due at the same moment may be delivered in either order: `revision` says which.
        const [first, second] = crm.accepted().map((a) => JSON.parse(a.body))
          .sort((a, b) => a.revision - b.revision);
        assert.deepEqual([first.revision, second.revision], [1, 2]);
        assert.equal(first.call.outcome, "transferred");
        assert.deepEqual(first.transfers.map((t: { dial_status: unknown }) => t.dial_status), [
          null,
        ]);
        assert.deepEqual(second.transfers, [{
          at: "2025-01-15T10:00:06.300Z",
          department: "sales",
          target: "+97231234500",
          dial_status: "no-answer",
          dial_duration_s: null,
        }]);
        assert.deepEqual(second.tool_calls, [
          {
            at: "2025-01-15T10:00:01.600Z",
            name: "lookup_customer",
            arguments: '{"id":"1234"}',
            result: { name: "דנה" },
            error: null,
            ms: 41.3,
          },
          {
            at: "2025-01-15T10:00:01.600Z",
            name: "open_ticket",
            arguments: "{}",
            result: null,
            error: "timed out after 4000 ms",
            ms: 4000,
          },
        ]);
        assert.deepEqual(
          second.transcript.map((t: { input: string }) => t.input),
          ["keypad", "speech"],
        );
        assert.notEqual(first.delivery_id, second.delivery_id);
      } finally {
        await store.close();
      }
    });
  } finally {
    await crm.close();
  }
});
