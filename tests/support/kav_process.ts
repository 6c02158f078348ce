/**
 * Kav as a real subprocess for end-to-end tests: `deno run` of `main.ts` with the flags of
 * `deno task start` (or any other command, e.g. the bundle), on a config from `sandboxToml()` written
 * to a temp file and pointing at local provider servers that the test process runs. Lines Kav
 * prints (stdout and stderr) are captured in order; signals go to the process.
 */
import {
  type Clip,
  fixtureClips,
  mergeToml,
  type ProviderServers,
  sandboxToml,
  startProviderServers,
} from "../../tools/sandbox/sandbox.ts";
import type { TwilioClient } from "../../tools/twilio/client.ts";

const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

/** The permission flags of `deno task start` (read from deno.json, so they cannot drift). */
export async function startTaskFlags(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`)) as {
    tasks: Record<string, string>;
  };
  const words = config.tasks.start.split(/\s+/);
  const run = words.indexOf("run");
  const entry = words.indexOf("main.ts");
  if (words[0] !== "deno" || run !== 1 || entry < 0) {
    throw new Error(`Cannot read the start task "${config.tasks.start}"`);
  }
  return words.slice(run + 1, entry);
}

export interface KavCommand {
  readonly cmd: string;
  /** Arguments before `--config <file>`. */
  readonly args: readonly string[];
  readonly cwd?: string;
  readonly env?: Readonly<Record<string, string>>;
  /** Start from an empty environment plus `env` (the bundle test). */
  readonly clearEnv?: boolean;
}

export interface KavProcessOptions {
  readonly servers: ProviderServers;
  /** TOML tables merged into the sandbox config (keys of a named table override). */
  readonly extra?: string;
  /** Working directory for the config and the database; default a new temp dir (removed at close). */
  readonly dir?: string;
  /** What to run instead of `deno run <start flags> main.ts`. */
  readonly command?: KavCommand;
  /** Extra environment for the child. */
  readonly env?: Readonly<Record<string, string>>;
  /** Also print Kav's lines as they arrive. */
  readonly echo?: boolean;
  /** How long to wait for the `[HTTP] listening` line (default 90 s: cold npm loads are slow). */
  readonly startTimeoutMs?: number;
}

export interface KavProcess {
  readonly dir: string;
  readonly configPath: string;
  readonly storagePath: string;
  readonly pid: number;
  /** "http://127.0.0.1:<port>" (https with TLS). */
  readonly baseUrl: string;
  /** "ws://127.0.0.1:<port>/ws/twilio-media" (wss with TLS). */
  readonly mediaUrl: string;
  readonly port: number;
  /** Every line Kav printed so far, stdout and stderr interleaved in arrival order. */
  readonly lines: readonly string[];
  /** Settles when the process exited. */
  readonly status: Promise<Deno.CommandStatus>;
  readonly exited: boolean;
  /** Resolves with the first line at index ≥ `from` matching `pattern`; rejects after the timeout. */
  waitForLine(pattern: RegExp, options: { timeoutMs: number; from?: number }): Promise<string>;
  kill(signal: Deno.Signal): void;
  /** Rewrites the config file with `extra` merged in (for SIGHUP). */
  writeConfig(extra: string): Promise<void>;
  /** The captured lines as one string (assertion messages). */
  log(): string;
  /** SIGKILLs the process if it still runs, waits for it and removes the temp dir if it made it. */
  close(): Promise<void>;
}

interface Waiter {
  readonly pattern: RegExp;
  readonly from: number;
  resolve(line: string): void;
}

/** Runs `body` against Kav on fresh provider servers; stops both after it, whatever happens. */
export async function withKavProcess(
  options: Omit<KavProcessOptions, "servers">,
  body: (kav: KavProcess, servers: ProviderServers) => Promise<void>,
): Promise<void> {
  const servers = await startProviderServers();
  try {
    const kav = await startKavProcess({ ...options, servers });
    try {
      await body(kav, servers);
    } finally {
      await kav.close();
    }
  } finally {
    await servers.close();
  }
}

/** Writes the config, starts Kav and waits until it listens. Throws (after cleanup) if it does not. */
export async function startKavProcess(options: KavProcessOptions): Promise<KavProcess> {
  const ownDir = options.dir === undefined;
  const dir = options.dir ?? await Deno.makeTempDir({ prefix: "kav-proc-" });
  const configPath = `${dir}/kav.toml`;
  const storagePath = `${dir}/kav.db`;
  const writeConfig = (extra: string) =>
    Deno.writeTextFile(
      configPath,
      mergeToml(sandboxToml(options.servers, { storagePath, extra: "" }), extra),
    );
  await writeConfig(options.extra ?? "");
  const command = options.command ??
    { cmd: Deno.execPath(), args: ["run", ...await startTaskFlags(), "main.ts"] };
  const child = new Deno.Command(command.cmd, {
    args: [...command.args, "--config", configPath],
    cwd: command.cwd ?? ROOT,
    clearEnv: command.clearEnv ?? false,
    env: { NO_COLOR: "1", OPENAI_API_KEY: "test-key", ...command.env, ...options.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();

  const lines: string[] = [];
  let waiters: Waiter[] = [];
  let exited = false;
  const push = (line: string) => {
    lines.push(line);
    if (options.echo) console.log(`  kav| ${line}`);
    const index = lines.length - 1;
    waiters = waiters.filter((w) => {
      if (index < w.from || !w.pattern.test(line)) return true;
      w.resolve(line);
      return false;
    });
  };
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let buffer = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      buffer += text;
      const parts = buffer.split("\n");
      buffer = parts.pop() ?? "";
      for (const part of parts) push(part);
    }
    if (buffer !== "") push(buffer);
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });

  const waitForLine = (
    pattern: RegExp,
    { timeoutMs, from = 0 }: { timeoutMs: number; from?: number },
  ): Promise<string> => {
    for (let i = from; i < lines.length; i++) {
      if (pattern.test(lines[i])) return Promise.resolve(lines[i]);
    }
    const { promise, resolve, reject } = Promise.withResolvers<string>();
    const waiter: Waiter = { pattern, from, resolve };
    waiters.push(waiter);
    const timer = setTimeout(() => {
      waiters = waiters.filter((w) => w !== waiter);
      reject(new Error(`Timed out after ${timeoutMs} ms waiting for ${pattern}:\n${tail(lines)}`));
    }, timeoutMs);
    // A process that died cannot print the line any more.
    Promise.all([status, pumps]).then(() => {
      if (!waiters.includes(waiter)) return;
      waiters = waiters.filter((w) => w !== waiter);
      reject(new Error(`Kav exited before printing ${pattern}:\n${tail(lines)}`));
    });
    return promise.finally(() => clearTimeout(timer));
  };

  const close = async () => {
    if (!exited) {
      try {
        child.kill("SIGKILL");
      } catch {
        // Exited meanwhile.
      }
    }
    await status;
    await pumps;
    if (ownDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  };

  let listening: string;
  try {
    listening = await waitForLine(/\[HTTP\] listening url=\S+/, {
      timeoutMs: options.startTimeoutMs ?? 90_000,
    });
  } catch (error) {
    await close();
    throw error;
  }
  const url = new URL(/url=(\S+)/.exec(listening)![1]);
  const port = Number(url.port);
  const tls = url.protocol === "https:";
  return {
    dir,
    configPath,
    storagePath,
    pid: child.pid,
    baseUrl: `${tls ? "https" : "http"}://127.0.0.1:${port}`,
    mediaUrl: `${tls ? "wss" : "ws"}://127.0.0.1:${port}/ws/twilio-media`,
    port,
    lines,
    status,
    get exited() {
      return exited;
    },
    waitForLine,
    kill: (signal) => child.kill(signal),
    writeConfig,
    log: () => lines.join("\n"),
    close,
  };
}

