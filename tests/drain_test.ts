/**
 * Issue 4, end to end with the real Kav process: SIGTERM drains (healthz 503, new calls refused or
 * answered busy, the active call runs to its end, exit 0), a call still running at
 * `server.drain_timeout_s` is closed as `drained`, and SIGHUP re-reads the config so that new calls
 * get the new greeting, prompt, apology and voice while an active call keeps its own.
 */
import assert from "node:assert/strict";
import { frameCount } from "../src/audio/frames.ts";
import { openCallReader } from "../src/store/read.ts";
import {
  fixtureClip,
  type KavProcess,
  sayAndWait,
  testWithWorkers,
  withKavProcess,
} from "./support/kav_process.ts";
import type { ProviderServers } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT_MS = 30_000;

/** The status line of a WebSocket upgrade request, sent by hand (a WebSocket hides the status). */
async function upgradeStatus(port: number): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(
      "GET /ws/twilio-media HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n" +
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: audio.twilio.com\r\n\r\n",
    ));
    let head = "";
    const buffer = new Uint8Array(1024);
    while (!head.includes("\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) break;
      head += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const status = /^HTTP\/1\.1 (\d{3}) /.exec(head);
    assert.ok(status, `no status line: ${JSON.stringify(head)}`);
    return Number(status[1]);
  } finally {
    conn.close();
  }
}

async function healthStatus(baseUrl: string): Promise<number> {
  const response = await fetch(`${baseUrl}/healthz`);
  await response.body?.cancel();
  return response.status;
}

function outcomeOf(storagePath: string, sid: string): string | null {
  const reader = openCallReader(storagePath);
  try {
    return reader.getCall(sid)?.call.outcome ?? null;
  } finally {
    reader.close();
  }
}

function withKav(
  server: string,
  extra: string,
  body: (kav: KavProcess, servers: ProviderServers) => Promise<void>,
): Promise<void> {
  return withKavProcess({ extra: `${server}${extra}` }, body);
}

async function sigtermMidCall(server: string): Promise<void> {
  const drainTimeoutS = 20;
  await withKav(server, `[server]\ndrain_timeout_s = ${drainTimeoutS}`, async (kav, servers) => {
    servers.llm.script("בשמחה, אני עדיין כאן.");
    const client = await TwilioClient.connect({ url: kav.mediaUrl });
    try {
      client.begin();
      await client.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
      assert.equal(await healthStatus(kav.baseUrl), 200);
      const from = kav.lines.length;
      kav.kill("SIGTERM");
      const sigtermAt = Date.now();
      await kav.waitForLine(/\[HTTP\] draining reason=SIGTERM/, { timeoutMs: TIMEOUT_MS, from });

      assert.equal(await healthStatus(kav.baseUrl), 503);
      assert.equal(await upgradeStatus(kav.port), 503);
      const twiml = await fetch(`${kav.baseUrl}/twiml`, {
        method: "POST",
        body: new URLSearchParams({ CallSid: "CA_LATE", From: "+972500000009", To: "+9723" }),
      });
      assert.equal(twiml.status, 200);
      assert.equal(
        await twiml.text(),
        `<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>`,
      );

      // The active call still works while draining: a turn is answered and played.
      await sayAndWait(
        client,
        fixtureClip("appointment").audio,
        client.waitForEcho("a1_0", { timeoutMs: TIMEOUT_MS }),
      );
      client.sendStop();
      const closed = await client.closed;
      assert.equal(closed.code, 1000);
      const status = await kav.status;
      const drainMs = Date.now() - sigtermAt;
      assert.equal(status.code, 0, kav.log());
      // The acceptance bound: the process exits within the drain timeout.
      assert.ok(drainMs < drainTimeoutS * 1000, `exited ${drainMs} ms after SIGTERM`);
      assert.ok(kav.lines.some((l) => /\[HTTP\] drained finished=1 forced=0/.test(l)), kav.log());
      assert.ok(kav.lines.some((l) => /\[WS\] upgrade refused .*reason=draining/.test(l)));
      assert.ok(kav.lines.some((l) => /\[TWIML\] busy call=CA_LATE reason=draining/.test(l)));
      assert.equal(outcomeOf(kav.storagePath, client.callSid), "completed");
    } finally {
      await client.close();
    }
  });
}

async function drainTimeout(server: string): Promise<void> {
  await withKav(server, "[server]\ndrain_timeout_s = 2", async (kav) => {
    const client = await TwilioClient.connect({ url: kav.mediaUrl });
    const stop = new AbortController();
    try {
      client.begin();
      await client.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
      // The caller keeps the line open (silence) and never hangs up.
      const line = client.streamSilence(60_000, { signal: stop.signal }).catch(() => 0);
      kav.kill("SIGTERM");
      const closed = await client.closed;
      stop.abort();
      await line;
      assert.deepEqual(closed, { code: 1000, reason: "drained" });
      const status = await kav.status;
      assert.equal(status.code, 0, kav.log());
      const sid = client.callSid;
      const order = [
        /\[HTTP\] draining reason=SIGTERM drain_timeout_s=2/,
        /\[CALL\] drain timeout, closing active calls closing=1/,
        new RegExp(`\\[CALL\\] call=${sid} ended outcome=drained reason="drain timeout"`),
        /\[HTTP\] drained finished=0 forced=1/,
        /\[HTTP\] stopped/,
      ].map((pattern) => kav.lines.findIndex((l) => pattern.test(l)));
      assert.ok(order.every((i, n) => i >= 0 && (n === 0 || i > order[n - 1])), kav.log());
      assert.equal(outcomeOf(kav.storagePath, sid), "drained");
    } finally {
      stop.abort();
      await client.close();
    }
  });
}

