import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { parseConfig } from "../src/config/load.ts";
import { createHandler } from "../src/http/handler.ts";
import type { HandlerDeps, MediaCallAcceptor } from "../src/http/types.ts";
import { createBadSignatureLimiter } from "../src/http/_rate_limit.ts";
import { createLogger } from "../src/observe/log.ts";
import { renderMetrics } from "../src/observe/metrics.ts";
import {
  computeSignature,
  type FormParams,
  portVariants,
  validateJsonWebhookSignature,
  validateUpgradeSignature,
  validateWebhookSignature,
} from "../src/twilio/signature.ts";

const TOKEN = "12345";
const VOICE_PARAMS: FormParams = [
  ["CallSid", "CA1234567890ABCDE"],
  ["Caller", "+14158675310"],
  ["Digits", "1234"],
  ["From", "+14158675310"],
  ["To", "+18005551212"],
];
const PYT_PARAMS: FormParams = VOICE_PARAMS.map(([k, v]) => [k, v.replace("5310", "5309")]);

Deno.test("computeSignature() matches the Twilio docs vector", () => {
  const url = "https://example.com/myapp.php?foo=1&bar=2";
  assert.equal(
    computeSignature(TOKEN, { url, params: VOICE_PARAMS }),
    "L/OH5YylLD5NRKLltdqwSvS0BnU=",
  );
  // Order of arrival does not matter: names are sorted.
  const shuffled = [...VOICE_PARAMS].reverse();
  assert.equal(computeSignature(TOKEN, { url, params: shuffled }), "L/OH5YylLD5NRKLltdqwSvS0BnU=");
});

Deno.test("validateWebhookSignature() passes the twilio-python vectors, with and without :443", () => {
  const url = "https://mycompany.com/myapp.php?foo=1&bar=2";
  const withPort = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
  assert.equal(
    computeSignature(TOKEN, { url, params: PYT_PARAMS }),
    "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
  );
  assert.equal(
    computeSignature(TOKEN, { url: withPort, params: PYT_PARAMS }),
    "kvajT1Ptam85bY51eRf/AJRuM3w=",
  );
  for (const signature of ["RSOYDt4T1cUTdK1PDd93/VVr8B8=", "kvajT1Ptam85bY51eRf/AJRuM3w="]) {
    for (const candidate of [url, withPort]) {
      assert.ok(
        validateWebhookSignature(TOKEN, { url: candidate, params: PYT_PARAMS, signature }),
        `${signature} for ${candidate}`,
      );
    }
  }
});

Deno.test("validateJsonWebhookSignature() passes the bodySHA256 vector and checks the body", () => {
  const body = '{"property": "value", "boolean": true}';
  const hash = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
  const url = `https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=${hash}`;
  assert.equal(computeSignature(TOKEN, { url }), "a9nBmqA0ju/hNViExpshrM61xv4=");
  const signature = "a9nBmqA0ju/hNViExpshrM61xv4=";
  assert.ok(validateJsonWebhookSignature(TOKEN, { url, body, signature }));
  assert.ok(
    validateJsonWebhookSignature(TOKEN, { url, body: new TextEncoder().encode(body), signature }),
  );
  assert.ok(
    !validateJsonWebhookSignature(TOKEN, { url, body: body + " ", signature }),
    "body changed",
  );
  assert.ok(
    !validateJsonWebhookSignature(TOKEN, {
      url: url.replace("&bodySHA256=" + hash, ""),
      body,
      signature,
    }),
  );
  assert.ok(!validateJsonWebhookSignature("54321", { url, body, signature }), "other token");
});

Deno.test("validateWebhookSignature() rejects a wrong token, tampered params and a missing signature", () => {
  const url = "https://example.com/myapp.php?foo=1&bar=2";
  const signature = "L/OH5YylLD5NRKLltdqwSvS0BnU=";
  assert.ok(validateWebhookSignature(TOKEN, { url, params: VOICE_PARAMS, signature }));
  assert.ok(!validateWebhookSignature("12346", { url, params: VOICE_PARAMS, signature }));
  const tampered: FormParams = [...VOICE_PARAMS.slice(1), ["CallSid", "CA0000000000ABCDE"]];
  assert.ok(!validateWebhookSignature(TOKEN, { url, params: tampered, signature }));
  const extra: FormParams = [...VOICE_PARAMS, ["Injected", "1"]];
  assert.ok(!validateWebhookSignature(TOKEN, { url, params: extra, signature }));
  assert.ok(
    !validateWebhookSignature(TOKEN, { url: url + "&x=1", params: VOICE_PARAMS, signature }),
  );
  assert.ok(!validateWebhookSignature(TOKEN, { url, params: VOICE_PARAMS, signature: null }));
  assert.ok(!validateWebhookSignature(TOKEN, { url, params: VOICE_PARAMS, signature: "" }));
  assert.ok(!validateWebhookSignature(TOKEN, { url, params: VOICE_PARAMS, signature: "short" }));
});

