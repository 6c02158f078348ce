/**
 * Issue 17 (SPEC 8), end to end with the real Kav process on call workers: `max_calls` is one
 * count under a burst spread over the workers, one `/metrics` scrape sums every worker, and a
 * worker whose isolate is killed mid-call (the `KAV_TEST_HOOKS` route) takes only its own calls
 * down, recorded as errors, while the other worker's calls go on and new calls succeed; an agent's
 * transfer is answered, and a caller connected back resumes, on a worker other than the call's.
 */
import assert from "node:assert/strict";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import type { CallDetail } from "../src/store/read.ts";
import {
  fixtureClip,
  type KavProcess,
  runKavCli,
  sayAndWait,
  withKavProcess,
} from "./support/kav_process.ts";
import type { ProviderServers } from "../tools/sandbox/sandbox.ts";
import {
  followConnectAction,
  followDialAction,
  parseTwiml,
  TwilioClient,
} from "../tools/twilio/client.ts";

const TIMEOUT_MS = 30_000;
const HOOKS = { KAV_TEST_HOOKS: "1" };
/** Greeted calls wait silent for the test's next step: no idle timeout meanwhile. */
const SERVER = "[server]\nidle_media_timeout_s = 600\n";

function withKav(
  extra: string,
  body: (kav: KavProcess, servers: ProviderServers) => Promise<void>,
  env: Record<string, string> = {},
): Promise<void> {
  return withKavProcess({ extra, env }, body);
}

async function scrape(baseUrl: string): Promise<(name: string, labels?: object) => number> {
  const response = await fetch(`${baseUrl}/metrics`);
  assert.equal(response.status, 200);
  const families = parsePrometheusText(await response.text());
  return (name, labels = {}) => sampleValue(families, name, labels as Record<string, string>) ?? 0;
}

/** The call worker each accepted connection went to, by `conn-N`, from Kav's log. */
function workersByConn(kav: KavProcess): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of kav.lines) {
    const m = /\[CALL\] media socket accepted conn=(conn-\d+) .*worker=(\d+)/.exec(line);
    if (m) out.set(m[1], Number(m[2]));
  }
  return out;
}

/** The worker of every media socket so far: accepted, refused at attach or at the upgrade. */
function workersOfBurst(kav: KavProcess): number[] {
  const out: number[] = [];
  for (const line of kav.lines) {
    if (!/media socket (accepted|refused)|upgrade refused/.test(line)) continue;
    const m = /worker=(\d+)/.exec(line);
    assert.ok(m, `no worker in ${line}`);
    out.push(Number(m[1]));
  }
  return out;
}

/** The call worker a CallSid lives on (its `started conn=` line, then that connection's worker). */
async function workerOf(kav: KavProcess, callSid: string): Promise<number> {
  const started = await kav.waitForLine(new RegExp(`call=${callSid} started conn=(conn-\\d+)`), {
    timeoutMs: TIMEOUT_MS,
  });
  const conn = /conn=(conn-\d+)/.exec(started)![1];
  const worker = workersByConn(kav).get(conn);
  assert.ok(worker !== undefined, `no worker for ${conn}`);
  return worker;
}

/** Opens a call and waits for its greeting to have played. */
async function greetedCall(kav: KavProcess): Promise<TwilioClient> {
  const client = await TwilioClient.connect({ url: kav.mediaUrl });
  client.begin();
  await client.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
  return client;
}

/** Places calls until every one of `workers` holds at least one; returns them by worker. */
async function callsOnEveryWorker(
  kav: KavProcess,
  workers: number,
): Promise<Map<number, TwilioClient[]>> {
  const byWorker = new Map<number, TwilioClient[]>();
  // The kernel spreads connections by a hash: 8 rounds of 3 leave a worker empty once in ~10^7.
  for (let round = 0; round < 8 && byWorker.size < workers; round++) {
    for (const client of await Promise.all([1, 2, 3].map(() => greetedCall(kav)))) {
      const worker = await workerOf(kav, client.callSid);
      byWorker.set(worker, [...(byWorker.get(worker) ?? []), client]);
    }
  }
  assert.equal(byWorker.size, workers, `calls reached workers ${[...byWorker.keys()]}`);
  return byWorker;
}

