import assert from "node:assert/strict";
import { parseConfig } from "../src/config/load.ts";
import { createHandler, type KavHandler } from "../src/http/handler.ts";
import type { HandlerDeps, MediaCallAcceptor, StreamWebhook } from "../src/http/types.ts";
import { readBody } from "../src/http/_body.ts";
import { offeredProtocols, rawPathAndQuery, signedUrl } from "../src/http/_urls.ts";
import { createLogger } from "../src/observe/log.ts";

const CONFIG = parseConfig(
  `[server]\npublic_url = "https://kav.example.com"\nmax_body_bytes = 2048\n` +
    `[twilio]\nvalidate_signatures = false\n`,
  { env: {}, credentialsDir: null },
);

const INFO: Deno.ServeHandlerInfo = {
  remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 40000 },
  completed: Promise.resolve(),
};

interface Fixture {
  readonly handler: KavHandler;
  readonly logs: string[];
  readonly events: Array<{ params: Readonly<Record<string, string>>; webhook: StreamWebhook }>;
  readonly attached: Array<{ socket: WebSocket; remoteAddr: string }>;
  draining: boolean;
  accept: boolean;
}

function fixture(overrides: Partial<Pick<HandlerDeps, "onStatusEvent" | "calls">> = {}): Fixture {
  const state: Fixture = {
    handler: null as unknown as KavHandler,
    logs: [],
    events: [],
    attached: [],
    draining: false,
    accept: true,
  };
  const calls: MediaCallAcceptor = {
    canAccept: () => state.accept,
    attach(socket, meta) {
      state.attached.push({ socket, remoteAddr: meta.remoteAddr });
      // The stub acceptor only closes the socket once open.
      socket.onopen = () => socket.close(1000, "test done");
    },
  };
  const handler = createHandler({
    config: CONFIG,
    log: createLogger((line) => state.logs.push(line)),
    calls: overrides.calls ?? calls,
    onStatusEvent: overrides.onStatusEvent ??
      ((params, webhook) => void state.events.push({ params, webhook })),
    isDraining: () => state.draining,
  });
  return Object.assign(state, { handler });
}

const request = (path: string, init?: RequestInit) =>
  new Request(`http://127.0.0.1:8080${path}`, init);

Deno.test("GET /healthz says ok, then 503 draining", async () => {
  const f = fixture();
  const ok = await f.handler(request("/healthz"), INFO);
  assert.equal(ok.status, 200);
  assert.equal(await ok.text(), "ok\n");
  const head = await f.handler(request("/healthz", { method: "HEAD" }), INFO);
  assert.equal(head.status, 200);
  assert.equal(await head.text(), "");
  f.draining = true;
  const draining = await f.handler(request("/healthz"), INFO);
  assert.equal(draining.status, 503);
  assert.equal(await draining.text(), "draining\n");
});

