/**
 * A whole Kav on loopback against the local provider servers: the gRPC Speech and Text-to-Speech
 * servers (real protos, transcripts keyed by the fixture clips), the OpenAI-compatible SSE
 * server, and the OpenAI-compatible speech server (transcription and speech, SPEC 10), which Kav
 * uses instead of the gRPC ones with `speechProvider: "openai"`. Used by end-to-end tests, `deno task dev` (no cloud credentials) and the benchmarks.
 * Kav itself runs unmodified through `runKav`, with the real client libraries.
 */
import { fileURLToPath } from "node:url";
import { parseConfig } from "../../src/config/load.ts";
import type { Config } from "../../src/config/types.ts";
import { type KavProviders, runKav } from "../../src/kav.ts";
import { createLogger, type Logger, type LogSink } from "../../src/observe/log.ts";
import { type Clip, loadClips } from "./_protos.ts";
export type { Clip };
import { type OpenAiServer, type OpenAiServerOptions, startOpenAiServer } from "./openai_server.ts";
import {
  type OpenAiSpeechServer,
  type OpenAiSpeechServerOptions,
  startOpenAiSpeechServer,
} from "./openai_speech_server.ts";
import { type SpeechServer, type SpeechServerOptions, startSpeechServer } from "./speech_server.ts";
import { startTtsServer, type TtsServer } from "./tts_server.ts";

export const CLIPS_JSON = fileURLToPath(new URL("./fixtures/clips.json", import.meta.url));

/** The Hebrew fixture clips (μ-law 8 kHz) with their transcripts. */
export function fixtureClips(): Clip[] {
  return loadClips(CLIPS_JSON);
}

export interface ProviderServers {
  readonly speech: SpeechServer;
  readonly tts: TtsServer;
  readonly llm: OpenAiServer;
  /** OpenAI-compatible transcription and speech. */
  readonly openaiSpeech: OpenAiSpeechServer;
  close(): Promise<void>;
}

/** Which speech servers Kav uses: the gRPC (Google) ones or the OpenAI-compatible one. */
export type SpeechProvider = "google" | "openai";

export interface ProviderServerOptions {
  readonly speech?: Partial<SpeechServerOptions>;
  readonly tts?: Parameters<typeof startTtsServer>[0];
  readonly llm?: OpenAiServerOptions;
  readonly openaiSpeech?: Partial<OpenAiSpeechServerOptions>;
  /** Fixed ports (dev sandbox); 0 or absent picks free ones. */
  readonly ports?: { speech?: number; tts?: number; llm?: number; openaiSpeech?: number };
}

/** Starts the local provider servers on 127.0.0.1. */
export async function startProviderServers(
  options: ProviderServerOptions = {},
): Promise<ProviderServers> {
  const speech = await startSpeechServer({
    clips: fixtureClips(),
    port: options.ports?.speech ?? 0,
    ...options.speech,
  });
  const tts = await startTtsServer({ port: options.ports?.tts ?? 0, ...options.tts });
  const llm = await startOpenAiServer({ port: options.ports?.llm ?? 0, ...options.llm });
  const openaiSpeech = await startOpenAiSpeechServer({
    clips: fixtureClips(),
    port: options.ports?.openaiSpeech ?? 0,
    ...options.openaiSpeech,
  });
  return {
    speech,
    tts,
    llm,
    openaiSpeech,
    async close() {
      await Promise.allSettled([speech.close(), tts.close(), llm.close(), openaiSpeech.close()]);
    },
  };
}

/**
 * The provider tables pointing at the local servers (plaintext gRPC, no credentials): Speech and
 * TTS unless `google` is false, the LLM unless `openai` is false; with `speech: "openai"`, STT and
 * TTS on the local OpenAI-compatible speech server instead (whatever `google` says).
 */
export function sandboxProviderToml(
  servers: ProviderServers,
  use: { google: boolean; openai: boolean } = { google: true, openai: true },
  speech: SpeechProvider = "google",
): string {
  if (speech === "openai") {
    const base = servers.openaiSpeech.baseUrl;
    const openaiSpeech = `
[stt]
provider = "openai"
[stt.openai]
base_url = "${base}"
model = "sandbox-whisper"
[tts]
provider = "openai"
[tts.openai]
base_url = "${base}"
model = "sandbox-tts"
voice = "alloy"`;
    return openaiSpeech + sandboxProviderToml(servers, { google: false, openai: use.openai });
  }
  const google = `
[stt.google]
endpoint = "${servers.speech.address}"
fallback_endpoint = ""
insecure = true
[tts.google]
endpoint = "${servers.tts.address}"
insecure = true`;
  const llm = `
[llm]
base_url = "${servers.llm.baseUrl}"
model = "sandbox"
timeout_ms = 3000`;
  return (use.google ? google : "") + (use.openai ? llm : "");
}

/** A config TOML pointing at the local servers (plaintext gRPC, no credentials). */
export function sandboxToml(
  servers: ProviderServers,
  options: {
    listen?: string;
    publicUrl?: string;
    storagePath: string;
    extra?: string;
    speech?: SpeechProvider;
  },
): string {
  const listen = options.listen ?? "127.0.0.1:0";
  const publicUrl = options.publicUrl ?? "http://127.0.0.1:8080";
  return `
[server]
listen = "${listen}"
public_url = "${publicUrl}"
drain_timeout_s = 5
workers = 1
[twilio]
validate_signatures = false${sandboxProviderToml(servers, undefined, options.speech ?? "google")}
[storage]
path = "${options.storagePath}"
${options.extra ?? ""}
`;
}

