import assert from "node:assert/strict";
import { parseConfig } from "../src/config/load.ts";
import { createHandler } from "../src/http/handler.ts";
import type { HandlerDeps } from "../src/http/types.ts";
import { createLogger } from "../src/observe/log.ts";
import { HandOffBoard } from "../src/call/hand_off.ts";
import { computeSignature } from "../src/twilio/signature.ts";
import {
  busyTwiml,
  connectStreamTwiml,
  dialTwiml,
  escapeXml,
  hangupTwiml,
  MAX_PARAMETER_CHARS,
  parameterFits,
  toWebSocketUrl,
} from "../src/twilio/twiml.ts";

interface XmlElement {
  readonly name: string;
  readonly attrs: Readonly<Record<string, string>>;
  readonly children: XmlElement[];
  text: string;
}

const PROLOG = '<?xml version="1.0" encoding="UTF-8"?>';
const ENTITIES: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };

function unescape(text: string): string {
  assert.ok(!/&(?!(?:amp|lt|gt|quot|apos|#\d+);)/.test(text), `raw "&" in ${text}`);
  return text.replace(
    /&(amp|lt|gt|quot|apos|#\d+);/g,
    (_, e: string) => e.startsWith("#") ? String.fromCodePoint(Number(e.slice(1))) : ENTITIES[e],
  );
}

/** A strict little parser for the TwiML Kav writes: elements, attributes, text; nothing else. */
function parseXml(xml: string): XmlElement {
  assert.ok(xml.startsWith(PROLOG), "the document starts with the XML declaration");
  const token = /<(\/?)([A-Za-z]+)((?:\s+[A-Za-z]+="[^"<]*")*)\s*(\/?)>|([^<]+)/y;
  token.lastIndex = PROLOG.length;
  const root: XmlElement = { name: "#root", attrs: {}, children: [], text: "" };
  const stack: XmlElement[] = [root];
  while (token.lastIndex < xml.length) {
    const at = token.lastIndex;
    const match = token.exec(xml);
    assert.ok(match, `cannot parse XML at ${at}: ${xml.slice(at, at + 40)}`);
    const [, closing, name, attrText, selfClosing, text] = match;
    const top = stack[stack.length - 1];
    if (text !== undefined) {
      top.text += unescape(text);
    } else if (closing) {
      assert.equal(top.name, name, "closing tag matches");
      stack.pop();
    } else {
      const attrs: Record<string, string> = {};
      for (const [, key, value] of attrText.matchAll(/([A-Za-z]+)="([^"]*)"/g)) {
        assert.ok(!(key in attrs), `duplicate attribute ${key}`);
        attrs[key] = unescape(value);
      }
      const element: XmlElement = { name, attrs, children: [], text: "" };
      top.children.push(element);
      if (!selfClosing) stack.push(element);
    }
  }
  assert.equal(stack.length, 1, "every element is closed");
  assert.equal(root.children.length, 1, "one root element");
  assert.equal(root.text, "", "nothing outside the root");
  return root.children[0];
}

Deno.test("connectStreamTwiml() builds <Connect action><Stream url statusCallback> with parameters", () => {
  const xml = connectStreamTwiml({
    publicUrl: "https://kav.example.com",
    parameters: [["From", "+972501234567"], ["To", "+97231234567"], ["CallSid", "CA123"]],
  });
  const response = parseXml(xml);
  assert.equal(response.name, "Response");
  assert.equal(response.children.length, 1);
  const connect = response.children[0];
  assert.equal(connect.name, "Connect");
  assert.deepEqual(connect.attrs, { action: "https://kav.example.com/webhook/stream_ended" });
  assert.equal(connect.children.length, 1);
  const stream = connect.children[0];
  assert.equal(stream.name, "Stream");
  assert.deepEqual(stream.attrs, {
    url: "wss://kav.example.com/ws/twilio-media",
    statusCallback: "https://kav.example.com/webhook/stream_status",
  });
  assert.deepEqual(
    stream.children.map((p) => [p.name, p.attrs]),
    [
      ["Parameter", { name: "From", value: "+972501234567" }],
      ["Parameter", { name: "To", value: "+97231234567" }],
      ["Parameter", { name: "CallSid", value: "CA123" }],
    ],
  );
});

Deno.test("connectStreamTwiml() keeps a public URL path prefix and maps http to ws", () => {
  const stream = parseXml(connectStreamTwiml({
    publicUrl: "http://127.0.0.1:8080/kav",
    parameters: [],
  })).children[0].children[0];
  assert.equal(stream.attrs.url, "ws://127.0.0.1:8080/kav/ws/twilio-media");
  assert.equal(stream.attrs.statusCallback, "http://127.0.0.1:8080/kav/webhook/stream_status");
  assert.equal(stream.children.length, 0);
  assert.equal(toWebSocketUrl("HTTPS://a.example"), "wss://a.example");
});

Deno.test("connectStreamTwiml() escapes attribute values so they parse back unchanged", () => {
  const nasty = `a&b<c>d"e'f\tg\nh\ri שלום 😀`;
  const xml = connectStreamTwiml({
    publicUrl: "https://kav.example.com/x&y",
    parameters: [[`n"&<`, nasty]],
  });
  assert.ok(!xml.includes(nasty), "raw value not present");
  const stream = parseXml(xml).children[0].children[0];
  assert.equal(stream.attrs.url, "wss://kav.example.com/x&y/ws/twilio-media");
  assert.deepEqual(stream.children[0].attrs, { name: `n"&<`, value: nasty });
});

Deno.test("escapeXml() drops characters XML 1.0 cannot carry", () => {
  assert.equal(escapeXml("a\u0000b\u0007c\u001Fd\uFFFEe"), "abcde");
  assert.equal(escapeXml("lone \uD800 surrogate"), "lone  surrogate");
  assert.equal(escapeXml("pair 😀"), "pair 😀");
});

Deno.test("connectStreamTwiml() enforces Twilio's 500-character parameter limit", () => {
  const name = "From";
  const fits = "x".repeat(MAX_PARAMETER_CHARS - 1 - name.length);
  assert.ok(parameterFits(name, fits));
  assert.ok(!parameterFits(name, fits + "x"));
  const xml = connectStreamTwiml({ publicUrl: "https://a.example", parameters: [[name, fits]] });
  assert.equal(parseXml(xml).children[0].children[0].children[0].attrs.value, fits);
  assert.throws(
    () => connectStreamTwiml({ publicUrl: "https://a.example", parameters: [[name, fits + "x"]] }),
    (error) => error instanceof RangeError && error.message.includes('"From"'),
  );
});

Deno.test("busyTwiml() rejects the call as busy", () => {
  const response = parseXml(busyTwiml());
  assert.equal(response.name, "Response");
  assert.deepEqual(response.children.map((c) => [c.name, c.attrs]), [["Reject", {
    reason: "busy",
  }]]);
});

function handlerWith(state: { accept: boolean; draining: boolean }, logs: string[]) {
  const deps: HandlerDeps = {
    config: parseConfig(
      `[server]\npublic_url = "https://kav.example.com"\n[twilio]\nvalidate_signatures = false\n`,
      { env: {}, credentialsDir: null },
    ),
    log: createLogger((line) => logs.push(line)),
    calls: { canAccept: () => state.accept, attach: () => {} },
    onStatusEvent: () => {},
    isDraining: () => state.draining,
  };
  return createHandler(deps);
}

const INFO: Deno.ServeHandlerInfo = {
  remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 40000 },
  completed: Promise.resolve(),
};

function voiceRequest(params: Record<string, string>): Request {
  return new Request("http://127.0.0.1:8080/twiml", {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(params),
  });
}

Deno.test("POST /twiml answers text/xml with an exact Content-Length and no leading whitespace", async () => {
  const logs: string[] = [];
  const handler = handlerWith({ accept: true, draining: false }, logs);
  const response = await handler(
    voiceRequest({
      CallSid: "CA42",
      From: "+972500000001",
      To: "+97230000002",
      Direction: "inbound",
    }),
    INFO,
  );
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/xml; charset=utf-8");
  const bytes = new Uint8Array(await response.arrayBuffer());
  assert.equal(response.headers.get("content-length"), String(bytes.byteLength));
  const xml = new TextDecoder().decode(bytes);
  assert.ok(xml.startsWith("<?xml"), "no whitespace or BOM before <?xml");
  const stream = parseXml(xml).children[0].children[0];
  assert.deepEqual(
    stream.children.map((p) => [p.attrs.name, p.attrs.value]),
    [["From", "+972500000001"], ["To", "+97230000002"], ["CallSid", "CA42"]],
    "only From, To and CallSid are forwarded",
  );
  assert.equal(logs.filter((line) => line.includes("[TWIML] stream call=CA42")).length, 1);
  assert.ok(!logs.join("\n").includes("+972500000001"), "numbers are not logged");
});

Deno.test("POST /twiml leaves out a parameter over the limit and says so", async () => {
  const logs: string[] = [];
  const handler = handlerWith({ accept: true, draining: false }, logs);
  const response = await handler(voiceRequest({ CallSid: "CA7", From: "x".repeat(600) }), INFO);
  const stream = parseXml(await response.text()).children[0].children[0];
  assert.deepEqual(stream.children.map((p) => p.attrs.name), ["CallSid"]);
  assert.equal(logs.filter((line) => line.includes("parameter too long")).length, 1);
});

Deno.test("POST /twiml answers busy when over max_calls or draining", async () => {
  for (const state of [{ accept: false, draining: false }, { accept: true, draining: true }]) {
    const logs: string[] = [];
    const response = await handlerWith(state, logs)(voiceRequest({ CallSid: "CA9" }), INFO);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-type"), "text/xml; charset=utf-8");
    const xml = await response.text();
    assert.equal(xml, busyTwiml());
    const reason = state.draining ? "draining" : "max_calls";
    assert.equal(
      logs.filter((line) => line.includes(`[TWIML] busy call=CA9 reason=${reason}`)).length,
      1,
    );
  }
});

Deno.test("dialTwiml() dials a number as text and a SIP URI as <Sip>, reporting to /webhook/dial_ended", () => {
  const number = parseXml(
    dialTwiml({ publicUrl: "https://kav.example.com", target: "+97231234567" }),
  );
  assert.deepEqual(number.children.map((c) => [c.name, c.attrs]), [["Dial", {
    action: "https://kav.example.com/webhook/dial_ended",
    answerOnBridge: "true",
  }]]);
  assert.ok(
    dialTwiml({ publicUrl: "https://k", target: "+97231234567" }).includes(
      ">+97231234567</Dial>",
    ),
  );
  const sip = dialTwiml({ publicUrl: "https://k", target: "sip:a&b@pbx.example.com" });
  assert.ok(sip.includes("<Sip>sip:a&amp;b@pbx.example.com</Sip></Dial>"), sip);
  assert.ok(sip.startsWith("<?xml"));
  assert.deepEqual(parseXml(hangupTwiml()).children.map((c) => c.name), ["Hangup"]);
});

function actionRequest(path: string, params: Record<string, string>): Request {
  return new Request(`http://127.0.0.1:8080${path}`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(params),
  });
}

Deno.test("POST /webhook/stream_ended answers a transferred call's <Dial> and a hung-up one's <Hangup/> from memory, others 204", async () => {
  const board = new HandOffBoard();
  board.set("CA_T", {
    action: { kind: "transfer", department: "sales", target: "+97231234567" },
    carry: "{}",
  });
  board.set("CA_H", { action: { kind: "hangup" }, carry: "{}" });
  const dialled: Record<string, string>[] = [];
  const handler = createHandler({
    config: parseConfig(
      `[server]\npublic_url = "https://kav.example.com"\n[twilio]\nvalidate_signatures = false\n`,
      { env: {}, credentialsDir: null },
    ),
    log: createLogger(() => {}),
    calls: { canAccept: () => true, attach: () => {} },
    onStatusEvent: () => {},
    isDraining: () => false,
    callControl: board,
    onDialEnded: (params) => void dialled.push({ ...params }),
  });
  const transfer = await handler(actionRequest("/webhook/stream_ended", { CallSid: "CA_T" }), INFO);
  assert.equal(transfer.status, 200);
  assert.equal(transfer.headers.get("content-type"), "text/xml; charset=utf-8");
  const text = await transfer.text();
  assert.equal(
    transfer.headers.get("content-length"),
    String(new TextEncoder().encode(text).length),
  );
  assert.match(
    text,
    /<Dial action="https:\/\/kav.example.com\/webhook\/dial_ended"[^>]*>\+97231234567<\/Dial>/,
  );
  const hangup = await handler(actionRequest("/webhook/stream_ended/", { CallSid: "CA_H" }), INFO);
  assert.equal(await hangup.text(), hangupTwiml());
  const other = await handler(actionRequest("/webhook/stream_ended", { CallSid: "CA_X" }), INFO);
  assert.equal(other.status, 204);

  // The dial was not answered: the caller is connected back, the stream told why.
  const back = await handler(
    actionRequest("/webhook/dial_ended", {
      CallSid: "CA_T",
      From: "+972501234567",
      To: "+97231234567",
      DialCallStatus: "busy",
    }),
    INFO,
  );
  const xml = parseXml(await back.text());
  const stream = xml.children[0].children[0];
  assert.equal(stream.name, "Stream");
  assert.deepEqual(stream.children.map((p) => [p.attrs.name, p.attrs.value]), [
    ["From", "+972501234567"],
    ["To", "+97231234567"],
    ["CallSid", "CA_T"],
    ["KavDialStatus", "busy"],
  ]);
  assert.deepEqual(board.takeResume("CA_T"), {
    department: "sales",
    dialStatus: "busy",
    carry: "{}",
  });
  // A completed dial ends the call; the outcome is handed on off the response path.
  const done = await handler(
    actionRequest("/webhook/dial_ended", { CallSid: "CA_T", DialCallStatus: "completed" }),
    INFO,
  );
  assert.equal(await done.text(), hangupTwiml());
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(dialled.map((p) => p.DialCallStatus), ["busy", "completed"]);
});

Deno.test("POST /webhook/dial_ended needs a valid signature", async () => {
  const handler = createHandler({
    config: parseConfig(`[server]\npublic_url = "https://kav.example.com"\n`, {
      env: { TWILIO_AUTH_TOKEN: "token" },
      credentialsDir: null,
    }),
    log: createLogger(() => {}),
    calls: { canAccept: () => true, attach: () => {} },
    onStatusEvent: () => {},
    isDraining: () => false,
    callControl: new HandOffBoard(),
  });
  const params = { CallSid: "CA1", DialCallStatus: "no-answer" };
  const bad = await handler(actionRequest("/webhook/dial_ended", params), INFO);
  assert.equal(bad.status, 403);
  const signature = computeSignature("token", {
    url: "https://kav.example.com/webhook/dial_ended",
    params: Object.entries(params),
  });
  const good = await handler(
    new Request("http://127.0.0.1:8080/webhook/dial_ended", {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": signature,
      },
      body: new URLSearchParams(params),
    }),
    INFO,
  );
  assert.equal(good.status, 200);
});

Deno.test("HandOffBoard forgets entries after their time and past its size", () => {
  let now = 0;
  const board = new HandOffBoard({ ttlMs: 1000, maxEntries: 2, now: () => now });
  const hangup = { action: { kind: "hangup" as const }, carry: "" };
  board.set("A", hangup);
  board.set("B", hangup);
  board.set("C", hangup);
  assert.equal(board.size, 2);
  assert.equal(board.action("A"), null, "the oldest went first");
  now = 1500;
  assert.equal(board.action("B"), null, "expired");
  assert.equal(board.size, 1);
});
