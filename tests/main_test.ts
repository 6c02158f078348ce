import assert from "node:assert/strict";
import { DEFAULT_CONFIG_PATH, main, parseArgs, USAGE } from "../main.ts";
import { runServer, startServer } from "../src/app.ts";
import { parseConfig } from "../src/config/load.ts";
import type { MediaCallAcceptor } from "../src/http/types.ts";
import { createLogger } from "../src/observe/log.ts";
import { sandboxToml, startProviderServers } from "../tools/sandbox/sandbox.ts";

const ROOT = new URL("../", import.meta.url);
const fixture = (name: string) => new URL(`tests/fixtures/config/${name}`, ROOT).pathname;

Deno.test("parseArgs() reads the server, help, check-config and records commands", () => {
  assert.deepEqual(parseArgs([]), { kind: "serve", configPath: DEFAULT_CONFIG_PATH });
  assert.deepEqual(parseArgs(["--config", "/x.toml"]), { kind: "serve", configPath: "/x.toml" });
  assert.deepEqual(parseArgs(["--config=/y.toml"]), { kind: "serve", configPath: "/y.toml" });
  // `deno task calls -- --config FILE ARGS` passes the separator on to main.ts.
  assert.deepEqual(parseArgs(["--", "--config", "/x.toml"]), {
    kind: "serve",
    configPath: "/x.toml",
  });
  assert.deepEqual(parseArgs(["calls", "--", "--config", "/x.toml", "--since", "1h"]), {
    kind: "records",
    name: "calls",
    configPath: "/x.toml",
    args: ["--since", "1h"],
  });
  assert.deepEqual(parseArgs(["-c", "/z.toml", "serve"]), { kind: "serve", configPath: "/z.toml" });
  assert.deepEqual(parseArgs(["--help"]), { kind: "help" });
  assert.deepEqual(parseArgs(["check-config", "a.toml", "-h"]), { kind: "help" });
  assert.deepEqual(parseArgs(["check-config", "a.toml"]), {
    kind: "check-config",
    configPath: "a.toml",
  });
  assert.deepEqual(parseArgs(["--config", "b.toml", "check-config"]), {
    kind: "check-config",
    configPath: "b.toml",
  });
  assert.deepEqual(parseArgs(["calls", "--config", "c.toml", "--since", "1d"]), {
    kind: "records",
    name: "calls",
    configPath: "c.toml",
    args: ["--since", "1d"],
  });
  assert.deepEqual(parseArgs(["call", "CA1"]), {
    kind: "records",
    name: "call",
    configPath: DEFAULT_CONFIG_PATH,
    args: ["CA1"],
  });
});

Deno.test("parseArgs() refuses unknown commands, options and a missing --config value", () => {
  for (
    const args of [["frobnicate"], ["--verbose"], ["--config"], ["serve", "extra"], [
      "check-config",
      "a",
      "b",
    ]]
  ) {
    const command = parseArgs(args);
    assert.equal(command.kind, "usage-error", JSON.stringify(args));
  }
  assert.deepEqual(parseArgs(["frobnicate"]), {
    kind: "usage-error",
    message: 'Unknown command "frobnicate"',
  });
  assert.deepEqual(parseArgs(["--verbose"]), {
    kind: "usage-error",
    message: 'Cannot use option "--verbose"',
  });
  assert.deepEqual(parseArgs(["--config"]), {
    kind: "usage-error",
    message: "Cannot use --config: a value is required",
  });
  assert.deepEqual(parseArgs(["check-config", "--json"]), {
    kind: "usage-error",
    message: 'Cannot use option "--json"',
  });
});

async function kav(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", ...args],
    cwd: ROOT.pathname,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: output.code, stdout: decode(output.stdout), stderr: decode(output.stderr) };
}

Deno.test("kav --help prints the usage and exits 0; a bad command exits 2", async () => {
  const help = await kav(["--help"]);
  assert.equal(help.code, 0);
  assert.equal(help.stdout, USAGE + "\n");
  const bad = await kav(["frobnicate"]);
  assert.equal(bad.code, 2);
  assert.ok(bad.stderr.startsWith('Unknown command "frobnicate"'), bad.stderr);
  assert.ok(bad.stderr.includes("Usage:"));
});

Deno.test("kav with a bad config prints the problems and exits 1 without serving", async () => {
  const result = await kav(["--config", fixture("bad.toml")]);
  assert.equal(result.code, 1);
  assert.ok(result.stderr.includes("server.public_urll (line 3): unknown key"), result.stderr);
  assert.equal(result.stdout, "");
});

Deno.test("main() hands calls/call to the store CLI without needing the Twilio secret", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kav_main_" });
  const errors: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => void errors.push(args.join(" "));
  try {
    // validate_signatures defaults to true and no token is set: fine for reading records.
    await Deno.writeTextFile(
      `${dir}/kav.toml`,
      `[server]\npublic_url = "https://a.b"\n[storage]\npath = "${dir}/absent.db"\n`,
    );
    assert.equal(await main(["calls", "--config", `${dir}/kav.toml`]), 1);
  } finally {
    console.error = original;
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(errors.length, 1, errors.join("\n"));
  assert.ok(errors[0].includes("absent.db"), "the store CLI ran and named its file");
});

