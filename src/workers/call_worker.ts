/**
 * One call worker (SPEC 8): its own event loop, its own providers (gRPC channels and HTTP clients
 * created once per worker), its own `CallManager`, and its own `Deno.serve` on the shared listen
 * port (SO_REUSEPORT: the kernel spreads new connections over the workers). A call lives on the
 * worker that accepted its socket. What belongs to the process is reached through the main thread:
 * the call store (records go there at the end of each turn), the log, `/metrics` summed over all
 * workers, the hand-off board; `max_calls`, draining and readiness are read from shared memory.
 * The main thread starts it with a `WorkerInit` (`workerData`) and supervises it.
 */
import { parentPort, workerData } from "node:worker_threads";
import { startServer } from "../app.ts";
import { CallManager, installEscapeHandlers } from "../call/manager.ts";
import { createHandler } from "../http/handler.ts";
import { callScript, createProviders, recordDialEnded, recordStatus } from "../kav_calls.ts";
import { createLogger } from "../observe/log.ts";
import { snapshotMetrics } from "../observe/metrics.ts";
import type {
  CrashKind,
  FromWorker,
  MainReplies,
  MainRequest,
  MessageLink,
  ToWorker,
  WorkerInit,
  WorkerReplies,
  WorkerRequest,
} from "./protocol.ts";
import { Requests } from "./protocol.ts";
import { Outbox, RemoteCallStore, RemoteHandOffs } from "./remote.ts";
import { SharedProcessState } from "./shared_state.ts";

/** How often the worker moves its heartbeat (the main thread replaces one that stops, see there). */
export const HEARTBEAT_MS = 200;
/** How often the worker sends its metrics, so a dead worker's counts are at most this old. */
export const METRICS_PUSH_MS = 1000;
/** How often the worker sends its live calls to the console (which shows them every second). */
export const LIVE_PUSH_MS = 250;

interface Link extends MessageLink {
  on(event: "message", listener: (message: ToWorker) => void): unknown;
}

/** Runs the worker until the main thread stops or terminates it. */
export async function runCallWorker(link: Link, init: WorkerInit): Promise<void> {
  const outbox = new Outbox(link);
  const requests = new Requests<WorkerRequest, WorkerReplies>(link, outbox.flush);
  const log = createLogger(outbox.logSink);
  const uninstallEscapeHandlers = installEscapeHandlers(log);
  const state = new SharedProcessState(init.shared);
  const { config, slot } = init;
  const providers = createProviders(config, log);
  const store = new RemoteCallStore(outbox, requests);
  let script = callScript(config, init.script, providers, new Map(init.phrases));
  const handOffs = new RemoteHandOffs(requests);
  const calls = new CallManager({
    config,
    stt: providers.stt,
    store,
    logger: log,
    agentFactory: (ctx) => script(ctx),
    admission: state.admission(slot, config.server.max_calls),
    worker: slot,
    handOffs,
  });
  let draining = false;
  const stop = new AbortController();
  const timers = [
    setInterval(() => state.beat(slot), HEARTBEAT_MS),
    setInterval(
      () => outbox.post({ type: "metrics", snapshot: snapshotMetrics() }),
      METRICS_PUSH_MS,
    ),
  ];
  if (init.console) {
    // The console (on the main thread) shows the live calls of every worker.
    const pushLive = () => outbox.post({ type: "live", snapshot: calls.live() });
    timers.push(setInterval(pushLive, LIVE_PUSH_MS));
  }

  // The first call must not pay for client creation (protos, stubs, connections).
  await providers.stt.warm?.();
  const handler = createHandler({
    config,
    log,
    calls,
    onStatusEvent: (params, webhook) => recordStatus(store, params, webhook),
    isDraining: () => draining || state.draining,
    isStarting: () => !state.ready,
    metricsText: () => requests.request({ kind: "metrics-text" }),
    callControl: handOffs,
    onDialEnded: (params) => recordDialEnded(store, params),
    testHook: init.testHooks ? (form) => testHook(requests, form) : undefined,
    worker: slot,
  });
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = startServer({
      config,
      handler,
      signal: stop.signal,
      port: init.port,
      reusePort: true,
      onListen: (addr) =>
        outbox.post({ type: "listening", port: addr.port, hostname: addr.hostname }),
    });
  } catch (error) {
    timers.forEach(clearInterval);
    outbox.post({ type: "failed", error: error instanceof Error ? error.message : String(error) });
    return;
  }

  const answers = new Requests<MainRequest, MainReplies>(link, outbox.flush);
  const serve = async (body: MainRequest): Promise<unknown> => {
    switch (body.kind) {
      case "reload":
        // New calls get the new script; active calls keep theirs.
        script = callScript(config, body.script, providers, new Map(body.phrases));
        return null;
      case "drain": {
        draining = true;
        return await calls.drain({ timeoutMs: body.timeoutMs });
      }
      case "stop":
        stop.abort();
        await server.finished;
        timers.forEach(clearInterval);
        uninstallEscapeHandlers();
        // The provider clients are not closed: their connections end with the thread (every call
        // has ended by now). A client's GOAWAY while the process lives on makes the sandbox's gRPC
        // server (Deno's node:http2, in the same process under `deno task dev`) abort on an
        // nghttp2 assertion (find_stream_on_goaway_func).
        return null;
      case "metrics":
        return snapshotMetrics();
      default: {
        const unreachable: never = body;
        throw new TypeError(`Cannot serve ${JSON.stringify(unreachable)}`);
      }
    }
  };
  link.on("message", (message) => {
    switch (message.type) {
      case "reply":
        requests.settle(message);
        return;
      case "request":
        answers.answer(message.id, () => serve(message.body));
        return;
      case "crash":
        crash(message.how, uninstallEscapeHandlers);
        return;
      default: {
        const unreachable: never = message;
        log.error("WORKER", "unknown message", { message: JSON.stringify(unreachable) });
      }
    }
  });
}

