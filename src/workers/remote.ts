/**
 * A call worker's view of what the main thread owns: the call store (its single writer), the log
 * (one writer of stdout), and the hand-off board. Writes are batched: records go to the main
 * thread at the end of the turn that made them (write as you go), info lines at most
 * `LOG_BATCH_MS` later (with 400 calls' telemetry, one message for many turns' lines); a warning,
 * an error or any request first sends what is waiting, so lines and records keep their order.
 */
import type { CallAction, HandOff, HandOffs, Resume } from "../call/hand_off.ts";
import type { LogSink } from "../observe/log.ts";
import type {
  CallEvent,
  CallStarted,
  CallStore,
  DialEndedRecord,
  EndRecord,
  ToolCallRecord,
  TransferRecord,
  TurnRecord,
} from "../store/types.ts";
import type {
  FromWorker,
  LogLevel,
  MessageLink,
  RecordOp,
  Requests,
  WorkerReplies,
  WorkerRequest,
} from "./protocol.ts";

/** How long an info line may wait for others to share its message to the main thread, ms. */
export const LOG_BATCH_MS = 20;

/** Log lines and records waiting to go to the main thread. */
export class Outbox {
  readonly #link: MessageLink;
  #logs: [LogLevel, string][] = [];
  #records: RecordOp[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** Whether the pending timer is the end-of-turn one (records wait for no longer). */
  #soon = false;

  constructor(link: MessageLink) {
    this.#link = link;
  }

  /** Records not yet handed to the main thread. */
  get pendingRecords(): number {
    return this.#records.length;
  }

  /** The worker's log sink: info lines at the end of the turn, the rest at once. */
  readonly logSink: LogSink = (line, level) => {
    this.#logs.push([level, line]);
    if (level === "info") this.#schedule(LOG_BATCH_MS);
    else this.flush();
  };

  record(op: RecordOp): void {
    this.#records.push(op);
    this.#schedule(0);
  }

  /** Sends what is waiting now. */
  readonly flush = (): void => {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#soon = false;
    if (this.#logs.length === 0 && this.#records.length === 0) return;
    const message: FromWorker = { type: "out", logs: this.#logs, records: this.#records };
    this.#logs = [];
    this.#records = [];
    this.#link.postMessage(message);
  };

  /** Posts `message` after what is waiting. */
  post(message: FromWorker): void {
    this.flush();
    this.#link.postMessage(message);
  }

  #schedule(delayMs: number): void {
    if (this.#timer !== undefined && (this.#soon || delayMs > 0)) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = setTimeout(this.flush, delayMs);
    this.#soon = delayMs === 0;
  }
}

/**
 * The call store as a worker sees it: every write goes to the main thread's store, in order, at the
 * end of the turn it was made in. `flush` resolves once the main thread's store has it on disk.
 */
export class RemoteCallStore implements CallStore {
  readonly #outbox: Outbox;
  readonly #requests: Requests<WorkerRequest, WorkerReplies>;

  constructor(outbox: Outbox, requests: Requests<WorkerRequest, WorkerReplies>) {
    this.#outbox = outbox;
    this.#requests = requests;
  }

  callStarted(call: CallStarted): void {
    this.#outbox.record({ kind: "start", call });
  }
  turnCompleted(callSid: string, turn: TurnRecord): void {
    this.#outbox.record({ kind: "turn", callSid, turn });
  }
  event(callSid: string, event: CallEvent): void {
    this.#outbox.record({ kind: "event", callSid, event });
  }
  callEnded(callSid: string, ended: EndRecord): void {
    this.#outbox.record({ kind: "end", callSid, ended });
  }
  toolCall(callSid: string, tool: ToolCallRecord): void {
    this.#outbox.record({ kind: "tool", callSid, tool });
  }
  transfer(callSid: string, transfer: TransferRecord): void {
    this.#outbox.record({ kind: "transfer", callSid, transfer });
  }
  dialEnded(callSid: string, dial: DialEndedRecord): void {
    this.#outbox.record({ kind: "dial", callSid, dial });
  }
  pending(): number {
    return this.#outbox.pendingRecords;
  }
  async flush(): Promise<void> {
    await this.#requests.request({ kind: "records-flush" });
  }
  close(): Promise<void> {
    return this.flush();
  }
}

/** How long a hand-off request may wait for the main thread (Twilio waits 15 s for TwiML). */
export const HAND_OFF_TIMEOUT_MS = 5000;

/**
 * The process's hand-off board, kept on the main thread (SPEC 6, 8): a call's transfer or hang-up
 * is stored there before its socket closes, and Twilio's `<Connect action>` and `<Dial action>`
 * requests, on whichever worker they land, read it from there.
 */
export class RemoteHandOffs implements HandOffs {
  readonly #requests: Requests<WorkerRequest, WorkerReplies>;

  constructor(requests: Requests<WorkerRequest, WorkerReplies>) {
    this.#requests = requests;
  }

  async set(callSid: string, handOff: HandOff): Promise<void> {
    // Resolves once the main thread holds it, so any worker's later `action` finds it.
    await this.#ask({ kind: "handoff-set", callSid, handOff });
  }
  action(callSid: string): Promise<CallAction | null> {
    return this.#ask({ kind: "handoff-action", callSid });
  }
  dialEnded(callSid: string, status: string): Promise<string | null> {
    return this.#ask({ kind: "handoff-dial-ended", callSid, status });
  }
  takeResume(callSid: string): Promise<Resume | null> {
    return this.#ask({ kind: "handoff-take-resume", callSid });
  }

  #ask<B extends Extract<WorkerRequest, { kind: `handoff-${string}` }>>(body: B) {
    return this.#requests.request(body, { timeoutMs: HAND_OFF_TIMEOUT_MS });
  }
}