/** Reads the child's stdout line by line until `pattern` matches. */
async function readUntil(
  reader: ReadableStreamDefaultReader<string>,
  seen: string[],
  pattern: RegExp,
): Promise<RegExpExecArray> {
  let buffer = "";
  while (true) {
    for (const line of seen) {
      const match = pattern.exec(line);
      if (match) return match;
    }
    const { done, value } = await reader.read();
    if (done) throw new Error(`stdout ended before ${pattern}: ${seen.join("\n")}`);
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop() ?? "";
    seen.push(...lines);
  }
}

Deno.test("kav serves, turns /healthz to 503 on SIGTERM and exits 0", async () => {
  // The real program against the local provider servers (boot synthesizes the greeting).
  const servers = await startProviderServers();
  const dir = await Deno.makeTempDir({ prefix: "kav-main-" });
  const configPath = `${dir}/kav.toml`;
  await Deno.writeTextFile(configPath, sandboxToml(servers, { storagePath: `${dir}/kav.db` }));
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-net", "main.ts", "--config", configPath],
    cwd: ROOT.pathname,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const seen: string[] = [];
  try {
    const listening = await readUntil(reader, seen, /\[HTTP\] listening url=(http:\S+)/);
    const health = await fetch(`${listening[1]}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(await health.text(), "ok\n");
    child.kill("SIGTERM");
    await readUntil(reader, seen, /\[HTTP\] stopped/);
    assert.ok(seen.some((line) => line.includes("[HTTP] draining reason=SIGTERM")));
  } finally {
    await reader.cancel();
    const status = await child.status;
    await child.stderr.cancel();
    await servers.close();
    await Deno.remove(dir, { recursive: true });
    assert.equal(status.code, 0);
  }
});

const TEST_CONFIG = parseConfig(
  `[server]\nlisten = "127.0.0.1:0"\npublic_url = "https://kav.example.com"\ndrain_timeout_s = 0.2\n` +
    `[twilio]\nvalidate_signatures = false\n`,
  { env: {}, credentialsDir: null },
);
const REFUSE_ALL: MediaCallAcceptor = { canAccept: () => false, attach: (s) => s.close() };

Deno.test("runServer() drains with /healthz at 503 and aborts the drain at drain_timeout_s", async () => {
  const logs: string[] = [];
  const stop = new AbortController();
  const { promise: listening, resolve } = Promise.withResolvers<Deno.NetAddr>();
  let healthDuringDrain = 0;
  let drainAborted = false;
  const running = runServer({
    config: TEST_CONFIG,
    log: createLogger((line) => logs.push(line)),
    calls: REFUSE_ALL,
    onStatusEvent: () => {},
    signal: stop.signal,
    onListen: resolve,
    async drain({ signal }) {
      const response = await fetch(`http://127.0.0.1:${(await listening).port}/healthz`);
      healthDuringDrain = response.status;
      await response.body?.cancel();
      // A call that never ends: the drain must be cut at drain_timeout_s.
      await new Promise<void>((done) =>
        signal.addEventListener("abort", () => done(), { once: true })
      );
      drainAborted = signal.aborted;
    },
  });
  await listening;
  stop.abort();
  await running;
  assert.equal(healthDuringDrain, 503);
  assert.ok(drainAborted);
  assert.ok(logs.some((line) => line.includes("[HTTP] draining reason=abort")));
  assert.ok(logs.at(-1)?.includes("[HTTP] stopped"));
});

Deno.test("startServer() serves TLS from the PEM files in the config", async () => {
  const config = parseConfig(
    `[server]\nlisten = "127.0.0.1:0"\npublic_url = "https://localhost"\n` +
      `tls_cert = "${fixture("tls_cert.pem")}"\ntls_key = "${fixture("tls_key.pem")}"\n` +
      `[twilio]\nvalidate_signatures = false\n`,
    { env: {}, credentialsDir: null },
  );
  const ac = new AbortController();
  const server = startServer({
    config,
    handler: () => new Response("over tls"),
    signal: ac.signal,
  });
  const client = Deno.createHttpClient({
    caCerts: [await Deno.readTextFile(fixture("tls_ca.pem"))],
  });
  try {
    const response = await fetch(`https://localhost:${server.addr.port}/`, { client });
    assert.equal(await response.text(), "over tls");
  } finally {
    client.close();
    ac.abort();
    await server.finished;
  }
});

Deno.test("startServer() names a TLS file it cannot read", () => {
  const config = parseConfig(
    `[server]\nlisten = "127.0.0.1:0"\npublic_url = "https://a.b"\n` +
      `tls_cert = "/nonexistent/cert.pem"\ntls_key = "/nonexistent/key.pem"\n` +
      `[twilio]\nvalidate_signatures = false\n`,
    { env: {}, credentialsDir: null },
  );
  assert.throws(
    () => startServer({ config, handler: () => new Response("") }),
    (error) =>
      error instanceof Error &&
      error.message.startsWith('Cannot read the TLS certificate "/nonexistent/cert.pem"'),
  );
});
