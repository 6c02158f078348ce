/**
 * Kav with call workers (SPEC 8, `server.workers` ≠ 1): the main thread takes no calls. It owns
 * what is the process's: the call store (the one writer: workers send their records here), the
 * log (workers send their lines), the fixed phrases (synthesized once, sent to every worker), the
 * shared call state, systemd notification, signals (SIGHUP reload, SIGTERM drain), and the
 * `/metrics` sum. It starts the workers, and replaces one that dies: an uncaught error, or an
 * isolate out of memory (each worker's heap is limited, so only that isolate stops). A dead
 * worker's calls are logged and recorded as errors; the other workers' calls go on.
 *
 * A worker whose event loop stops moving its heartbeat (stuck in a loop that never yields) cannot
 * be replaced: Deno 2.9 cannot stop such a thread (`terminate()` leaves it running,
 * denoland/deno#35657), and its listening socket would keep taking a share of new connections and
 * never answer them. So its calls are recorded as errors, the other workers' calls drain, and Kav
 * exits with an error for systemd to restart it (`Restart=on-failure`).
 */
import v8 from "node:v8";
import { Worker as NodeWorker } from "node:worker_threads";
import { HandOffBoard } from "../call/hand_off.ts";
import { type LiveSnapshot, mergeLiveSnapshots } from "../call/live.ts";
import { type RunningConsole, startConsole } from "../admin/server.ts";
import { installEscapeHandlers } from "../call/manager.ts";
import type { Config } from "../config/types.ts";
import { createTts, fixedPhrases, ttsVoice, withVoice } from "../kav_calls.ts";
import { lineSinkOf, type Logger } from "../observe/log.ts";
import {
  callRecordedAsLost,
  mergeSnapshots,
  type MetricsSnapshot,
  renderSnapshot,
  retiredPart,
  snapshotMetrics,
} from "../observe/metrics.ts";
import { type SdNotifier, sdNotifierFromEnv } from "../observe/sd_notify.ts";
import type { CoreCount } from "../runtime/cores.ts";
import { openConfiguredStore } from "../store/open.ts";
import type { CallStore } from "../store/types.ts";
import { PhraseCache } from "../tts/cache.ts";
import type { TtsProvider } from "../tts/types.ts";
import {
  type CrashKind,
  type DrainDone,
  type FromWorker,
  type MainReplies,
  type MainRequest,
  type RecordOp,
  Requests,
  type WorkerInit,
  type WorkerReplies,
  type WorkerRequest,
} from "./protocol.ts";
import { SharedProcessState } from "./shared_state.ts";

/** A worker whose heartbeat has not moved for this long is replaced (out of memory, or stuck). */
export const STALL_MS = 5000;
/** How long a `/metrics` scrape waits for a worker's fresh counts before using its last ones. */
const SCRAPE_WAIT_MS = 1000;
/** Deaths within this window slow the next replacement down (a worker that dies at once). */
const DEATH_WINDOW_MS = 60_000;
const MAX_RESTART_DELAY_MS = 30_000;

const WORKER_URL = new URL("./call_worker.ts", import.meta.url);

export interface SupervisorOptions {
  readonly config: Config;
  readonly log: Logger;
  readonly workers: number;
  readonly cores: CoreCount | null;
  readonly signal?: AbortSignal;
  readonly reload?: () => Promise<Config>;
  readonly onListen?: (addr: Deno.NetAddr) => void;
  /** Called with the operator console's URL once it listens (it runs on the main thread). */
  readonly onConsole?: (url: string) => void;
  readonly store?: CallStore;
}

interface Handle {
  readonly slot: number;
  readonly generation: number;
  readonly worker: NodeWorker;
  readonly requests: Requests<MainRequest, MainReplies>;
  /** Calls with a start record and no end yet: recorded as errors if the worker dies. */
  readonly calls: Set<string>;
  listening: boolean;
  gone: boolean;
  lastSnapshot: MetricsSnapshot;
  /** The worker's live calls as it last sent them (with the console on). */
  lastLive: LiveSnapshot | null;
  lastBeat: number;
  lastBeatAt: number;
  readonly listened: PromiseWithResolvers<{ port: number; hostname: string }>;
}

