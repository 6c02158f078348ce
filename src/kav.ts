/**
 * The composition root: builds the providers, the call store, the phrase cache and the call manager
 * from a `Config`, and serves until stopped. `main.ts` runs it; tests and the dev sandbox start it
 * in-process on a free port.
 */
import { type RunningConsole, startConsole } from "./admin/server.ts";
import { runServer } from "./app.ts";
import { CallManager, installEscapeHandlers } from "./call/manager.ts";
import { HandOffBoard } from "./call/hand_off.ts";
import type { Config } from "./config/types.ts";
import {
  callScript,
  createProviders,
  fixedPhrases,
  type KavProviders,
  recordDialEnded,
  recordStatus,
  ttsVoice,
  withVoice,
} from "./kav_calls.ts";
import type { Logger } from "./observe/log.ts";
import { sdNotifierFromEnv } from "./observe/sd_notify.ts";
import { availableCores, type CoreCount } from "./runtime/cores.ts";
import { lowerHelperThreads } from "./runtime/helper_threads.ts";
import { openConfiguredStore } from "./store/open.ts";
import type { CallStore } from "./store/types.ts";
import { PhraseCache } from "./tts/cache.ts";
import { runSupervised } from "./workers/supervisor.ts";

export { createProviders, type KavProviders, ttsVoice };

export interface RunKavOptions {
  readonly config: Config;
  readonly log: Logger;
  /** Defaults to `createProviders(config)`; given ones run calls on the main thread only. */
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

/** How many call workers `server.workers` asks for here (0: one per usable core). */
export function workerCount(config: Config): { workers: number; cores: CoreCount | null } {
  if (config.server.workers > 0) return { workers: config.server.workers, cores: null };
  const cores = availableCores();
  return { workers: cores.cores, cores };
}

/**
 * Runs Kav until SIGTERM/SIGINT (or `signal`): /healthz turns 503, new calls are refused, active
 * calls finish up to `server.drain_timeout_s` (then are closed), records are flushed. With one
 * worker the calls run on this thread; with more, on call workers this thread supervises
 * (`src/workers/supervisor.ts`, SPEC 8).
 */
export async function runKav(options: RunKavOptions): Promise<void> {
  const { config, log } = options;
  lowerHelperThreadsOnce(config.server.helper_thread_nice, log);
  const { workers, cores } = workerCount(config);
  if (workers === 1) return await runOnMainThread(options);
  if (options.providers !== undefined) {
    throw new RangeError(
      `Cannot run ${workers} call workers with providers given in-process: set server.workers = 1`,
    );
  }
  await runSupervised({
    config,
    log,
    workers,
    cores,
    signal: options.signal,
    reload: options.reload,
    onListen: options.onListen,
    onConsole: options.onConsole,
    store: options.store,
  });
}

/** `server.workers = 1`: every call on this thread's event loop. */
async function runOnMainThread(options: RunKavOptions): Promise<void> {
  const { config, log } = options;
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
  let script = callScript(config, config, providers, phraseAudio(phrases));
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
      script = callScript(config, next, providers, phraseAudio(phrases));
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

/** The phrases' audio as the cache holds it now. */
function phraseAudio(phrases: PhraseCache): Map<string, Uint8Array> {
  const audio = new Map<string, Uint8Array>();
  for (const name of phrases.names) {
    const bytes = phrases.get(name);
    if (bytes !== null) audio.set(name, bytes);
  }
  return audio;
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
