/**
 * The console's listener and JSON API (SPEC 7) against a sandbox Kav: the token (Bearer or the
 * session cookie), 401 and the per-address cap, the public port serving none of it, the live feed
 * showing a call within a second of `start` and dropping it when it ends, the history and one
 * call's record, and the `[admin]` config rules.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../src/config/load.ts";
import { ConfigError } from "../src/errors.ts";
import { AdminAuth, readCookie, SESSION_TTL_MS } from "../src/admin/_auth.ts";
import { maskNumber } from "../src/admin/_views.ts";
import { quantileMs } from "../src/admin/_health.ts";
import { historyQuery } from "../src/admin/_query.ts";
import { ADMIN_TOKEN, type ConsoleSandbox, startConsoleSandbox } from "./support/console.ts";
import { fixtureClip, sayAndWait } from "./support/kav_process.ts";
import { startSandbox } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const BEARER = { authorization: `Bearer ${ADMIN_TOKEN}` };

async function get(url: string, headers: Record<string, string> = {}) {
  const response = await fetch(url, { headers });
  const text = await response.text();
  return { status: response.status, text, headers: response.headers };
}

/** Reads `live` events from the SSE feed until `predicate` holds for one; returns when it did. */
async function waitForLive(
  kav: ConsoleSandbox,
  predicate: (live: { calls: { callSid: string | null; state: string }[] }) => boolean,
  timeoutMs: number,
): Promise<number> {
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(), timeoutMs);
  try {
    const response = await fetch(`${kav.consoleUrl}/api/live/stream`, {
      headers: BEARER,
      signal: stop.signal,
    });
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type") ?? "", /^text\/event-stream/);
    let buffered = "";
    for await (const chunk of response.body!.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      let end: number;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const event = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const data = /^data: (.*)$/m.exec(event)?.[1];
        assert.match(event, /^event: live$/m);
        if (data !== undefined && predicate(JSON.parse(data))) return performance.now();
      }
    }
    throw new Error("The live feed ended");
  } finally {
    clearTimeout(timer);
    stop.abort();
  }
}

Deno.test("the console API answers 401 without or with a wrong token, then 429 per address", async () => {
  const kav = await startConsoleSandbox({ extra: "[server]\nbad_signature_per_ip_per_min = 3" });
  try {
    const url = `${kav.consoleUrl}/api/calls`;
    const missing = await get(url);
    assert.equal(missing.status, 401);
    assert.equal(missing.headers.get("www-authenticate"), 'Bearer realm="kav"');
    assert.equal((await get(url, { authorization: "Bearer wrong-token" })).status, 401);
    assert.equal((await get(url, { authorization: `Basic ${ADMIN_TOKEN}` })).status, 401);
    assert.equal((await get(url, { cookie: "kav_session=9999999999999.forged" })).status, 429);
    // Past the cap: refused even before checking further (the right token still works).
    assert.equal((await get(`${kav.consoleUrl}/api/live`)).status, 429);
    assert.equal((await get(url, BEARER)).status, 200);
    assert.ok(kav.lines.some((l) => /\[ADMIN\] unauthorized path=\/api\/calls/.test(l)));
    assert.equal(kav.lines.filter((l) => /\[ADMIN\] rate limited/.test(l)).length, 1);
    assert.ok(!kav.lines.some((l) => l.includes(ADMIN_TOKEN)), "the token is never logged");
  } finally {
    await kav.stop();
  }
});

Deno.test("the public port answers 404 for the console and its API; the admin port serves them", async () => {
  const kav = await startConsoleSandbox();
  try {
    for (const path of ["/", "/api/live", "/api/calls", "/api/login", "/static/app.js"]) {
      const response = await get(`${kav.baseUrl}${path}`, BEARER);
      assert.equal(response.status, 404, `public ${path}`);
    }
    const page = await get(`${kav.consoleUrl}/`);
    assert.equal(page.status, 200);
    assert.match(page.text, /<script type="module" src="\/static\/app\.js">/);
    assert.match(page.headers.get("content-security-policy") ?? "", /default-src 'self'/);
    for (const path of ["/static/app.js", "/static/timeline.js", "/static/uplot.js"]) {
      const file = await get(`${kav.consoleUrl}${path}`);
      assert.equal(file.status, 200, path);
      assert.match(file.headers.get("content-type") ?? "", /^text\/javascript/);
    }
    const etag = (await get(`${kav.consoleUrl}/static/style.css`)).headers.get("etag")!;
    assert.equal(
      (await get(`${kav.consoleUrl}/static/style.css`, { "if-none-match": etag })).status,
      304,
    );
    assert.equal((await get(`${kav.consoleUrl}/healthz`)).text, "ok\n");
    assert.match((await get(`${kav.consoleUrl}/metrics`)).text, /^kav_active_calls 0$/m);
    assert.equal((await get(`${kav.consoleUrl}/nope`)).status, 404);
    assert.equal((await get(`${kav.consoleUrl}/api/nope`, BEARER)).status, 404);
  } finally {
    await kav.stop();
  }
});

