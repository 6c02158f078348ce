import assert from "node:assert/strict";
import { loadConfig, parseConfig } from "../src/config/load.ts";
import type { Config } from "../src/config/types.ts";
import { ConfigError, type ConfigProblem } from "../src/errors.ts";

const ROOT = new URL("../", import.meta.url);
const FIXTURES = new URL("tests/fixtures/config/", ROOT);
const fixture = (name: string) => new URL(name, FIXTURES).pathname;

/** No secrets and no credentials directory unless a test adds them. */
const NO_SECRETS = { env: {}, credentialsDir: null } as const;
const MINIMAL =
  `[server]\npublic_url = "https://kav.example.com"\n[twilio]\nvalidate_signatures = false\n`;

function problemsOf(text: string, options: Parameters<typeof parseConfig>[1] = NO_SECRETS) {
  try {
    parseConfig(text, options);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
    return error.problems;
  }
  assert.fail("expected parseConfig() to throw");
}

function only(problems: readonly ConfigProblem[]): ConfigProblem {
  assert.equal(problems.length, 1, JSON.stringify(problems));
  return problems[0];
}

Deno.test("parseConfig() fills every key with the SPEC section 4 defaults", () => {
  const config = parseConfig(MINIMAL, NO_SECRETS);
  assert.equal(config.server.hostname, "0.0.0.0");
  assert.equal(config.server.port, 8080);
  assert.equal(config.server.public_url, "https://kav.example.com");
  assert.equal(config.server.drain_timeout_s, 30);
  assert.equal(config.server.tls_cert, null);
  assert.equal(config.server.max_calls, 500);
  assert.equal(config.server.max_ws_message_bytes, 65536);
  assert.equal(config.server.max_body_bytes, 65536);
  assert.equal(config.server.idle_media_timeout_s, 15);
  assert.equal(config.server.max_call_duration_s, 3600);
  assert.equal(config.server.bad_signature_per_ip_per_min, 30);
  assert.equal(config.twilio.auth_token, null);
  assert.equal(config.call.language, "he-IL");
  assert.ok(/[\u0590-\u05FF]/.test(config.call.greeting), "greeting is Hebrew");
  assert.ok(/[\u0590-\u05FF]/.test(config.call.apology), "apology is Hebrew");
  assert.deepEqual(config.audio, {
    rx_queue_frames: 200,
    tx_queue_frames: 144,
    tx_lead_ms: 60,
    tx_max_buffered_bytes: 32768,
  });
  assert.deepEqual(
    [config.stt.batch_ms, config.stt.partial_debounce_ms, config.stt.timeout_ms],
    [40, 90, 320],
  );
  assert.equal(config.stt.vad_hangover_ms, 180);
  assert.equal(config.stt.restart_after_s, 290);
  assert.deepEqual(config.stt.google, {
    endpoint: "speech.googleapis.com",
    fallback_endpoint: "us-central1-speech.googleapis.com",
    insecure: false,
    model: "phone_call",
    use_enhanced: true,
  });
  assert.equal(config.stt.provider, "google");
  assert.deepEqual(config.stt.openai, {
    base_url: "https://api.openai.com/v1",
    model: "gpt-4o-transcribe",
    api_key: null,
    timeout_ms: 10_000,
    fallback_base_url: null,
    stream: false,
    prompt: null,
    silence_ms: 500,
    max_utterance_s: 15,
  });
  assert.deepEqual(config.tts, {
    provider: "google",
    voice: "he-IL-Wavenet-A",
    google: { endpoint: "texttospeech.googleapis.com", insecure: false },
    openai: {
      base_url: "https://api.openai.com/v1",
      model: "gpt-4o-mini-tts",
      api_key: null,
      timeout_ms: 10_000,
      voice: "alloy",
      instructions: null,
      response_format: "pcm",
      sample_rate: 24_000,
      stream: true,
    },
  });
  assert.deepEqual(config.llm, {
    provider: "openai",
    base_url: "https://api.openai.com/v1",
    model: "gpt-4o-mini",
    timeout_ms: 8000,
    api_key: null,
    temperature: 0.3,
    max_tokens: 300,
  });
  assert.deepEqual(config.storage, {
    path: "/var/lib/kav/kav.db",
    retention_days: 0,
    url: null,
    password: null,
  });
  assert.deepEqual(config.log, { transcripts: true });
  assert.deepEqual(config.crm, { url: null, secret: null, context_url: null });
  assert.deepEqual(config.google, { credentials_path: null });
});

