import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { openCallReader } from "../src/store/read.ts";
import { devBanner, devToml, parseDevArgs } from "../scripts/dev.ts";
import { fixtureClips } from "../tools/sandbox/sandbox.ts";
import type { ProviderServers } from "../tools/sandbox/sandbox.ts";

const DEV = fileURLToPath(new URL("../scripts/dev.ts", import.meta.url));
/** The repository root, where `deno task` finds deno.json. */
const REPO = fileURLToPath(new URL("..", import.meta.url));

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Reads `stream` line by line into `lines`, resolving `waitFor(pattern)` promises as they match. */
function collect(stream: ReadableStream<Uint8Array>) {
  const lines: string[] = [];
  const waiters: { pattern: RegExp; resolve: () => void }[] = [];
  const done = (async () => {
    let buffered = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      let newline: number;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        lines.push(line);
        for (const w of waiters.filter((w) => w.pattern.test(line))) w.resolve();
      }
    }
  })();
  return {
    lines,
    done,
    waitFor(pattern: RegExp, timeoutMs: number): Promise<void> {
      if (lines.some((l) => pattern.test(l))) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`Timed out waiting for ${pattern}: ${lines.join("\n")}`)),
          timeoutMs,
        );
        waiters.push({ pattern, resolve: () => (clearTimeout(timer), resolve()) });
      });
    },
  };
}