async function hangUp(clients: Iterable<TwilioClient>): Promise<void> {
  for (const client of clients) {
    if (client.socket.readyState === WebSocket.OPEN) client.sendStop();
    await client.close();
  }
}

async function callDetail(kav: KavProcess, sid: string): Promise<CallDetail> {
  const shown = await runKavCli(kav.configPath, ["call", sid, "--json"]);
  assert.equal(shown.code, 0, shown.stderr);
  return JSON.parse(shown.stdout) as CallDetail;
}

for (const workers of [2, 4]) {
  Deno.test(`a burst of max_calls + 10 admits exactly max_calls (workers=${workers})`, async () => {
    const maxCalls = 6;
    await withKav(`[server]\nworkers = ${workers}\nmax_calls = ${maxCalls}`, async (kav) => {
      const attempts = await Promise.allSettled(
        Array.from({ length: maxCalls + 10 }, () => TwilioClient.connect({ url: kav.mediaUrl })),
      );
      const clients = attempts.flatMap((a) => a.status === "fulfilled" ? [a.value] : []);
      try {
        for (const client of clients) client.begin();
        // A call is admitted when its greeting plays; a refused one is closed with 1013.
        const fates = await Promise.all(
          clients.map((client) =>
            client.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS }).then(
              () => "admitted",
              async () => `closed ${(await client.closed).code}`,
            )
          ),
        );
        const admitted = fates.filter((f) => f === "admitted").length;
        const refusedUpgrade = attempts.length - clients.length;
        const closedBusy = fates.filter((f) => f === "closed 1013").length;
        assert.equal(admitted, maxCalls, `fates ${fates}, ${refusedUpgrade} upgrades refused`);
        assert.equal(refusedUpgrade + closedBusy, 10, `fates ${fates}`);
        const metric = await scrape(kav.baseUrl);
        assert.equal(metric("kav_active_calls"), maxCalls, "one count, summed over workers");
        const accepted = workersByConn(kav);
        assert.equal(accepted.size, maxCalls, kav.log());
        // The burst crossed workers (the admitted calls alone may all be on the quickest one): the
        // kernel put all 16 sockets on one worker about once in 30,000 bursts.
        const reached = workersOfBurst(kav);
        assert.equal(reached.length, attempts.length, kav.log());
        assert.ok(new Set(reached).size >= 2, `every socket on one worker: ${reached}`);
        const busy = await fetch(`${kav.baseUrl}/twiml`, {
          method: "POST",
          body: new URLSearchParams({ CallSid: "CA_FULL", From: "+972500000009", To: "+9723" }),
        });
        assert.match(await busy.text(), /<Reject reason="busy"\/>/);
      } finally {
        await hangUp(clients);
      }
      kav.kill("SIGTERM");
      assert.equal((await kav.status).code, 0, kav.log());
    });
  });
}

