/**
 * A read-only picture of the calls in progress, for the operator console (SPEC 7). Plain data with
 * no references into the call core: reading it never touches a socket, queue or worker, and the
 * snapshots of several processes (one per core) merge by concatenation.
 */

/** What the agent is doing now. `connecting`: the socket is open, Twilio's `start` not yet here. */
export type AgentState =
  | "connecting"
  | "greeting"
  | "listening"
  | "thinking"
  | "speaking"
  | "tool"
  | "transferring";

/** The last words seen on a call: the caller's latest partial or final, or the agent's last answer. */
export interface LiveLine {
  readonly speaker: "caller" | "agent";
  readonly text: string;
  /** False for a caller partial (may still change). */
  readonly final: boolean;
  /** Epoch ms. */
  readonly at: number;
}

/** What an agent tells the console about itself (`CallAgent.live`). */
export interface AgentLive {
  readonly state: AgentState;
  /** The agent's last recorded answer (what the caller heard), or null. */
  readonly lastAgentLine: LiveLine | null;
  /** `e2e_latency` of the last answered turn (caller speech end → first frame on the wire), ms. */
  readonly lastTurnLatencyMs: number | null;
}

/** The last whole second of media counters (the `[RX]`/`[TX]` telemetry line). */
export interface LiveMedia {
  /** Inbound frames received in the last second. */
  readonly rxFps: number;
  readonly rxQueue: number;
  /** Inbound frames dropped since the call began. */
  readonly rxDrops: number;
  /** Outbound frames sent in the last second. */
  readonly txFps: number;
  readonly txQueue: number;
  /** TX ticks late enough to resync, since the call began. */
  readonly txLate: number;
  /** Worst TX lateness in the last second, ms. */
  readonly txLateMsMax: number;
  readonly malformed: number;
}

/** One call in progress. */
export interface LiveCall {
  /** Null until Twilio's `start`. */
  readonly callSid: string | null;
  /** Names the call before `start` ("conn-12"); unique within one process. */
  readonly connectionId: string;
  readonly from: string | null;
  readonly to: string | null;
  /** Epoch ms the media socket was accepted. */
  readonly connectedAt: number;
  readonly state: AgentState;
  readonly media: LiveMedia;
  /** The newest of the caller's last line and the agent's. */
  readonly lastLine: LiveLine | null;
  readonly lastTurnLatencyMs: number | null;
}

/** Every call in progress in one process (or, merged, several). */
export interface LiveSnapshot {
  /** Epoch ms the snapshot was taken (the oldest part's, when merged). */
  readonly at: number;
  readonly calls: readonly LiveCall[];
}

/** One snapshot of several processes' calls (oldest first by connection time). */
export function mergeLiveSnapshots(parts: readonly LiveSnapshot[]): LiveSnapshot {
  const calls = parts.flatMap((part) => part.calls);
  calls.sort((a, b) => a.connectedAt - b.connectedAt);
  const at = parts.length === 0 ? Date.now() : Math.min(...parts.map((part) => part.at));
  return { at, calls };
}