Deno.test("parseConfig() reads kav.example.toml as exactly the defaults", async () => {
  const example = await Deno.readTextFile(new URL("kav.example.toml", ROOT));
  const options = { env: { TWILIO_AUTH_TOKEN: "t" }, credentialsDir: null };
  const fromExample = parseConfig(example, options);
  const fromDefaults = parseConfig(
    `[server]\npublic_url = "${fromExample.server.public_url}"\n`,
    options,
  );
  assert.deepEqual(fromExample, fromDefaults);
});

Deno.test("kav.example.toml comments every key", async () => {
  const lines = (await Deno.readTextFile(new URL("kav.example.toml", ROOT))).split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (/^[a-z_]+ = /.test(lines[i])) {
      assert.ok(lines[i - 1].startsWith("#"), `no comment above line ${i + 1}: ${lines[i]}`);
    }
  }
});

Deno.test("parseConfig() returns a deeply frozen tree", () => {
  const config: Config = parseConfig(MINIMAL, NO_SECRETS);
  assert.ok(Object.isFrozen(config));
  assert.ok(Object.isFrozen(config.stt.google));
  assert.throws(() => {
    (config.server as { max_calls: number }).max_calls = 1;
  }, TypeError);
});

Deno.test("parseConfig() parses server.listen as host:port, IPv6 in brackets", () => {
  const withListen = (listen: string) =>
    parseConfig(`[server]\nlisten = "${listen}"\npublic_url = "https://a.example/"\n`, {
      env: { TWILIO_AUTH_TOKEN: "t" },
      credentialsDir: null,
    }).server;
  assert.deepEqual(
    [withListen("[::]:8080").hostname, withListen("[::]:8080").port],
    ["::", 8080],
  );
  assert.deepEqual([withListen("127.0.0.1:0").hostname, withListen("127.0.0.1:0").port], [
    "127.0.0.1",
    0,
  ]);
  assert.equal(withListen("localhost:9000").hostname, "localhost");
  assert.equal(withListen("[::1]:1").public_url, "https://a.example", "trailing slash dropped");
  for (const bad of ["8080", "host:", "host:70000", "[::]", "a b:1"]) {
    const problem = only(
      problemsOf(
        `[server]\nlisten = "${bad}"\npublic_url = "https://a.b"\n[twilio]\nvalidate_signatures = false\n`,
      ),
    );
    assert.equal(problem.key, "server.listen");
    assert.equal(problem.line, 2);
    assert.ok(problem.message.includes(JSON.stringify(bad)), problem.message);
  }
});

Deno.test("parseConfig() names an unknown key and its line", () => {
  const problem = only(problemsOf(`${MINIMAL}[audio]\ntx_leed_ms = 40\n`));
  assert.deepEqual(problem, {
    key: "audio.tx_leed_ms",
    line: 6,
    message: "unknown key: did you mean audio.tx_lead_ms?",
  });
  const table = only(problemsOf(`${MINIMAL}\n[sttt]\nbatch_ms = 40\n`));
  assert.deepEqual([table.key, table.line, table.message], [
    "sttt",
    6,
    "unknown key: did you mean stt?",
  ]);
  const far = only(problemsOf(`${MINIMAL}[audio]\nvolume = 3\n`));
  assert.equal(far.message, "unknown key", "no guess when nothing is close");
});

Deno.test("parseConfig() names a wrong type with the key, line and value", () => {
  const problem = only(problemsOf(`${MINIMAL}[stt]\nbatch_ms = "40"\n`));
  assert.equal(problem.key, "stt.batch_ms");
  assert.equal(problem.line, 6);
  assert.equal(problem.message, 'must be a number: current value is "40"');
  const whole = only(problemsOf(`${MINIMAL}[audio]\ntx_lead_ms = 60.5\n`));
  assert.equal(whole.message, "must be a whole number: current value is 60.5");
  const bool = only(problemsOf(`${MINIMAL}[log]\ntranscripts = 1\n`));
  assert.deepEqual([bool.key, bool.line], ["log.transcripts", 6]);
  const table = only(problemsOf(`${MINIMAL}stt = 5\n`));
  assert.deepEqual([table.key, table.message], ["twilio.stt", "unknown key"]);
  const notTable = only(problemsOf(`stt = 5\n${MINIMAL}`));
  assert.deepEqual([notTable.key, notTable.line, notTable.message], [
    "stt",
    1,
    "must be a table: current value is 5",
  ]);
});

