/**
 * The composition root: builds the providers, the call store, the phrase cache and the call manager
 * from a `Config`, and serves until stopped. `main.ts` runs it; tests and the dev sandbox start it
 * in-process on a free port.
 */
import { type RunningConsole, startConsole } from "./admin/server.ts";
import { runServer } from "./app.ts";
import { CallManager, installEscapeHandlers } from "./call/manager.ts";
import type { AgentFactory } from "./call/agent.ts";
import { createConversationFactory, fillerPhraseName } from "./agent/conversation.ts";
import { ToolBox } from "./agent/tools.ts";
import { HandOffBoard } from "./call/hand_off.ts";
import { transferEnded } from "./observe/metrics.ts";
import type { Config } from "./config/types.ts";
import { createOpenAiLlm } from "./llm/openai.ts";
import type { LlmProvider } from "./llm/types.ts";
import type { Logger } from "./observe/log.ts";
import { sdNotifierFromEnv } from "./observe/sd_notify.ts";
import { lowerHelperThreads } from "./runtime/helper_threads.ts";
import { openConfiguredStore } from "./store/open.ts";
import type { CallEventKind, CallStore } from "./store/types.ts";
import { createGoogleStt } from "./stt/google.ts";
import { createOpenAiStt } from "./stt/openai.ts";
import type { SttProvider } from "./stt/types.ts";
import { PhraseCache } from "./tts/cache.ts";
import { createGoogleTts } from "./tts/google.ts";
import { createOpenAiTts } from "./tts/openai.ts";
import type { TtsProvider } from "./tts/types.ts";

export interface KavProviders {
  readonly stt: SttProvider;
  readonly tts: TtsProvider;
  readonly llm: LlmProvider;
}

/**
 * Builds the providers the config names: Google (plaintext gRPC for `insecure` endpoints) or an
 * OpenAI-compatible speech server for `stt.provider` and `tts.provider` (SPEC 10), and the LLM.
 */
export function createProviders(config: Config, log: Logger): KavProviders {
  const credentialsPath = config.google.credentials_path;
  return {
    stt: config.stt.provider === "openai"
      ? createOpenAiStt(config.stt, { log })
      : createGoogleStt(config.stt, { credentialsPath, log }),
    tts: config.tts.provider === "openai"
      ? createOpenAiTts(config.tts.openai)
      : createGoogleTts({ ...config.tts, language: config.call.language }, { credentialsPath }),
    llm: createOpenAiLlm(config.llm, { log }),
  };
}

/** The voice of the configured TTS provider (`tts.voice` is Google's, `tts.openai.voice` OpenAI's). */
export function ttsVoice(tts: Config["tts"]): string {
  return tts.provider === "openai" ? tts.openai.voice : tts.voice;
}

export interface RunKavOptions {
  readonly config: Config;
  readonly log: Logger;
  /** Defaults to `createProviders(config)`. */
  readonly providers?: KavProviders;
  /** Stops Kav like SIGTERM does. */
  readonly signal?: AbortSignal;
  /**
   * Re-reads the config on SIGHUP (main.ts: the config file); its greeting, system prompt, apology
   * and voice apply to new calls. Without it, SIGHUP re-synthesizes the same phrases.
   */
  readonly reload?: () => Promise<Config>;
  readonly onListen?: (addr: Deno.NetAddr) => void;
  /** Called with the operator console's URL once it listens (SPEC 7; off without a token). */
  readonly onConsole?: (url: string) => void;
  /**
   * Defaults to the store the config names: SQLite at `storage.path`, or PostgreSQL at
   * `storage.url` (benchmarks compare against a no-op store).
   */
  readonly store?: CallStore;
}

/**
 * Runs Kav until SIGTERM/SIGINT (or `signal`): /healthz turns 503, new calls are refused, active
 * calls finish up to `server.drain_timeout_s` (then are closed), records are flushed.
 */