Deno.test("one /metrics scrape sums every worker's calls and frames (workers=2)", async () => {
  await withKav(`${SERVER}workers = 2`, async (kav) => {
    const idle = await scrape(kav.baseUrl);
    assert.equal(idle("kav_active_calls"), 0);
    const byWorker = await callsOnEveryWorker(kav, 2);
    const clients = [...byWorker.values()].flat();
    const live = await scrape(kav.baseUrl);
    assert.equal(
      live("kav_active_calls"),
      clients.length,
      `active calls of both workers: ${clients.map((c) => c.socket.readyState)}`,
    );
    const framesHeard = clients.reduce((n, c) => n + c.mediaFrames, 0);
    assert.ok(live("kav_tx_frames_total") >= framesHeard, `${live("kav_tx_frames_total")}`);
    await hangUp(clients);
    for (const client of clients) {
      await kav.waitForLine(new RegExp(`call=${client.callSid} ended outcome=completed`), {
        timeoutMs: TIMEOUT_MS,
      });
    }
    const after = await scrape(kav.baseUrl);
    assert.equal(after("kav_active_calls"), 0);
    assert.equal(
      after("kav_calls_total", { outcome: "completed" }),
      clients.length,
      "every call placed, once, whichever worker took it",
    );
    kav.kill("SIGTERM");
    assert.equal((await kav.status).code, 0, kav.log());
  });
});

const FROM = "+972501234567";
const TO = "+97231234567";
const SALES = "+97231234500";

Deno.test("a transfer on one worker: the action requests and the caller connected back work on another (workers=2)", async () => {
  const transfer = `[call.transfer]\nsales = "${SALES}"\n`;
  await withKav(`${transfer}${SERVER}workers = 2`, async (kav, servers) => {
    const back = "לא הצלחתי להשיג את המכירות. להשאיר להם הודעה?";
    servers.llm.script(
      {
        text: "מעבירה אותך למחלקת המכירות.",
        toolCalls: [{ name: "transfer_call", arguments: { department: "sales" } }],
      },
      { text: back },
    );
    const byWorker = await callsOnEveryWorker(kav, 2);
    // The stream that will connect the caller back is opened first (Twilio would open it after
    // the dial), on whichever worker the kernel gives it; the call on the other worker transfers.
    const parameters = { From: FROM, To: TO, KavDialStatus: "no-answer" };
    let resumed: TwilioClient | null = null;
    let caller: TwilioClient | null = null;
    const spares: TwilioClient[] = [];
    for (let attempt = 0; attempt < 12 && resumed === null; attempt++) {
      for (const [worker, clients] of byWorker) {
        const from = kav.lines.length;
        const spare = await TwilioClient.connect({
          url: kav.mediaUrl,
          callSid: clients[0].callSid,
          customParameters: parameters,
        });
        const accepted = await kav.waitForLine(/\[CALL\] media socket accepted .*worker=(\d+)/, {
          timeoutMs: TIMEOUT_MS,
          from,
        });
        if (Number(/worker=(\d+)/.exec(accepted)![1]) !== worker) {
          resumed = spare;
          caller = clients[0];
          break;
        }
        spares.push(spare);
      }
    }
    await hangUp(spares);
    assert.ok(resumed !== null && caller !== null, "no stream landed on the other worker");
    const call = { callSid: caller.callSid, from: FROM, to: TO };
    await sayAndWait(caller, fixtureClip("appointment").audio, caller.closed);

    // Twilio's <Connect action>, each on a new connection: the kernel spreads them over both
    // workers (all ten on the call's own one: 1 in 1,024), and every one is answered <Dial>.
    for (let i = 0; i < 10; i++) {
      const client = Deno.createHttpClient({});
      try {
        const response = await fetch(`${kav.baseUrl}/webhook/stream_ended`, {
          method: "POST",
          client,
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: new URLSearchParams({ CallSid: call.callSid, From: FROM, To: TO }).toString(),
        });
        const next = parseTwiml(response.status, await response.text());
        assert.equal(next.kind, "dial");
        assert.equal(next.kind === "dial" ? next.target : null, SALES);
      } finally {
        client.close();
      }
    }
    const dial = await followConnectAction(kav.baseUrl, call);
    assert.equal(dial.kind, "dial");
    if (dial.kind !== "dial") return;
    const next = await followDialAction(kav.baseUrl, dial, { ...call, status: "no-answer" });
    assert.equal(next.kind, "stream");
    if (next.kind !== "stream") return;
    assert.deepEqual(next.parameters, { ...parameters, CallSid: call.callSid });

    // The caller comes back on the other worker: its agent knows why, from the main thread's board.
    resumed.begin();
    await kav.waitForLine(
      new RegExp(`call=${call.callSid} connected back after a transfer .*remembered=true`),
      { timeoutMs: TIMEOUT_MS },
    );
    // It speaks first, from the history it carried over (the LLM's second request).
    for (let waited = 0; servers.llm.requests.length < 2 && waited < TIMEOUT_MS; waited += 50) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.ok(!resumed.marks.includes("greeting_end"), "no second greeting");
    const note = servers.llm.requests[1].messages.find((m) =>
      m.role === "system" && m.content.includes("no-answer")
    );
    assert.ok(note, JSON.stringify(servers.llm.requests[1].messages));
    assert.match(note.content, /transfer to sales did not go through/);
    await hangUp([resumed, ...[...byWorker.values()].flat().filter((c) => c !== caller)]);
    kav.kill("SIGTERM");
    assert.equal((await kav.status).code, 0, kav.log());
    const { call: recorded } = await callDetail(kav, call.callSid);
    assert.equal(recorded.outcome, "completed", "reopened by the caller connected back");
  });
});

