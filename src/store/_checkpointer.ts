/**
 * Starts the checkpoint worker and turns off auto-checkpoints on the writer connection. When the
 * worker cannot run (e.g. a `deno compile` binary built without `--include` of the worker module),
 * the writer keeps SQLite's auto-checkpoint: correct, with an occasional multi-ms stall.
 */
import type { DatabaseSync } from "node:sqlite";
import type { Logger } from "../observe/log.ts";
import type { CheckpointReply, CheckpointRequest } from "./_checkpoint_worker.ts";

export interface Checkpointer {
  /** Whether checkpoints run off the main thread. */
  readonly offThread: boolean;
  stop(): Promise<void>;
}

const REPLY_TIMEOUT_MS = 5000;

function fallback(db: DatabaseSync, log: Logger, why: string): void {
  if (!db.isOpen) return;
  db.exec("PRAGMA wal_autocheckpoint = 1000");
  log.warn("STORE", "checkpoints on the main thread", { reason: why });
}

function reply(worker: Worker, wanted: CheckpointReply["type"]): Promise<string | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(
      () => done(`no ${wanted} reply from the checkpoint worker`),
      REPLY_TIMEOUT_MS,
    );
    function done(error: string | null): void {
      clearTimeout(timer);
      worker.removeEventListener("message", onMessage);
      worker.removeEventListener("error", onError);
      resolve(error);
    }
    function onMessage(event: MessageEvent<CheckpointReply>): void {
      if (event.data.type === wanted) done(null);
      else if (event.data.type === "error") done(event.data.message);
    }
    function onError(event: ErrorEvent): void {
      // Without preventDefault a worker's load error would take the whole process down.
      event.preventDefault();
      done(event.message);
    }
    worker.addEventListener("message", onMessage);
    worker.addEventListener("error", onError);
  });
}

/** Starts checkpointing `path` every `intervalMs`; resolves once the worker is ready (or not). */
export async function startCheckpointer(
  options: {
    db: DatabaseSync;
    path: string;
    log: Logger;
    intervalMs: number;
    /** Tests point this at a missing module to exercise the fallback. */
    workerUrl?: string;
  },
): Promise<Checkpointer> {
  const { db, path, log } = options;
  let worker: Worker;
  try {
    const url = options.workerUrl ?? new URL("./_checkpoint_worker.ts", import.meta.url).href;
    worker = new Worker(url, { type: "module" });
  } catch (error) {
    fallback(db, log, String(error));
    return { offThread: false, stop: () => Promise.resolve() };
  }
  const ready = reply(worker, "ready");
  worker.postMessage(
    { type: "start", path, intervalMs: options.intervalMs } satisfies CheckpointRequest,
  );
  const error = await ready;
  if (error !== null) {
    worker.terminate();
    fallback(db, log, error);
    return { offThread: false, stop: () => Promise.resolve() };
  }
  db.exec("PRAGMA wal_autocheckpoint = 0");
  const onLater = (event: MessageEvent<CheckpointReply> | ErrorEvent) => {
    if (event instanceof ErrorEvent) {
      event.preventDefault();
      fallback(db, log, event.message);
    } else if (event.data.type === "error") {
      log.warn("STORE", "checkpoint failed", { error: event.data.message });
    }
  };
  worker.addEventListener("message", onLater);
  worker.addEventListener("error", onLater);
  let stopped: Promise<void> | null = null;
  return {
    offThread: true,
    stop() {
      stopped ??= (async () => {
        worker.removeEventListener("message", onLater);
        worker.removeEventListener("error", onLater);
        const done = reply(worker, "stopped");
        worker.postMessage({ type: "stop" } satisfies CheckpointRequest);
        const stopError = await done;
        if (stopError !== null) {
          log.warn("STORE", "checkpoint worker stop failed", { error: stopError });
        }
        worker.terminate();
      })();
      return stopped;
    },
  };
}
