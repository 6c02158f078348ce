/**
 * Runs WAL checkpoints on its own thread and connection. A checkpoint copies pages and fsyncs
 * twice; on the main thread that is a multi-ms stall every ~1000 pages, which the 20 ms TX cadence
 * would feel. Commits themselves (WAL, synchronous=NORMAL) never fsync.
 *
 * Protocol: `{ type: "start", path, intervalMs }` → `{ type: "ready" }`; `{ type: "stop" }` →
 * `{ type: "stopped" }`; failures → `{ type: "error", message }`.
 */
import { DatabaseSync } from "node:sqlite";

export type CheckpointRequest =
  | { readonly type: "start"; readonly path: string; readonly intervalMs: number }
  | { readonly type: "stop" };

export type CheckpointReply =
  | { readonly type: "ready" }
  | { readonly type: "stopped" }
  | { readonly type: "error"; readonly message: string };

interface WorkerScope {
  onmessage: ((event: MessageEvent<CheckpointRequest>) => void) | null;
  postMessage(message: CheckpointReply): void;
}

const scope = globalThis as unknown as WorkerScope;
let db: DatabaseSync | null = null;
let timer: ReturnType<typeof setInterval> | undefined;

function checkpoint(): void {
  try {
    db?.exec("PRAGMA wal_checkpoint(PASSIVE)");
  } catch (error) {
    scope.postMessage({ type: "error", message: String(error) });
  }
}

scope.onmessage = (event) => {
  const request = event.data;
  switch (request.type) {
    case "start":
      try {
        db = new DatabaseSync(request.path);
        db.exec("PRAGMA busy_timeout = 1000");
        timer = setInterval(checkpoint, request.intervalMs);
        scope.postMessage({ type: "ready" });
      } catch (error) {
        scope.postMessage({ type: "error", message: String(error) });
      }
      return;
    case "stop":
      clearInterval(timer);
      checkpoint();
      db?.close();
      db = null;
      scope.postMessage({ type: "stopped" });
      return;
    default: {
      const unreachable: never = request;
      scope.postMessage({
        type: "error",
        message: `Unknown request ${JSON.stringify(unreachable)}`,
      });
    }
  }
};