export async function runKav(options: RunKavOptions): Promise<void> {
  const { config, log } = options;
  lowerHelperThreadsOnce(config.server.helper_thread_nice, log);
  const notifier = sdNotifierFromEnv({ log });
  const providers = options.providers ?? createProviders(config, log);
  const store: CallStore = options.store ?? await openConfiguredStore(config, log);
  // The voice the phrases are synthesized with; SIGHUP may change it.
  let voice = ttsVoice(config.tts);
  const phrases = new PhraseCache(withVoice(providers.tts, () => voice), fixedPhrases(config), {
    log,
  });
  // The first call must not pay for client creation (protos, stubs, connections).
  const [boot] = await Promise.all([phrases.load({}), providers.stt.warm?.()]);
  for (const failed of boot.failed) {
    log.error("TTS", "phrase not cached", { phrase: failed.name, error: failed.error.message });
  }
  let script = callScript(config, config, providers, phrases);
  const handOffs = new HandOffBoard();
  const calls = new CallManager({
    config,
    stt: providers.stt,
    store,
    logger: log,
    // Read at `start`: a reload swaps the greeting, prompt and voice together.
    agentFactory: (ctx) => script(ctx),
    handOffs,
  });
  const lifetime = new AbortController();
  let reloads = Promise.resolve();
  const onSighup = () => {
    // New calls get the new script; active calls keep theirs (prompt, voice, apology audio).
    reloads = reloads.then(async () => {
      const next = await (options.reload?.() ?? config);
      voice = ttsVoice(next.tts);
      const report = await phrases.reload({
        signal: lifetime.signal,
        phrases: fixedPhrases(next),
      });
      script = callScript(config, next, providers, phrases);
      log.info("KAV", "reloaded for new calls", {
        voice,
        phrases: report.loaded.length,
        failed: report.failed.length,
      });
    }).catch((error) => {
      if (!lifetime.signal.aborted) {
        const message = error instanceof Error ? error.message : String(error);
        log.error("KAV", "reload failed", { error: message });
      }
    });
  };
  Deno.addSignalListener("SIGHUP", onSighup);
  notifier.startWatchdog({
    signal: lifetime.signal,
    status: () => `${calls.active} active calls`,
  });
  // An error that escapes every per-call handler is logged (with its call sid when known), counted
  // and ends at most its call: one bad call or provider never takes the process down.
  const uninstallEscapeHandlers = installEscapeHandlers(log);
  let operatorConsole: RunningConsole | null = null;
  try {
    const live = () => calls.live();
    operatorConsole = await startConsole({
      config,
      log,
      live,
      store,
      isDraining: () => calls.draining,
    });
    if (operatorConsole !== null) options.onConsole?.(operatorConsole.url);
    await runServer({
      config,
      log,
      calls,
      signal: options.signal,
      onListen(addr) {
        notifier.ready("0 active calls");
        options.onListen?.(addr);
      },
      onStatusEvent: (params, webhook) => recordStatus(store, params, webhook),
      callControl: handOffs,
      onDialEnded: (params) => recordDialEnded(store, params),
      drain: async ({ signal }) => {
        await notifier.stopping({ extendTimeoutMs: config.server.drain_timeout_s * 1000 + 5000 });
        const timeoutMs = config.server.drain_timeout_s * 1000;
        const result = await calls.drain({ timeoutMs, signal });
        log.info("HTTP", "drained", { finished: result.finished, forced: result.forced });
      },
    });
  } finally {
    uninstallEscapeHandlers();
    await operatorConsole?.close();
    Deno.removeSignalListener("SIGHUP", onSighup);
    lifetime.abort();
    await reloads;
    // close() keeps writing for a while; what it cannot write stays queued (SQLite) or journaled.
    await store.flush().catch((error) => {
      log.warn("STORE", "records not yet written at stop", {
        error: error instanceof Error ? error.message : String(error),
        pending: store.pending(),
      });
    });
    await store.close();
    await Promise.allSettled([providers.stt.close(), providers.tts.close()]);
    await notifier.close();
  }
}

/**
 * What a new call gets: the agent of `next`'s greeting, prompt, apology and voice (every other
 * setting stays `boot`'s). SIGHUP replaces it; active calls keep theirs.
 */
function callScript(
  boot: Config,
  next: Config,
  providers: KavProviders,
  phrases: PhraseCache,
): AgentFactory {
  // A snapshot, so a later reload cannot change an active call's greeting or apology audio.
  const audio = new Map(phrases.names.map((name) => [name, phrases.get(name)]));
  const { greeting, system_prompt, apology } = next.call;
  const voice = ttsVoice(next.tts);
  return createConversationFactory({
    call: { ...boot.call, greeting, system_prompt, apology },
    stt: boot.stt,
    log: boot.log,
    llm: providers.llm,
    tts: withVoice(providers.tts, () => voice),
    phrases: { get: (name) => audio.get(name) ?? null },
    tools: new ToolBox({ tools: boot.tools, call: boot.call, secret: boot.crm.secret }),
    crm: boot.crm,
  });
}

/** The phrases synthesized at boot: greeting, apology and each tool's filler. */
function fixedPhrases(config: Config): Record<string, string> {
  const phrases: Record<string, string> = {
    greeting: config.call.greeting,
    apology: config.call.apology,
  };
  for (const tool of config.tools) {
    if (tool.filler !== null) phrases[fillerPhraseName(tool.name)] = tool.filler;
  }
  return phrases;
}

/** Twilio's `<Dial action>` report, recorded against the call's transfer (off the response path). */
function recordDialEnded(store: CallStore, params: Readonly<Record<string, string>>): void {
  const callSid = params.CallSid;
  if (!callSid) return;
  const status = params.DialCallStatus || "failed";
  const duration = Number(params.DialCallDuration);
  transferEnded(status);
  store.dialEnded(callSid, {
    at: Date.now(),
    status,
    durationS: params.DialCallDuration && Number.isFinite(duration) ? duration : null,
  });
}

/** `tts` speaking with `voice()` unless a request names its own voice; closing it is a no-op. */
function withVoice(tts: TtsProvider, voice: () => string): TtsProvider {
  const stream = tts.stream?.bind(tts);
  return {
    synthesize: (text, options) =>
      tts.synthesize(text, { ...options, voice: options.voice ?? voice() }),
    ...(stream
      ? { stream: (text, options) => stream(text, { ...options, voice: options.voice ?? voice() }) }
      : {}),
    close: () => Promise.resolve(),
  };
}

/** Status callbacks are recorded against their call, off the response path. */
function recordStatus(
  store: CallStore,
  params: Readonly<Record<string, string>>,
  webhook: string,
): void {
  const callSid = params.CallSid;
  if (!callSid) return;
  const kind: CallEventKind = "stream_status";
  const detail = [webhook, params.StreamEvent, params.StreamError].filter(Boolean).join(" ");
  store.event(callSid, { kind, at: Date.now(), detail });
}

let helperThreadsLowered = false;

/** Lowers V8's helper threads the first time Kav runs in this process (a priority is per thread). */
function lowerHelperThreadsOnce(increment: number, log: Logger): void {
  if (helperThreadsLowered) return;
  helperThreadsLowered = true;
  const result = lowerHelperThreads(increment);
  if (result.ok) {
    log.info("KAV", "V8 helper threads lowered", { threads: result.threads, nice: result.nice });
  } else {
    log.info("KAV", "V8 helper threads left as they are", { reason: result.reason });
  }
}
