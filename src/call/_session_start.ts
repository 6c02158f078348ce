/** What happens at Twilio's `start`: the record, the TX worker's encoder, the agent. */
import type { AudioConfig, ServerConfig } from "../config/types.ts";
import type { Logger } from "../observe/log.ts";
import type { CallStore } from "../store/types.ts";
import type { SttProvider } from "../stt/types.ts";
import { OutboundEncoder, type StartMessage } from "../twilio/protocol.ts";
import { DIAL_STATUS_PARAMETER } from "../twilio/twiml.ts";
import type { AgentFactory, CallAgent } from "./agent.ts";
import type { HandOff, HandOffs, Resume } from "./hand_off.ts";
import type { QueueOutbound } from "./outbound.ts";
import type { Scheduler } from "./scheduler.ts";
import type { TxWorker } from "./tx_worker.ts";

/** Everything a session needs; the manager builds it. */
export interface SessionDeps {
  readonly server: Pick<
    ServerConfig,
    "max_ws_message_bytes" | "idle_media_timeout_s" | "max_call_duration_s"
  >;
  readonly audio: AudioConfig;
  /** `call.language`, passed to the speech session. */
  readonly language: string;
  /** `log.transcripts`: whether `[PARTIAL]`/`[FINAL]` lines carry the text. */
  readonly transcripts: boolean;
  readonly stt: SttProvider;
  readonly store: CallStore;
  /** The root logger; the session adds `call=<connection id>`, then `call=<CallSid>`. */
  readonly log: Logger;
  /** Creates the call's agent at `start` (the agent speaks first: the greeting is its own). */
  readonly agentFactory?: AgentFactory;
  readonly scheduler: Scheduler;
  /** Names the call in logs before `start` (e.g. "conn-12"). */
  readonly connectionId: string;
  readonly remoteAddr: string;
  /** Where agent hand-offs wait for Twilio's action requests (SPEC 6); none: actions refused. */
  readonly handOffs?: HandOffs;
}

/**
 * A stream connecting back a caller after a failed transfer (its TwiML carries the dial status):
 * what the board remembers, else what the parameter says (this process may have restarted since);
 * null for a new call, which never waits for the board. On a call worker the board answers by
 * message (a promise); a board that cannot answer leaves what the parameter says.
 */
export function resumeOf(
  start: StartMessage["start"],
  deps: Pick<SessionDeps, "handOffs">,
): Resume | null | Promise<Resume> {
  const status = start.customParameters[DIAL_STATUS_PARAMETER];
  if (!status) return null;
  const fallback: Resume = { department: null, dialStatus: status, carry: null };
  let remembered: Resume | null | Promise<Resume | null>;
  try {
    remembered = deps.handOffs?.takeResume(start.callSid) ?? null;
  } catch {
    return fallback;
  }
  if (remembered instanceof Promise) {
    return remembered.then((resume) => resume ?? fallback, () => fallback);
  }
  return remembered ?? fallback;
}

/** Writes the call's start record (numbers from the `<Parameter>`s Kav's TwiML forwards). */
export function recordStart(start: StartMessage["start"], deps: Pick<SessionDeps, "store">): void {
  const params = start.customParameters;
  deps.store.callStarted({
    callSid: start.callSid,
    streamSid: start.streamSid,
    accountSid: start.accountSid,
    from: params["From"] ?? null,
    to: params["To"] ?? null,
    customParameters: params,
    startedAt: Date.now(),
  });
}

/**
 * Records the call, starts the TX worker on the stream and creates the agent, if any. The agent
 * queues its greeting as it is created (synchronously, so the TX worker sends at once).
 */
export function startStream(args: {
  readonly start: StartMessage["start"];
  readonly deps: SessionDeps;
  readonly connectionId: string;
  readonly log: Logger;
  readonly tx: TxWorker;
  readonly out: QueueOutbound;
  readonly signal: AbortSignal;
  readonly hangup: (reason: string) => void;
  readonly handOff: (handOff: HandOff) => void;
  /** `resumeOf`'s answer for this stream. */
  readonly resume: Resume | null;
}): CallAgent | null {
  const { start, deps, log, tx, out, signal } = args;
  log.info("CALL", "started", { conn: args.connectionId, stream: start.streamSid });
  const params = start.customParameters;
  recordStart(start, deps);
  tx.start(new OutboundEncoder(start.streamSid));
  if (deps.agentFactory === undefined) return null;
  return deps.agentFactory({
    callSid: start.callSid,
    streamSid: start.streamSid,
    accountSid: start.accountSid,
    customParameters: params,
    out,
    log,
    signal,
    store: deps.store,
    hangup: args.hangup,
    handOff: args.handOff,
    resume: args.resume,
  });
}
