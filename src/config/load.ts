/**
 * Reads kav.toml into the frozen `Config`: TOML via smol-toml, every key typed and validated with
 * defaults, problems naming key and line, secrets from the environment or systemd credentials.
 */

import { parse, TomlError } from "smol-toml";
import type { Config } from "./types.ts";
import { ConfigError, type ConfigProblem } from "../errors.ts";
import { indexLines, lineOf } from "./_lines.ts";
import { type ConfigValue, isLoopbackHost, parseListen, SECRET_KEYS } from "./_schema.ts";
import { validateTree } from "./_validate.ts";
import { type AgentActs, validateAgentActs } from "./_agent_acts.ts";

export interface ConfigOptions {
  /** Environment to read secrets from; defaults to the process environment. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /**
   * systemd credentials directory; undefined reads `CREDENTIALS_DIRECTORY` from `env`, null
   * disables credential files.
   */
  readonly credentialsDir?: string | null;
  /**
   * Whether `twilio.validate_signatures = true` needs the auth token (default true). Commands that
   * only read call records pass false so operators need no secrets.
   */
  readonly requireAuthToken?: boolean;
}

/** Reads and validates the file at `path`; throws `ConfigError` listing every problem. */
export async function loadConfig(path: string, options: ConfigOptions = {}): Promise<Config> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new ConfigError([
      { key: "file", line: null, message: `cannot read ${JSON.stringify(path)}: ${reason}` },
    ]);
  }
  return parseConfig(text, options);
}

/** Parses and validates TOML `text`; throws `ConfigError` listing every problem. */
export function parseConfig(text: string, options: ConfigOptions = {}): Config {
  let tree: Record<string, unknown>;
  try {
    tree = parse(text);
  } catch (error) {
    if (!(error instanceof TomlError)) throw error;
    const first = error.message.split("\n")[0].replace(/^Invalid TOML document:\s*/, "");
    throw new ConfigError([{
      key: "syntax",
      line: error.line,
      message: `invalid TOML: ${first}`,
    }]);
  }
  const lines = indexLines(text);
  const { values, problems } = validateTree(tree, lines);
  const acts = validateAgentActs(tree, text, lines);
  const env = options.env ?? Deno.env.toObject();
  const credentialsDir = options.credentialsDir === undefined
    ? (env.CREDENTIALS_DIRECTORY || null)
    : options.credentialsDir;
  const extra: ConfigProblem[] = [];
  const problem = (key: string, message: string) =>
    extra.push({ key, line: lineOf(lines, key), message });
  const secrets = new Map<string, string | null>();
  for (const [key, source] of SECRET_KEYS) {
    const pathOnly = key === "google.credentials_path";
    const found = readSecret(source, { env, credentialsDir, pathOnly });
    if (typeof found === "string" || found === null) secrets.set(key, found);
    else problem(key, found.error);
  }
  if (
    options.requireAuthToken !== false && values.get("twilio.validate_signatures") === true &&
    !secrets.get("twilio.auth_token")
  ) {
    problem(
      "twilio.validate_signatures",
      "is true but no auth token was found: set env TWILIO_AUTH_TOKEN or the systemd credential twilio_auth_token",
    );
  }
  const cert = values.get("server.tls_cert");
  const key = values.get("server.tls_key");
  if (cert !== undefined && key !== undefined && (cert === null) !== (key === null)) {
    const [set, unset] = cert === null
      ? ["server.tls_key", "server.tls_cert"]
      : ["server.tls_cert", "server.tls_key"];
    problem(set, `is set but ${unset} is not: set both or neither`);
  }
  checkAdmin(values.get("admin.listen"), secrets.get("admin.token") ?? null, problem);
  const all = [...problems, ...acts.problems, ...extra].sort((a, b) =>
    (a.line ?? Infinity) - (b.line ?? Infinity)
  );
  if (all.length > 0) throw new ConfigError(all);
  return deepFreeze(buildConfig(values, secrets, acts));
}

/** Shortest admin token accepted: a guessable token would guard call transcripts. */
export const ADMIN_TOKEN_MIN_CHARS = 16;