Deno.test("deno task dev runs Kav on sandbox providers that simulate --calls 5 completes", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "kav-dev-" });
  const port = freePort();
  const env = { GOOGLE_APPLICATION_CREDENTIALS: "", OPENAI_API_KEY: "" };
  const dev = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", DEV, "--port", String(port), "--admin-port", "0"],
    cwd,
    env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = collect(dev.stdout);
  const err = collect(dev.stderr);
  try {
    await out.waitFor(/\[DEV\] ready/, 60_000);
    assert.match(out.lines[0], /\[DEV\] running against sandbox providers/);
    // The console's URL and token are printed; the page and its API answer with that token.
    const line = out.lines.find((l) => /\[DEV\] console: open /.test(l)) ?? "";
    const shown = /open (http:\/\/127\.0\.0\.1:\d+) and log in with the token (\w+);/.exec(line);
    assert.ok(shown, out.lines.join("\n"));
    const [, consoleUrl, token] = shown;
    const page = await fetch(`${consoleUrl}/`);
    assert.equal(page.status, 200);
    await page.body?.cancel();
    const live = await fetch(`${consoleUrl}/api/live`, {
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(live.status, 200);
    assert.deepEqual((await live.json()).calls, []);
    assert.match(
      out.lines[0],
      /GOOGLE_APPLICATION_CREDENTIALS and OPENAI_API_KEY, or pass --config/,
    );

    // Exactly as the README says, through the task and its `--`.
    const simulate = await new Deno.Command(Deno.execPath(), {
      args: [
        "task",
        "simulate",
        "--",
        "--url",
        `http://127.0.0.1:${port}`,
        "--calls",
        "5",
        "--json",
        "--quiet",
      ],
      cwd: REPO,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(simulate.stdout);
    assert.equal(
      simulate.code,
      0,
      `simulate failed:\n${text}\n${new TextDecoder().decode(simulate.stderr)}`,
    );
    const report = JSON.parse(text);
    assert.equal(report.calls.length, 5);
    for (const call of report.calls) {
      assert.equal(call.greeting.received, true, `greeting of call ${call.index}`);
      assert.equal(call.turns.length, 1);
      assert.equal(call.turns[0].answered, true, `answer of call ${call.index}`);
      assert.deepEqual(call.errors, []);
    }

    dev.kill("SIGTERM");
    assert.equal((await dev.status).code, 0);
    await Promise.all([out.done, err.done]);

    // Each caller line was transcribed: the store holds it as the caller's turn.
    const reader = openCallReader(`${cwd}/.kav-dev/kav.db`);
    try {
      const calls = reader.listCalls({ sinceMs: 0 });
      assert.equal(calls.length, 5);
      const texts = new Set(fixtureClips().map((c) => c.text));
      for (const call of calls) {
        const said = reader.turns(call.callSid).filter((t) => t.speaker === "caller");
        assert.equal(said.length, 1, `caller turns of ${call.callSid}`);
        assert.ok(texts.has(said[0].text), `transcript ${said[0].text}`);
      }
    } finally {
      reader.close();
    }
    assert.match(
      await Deno.readTextFile(`${cwd}/.kav-dev/kav.toml`),
      /validate_signatures = false/,
    );
  } finally {
    try {
      dev.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await dev.status;
    await Promise.all([out.done, err.done]);
    await Deno.remove(cwd, { recursive: true });
  }
});

Deno.test("parseDevArgs() and devBanner() describe what dev runs against", () => {
  assert.deepEqual(parseDevArgs([]), {
    port: 8080,
    adminPort: 9090,
    configPath: null,
    speech: "google",
  });
  assert.deepEqual(parseDevArgs(["--port=9000", "--config", "k.toml", "--admin-port", "0"]), {
    port: 9000,
    adminPort: 0,
    configPath: "k.toml",
    speech: "google",
  });
  // `deno task dev -- --port 9000` hands the `--` to the script.
  assert.deepEqual(parseDevArgs(["--", "--port", "9000"]), {
    port: 9000,
    adminPort: 9090,
    configPath: null,
    speech: "google",
  });
  assert.deepEqual(parseDevArgs(["--speech", "openai"]), {
    port: 8080,
    adminPort: 9090,
    configPath: null,
    speech: "openai",
  });
  assert.throws(() => parseDevArgs(["--speech", "whisper"]), /expected google or openai/);
  assert.equal(parseDevArgs(["-h"]), "help");
  assert.throws(() => parseDevArgs(["--port", "99999"]), RangeError);
  assert.throws(() => parseDevArgs(["--admin-port", "x"]), /--admin-port "x": expected 0-65535/);
  assert.throws(() => parseDevArgs(["--nope"]), RangeError);
  assert.match(devBanner({ google: false, openai: false }, null), /^running against sandbox/);
  assert.match(devBanner({ google: true, openai: false }, null), /Google Speech .* sandbox LLM/);
  assert.match(devBanner(null, "/etc/kav/kav.toml"), /running with \/etc\/kav\/kav.toml/);
  assert.match(
    devBanner({ google: false, openai: false }, null, "openai"),
    /OpenAI-compatible API .* local speech server .* sandbox LLM .*docs\/speech-providers.md/,
  );
});

Deno.test("devToml() points only the providers without credentials at the sandbox", () => {
  const servers = {
    speech: { address: "127.0.0.1:1" },
    tts: { address: "127.0.0.1:2" },
    llm: { baseUrl: "http://127.0.0.1:3/v1" },
    openaiSpeech: { baseUrl: "http://127.0.0.1:4/v1" },
  } as unknown as ProviderServers;
  const sandboxed = devToml({
    port: 8080,
    dir: "/d",
    real: { google: false, openai: false },
    servers,
  });
  assert.match(sandboxed, /endpoint = "127.0.0.1:1"/);
  assert.match(sandboxed, /base_url = "http:\/\/127.0.0.1:3\/v1"/);
  const google = devToml({ port: 8080, dir: "/d", real: { google: true, openai: false }, servers });
  assert.doesNotMatch(google, /127.0.0.1:1/);
  assert.match(google, /base_url = "http:\/\/127.0.0.1:3\/v1"/);
  assert.match(google, /path = "\/d\/kav.db"/);
  const openai = devToml({
    port: 8080,
    dir: "/d",
    real: { google: false, openai: false },
    servers,
    speech: "openai",
  });
  assert.doesNotMatch(openai, /127.0.0.1:[12]"/, "no gRPC speech server");
  assert.match(
    openai,
    /\[stt\]\nprovider = "openai"\n\[stt.openai\]\nbase_url = "http:\/\/127.0.0.1:4\/v1"/,
  );
  assert.match(
    openai,
    /\[tts\]\nprovider = "openai"\n\[tts.openai\]\nbase_url = "http:\/\/127.0.0.1:4\/v1"/,
  );
  assert.match(openai, /\[llm\]\nbase_url = "http:\/\/127.0.0.1:3\/v1"/);
});

Deno.test("deno task dev --speech openai answers calls through the OpenAI-compatible speech API", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "kav-dev-" });
  const port = freePort();
  const dev = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", DEV, "--port", String(port), "--speech", "openai"]
      .concat(["--admin-port", "0"]),
    cwd,
    env: { GOOGLE_APPLICATION_CREDENTIALS: "", OPENAI_API_KEY: "" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = collect(dev.stdout);
  const err = collect(dev.stderr);
  try {
    await out.waitFor(/\[DEV\] ready/, 60_000);
    assert.match(out.lines[0], /\[DEV\] running with speech through the OpenAI-compatible API/);
    const simulate = await new Deno.Command(Deno.execPath(), {
      args: ["task", "simulate", "--", "--url", `http://127.0.0.1:${port}`, "--calls", "2"]
        .concat(["--json", "--quiet"]),
      cwd: REPO,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(simulate.stdout);
    assert.equal(simulate.code, 0, `simulate failed:\n${text}`);
    const report = JSON.parse(text);
    for (const call of report.calls) {
      assert.equal(call.greeting.received, true, `greeting of call ${call.index}`);
      assert.equal(call.turns[0].answered, true, `answer of call ${call.index}`);
    }
    dev.kill("SIGTERM");
    assert.equal((await dev.status).code, 0);
    await Promise.all([out.done, err.done]);
    const toml = await Deno.readTextFile(`${cwd}/.kav-dev/kav.toml`);
    assert.match(toml, /\[stt\]\nprovider = "openai"/);
    assert.match(toml, /\[tts\]\nprovider = "openai"/);
    const reader = openCallReader(`${cwd}/.kav-dev/kav.db`);
    try {
      const texts = new Set(fixtureClips().map((c) => c.text));
      const calls = reader.listCalls({ sinceMs: 0 });
      assert.equal(calls.length, 2);
      for (const call of calls) {
        const said = reader.turns(call.callSid).filter((t) => t.speaker === "caller");
        assert.ok(said.length >= 1 && texts.has(said[0].text), `transcript of ${call.callSid}`);
      }
    } finally {
      reader.close();
    }
  } finally {
    try {
      dev.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await dev.status;
    await Promise.all([out.done, err.done]);
    await Deno.remove(cwd, { recursive: true });
  }
});