function tail(lines: readonly string[]): string {
  return lines.slice(-40).join("\n");
}

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `kav <args> --config <file>` (e.g. `calls`, `call <sid> --json`) with the `calls` task's flags. */
export async function runKavCli(
  configPath: string,
  args: readonly string[],
  env: Readonly<Record<string, string>> = {},
): Promise<CliResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-sys",
      "--allow-net",
      "main.ts",
      ...args,
      "--config",
      configPath,
    ],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(120_000),
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/**
 * Plays `clip` as the caller, then keeps sending silence (Twilio streams media all call long) until
 * `until` settles; resolves or rejects with it. The media stream stops before this returns.
 */
export async function sayAndWait<T>(
  client: TwilioClient,
  clip: Uint8Array,
  until: Promise<T>,
): Promise<T> {
  const stop = new AbortController();
  const streaming = (async () => {
    await client.streamSilence(200, { signal: stop.signal });
    await client.streamAudio(clip, { signal: stop.signal });
    while (!stop.signal.aborted && client.socket.readyState === WebSocket.OPEN) {
      await client.streamSilence(200, { signal: stop.signal });
    }
  })().catch(() => {
    // Aborted: the caller is done talking.
  });
  try {
    return await until;
  } finally {
    stop.abort();
    await streaming;
  }
}

/**
 * Registers `fn` once with the calls on Kav's main thread (`server.workers = 1`) and once on two
 * call workers (SPEC 8); `fn` gets the TOML line to merge into its `[server]` table.
 */
export function testWithWorkers(
  name: string,
  fn: (serverToml: string) => Promise<void>,
  counts: readonly number[] = [1, 2],
): void {
  for (const workers of counts) {
    Deno.test(`${name} (workers=${workers})`, () => fn(`[server]\nworkers = ${workers}\n`));
  }
}

/** The fixture clip `name` ("appointment", "hours", "goodbye", "tomorrow"). */
export function fixtureClip(name: string): Clip {
  const clip = fixtureClips().find((c) => c.name === name);
  if (clip === undefined) throw new RangeError(`Cannot find fixture clip "${name}"`);
  return clip;
}