/** SPEC 7: the console is never reachable from another host without a token. */
function checkAdmin(
  listen: ConfigValue | undefined,
  token: string | null,
  problem: (key: string, message: string) => void,
): void {
  if (token !== null && token.length < ADMIN_TOKEN_MIN_CHARS) {
    problem(
      "admin.token",
      `must be at least ${ADMIN_TOKEN_MIN_CHARS} characters (env KAV_ADMIN_TOKEN or the credential admin_token): it has ${token.length}`,
    );
  }
  if (typeof listen !== "string" || token !== null) return;
  const parsed = parseListen(listen);
  if (parsed !== null && !isLoopbackHost(parsed.hostname)) {
    problem(
      "admin.listen",
      `is ${
        JSON.stringify(listen)
      }, reachable from other hosts, but no token was found: set env KAV_ADMIN_TOKEN or the systemd credential admin_token, or listen on 127.0.0.1`,
    );
  }
}

function readSecret(
  source: { env: string; credential: string },
  options: {
    env: Readonly<Record<string, string | undefined>>;
    credentialsDir: string | null;
    pathOnly: boolean;
  },
): string | null | { error: string } {
  const fromEnv = options.env[source.env];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  if (options.credentialsDir === null) return null;
  const path = `${options.credentialsDir}/${source.credential}`;
  try {
    if (options.pathOnly) return Deno.statSync(path).isFile ? path : null;
    // Credential files usually end with a newline that is not part of the secret.
    const value = Deno.readTextFileSync(path).replace(/\r?\n$/, "");
    return value === "" ? null : value;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    const reason = error instanceof Error ? error.message : String(error);
    return { error: `cannot read the credential file ${JSON.stringify(path)}: ${reason}` };
  }
}