Deno.test("a worker's isolate killed mid-call ends only its calls, recorded; new calls succeed", async () => {
  await withKav(`${SERVER}workers = 2`, async (kav, servers) => {
    servers.llm.script("כן, אני עדיין כאן.", "בשמחה.");
    const byWorker = await callsOnEveryWorker(kav, 2);
    const doomed = byWorker.get(1)!;
    const survivors = byWorker.get(0)!;
    const from = kav.lines.length;
    const hook = await fetch(`${kav.baseUrl}/__test/worker`, {
      method: "POST",
      body: new URLSearchParams({ worker: "1", how: "terminate" }),
    });
    assert.equal(hook.status, 202, await hook.text());
    for (const client of doomed) {
      const closed = await client.closed;
      assert.notEqual(closed.code, 1000, "the socket died with its worker");
    }
    await kav.waitForLine(
      /\[WORKER\] call worker died worker=1 reason="terminated by the test hook"/,
      { timeoutMs: TIMEOUT_MS, from },
    );
    await kav.waitForLine(/\[WORKER\] call worker replaced worker=1 generation=2/, {
      timeoutMs: TIMEOUT_MS,
      from,
    });
    // The other worker's call is untouched: it still talks.
    const talker = survivors[0];
    await sayAndWait(
      talker,
      fixtureClip("appointment").audio,
      talker.waitForEcho("a1_0", { timeoutMs: TIMEOUT_MS }),
    );
    // New calls are taken, whichever worker (the new one included) accepts them.
    const fresh = await greetedCall(kav);
    await hangUp([...survivors, fresh]);
    for (const client of [...survivors, fresh]) {
      await kav.waitForLine(new RegExp(`call=${client.callSid} ended outcome=completed`), {
        timeoutMs: TIMEOUT_MS,
      });
    }
    const metric = await scrape(kav.baseUrl);
    assert.equal(metric("kav_calls_total", { outcome: "error" }), doomed.length);
    assert.equal(metric("kav_calls_total", { outcome: "completed" }), survivors.length + 1);
    assert.equal(metric("kav_active_calls"), 0);
    kav.kill("SIGTERM");
    assert.equal((await kav.status).code, 0, kav.log());
    for (const client of doomed) {
      const { call } = await callDetail(kav, client.callSid);
      assert.equal(call.outcome, "error");
      assert.equal(call.reason, "call worker 1 died: terminated by the test hook");
      assert.ok(call.endedAt !== null && call.endedAt >= call.startedAt);
      assert.ok(
        kav.lines.some((l) => l.includes(`[CALL] call=${client.callSid} ended outcome=error`)),
      );
    }
  }, HOOKS);
});

