/**
 * Small per-call facts that a later request for the call may need, whichever event loop takes it
 * (SPEC 8). A call lives on the call worker that accepted its socket, but Twilio's next request for
 * it (the `<Connect action>` after the stream closed, a `<Dial action>` when a transfer ends, a
 * status callback) reaches any worker. So whatever the answer depends on (a transfer's department,
 * why the call ended) is put here by the call's own worker and read by the one answering.
 *
 * The entries live on the main thread (`CallStateRegistry`); a call worker reaches them by message
 * (`src/workers/call_state_client.ts`), the main thread directly (`LocalCallState`). The contract:
 *
 * - `set` resolves once every worker's `get` sees the fields: await it before the socket is closed
 *   (or anything else that lets Twilio send the next request), and the answer can never miss it;
 * - values are JSON-like data (structured-cloned between threads), a few per call, not audio;
 * - an entry lives `ttlMs` after its last `set` (default 4 h: past a transfer's longest Dial), and
 *   at most `maxEntries` are kept (the oldest go first), so it never grows without bound.
 */

export type CallStateValue =
  | string
  | number
  | boolean
  | null
  | readonly CallStateValue[]
  | { readonly [key: string]: CallStateValue };

export type CallStateFields = Readonly<Record<string, CallStateValue>>;

export interface SetOptions {
  /** How long the entry lives after this `set`, ms (default the registry's). */
  readonly ttlMs?: number;
}

/** The calls' shared facts, as every part of Kav sees them (workers or not). */
export interface SharedCallState {
  /** Merges `fields` into the call's entry; resolves once every worker's `get` sees them. */
  set(callSid: string, fields: CallStateFields, options?: SetOptions): Promise<void>;
  /** The call's entry (a copy), or null when there is none or it expired. */
  get(callSid: string): Promise<CallStateFields | null>;
  /** Forgets the call's entry. */
  delete(callSid: string): Promise<void>;
}

export const CALL_STATE_DEFAULTS = Object.freeze({
  ttlMs: 4 * 3600_000,
  maxEntries: 20_000,
});

interface Entry {
  fields: Record<string, CallStateValue>;
  expiresAt: number;
}

/** The entries themselves (the main thread holds the process's one registry). */
export class CallStateRegistry {
  readonly #entries = new Map<string, Entry>();
  readonly #ttlMs: number;
  readonly #maxEntries: number;
  readonly #now: () => number;

  constructor(
    options: { ttlMs?: number; maxEntries?: number; now?: () => number } = {},
  ) {
    this.#ttlMs = options.ttlMs ?? CALL_STATE_DEFAULTS.ttlMs;
    this.#maxEntries = options.maxEntries ?? CALL_STATE_DEFAULTS.maxEntries;
    this.#now = options.now ?? Date.now;
  }

  /** Entries kept (expired ones included until they are next looked at or pushed out). */
  get size(): number {
    return this.#entries.size;
  }

  set(callSid: string, fields: CallStateFields, options: SetOptions = {}): void {
    const old = this.#live(callSid);
    this.#entries.delete(callSid);
    // Re-inserted at the end: the Map's order is the order of last use, oldest first.
    this.#entries.set(callSid, {
      fields: { ...old?.fields, ...structuredClone(fields) },
      expiresAt: this.#now() + (options.ttlMs ?? this.#ttlMs),
    });
    for (const sid of this.#entries.keys()) {
      if (this.#entries.size <= this.#maxEntries) break;
      this.#entries.delete(sid);
    }
  }

  get(callSid: string): CallStateFields | null {
    const entry = this.#live(callSid);
    return entry === null ? null : structuredClone(entry.fields);
  }

  delete(callSid: string): void {
    this.#entries.delete(callSid);
  }

  #live(callSid: string): Entry | null {
    const entry = this.#entries.get(callSid);
    if (entry === undefined) return null;
    if (entry.expiresAt <= this.#now()) {
      this.#entries.delete(callSid);
      return null;
    }
    return entry;
  }
}

/** `SharedCallState` over a registry in this event loop (the main thread, or `workers = 1`). */
export class LocalCallState implements SharedCallState {
  readonly registry: CallStateRegistry;

  constructor(registry: CallStateRegistry = new CallStateRegistry()) {
    this.registry = registry;
  }

  set(callSid: string, fields: CallStateFields, options?: SetOptions): Promise<void> {
    try {
      this.registry.set(callSid, fields, options);
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }

  get(callSid: string): Promise<CallStateFields | null> {
    return Promise.resolve(this.registry.get(callSid));
  }

  delete(callSid: string): Promise<void> {
    this.registry.delete(callSid);
    return Promise.resolve();
  }
}
