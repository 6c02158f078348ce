/**
 * Property-based fuzzing of hostile Twilio input (issue 7, item 2): the inbound parser, then a live
 * Kav (sandbox: real HTTP server, real WebSockets, real providers' clients) fed random and mutated
 * messages: wrong types, missing fields, strings for numbers, huge and empty payloads, odd base64,
 * reordered events, duplicate start, stop mid-stream, binary frames. Nothing may crash or reject
 * unhandled; every call continues or closes with a logged reason and a record.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { renderMetrics } from "../src/observe/metrics.ts";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import { openCallReader } from "../src/store/read.ts";
import { type InboundMessage, type MalformedReason, parseInbound } from "../src/twilio/protocol.ts";
import { startSandbox } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

const REASONS: ReadonlySet<MalformedReason> = new Set<MalformedReason>([
  "invalid_json",
  "invalid_shape",
  "unknown_event",
  "bad_base64",
  "binary",
  "oversized",
  "before_start",
  "duplicate_start",
  "wrong_stream_sid",
]);

/** Placeholders the live test swaps for the connection's own sids (so junk gets past the sid check). */
const SELF_MZ = "MZ__SELF__";
const SELF_CA = "CA__SELF__";

// ---- Arbitraries ------------------------------------------------------------------------------

const counter = fc.nat({ max: 1_000_000 }).map(String);
const base64Payload = fc.uint8Array({ maxLength: 480 }).map((bytes) => bytes.toBase64());
const oddBase64 = fc.oneof(
  fc.constantFrom("", "=", "====", "A", "AAA", "AA=A", "data:audio/x-mulaw;base64,AAAA", "%%%"),
  fc.stringMatching(/^[A-Za-z0-9+/=_\- \n%.]{0,64}$/),
  base64Payload.map((s) => s.replace(/=+$/, "")),
  base64Payload.map((s) => s.replaceAll("+", "-").replaceAll("/", "_")),
  base64Payload.map((s) => ` ${s}\n`),
  base64Payload.map((s) => s + s),
  fc.nat({ max: 60_000 }).map((n) => "A".repeat(n)),
);
const sidArb = fc.oneof(
  fc.constantFrom(SELF_MZ, SELF_MZ, SELF_MZ, "", "MZ-other"),
  fc.string({ maxLength: 70 }),
);
const callSidArb = fc.oneof(fc.constantFrom(SELF_CA, SELF_CA, "", "CA-other"), fc.string());

/** JSON values chosen to break naive code: bad toString, huge, numeric strings, special numbers. */
const weirdValue: fc.Arbitrary<Json> = fc.oneof(
  fc.jsonValue() as fc.Arbitrary<Json>,
  fc.constantFrom<Json>(
    { toString: 1 },
    { valueOf: {}, toString: {} },
    [{ toString: 1 }],
    "",
    -1,
    1.5,
    1e308,
    "1e3",
    "0x10",
    " 1",
    "99999999999999999999",
    "x".repeat(3000),
    [],
    {},
  ),
);

function validMessage(): fc.Arbitrary<JsonObject> {
  return fc.oneof(
    fc.constant<JsonObject>({ event: "connected", protocol: "Call", version: "1.0.0" }),
    fc.record({
      event: fc.constant("start"),
      sequenceNumber: counter,
      streamSid: sidArb,
      start: fc.record({
        accountSid: fc.constant("AC" + "0".repeat(32)),
        streamSid: sidArb,
        callSid: callSidArb,
        tracks: fc.constant<Json>(["inbound"]),
        mediaFormat: fc.constant<Json>({
          encoding: "audio/x-mulaw",
          sampleRate: 8000,
          channels: 1,
        }),
        customParameters: fc.dictionary(fc.string({ maxLength: 10 }), fc.string({ maxLength: 30 })),
      }),
    }) as fc.Arbitrary<JsonObject>,
    fc.record({
      event: fc.constant("media"),
      sequenceNumber: counter,
      streamSid: sidArb,
      media: fc.record({
        track: fc.constant("inbound"),
        chunk: counter,
        timestamp: counter,
        payload: fc.oneof(base64Payload, oddBase64),
      }),
    }) as fc.Arbitrary<JsonObject>,
    fc.record({
      event: fc.constant("dtmf"),
      sequenceNumber: counter,
      streamSid: sidArb,
      dtmf: fc.record({
        track: fc.constant("inbound_track"),
        digit: fc.oneof(fc.constantFrom("1", "#", "*"), fc.string({ maxLength: 5 })),
      }),
    }) as fc.Arbitrary<JsonObject>,
    fc.record({
      event: fc.constant("mark"),
      sequenceNumber: counter,
      streamSid: sidArb,
      mark: fc.record({ name: fc.oneof(fc.constant("greeting_end"), fc.string()) }),
    }) as fc.Arbitrary<JsonObject>,
    fc.record({
      event: fc.constant("stop"),
      sequenceNumber: counter,
      streamSid: sidArb,
      stop: fc.constant<Json>({ accountSid: "AC" + "0".repeat(32), callSid: SELF_CA }),
    }) as fc.Arbitrary<JsonObject>,
  );
}