/** Media frames received before the mark `name`. */
function framesBefore(client: TwilioClient, name: string): number {
  const end = client.received.findIndex((m) =>
    m.event === "mark" && (m.data.mark as { name?: string }).name === name
  );
  assert.ok(end >= 0, `no mark ${name}`);
  return client.received.slice(0, end).filter((m) => m.event === "media").length;
}

function callToml(tag: "A" | "B"): string {
  return `[call]\ngreeting = "${GREETING[tag]}"\nsystem_prompt = "${PROMPT[tag]}"\n` +
    `apology = "${APOLOGY[tag]}"\n[tts]\nvoice = "${VOICE[tag]}"`;
}

const GREETING = { A: "שלום, כאן קו א.", B: "ערב טוב, הגעתם לקו ב, במה נוכל לעזור היום?" };
const PROMPT = { A: "You are line A.", B: "You are line B." };
const APOLOGY = { A: "סליחה מקו א.", B: "סליחה מקו ב." };
const VOICE = { A: "he-IL-Wavenet-A", B: "he-IL-Wavenet-B" };
const ANSWER = { one: "תשובה מהשיחה הראשונה.", two: "תשובה מהשיחה השנייה." };

async function sighupReload(server: string): Promise<void> {
  await withKav(server, callToml("A"), async (kav, servers) => {
    servers.llm.script(ANSWER.one, ANSWER.two);
    const msPerChar = servers.tts.script.msPerChar;
    const greetingFrames = (text: string) => frameCount([...text].length * msPerChar * 8);
    const clip = fixtureClip("appointment");
    const first = await TwilioClient.connect({ url: kav.mediaUrl });
    let second: TwilioClient | null = null;
    try {
      first.begin();
      await first.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
      assert.equal(framesBefore(first, "greeting_end"), greetingFrames(GREETING.A));

      await kav.writeConfig(callToml("B"));
      const from = kav.lines.length;
      const ttsBefore = servers.tts.requests.length;
      kav.kill("SIGHUP");
      await kav.waitForLine(/\[KAV\] reloaded for new calls voice=he-IL-Wavenet-B phrases=2/, {
        timeoutMs: TIMEOUT_MS,
        from,
      });
      assert.deepEqual(
        servers.tts.requests.slice(ttsBefore).map((r) => [r.text, r.voice]).sort(),
        [[APOLOGY.B, VOICE.B], [GREETING.B, VOICE.B]].sort(),
        "the phrases were synthesized again with the new text and voice",
      );

      // The active call keeps its script.
      await sayAndWait(first, clip.audio, first.waitForEcho("a1_0", { timeoutMs: TIMEOUT_MS }));
      // A new call gets the new one.
      second = await TwilioClient.connect({ url: kav.mediaUrl });
      second.begin();
      await second.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
      assert.equal(framesBefore(second, "greeting_end"), greetingFrames(GREETING.B));
      await sayAndWait(second, clip.audio, second.waitForEcho("a1_0", { timeoutMs: TIMEOUT_MS }));

      const [one, two] = servers.llm.requests;
      assert.equal(servers.llm.requests.length, 2);
      assert.deepEqual(one.messages.slice(0, 2), [
        { role: "system", content: PROMPT.A },
        { role: "assistant", content: GREETING.A },
      ]);
      assert.deepEqual(two.messages.slice(0, 2), [
        { role: "system", content: PROMPT.B },
        { role: "assistant", content: GREETING.B },
      ]);
      const voiceOf = (text: string) => servers.tts.requests.find((r) => r.text === text)?.voice;
      assert.equal(voiceOf(ANSWER.one), VOICE.A);
      assert.equal(voiceOf(ANSWER.two), VOICE.B);
      for (const client of [first, second]) {
        client.sendStop();
        await client.closed;
      }
      kav.kill("SIGTERM");
      assert.equal((await kav.status).code, 0, kav.log());
    } finally {
      await first.close();
      await second?.close();
    }
  });
}

async function sighupBrokenConfig(server: string): Promise<void> {
  await withKav(server, callToml("A"), async (kav, servers) => {
    await Deno.writeTextFile(kav.configPath, "[server]\ndrain_timeout_s = -1\n");
    const from = kav.lines.length;
    kav.kill("SIGHUP");
    await kav.waitForLine(/\[KAV\] reload failed error=".*drain_timeout_s/, {
      timeoutMs: TIMEOUT_MS,
      from,
    });
    const client = await TwilioClient.connect({ url: kav.mediaUrl });
    try {
      client.begin();
      await client.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
      assert.equal(
        framesBefore(client, "greeting_end"),
        frameCount([...GREETING.A].length * servers.tts.script.msPerChar * 8),
      );
    } finally {
      await client.close();
    }
    kav.kill("SIGTERM");
    assert.equal((await kav.status).code, 0, kav.log());
  });
}

testWithWorkers(
  "SIGTERM mid-call: healthz 503, new calls refused, the call finishes, exit 0",
  sigtermMidCall,
);
testWithWorkers(
  "a call still running at drain_timeout_s is closed as drained, with a log line",
  drainTimeout,
);
testWithWorkers(
  "SIGHUP re-reads greeting, prompt, apology and voice for new calls only",
  sighupReload,
);
testWithWorkers(
  "SIGHUP with a broken config keeps the running script and logs why",
  sighupBrokenConfig,
);
