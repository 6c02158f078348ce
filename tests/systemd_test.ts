import assert from "node:assert/strict";
import { RUNTIME_ENV, SYSTEM_PATHS } from "../scripts/build.ts";
import { SECRET_KEYS } from "../src/config/_schema.ts";
import { commandRuns, ignoredWhen, NOT_LINUX } from "./support/requires.ts";

const UNIT_PATH = new URL("../systemd/kav.service", import.meta.url).pathname;
const EXAMPLE_PATH = new URL("../kav.example.toml", import.meta.url).pathname;
const decoder = new TextDecoder();

/** `[Service]` etc. → key → every value assigned to it, in order. */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = new Map();
      sections.set(section[1], current);
      continue;
    }
    const eq = line.indexOf("=");
    assert.ok(current && eq > 0, `Cannot parse unit line ${JSON.stringify(line)}`);
    const key = line.slice(0, eq);
    current.set(key, [...current.get(key) ?? [], line.slice(eq + 1)]);
  }
  return sections;
}

const unit = parseUnit(await Deno.readTextFile(UNIT_PATH));
const service = unit.get("Service") ?? new Map<string, string[]>();
const one = (key: string) => {
  const values = service.get(key);
  assert.ok(values && values.length === 1, `expected exactly one ${key}=`);
  return values[0];
};

function seconds(value: string): number {
  const m = /^(\d+)(s|min)?$/.exec(value);
  assert.ok(m, `Cannot parse time span ${JSON.stringify(value)}`);
  return Number(m[1]) * (m[2] === "min" ? 60 : 1);
}

/** Default `server.<key>` from kav.example.toml, or `fallback` while that file is missing. */
async function exampleValue(key: string, fallback: string): Promise<string> {
  try {
    const text = await Deno.readTextFile(EXAMPLE_PATH);
    return new RegExp(`^${key}\\s*=\\s*"?([^"\\n#]+)"?`, "m").exec(text)?.[1].trim() ?? fallback;
  } catch {
    return fallback;
  }
}

Deno.test("kav.service runs the executable as a notify service with a watchdog", () => {
  assert.equal(one("Type"), "notify");
  assert.equal(one("NotifyAccess"), "main");
  assert.match(one("ExecStart"), /^\/usr\/local\/bin\/kav --config \/etc\/kav\/kav\.toml$/);
  assert.equal(one("Restart"), "on-failure");
  assert.ok(seconds(one("WatchdogSec")) >= 4, "WatchdogSec leaves room for a 2 s ping");
  assert.deepEqual(unit.get("Install")?.get("WantedBy"), ["multi-user.target"]);
});

Deno.test("kav.service stops later than the drain timeout", async () => {
  const drain = Number(await exampleValue("drain_timeout_s", "30"));
  assert.ok(seconds(one("TimeoutStopSec")) > drain, `TimeoutStopSec must exceed ${drain} s`);
});

Deno.test("kav.service keeps state, cache, HOME and DENO_DIR where build.ts allows writes", () => {
  assert.equal(one("DynamicUser"), "yes");
  assert.equal(`/var/lib/${one("StateDirectory")}`, SYSTEM_PATHS.stateDir);
  assert.equal(`/var/cache/${one("CacheDirectory")}`, SYSTEM_PATHS.cacheDir);
  const env = new Map(
    (service.get("Environment") ?? []).map((e) => e.split("=", 2) as [string, string]),
  );
  assert.equal(env.get("HOME"), SYSTEM_PATHS.stateDir);
  assert.ok(env.get("DENO_DIR")?.startsWith(`${SYSTEM_PATHS.cacheDir}/`));
  assert.equal(one("WorkingDirectory"), SYSTEM_PATHS.stateDir);
  assert.ok(SYSTEM_PATHS.credentialsDir.endsWith("/kav.service"));
});

Deno.test("kav.service loads every secret the config reads as an optional credential", () => {
  const loaded = new Map(
    (service.get("LoadCredential") ?? []).map((v) => v.split(":", 2) as [string, string]),
  );
  for (const [key, source] of SECRET_KEYS) {
    const from = loaded.get(source.credential);
    assert.ok(from, `no LoadCredential= for ${source.credential} (${key})`);
    // Relative names are searched in the credstore and skipped when missing (not fatal).
    assert.equal(from, `kav.${source.credential}`);
    assert.ok(RUNTIME_ENV.includes(source.env), `build.ts does not allow env ${source.env}`);
  }
  for (const name of ["twilio_auth_token", "openai_api_key", "google_credentials"]) {
    assert.ok(loaded.has(name), name);
  }
});

Deno.test("kav.service hardening leaves V8 its JIT and binds no privileged port", async () => {
  assert.equal(service.get("MemoryDenyWriteExecute"), undefined);
  const port = Number((await exampleValue("listen", "0.0.0.0:8080")).split(":").at(-1));
  if (port >= 1024) assert.equal(service.get("AmbientCapabilities"), undefined);
  assert.deepEqual(service.get("CapabilityBoundingSet"), [""]);
  for (const key of ["NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome"]) {
    assert.equal(one(key), "yes", key);
  }
  assert.equal(one("ProtectSystem"), "strict");
  assert.match(one("RestrictAddressFamilies"), /AF_UNIX/); // sd_notify
});

