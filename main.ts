/**
 * The `kav` command line: argument parsing and dispatch only.
 *
 *   kav [--config <file>]             run the server (default /etc/kav/kav.toml)
 *   kav check-config [<file>]         print "ok" or the problems, one per line
 *   kav calls … / kav call …          call records (src/store/cli.ts)
 *   kav --help
 */

import { splitCommandLine } from "./src/command_line.ts";
import { loadConfig } from "./src/config/load.ts";
import type { Config } from "./src/config/types.ts";
import { ConfigError, formatProblem } from "./src/errors.ts";
import { createLogger } from "./src/observe/log.ts";
import { runCallsCommand } from "./src/store/cli.ts";
import { runKav } from "./src/kav.ts";

export const DEFAULT_CONFIG_PATH = "/etc/kav/kav.toml";

export const USAGE = `Kav: an on-prem AI phone agent for Twilio.

Usage:
  kav [--config <file>]              Run the server (default config ${DEFAULT_CONFIG_PATH})
  kav check-config [<file>]          Validate a config file: prints "ok" or one problem per line
  kav calls [--config <file>] ...    List and search call records
  kav call [--config <file>] <sid>   Show one call record
  kav --help                         Show this help

Secrets come from the environment or systemd credentials, never from the file:
  TWILIO_AUTH_TOKEN / twilio_auth_token, OPENAI_API_KEY / openai_api_key,
  GOOGLE_APPLICATION_CREDENTIALS / google_credentials, KAV_CRM_SECRET / crm_secret,
  PGPASSWORD / db_password (storage.url); OpenAI-compatible speech servers with keys of their
  own: OPENAI_STT_API_KEY / openai_stt_api_key, OPENAI_TTS_API_KEY / openai_tts_api_key;
  the operator console ([admin] listen, default 127.0.0.1:9090): KAV_ADMIN_TOKEN / admin_token.
`;

/** What the command line asks for. */
export type Command =
  | { readonly kind: "serve"; readonly configPath: string }
  | { readonly kind: "help" }
  | { readonly kind: "check-config"; readonly configPath: string }
  | {
    readonly kind: "records";
    readonly name: "calls" | "call";
    readonly configPath: string;
    readonly args: readonly string[];
  }
  | { readonly kind: "usage-error"; readonly message: string };

const OPTIONS = {
  config: { type: "string", short: "c" },
  help: { type: "boolean", short: "h" },
} as const;

/**
 * Parses `args` (no side effects). `--config` may come before or after the subcommand; the
 * records commands parse the rest themselves (`src/store/cli.ts`).
 */
export function parseArgs(args: readonly string[]): Command {
  let line: ReturnType<typeof splitCommandLine<typeof OPTIONS>>;
  try {
    line = splitCommandLine(args, OPTIONS);
  } catch (error) {
    return { kind: "usage-error", message: error instanceof Error ? error.message : String(error) };
  }
  if (line.values.help === true) return { kind: "help" };
  const configPath = typeof line.values.config === "string" ? line.values.config : null;
  const [command, ...commandArgs] = line.rest;
  const unexpected = (arg: string): Command => ({
    kind: "usage-error",
    message: arg.startsWith("-")
      ? `Cannot use option ${JSON.stringify(arg)}`
      : `Unexpected argument ${JSON.stringify(arg)}`,
  });
  switch (command) {
    case undefined:
    case "serve":
      if (commandArgs.length > 0) return unexpected(commandArgs[0]);
      return { kind: "serve", configPath: configPath ?? DEFAULT_CONFIG_PATH };
    case "help":
      return { kind: "help" };
    case "check-config": {
      const [file, ...extra] = commandArgs;
      if (file?.startsWith("-")) return unexpected(file);
      if (extra.length > 0) return unexpected(extra[0]);
      return { kind: "check-config", configPath: file ?? configPath ?? DEFAULT_CONFIG_PATH };
    }
    case "calls":
    case "call":
      return {
        kind: "records",
        name: command,
        configPath: configPath ?? DEFAULT_CONFIG_PATH,
        args: commandArgs,
      };
    default:
      return command.startsWith("-")
        ? unexpected(command)
        : { kind: "usage-error", message: `Unknown command ${JSON.stringify(command)}` };
  }
}

/** Loads the config or prints its problems to stderr (null then). */
async function loadOrReport(
  path: string,
  options: { readonly requireAuthToken: boolean },
): Promise<Config | null> {
  try {
    return await loadConfig(path, options);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    for (const problem of error.problems) console.error(formatProblem(problem));
    return null;
  }
}

/** Runs one command; resolves to the process exit code. */
export async function main(args: readonly string[]): Promise<number> {
  const command = parseArgs(args);
  switch (command.kind) {
    case "help":
      console.log(USAGE);
      return 0;
    case "usage-error":
      console.error(`${command.message}\n\n${USAGE}`);
      return 2;
    case "check-config": {
      const config = await loadOrReport(command.configPath, { requireAuthToken: true });
      if (config === null) return 1;
      console.log("ok");
      return 0;
    }
    case "records": {
      // Reading records needs no Twilio secret.
      const config = await loadOrReport(command.configPath, { requireAuthToken: false });
      if (config === null) return 1;
      return await runCallsCommand([command.name, ...command.args], {
        storagePath: config.storage.path,
        storageUrl: config.storage.url,
        storagePassword: config.storage.password,
      });
    }
    case "serve":
      return await serve(command.configPath);
    default: {
      const unreachable: never = command;
      throw new TypeError(`Cannot run command ${JSON.stringify(unreachable)}`);
    }
  }
}

async function serve(configPath: string): Promise<number> {
  const config = await loadOrReport(configPath, { requireAuthToken: true });
  if (config === null) return 1;
  const log = createLogger();
  try {
    // SIGHUP re-reads the file: greeting, prompt, apology and voice change for new calls.
    await runKav({ config, log, reload: () => loadConfig(configPath, { requireAuthToken: true }) });
  } catch (error) {
    log.error("KAV", "stopped on an error", {
      error: error instanceof Error ? error.message : String(error),
    });
    return 1;
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