type Mutation =
  | { readonly kind: "delete"; readonly at: number }
  | { readonly kind: "replace"; readonly at: number; readonly value: Json }
  | { readonly kind: "retype"; readonly at: number }
  | { readonly kind: "extra"; readonly at: number; readonly key: string; readonly value: Json }
  | { readonly kind: "rename_event"; readonly name: string };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("delete" as const), at: fc.nat() }),
  fc.record({ kind: fc.constant("replace" as const), at: fc.nat(), value: weirdValue }),
  fc.record({ kind: fc.constant("retype" as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant("extra" as const),
    at: fc.nat(),
    key: fc.oneof(fc.constantFrom("__proto__", "constructor", "toString", "event"), fc.string()),
    value: weirdValue,
  }),
  fc.record({
    kind: fc.constant("rename_event" as const),
    name: fc.oneof(fc.constantFrom("Media", "START", "clear", "hangup", ""), fc.string()),
  }),
);

/** Every [container, key] of `root`'s nested values (the root itself excluded). */
function slots(root: Json): Array<[JsonObject | Json[], string | number]> {
  const out: Array<[JsonObject | Json[], string | number]> = [];
  const walk = (value: Json) => {
    if (Array.isArray(value)) {
      value.forEach((child, i) => {
        out.push([value, i]);
        walk(child);
      });
    } else if (value !== null && typeof value === "object") {
      for (const key of Object.keys(value)) {
        out.push([value, key]);
        walk(value[key]);
      }
    }
  };
  walk(root);
  return out;
}

function retype(value: Json): Json {
  if (typeof value === "string") return /^\d+$/.test(value) ? Number(value) : [value];
  if (typeof value === "number") return String(value);
  if (typeof value === "boolean") return value ? "true" : 0;
  if (value === null) return "null";
  return Array.isArray(value) ? { 0: value[0] ?? null } : Object.values(value);
}

function mutate(message: JsonObject, mutations: readonly Mutation[]): Json {
  const root = structuredClone(message) as JsonObject;
  for (const m of mutations) {
    if (m.kind === "rename_event") {
      root.event = m.name;
      continue;
    }
    const all = slots(root);
    if (all.length === 0) continue;
    const [container, key] = all[m.at % all.length];
    const set = (value: Json) => ((container as Record<string | number, Json>)[key] = value);
    const get = () => (container as Record<string | number, Json>)[key];
    switch (m.kind) {
      case "delete":
        if (Array.isArray(container)) container.splice(key as number, 1);
        else delete container[key as string];
        break;
      case "replace":
        set(structuredClone(m.value));
        break;
      case "retype":
        set(retype(get()));
        break;
      case "extra": {
        const target = get();
        if (target !== null && typeof target === "object" && !Array.isArray(target)) {
          Object.defineProperty(target, m.key, {
            value: structuredClone(m.value),
            enumerable: true,
            writable: true,
            configurable: true,
          });
        } else {
          Object.defineProperty(root, m.key, {
            value: structuredClone(m.value),
            enumerable: true,
            writable: true,
            configurable: true,
          });
        }
        break;
      }
    }
  }
  return root;
}

type TextEdit =
  | { readonly kind: "truncate"; readonly at: number }
  | { readonly kind: "insert"; readonly at: number; readonly text: string }
  | { readonly kind: "wrap"; readonly before: string; readonly after: string }
  | { readonly kind: "duplicate_key" };

const textEdit: fc.Arbitrary<TextEdit> = fc.oneof(
  fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant("insert" as const),
    at: fc.nat(),
    text: fc.string({ minLength: 1, maxLength: 3, unit: "binary" }),
  }),
  fc.record({
    kind: fc.constant("wrap" as const),
    before: fc.constantFrom("\uFEFF", " ", "[", "null", '{"a":', ""),
    after: fc.constantFrom("", "]", "}", " trailing", "\u0000"),
  }),
  fc.constant({ kind: "duplicate_key" as const }),
);