Deno.test("GET /metrics serves the Prometheus text format", async () => {
  const response = await fixture().handler(request("/metrics"), INFO);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const text = await response.text();
  assert.match(text, /^# TYPE kav_active_calls gauge$/m);
  assert.match(text, /^# TYPE kav_webhook_duration_seconds histogram$/m);
});

Deno.test("unknown paths get 404 and wrong methods 405 with Allow", async () => {
  const f = fixture();
  for (const path of ["/", "/twiml/extra", "/webhook", "/webhook/stream_statuss", "/healthz//"]) {
    const response = await f.handler(request(path), INFO);
    assert.equal(response.status, 404, path);
    await response.body?.cancel();
  }
  const cases: Array<[string, string, string]> = [
    ["GET", "/twiml", "POST"],
    ["GET", "/webhook/stream_status", "POST"],
    ["PUT", "/webhook/stream_ended/", "POST"],
    ["POST", "/healthz", "GET, HEAD"],
    ["POST", "/ws/twilio-media", "GET"],
    ["DELETE", "/metrics", "GET"],
  ];
  for (const [method, path, allow] of cases) {
    const response = await f.handler(request(path, { method }), INFO);
    assert.equal(response.status, 405, `${method} ${path}`);
    assert.equal(response.headers.get("allow"), allow);
    await response.body?.cancel();
  }
});

Deno.test("status webhooks answer 204 with and without a trailing slash, then deliver the event", async () => {
  const f = fixture();
  const cases: Array<[string, StreamWebhook]> = [
    ["/webhook/stream_status", "stream_status"],
    ["/webhook/stream_status/", "stream_status"],
    ["/webhook/stream_ended", "stream_ended"],
    ["/webhook/stream_ended/", "stream_ended"],
  ];
  for (const [path, webhook] of cases) {
    const body = new URLSearchParams({
      CallSid: "CA1",
      StreamEvent: "stream-stopped",
      StreamSid: path,
    });
    const response = await f.handler(request(path, { method: "POST", body }), INFO);
    assert.equal(response.status, 204, path);
    assert.equal(response.headers.get("cache-control"), "no-store");
    assert.equal(await response.text(), "");
    assert.equal(f.events.length, 0, "the event is not handled on the response path");
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.deepEqual(f.events.pop(), {
      params: { CallSid: "CA1", StreamEvent: "stream-stopped", StreamSid: path },
      webhook,
    });
  }
});

Deno.test("a failing status handler is logged and the webhook still answers 204", async () => {
  const logs: string[] = [];
  for (
    const fail of [() => {
      throw new Error("sync boom");
    }, () => Promise.reject(new Error("async boom"))]
  ) {
    const f = fixture({ onStatusEvent: fail });
    const body = new URLSearchParams({ CallSid: "CA5" });
    const response = await f.handler(
      request("/webhook/stream_ended", { method: "POST", body }),
      INFO,
    );
    assert.equal(response.status, 204);
    await new Promise((resolve) => setTimeout(resolve, 10));
    logs.push(...f.logs);
  }
  assert.equal(logs.length, 2, logs.join("\n"));
  assert.ok(
    logs[0].includes("[HTTP] status event handler failed call=CA5") &&
      logs[0].includes("sync boom"),
  );
  assert.ok(logs[1].includes("async boom"));
});

Deno.test("bodies over server.max_body_bytes get 413, by Content-Length or while streaming", async () => {
  const f = fixture();
  const declared = await f.handler(
    request("/twiml", { method: "POST", body: "x".repeat(2049) }),
    INFO,
  );
  assert.equal(declared.status, 413);
  await declared.body?.cancel();

  // No Content-Length: the handler must stop reading soon after the cap, not drain the stream.
  let pulled = 0;
  const endless = new ReadableStream<Uint8Array>({
    pull(controller) {
      pulled += 512;
      controller.enqueue(new Uint8Array(512).fill(0x61));
    },
  });
  const streamed = await f.handler(
    request("/webhook/stream_status", { method: "POST", body: endless }),
    INFO,
  );
  assert.equal(streamed.status, 413);
  assert.ok(pulled <= 2048 + 2 * 512, `read ${pulled} bytes`);
  assert.equal(f.events.length, 0);

  const atLimit = await f.handler(
    request("/webhook/stream_status", { method: "POST", body: "a=" + "x".repeat(2046) }),
    INFO,
  );
  assert.equal(atLimit.status, 204, "exactly max_body_bytes is accepted");
  await new Promise((resolve) => setTimeout(resolve, 0));
});

Deno.test("readBody() joins chunks and returns an empty body for none", async () => {
  const chunks = [new Uint8Array([1, 2]), new Uint8Array([3])];
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  const result = await readBody(request("/x", { method: "POST", body }), { maxBytes: 3 });
  assert.deepEqual(result, { ok: true, bytes: new Uint8Array([1, 2, 3]) });
  assert.deepEqual(await readBody(request("/x"), { maxBytes: 3 }), {
    ok: true,
    bytes: new Uint8Array(0),
  });
});

Deno.test("unexpected errors become 500 and one log line", async () => {
  const f = fixture({
    calls: {
      canAccept: () => {
        throw new Error("manager exploded");
      },
      attach: () => {},
    },
  });
  const response = await f.handler(
    request("/twiml", { method: "POST", body: "CallSid=CA1" }),
    INFO,
  );
  assert.equal(response.status, 500);
  assert.equal(await response.text(), "internal error\n");
  assert.equal(f.logs.length, 1);
  assert.match(
    f.logs[0],
    /\[HTTP\] request failed method=POST path=\/twiml .*error="manager exploded"/,
  );
});

Deno.test("GET /ws/twilio-media without an upgrade gets 426; with no capacity 503", async () => {
  const f = fixture();
  const plain = await f.handler(request("/ws/twilio-media"), INFO);
  assert.equal(plain.status, 426);
  assert.equal(plain.headers.get("upgrade"), "websocket");
  await plain.body?.cancel();
  f.accept = false;
  const upgradeHeaders = {
    upgrade: "websocket",
    connection: "Upgrade",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-version": "13",
  };
  const full = await f.handler(request("/ws/twilio-media", { headers: upgradeHeaders }), INFO);
  assert.equal(full.status, 503);
  f.accept = true;
  f.draining = true;
  const draining = await f.handler(request("/ws/twilio-media", { headers: upgradeHeaders }), INFO);
  assert.equal(draining.status, 503);
  assert.equal(f.attached.length, 0);
  assert.equal(f.logs.filter((line) => line.includes("[WS] upgrade refused")).length, 2);
});

async function connect(port: number, protocols: string[] | undefined): Promise<WebSocket> {
  const socket = protocols === undefined
    ? new WebSocket(`ws://127.0.0.1:${port}/ws/twilio-media`)
    : new WebSocket(`ws://127.0.0.1:${port}/ws/twilio-media`, protocols);
  await new Promise<void>((resolve, reject) => {
    socket.onopen = () => resolve();
    socket.onerror = (event) =>
      reject(new Error(`WebSocket failed: ${(event as ErrorEvent).message}`));
  });
  return socket;
}

Deno.test("the media upgrade echoes audio.twilio.com only when offered and hands over the socket", async () => {
  const f = fixture();
  const ac = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
    f.handler,
  );
  try {
    const cases: Array<[string[] | undefined, string]> = [
      [["audio.twilio.com"], "audio.twilio.com"],
      [undefined, ""],
      [["other.example"], ""],
      [["other.example", "audio.twilio.com"], "audio.twilio.com"],
    ];
    for (const [offered, expected] of cases) {
      const socket = await connect(server.addr.port, offered);
      assert.equal(socket.protocol, expected, JSON.stringify(offered));
      // The stub acceptor closes the socket once open: wait for that close.
      const closed = await new Promise<CloseEvent>((resolve) => {
        socket.onclose = resolve;
      });
      assert.equal(closed.code, 1000);
    }
    assert.equal(f.attached.length, cases.length);
    assert.match(f.attached[0].remoteAddr, /^127\.0\.0\.1:\d+$/);
  } finally {
    ac.abort();
    await server.finished;
  }
});

Deno.test("the media upgrade accepts an offer written without spaces", async () => {
  // Deno's own protocol check splits on ", " only; RFC 6455 allows "a,b".
  const f = fixture();
  const ac = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
    f.handler,
  );
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  try {
    await conn.write(new TextEncoder().encode(
      "GET /ws/twilio-media HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
        "Sec-WebSocket-Protocol: x.example,audio.twilio.com\r\n\r\n",
    ));
    const buffer = new Uint8Array(4096);
    const head = new TextDecoder().decode(buffer.subarray(0, (await conn.read(buffer)) ?? 0));
    assert.match(head, /^HTTP\/1\.1 101/);
    assert.match(head, /^sec-websocket-protocol: audio\.twilio\.com\r$/im);
  } finally {
    conn.close();
    ac.abort();
    await server.finished;
  }
});