/** Runs Kav with `options.workers` call workers until SIGTERM/SIGINT (or `signal`), then drains. */
export async function runSupervised(options: SupervisorOptions): Promise<void> {
  const supervisor = new Supervisor(options);
  await supervisor.run();
}

class Supervisor {
  readonly #options: SupervisorOptions;
  readonly #config: Config;
  readonly #log: Logger;
  readonly #sink: ReturnType<typeof lineSinkOf>;
  readonly #state: SharedProcessState;
  /** The process's one hand-off board (SPEC 6, 8): every worker's calls and action routes use it. */
  readonly #handOffs = new HandOffBoard();
  readonly #handles: (Handle | null)[];
  readonly #deaths: number[] = [];
  readonly #lifetime = new AbortController();
  readonly #testHooks = readEnv("KAV_TEST_HOOKS") === "1";
  readonly #heapMb = workerHeapMb();
  #store!: CallStore;
  #notifier!: SdNotifier;
  #tts!: TtsProvider;
  #phrases!: PhraseCache;
  #voice: string;
  #script: Config;
  #port = 0;
  #retired: MetricsSnapshot = [];
  #stopping = false;
  /** Resolves when a worker stopped answering: Kav then drains and exits for a restart. */
  readonly #stuck = Promise.withResolvers<string>();
  #stuckWorker: number | null = null;

  constructor(options: SupervisorOptions) {
    this.#options = options;
    this.#config = options.config;
    this.#script = options.config;
    this.#voice = ttsVoice(options.config.tts);
    this.#log = options.log;
    this.#sink = lineSinkOf(options.log);
    this.#state = SharedProcessState.create(options.workers);
    this.#handles = new Array(options.workers).fill(null);
  }