function editText(text: string, edits: readonly TextEdit[]): string {
  let out = text;
  for (const e of edits) {
    switch (e.kind) {
      case "truncate":
        out = out.slice(0, e.at % (out.length + 1));
        break;
      case "insert": {
        const at = e.at % (out.length + 1);
        out = out.slice(0, at) + e.text + out.slice(at);
        break;
      }
      case "wrap":
        out = e.before + out + e.after;
        break;
      case "duplicate_key":
        out = out.replace("{", '{"event":"stop",');
        break;
    }
  }
  return out;
}

/** One inbound text message: valid, structurally mutated, textually mutated or pure junk. */
const inboundText: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: validMessage().map((m) => JSON.stringify(m)) },
  {
    weight: 6,
    arbitrary: fc.tuple(validMessage(), fc.array(mutation, { minLength: 1, maxLength: 3 }))
      .map(([m, ms]) => JSON.stringify(mutate(m, ms))),
  },
  {
    weight: 2,
    arbitrary: fc.tuple(validMessage(), fc.array(textEdit, { minLength: 1, maxLength: 2 }))
      .map(([m, edits]) => editText(JSON.stringify(m), edits)),
  },
  { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 200 }) },
  { weight: 1, arbitrary: fc.json() },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      "",
      "{}",
      "null",
      "[]",
      '"media"',
      "1e400",
      '{"event":"media"}',
      "[".repeat(20_000) + "]".repeat(20_000),
      '{"a":'.repeat(5000) + "1" + "}".repeat(5000),
    ),
  },
);

// ---- Parser ------------------------------------------------------------------------------------

function assertWellFormed(msg: InboundMessage): void {
  if (msg.event === "connected") {
    assert.equal(typeof msg.protocol, "string");
    return;
  }
  assert.ok(Number.isSafeInteger(msg.sequenceNumber) && msg.sequenceNumber >= 0);
  assert.equal(typeof msg.streamSid, "string");
  switch (msg.event) {
    case "start":
      assert.equal(typeof msg.start.callSid, "string");
      for (const value of Object.values(msg.start.customParameters)) {
        assert.equal(typeof value, "string");
      }
      return;
    case "media":
      assert.ok(msg.media.payload instanceof Uint8Array);
      assert.ok(Number.isSafeInteger(msg.media.chunk) && Number.isSafeInteger(msg.media.timestamp));
      return;
    case "dtmf":
      assert.equal(typeof msg.dtmf.digit, "string");
      return;
    case "mark":
      assert.equal(typeof msg.mark.name, "string");
      return;
    case "stop":
      assert.equal(typeof msg.stop.callSid, "string");
      return;
    default: {
      const never: never = msg;
      throw new TypeError(`Unexpected message ${JSON.stringify(never)}`);
    }
  }
}

Deno.test("parseInbound() never throws on 10 000 random and mutated messages and bounds its errors", () => {
  let rejected = 0;
  fc.assert(
    fc.property(inboundText, (text) => {
      const result = parseInbound(text);
      if (result.ok) {
        assertWellFormed(result.msg);
      } else {
        rejected++;
        assert.ok(REASONS.has(result.reason), result.reason);
        assert.equal(typeof result.error, "string");
        // Error text goes into log lines: bounded whatever the input's size.
        assert.ok(result.error.length <= 200, `error of ${result.error.length} chars`);
      }
    }),
    { numRuns: 10_000 },
  );
  assert.ok(rejected > 1000, `the generator produces junk (${rejected} rejected)`);
});

Deno.test("parseInbound() accepts every well-formed message and decodes its payload exactly", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 480 }),
      fc.nat({ max: 1e9 }),
      (payload, n) => {
        const text = JSON.stringify({
          event: "media",
          sequenceNumber: String(n),
          streamSid: "MZ1",
          media: {
            track: "inbound",
            chunk: String(n),
            timestamp: String(n * 20),
            payload: payload.toBase64(),
          },
        });
        const result = parseInbound(text);
        assert.ok(result.ok);
        assert.equal(result.msg.event, "media");
        if (result.msg.event === "media") {
          assert.deepEqual(result.msg.media.payload, payload);
          assert.equal(result.msg.sequenceNumber, n);
        }
      },
    ),
    { numRuns: 1000 },
  );
});