Deno.test("a throwing acceptor still gets a 101, then the socket is closed with 1011", async () => {
  const logs: string[] = [];
  const handler = createHandler({
    config: CONFIG,
    log: createLogger((line) => logs.push(line)),
    calls: {
      canAccept: () => true,
      attach: () => {
        throw new Error("no room");
      },
    },
    onStatusEvent: () => {},
    isDraining: () => false,
  });
  const ac = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
    handler,
  );
  try {
    const socket = await connect(server.addr.port, undefined);
    const closed = await new Promise<CloseEvent>((resolve) => {
      socket.onclose = resolve;
    });
    assert.equal(closed.code, 1011);
    assert.equal(logs.filter((line) => line.includes("[WS] attach failed")).length, 1);
  } finally {
    ac.abort();
    await server.finished;
  }
});

Deno.test("helpers rebuild the signed URL from public_url and parse the protocol offer", () => {
  assert.equal(
    rawPathAndQuery("http://127.0.0.1:8080/twiml?a=b%20c&d=e+f"),
    "/twiml?a=b%20c&d=e+f",
  );
  assert.equal(rawPathAndQuery("http://h"), "/");
  assert.equal(
    signedUrl("https://kav.example.com", "http://10.0.0.1:8080/webhook/stream_status/", {
      websocket: false,
    }),
    "https://kav.example.com/webhook/stream_status/",
  );
  assert.equal(
    signedUrl("https://kav.example.com/p", "http://x/ws/twilio-media", { websocket: true }),
    "wss://kav.example.com/p/ws/twilio-media",
  );
  assert.deepEqual(offeredProtocols(" a ,b,, audio.twilio.com "), ["a", "b", "audio.twilio.com"]);
  assert.deepEqual(offeredProtocols(null), []);
});

Deno.test("a real server answers 413 to an oversized body and keeps serving", async () => {
  const f = fixture();
  const ac = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
    f.handler,
  );
  const base = `http://127.0.0.1:${server.addr.port}`;
  try {
    const big = await fetch(`${base}/webhook/stream_status/`, {
      method: "POST",
      body: new Uint8Array(1024 * 1024).fill(0x61),
    });
    assert.equal(big.status, 413);
    await big.body?.cancel();
    const chunked = await fetch(`${base}/twiml`, {
      method: "POST",
      body: new ReadableStream<Uint8Array>({
        start(controller) {
          for (let i = 0; i < 8; i++) controller.enqueue(new Uint8Array(1024).fill(0x61));
          controller.close();
        },
      }),
    });
    assert.equal(chunked.status, 413);
    await chunked.body?.cancel();
    const health = await fetch(`${base}/healthz/`);
    assert.equal(health.status, 200, "trailing slash accepted on every route");
    assert.equal(await health.text(), "ok\n");
    const missing = await fetch(`${base}/nope`);
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
  } finally {
    ac.abort();
    await server.finished;
  }
});