Deno.test("computeSignature() sorts a repeated name's values like the SDKs", () => {
  const url = "https://kav.example.com/twiml";
  // twilio-python: each name once, its distinct values sorted, each appended as name+value.
  const expected = createHmac("sha1", TOKEN).update(`${url}Aa1Ab2Ab3B0`).digest("base64");
  const params: FormParams = [["B", "0"], ["Ab", "3"], ["Aa", "1"], ["Ab", "2"], ["Ab", "3"]];
  assert.equal(computeSignature(TOKEN, { url, params }), expected);
  // Case-sensitive (code unit) order: "Z" sorts before "a".
  const upper = createHmac("sha1", TOKEN).update(`${url}Z1a2`).digest("base64");
  assert.equal(computeSignature(TOKEN, { url, params: [["a", "2"], ["Z", "1"]] }), upper);
});

Deno.test("portVariants() tries the URL with and without the default port, credentials dropped", () => {
  assert.deepEqual(portVariants("https://a.example/x?y=1"), [
    "https://a.example/x?y=1",
    "https://a.example:443/x?y=1",
  ]);
  assert.deepEqual(portVariants("https://user:pw@a.example:443/x"), [
    "https://a.example:443/x",
    "https://a.example/x",
  ]);
  assert.deepEqual(portVariants("wss://a.example/ws"), [
    "wss://a.example/ws",
    "wss://a.example:443/ws",
  ]);
  assert.deepEqual(portVariants("http://[::1]:8080/t"), ["http://[::1]:8080/t", "http://[::1]/t"]);
  assert.deepEqual(portVariants("not a url"), ["not a url"]);
});

Deno.test("validateUpgradeSignature() accepts the wss URL with no params, with '/' and with the port", () => {
  const url = "wss://kav.example.com/ws/twilio-media";
  for (const signed of [url, `${url}/`, "wss://kav.example.com:443/ws/twilio-media"]) {
    const signature = computeSignature(TOKEN, { url: signed });
    assert.ok(validateUpgradeSignature(TOKEN, { url, signature }), signed);
  }
  const withParams = computeSignature(TOKEN, { url, params: [["a", "b"]] });
  assert.ok(!validateUpgradeSignature(TOKEN, { url, signature: withParams }));
  const https = computeSignature(TOKEN, { url: "https://kav.example.com/ws/twilio-media" });
  assert.ok(!validateUpgradeSignature(TOKEN, { url, signature: https }), "scheme is signed");
  assert.ok(!validateUpgradeSignature(TOKEN, { url, signature: null }));
});

// ---- over HTTP: a real server, requests sent to 127.0.0.1 but signed for the public URL ----

const PUBLIC = "https://kav.example.com";

interface Harness {
  readonly base: string;
  readonly logs: string[];
  readonly attached: string[];
  readonly events: string[];
  close(): Promise<void>;
}

async function withServer(
  options: { validate: boolean; perMinute?: number },
  body: (h: Harness) => Promise<void>,
): Promise<void> {
  const config = parseConfig(
    `[server]\npublic_url = "${PUBLIC}"\nbad_signature_per_ip_per_min = ${
      options.perMinute ?? 30
    }\n` +
      `[twilio]\nvalidate_signatures = ${options.validate}\n`,
    { env: { TWILIO_AUTH_TOKEN: TOKEN }, credentialsDir: null },
  );
  const logs: string[] = [];
  const attached: string[] = [];
  const events: string[] = [];
  const calls: MediaCallAcceptor = {
    canAccept: () => true,
    attach(socket, meta) {
      attached.push(meta.remoteAddr);
      socket.onopen = () => socket.close();
    },
  };
  const deps: HandlerDeps = {
    config,
    log: createLogger((line) => logs.push(line)),
    calls,
    onStatusEvent: (params, webhook) => void events.push(`${webhook}:${params.StreamEvent}`),
    isDraining: () => false,
  };
  const ac = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
    createHandler(deps),
  );
  const harness: Harness = {
    base: `http://127.0.0.1:${server.addr.port}`,
    logs,
    attached,
    events,
    close: async () => {
      ac.abort();
      await server.finished;
    },
  };
  try {
    await body(harness);
  } finally {
    await harness.close();
  }
}

