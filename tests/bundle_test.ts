import assert from "node:assert/strict";
import {
  bundle,
  bundleImportMap,
  bundleRunFlags,
  checkDenort,
  compile,
  findWorkerRefs,
  finishBundle,
  launcherScript,
  type RuntimePaths,
  SYSTEM_PATHS,
  workerModules,
} from "../scripts/build.ts";
import { fixtureClip, sayAndWait, startKavProcess } from "./support/kav_process.ts";
import { ignoredWhen } from "./support/requires.ts";
import { startProviderServers } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const decoder = new TextDecoder();

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

Deno.test("finishBundle() inlines workers as data: URLs and defines __dirname", () => {
  const code =
    `// src/store/_checkpointer.ts\nconst w = new Worker(new URL("./_w.ts", import.meta.url).href);\n`;
  const refs = findWorkerRefs(code);
  assert.deepEqual(refs, [{
    expression: `new URL("./_w.ts", import.meta.url)`,
    source: "src/store/_w.ts",
  }]);
  const out = finishBundle(code, new Map([[refs[0].expression, "postMessage(1);"]]));
  assert.match(out, /^\/\/ Kav, bundled by scripts\/build\.ts/);
  assert.match(out, /var __dirname = import\.meta\.dirname, __filename = import\.meta\.filename;/);
  const url = /new URL\("(data:text\/javascript;base64,[^"]+)"\)/.exec(out)?.[1];
  assert.ok(url, out);
  assert.equal(
    atob(url.split(",")[1]),
    `var __dirname = "/", __filename = "/kav-worker.js";\npostMessage(1);`,
  );
  assert.doesNotMatch(out, /import\.meta\.url\)/);
});

Deno.test("finishBundle() refuses output that would need a DENO_DIR", () => {
  for (
    const code of [
      `import { x } from "npm:smol-toml@1";\n`,
      `import {\n  a,\n  b\n} from "jsr:@std/path";\n`,
      `export * from "https://example.com/mod.ts";\n`,
      `const m = await import("npm:openai");\n`,
    ]
  ) {
    assert.throws(() => finishBundle(code, new Map()), /Cannot bundle: the output still imports/);
  }
  assert.throws(
    () => finishBundle(`const __dirname = "/x";\n`, new Map()),
    /declares __dirname itself/,
  );
});

Deno.test("findWorkerRefs() refuses a worker URL it cannot trace to a local module", () => {
  assert.throws(
    () => findWorkerRefs(`new URL("./w.ts", import.meta.url)`),
    /no local module is marked before it/,
  );
  assert.throws(
    () => findWorkerRefs(`// node_modules/x/index.js\nnew URL("./w.js", import.meta.url)`),
    /no local module is marked before it/,
  );
});

Deno.test("bundleImportMap() pins alawmulaw to the CommonJS main that deno run uses", async () => {
  const map = JSON.parse(await bundleImportMap()) as { imports: Record<string, string> };
  assert.match(map.imports["alawmulaw"], /^npm:alawmulaw@[^/]+\/dist\/alawmulaw\.js$/);
  // Packages with an "exports" map or no "module" field are left alone.
  assert.match(map.imports["openai"], /^npm:openai@[^/]+$/);
  assert.doesNotMatch(map.imports["@google-cloud/speech"], /\.js$/);
});