// ---- Live session ------------------------------------------------------------------------------

type Op =
  | { readonly kind: "start" }
  | { readonly kind: "media"; readonly bytes: Uint8Array }
  | { readonly kind: "text"; readonly text: string }
  | { readonly kind: "binary"; readonly bytes: Uint8Array }
  | { readonly kind: "huge"; readonly size: number }
  | { readonly kind: "stop" }
  | { readonly kind: "dtmf"; readonly digit: string }
  | { readonly kind: "mark"; readonly name: string }
  | { readonly kind: "pause"; readonly ms: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 2, arbitrary: fc.constant<Op>({ kind: "start" }) },
  {
    weight: 6,
    arbitrary: fc.uint8Array({ minLength: 0, maxLength: 320 }).map((bytes) => ({
      kind: "media" as const,
      bytes,
    })),
  },
  { weight: 10, arbitrary: inboundText.map((text) => ({ kind: "text" as const, text })) },
  {
    weight: 1,
    arbitrary: fc.uint8Array({ maxLength: 2000 }).map((bytes) => ({
      kind: "binary" as const,
      bytes,
    })),
  },
  {
    weight: 1,
    arbitrary: fc.integer({ min: 65_537, max: 200_000 }).map((size) => ({
      kind: "huge" as const,
      size,
    })),
  },
  {
    weight: 1,
    arbitrary: fc.oneof(fc.constantFrom("1", "#", "Z", ""), fc.string())
      .map((digit) => ({ kind: "dtmf" as const, digit })),
  },
  {
    weight: 1,
    arbitrary: fc.oneof(fc.constant("greeting_end"), fc.string({ maxLength: 300 }))
      .map((name) => ({ kind: "mark" as const, name })),
  },
  {
    weight: 1,
    arbitrary: fc.integer({ min: 0, max: 30 }).map((ms) => ({ kind: "pause" as const, ms })),
  },
);

/** A text op that is a valid `stop` for the connection's own stream ends it early: kept rare. */
function isSelfStop(o: Op): boolean {
  if (o.kind !== "text") return false;
  try {
    const parsed = parseInbound(o.text);
    return parsed.ok && parsed.msg.event === "stop" && parsed.msg.streamSid === SELF_MZ;
  } catch {
    return false; // the parser's own property is checked above; here only the live effect counts
  }
}

/** Ops of one connection: any order (reordered events, duplicate start), at most one stop. */
const connectionOps: fc.Arbitrary<Op[]> = fc.tuple(
  fc.array(op.filter((o) => !isSelfStop(o)), { minLength: 10, maxLength: 150 }),
  fc.option(fc.nat(), { freq: 3 }),
).map(([ops, stopAt]) => {
  if (stopAt === null) return ops;
  const at = stopAt % (ops.length + 1);
  return [...ops.slice(0, at), { kind: "stop" as const }, ...ops.slice(at)];
});

function send(client: TwilioClient, o: Op): void {
  switch (o.kind) {
    case "start":
      return client.sendStart();
    case "media":
      return client.sendMedia(o.bytes);
    case "text":
      return client.sendRaw(
        o.text.replaceAll(SELF_MZ, client.streamSid).replaceAll(SELF_CA, client.callSid),
      );
    case "binary":
      return client.sendRaw(o.bytes);
    case "huge":
      return client.sendRaw(
        `{"event":"media","streamSid":"${client.streamSid}","x":"${"x".repeat(o.size)}"}`,
      );
    case "stop":
      return client.sendStop();
    case "dtmf":
      return client.sendRaw(JSON.stringify({
        event: "dtmf",
        sequenceNumber: "7",
        streamSid: client.streamSid,
        dtmf: { track: "inbound_track", digit: o.digit },
      }));
    case "mark":
      return client.sendRaw(JSON.stringify({
        event: "mark",
        sequenceNumber: "8",
        streamSid: client.streamSid,
        mark: { name: o.name },
      }));
    case "pause":
      return;
    default: {
      const never: never = o;
      throw new TypeError(`Unexpected op ${JSON.stringify(never)}`);
    }
  }
}

function metric(name: string, labels: Record<string, string> = {}): number {
  return sampleValue(parsePrometheusText(renderMetrics()), name, labels) ?? 0;
}

function metricSum(name: string): number {
  const family = parsePrometheusText(renderMetrics()).get(name);
  return family === undefined ? 0 : family.samples.reduce((sum, s) => sum + s.value, 0);
}

const LIVE_CONNECTIONS = 100;