Deno.test("a worker that throws uncaught or runs out of heap is replaced, its call recorded", async () => {
  await withKav(`${SERVER}workers = 2`, async (kav) => {
    const deaths: [string, RegExp][] = [
      ["throw", /reason="uncaught error: .*test hook: an uncaught error"/],
      ["oom", /reason="uncaught error: .*memory limit: JS heap out of memory"/],
    ];
    for (const [generation, [how, reason]] of deaths.entries()) {
      const byWorker = await callsOnEveryWorker(kav, 2);
      const [victim] = byWorker.get(1)!;
      const from = kav.lines.length;
      const hook = await fetch(`${kav.baseUrl}/__test/worker`, {
        method: "POST",
        body: new URLSearchParams({ worker: "1", how }),
      });
      assert.equal(hook.status, 202, await hook.text());
      const died = await kav.waitForLine(/\[WORKER\] call worker died worker=1/, {
        timeoutMs: TIMEOUT_MS,
        from,
      });
      assert.match(died, reason, `${how}: ${died}`);
      await victim.closed;
      await kav.waitForLine(
        new RegExp(`\\[CALL\\] call=${victim.callSid} ended outcome=error`),
        { timeoutMs: TIMEOUT_MS, from },
      );
      await kav.waitForLine(
        new RegExp(`\\[WORKER\\] call worker replaced worker=1 generation=${generation + 2}`),
        { timeoutMs: TIMEOUT_MS, from },
      );
      await hangUp([...byWorker.values()].flat());
    }
    const alive = await greetedCall(kav);
    await hangUp([alive]);
    kav.kill("SIGTERM");
    assert.equal((await kav.status).code, 0, kav.log());
  }, { ...HOOKS, KAV_TEST_WORKER_HEAP_MB: "256" });
});

Deno.test("a worker stuck in a loop: its calls recorded, the others drained, exit 1 for a restart", async () => {
  await withKav(`${SERVER}workers = 2`, async (kav, servers) => {
    servers.llm.script("עדיין כאן.");
    const byWorker = await callsOnEveryWorker(kav, 2);
    const stuck = byWorker.get(1)!;
    const [talker, ...others] = byWorker.get(0)!;
    const from = kav.lines.length;
    const hook = await fetch(`${kav.baseUrl}/__test/worker`, {
      method: "POST",
      body: new URLSearchParams({ worker: "1", how: "hang" }),
    });
    assert.equal(hook.status, 202, await hook.text());
    await kav.waitForLine(/\[WORKER\] call worker died worker=1 reason="no heartbeat for 5 s"/, {
      timeoutMs: TIMEOUT_MS,
      from,
    });
    await kav.waitForLine(/\[HTTP\] draining reason="call worker 1 stuck"/, {
      timeoutMs: TIMEOUT_MS,
      from,
    });
    // The other worker's calls still run while Kav drains: a turn is answered.
    await sayAndWait(
      talker,
      fixtureClip("hours").audio,
      talker.waitForEcho("a1_0", { timeoutMs: TIMEOUT_MS }),
    );
    await hangUp([talker, ...others]);
    const status = await kav.status;
    assert.equal(status.code, 1, kav.log());
    assert.ok(
      kav.lines.some((l) =>
        /\[KAV\] stopped on an error .*call worker 1 stopped answering/.test(l)
      ),
    );
    for (const client of stuck) {
      const { call } = await callDetail(kav, client.callSid);
      assert.equal(call.outcome, "error");
      assert.equal(call.reason, "call worker 1 died: no heartbeat for 5 s");
    }
    for (const client of [talker, ...others]) {
      assert.equal((await callDetail(kav, client.callSid)).call.outcome, "completed");
    }
  }, HOOKS);
});