  async run(): Promise<void> {
    const config = this.#config;
    const log = this.#log;
    const cores = this.#options.cores;
    log.info("KAV", "call workers", {
      workers: this.#options.workers,
      // With `server.workers = 0`: what the count came from.
      ...(cores === null ? {} : {
        affinity: cores.affinity,
        quota: cores.quota === null ? "none" : cores.quota.toFixed(2),
        runtime: cores.runtime,
      }),
    });
    this.#notifier = sdNotifierFromEnv({ log });
    this.#store = this.#options.store ?? await openConfiguredStore(config, log);
    this.#tts = createTts(config);
    const uninstallEscapeHandlers = installEscapeHandlers(log);
    const signals = new Signals(this.#options.signal);
    let reloads = Promise.resolve();
    let operatorConsole: RunningConsole | null = null;
    try {
      // The fixed phrases are synthesized once, here, and every worker gets their audio.
      this.#phrases = new PhraseCache(
        withVoice(this.#tts, () => this.#voice),
        fixedPhrases(config),
        { log },
      );
      const boot = await this.#phrases.load({});
      for (const failed of boot.failed) {
        log.error("TTS", "phrase not cached", { phrase: failed.name, error: failed.error.message });
      }
      // The operator console runs here: the store's history, every worker's live calls.
      operatorConsole = await startConsole({
        config,
        log,
        live: () => this.live(),
        store: this.#store,
        isDraining: () => this.#state.draining,
        metricsText: () => this.metricsText(),
        recentMetrics: () => this.recentMetrics(),
      });
      if (operatorConsole !== null) this.#options.onConsole?.(operatorConsole.url);
      const addr = await this.#startAll();
      this.#state.setReady();
      const scheme = config.server.tls_cert === null ? "http" : "https";
      const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
      log.info("HTTP", "listening", { url: `${scheme}://${host}:${addr.port}` });
      await this.#notifier.ready("0 active calls");
      this.#options.onListen?.({ transport: "tcp", hostname: addr.hostname, port: addr.port });

      this.#notifier.startWatchdog({
        signal: this.#lifetime.signal,
        status: () => `${this.#state.totalTaken()} active calls`,
      });
      const watch = setInterval(() => this.#checkHeartbeats(), 1000);
      signals.onHup(() => {
        reloads = reloads.then(() => this.#reload()).catch((error) => {
          if (!this.#lifetime.signal.aborted) {
            log.error("KAV", "reload failed", { error: errorText(error) });
          }
        });
      });
      const reason = await Promise.race([signals.stopRequested, this.#stuck.promise]);
      clearInterval(watch);
      await this.#drain(reason);
      if (this.#stuckWorker !== null) {
        throw new Error(
          `call worker ${this.#stuckWorker} stopped answering; Deno cannot stop a thread that never ` +
            "yields, so Kav stopped for a restart",
        );
      }
    } finally {
      signals.close();
      this.#stopping = true;
      this.#lifetime.abort();
      await reloads;
      await operatorConsole?.close();
      await this.#stopAll();
      log.info("HTTP", "stopped");
      uninstallEscapeHandlers();
      await this.#store.flush().catch((error) => {
        log.warn("STORE", "records not yet written at stop", {
          error: errorText(error),
          pending: this.#store.pending(),
        });
      });
      await this.#store.close();
      await this.#tts.close().catch(() => {});
      await this.#notifier.close();
    }
  }

  /** Worker 0 binds first (port 0 resolves to a real port), then the rest on that port. */
  async #startAll(): Promise<{ port: number; hostname: string }> {
    const first = await this.#spawn(0, 1, this.#config.server.port);
    this.#port = first.port;
    const rest = [];
    for (let slot = 1; slot < this.#handles.length; slot++) {
      rest.push(this.#spawn(slot, 1, this.#port));
    }
    await Promise.all(rest);
    return first;
  }

  #spawn(
    slot: number,
    generation: number,
    port: number,
  ): Promise<{ port: number; hostname: string }> {
    const init: WorkerInit = {
      slot,
      generation,
      config: this.#config,
      script: this.#script,
      phrases: this.#phraseList(),
      shared: this.#state.buffer,
      port,
      testHooks: this.#testHooks,
      console: this.#config.admin.listen !== null && this.#config.admin.token !== null,
    };
    const worker = new NodeWorker(WORKER_URL, {
      workerData: init,
      // With a heap limit of its own, an isolate out of memory stops alone instead of the process.
      resourceLimits: { maxOldGenerationSizeMb: this.#heapMb },
    });
    const handle: Handle = {
      slot,
      generation,
      worker,
      requests: new Requests(worker),
      calls: new Set(),
      listening: false,
      gone: false,
      lastSnapshot: [],
      lastLive: null,
      lastBeat: -1,
      lastBeatAt: performance.now(),
      listened: Promise.withResolvers(),
    };
    this.#handles[slot] = handle;
    worker.on("message", (message: FromWorker) => this.#onMessage(handle, message));
    worker.on("error", (error: Error) => {
      void this.#lost(handle, `uncaught error: ${errorText(error)}`);
    });
    worker.on("exit", (code: number) => {
      void this.#lost(handle, `exited with code ${code}`);
    });
    return handle.listened.promise;
  }

  #onMessage(handle: Handle, message: FromWorker): void {
    switch (message.type) {
      case "out":
        for (const [level, line] of message.logs) this.#sink(line, level);
        for (const op of message.records) this.#record(handle, op);
        return;
      case "metrics":
        handle.lastSnapshot = message.snapshot;
        return;
      case "live":
        handle.lastLive = message.snapshot;
        return;
      case "listening":
        handle.listening = true;
        handle.lastBeatAt = performance.now();
        handle.listened.resolve({ port: message.port, hostname: message.hostname });
        return;
      case "failed":
        handle.listened.reject(new Error(message.error));
        void this.#lost(handle, `failed to start: ${errorText(message.error)}`);
        return;
      case "request":
        handle.requests.answer(message.id, () => this.#serve(message.body));
        return;
      case "reply":
        handle.requests.settle(message);
        return;
      default: {
        const unreachable: never = message;
        this.#log.error("WORKER", "unknown message", { message: JSON.stringify(unreachable) });
      }
    }
  }

  /** A worker's record goes to the store, in the order the worker wrote it. */
  #record(handle: Handle, op: RecordOp): void {
    const store = this.#store;
    switch (op.kind) {
      case "start":
        store.callStarted(op.call);
        handle.calls.add(op.call.callSid);
        // A start that arrives after its worker was declared dead: recorded as lost at once.
        if (handle.gone) this.#recordLost(handle, op.call.callSid, "its call worker was gone");
        return;
      case "turn":
        store.turnCompleted(op.callSid, op.turn);
        return;
      case "event":
        store.event(op.callSid, op.event);
        return;
      case "tool":
        store.toolCall(op.callSid, op.tool);
        return;
      case "transfer":
        store.transfer(op.callSid, op.transfer);
        return;
      case "dial":
        store.dialEnded(op.callSid, op.dial);
        return;
      case "end":
        store.callEnded(op.callSid, op.ended);
        handle.calls.delete(op.callSid);
        return;
      default: {
        const unreachable: never = op;
        throw new TypeError(`Cannot record ${JSON.stringify(unreachable)}`);
      }
    }
  }

  #serve(body: WorkerRequest): unknown {
    switch (body.kind) {
      case "metrics-text":
        return this.metricsText();
      case "records-flush":
        return this.#store.flush().then(() => null);
      case "handoff-set":
      case "handoff-action":
      case "handoff-dial-ended":
      case "handoff-take-resume":
        return answerHandOff(this.#handOffs, body);
      case "test-crash":
        return this.#testCrash(body.slot, body.how);
      default: {
        const unreachable: never = body;
        throw new TypeError(`Cannot serve ${JSON.stringify(unreachable)}`);
      }
    }
  }

  #live(): Handle[] {
    return this.#handles.filter((h): h is Handle => h !== null && !h.gone);
  }

  /** One set of series for the process: this thread's, every worker's, and dead workers' counts. */
  async metricsText(): Promise<string> {
    const fresh = await Promise.all(
      this.#live().map((handle) =>
        handle.listening
          ? handle.requests.request({ kind: "metrics" }, { timeoutMs: SCRAPE_WAIT_MS }).then(
            (snapshot) => (handle.lastSnapshot = snapshot),
            () => handle.lastSnapshot,
          )
          : handle.lastSnapshot
      ),
    );
    return renderSnapshot(mergeSnapshots([snapshotMetrics(), this.#retired, ...fresh]));
  }

  /**
   * The metrics as the workers last sent them (at most `METRICS_PUSH_MS` old), summed, for readers
   * that cannot wait (the console's health page).
   */
  recentMetrics(): string {
    const parts = this.#live().map((handle) => handle.lastSnapshot);
    return renderSnapshot(mergeSnapshots([snapshotMetrics(), this.#retired, ...parts]));
  }

  /** Every worker's live calls as they last sent them (every `LIVE_PUSH_MS`), oldest first. */
  live(): LiveSnapshot {
    const parts = this.#live().flatMap((handle) =>
      handle.lastLive === null ? [] : [handle.lastLive]
    );
    return mergeLiveSnapshots(parts);
  }

  #phraseList(): [string, Uint8Array][] {
    const list: [string, Uint8Array][] = [];
    for (const name of this.#phrases?.names ?? []) {
      const audio = this.#phrases.get(name);
      if (audio !== null) list.push([name, audio]);
    }
    return list;
  }

  async #reload(): Promise<void> {
    const next = await (this.#options.reload?.() ?? this.#config);
    this.#voice = ttsVoice(next.tts);
    const report = await this.#phrases.reload({
      signal: this.#lifetime.signal,
      phrases: fixedPhrases(next),
    });
    this.#script = next;
    const phrases = this.#phraseList();
    // Logged once every worker has the new script: a call placed after the line gets it.
    await Promise.all(
      this.#live().map((handle) =>
        handle.requests.request({ kind: "reload", script: next, phrases }).catch(() => {})
      ),
    );
    this.#log.info("KAV", "reloaded for new calls", {
      voice: this.#voice,
      phrases: report.loaded.length,
      failed: report.failed.length,
    });
  }

  async #drain(reason: string): Promise<void> {
    const config = this.#config;
    this.#log.info("HTTP", "draining", { reason, drain_timeout_s: config.server.drain_timeout_s });
    this.#state.setDraining();
    await this.#notifier.stopping({ extendTimeoutMs: config.server.drain_timeout_s * 1000 + 5000 });
    const timeoutMs = config.server.drain_timeout_s * 1000;
    const results = await Promise.all(
      this.#live().map((handle) =>
        handle.requests.request({ kind: "drain", timeoutMs }, { timeoutMs: timeoutMs + 10_000 })
          .catch((): DrainDone => ({ finished: 0, forced: 0 }))
      ),
    );
    this.#log.info("HTTP", "drained", {
      finished: results.reduce((n, r) => n + r.finished, 0),
      forced: results.reduce((n, r) => n + r.forced, 0),
    });
  }

  async #stopAll(): Promise<void> {
    await Promise.all(
      this.#live().map((handle) =>
        handle.listening
          ? handle.requests.request({ kind: "stop" }, { timeoutMs: 5000 }).catch(() => null)
          : null
      ),
    );
    await Promise.all(this.#handles.map(async (handle) => {
      if (handle === null) return;
      handle.gone = true;
      handle.requests.close("Kav stopped");
      await handle.worker.terminate();
    }));
  }

  #checkHeartbeats(): void {
    const now = performance.now();
    for (const handle of this.#live()) {
      if (!handle.listening) continue;
      const beat = this.#state.heartbeat(handle.slot);
      if (beat !== handle.lastBeat) {
        handle.lastBeat = beat;
        handle.lastBeatAt = now;
      } else if (now - handle.lastBeatAt > STALL_MS) {
        this.#stuckWorker ??= handle.slot;
        void this.#lost(handle, `no heartbeat for ${STALL_MS / 1000} s`, { replace: false });
        this.#stuck.resolve(`call worker ${handle.slot} stuck`);
      }
    }
  }

  #testCrash(slot: number, how: CrashKind): null {
    const handle = this.#handles[slot];
    if (handle === undefined || handle === null || handle.gone) {
      throw new RangeError(`Cannot crash call worker ${slot}: there is none`);
    }
    this.#log.warn("WORKER", "test hook ends a call worker", { worker: slot, how });
    // After the hook's own answer is on its way (the request may have come in on that worker).
    setTimeout(() => {
      if (how === "terminate") void this.#lost(handle, "terminated by the test hook");
      else handle.worker.postMessage({ type: "crash", how });
    }, 100);
    return null;
  }

  /**
   * A worker is gone (or must go): log it, record its calls as errors, keep its counts, stop its
   * isolate, free its share of `max_calls`, and start a new worker in its slot.
   */
  async #lost(
    handle: Handle,
    reason: string,
    options: { replace: boolean } = { replace: true },
  ): Promise<void> {
    if (handle.gone) return;
    handle.gone = true;
    handle.requests.close(`call worker ${handle.slot} is gone`);
    handle.listened.reject(new Error(`call worker ${handle.slot} ${reason}`));
    const stopping = this.#stopping;
    if (!stopping) {
      this.#log.error("WORKER", "call worker died", {
        worker: handle.slot,
        reason,
        calls: handle.calls.size,
      });
    }
    for (const callSid of [...handle.calls]) {
      this.#recordLost(handle, callSid, `call worker ${handle.slot} died: ${reason}`);
    }
    this.#retired = mergeSnapshots([this.#retired, retiredPart(handle.lastSnapshot)]);
    await handle.worker.terminate().catch(() => {});
    this.#state.clearSlot(handle.slot);
    if (
      options.replace && !stopping && !this.#stopping && !this.#state.draining && handle.listening
    ) {
      await this.#replace(handle);
    }
  }

  #recordLost(handle: Handle, callSid: string, reason: string): void {
    handle.calls.delete(callSid);
    this.#log.child({ call: callSid }).info("CALL", "ended", { outcome: "error", reason });
    this.#store.callEnded(callSid, {
      endedAt: Date.now(),
      outcome: "error",
      reason,
      counters: null,
    });
    callRecordedAsLost("error");
  }

  async #replace(dead: Handle): Promise<void> {
    const now = performance.now();
    this.#deaths.push(now);
    while (this.#deaths.length > 0 && now - this.#deaths[0] > DEATH_WINDOW_MS) this.#deaths.shift();
    // The first death in a minute is replaced at once; a worker that keeps dying, ever slower.
    const recent = this.#deaths.length;
    const delayMs = recent <= 1 ? 0 : Math.min(MAX_RESTART_DELAY_MS, 500 * 2 ** (recent - 2));
    if (delayMs > 0) await sleep(delayMs, this.#lifetime.signal);
    if (this.#lifetime.signal.aborted || this.#state.draining) return;
    try {
      await this.#spawn(dead.slot, dead.generation + 1, this.#port);
      this.#log.info("WORKER", "call worker replaced", {
        worker: dead.slot,
        generation: dead.generation + 1,
      });
    } catch (error) {
      this.#log.error("WORKER", "call worker failed to start", {
        worker: dead.slot,
        error: errorText(error),
      });
    }
  }
}