Deno.test("parseConfig() names an out-of-range value with its bounds", () => {
  const problem = only(problemsOf(`${MINIMAL}[stt]\nbatch_ms = 5\n`));
  assert.equal(
    `${problem.key} (line ${problem.line}): ${problem.message}`,
    "stt.batch_ms (line 6): must be between 20 and 200: current value is 5",
  );
  const enumProblem = only(problemsOf(`${MINIMAL}[llm]\nprovider = "anthropic"\n`));
  assert.equal(enumProblem.message, 'must be one of "openai": current value is "anthropic"');
});

Deno.test("parseConfig() requires server.public_url and checks it is a plain http(s) URL", () => {
  const missing = only(
    problemsOf(`[server]\nlisten = "0.0.0.0:1"\n[twilio]\nvalidate_signatures = false\n`),
  );
  assert.deepEqual(missing, { key: "server.public_url", line: 1, message: "is required" });
  const noTable = only(problemsOf(`[twilio]\nvalidate_signatures = false\n`));
  assert.deepEqual(noTable, { key: "server.public_url", line: null, message: "is required" });
  for (const bad of ["kav.example.com", "ftp://kav.example.com", "https://k.example/?a=1"]) {
    const problem = only(
      problemsOf(`[server]\npublic_url = "${bad}"\n[twilio]\nvalidate_signatures = false\n`),
    );
    assert.deepEqual([problem.key, problem.line], ["server.public_url", 2]);
  }
});

Deno.test("parseConfig() reports a TOML syntax error with its line", () => {
  const problem = only(problemsOf(`[server]\npublic_url = "https://a.b"\n\nlisten = \n`));
  assert.equal(problem.key, "syntax");
  assert.equal(problem.line, 4);
  assert.ok(problem.message.startsWith("invalid TOML: "), problem.message);
  const duplicate = only(
    problemsOf(`[server]\npublic_url = "https://a.b"\npublic_url = "https://c.d"\n`),
  );
  assert.equal(duplicate.line, 3);
});

Deno.test("parseConfig() finds lines in dotted tables, dotted keys and after multi-line strings", () => {
  const text = [
    "[server]", // 1
    'public_url = "https://a.b"', // 2
    "[twilio]", // 3
    "validate_signatures = false", // 4
    "[call]", // 5
    'system_prompt = """', // 6
    "bogus = 1", // 7: text inside the prompt, not a key
    '"""', // 8
    "bogus = 2", // 9
    "[stt]", // 10
    "google.insecure = 3", // 11
    '[ "tts" . google ]', // 12
    'endpoint = "not a host"', // 13
  ].join("\n");
  const problems = problemsOf(text);
  assert.deepEqual(problems.map((p) => [p.key, p.line]), [
    ["call.bogus", 9],
    ["stt.google.insecure", 11],
    ["tts.google.endpoint", 13],
  ]);
});

Deno.test("parseConfig() reports every problem of a file at once, in line order", () => {
  const problems = problemsOf(Deno.readTextFileSync(fixture("bad.toml")));
  assert.deepEqual(problems.map((p) => [p.key, p.line]), [
    ["server.public_url", 2],
    ["server.public_urll", 3],
    ["server.max_calls", 4],
    ["audio.rx_queue_frames", 7],
    ["stt.google.insecure", 10],
    ["twilio.validate_signatures", 12],
    ["twilio.auth_token", 13],
  ]);
  const secret = problems.find((p) => p.key === "twilio.auth_token");
  assert.ok(secret?.message.includes("TWILIO_AUTH_TOKEN"));
  assert.ok(!secret?.message.includes("do-not-put-secrets-here"), "secret value not echoed");
});