Deno.test("the page logs in with the token and gets an HttpOnly SameSite=Strict session cookie", async () => {
  const kav = await startConsoleSandbox();
  try {
    const login = (body: string, type = "application/json") =>
      fetch(`${kav.consoleUrl}/api/login`, {
        method: "POST",
        headers: { "content-type": type },
        body,
      });
    const wrong = await login(JSON.stringify({ token: "nope" }));
    assert.equal(wrong.status, 401);
    await wrong.body?.cancel();
    const garbled = await login("{not json");
    assert.equal(garbled.status, 401);
    await garbled.body?.cancel();
    const ok = await login(JSON.stringify({ token: ADMIN_TOKEN }));
    assert.equal(ok.status, 204);
    const setCookie = ok.headers.get("set-cookie") ?? "";
    assert.match(
      setCookie,
      /^kav_session=\d+\.[\w-]+; Path=\/; Max-Age=43200; HttpOnly; SameSite=Strict$/,
    );
    const cookie = setCookie.split(";")[0];
    assert.equal((await get(`${kav.consoleUrl}/api/live`, { cookie })).status, 200);
    assert.equal(
      (await get(`${kav.consoleUrl}/api/session`, { cookie })).text,
      '{"authenticated":true}',
    );
    assert.equal((await get(`${kav.consoleUrl}/api/session`)).text, '{"authenticated":false}');
    const form = await login(
      `token=${encodeURIComponent(ADMIN_TOKEN)}`,
      "application/x-www-form-urlencoded",
    );
    assert.equal(form.status, 204);
    const out = await fetch(`${kav.consoleUrl}/api/logout`, {
      method: "POST",
      headers: { cookie },
    });
    assert.match(out.headers.get("set-cookie") ?? "", /^kav_session=; Path=\/; Max-Age=0;/);
    const huge = await login(JSON.stringify({ token: "x".repeat(10_000) }));
    assert.equal(huge.status, 401);
    await huge.body?.cancel();
  } finally {
    await kav.stop();
  }
});

Deno.test("AdminAuth accepts its own cookie until it expires, and none signed with another token", () => {
  let now = 1_000_000;
  const auth = new AdminAuth({ token: ADMIN_TOKEN, secure: true, now: () => now });
  const setCookie = auth.sessionCookie();
  assert.match(setCookie, /; Secure$/);
  const value = readCookie(setCookie.split(";")[0], "kav_session")!;
  const request = (cookie: string) =>
    new Request("http://x/api/live", { headers: { cookie: `a=b; kav_session=${cookie}` } });
  assert.equal(auth.allows(request(value)), true);
  const other = new AdminAuth({ token: "another-token-0123456789", secure: true, now: () => now });
  assert.equal(other.allows(request(value)), false, "changing the token logs everyone out");
  const [expires, mac] = value.split(".");
  assert.equal(auth.allows(request(`${Number(expires) + 1}.${mac}`)), false, "expiry is signed");
  now += SESSION_TTL_MS + 1;
  assert.equal(auth.allows(request(value)), false, "expired");
  assert.equal(auth.allows(new Request("http://x/", { headers: BEARER })), true);
});