Deno.test({
  name:
    "a live Kav survives 100 connections of random and mutated Twilio messages, recording every call",
}, async () => {
  const escaped: string[] = [];
  const onRejection = (event: PromiseRejectionEvent) => {
    escaped.push(`rejection: ${String(event.reason)}`);
  };
  const onError = (event: ErrorEvent) => {
    escaped.push(`error: ${String(event.error ?? event.message)}`);
  };
  globalThis.addEventListener("unhandledrejection", onRejection);
  globalThis.addEventListener("error", onError);
  const unhandledBefore = metricSum("kav_unhandled_errors_total");
  const malformedBefore = metricSum("kav_malformed_messages_total");
  const sandbox = await startSandbox({});
  const since = Date.now();
  let sent = 0;
  let stopped = false;
  try {
    await fc.assert(
      fc.asyncProperty(connectionOps, async (ops) => {
        const firstLine = sandbox.lines.length;
        const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
        try {
          let i = 0;
          for (const o of ops) {
            if (client.socket.readyState !== WebSocket.OPEN) break;
            send(client, o);
            sent++;
            // Yield now and then so the server works through the burst as it arrives.
            if (o.kind === "pause" || ++i % 16 === 0) {
              await new Promise((resolve) => setTimeout(resolve, o.kind === "pause" ? o.ms : 0));
            }
          }
        } finally {
          await client.close();
        }
        // The session behind it ends (logged, recorded) before the next connection.
        const deadline = Date.now() + 10_000;
        while (metric("kav_active_calls") > 0) {
          if (Date.now() > deadline) throw new Error("Timed out waiting for the call to end");
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
        // Checked per connection too, so a failure shrinks to a minimal message sequence.
        const ends = sandbox.lines.slice(firstLine).filter((l) => l.includes(" ended outcome="));
        assert.equal(ends.length, 1, "the session logged its end");
        assert.match(ends[0], /outcome=(completed|interrupted) reason=/);
      }),
      { numRuns: LIVE_CONNECTIONS },
    );

    // Kav still serves, and a clean call after the fuzzing gets its greeting.
    const health = await fetch(`${sandbox.baseUrl}/healthz`);
    assert.equal(health.status, 200);
    await health.body?.cancel();
    const clean = await TwilioClient.connect({ url: sandbox.mediaUrl });
    clean.begin();
    await clean.waitForEcho("greeting_end", { timeoutMs: 20_000 });
    clean.sendStop();
    await clean.closed;

    // Every call has its end on disk (the store writes as it goes).
    const reader = openCallReader(sandbox.storagePath);
    try {
      const deadline = Date.now() + 15_000;
      let calls = reader.listCalls({ sinceMs: since - 1000 });
      while (calls.some((c) => c.outcome === null) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        calls = reader.listCalls({ sinceMs: since - 1000 });
      }
      assert.ok(calls.length >= 2, `${calls.length} calls recorded`);
      for (const call of calls) {
        assert.notEqual(call.outcome, null, `call ${call.callSid} has an end record`);
        assert.notEqual(call.outcome, "error", `call ${call.callSid}: ${call.reason}`);
        assert.ok((call.reason ?? "") !== "", "with a reason");
      }
    } finally {
      reader.close();
    }
    await sandbox.stop();
    stopped = true;
    const lines = sandbox.lines;
    const accepted = lines.filter((l) => l.includes("[CALL] media socket accepted")).length;
    const ended = lines.filter((l) => /\[CALL\] call=\S+ ended outcome=/.test(l));
    assert.equal(accepted, LIVE_CONNECTIONS + 1, "every connection was accepted");
    assert.equal(ended.length, accepted, "every session logged its end");
    for (const line of ended) {
      assert.match(line, /outcome=(completed|interrupted) reason=/, line);
    }
    assert.equal(lines.filter((l) => l.includes("unhandled error")).length, 0);
    assert.equal(lines.filter((l) => l.includes("call failed")).length, 0);
    assert.ok(sent > LIVE_CONNECTIONS * 10, `${sent} messages sent`);
    assert.ok(metricSum("kav_malformed_messages_total") > malformedBefore, "junk was seen");
    assert.equal(metricSum("kav_unhandled_errors_total"), unhandledBefore);
    assert.deepEqual(escaped, []);
  } finally {
    if (!stopped) await sandbox.stop();
    globalThis.removeEventListener("unhandledrejection", onRejection);
    globalThis.removeEventListener("error", onError);
  }
});
