/**
 * Issue 6, end to end: the real Kav process's `/metrics` parses as Prometheus text (the strict
 * parser in src/observe/prom_parse.ts) at every scrape, and its counters move as a simulated call
 * runs and a status callback arrives.
 */
import assert from "node:assert/strict";
import { parsePrometheusText, type PromFamily, sampleValue } from "../src/observe/prom_parse.ts";
import { fixtureClip, sayAndWait, startKavProcess } from "./support/kav_process.ts";
import { startProviderServers } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT_MS = 30_000;

async function scrape(baseUrl: string): Promise<Map<string, PromFamily>> {
  const response = await fetch(`${baseUrl}/metrics`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return parsePrometheusText(await response.text());
}

type Reading = ReturnType<typeof read>;

/** Scrapes until `done` holds (Kav handles what the client sent a moment later); every scrape parses. */
async function scrapeUntil(
  baseUrl: string,
  what: string,
  done: (r: Reading) => boolean,
): Promise<Reading> {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    const reading = read(await scrape(baseUrl));
    if (done(reading)) return reading;
    if (Date.now() > deadline) {
      throw new Error(`Timed out waiting for ${what}: ${JSON.stringify(reading)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function read(families: Map<string, PromFamily>) {
  const v = (name: string, labels: Record<string, string> = {}) =>
    sampleValue(families, name, labels) ?? 0;
  return {
    active: v("kav_active_calls"),
    completed: v("kav_calls_total", { outcome: "completed" }),
    rx: v("kav_rx_frames_total"),
    tx: v("kav_tx_frames_total"),
    e2e: v("kav_e2e_latency_seconds_count"),
    e2eSum: v("kav_e2e_latency_seconds_sum"),
    webhooks: v("kav_webhook_duration_seconds_count"),
  };
}

Deno.test("/metrics of a running Kav parses and moves as a simulated call runs", async () => {
  const clip = fixtureClip("hours");
  const servers = await startProviderServers();
  const kav = await startKavProcess({ servers });
  let client: TwilioClient | null = null;
  try {
    servers.llm.script("הפתיחה בשמונה בבוקר.");
    const idle = read(await scrape(kav.baseUrl));
    const families = await scrape(kav.baseUrl);
    for (const [name, type] of [["kav_calls_total", "counter"], ["kav_active_calls", "gauge"]]) {
      assert.equal(families.get(name)?.type, type, `${name} is a ${type}`);
    }
    assert.equal(families.get("kav_e2e_latency_seconds")?.type, "histogram");
    assert.equal(idle.active, 0);

    client = await TwilioClient.connect({ url: kav.mediaUrl });
    client.begin();
    await client.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
    const greeted = read(await scrape(kav.baseUrl));
    assert.equal(greeted.active, 1, "one active call");
    assert.ok(greeted.tx >= idle.tx + client.mediaFrames, `tx ${idle.tx} → ${greeted.tx}`);

    await sayAndWait(client, clip.audio, client.waitForEcho("a1_0", { timeoutMs: TIMEOUT_MS }));
    // The agent turn completes (and its e2e latency is observed) when Kav gets the echo.
    const answered = await scrapeUntil(kav.baseUrl, "the e2e latency", (r) => r.e2e > idle.e2e);
    assert.ok(
      answered.rx >= greeted.rx + Math.floor(clip.audio.length / 160),
      `rx ${greeted.rx} → ${answered.rx}`,
    );
    assert.ok(answered.tx > greeted.tx, `tx ${greeted.tx} → ${answered.tx}`);
    assert.equal(answered.e2e, idle.e2e + 1, "one e2e latency observed");
    assert.ok(answered.e2eSum > idle.e2eSum);
    assert.equal(answered.completed, idle.completed);

    const callback = await fetch(`${kav.baseUrl}/webhook/stream_status`, {
      method: "POST",
      body: new URLSearchParams({
        AccountSid: client.accountSid,
        CallSid: client.callSid,
        StreamSid: client.streamSid,
        StreamEvent: "stream-started",
        Timestamp: new Date().toISOString(),
      }),
    });
    assert.equal(callback.status, 204);
    await callback.body?.cancel();

    client.sendStop();
    await client.closed;
    await kav.waitForLine(new RegExp(`call=${client.callSid} ended outcome=completed`), {
      timeoutMs: TIMEOUT_MS,
    });
    // The webhook is timed when its response is done, a moment after the client has it.
    const ended = await scrapeUntil(
      kav.baseUrl,
      "the webhook timing",
      (r) => r.webhooks > idle.webhooks,
    );
    assert.equal(ended.active, 0);
    assert.equal(ended.completed, idle.completed + 1);
    assert.equal(ended.webhooks, idle.webhooks + 1, "the status callback was timed");
    kav.kill("SIGTERM");
    assert.equal((await kav.status).code, 0, kav.log());
  } finally {
    await client?.close();
    await kav.close();
    await servers.close();
  }
});
