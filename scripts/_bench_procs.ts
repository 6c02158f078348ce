/**
 * The benchmark's subprocesses: Kav (`_bench_kav.ts`, pinned to the Kav core, logs to a file), the
 * status-callback prober (`_bench_webhook.ts`) and the load generators (`_bench_load.ts`, on the load
 * core), with NDJSON line reading and `/metrics` scraping.
 */
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import type { LoadReport } from "./_bench_load.ts";
import { pinPrefix } from "./_bench_proc.ts";
import type { WebhookWindow } from "./_bench_webhook.ts";

const SCRIPTS = new URL(".", import.meta.url).pathname;
const DENO = Deno.execPath();

/** `deno <args>`, run on `core` through taskset when given. */
function denoCommand(
  core: number | null,
  args: readonly string[],
  options: Omit<Deno.CommandOptions, "args">,
): Deno.Command {
  const prefix = pinPrefix(core);
  const [program, ...rest] = [...prefix, DENO, ...args];
  return new Deno.Command(program, { ...options, args: rest });
}

/** Reads `stream` as lines of text. */
export async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of stream) {
    buffered += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      yield buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
    }
  }
  if (buffered !== "") yield buffered;
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A port nobody listens on right now. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

export interface KavProcess {
  readonly pid: number;
  readonly baseUrl: string;
  readonly logPath: string;
  readonly dbPath: string;
  /** SIGTERM, then SIGKILL after 20 s; resolves with the exit code. */
  stop(): Promise<number>;
}

/** Starts Kav with `toml` (written to `dir`) and waits until `/healthz` answers 200. */
export async function startKav(options: {
  dir: string;
  name: string;
  toml: string;
  port: number;
  dbPath: string;
  core: number | null;
  token: string;
  extraArgs?: readonly string[];
  /** Extra `deno run` flags (e.g. `--v8-flags=...`). */
  denoFlags?: readonly string[];
  /** Extra environment (e.g. PGPASSWORD for `storage.url`). */
  env?: Readonly<Record<string, string>>;
}): Promise<KavProcess> {
  const config = `${options.dir}/${options.name}.toml`;
  const logPath = `${options.dir}/${options.name}.log`;
  await Deno.writeTextFile(config, options.toml);
  const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const command = [
    ...pinPrefix(options.core),
    DENO,
    "run",
    "--allow-all",
    "--unstable-net",
    ...(options.denoFlags ?? []),
    `${SCRIPTS}_bench_kav.ts`,
    "--config",
    config,
    ...(options.extraArgs ?? []),
  ].map(quote).join(" ");
  // `exec` twice (sh, then taskset) so the child's pid is Kav's own; logs go to a file, as a
  // service's would go to the journal, so a slow reader can never block Kav's writes.
  const child = new Deno.Command("sh", {
    args: ["-c", `exec ${command} > ${quote(logPath)} 2>&1`],
    env: { ...options.env, TWILIO_AUTH_TOKEN: options.token },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const baseUrl = `http://127.0.0.1:${options.port}`;
  const deadline = performance.now() + 60_000;
  let exited: number | null = null;
  child.status.then((s) => (exited = s.code));
  for (;;) {
    if (exited !== null) {
      throw new Error(`Cannot start Kav: it exited with ${exited} (see ${logPath})`);
    }
    try {
      const response = await fetch(`${baseUrl}/healthz`);
      await response.body?.cancel();
      if (response.status === 200) break;
    } catch {
      // Not listening yet.
    }
    if (performance.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`Cannot start Kav: /healthz not ready within 60 s (see ${logPath})`);
    }
    await sleep(100);
  }
  return {
    pid: child.pid,
    baseUrl,
    logPath,
    dbPath: options.dbPath,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch {
        // Already gone.
      }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch {
          // Already gone.
        }
      }, 20_000);
      const status = await child.status;
      clearTimeout(timer);
      return status.code;
    },
  };
}

/** Kav's counters the benchmark compares across a step. */
export interface KavCounters {
  readonly rxFrames: number;
  readonly rxDrops: number;
  readonly txFrames: number;
  readonly txLate: number;
  readonly activeCalls: number;
}

export async function scrapeCounters(baseUrl: string): Promise<KavCounters> {
  const response = await fetch(`${baseUrl}/metrics`);
  const families = parsePrometheusText(await response.text());
  const value = (name: string) => sampleValue(families, name) ?? NaN;
  return {
    rxFrames: value("kav_rx_frames_total"),
    rxDrops: value("kav_rx_dropped_frames_total"),
    txFrames: value("kav_tx_frames_total"),
    txLate: value("kav_tx_late_frames_total"),
    activeCalls: value("kav_active_calls"),
  };
}

/** The status-callback prober: `window()` returns the latencies since the previous call. */
export interface Prober {
  readonly pid: number;
  window(): Promise<WebhookWindow>;
  stop(): Promise<void>;
}

export function startProber(options: {
  baseUrl: string;
  token: string;
  core: number | null;
}): Prober {
  const child = denoCommand(options.core, [
    "run",
    "--allow-all",
    `${SCRIPTS}_bench_webhook.ts`,
    "--url",
    options.baseUrl,
    "--token",
    options.token,
    "--interval-ms",
    "10",
  ], { stdin: "piped", stdout: "piped", stderr: "inherit" }).spawn();
  const writer = child.stdin.getWriter();
  const lines = readLines(child.stdout);
  const encoder = new TextEncoder();
  return {
    pid: child.pid,
    async window() {
      await writer.write(encoder.encode("window\n"));
      const next = await lines.next();
      if (next.done) throw new Error("Cannot read the status-callback prober: it exited");
      return JSON.parse(next.value) as WebhookWindow;
    },
    async stop() {
      await writer.write(encoder.encode("quit\n")).catch(() => {});
      await writer.close().catch(() => {});
      for await (const _ of lines) { /* drain */ }
      await child.status;
    },
  };
}

/** One load generator: `placed` resolves once its calls are all placed, `report` at its end. */
export interface Generator {
  readonly pid: number;
  readonly placed: Promise<void>;
  readonly report: Promise<LoadReport>;
}

export function startGenerator(options: {
  baseUrl: string;
  token: string;
  core: number | null;
  calls: number;
  rampMs: number;
  turns: number;
  durationMs: number;
  speakFirst?: boolean;
}): Generator {
  const child = denoCommand(options.core, [
    "run",
    "--allow-all",
    `${SCRIPTS}_bench_load.ts`,
    "--url",
    options.baseUrl,
    "--token",
    options.token,
    "--calls",
    String(options.calls),
    "--ramp-ms",
    String(options.rampMs),
    "--turns",
    String(options.turns),
    "--duration-ms",
    String(options.durationMs),
    ...(options.speakFirst ? ["--speak-first"] : []),
  ], { stdin: "null", stdout: "piped", stderr: "inherit" }).spawn();
  const placed = Promise.withResolvers<void>();
  const report = (async () => {
    let result: LoadReport | null = null;
    for await (const line of readLines(child.stdout)) {
      if (line.trim() === "") continue;
      const message = JSON.parse(line) as { event: string };
      if (message.event === "placed") placed.resolve();
      else if (message.event === "report") result = message as LoadReport;
    }
    const status = await child.status;
    placed.resolve();
    if (result === null) {
      throw new Error(`Cannot read a load report: generator exited ${status.code}`);
    }
    return result;
  })();
  report.catch(() => placed.resolve());
  return { pid: child.pid, placed: placed.promise, report };
}