Deno.test("parseConfig() refuses validate_signatures without an auth token", () => {
  const problem = only(problemsOf(`[server]\npublic_url = "https://a.b"\n`));
  assert.equal(problem.key, "twilio.validate_signatures");
  assert.equal(problem.line, null, "no [twilio] table to point at");
  const config = parseConfig(`[server]\npublic_url = "https://a.b"\n`, {
    env: { TWILIO_AUTH_TOKEN: "from-env" },
    credentialsDir: null,
  });
  assert.equal(config.twilio.auth_token, "from-env");
  assert.equal(config.twilio.validate_signatures, true);
  const forRecords = parseConfig(`[server]\npublic_url = "https://a.b"\n`, {
    ...NO_SECRETS,
    requireAuthToken: false,
  });
  assert.equal(forRecords.twilio.auth_token, null);
});

Deno.test("parseConfig() needs tls_cert and tls_key together", () => {
  const problem = only(
    problemsOf(MINIMAL.replace("[server]\n", '[server]\ntls_cert = "/c.pem"\n')),
  );
  assert.deepEqual([problem.key, problem.line, problem.message], [
    "server.tls_cert",
    2,
    "is set but server.tls_key is not: set both or neither",
  ]);
  const both = parseConfig(
    MINIMAL.replace("[server]\n", '[server]\ntls_cert = "/c.pem"\ntls_key = "/k.pem"\n'),
    NO_SECRETS,
  );
  assert.deepEqual([both.server.tls_cert, both.server.tls_key], ["/c.pem", "/k.pem"]);
});

Deno.test("parseConfig() reads secrets from env first, then systemd credentials", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kav_creds_" });
  try {
    await Deno.writeTextFile(`${dir}/twilio_auth_token`, "cred-token\n");
    await Deno.writeTextFile(`${dir}/openai_api_key`, "sk-cred");
    await Deno.writeTextFile(`${dir}/google_credentials`, "{}");
    const text = `[server]\npublic_url = "https://a.b"\n`;
    const fromDir = parseConfig(text, { env: {}, credentialsDir: dir });
    assert.equal(fromDir.twilio.auth_token, "cred-token", "trailing newline dropped");
    assert.equal(fromDir.llm.api_key, "sk-cred");
    assert.equal(fromDir.google.credentials_path, `${dir}/google_credentials`);
    assert.equal(fromDir.crm.secret, null);
    const viaEnv = parseConfig(text, {
      env: { CREDENTIALS_DIRECTORY: dir, OPENAI_API_KEY: "sk-env", TWILIO_AUTH_TOKEN: "" },
    });
    assert.equal(viaEnv.llm.api_key, "sk-env", "env wins");
    assert.equal(viaEnv.twilio.auth_token, "cred-token", "empty env value is absent");
    const disabled = problemsOf(text, {
      env: { CREDENTIALS_DIRECTORY: dir },
      credentialsDir: null,
    });
    assert.equal(only(disabled).key, "twilio.validate_signatures");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseConfig() reports an unreadable credential file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kav_creds_" });
  try {
    // A directory where a file should be: reading it fails with something other than NotFound.
    await Deno.mkdir(`${dir}/openai_api_key`);
    const problem = only(problemsOf(MINIMAL, { env: {}, credentialsDir: dir }));
    assert.equal(problem.key, "llm.api_key");
    assert.ok(problem.message.startsWith("cannot read the credential file"), problem.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseConfig() turns an empty string into null for optional keys", () => {
  const config = parseConfig(
    `${MINIMAL}[stt.google]\nfallback_endpoint = ""\n[crm]\nurl = "https://crm.example/hook"\n`,
    NO_SECRETS,
  );
  assert.equal(config.stt.google.fallback_endpoint, null);
  assert.equal(config.crm.url, "https://crm.example/hook");
});

Deno.test("loadConfig() reads a file and names a missing one", async () => {
  const config = await loadConfig(fixture("good.toml"), NO_SECRETS);
  assert.equal(config.server.port, 0);
  assert.equal(config.stt.google.endpoint, "127.0.0.1:50051");
  await assert.rejects(loadConfig(fixture("missing.toml"), NO_SECRETS), (error) => {
    assert.ok(error instanceof ConfigError);
    assert.equal(error.problems[0].key, "file");
    assert.ok(error.message.includes("missing.toml"));
    return true;
  });
});

async function checkConfig(
  file: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "check-config", file],
    cwd: ROOT.pathname,
    env: { TWILIO_AUTH_TOKEN: "", CREDENTIALS_DIRECTORY: "" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: output.code, stdout: decode(output.stdout), stderr: decode(output.stderr) };
}

Deno.test("kav check-config prints ok and exits 0 for a good file", async () => {
  const result = await checkConfig(fixture("good.toml"));
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), "ok");
});

