/**
 * `deno task dev`: Kav on your machine in one command.
 *
 *   deno task dev [--port 8080] [--admin-port 9090] [--speech google|openai] [--config FILE]
 *
 * With no cloud credentials (neither GOOGLE_APPLICATION_CREDENTIALS nor OPENAI_API_KEY) and no
 * `--config`, it starts the sandbox providers of `tools/sandbox/` on 127.0.0.1 (a gRPC Speech
 * server that recognizes the Hebrew fixture clips, a gRPC Text-to-Speech server and an
 * OpenAI-compatible server) and runs Kav against them on 127.0.0.1:8080, signatures off, records
 * under `./.kav-dev/`. The first log line says so and how to switch to real providers. Then, in a
 * second terminal: `deno task simulate -- --calls 5`, and `deno task calls -- --config
 * .kav-dev/kav.toml` for the records. The operator console (SPEC 7) listens on 127.0.0.1:9090 with
 * a token made up for this run (or KAV_ADMIN_TOKEN); its URL and token are printed at start.
 *
 * With GOOGLE_APPLICATION_CREDENTIALS (Google Speech and Text-to-Speech) and/or OPENAI_API_KEY
 * (the LLM) set, those providers are the real ones and only the others are sandboxed. With
 * `--speech openai`, speech recognition and synthesis use `stt.provider = "openai"` and
 * `tts.provider = "openai"` (SPEC 10) against a local OpenAI-compatible speech server instead of
 * the gRPC ones. With `--config FILE`, Kav runs exactly as `kav --config FILE` would.
 *
 * The sandbox also shows the agent acting (SPEC 6, docs/agent-actions.md): a local CRM answers the
 * tool `lookup_customer`, which the sandbox LLM calls for every line the caller says; keypad "0"
 * transfers to the department `sales`, "9" says goodbye and hangs up. Try them with
 * `deno task simulate -- --keys 0` (and `--dial-status no-answer|completed`).
 */
import { readCommandLine } from "../src/command_line.ts";
import { loadConfig, parseConfig } from "../src/config/load.ts";
import type { Config } from "../src/config/types.ts";
import { ConfigError, formatProblem } from "../src/errors.ts";
import { createLogger, type Logger } from "../src/observe/log.ts";
import { runKav } from "../src/kav.ts";
import {
  type ProviderServers,
  sandboxProviderToml,
  type SpeechProvider,
  startProviderServers,
} from "../tools/sandbox/sandbox.ts";
import { actsReply } from "../tools/sandbox/acts.ts";
import { startToolServer } from "../tools/sandbox/tool_server.ts";

/** Where the dev sandbox keeps its config and records (relative to the working directory). */
export const DEV_DIR = ".kav-dev";

export const DEV_USAGE = `Runs Kav locally for development.

Usage: deno task dev [--port 8080] [--admin-port 9090] [--speech google|openai] [--config FILE]

  --port N          port on 127.0.0.1 (default 8080)
  --admin-port N    the operator console's port on 127.0.0.1 (default 9090; 0 picks a free one);
                    its token is KAV_ADMIN_TOKEN, or one made up and printed at start
  --speech openai   speech recognition and synthesis through the OpenAI-compatible API
                    (stt.provider and tts.provider "openai") against a local speech server;
                    default google (local gRPC Speech and Text-to-Speech servers)
  --config FILE     run with this kav.toml instead (real providers as configured there)

With neither GOOGLE_APPLICATION_CREDENTIALS nor OPENAI_API_KEY set, Kav runs against local
sandbox providers; each one set switches those providers to the real cloud ones.
`;

export interface DevArgs {
  readonly port: number;
  /** The console's port on 127.0.0.1. */
  readonly adminPort: number;
  readonly configPath: string | null;
  /** Which sandbox speech servers Kav uses. */
  readonly speech: SpeechProvider;
}

const OPTIONS = {
  port: { type: "string" },
  "admin-port": { type: "string" },
  config: { type: "string", short: "c" },
  speech: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Parses the command line; throws RangeError naming the bad option. */
export function parseDevArgs(argv: readonly string[]): DevArgs | "help" {
  const { values } = readCommandLine(argv, OPTIONS);
  if (values.help) return "help";
  const port = Number(values.port ?? 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`Cannot use --port ${JSON.stringify(values.port)}: expected 0-65535`);
  }
  const adminPort = Number(values["admin-port"] ?? 9090);
  if (!Number.isInteger(adminPort) || adminPort < 0 || adminPort > 65535) {
    throw new RangeError(
      `Cannot use --admin-port ${JSON.stringify(values["admin-port"])}: expected 0-65535`,
    );
  }
  const speech = values.speech ?? "google";
  if (speech !== "google" && speech !== "openai") {
    throw new RangeError(
      `Cannot use --speech ${JSON.stringify(speech)}: expected google or openai`,
    );
  }
  return { port, adminPort, configPath: values.config ?? null, speech };
}

/** Which providers are real (credentials present) and which are sandboxed. */
export interface DevProviders {
  readonly google: boolean;
  readonly openai: boolean;
}

/** The dev config: loopback, signatures off, records under `dir`, sandbox where no credentials. */
export function devToml(options: {
  port: number;
  /** The console's port (default 9090). */
  adminPort?: number;
  dir: string;
  real: DevProviders;
  servers: ProviderServers;
  speech?: SpeechProvider;
  /** The local CRM's base URL: adds the sandbox's tool and transfer department. */
  crmUrl?: string;
}): string {
  const { port, dir, real, servers } = options;
  const speech = options.speech ?? "google";
  return `# Written by \`deno task dev\` on each start; sandbox ports change every run.
[server]
listen = "127.0.0.1:${port}"
public_url = "http://127.0.0.1:${port}"
drain_timeout_s = 5
[twilio]
validate_signatures = false
[storage]
path = "${dir}/kav.db"
[admin]
listen = "127.0.0.1:${options.adminPort ?? 9090}"
${sandboxProviderToml(servers, { google: !real.google, openai: !real.openai }, speech)}
${options.crmUrl === undefined ? "" : devActsToml(options.crmUrl)}`;
}