Deno.test("the live feed shows a call within a second of start and drops it when it ends", async () => {
  const kav = await startConsoleSandbox();
  try {
    const client = await TwilioClient.connect({
      url: kav.mediaUrl,
      customParameters: { From: "+972501234567", To: "+97231234567" },
    });
    try {
      const watching = waitForLive(
        kav,
        (live) => live.calls.some((c) => c.callSid === client.callSid),
        5000,
      );
      // The feed's first event arrives at once; give it a moment to be the "before" picture.
      await new Promise((resolve) => setTimeout(resolve, 100));
      const started = performance.now();
      client.begin();
      const seen = await watching;
      assert.ok(seen - started < 1000, `appeared after ${Math.round(seen - started)} ms`);
      // The greeting plays first: the agent's state says so.
      const states = new Set<string>();
      for (let i = 0; i < 40 && !states.has("greeting"); i++) {
        const live = JSON.parse((await get(`${kav.consoleUrl}/api/live`, BEARER)).text);
        states.add(live.calls.find((c: { callSid: string }) => c.callSid === client.callSid).state);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.ok(states.has("greeting"), [...states].join());
      await client.waitForEcho("greeting_end", { timeoutMs: 20_000 });
      await sayAndWait(
        client,
        fixtureClip("hours").audio,
        client.waitForEcho("a1_0", { timeoutMs: 20_000 }),
      );
      const live = JSON.parse((await get(`${kav.consoleUrl}/api/live`, BEARER)).text);
      const call = live.calls.find((c: { callSid: string }) => c.callSid === client.callSid);
      assert.equal(call.from, "+972501234567", "log.transcripts = true shows numbers");
      assert.ok(call.media.rxFps > 0, JSON.stringify(call.media));
      assert.ok(call.lastLine !== null && /[\u0590-\u05FF]/.test(call.lastLine.text));
      assert.ok(call.lastTurnLatencyMs > 0);
      const leaving = waitForLive(
        kav,
        (l) => !l.calls.some((c) => c.callSid === client.callSid),
        5000,
      );
      client.sendStop();
      await leaving;
      // A viewer that went away is forgotten (and with none left the feed's timer stops).
      let viewers = -1;
      for (let i = 0; i < 30 && viewers !== 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        viewers = JSON.parse((await get(`${kav.consoleUrl}/api/health`, BEARER)).text).console
          .viewers;
      }
      assert.equal(viewers, 0);
    } finally {
      await client.close();
    }
  } finally {
    await kav.stop();
  }
});

Deno.test("history and one call through the API; numbers masked unless log.transcripts", async () => {
  const kav = await startConsoleSandbox({ extra: "[log]\ntranscripts = false" });
  try {
    const client = await TwilioClient.connect({
      url: kav.mediaUrl,
      customParameters: { From: "+972501234567", To: "+97231234567" },
    });
    try {
      client.begin();
      await client.waitForEcho("greeting_end", { timeoutMs: 20_000 });
      await sayAndWait(
        client,
        fixtureClip("appointment").audio,
        client.waitForEcho("a1_0", { timeoutMs: 20_000 }),
      );
      client.sendDtmf("4");
      client.sendStop();
      await client.closed;
    } finally {
      await client.close();
    }
    // The record is written off the call's path: wait for it to be readable.
    let page: { calls: { callSid: string; from: string; outcome: string }[]; next: null } = {
      calls: [],
      next: null,
    };
    for (let i = 0; i < 50 && page.calls[0]?.outcome !== "completed"; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      page = JSON.parse((await get(`${kav.consoleUrl}/api/calls?limit=10`, BEARER)).text);
    }
    assert.equal(page.calls.length, 1);
    assert.equal(page.calls[0].callSid, client.callSid);
    assert.equal(page.calls[0].from, "+••••••••4567");
    assert.equal(page.next, null);
    const search = async (q: string) =>
      JSON.parse((await get(`${kav.consoleUrl}/api/calls?q=${encodeURIComponent(q)}`, BEARER)).text)
        .calls.length;
    assert.equal(await search("לקבוע תור"), 1);
    assert.equal(await search("שעות"), 0);
    const byNumber = await get(
      `${kav.consoleUrl}/api/calls?number=501234&outcome=completed`,
      BEARER,
    );
    assert.equal(JSON.parse(byNumber.text).calls.length, 1);
    const detail = JSON.parse(
      (await get(`${kav.consoleUrl}/api/calls/${client.callSid}`, BEARER)).text,
    );
    assert.equal(detail.call.callSid, client.callSid);
    assert.deepEqual(detail.turns.map((t: { speaker: string }) => t.speaker), [
      "agent",
      "caller",
      "agent",
    ]);
    assert.equal(detail.turns[1].text, "שלום, אני רוצה לקבוע תור");
    assert.ok(detail.turns[2].timings.e2e_latency > 0);
    assert.equal(detail.call.customParameters.From, "+••••••••4567");
    const dtmf = detail.events.find((e: { kind: string }) => e.kind === "dtmf");
    assert.equal(dtmf.detail, "•", "keypad digits are personal data too");
    assert.equal((await get(`${kav.consoleUrl}/api/calls/CA404`, BEARER)).status, 404);
    assert.equal((await get(`${kav.consoleUrl}/api/calls/..%2F..`, BEARER)).status, 400);
    assert.equal((await get(`${kav.consoleUrl}/api/calls/CA%E0%A4%A`, BEARER)).status, 400);
    const bad = await get(`${kav.consoleUrl}/api/calls?limit=0`, BEARER);
    assert.equal(bad.status, 400);
    assert.match(JSON.parse(bad.text).error, /Cannot use limit="0": expected a whole number/);
    const health = JSON.parse((await get(`${kav.consoleUrl}/api/health`, BEARER)).text);
    assert.equal(health.store.kind, "sqlite");
    assert.equal(health.config.secrets.admin_token, true);
    assert.ok(!JSON.stringify(health).includes(ADMIN_TOKEN));
  } finally {
    await kav.stop();
  }
});

Deno.test("historyQuery() reads filters and names a bad parameter", () => {
  const q = historyQuery(
    new URLSearchParams(
      "limit=20&since=2025-01-15&until=1736940000000&number=%2B972&outcome=open&q=תור",
    ),
  );
  assert.deepEqual(q, {
    limit: 20,
    sinceMs: Date.parse("2025-01-15"),
    untilMs: 1736940000000,
    number: "+972",
    outcome: "open",
    text: "תור",
    before: null,
  });
  assert.deepEqual(historyQuery(new URLSearchParams("before=1736940000000:CA1")).before, {
    startedAt: 1736940000000,
    callSid: "CA1",
  });
  for (
    const [query, message] of [
      ["limit=201", /limit="201": expected a whole number from 1 to 200/],
      ["since=yesterday", /since="yesterday": expected epoch milliseconds or an ISO date/],
      ["number=abc", /number="abc": expected digits/],
      ["outcome=happy", /outcome="happy": expected one of completed/],
      ["before=x", /before="x": expected the `next` of a previous page/],
      [`q=${"a".repeat(201)}`, /expected at most 200 characters/],
    ] as const
  ) {
    assert.throws(() => historyQuery(new URLSearchParams(query)), message);
  }
});

Deno.test("maskNumber() keeps the last four digits; quantileMs() interpolates buckets", () => {
  assert.equal(maskNumber("+972501234567"), "+••••••••4567");
  assert.equal(maskNumber("123"), "•••");
  assert.equal(maskNumber(null), null);
  assert.equal(quantileMs([[0.1, 0], [0.2, 10], [Infinity, 10]], 0.5), 150);
  assert.equal(quantileMs([[0.1, 0], [Infinity, 4]], 0.5), 100);
  assert.equal(quantileMs([], 0.5), null);
});

Deno.test('[admin] config: default on loopback, off with "", refused beyond loopback without a token', () => {
  const base =
    '[server]\npublic_url = "https://kav.example.com"\n[twilio]\nvalidate_signatures = false\n';
  const config = (extra: string, env: Record<string, string> = {}) =>
    parseConfig(base + extra, { env, credentialsDir: null });
  assert.deepEqual(config("").admin, {
    listen: { hostname: "127.0.0.1", port: 9090 },
    token: null,
  });
  assert.equal(config('[admin]\nlisten = ""').admin.listen, null);
  assert.equal(
    config('[admin]\nlisten = "0.0.0.0:9090"', { KAV_ADMIN_TOKEN: ADMIN_TOKEN }).admin.token,
    ADMIN_TOKEN,
  );
  assert.equal(config('[admin]\nlisten = "[::1]:9091"').admin.listen?.hostname, "::1");
  const problems = (extra: string, env: Record<string, string> = {}) => {
    try {
      config(extra, env);
    } catch (error) {
      if (error instanceof ConfigError) return error.problems;
      throw error;
    }
    throw new Error("expected a ConfigError");
  };
  const [open] = problems('[admin]\nlisten = "0.0.0.0:9090"');
  assert.equal(open.key, "admin.listen");
  assert.equal(open.line, 6);
  assert.match(
    open.message,
    /reachable from other hosts, but no token was found: set env KAV_ADMIN_TOKEN/,
  );
  const [short] = problems("", { KAV_ADMIN_TOKEN: "short" });
  assert.equal(short.key, "admin.token");
  assert.match(short.message, /must be at least 16 characters .*: it has 5/);
  const [inFile] = problems(`[admin]\ntoken = "${ADMIN_TOKEN}"`);
  assert.equal(inFile.key, "admin.token");
  assert.match(inFile.message, /is not read from the file: set env KAV_ADMIN_TOKEN/);
  const [badListen] = problems('[admin]\nlisten = "nope"');
  assert.equal(badListen.key, "admin.listen");
});

Deno.test("without a token Kav runs with the console off and says why", async () => {
  const kav = await startSandbox({ extra: '[admin]\nlisten = "127.0.0.1:0"' });
  try {
    assert.ok(
      kav.lines.some((l) =>
        /\[ADMIN\] console off reason="no token: set env KAV_ADMIN_TOKEN/.test(l)
      ),
      kav.lines.join("\n"),
    );
    assert.equal((await get(`${kav.baseUrl}/healthz`)).status, 200);
  } finally {
    await kav.stop();
  }
});