Deno.test("launcherScript() execs deno on the bundle with the baked permissions", () => {
  const script = launcherScript("/usr/local/lib/kav");
  assert.match(script, /^#!\/bin\/sh\n/);
  assert.match(
    script,
    /\nexec \/usr\/local\/lib\/kav\/deno run --cached-only .* \/usr\/local\/lib\/kav\/kav\.js "\$@"\n$/,
  );
  assert.doesNotMatch(script, /--allow-all|-A /);
  assert.match(script, /--unstable-net/);
  assert.match(script, /--allow-write=\/var\/lib\/kav,\/var\/cache\/kav,\/run\/systemd\/notify /);
});

async function tempPaths(): Promise<{ root: string; paths: RuntimePaths }> {
  const root = await Deno.makeTempDir({ prefix: "kav-bundle-test-" });
  const paths: RuntimePaths = {
    configDir: `${root}/etc`,
    stateDir: `${root}/state`,
    cacheDir: `${root}/cache`,
    credentialsDir: `${root}/credentials`,
    notifySocket: `${root}/notify.sock`,
  };
  for (const dir of [paths.configDir, paths.stateDir, paths.cacheDir, `${root}/dist`]) {
    await Deno.mkdir(dir, { recursive: true });
  }
  return { root, paths };
}

/** Runs the bundle as the launcher does, from an empty DENO_DIR. */
function runBundle(
  root: string,
  paths: RuntimePaths,
  script: string,
  args: string[],
  env: Record<string, string> = {},
): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", ...bundleRunFlags(paths), script, ...args],
    cwd: root,
    env: { DENO_DIR: `${root}/empty_deno_dir`, HOME: paths.stateDir, NO_COLOR: "1", ...env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

// Every npm dependency Kav ships, used the way Kav uses it, plus a worker module and node:sqlite.
const PROBE = `
import speech from "@google-cloud/speech";
import tts from "@google-cloud/text-to-speech";
import * as grpc from "@grpc/grpc-js";
import OpenAI from "openai";
import { parse } from "smol-toml";
import alawmulaw from "alawmulaw";
import { Ajv } from "ajv";
import { Buffer } from "node:buffer";

const out: Record<string, unknown> = {};
const id = (b: Buffer) => b;
const method = (path: string) => ({ path, requestStream: false, responseStream: false,
  requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id });
const server = new grpc.Server();
const empty = (_call: unknown, done: (e: null, b: Buffer) => void) => done(null, Buffer.alloc(0));
server.addService({ R: method("/google.cloud.speech.v1.Speech/Recognize") } as never, { R: empty } as never);
server.addService({ S: method("/google.cloud.texttospeech.v1.TextToSpeech/SynthesizeSpeech") } as never, { S: empty } as never);
const port = await new Promise<number>((ok, fail) => server.bindAsync("127.0.0.1:0",
  grpc.ServerCredentials.createInsecure(), (e, p) => e ? fail(e) : ok(p)));
// universeDomain keeps google-auth from probing the GCE metadata server (169.254.169.254).
const opts = { apiEndpoint: "127.0.0.1", port, universeDomain: "googleapis.com", sslCreds: grpc.credentials.createInsecure() };
const stt = new speech.SpeechClient(opts);
const voice = new tts.TextToSpeechClient(opts);
const [recognized] = await stt.recognize({ config: { encoding: "MULAW", sampleRateHertz: 8000, languageCode: "he-IL" }, audio: { content: new Uint8Array(160) } });
out.speech = recognized.results;
const [spoken] = await voice.synthesizeSpeech({ input: { text: "x" }, voice: { languageCode: "he-IL" }, audioConfig: { audioEncoding: "MULAW" } });
out.tts = spoken.audioContent?.length;
stt.streamingRecognize().destroy();
await stt.close(); await voice.close(); server.forceShutdown();

const http = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, () => {
  const chunk = (content: string) => "data: " + JSON.stringify({ id: "c", object: "chat.completion.chunk",
    created: 0, model: "m", choices: [{ index: 0, delta: { content }, finish_reason: null }] }) + "\\n\\n";
  return new Response(chunk("שלום") + chunk(" עולם") + "data: [DONE]\\n\\n", { headers: { "content-type": "text/event-stream" } });
});
const llm = new OpenAI({ apiKey: "test", baseURL: "http://127.0.0.1:" + http.addr.port + "/v1" });
let text = "";
for await (const part of await llm.chat.completions.create({ model: "m", messages: [{ role: "user", content: "hi" }], stream: true })) {
  text += part.choices[0]?.delta?.content ?? "";
}
out.llm = text;
await http.shutdown();

out.toml = parse("a = 1").a;
// ajv generates its validators with new Function: it must run from the bundle too.
const check = new Ajv({ allErrors: true }).compile({ type: "object", required: ["phone"] });
out.ajv = [check({ phone: "1" }), check({})];
out.mulaw = Array.from(alawmulaw.mulaw.decode(new Uint8Array([0xff, 0x00])));

const worker = new Worker(new URL("./probe_worker.ts", import.meta.url).href, { type: "module" });
out.worker = await new Promise((resolve, reject) => {
  worker.onmessage = (e) => resolve(e.data);
  worker.onerror = (e) => { e.preventDefault(); reject(new Error(e.message)); };
  worker.postMessage(Deno.args[0]);
});
worker.terminate();
console.log("PROBE " + JSON.stringify(out));
`;

const PROBE_WORKER = `
import { DatabaseSync } from "node:sqlite";
(globalThis as unknown as { onmessage: (e: MessageEvent<string>) => void }).onmessage = (e) => {
  const db = new DatabaseSync(e.data);
  db.exec("CREATE TABLE IF NOT EXISTS t (x)");
  db.exec("INSERT INTO t VALUES (42)");
  const row = db.prepare("SELECT x FROM t").get() as { x: number };
  db.close();
  (globalThis as unknown as { postMessage: (v: unknown) => void }).postMessage(row.x);
};
`;

Deno.test("bundle() output using every npm dependency runs from an empty DENO_DIR", async () => {
  const { root, paths } = await tempPaths();
  try {
    await Deno.writeTextFile(`${root}/probe.ts`, PROBE);
    await Deno.writeTextFile(`${root}/probe_worker.ts`, PROBE_WORKER);
    const output = `${root}/dist/probe.js`;
    const signal = AbortSignal.timeout(300_000);
    await bundle({ entry: `${root}/probe.ts`, output, paths, signal, libDir: "/opt/kav" });
    // Nothing but the bundle is shipped: the worker source must not be needed.
    await Deno.remove(`${root}/probe_worker.ts`);
    await Deno.remove(`${root}/probe.ts`);
    const launcher = await Deno.readTextFile(`${root}/dist/kav-launcher.sh`);
    assert.match(launcher, /exec \/opt\/kav\/deno run /);
    const child = runBundle(root, paths, output, [`${paths.stateDir}/probe.db`]);
    const result = await child.output();
    const stdout = decoder.decode(result.stdout);
    const stderr = decoder.decode(result.stderr);
    assert.equal(result.code, 0, `exit ${result.code}\n${stdout}\n${stderr}`);
    const line = stdout.split("\n").find((l) => l.startsWith("PROBE "));
    assert.ok(line, stdout + stderr);
    assert.deepEqual(JSON.parse(line.slice(6)), {
      speech: [],
      tts: 0,
      llm: "שלום עולם",
      toml: 1,
      ajv: [true, false],
      mulaw: [0, -32124],
      worker: 42,
    });
    assert.doesNotMatch(stderr, /MetadataLookupWarning|NotCapable|PermissionDenied/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

/** Collects datagrams on a local stand-in for systemd's notify socket. */
function notifyListener(path: string): { messages: string[]; close(): Promise<void> } {
  const conn = Deno.listenDatagram({ transport: "unixpacket", path });
  const messages: string[] = [];
  const loop = (async () => {
    try {
      for (;;) messages.push(decoder.decode((await conn.receive())[0]));
    } catch { /* closed */ }
  })();
  return {
    messages,
    async close() {
      conn.close();
      await loop;
    },
  };
}

type Launch = (root: string, paths: RuntimePaths) => Promise<{ cmd: string; args: string[] }>;

const CALL_TIMEOUT_MS = 30_000;

/**
 * Builds Kav, runs it from an empty DENO_DIR with only its baked permissions on a temp config
 * against the local providers, on two call workers (SPEC 8: the worker module must be inside the
 * build), checks /healthz, completes a simulated call (greeting, then a caller turn answered and
 * played), then SIGTERM: exit 0, READY=1 then STOPPING=1 on the notify socket.
 */
async function buildAndServe(t: Deno.TestContext, launch: Launch): Promise<void> {
  const { root, paths } = await tempPaths();
  const cleanup: (() => Promise<void>)[] = [];
  try {
    const servers = await startProviderServers();
    cleanup.push(() => servers.close());
    const notify = notifyListener(paths.notifySocket);
    cleanup.push(() => notify.close());
    const { cmd, args } = await launch(root, paths);
    // The operator console too: its files and its history reader are inside the build.
    const adminPort = freePort();
    const adminToken = "bundle-console-token-0123456789";
    // The state dir is readable and writable under the baked permissions: config and db go there.
    const kav = await startKavProcess({
      servers,
      dir: paths.stateDir,
      extra: `[server]
workers = 2
[admin]
listen = "127.0.0.1:${adminPort}"`,
      env: { KAV_ADMIN_TOKEN: adminToken },
      command: {
        cmd,
        args,
        cwd: root,
        clearEnv: true,
        env: {
          DENO_DIR: `${root}/empty_deno_dir`,
          HOME: paths.stateDir,
          NOTIFY_SOCKET: paths.notifySocket,
        },
      },
    });
    cleanup.unshift(() => kav.close());
    const health = await fetch(`${kav.baseUrl}/healthz`);
    await t.step("healthz answered 200", async () => {
      assert.equal(health.status, 200, kav.log());
      assert.equal(await health.text(), "ok\n");
    });
    await t.step("a simulated call gets the greeting and an answer", async () => {
      const answer = "בשמחה, הבאנדל עונה.";
      servers.llm.script(answer);
      const client = await TwilioClient.connect({ url: kav.mediaUrl });
      try {
        client.begin();
        await client.waitForEcho("greeting_end", { timeoutMs: CALL_TIMEOUT_MS });
        await sayAndWait(
          client,
          fixtureClip("appointment").audio,
          client.waitForEcho("a1_0", { timeoutMs: CALL_TIMEOUT_MS }),
        );
        assert.ok(servers.tts.requests.some((r) => r.text === answer), "the answer was spoken");
        assert.deepEqual(client.invalid, []);
        client.sendStop();
        await client.closed;
        await kav.waitForLine(new RegExp(`call=${client.callSid} ended outcome=completed`), {
          timeoutMs: CALL_TIMEOUT_MS,
        });
        assert.ok(kav.lines.some((l) => /\[KAV\] call workers workers=2/.test(l)), kav.log());
      } finally {
        await client.close();
      }
    });
    await t.step(
      "the console's page, uPlot and the call's record come from inside the build",
      async () => {
        const consoleUrl = `http://127.0.0.1:${adminPort}`;
        const page = await fetch(`${consoleUrl}/`);
        assert.equal(page.status, 200);
        assert.match(await page.text(), /src="\/static\/app\.js"/);
        const uplot = await fetch(`${consoleUrl}/static/uplot.js`);
        assert.match(await uplot.text(), /uPlot/);
        const auth = { authorization: `Bearer ${adminToken}` };
        let calls: { callSid: string }[] = [];
        for (let i = 0; i < 50 && calls.length === 0; i++) {
          await new Promise((resolve) => setTimeout(resolve, 100));
          calls = (await (await fetch(`${consoleUrl}/api/calls`, { headers: auth })).json()).calls;
        }
        assert.equal(calls.length, 1, kav.log());
        const detail = await (await fetch(`${consoleUrl}/api/calls/${calls[0].callSid}`, {
          headers: auth,
        })).json();
        const said = detail.turns.find((turn: { speaker: string }) => turn.speaker === "caller");
        assert.equal(said.text, fixtureClip("appointment").text);
        assert.doesNotMatch(kav.log(), /history reads on the main thread/);
      },
    );
    kav.kill("SIGTERM");
    const result = await kav.status;
    const log = kav.log();
    await t.step("exited 0 on SIGTERM without permission errors", () => {
      assert.equal(result.code, 0, log);
      assert.doesNotMatch(log, /NotCapable|PermissionDenied|Requires .* access/);
    });
    await t.step("READY=1 then STOPPING=1 on the notify socket", () => {
      const has = (m: string, line: string) => m.split("\n").includes(line);
      const ready = notify.messages.findIndex((m) => has(m, "READY=1"));
      const stopping = notify.messages.findIndex((m) => has(m, "STOPPING=1"));
      assert.ok(ready >= 0 && stopping > ready, JSON.stringify(notify.messages));
    });
  } finally {
    for (const close of cleanup) await close();
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("kav.js built from main.ts answers a call from an empty DENO_DIR", async (t) => {
  await buildAndServe(t, async (root, paths) => {
    const output = `${root}/dist/kav.js`;
    const signal = AbortSignal.timeout(300_000);
    await bundle({ entry: "main.ts", output, paths, signal, libDir: `${root}/lib` });
    return { cmd: Deno.execPath(), args: ["run", ...bundleRunFlags(paths), output] };
  });
});

/** A real denort, for the one test that runs the compiled executable (none ships on npm). */
const DENORT_BIN = Deno.env.get("DENORT_BIN") ?? "";

Deno.test({
  ...ignoredWhen(
    "dist/kav compiled on DENORT_BIN answers a call",
    DENORT_BIN === ""
      ? "DENORT_BIN is not set, and deno compile cannot download denort without a network"
      : null,
  ),
  async fn(t) {
    // DENORT_BIN was set to run this test: a binary that is not denort fails it.
    await checkDenort(DENORT_BIN, { signal: AbortSignal.timeout(60_000) });
    await buildAndServe(t, async (root, paths) => {
      const output = `${root}/dist/kav`;
      const signal = AbortSignal.timeout(600_000);
      await compile({ entry: "main.ts", output, paths, signal, denortBin: DENORT_BIN });
      return { cmd: output, args: [] };
    });
  },
});

Deno.test("checkDenort() refuses the deno CLI, a missing file and a non-executable", async () => {
  const signal = AbortSignal.timeout(60_000);
  await assert.rejects(
    checkDenort(Deno.execPath(), { signal }),
    /that is the deno CLI, not denort/,
  );
  const dir = await Deno.makeTempDir();
  try {
    // A copy of deno elsewhere is recognised by its --version (denort has no TypeScript).
    const fake = `${dir}/denort`;
    await Deno.writeTextFile(
      fake,
      "#!/bin/sh\necho 'deno 2.9.6 (stable)'\necho 'v8 15.0'\necho 'typescript 6.0.3'\n",
    );
    await Deno.chmod(fake, 0o755);
    await assert.rejects(checkDenort(fake, { signal }), /that is the deno CLI, not denort/);
    await assert.rejects(
      checkDenort(`${dir}/absent`, { signal }),
      /Cannot use DENORT_BIN=.*absent/,
    );
    await Deno.chmod(fake, 0o644);
    await assert.rejects(checkDenort(fake, { signal }), /not an executable file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Where `deno compile` caches the denort it downloads for this Deno. */
function cachedDenort(): string {
  const info = JSON.parse(
    decoder.decode(
      new Deno.Command(Deno.execPath(), { args: ["info", "--json"] }).outputSync().stdout,
    ),
  ) as { denoDir: string };
  return `${info.denoDir}/dl/release/v${Deno.version.deno}/denort-${Deno.build.target}.zip`;
}

const CACHED_DENORT = cachedDenort();

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

Deno.test({
  ...ignoredWhen(
    "compile() explains what to do when denort cannot be downloaded",
    !isFile(CACHED_DENORT)
      ? null
      : `denort is cached at ${CACHED_DENORT}, so compile cannot fail to download it`,
  ),
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(`${dir}/hello.ts`, "console.log('hello');\n");
      // A closed local port as proxy: the download fails at once, network or not.
      const proxy = "http://127.0.0.1:9";
      await assert.rejects(
        compile({
          entry: `${dir}/hello.ts`,
          output: `${dir}/hello`,
          paths: SYSTEM_PATHS,
          signal: AbortSignal.timeout(120_000),
          denortBin: null,
          env: { HTTPS_PROXY: proxy, HTTP_PROXY: proxy, NO_PROXY: "" },
        }),
        /denort for Deno \S+ could not be downloaded and DENORT_BIN is not set; set DENORT_BIN/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("compile() names an entry module that does not exist", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      compile({
        entry: `${dir}/absent.ts`,
        output: `${dir}/hello`,
        paths: SYSTEM_PATHS,
        signal: AbortSignal.timeout(60_000),
        denortBin: null,
      }),
      /Cannot compile ".*absent\.ts": no such file/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("workerModules() lists the modules compile must --include", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/store`);
    await Deno.writeTextFile(
      `${dir}/store/a.ts`,
      `new Worker(new URL("./_w.ts", import.meta.url).href, { type: "module" });`,
    );
    await Deno.writeTextFile(`${dir}/b.ts`, `const u = new URL("https://example.com");`);
    assert.deepEqual(await workerModules(dir), [`${dir}/store/_w.ts`]);
    // Kav's own: the call worker (SPEC 8) and the WAL checkpointer are embedded by compile.
    const kav = await workerModules();
    for (const module of ["src/workers/call_worker.ts", "src/store/_checkpoint_worker.ts"]) {
      assert.ok(kav.some((path) => path.endsWith(module)), `${module} in ${kav}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