/** The sandbox's agent acts: one department to transfer to, one tool on the local CRM. */
function devActsToml(crmUrl: string): string {
  return `[call.transfer]
sales = "+15005550006"
[[tools]]
name = "lookup_customer"
description = "Find the caller's customer record"
url = "${crmUrl}/lookup_customer"
timeout_ms = 3000
filler = "רגע, אני בודקת."
[tools.parameters]
type = "object"
required = ["query"]
[tools.parameters.properties.query]
type = "string"
`;
}

/** The first log line: what runs against what, and how to switch. */
export function devBanner(
  real: DevProviders | null,
  configPath: string | null,
  speech: SpeechProvider = "google",
): string {
  if (real === null) return `running with ${configPath} (providers as configured there)`;
  if (speech === "openai") {
    const llm = real.openai
      ? "OpenAI LLM (OPENAI_API_KEY)"
      : "sandbox LLM (set OPENAI_API_KEY for OpenAI's)";
    return "running with speech through the OpenAI-compatible API (stt.provider and " +
      'tts.provider "openai") against a local speech server on 127.0.0.1 (speech is ' +
      `recognized only for the fixture clips), and ${llm}; to use a real speech server, ` +
      "see docs/speech-providers.md and pass --config FILE";
  }
  if (!real.google && !real.openai) {
    return "running against sandbox providers (local Speech, Text-to-Speech and " +
      "OpenAI-compatible servers on 127.0.0.1; speech is recognized only for the fixture clips). " +
      "For real providers set GOOGLE_APPLICATION_CREDENTIALS and OPENAI_API_KEY, or pass " +
      "--config FILE";
  }
  const google = real.google
    ? "Google Speech and Text-to-Speech (GOOGLE_APPLICATION_CREDENTIALS)"
    : "sandbox Speech and Text-to-Speech (set GOOGLE_APPLICATION_CREDENTIALS for Google's)";
  const openai = real.openai
    ? "OpenAI LLM (OPENAI_API_KEY)"
    : "sandbox LLM (set OPENAI_API_KEY for OpenAI's)";
  return `running against ${google} and ${openai}; or pass --config FILE`;
}

function reportConfigError(error: unknown): boolean {
  if (!(error instanceof ConfigError)) return false;
  for (const problem of error.problems) console.error(formatProblem(problem));
  return true;
}

/** The console's line: where it is and the token to log in with. */
export function consoleLine(url: string, token: string | null): string {
  const login = token === null ? "the token in KAV_ADMIN_TOKEN" : `the token ${token}`;
  return `console: open ${url} and log in with ${login}; ` +
    "it shows the calls of `deno task simulate` live";
}

async function serve(config: Config, log: Logger, shownToken: string | null): Promise<number> {
  try {
    await runKav({
      config,
      log,
      onConsole: (url) => log.info("DEV", consoleLine(url, shownToken)),
      onListen: () => log.info("DEV", "ready: try `deno task simulate -- --calls 5`"),
    });
    return 0;
  } catch (error) {
    log.error("DEV", "Kav stopped on an error", {
      error: error instanceof Error ? error.message : String(error),
    });
    return 1;
  }
}

export async function main(argv: readonly string[]): Promise<number> {
  let args: DevArgs | "help";
  try {
    args = parseDevArgs(argv);
  } catch (error) {
    console.error(`${error instanceof Error ? error.message : String(error)}\n\n${DEV_USAGE}`);
    return 2;
  }
  if (args === "help") {
    console.log(DEV_USAGE);
    return 0;
  }
  const log = createLogger();
  if (args.configPath !== null) {
    log.info("DEV", devBanner(null, args.configPath));
    try {
      return await serve(await loadConfig(args.configPath), log, null);
    } catch (error) {
      if (reportConfigError(error)) return 1;
      throw error;
    }
  }
  const env = Deno.env.toObject();
  const real: DevProviders = {
    google: Boolean(env.GOOGLE_APPLICATION_CREDENTIALS),
    openai: Boolean(env.OPENAI_API_KEY),
  };
  log.info("DEV", devBanner(real, null, args.speech));
  // The sandbox LLM calls tools only where Kav offers them (a real LLM decides by itself).
  const servers = await startProviderServers({ llm: { reply: actsReply } });
  const crm = await startToolServer({
    behaviours: {
      lookup_customer: { kind: "json", body: { name: "Dana Levi", plan: "gold", open_tickets: 1 } },
    },
  });
  try {
    await Deno.mkdir(DEV_DIR, { recursive: true });
    const dir = await Deno.realPath(DEV_DIR);
    const toml = devToml({
      port: args.port,
      adminPort: args.adminPort,
      dir,
      real,
      servers,
      speech: args.speech,
      crmUrl: crm.baseUrl,
    });
    await Deno.writeTextFile(`${dir}/kav.toml`, toml);
    // Made up per run unless set: the console on loopback still asks for it (SPEC 7).
    const token = env.KAV_ADMIN_TOKEN || crypto.randomUUID().replaceAll("-", "");
    let config: Config;
    try {
      config = parseConfig(toml, { env: { ...env, KAV_ADMIN_TOKEN: token } });
    } catch (error) {
      if (reportConfigError(error)) return 1;
      throw error;
    }
    log.info("DEV", "config written", { path: `${DEV_DIR}/kav.toml` });
    return await serve(config, log, token);
  } finally {
    await servers.close();
    await crm.close();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
