/** What happens at Twilio's `start`: the record, the greeting, the agent. */
import type { AudioConfig, ServerConfig } from "../config/types.ts";
import type { Logger } from "../observe/log.ts";
import type { CallStore } from "../store/types.ts";
import type { SttProvider } from "../stt/types.ts";
import { frameCount } from "../audio/frames.ts";
import { OutboundEncoder, type StartMessage } from "../twilio/protocol.ts";
import type { AgentFactory, CallAgent } from "./agent.ts";
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
  /** Cached greeting audio, raw μ-law 8000 Hz. */
  readonly greeting: () => Uint8Array;
  readonly agentFactory?: AgentFactory;
  readonly scheduler: Scheduler;
  /** Names the call in logs before `start` (e.g. "conn-12"). */
  readonly connectionId: string;
  readonly remoteAddr: string;
}

/** The mark queued after the greeting (SPEC 2). */
export const GREETING_MARK = "greeting_end";

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
 * Records the call, queues the cached greeting and its mark into the TX queue (the first frames
 * synchronously, so the TX worker sends at once) and creates the agent, if any.
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
}): CallAgent | null {
  const { start, deps, log, tx, out, signal } = args;
  log.info("CALL", "started", { conn: args.connectionId, stream: start.streamSid });
  const params = start.customParameters;
  recordStart(start, deps);
  tx.start(new OutboundEncoder(start.streamSid));
  const greeting = deps.greeting();
  const ignore = () => {};
  out.play(greeting, { signal }).catch(ignore);
  out.mark(GREETING_MARK, { signal }).catch(ignore);
  log.info("CALL", "GREETING queued", { frames: frameCount(greeting.length) });
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
  });
}
