/** An in-memory `CallStore` for tests: keeps everything, and lets a test wait for a call's end. */
import type {
  CallEnded,
  CallEvent,
  CallStarted,
  CallStore,
  DialEndedRecord,
  ToolCallRecord,
  TransferRecord,
  TurnRecord,
} from "../../src/store/types.ts";

export interface MemoryCall {
  readonly started: CallStarted;
  readonly turns: TurnRecord[];
  readonly events: CallEvent[];
  readonly toolCalls: ToolCallRecord[];
  readonly transfers: (TransferRecord & { dial?: DialEndedRecord })[];
  ended: CallEnded | null;
}

export class MemoryStore implements CallStore {
  readonly calls = new Map<string, MemoryCall>();
  /** Writes for a call sid never started (should stay empty). */
  readonly orphans: string[] = [];
  readonly #endWaiters = new Map<string, ((ended: CallEnded) => void)[]>();
  #closed = false;

  get closed(): boolean {
    return this.#closed;
  }

  callStarted(call: CallStarted): void {
    const known = this.calls.get(call.callSid);
    if (known !== undefined && known.ended?.outcome === "transferred") {
      known.ended = null;
      return;
    }
    this.calls.set(call.callSid, {
      started: call,
      turns: [],
      events: [],
      toolCalls: [],
      transfers: [],
      ended: null,
    });
  }

  toolCall(callSid: string, record: ToolCallRecord): void {
    const call = this.calls.get(callSid);
    if (call === undefined) this.orphans.push(callSid);
    else call.toolCalls.push(record);
  }

  transfer(callSid: string, record: TransferRecord): void {
    const call = this.calls.get(callSid);
    if (call === undefined) this.orphans.push(callSid);
    else call.transfers.push({ ...record });
  }

  dialEnded(callSid: string, record: DialEndedRecord): void {
    const transfer = this.calls.get(callSid)?.transfers.findLast((t) => t.dial === undefined);
    if (transfer === undefined) this.orphans.push(callSid);
    else transfer.dial = record;
  }

  turnCompleted(callSid: string, turn: TurnRecord): void {
    const call = this.calls.get(callSid);
    if (call === undefined) this.orphans.push(callSid);
    else call.turns.push(turn);
  }

  event(callSid: string, event: CallEvent): void {
    const call = this.calls.get(callSid);
    if (call === undefined) this.orphans.push(callSid);
    else call.events.push(event);
  }

  callEnded(callSid: string, ended: CallEnded): void {
    const call = this.calls.get(callSid);
    if (call === undefined) {
      this.orphans.push(callSid);
      return;
    }
    call.ended = ended;
    for (const resolve of this.#endWaiters.get(callSid) ?? []) resolve(ended);
    this.#endWaiters.delete(callSid);
  }

  pending(): number {
    return 0;
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }

  /** Events of one kind for a call. */
  events(callSid: string, kind: CallEvent["kind"]): CallEvent[] {
    return (this.calls.get(callSid)?.events ?? []).filter((e) => e.kind === kind);
  }

  /** Resolves with the call's end record; rejects after `timeoutMs`. */
  waitForEnded(callSid: string, options: { timeoutMs: number }): Promise<CallEnded> {
    const ended = this.calls.get(callSid)?.ended;
    if (ended) return Promise.resolve(ended);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`Timed out waiting for call "${callSid}" to end`));
      }, options.timeoutMs);
      const list = this.#endWaiters.get(callSid) ?? [];
      list.push((value) => {
        clearTimeout(timer);
        resolve(value);
      });
      this.#endWaiters.set(callSid, list);
    });
  }
}
