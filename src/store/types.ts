/**
 * The call record contract. Every method only enqueues: writes happen off the 20 ms paths, in order,
 * and a process killed mid-call leaves everything up to the last completed turn.
 */

export interface CallStarted {
  readonly callSid: string;
  readonly streamSid: string;
  readonly accountSid: string;
  readonly from: string | null;
  readonly to: string | null;
  readonly customParameters: Readonly<Record<string, string>>;
  /** Epoch ms. */
  readonly startedAt: number;
}

/** Server-side turn timings in ms (LiveKit names); null when not applicable. */
export interface TurnTimings {
  /** Caller's speech end (VAD) → turn decided. */
  readonly end_of_turn_delay: number | null;
  /** Caller's speech end (VAD) → STT final. */
  readonly stt_final_delay: number | null;
  /** LLM request → first token. */
  readonly llm_ttft: number | null;
  /** First sentence to TTS → its audio. */
  readonly tts_ttfb: number | null;
  /** Caller's speech end → first agent frame on the wire. */
  readonly e2e_latency: number | null;
  /** Turn decided (STT final) → first agent frame on the wire, providers excluded where measurable. */
  readonly server_latency: number | null;
}

export interface TurnRecord {
  readonly index: number;
  readonly speaker: "caller" | "agent";
  /** Caller: the final transcript. Agent: what was played (truncated to the last played mark if cut). */
  readonly text: string;
  /** Agent only: the full generated text, when it differs from `text`. */
  readonly generated: string | null;
  /** Agent turn cut by barge-in. */
  readonly cut: boolean;
  readonly startedAt: number;
  readonly endedAt: number;
  readonly timings: TurnTimings | null;
  /** Caller turns typed on the keypad (DTMF digits) say "keypad"; absent means speech. */
  readonly input?: "speech" | "keypad";
}

/** One tool the agent ran (SPEC 6): what the model asked, what came back, how long it took. */
export interface ToolCallRecord {
  /** When the call started, epoch ms. */
  readonly at: number;
  /** The model's id of the call. */
  readonly toolCallId: string;
  readonly name: string;
  /** The arguments as the model sent them (JSON text, possibly invalid). */
  readonly arguments: string;
  /** The answer handed to the model (JSON text), or null when it failed. */
  readonly result: string | null;
  /** Why it failed (invalid arguments, timeout, status, bad body, refused); null on success. */
  readonly error: string | null;
  readonly ms: number;
}

/** A transfer the agent carried out: the socket closed and Twilio got the `<Dial>`. */
export interface TransferRecord {
  readonly at: number;
  readonly department: string;
  /** The number or SIP URI dialled. */
  readonly target: string;
}

/** Twilio's `<Dial action>` report for the call's latest transfer. */
export interface DialEndedRecord {
  readonly at: number;
  /** `DialCallStatus`: completed, answered, busy, no-answer, failed or canceled. */
  readonly status: string;
  /** `DialCallDuration`, seconds; null when absent. */
  readonly durationS: number | null;
}

export type CallEventKind =
  | "mark"
  | "clear"
  | "dtmf"
  | "stt_restart"
  | "provider_error"
  | "malformed"
  | "barge_in"
  | "limit"
  /** A Twilio stream status callback (stream-started, stream-stopped, stream-error). */
  | "stream_status"
  /** A transfer or hang-up the caller cut short by speaking or pressing a key over its last sentence. */
  | "action_cancelled"
  /** The CRM's caller context: received, late, failed (detail says which, never the text). */
  | "caller_context";

export interface CallEvent {
  readonly kind: CallEventKind;
  readonly at: number;
  readonly detail: string;
}

export type CallOutcome =
  | "completed"
  | "interrupted"
  | "idle"
  | "max_duration"
  | "drained"
  | "error"
  | "rejected"
  /** The agent handed the call to a department (`<Dial>`). */
  | "transferred"
  /** The agent said goodbye and hung up (`<Hangup/>`). */
  | "agent_hangup";

export interface CallCounters {
  readonly rx_frames: number;
  readonly rx_drops: number;
  readonly tx_frames: number;
  readonly tx_drops: number;
  readonly tx_late: number;
  readonly malformed: number;
}

export interface CallEnded {
  readonly endedAt: number;
  readonly outcome: CallOutcome;
  readonly reason: string;
  readonly counters: CallCounters;
}

/**
 * A call's end as the store records it: a session's `CallEnded`, or one the main thread records
 * for a call whose call worker died (SPEC 8), whose counters died with it (null).
 */
export interface EndRecord extends Omit<CallEnded, "counters"> {
  readonly counters: CallCounters | null;
}

export interface CallStore {
  callStarted(call: CallStarted): void;
  turnCompleted(callSid: string, turn: TurnRecord): void;
  event(callSid: string, event: CallEvent): void;
  callEnded(callSid: string, ended: EndRecord): void;
  toolCall(callSid: string, record: ToolCallRecord): void;
  transfer(callSid: string, record: TransferRecord): void;
  /** Completes the call's latest transfer; the CRM gets the summary again with the outcome. */
  dialEnded(callSid: string, record: DialEndedRecord): void;
  /** Queued writes not yet on disk. */
  pending(): number;
  /** Writes everything queued; resolves when on disk. */
  flush(): Promise<void>;
  close(): Promise<void>;
}