/**
 * Merges `extra` TOML (whole tables, e.g. "[audio]\ntx_lead_ms = 40") into the sandbox config:
 * keys of a table named in `extra` override the sandbox's keys of that table.
 */
export function sandboxConfig(
  servers: ProviderServers,
  options: {
    storagePath: string;
    extra?: string;
    listen?: string;
    publicUrl?: string;
    /** Environment the config reads secrets from (e.g. TWILIO_AUTH_TOKEN); default none. */
    env?: Readonly<Record<string, string>>;
    speech?: SpeechProvider;
  },
): Config {
  const text = mergeToml(sandboxToml(servers, { ...options, extra: "" }), options.extra ?? "");
  return parseConfig(text, { env: { ...options.env }, credentialsDir: null });
}

export function mergeToml(base: string, extra: string): string {
  // Arrays of tables (`[[tools]]`) come last and are kept as written: everything from the first
  // one on belongs to them.
  const arrays = extra.search(/^\s*\[\[/m);
  if (arrays >= 0) {
    return mergeToml(base, extra.slice(0, arrays)) + "\n" + extra.slice(arrays);
  }
  const tables = new Map<string, Map<string, string>>();
  const order: string[] = [];
  for (const text of [base, extra]) {
    let table = "";
    for (const raw of text.split("\n")) {
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) continue;
      const header = /^\[([^\]]+)\]$/.exec(line);
      if (header) {
        table = header[1];
        if (!tables.has(table)) {
          tables.set(table, new Map());
          order.push(table);
        }
        continue;
      }
      const eq = line.indexOf("=");
      if (eq < 0) continue;
      tables.get(table)?.set(line.slice(0, eq).trim(), line.slice(eq + 1).trim());
    }
  }
  return order.map((table) =>
    `[${table}]\n` + [...tables.get(table)!].map(([k, v]) => `${k} = ${v}`).join("\n")
  ).join("\n");
}

export interface Sandbox {
  readonly servers: ProviderServers;
  readonly config: Config;
  /** "http://127.0.0.1:<port>" */
  readonly baseUrl: string;
  /** "ws://127.0.0.1:<port>/ws/twilio-media" */
  readonly mediaUrl: string;
  readonly storagePath: string;
  /** Log lines Kav printed (when `collectLogs`). */
  readonly lines: string[];
  /** Stops Kav (drain as on SIGTERM) and the servers; removes the temp dir. */
  stop(): Promise<void>;
}

export interface SandboxOptions extends ProviderServerOptions {
  /** Extra TOML tables merged into the config. */
  readonly extra?: string;
  /** Keep log lines in `lines` instead of printing them (default true). */
  readonly collectLogs?: boolean;
  /** Also print them. */
  readonly echoLogs?: boolean;
  /** Secrets for the config (e.g. `{ TWILIO_AUTH_TOKEN }` with `validate_signatures = true`). */
  readonly env?: Readonly<Record<string, string>>;
  /** Speech (STT and TTS) on the gRPC servers (default) or the OpenAI-compatible one. */
  readonly speechProvider?: SpeechProvider;
  /** Providers to run Kav with instead of the real clients (e.g. fault-injecting wrappers). */
  readonly providers?: (config: Config, log: Logger) => KavProviders;
}

/** Starts the provider servers and Kav on a free port; `stop()` tears everything down. */
export async function startSandbox(options: SandboxOptions = {}): Promise<Sandbox> {
  const servers = await startProviderServers(options);
  const dir = await Deno.makeTempDir({ prefix: "kav-sandbox-" });
  const storagePath = `${dir}/kav.db`;
  const lines: string[] = [];
  const collect = options.collectLogs ?? true;
  const sink: LogSink = (line, level) => {
    if (collect) lines.push(line);
    if (!collect || options.echoLogs) {
      if (level === "info") console.log(line);
      else console.error(line);
    }
  };
  let config: Config;
  try {
    config = sandboxConfig(servers, {
      storagePath,
      extra: options.extra,
      env: options.env,
      speech: options.speechProvider,
    });
  } catch (error) {
    await servers.close();
    await Deno.remove(dir, { recursive: true });
    throw error;
  }
  const stop = new AbortController();
  const listening = Promise.withResolvers<Deno.NetAddr>();
  const log = createLogger(sink);
  const running = runKav({
    config,
    log,
    providers: options.providers?.(config, log),
    signal: stop.signal,
    onListen: (addr) => listening.resolve(addr),
  });
  running.catch((error) => listening.reject(error));
  const addr = await listening.promise;
  const baseUrl = `http://127.0.0.1:${addr.port}`;
  return {
    servers,
    config,
    baseUrl,
    mediaUrl: `ws://127.0.0.1:${addr.port}/ws/twilio-media`,
    storagePath,
    lines,
    async stop() {
      stop.abort();
      try {
        await running;
      } finally {
        await servers.close();
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    },
  };
}