/** The main thread's answer to a worker's hand-off request: its board is the process's one. */
export function answerHandOff(
  board: HandOffBoard,
  body: Extract<WorkerRequest, { kind: `handoff-${string}` }>,
): WorkerReplies[typeof body.kind] {
  switch (body.kind) {
    case "handoff-set":
      board.set(body.callSid, body.handOff);
      return null;
    case "handoff-action":
      return board.action(body.callSid);
    case "handoff-dial-ended":
      return board.dialEnded(body.callSid, body.status);
    case "handoff-take-resume":
      return board.takeResume(body.callSid);
    default: {
      const unreachable: never = body;
      throw new TypeError(`Cannot answer ${JSON.stringify(unreachable)}`);
    }
  }
}

/** SIGTERM, SIGINT or an aborted signal asks Kav to stop; SIGHUP to reload. */
class Signals {
  readonly stopRequested: Promise<string>;
  readonly #cleanups: (() => void)[] = [];

  constructor(signal: AbortSignal | undefined) {
    const { promise, resolve } = Promise.withResolvers<string>();
    this.stopRequested = promise;
    for (const name of ["SIGTERM", "SIGINT"] as const) {
      const listener = () => resolve(name);
      Deno.addSignalListener(name, listener);
      this.#cleanups.push(() => Deno.removeSignalListener(name, listener));
    }
    if (signal !== undefined) {
      const onAbort = () => resolve("abort");
      signal.addEventListener("abort", onAbort, { once: true });
      this.#cleanups.push(() => signal.removeEventListener("abort", onAbort));
      if (signal.aborted) onAbort();
    }
  }

  onHup(listener: () => void): void {
    Deno.addSignalListener("SIGHUP", listener);
    this.#cleanups.push(() => Deno.removeSignalListener("SIGHUP", listener));
  }

  close(): void {
    for (const cleanup of this.#cleanups.splice(0)) cleanup();
  }
}

/** An error's message for a log line, capped (a worker's error can quote its whole source). */
function errorText(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/**
 * Each worker's heap limit: the main isolate's (V8's default for this machine, or
 * `--max-old-space-size`), unless a test asks for less (`KAV_TEST_WORKER_HEAP_MB`, with the hooks).
 */
function workerHeapMb(): number {
  const test = Number(readEnv("KAV_TEST_WORKER_HEAP_MB"));
  if (readEnv("KAV_TEST_HOOKS") === "1" && Number.isInteger(test) && test > 0) return test;
  return Math.max(64, Math.floor(v8.getHeapStatistics().heap_size_limit / 1048576));
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
