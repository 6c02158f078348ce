/**
 * The composition root: builds the providers, the call store, the phrase cache and the call manager
 * from a `Config`, and serves until stopped. `main.ts` runs it; tests and the dev sandbox start it
 * in-process on a free port.
 */
import { runServer } from "./app.ts";
import { CallManager } from "./call/manager.ts";
import { createConversationFactory } from "./call/conversation.ts";
import type { Config } from "./config/types.ts";
import { createOpenAiLlm } from "./llm/openai.ts";
import type { LlmProvider } from "./llm/types.ts";
import type { Logger } from "./observe/log.ts";
import { sdNotifierFromEnv } from "./observe/sd_notify.ts";
import { openCallStore, type SqliteCallStore } from "./store/sqlite.ts";
import type { CallEventKind } from "./store/types.ts";
import { createGoogleStt } from "./stt/google.ts";
import type { SttProvider } from "./stt/types.ts";
import { PhraseCache } from "./tts/cache.ts";
import { createGoogleTts } from "./tts/google.ts";
import type { TtsProvider } from "./tts/types.ts";

export interface KavProviders {
  readonly stt: SttProvider;
  readonly tts: TtsProvider;
  readonly llm: LlmProvider;
}

/** Builds the cloud providers the config names (plaintext gRPC for `insecure` endpoints). */
export function createProviders(config: Config, log: Logger): KavProviders {
  const credentialsPath = config.google.credentials_path;
  return {
    stt: createGoogleStt(config.stt, { credentialsPath, log }),
    tts: createGoogleTts({ ...config.tts, language: config.call.language }, { credentialsPath }),
    llm: createOpenAiLlm(config.llm, { log }),
  };
}

export interface RunKavOptions {
  readonly config: Config;
  readonly log: Logger;
  /** Defaults to `createProviders(config)`. */
  readonly providers?: KavProviders;
  /** Stops Kav like SIGTERM does. */
  readonly signal?: AbortSignal;
  readonly onListen?: (addr: Deno.NetAddr) => void;
}

/**
 * Runs Kav until SIGTERM/SIGINT (or `signal`): /healthz turns 503, new calls are refused, active
 * calls finish up to `server.drain_timeout_s` (then are closed), records are flushed.
 */
export async function runKav(options: RunKavOptions): Promise<void> {
  const { config, log } = options;
  const notifier = sdNotifierFromEnv({ log });
  const providers = options.providers ?? createProviders(config, log);
  const store = await openCallStore({
    path: config.storage.path,
    log,
    retentionDays: config.storage.retention_days,
    crm: config.crm,
  });
  const phrases = new PhraseCache(providers.tts, {
    greeting: config.call.greeting,
    apology: config.call.apology,
  }, { log });
  const boot = await phrases.load({});
  for (const failed of boot.failed) {
    log.error("TTS", "phrase not cached", { phrase: failed.name, error: failed.error.message });
  }
  const calls = new CallManager({
    config,
    stt: providers.stt,
    store,
    logger: log,
    greeting: () => phrases.get("greeting") ?? new Uint8Array(0),
    agentFactory: createConversationFactory({
      call: config.call,
      stt: config.stt,
      log: config.log,
      llm: providers.llm,
      tts: providers.tts,
      phrases,
    }),
  });
  const onSighup = () => {
    // New calls get the reloaded phrases; active calls keep the audio they already queued.
    phrases.reload({}).then((report) =>
      log.info("TTS", "phrases reloaded", { loaded: report.loaded.length })
    );
  };
  Deno.addSignalListener("SIGHUP", onSighup);
  const lifetime = new AbortController();
  notifier.startWatchdog({
    signal: lifetime.signal,
    status: () => `${calls.active} active calls`,
  });
  try {
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
      drain: async ({ signal }) => {
        await notifier.stopping({ extendTimeoutMs: config.server.drain_timeout_s * 1000 + 5000 });
        const timeoutMs = config.server.drain_timeout_s * 1000;
        const result = await calls.drain({ timeoutMs, signal });
        log.info("HTTP", "drained", { finished: result.finished, forced: result.forced });
      },
    });
  } finally {
    Deno.removeSignalListener("SIGHUP", onSighup);
    lifetime.abort();
    await store.flush();
    await store.close();
    await Promise.allSettled([providers.stt.close(), providers.tts.close()]);
    await notifier.close();
  }
}

/** Status callbacks are recorded against their call, off the response path. */
function recordStatus(
  store: SqliteCallStore,
  params: Readonly<Record<string, string>>,
  webhook: string,
): void {
  const callSid = params.CallSid;
  if (!callSid) return;
  const kind: CallEventKind = "stream_status";
  const detail = [webhook, params.StreamEvent, params.StreamError].filter(Boolean).join(" ");
  store.event(callSid, { kind, at: Date.now(), detail });
}
