/**
 * Call control after the media stream (SPEC 6): what Kav answers Twilio's `<Connect action>`
 * and `<Dial action>` requests for a call the agent transferred or hung up, and what a stream
 * connected back after a failed transfer starts from. The session writes an entry before it
 * closes the socket; the HTTP routes read it from memory, never waiting on anything.
 *
 * One board per process, bounded: entries expire after `ttlMs` (a dial can ring and talk for a
 * long time, but not forever) and the oldest go first past `maxEntries`.
 */

/** What the agent decided: hang up, or hand the call to a department's number or SIP URI. */
export type CallAction =
  | { readonly kind: "hangup" }
  | { readonly kind: "transfer"; readonly department: string; readonly target: string };

/** An action with what the agent needs if the caller comes back (opaque to the core). */
export interface HandOff {
  readonly action: CallAction;
  /** The agent's own state (JSON text): history, next turn index. */
  readonly carry: string;
}

/** A stream connected back after a transfer whose dial failed. */
export interface Resume {
  /** The department the transfer went to, or null when this process no longer knows. */
  readonly department: string | null;
  /** `DialCallStatus` (no-answer, busy, failed, canceled). */
  readonly dialStatus: string;
  /** The agent's state from before the transfer; null when this process no longer knows. */
  readonly carry: string | null;
}

interface Entry {
  readonly handOff: HandOff;
  readonly at: number;
  dialStatus: string | null;
}

/**
 * Where hand-offs wait, as a call and the action routes see them: this process's board, or on a
 * call worker the main thread's (SPEC 8: Twilio's next request for a call may reach any worker),
 * whose answers come by message, so each may be a promise.
 */
export interface HandOffs {
  /** Resolved (when a promise) once every worker's `action` sees it: await before the socket closes. */
  set(callSid: string, handOff: HandOff): void | Promise<void>;
  /** The `<Connect action>` answer's action, or null (the call ended otherwise). */
  action(callSid: string): CallAction | null | Promise<CallAction | null>;
  /** Twilio's dial outcome for a transfer; the department, or null when unknown. */
  dialEnded(callSid: string, status: string): string | null | Promise<string | null>;
  /** A stream started for `callSid`: its resume state, once (null when it is a new call). */
  takeResume(callSid: string): Resume | null | Promise<Resume | null>;
}

export interface HandOffBoardOptions {
  readonly ttlMs?: number;
  readonly maxEntries?: number;
  readonly now?: () => number;
}

export class HandOffBoard implements HandOffs {
  readonly #entries = new Map<string, Entry>();
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #now: () => number;

  constructor(options: HandOffBoardOptions = {}) {
    this.#ttlMs = options.ttlMs ?? 6 * 3600_000;
    this.#max = options.maxEntries ?? 10_000;
    this.#now = options.now ?? Date.now;
  }

  /** Entries held. */
  get size(): number {
    return this.#entries.size;
  }

  /** The session closes the socket next: remember what to answer for `callSid`. */
  set(callSid: string, handOff: HandOff): void {
    this.#prune();
    this.#entries.delete(callSid);
    this.#entries.set(callSid, { handOff, at: this.#now(), dialStatus: null });
    while (this.#entries.size > this.#max) {
      this.#entries.delete(this.#entries.keys().next().value as string);
    }
  }

  /** The action to answer the `<Connect action>` request with; null: the call ended otherwise. */
  action(callSid: string): CallAction | null {
    const entry = this.#live(callSid);
    if (entry === null) return null;
    // A hang-up is answered once; a transfer waits for its dial outcome.
    if (entry.handOff.action.kind === "hangup") this.#entries.delete(callSid);
    return entry.handOff.action;
  }

  /**
   * The dial ended: a completed or answered one forgets the call; any other status keeps it
   * for the stream that connects back. Returns the department, or null when unknown.
   */
  dialEnded(callSid: string, status: string): string | null {
    const entry = this.#live(callSid);
    if (entry === null) return null;
    const action = entry.handOff.action;
    if (status === "completed" || status === "answered") this.#entries.delete(callSid);
    else entry.dialStatus = status;
    return action.kind === "transfer" ? action.department : null;
  }

  /** A stream started for `callSid`: its resume state, once (null when it is a new call). */
  takeResume(callSid: string): Resume | null {
    const entry = this.#live(callSid);
    if (entry === null || entry.dialStatus === null) return null;
    this.#entries.delete(callSid);
    const action = entry.handOff.action;
    return {
      department: action.kind === "transfer" ? action.department : null,
      dialStatus: entry.dialStatus,
      carry: entry.handOff.carry,
    };
  }

  #live(callSid: string): Entry | null {
    const entry = this.#entries.get(callSid);
    if (entry === undefined) return null;
    if (this.#now() - entry.at > this.#ttlMs) {
      this.#entries.delete(callSid);
      return null;
    }
    return entry;
  }

  #prune(): void {
    const cutoff = this.#now() - this.#ttlMs;
    for (const [callSid, entry] of this.#entries) {
      if (entry.at >= cutoff) break;
      this.#entries.delete(callSid);
    }
  }
}