function buildConfig(
  values: ReadonlyMap<string, ConfigValue>,
  secrets: ReadonlyMap<string, string | null>,
  acts: AgentActs,
): Config {
  const get = (key: string): ConfigValue => {
    if (!values.has(key)) throw new TypeError(`Cannot read config key ${JSON.stringify(key)}`);
    return values.get(key) ?? null;
  };
  const num = (key: string): number => {
    const value = get(key);
    if (typeof value !== "number") throw new TypeError(`Cannot read ${key} as a number`);
    return value;
  };
  const bool = (key: string): boolean => {
    const value = get(key);
    if (typeof value !== "boolean") throw new TypeError(`Cannot read ${key} as a boolean`);
    return value;
  };
  const optStr = (key: string): string | null => {
    const value = get(key);
    if (value !== null && typeof value !== "string") {
      throw new TypeError(`Cannot read ${key} as a string`);
    }
    return value;
  };
  const str = (key: string): string => {
    const value = optStr(key);
    if (value === null) throw new TypeError(`Cannot read ${key} as a string`);
    return value;
  };
  const oneOf = <T extends string>(key: string, values: readonly T[]): T => {
    const value = str(key);
    const found = values.find((v) => v === value);
    if (found === undefined) throw new TypeError(`Cannot read ${key} as one of ${values}`);
    return found;
  };
  const trimUrl = (key: string): string => str(key).replace(/\/+$/, "");
  const llmKey = secrets.get("llm.api_key") ?? null;
  const speechServer = (table: string) => ({
    base_url: trimUrl(`${table}.base_url`),
    model: str(`${table}.model`),
    api_key: secrets.get(`${table}.api_key`) ?? llmKey,
    timeout_ms: num(`${table}.timeout_ms`),
  });
  const fallback = optStr("stt.openai.fallback_base_url");
  const listen = parseListen(str("server.listen"));
  if (listen === null) throw new TypeError("Cannot parse server.listen after validation");
  const adminListen = optStr("admin.listen");
  const admin = adminListen === null ? null : parseListen(adminListen);
  if (adminListen !== null && admin === null) {
    throw new TypeError("Cannot parse admin.listen after validation");
  }
  return {
    server: {
      hostname: listen.hostname,
      port: listen.port,
      public_url: str("server.public_url").replace(/\/+$/, ""),
      drain_timeout_s: num("server.drain_timeout_s"),
      tls_cert: optStr("server.tls_cert"),
      tls_key: optStr("server.tls_key"),
      max_calls: num("server.max_calls"),
      max_ws_message_bytes: num("server.max_ws_message_bytes"),
      max_body_bytes: num("server.max_body_bytes"),
      idle_media_timeout_s: num("server.idle_media_timeout_s"),
      max_call_duration_s: num("server.max_call_duration_s"),
      bad_signature_per_ip_per_min: num("server.bad_signature_per_ip_per_min"),
      helper_thread_nice: num("server.helper_thread_nice"),
      workers: num("server.workers"),
      node_id: optStr("server.node_id") ?? hostName(),
      voice_url: optStr("server.voice_url")?.replace(/\/+$/, "") ?? null,
    },
    twilio: {
      validate_signatures: bool("twilio.validate_signatures"),
      auth_token: secrets.get("twilio.auth_token") ?? null,
    },
    call: {
      language: str("call.language"),
      greeting: str("call.greeting"),
      system_prompt: str("call.system_prompt"),
      apology: str("call.apology"),
      end_call: bool("call.end_call"),
      filler_after_ms: num("call.filler_after_ms"),
      transfer: acts.transfer,
    },
    audio: {
      rx_queue_frames: num("audio.rx_queue_frames"),
      tx_queue_frames: num("audio.tx_queue_frames"),
      tx_lead_ms: num("audio.tx_lead_ms"),
      tx_max_buffered_bytes: num("audio.tx_max_buffered_bytes"),
    },
    stt: {
      provider: oneOf("stt.provider", ["google", "openai"] as const),
      batch_ms: num("stt.batch_ms"),
      partial_debounce_ms: num("stt.partial_debounce_ms"),
      timeout_ms: num("stt.timeout_ms"),
      vad_hangover_ms: num("stt.vad_hangover_ms"),
      restart_after_s: num("stt.restart_after_s"),
      google: {
        endpoint: str("stt.google.endpoint"),
        fallback_endpoint: optStr("stt.google.fallback_endpoint"),
        insecure: bool("stt.google.insecure"),
        model: str("stt.google.model"),
        use_enhanced: bool("stt.google.use_enhanced"),
      },
      openai: {
        ...speechServer("stt.openai"),
        fallback_base_url: fallback === null ? null : fallback.replace(/\/+$/, ""),
        stream: bool("stt.openai.stream"),
        prompt: optStr("stt.openai.prompt"),
        silence_ms: num("stt.openai.silence_ms"),
        max_utterance_s: num("stt.openai.max_utterance_s"),
      },
    },
    tts: {
      provider: oneOf("tts.provider", ["google", "openai"] as const),
      voice: str("tts.voice"),
      google: {
        endpoint: str("tts.google.endpoint"),
        insecure: bool("tts.google.insecure"),
      },
      openai: {
        ...speechServer("tts.openai"),
        voice: str("tts.openai.voice"),
        instructions: optStr("tts.openai.instructions"),
        response_format: oneOf("tts.openai.response_format", ["pcm", "wav"] as const),
        sample_rate: num("tts.openai.sample_rate"),
        stream: bool("tts.openai.stream"),
      },
    },
    llm: {
      provider: "openai",
      base_url: str("llm.base_url").replace(/\/+$/, ""),
      model: str("llm.model"),
      timeout_ms: num("llm.timeout_ms"),
      api_key: llmKey,
      temperature: num("llm.temperature"),
      max_tokens: num("llm.max_tokens"),
    },
    storage: {
      path: str("storage.path"),
      retention_days: num("storage.retention_days"),
      url: optStr("storage.url"),
      password: secrets.get("storage.password") ?? null,
    },
    log: { transcripts: bool("log.transcripts") },
    crm: {
      url: optStr("crm.url"),
      secret: secrets.get("crm.secret") ?? null,
      context_url: optStr("crm.context_url"),
    },
    google: { credentials_path: secrets.get("google.credentials_path") ?? null },
    admin: { listen: admin, token: secrets.get("admin.token") ?? null },
    tools: acts.tools,
  };
}

/** The default `server.node_id`: the host name, or "kav" where it cannot be read. */
function hostName(): string {
  try {
    const name = Deno.hostname().split(".")[0].replace(/[^A-Za-z0-9._-]/g, "-").slice(0, 63);
    return /^[A-Za-z0-9]/.test(name) ? name : "kav";
  } catch {
    return "kav";
  }
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}
