/**
 * The seam between the call core (socket, queues, workers) and the conversation layer.
 *
 * The core owns the WebSocket and the speech session; an agent only sees inbound events and an
 * `Outbound` that enqueues into the call's paced TX queue. One agent is created per call, when
 * Twilio's `start` arrives; it speaks first (the greeting is the agent's, queued as it is created).
 */
import type { Logger } from "../observe/log.ts";
import type { CallStore } from "../store/types.ts";
import type { SttEvent } from "../stt/types.ts";
import type { HandOff, Resume } from "./hand_off.ts";

export type { CallAction, HandOff, Resume } from "./hand_off.ts";
import type { AgentLive } from "./live.ts";

/**
 * The agent's side of the TX queue. All audio is raw μ-law 8000 Hz mono (20 ms = 160 bytes).
 *
 * Epoch semantics: `clear()` starts a new epoch. A `play()` or `mark()` that began before a clear
 * stops queueing at the clear: the rest of its audio is discarded (not an error) and it resolves
 * `false`. Calls made after the clear queue normally.
 */
export interface Outbound {
  /**
   * Cuts `mulaw` into 20 ms frames (last one padded with μ-law silence) and queues them in order.
   * Waits while the TX queue is full (back-pressure; speech is never dropped). Resolves `true` once
   * every frame is queued (not played), `false` if a `clear()` cut it short. Rejects with
   * `signal.reason` when aborted; frames already queued stay queued.
   */
  play(mulaw: Uint8Array, options: PlayOptions): Promise<boolean>;
  /**
   * Queues a mark after the audio queued so far. Twilio echoes it when that audio has played (or
   * was cleared); the echo reaches `CallAgent.onMark`. Resolves `false` if a clear came first.
   */
  mark(name: string, options: { signal: AbortSignal }): Promise<boolean>;
  /**
   * Barge-in: empties the TX queue (queued marks are discarded, never sent), sends `clear` to
   * Twilio now (not after the current 20 ms tick), resets the TX clock and starts a new epoch.
   * Marks already sent and not yet echoed will be echoed with `{ played: false }`.
   */
  clear(): void;
  /** Names of marks sent to Twilio and not yet echoed, oldest first. */
  readonly pendingMarks: readonly string[];
  /** Frames waiting in the TX queue (not yet sent), 20 ms each. */
  readonly queuedFrames: number;
}

export interface PlayOptions {
  readonly signal: AbortSignal;
  /**
   * Called by the TX worker right after this audio's first frame went to the socket (for the
   * server-latency figure); not called if the audio is cleared first. Must be cheap.
   */
  readonly onFirstFrameSent?: () => void;
}

/** How an echoed mark relates to what the caller heard. */
export interface MarkEcho {
  /**
   * `true`: the audio before the mark was played. `false`: the mark was pending when we sent
   * `clear`, so its audio may have been cut (Twilio's echo looks the same either way).
   */
  readonly played: boolean;
}

/** One call's conversation logic. Callbacks run on the socket's event path: they must be cheap. */
export interface CallAgent {
  /** Every inbound 20 ms μ-law frame, on receipt (not via rx_q): for VAD and levels. */
  onInboundAudio(frame: Uint8Array): void;
  /** Each event from the speech session's `results()`, in order. */
  onSpeech(event: SttEvent): void;
  /** An echoed mark, after the TX bookkeeping (`Outbound.pendingMarks` no longer lists it). */
  onMark(name: string, echo: MarkEcho): void;
  /** A DTMF digit pressed by the caller ("0"-"9", "*", "#"). */
  onDtmf(digit: string): void;
  /**
   * What the agent is doing, for the operator console's live view (read about once a second; must
   * be cheap and must not change anything). Optional: without it the call shows as listening.
   */
  live?(): AgentLive;
  /**
   * The call is ending (the context's `signal` is already aborted). Flush what must be recorded;
   * the core waits for this with a cap before closing the speech session and the store record.
   */
  close(): Promise<void>;
}

/** What the core hands to an `AgentFactory`. */
export interface AgentContext {
  readonly callSid: string;
  readonly streamSid: string;
  readonly accountSid: string;
  /** Twilio `<Parameter>` pairs from `start` (Kav's TwiML sends From, To, CallSid). */
  readonly customParameters: Readonly<Record<string, string>>;
  readonly out: Outbound;
  /** Already carries `call=<callSid>`. */
  readonly log: Logger;
  /** Aborted when the call ends, whatever the reason. */
  readonly signal: AbortSignal;
  readonly store: CallStore;
  /** Ends the call from the agent's side (e.g. the conversation decided to hang up). */
  hangup(reason: string): void;
  /**
   * Carries out the agent's call action (SPEC 6): remembers what to answer Twilio's
   * `<Connect action>` with, closes the socket, ends the call as `transferred` or `agent_hangup`.
   * Call it once the last sentence's mark came back.
   */
  handOff(handOff: HandOff): void;
  /** Set when this stream connects back a caller whose transfer failed; null for a new call. */
  readonly resume: Resume | null;
}

/**
 * Creates the agent for one call. Throwing ends that call with outcome `error` (other calls go on).
 */
export type AgentFactory = (ctx: AgentContext) => CallAgent;