/** The status of a request, its body read so no stream is left open. */
async function statusOf(response: Promise<Response>): Promise<number> {
  const done = await response;
  await done.arrayBuffer();
  return done.status;
}

function post(
  h: Harness,
  path: string,
  params: FormParams,
  signature: string | null,
): Promise<Response> {
  const headers: Record<string, string> = {
    "content-type": "application/x-www-form-urlencoded",
  };
  if (signature !== null) headers["x-twilio-signature"] = signature;
  return fetch(h.base + path, {
    method: "POST",
    headers,
    body: new URLSearchParams(params.map(([k, v]) => [k, v])),
  });
}

const STATUS_PARAMS: FormParams = [
  ["AccountSid", "AC1"],
  ["CallSid", "CA1"],
  ["StreamSid", "MZ1"],
  ["StreamEvent", "stream-started"],
  ["Timestamp", "2024-01-01T00:00:00Z"],
];

function badSignatureCount(route: string): number {
  const match = new RegExp(`^kav_bad_signatures_total\\{route="${route}"\\} (\\d+)$`, "m")
    .exec(renderMetrics());
  return match ? Number(match[1]) : 0;
}

async function upgrade(h: Harness, headers: Record<string, string>): Promise<Response> {
  // fetch() cannot send Upgrade; a raw request shows the status line exactly.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(h.base).port) });
  try {
    const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
    await conn.write(new TextEncoder().encode(
      "GET /ws/twilio-media HTTP/1.1\r\nHost: attacker.example\r\nUpgrade: websocket\r\n" +
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
        `Sec-WebSocket-Version: 13\r\n${extra}\r\n`,
    ));
    const buffer = new Uint8Array(4096);
    const n = await conn.read(buffer);
    const head = new TextDecoder().decode(buffer.subarray(0, n ?? 0));
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
    return new Response(null, { status });
  } finally {
    conn.close();
  }
}

Deno.test("signed requests pass and unsigned or mis-signed ones get 403 on every Twilio route", async () => {
  await withServer({ validate: true }, async (h) => {
    const voiceParams: FormParams = [["CallSid", "CA9"], ["From", "+972500000000"], [
      "To",
      "+97230000000",
    ]];
    const before = badSignatureCount("twiml");
    const good = computeSignature(TOKEN, { url: `${PUBLIC}/twiml`, params: voiceParams });
    const ok = await post(h, "/twiml", voiceParams, good);
    assert.equal(ok.status, 200);
    assert.ok((await ok.text()).includes("<Connect"));
    for (
      const signature of [
        null,
        "bm90IGEgc2lnbmF0dXJl",
        computeSignature("other", { url: `${PUBLIC}/twiml`, params: voiceParams }),
      ]
    ) {
      const response = await post(h, "/twiml", voiceParams, signature);
      assert.equal(response.status, 403);
      assert.equal(await response.text(), "");
    }
    assert.equal(badSignatureCount("twiml") - before, 3);
    // Signed for the Host the request was sent to, not the public URL: refused.
    const hostSigned = computeSignature(TOKEN, { url: `${h.base}/twiml`, params: voiceParams });
    assert.equal(await statusOf(post(h, "/twiml", voiceParams, hostSigned)), 403);

    for (
      const path of ["/webhook/stream_status", "/webhook/stream_ended", "/webhook/stream_status/"]
    ) {
      const signed = computeSignature(TOKEN, { url: PUBLIC + path, params: STATUS_PARAMS });
      const accepted = await post(h, path, STATUS_PARAMS, signed);
      assert.equal(accepted.status, 204, path);
      await accepted.body?.cancel();
      const refused = await post(h, path, STATUS_PARAMS, null);
      assert.equal(refused.status, 403, path);
      await refused.body?.cancel();
      // Same signature, one param changed.
      const changed: FormParams = [...STATUS_PARAMS.slice(0, 3), ["StreamEvent", "stream-stopped"]];
      assert.equal(await statusOf(post(h, path, changed, signed)), 403, path);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(h.events, [
      "stream_status:stream-started",
      "stream_ended:stream-started",
      "stream_status:stream-started",
    ], "only signed events are delivered");

    const wsSigned = computeSignature(TOKEN, { url: "wss://kav.example.com/ws/twilio-media" });
    assert.equal((await upgrade(h, { "X-Twilio-Signature": wsSigned })).status, 101);
    assert.equal((await upgrade(h, {})).status, 403);
    const wrong = computeSignature(TOKEN, { url: "https://kav.example.com/ws/twilio-media" });
    assert.equal((await upgrade(h, { "X-Twilio-Signature": wrong })).status, 403);
    assert.equal(h.attached.length, 1, "only the signed upgrade reaches the call manager");
    const refusals = h.logs.filter((line) => line.includes("[HTTP] bad signature"));
    assert.equal(refusals.length, 3 + 1 + 6 + 2, "one log line per refused request");
    assert.ok(refusals.every((line) => !line.includes(good)), "signatures are not logged");
  });
});

Deno.test("the signed URL keeps the raw query string and JSON webhooks use bodySHA256", async () => {
  await withServer({ validate: true }, async (h) => {
    const path = "/twiml?tag=a%20b&n=1";
    const params: FormParams = [["CallSid", "CA2"]];
    const signed = computeSignature(TOKEN, { url: PUBLIC + path, params });
    assert.equal(await statusOf(post(h, path, params, signed)), 200);
    const decoded = computeSignature(TOKEN, { url: `${PUBLIC}/twiml?tag=a b&n=1`, params });
    assert.equal(await statusOf(post(h, path, params, decoded)), 403);

    const body = JSON.stringify({ StreamEvent: "stream-started" });
    const hash = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(body))),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    const jsonPath = `/webhook/stream_status?bodySHA256=${hash}`;
    const signature = computeSignature(TOKEN, { url: PUBLIC + jsonPath });
    const send = (text: string) =>
      statusOf(fetch(h.base + jsonPath, {
        method: "POST",
        headers: { "content-type": "application/json", "x-twilio-signature": signature },
        body: text,
      }));
    assert.equal(await send(body), 204);
    assert.equal(await send(body.replace("started", "stopped")), 403, "body must match its hash");
  });
});