Deno.test("kav check-config prints one problem per line and exits 1 for a bad file", async () => {
  const result = await checkConfig(fixture("bad.toml"));
  assert.equal(result.code, 1);
  const lines = result.stderr.trim().split("\n");
  assert.equal(lines.length, 7, result.stderr);
  assert.equal(lines[0], "server.public_url (line 2): is required");
  assert.equal(
    lines[1],
    "server.public_urll (line 3): unknown key: did you mean server.public_url?",
  );
  assert.ok(lines[3].startsWith("audio.rx_queue_frames (line 7): must be between 10 and"));
  const syntax = await checkConfig(fixture("syntax.toml"));
  assert.equal(syntax.code, 1);
  assert.ok(syntax.stderr.startsWith("syntax (line 3): invalid TOML"), syntax.stderr);
});

Deno.test("parseConfig() reads the openai speech providers (SPEC 10)", () => {
  const config = parseConfig(
    `${MINIMAL}[stt]\nprovider = "openai"\n[stt.openai]\nbase_url = "http://10.0.0.5:8000/v1/"\n` +
      `fallback_base_url = "https://api.openai.com/v1"\nmodel = "ivrit-ai/whisper-large-v3-turbo"\n` +
      `stream = true\nprompt = "Kav"\n[tts]\nprovider = "openai"\n[tts.openai]\n` +
      `base_url = "http://localhost:8880/v1"\nvoice = "nova"\nresponse_format = "wav"\n`,
    { env: { OPENAI_API_KEY: "sk-llm", OPENAI_TTS_API_KEY: "sk-tts" }, credentialsDir: null },
  );
  assert.equal(config.stt.provider, "openai");
  assert.equal(config.stt.openai.base_url, "http://10.0.0.5:8000/v1", "trailing slash dropped");
  assert.equal(config.stt.openai.fallback_base_url, "https://api.openai.com/v1");
  assert.equal(config.stt.openai.model, "ivrit-ai/whisper-large-v3-turbo");
  assert.equal(config.stt.openai.stream, true);
  assert.equal(config.stt.openai.prompt, "Kav");
  assert.equal(config.stt.openai.api_key, "sk-llm", "no STT key of its own: the LLM's");
  assert.equal(config.tts.provider, "openai");
  assert.equal(config.tts.openai.base_url, "http://localhost:8880/v1");
  assert.equal(config.tts.openai.voice, "nova");
  assert.equal(config.tts.openai.response_format, "wav");
  assert.equal(config.tts.openai.api_key, "sk-tts", "its own key wins");
});

Deno.test("parseConfig() allows plain http for speech servers only on loopback or private hosts", () => {
  const speechUrl = (url: string) =>
    problemsOf(`${MINIMAL}[stt.openai]\nbase_url = "${url}"\n[tts.openai]\nbase_url = "${url}"\n`);
  for (
    const good of [
      "http://127.0.0.1:8000/v1",
      "http://localhost:8000/v1",
      "http://[::1]:8000/v1",
      "http://10.1.2.3/v1",
      "http://172.20.0.4:9000/v1",
      "http://192.168.1.10/v1",
      "http://[fd12:3456::1]/v1",
      "http://whisper:8000/v1",
      "http://speech.internal/v1",
      "https://speech.example.com/v1",
    ]
  ) {
    assert.doesNotThrow(
      () => parseConfig(`${MINIMAL}[stt.openai]\nbase_url = "${good}"\n`, NO_SECRETS),
      good,
    );
  }
  for (
    const bad of [
      "http://speech.example.com/v1",
      "http://8.8.8.8/v1",
      "http://172.32.0.1/v1",
      "http://[2001:db8::1]/v1",
    ]
  ) {
    const problems = speechUrl(bad);
    assert.deepEqual(problems.map((p) => [p.key, p.line]), [
      ["stt.openai.base_url", 6],
      ["tts.openai.base_url", 8],
    ], bad);
    assert.ok(problems[0].message.startsWith("must use https unless the host is a loopback"));
    assert.ok(problems[0].message.endsWith(JSON.stringify(bad)), problems[0].message);
  }
  const problem = only(problemsOf(`${MINIMAL}[stt.openai]\nfallback_base_url = "ftp://x"\n`));
  assert.deepEqual([problem.key, problem.line], ["stt.openai.fallback_base_url", 6]);
});