/** Why the `systemd-analyze` tests cannot run here, or null. */
const NO_SYSTEMD_ANALYZE = commandRuns("systemd-analyze", ["--version"])
  ? null
  : "systemd-analyze is not installed, apt-get install systemd";

async function systemdAnalyze(args: string[]): Promise<{ code: number; text: string }> {
  const out = await new Deno.Command("systemd-analyze", {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { SYSTEMD_COLORS: "0", SYSTEMD_PAGER: "" },
  }).output();
  return { code: out.code, text: decoder.decode(out.stdout) + decoder.decode(out.stderr) };
}

/** A copy of the unit whose ExecStart names an existing executable, as verify requires. */
async function verifiableCopy(dir: string): Promise<string> {
  const exe = `${dir}/kav`;
  await Deno.writeTextFile(exe, "#!/bin/sh\nexit 0\n");
  await Deno.chmod(exe, 0o755);
  const text = (await Deno.readTextFile(UNIT_PATH)).replace(
    /^ExecStart=\/usr\/local\/bin\/kav /m,
    `ExecStart=${exe} `,
  );
  await Deno.writeTextFile(`${dir}/kav.service`, text);
  return `${dir}/kav.service`;
}

Deno.test({
  ...ignoredWhen("systemd-analyze verify accepts kav.service without warnings", NO_SYSTEMD_ANALYZE),
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const result = await systemdAnalyze(["verify", await verifiableCopy(dir)]);
      assert.equal(result.code, 0, result.text);
      // Unknown keys and bad values are only warnings to verify; treat them as failures.
      assert.doesNotMatch(result.text, /Unknown|Invalid|ignoring|Failed|not executable/i);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  ...ignoredWhen(
    "systemd-analyze verify fails on a unit whose ExecStart is missing",
    NO_SYSTEMD_ANALYZE,
  ),
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const copy = await verifiableCopy(dir);
      await Deno.remove(`${dir}/kav`);
      const result = await systemdAnalyze(["verify", copy]);
      assert.notEqual(result.code, 0, result.text);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  ...ignoredWhen(
    "systemd-analyze security rates kav.service OK and prints its exposure",
    NO_SYSTEMD_ANALYZE,
  ),
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const result = await systemdAnalyze(["security", "--offline=yes", await verifiableCopy(dir)]);
      assert.equal(result.code, 0, result.text);
      assert.doesNotMatch(result.text, /Invalid syntax|Unknown key|ignoring/i);
      const m = /Overall exposure level for kav\.service: ([\d.]+) (\S+)/.exec(result.text);
      assert.ok(m, result.text);
      console.log(`systemd-analyze security: exposure ${m[1]} ${m[2]}`);
      // 0 = locked down, 10 = fully exposed; a network service that must JIT sits near 1.
      assert.ok(Number(m[1]) <= 2.0, `exposure ${m[1]} is above 2.0`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** The shell script of `ExecStartPost=-/bin/sh -c '…'`, with systemd's `$$` escapes undone. */
function execStartPostScript(): string {
  const value = one("ExecStartPost");
  const match = /^-\/bin\/sh -c '(.*)'$/.exec(value);
  assert.ok(match, `Cannot read ExecStartPost ${JSON.stringify(value)}`);
  assert.doesNotMatch(match[1].replaceAll("$$", ""), /\$/, "every $ is escaped for systemd");
  return match[1].replaceAll("$$", "$");
}

function niceOf(pid: number, tid: string): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`);
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]);
}

Deno.test("kav.service lowers V8's helper threads like server.helper_thread_nice's default", async () => {
  const script = execStartPostScript();
  const increment = /renice -n (\d+) /.exec(script)?.[1];
  assert.equal(increment, await exampleValue("helper_thread_nice", "missing"));
});

Deno.test({
  ...ignoredWhen(
    "kav.service's ExecStartPost renices a running Deno's V8 helpers, nothing else",
    NOT_LINUX,
  ),
  async fn() {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", "console.log('up'); setTimeout(() => {}, 60_000);"],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    try {
      const reader = child.stdout.getReader();
      await reader.read(); // "up": V8 and its helper threads are running
      reader.releaseLock();
      const pid = child.pid;
      const before = new Map(
        [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => [e.name, niceOf(pid, e.name)]),
      );
      const run = await new Deno.Command("/bin/sh", {
        args: ["-c", execStartPostScript()],
        env: { MAINPID: String(pid) },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(run.code, 0, decoder.decode(run.stderr));
      let helpers = 0;
      for (const [tid, nice] of before) {
        const name = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/comm`).trim();
        if (name.startsWith("V8 ")) {
          helpers++;
          assert.equal(niceOf(pid, tid), 10, `${name} ${tid}`);
        } else {
          assert.equal(niceOf(pid, tid), nice, `${name} ${tid} keeps its priority`);
        }
      }
      assert.ok(helpers > 0, "a Deno process has V8 helper threads");
    } finally {
      child.kill();
      await child.status;
      await child.stdout.cancel().catch(() => {});
    }
  },
});