Deno.test("the console on the main thread shows every worker's calls and the summed metrics", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const adminPort = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const token = "workers-console-token-0123456789";
  const admin = `http://127.0.0.1:${adminPort}`;
  const bearer = { authorization: `Bearer ${token}` };
  const json = async (path: string) => {
    const response = await fetch(`${admin}${path}`, { headers: bearer });
    assert.equal(response.status, 200, path);
    return await response.json();
  };
  await withKav(
    `${SERVER}workers = 2\n[admin]\nlisten = "127.0.0.1:${adminPort}"`,
    async (kav) => {
      const byWorker = await callsOnEveryWorker(kav, 2);
      const clients = [...byWorker.values()].flat();
      const sids = clients.map((c) => c.callSid).sort();
      const live = await json("/api/live");
      const shown = live.calls.map((c: { callSid: string }) => c.callSid).sort();
      assert.deepEqual(shown, sids, `one list, every worker's calls: ${JSON.stringify(live)}`);
      const health = await json("/api/health");
      assert.equal(health.calls.active, clients.length, JSON.stringify(health.calls));
      const metrics = await fetch(`${admin}/metrics`);
      const families = parsePrometheusText(await metrics.text());
      assert.equal(sampleValue(families, "kav_active_calls", {}), clients.length);
      // A new call shows within a second of its start, whichever worker took it.
      const late = await TwilioClient.connect({ url: kav.mediaUrl });
      clients.push(late);
      const started = performance.now();
      late.begin();
      let seenMs = Infinity;
      while (performance.now() - started < 3000) {
        const calls = (await json("/api/live")).calls as { callSid: string }[];
        if (calls.some((c) => c.callSid === late.callSid)) {
          seenMs = performance.now() - started;
          break;
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.ok(seenMs < 1000, `the new call appeared after ${Math.round(seenMs)} ms`);
      await hangUp(clients);
      for (let i = 0; i < 40; i++) {
        if ((await json("/api/live")).calls.length === 0) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.deepEqual((await json("/api/live")).calls, []);
      kav.kill("SIGTERM");
      assert.equal((await kav.status).code, 0, kav.log());
    },
    { KAV_ADMIN_TOKEN: token },
  );
});

Deno.test("systemd's status counts the calls of every worker", async () => {
  // WATCHDOG_USEC makes Kav send its status with each ping (every half of it): here every 0.5 s.
  const path = `\0kav-workers-test-${crypto.randomUUID()}`;
  const socket = Deno.listenDatagram({ transport: "unixpacket", path });
  const statuses: string[] = [];
  const reading = (async () => {
    try {
      for (;;) {
        const [bytes] = await socket.receive();
        const status = /^STATUS=(.*)$/m.exec(new TextDecoder().decode(bytes))?.[1];
        if (status !== undefined) statuses.push(status);
      }
    } catch {
      // Closed.
    }
  })();
  try {
    await withKav(`${SERVER}workers = 2`, async (kav) => {
      const byWorker = await callsOnEveryWorker(kav, 2);
      const clients = [...byWorker.values()].flat();
      const expected = `${clients.length} active calls`;
      for (let i = 0; i < 50 && statuses.at(-1) !== expected; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.equal(statuses.at(-1), expected, statuses.join(" | "));
      await hangUp(clients);
      kav.kill("SIGTERM");
      assert.equal((await kav.status).code, 0, kav.log());
    }, { NOTIFY_SOCKET: `@${path.slice(1)}`, WATCHDOG_USEC: "1000000" });
  } finally {
    socket.close();
    await reading;
  }
});

Deno.test("the test hook route does not exist without KAV_TEST_HOOKS", async () => {
  await withKav(`${SERVER}workers = 2`, async (kav) => {
    const response = await fetch(`${kav.baseUrl}/__test/worker`, {
      method: "POST",
      body: new URLSearchParams({ worker: "0", how: "terminate" }),
    });
    assert.equal(response.status, 404);
    await response.body?.cancel();
    kav.kill("SIGTERM");
    assert.equal((await kav.status).code, 0, kav.log());
  });
});