Deno.test("with validate_signatures off every Twilio route accepts unsigned requests", async () => {
  await withServer({ validate: false }, async (h) => {
    const twiml = await post(h, "/twiml", [["CallSid", "CA1"]], null);
    assert.equal(twiml.status, 200);
    await twiml.body?.cancel();
    const status = await post(h, "/webhook/stream_ended/", STATUS_PARAMS, "garbage");
    assert.equal(status.status, 204);
    await status.body?.cancel();
    assert.equal((await upgrade(h, {})).status, 101);
    assert.equal(h.logs.filter((line) => line.includes("bad signature")).length, 0);
  });
});

Deno.test("bad signatures past the per-IP cap get 429 and one log line, good ones still pass", async () => {
  await withServer({ validate: true, perMinute: 2 }, async (h) => {
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) {
      const response = await post(h, "/webhook/stream_status", STATUS_PARAMS, "bad");
      statuses.push(response.status);
      await response.body?.cancel();
    }
    assert.deepEqual(statuses, [403, 403, 429, 429, 429]);
    const signed = computeSignature(TOKEN, {
      url: `${PUBLIC}/webhook/stream_status`,
      params: STATUS_PARAMS,
    });
    const good = await post(h, "/webhook/stream_status", STATUS_PARAMS, signed);
    assert.equal(good.status, 204, "Twilio behind the same address is never locked out");
    await good.body?.cancel();
    assert.equal(h.logs.filter((line) => line.includes("[HTTP] bad signature")).length, 3);
    assert.equal(h.logs.filter((line) => line.includes("per-IP cap")).length, 1);
  });
});

Deno.test("createBadSignatureLimiter() resets each minute and bounds the IPs it tracks", () => {
  let now = 0;
  const limit = createBadSignatureLimiter({ perMinute: 2, maxTracked: 2, now: () => now });
  assert.deepEqual(["a", "a", "a", "a"].map(limit), [
    "counted",
    "counted",
    "limited_first",
    "limited",
  ]);
  assert.equal(limit("b"), "counted");
  // A third IP shares the overflow bucket with every later one.
  assert.deepEqual(["c", "d", "e", "f"].map(limit), [
    "counted",
    "counted",
    "limited_first",
    "limited",
  ]);
  now = 59_999;
  assert.equal(limit("a"), "limited");
  now = 60_000;
  assert.equal(limit("a"), "counted", "a new window forgets everything");
  assert.equal(limit("c"), "counted", "the new window tracks c by itself");
});