/** `POST /__test/worker` (`worker=N&how=terminate|throw|oom|hang`): the main thread acts. */
async function testHook(
  requests: Requests<WorkerRequest, WorkerReplies>,
  form: URLSearchParams,
): Promise<Response> {
  const slot = Number(form.get("worker"));
  const how = form.get("how");
  const kinds: readonly CrashKind[] = ["terminate", "throw", "oom", "hang"];
  const kind = kinds.find((k) => k === how);
  if (!Number.isInteger(slot) || slot < 0 || kind === undefined) {
    return new Response("worker=<slot>&how=terminate|throw|oom|hang\n", { status: 400 });
  }
  try {
    await requests.request({ kind: "test-crash", slot, how: kind });
  } catch (error) {
    return new Response(`${error instanceof Error ? error.message : error}\n`, { status: 409 });
  }
  return new Response(null, { status: 202 });
}

/** Ends this worker the way a bug would (test hook only). */
function crash(how: Exclude<CrashKind, "terminate">, uninstall: () => void): void {
  switch (how) {
    case "throw":
      // An error nothing catches: the worker's isolate dies with it.
      uninstall();
      setTimeout(() => {
        throw new Error("test hook: an uncaught error");
      }, 0);
      return;
    case "oom": {
      // Until the isolate's heap limit: only this isolate is stopped (resourceLimits).
      const hoard: unknown[] = [];
      setTimeout(() => {
        for (;;) hoard.push(new Array(10_000).fill(hoard.length));
      }, 0);
      return;
    }
    case "hang":
      setTimeout(() => {
        for (;;) {
          // An event loop that never yields again: no heartbeat.
        }
      }, 0);
      return;
    default: {
      const unreachable: never = how;
      throw new TypeError(`Cannot crash by ${JSON.stringify(unreachable)}`);
    }
  }
}

function isWorkerInit(data: unknown): data is WorkerInit {
  return typeof data === "object" && data !== null && "shared" in data && "slot" in data;
}

if (parentPort !== null && isWorkerInit(workerData)) {
  const port = parentPort;
  const link: Link = {
    postMessage: (message: FromWorker) => port.postMessage(message),
    on: (event, listener) => port.on(event, listener),
  };
  await runCallWorker(link, workerData);
}
