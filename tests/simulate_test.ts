import assert from "node:assert/strict";
import { parseConfig } from "../src/config/load.ts";
import { runKav } from "../src/kav.ts";
import { createLogger } from "../src/observe/log.ts";
import { fixtureLines, simulate } from "../tools/twilio/simulation.ts";
import { parseTwiml } from "../tools/twilio/http.ts";
import { formatReport, parseSimulateArgs, reportJson } from "../scripts/simulate.ts";
import { MsHistogram } from "../tools/stats.ts";
import { sandboxToml, startProviderServers } from "../tools/sandbox/sandbox.ts";
import { actsReply } from "../tools/sandbox/acts.ts";
import { startToolServer } from "../tools/sandbox/tool_server.ts";
import { devToml } from "../scripts/dev.ts";
import { simulateActs } from "../tools/twilio/acts.ts";

const TOKEN = "simulate-test-token";

/** Kav with signatures on (the sandbox helper has no auth token), on a free port. */
async function signedKav() {
  const servers = await startProviderServers();
  const dir = await Deno.makeTempDir({ prefix: "kav-simulate-" });
  const lines: string[] = [];
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const baseUrl = `http://127.0.0.1:${port}`;
  const toml = sandboxToml(servers, {
    listen: `127.0.0.1:${port}`,
    publicUrl: baseUrl,
    storagePath: `${dir}/kav.db`,
  }).replace("validate_signatures = false", "validate_signatures = true");
  const config = parseConfig(toml, { env: { TWILIO_AUTH_TOKEN: TOKEN }, credentialsDir: null });
  const stop = new AbortController();
  const listening = Promise.withResolvers<void>();
  const running = runKav({
    config,
    log: createLogger((line) => lines.push(line)),
    signal: stop.signal,
    onListen: () => listening.resolve(),
  });
  running.catch((error) => listening.reject(error));
  await listening.promise;
  return {
    baseUrl,
    lines,
    async stop() {
      stop.abort();
      await running;
      await servers.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("simulate() places signed calls that get their greeting and answers", async () => {
  const kav = await signedKav();
  try {
    const report = await simulate({
      target: { baseUrl: kav.baseUrl, publicUrl: kav.baseUrl, authToken: TOKEN },
      calls: 2,
      rampMs: 200,
      turns: 1,
      minDurationMs: 0,
      lines: fixtureLines(),
    });
    const o = report.overall;
    assert.deepEqual(o.errorKinds, []);
    assert.equal(o.calls, 2);
    assert.equal(o.ok, 2);
    assert.equal(o.greetings, 2);
    assert.equal(o.turnsAnswered, 2);
    for (const call of report.calls) {
      assert.ok(call.greeting.frames > 0, "greeting audio arrived");
      assert.ok(call.turns[0].marks.every((m) => /^a\d+_\d+$/.test(m)), "answer marks");
      assert.ok(call.turns[0].answerFrames > 0, "answer audio arrived");
      assert.ok(call.interArrivalMs.count > 0, "inter-arrival measured");
      assert.equal(call.framesReceived, call.greeting.frames + call.turns[0].answerFrames);
    }
    // Twilio's stream status callbacks were signed and accepted (Kav logs refusals).
    assert.ok(!kav.lines.some((l) => l.includes("bad signature")), "no signature refused");
    const json = JSON.parse(reportJson(report));
    assert.equal(json.calls.length, 2);
    assert.match(formatReport(report), /2 ok, 2 greetings received, 2\/2 turns/);
  } finally {
    await kav.stop();
  }
});

Deno.test("simulate() reports a call Kav refuses for its signature as an error", async () => {
  const kav = await signedKav();
  try {
    const report = await simulate({
      target: { baseUrl: kav.baseUrl, publicUrl: kav.baseUrl, authToken: "wrong-token" },
      calls: 1,
      rampMs: 0,
      turns: 1,
      minDurationMs: 0,
      lines: fixtureLines(),
    });
    assert.equal(report.overall.ok, 0);
    assert.equal(report.calls[0].greeting.received, false);
    assert.match(report.calls[0].errors[0], /Cannot get TwiML .* HTTP 403/);
    assert.ok(kav.lines.some((l) => l.includes("bad signature")));
  } finally {
    await kav.stop();
  }
});

Deno.test("parseSimulateArgs() reads options, the env token and rejects bad values", () => {
  const args = parseSimulateArgs(["--calls", "5", "--turns=2", "--json", "--url", "http://h:1/"], {
    TWILIO_AUTH_TOKEN: "t",
  });
  assert.notEqual(args, "help");
  if (args === "help") return;
  assert.equal(args.calls, 5);
  assert.equal(args.turns, 2);
  assert.equal(args.json, true);
  assert.equal(args.authToken, "t");
  assert.equal(args.url, "http://h:1/");
  assert.equal(parseSimulateArgs(["--help"]), "help");
  assert.throws(() => parseSimulateArgs(["--calls", "1.5"]), RangeError);
  assert.throws(() => parseSimulateArgs(["--calls", "0"]), RangeError);
  assert.throws(() => parseSimulateArgs(["--bogus"]), RangeError);
  assert.throws(() => parseSimulateArgs(["--url", "ftp://x"]), TypeError);
});

Deno.test("parseTwiml() reads Kav's Connect/Stream answer and a Reject", () => {
  const answer = parseTwiml(
    `<?xml version="1.0" encoding="UTF-8"?><Response><Connect action="https://k.example/webhook/stream_ended">` +
      `<Stream url="wss://k.example/ws/twilio-media" statusCallback="https://k.example/webhook/stream_status">` +
      `<Parameter name="From" value="+972&amp;1"/><Parameter name="CallSid" value="CA1"/></Stream></Connect></Response>`,
  );
  assert.deepEqual(answer, {
    kind: "stream",
    streamUrl: "wss://k.example/ws/twilio-media",
    statusCallback: "https://k.example/webhook/stream_status",
    action: "https://k.example/webhook/stream_ended",
    parameters: { From: "+972&1", CallSid: "CA1" },
  });
  assert.deepEqual(parseTwiml(`<Response><Reject reason="busy"/></Response>`), { kind: "busy" });
  assert.throws(() => parseTwiml("<Response/>"), TypeError);
});

Deno.test("MsHistogram gives percentiles, merges and survives JSON", () => {
  const h = new MsHistogram();
  for (let i = 1; i <= 100; i++) h.add(i / 10); // 0.1 .. 10.0 ms
  assert.equal(h.count, 100);
  assert.equal(h.quantile(0.5), 5.1);
  assert.equal(h.quantile(0.99), 10);
  assert.equal(h.countAbove(9), 10);
  const back = MsHistogram.fromJSON(JSON.parse(JSON.stringify(h.toJSON())));
  back.add(300); // past the range: kept as the maximum
  h.merge(back);
  assert.equal(h.count, 201);
  assert.equal(h.max, 300);
  assert.equal(h.quantile(1), 300);
});

Deno.test("simulate --keys: a tool call on the caller's line, then keypad 0 transfers, the dial is not answered and the caller is connected back, as with deno task dev", async () => {
  const servers = await startProviderServers({ llm: { reply: actsReply } });
  const crm = await startToolServer({
    behaviours: { lookup_customer: { kind: "json", body: { name: "Dana Levi" } } },
  });
  const dir = await Deno.makeTempDir({ prefix: "kav-simulate-acts-" });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const config = parseConfig(
    devToml({
      port,
      dir,
      real: { google: false, openai: false },
      servers,
      crmUrl: crm.baseUrl,
      // A free port: 9090 may be another Kav's console on this machine.
      adminPort: 0,
    }),
    { env: {}, credentialsDir: null },
  );
  const stop = new AbortController();
  const listening = Promise.withResolvers<void>();
  const logs: string[] = [];
  const running = runKav({
    config,
    log: createLogger((line) => logs.push(line)),
    signal: stop.signal,
    onListen: () => listening.resolve(),
  });
  running.catch((error) => listening.reject(error));
  try {
    await listening.promise;
    const printed: string[] = [];
    const baseUrl = `http://127.0.0.1:${port}`;
    const ok = await simulateActs({
      target: { baseUrl, publicUrl: baseUrl, authToken: null },
      lines: fixtureLines(),
      turns: 1,
      keys: "0",
      dialStatus: "no-answer",
      answerTimeoutMs: 15_000,
      print: (line) => printed.push(line),
    });
    assert.ok(ok, printed.join("\n") + "\n" + logs.join("\n"));
    assert.ok(crm.requestsFor("lookup_customer").length >= 1, "the caller's line called a tool");
    const text = printed.join("\n");
    assert.match(text, /<Connect action> answered <Dial> to \+15005550006/);
    assert.match(text, /connected the caller back/);
    assert.match(text, /the agent spoke first/);
  } finally {
    stop.abort();
    await running.catch(() => {});
    await servers.close();
    await crm.close();
    await Deno.remove(dir, { recursive: true });
  }
});