Deno.test("parseConfig() names bad openai speech keys with their lines", () => {
  const problems = problemsOf(
    `${MINIMAL}[stt]\nprovider = "whisper"\n[tts.openai]\nresponse_format = "mp3"\n` +
      `sample_rate = 4000\napi_key = "sk-in-file"\n`,
  );
  assert.deepEqual(problems.map((p) => [p.key, p.line]), [
    ["stt.provider", 6],
    ["tts.openai.response_format", 8],
    ["tts.openai.sample_rate", 9],
    ["tts.openai.api_key", 10],
  ]);
  assert.equal(
    problems[0].message,
    'must be one of "google", "openai": current value is "whisper"',
  );
  assert.equal(problems[1].message, 'must be one of "pcm", "wav": current value is "mp3"');
  assert.equal(
    problems[3].message,
    "is not read from the file: set env OPENAI_TTS_API_KEY or the systemd credential openai_tts_api_key",
  );
});

Deno.test("parseConfig() reads storage.url, its password from PGPASSWORD or db_password, and node_id", async () => {
  const text = MINIMAL + '[storage]\nurl = "postgres://kav@db1.example.com:5433/kav"\n';
  const plain = parseConfig(text, NO_SECRETS);
  assert.equal(plain.storage.url, "postgres://kav@db1.example.com:5433/kav");
  assert.equal(plain.storage.password, null);
  assert.equal(parseConfig(text, { env: { PGPASSWORD: "pw-env" } }).storage.password, "pw-env");
  const dir = await Deno.makeTempDir({ prefix: "kav_creds_" });
  try {
    await Deno.writeTextFile(`${dir}/db_password`, "pw-cred\n");
    assert.equal(parseConfig(text, { env: {}, credentialsDir: dir }).storage.password, "pw-cred");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // Several hosts (a primary and its standby) and driver options are kept as written.
  const multi = "postgres://kav@db1:5432,db2:5432/kav?target_session_attrs=read-write";
  assert.equal(
    parseConfig(MINIMAL + `[storage]\nurl = "${multi}"\n`, NO_SECRETS).storage.url,
    multi,
  );
  assert.equal(parseConfig(MINIMAL + '[storage]\nurl = ""\n', NO_SECRETS).storage.url, null);
  const named = parseConfig(
    MINIMAL.replace("[server]\n", '[server]\nnode_id = "kav-b"\n'),
    NO_SECRETS,
  );
  assert.equal(named.server.node_id, "kav-b");
  const host = Deno.hostname().split(".")[0];
  assert.equal(parseConfig(MINIMAL, NO_SECRETS).server.node_id, host);
});

Deno.test("parseConfig() refuses a password in storage.url, a bad URL and a bad node_id", () => {
  const secret = only(
    problemsOf(MINIMAL + '[storage]\nurl = "postgres://kav:hunter2@db/kav"\n'),
  );
  assert.equal(secret.key, "storage.url");
  assert.match(secret.message, /must not carry a password.*PGPASSWORD.*db_password/);
  assert.ok(!secret.message.includes("hunter2"), "the password is not echoed");
  for (const url of ["mysql://kav@db/kav", "postgres://db/kav", "postgres://kav@db", "db/kav"]) {
    const problem = only(problemsOf(MINIMAL + `[storage]\nurl = "${url}"\n`));
    assert.equal(problem.key, "storage.url", url);
  }
  const inFile = only(problemsOf(MINIMAL + '[storage]\npassword = "x"\n'));
  assert.deepEqual([inFile.key, inFile.message], [
    "storage.password",
    "is not read from the file: set env PGPASSWORD or the systemd credential db_password",
  ]);
  const node = only(problemsOf(MINIMAL.replace("[server]\n", '[server]\nnode_id = "a b"\n')));
  assert.equal(node.key, "server.node_id");
});

const ACTS = `${MINIMAL}[call]
end_call = false
filler_after_ms = 500
[call.transfer]
sales = "+97231234567"
support = "sip:support@pbx.example.com"

[[tools]]
name = "lookup_customer"
description = "Find the caller's customer record"
url = "https://crm.example.com/kav/lookup_customer"
timeout_ms = 4000
filler = "רגע, אני בודקת."
[tools.parameters]
type = "object"
required = ["phone"]
[tools.parameters.properties.phone]
type = "string"

[[tools]]
name = "open_ticket"
description = "Open a ticket"
url = "https://crm.example.com/kav/open_ticket"
[crm]
context_url = "https://crm.example.com/kav/context"
`;

Deno.test("parseConfig() reads SPEC 6: end_call, filler, transfer, tools and crm.context_url", () => {
  const config = parseConfig(ACTS, NO_SECRETS);
  assert.equal(config.call.end_call, false);
  assert.equal(config.call.filler_after_ms, 500);
  assert.deepEqual(config.call.transfer, {
    sales: "+97231234567",
    support: "sip:support@pbx.example.com",
  });
  assert.equal(config.crm.context_url, "https://crm.example.com/kav/context");
  assert.equal(config.tools.length, 2);
  assert.deepEqual(config.tools[0], {
    name: "lookup_customer",
    description: "Find the caller's customer record",
    url: "https://crm.example.com/kav/lookup_customer",
    timeout_ms: 4000,
    filler: "רגע, אני בודקת.",
    parameters: { type: "object", required: ["phone"], properties: { phone: { type: "string" } } },
  });
  assert.equal(config.tools[1].timeout_ms, 4000, "timeout_ms defaults to 4000");
  assert.equal(config.tools[1].filler, null);
  assert.deepEqual(config.tools[1].parameters, { type: "object", properties: {} });
  const defaults = parseConfig(MINIMAL, NO_SECRETS);
  assert.equal(defaults.call.end_call, true);
  assert.equal(defaults.call.filler_after_ms, 800);
  assert.deepEqual(defaults.call.transfer, {});
  assert.deepEqual(defaults.tools, []);
  assert.equal(defaults.crm.context_url, null);
});

Deno.test("parseConfig() names the key and line of a bad transfer target or tool", () => {
  const bad = ACTS
    .replace('sales = "+97231234567"', 'sales = "031234567"')
    .replace('url = "https://crm.example.com/kav/open_ticket"', 'url = "ftp://crm"')
    .replace('required = ["phone"]', 'requried = ["phone"]')
    .replace('name = "open_ticket"', 'name = "end_call"');
  const problems = problemsOf(bad);
  const line = (needle: string) => bad.split("\n").findIndex((l) => l.includes(needle)) + 1;
  assert.deepEqual(problems.map((p) => [p.key, p.line]), [
    ["call.transfer.sales", line("031234567")],
    ["tools[1].parameters", line("[tools.parameters]")],
    ["tools[2].name", line('name = "end_call"')],
    ["tools[2].url", line("ftp://crm")],
  ]);
  assert.match(problems[0].message, /E\.164/);
  assert.match(problems[1].message, /not a valid JSON Schema.*requried/);
  assert.match(problems[2].message, /built-in/);
});

Deno.test("parseConfig() refuses tools without a name, duplicate names and non-object schemas", () => {
  const text = `${MINIMAL}[[tools]]
description = "x"
url = "https://crm.example.com/a"
[[tools]]
name = "a"
description = "x"
url = "https://crm.example.com/a"
timeout_ms = 50
[[tools]]
name = "a"
description = "x"
url = "https://crm.example.com/a"
[tools.parameters]
type = "string"
`;
  const problems = problemsOf(text);
  assert.deepEqual(problems.map((p) => [p.key, p.line]), [
    ["tools[1].name", 5],
    ["tools[2].timeout_ms", 12],
    ["tools[3].name", 14],
    ["tools[3].parameters", 17],
  ]);
});
