/**
 * A test thread for tests/workers_test.ts: takes `max_calls` places from the shared state as fast
 * as it can once the main thread says go, or stores and reads hand-offs on the main thread's board,
 * exactly as a call worker does (`SharedProcessState`, `RemoteHandOffs` over `Requests`).
 */
import { parentPort, workerData } from "node:worker_threads";
import type { HandOff } from "../../src/call/hand_off.ts";
import {
  type Reply,
  Requests,
  type WorkerReplies,
  type WorkerRequest,
} from "../../src/workers/protocol.ts";
import { RemoteHandOffs } from "../../src/workers/remote.ts";
import { SharedProcessState } from "../../src/workers/shared_state.ts";

export interface ThreadData {
  readonly shared: SharedArrayBuffer;
  readonly slot: number;
  /** Two words: the go flag, and how many threads hold a place now (the churn test). */
  readonly go: SharedArrayBuffer;
  readonly max: number;
  readonly attempts: number;
}

export type Command =
  | { readonly type: "take" }
  | { readonly type: "churn" }
  | { readonly type: "give"; readonly count: number }
  | { readonly type: "set"; readonly callSid: string; readonly handOff: HandOff }
  | { readonly type: "action"; readonly callSid: string }
  | { readonly type: "dial-ended"; readonly callSid: string; readonly status: string }
  | { readonly type: "take-resume"; readonly callSid: string };

if (parentPort !== null) {
  const port = parentPort;
  const data = workerData as ThreadData;
  const state = new SharedProcessState(data.shared);
  const requests = new Requests<WorkerRequest, WorkerReplies>(port);
  const handOffs = new RemoteHandOffs(requests);
  port.on("message", async (message: Command | Reply) => {
    switch (message.type) {
      case "reply":
        requests.settle(message);
        return;
      case "take": {
        // Every thread starts at once, then takes as fast as it can.
        const go = new Int32Array(data.go);
        Atomics.wait(go, 0, 0);
        let taken = 0;
        for (let i = 0; i < data.attempts; i++) {
          if (state.tryTake(data.slot, data.max)) taken++;
        }
        port.postMessage({ type: "taken", taken });
        return;
      }
      case "churn": {
        // Take and give back at the limit. `go[1]` counts the threads holding a place (one up
        // after a take, one down before the give): it can pass max only if admission over-admits.
        const go = new Int32Array(data.go);
        Atomics.wait(go, 0, 0);
        let over = 0;
        let taken = 0;
        for (let i = 0; i < data.attempts; i++) {
          if (!state.tryTake(data.slot, data.max)) continue;
          taken++;
          if (Atomics.add(go, 1, 1) + 1 > data.max) over++;
          Atomics.sub(go, 1, 1);
          state.give(data.slot);
        }
        port.postMessage({ type: "churned", over, taken });
        return;
      }
      case "give":
        for (let i = 0; i < message.count; i++) state.give(data.slot);
        port.postMessage({ type: "given" });
        return;
      case "set":
        await handOffs.set(message.callSid, message.handOff);
        port.postMessage({ type: "set-done" });
        return;
      case "action":
        port.postMessage({ type: "got", value: await handOffs.action(message.callSid) });
        return;
      case "dial-ended":
        port.postMessage({
          type: "got",
          value: await handOffs.dialEnded(message.callSid, message.status),
        });
        return;
      case "take-resume":
        port.postMessage({ type: "got", value: await handOffs.takeResume(message.callSid) });
        return;
    }
  });
  port.postMessage({ type: "up" });
}
