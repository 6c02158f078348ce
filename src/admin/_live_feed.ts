/**
 * The live view's Server-Sent Events: one timer for all viewers, running only while one is
 * connected, builds the snapshot once per tick and sends the same text to each. A viewer that reads
 * too slowly misses ticks (each one supersedes the last) instead of growing a queue.
 */

/** Ticks per second: a call appears within half a second of `start` (SPEC 7: within a second). */
export const LIVE_TICK_MS = 500;
/** Bytes a viewer may leave unread before ticks are skipped for it. */
const MAX_UNREAD_BYTES = 256 * 1024;
/** Viewers at once; more are answered 503 (each costs a serialization share and a socket). */
export const MAX_VIEWERS = 32;

const encoder = new TextEncoder();

export class LiveFeed {
  readonly #snapshot: () => unknown;
  readonly #tickMs: number;
  readonly #viewers = new Set<ReadableStreamDefaultController<Uint8Array>>();
  #timer: ReturnType<typeof setInterval> | undefined;

  /** `snapshot` is called once per tick while anyone watches; its JSON is sent as `live` events. */
  constructor(snapshot: () => unknown, options: { tickMs?: number } = {}) {
    this.#snapshot = snapshot;
    this.#tickMs = options.tickMs ?? LIVE_TICK_MS;
  }

  get viewers(): number {
    return this.#viewers.size;
  }

  /**
   * An SSE response for one viewer, or null when {@link MAX_VIEWERS} are watching. `completed`
   * settles when the response is over (`Deno.ServeHandlerInfo.completed`): the viewer leaves.
   */
  open(completed: Promise<void>): Response | null {
    if (this.#viewers.size >= MAX_VIEWERS) return null;
    let self: ReadableStreamDefaultController<Uint8Array> | null = null;
    const leave = () => {
      if (self !== null) this.#viewers.delete(self);
      if (this.#viewers.size === 0) this.#stop();
    };
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        self = controller;
        this.#viewers.add(controller);
        // The first picture at once, so a page shows calls without waiting for a tick.
        controller.enqueue(this.#event());
        this.#start();
      },
      cancel: leave,
    }, new ByteLengthQueuingStrategy({ highWaterMark: MAX_UNREAD_BYTES }));
    completed.then(leave, leave);
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
        "x-accel-buffering": "no",
      },
    });
  }

  /** Ends every viewer's stream (shutdown). */
  close(): void {
    this.#stop();
    for (const viewer of this.#viewers) {
      try {
        viewer.close();
      } catch {
        // Already closed by the client.
      }
    }
    this.#viewers.clear();
  }

  #start(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(this.#tick, this.#tickMs);
  }

  #stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #tick = (): void => {
    if (this.#viewers.size === 0) return this.#stop();
    const event = this.#event();
    for (const viewer of this.#viewers) {
      // desiredSize <= 0: the viewer has not read the last ticks; this one would only queue.
      if ((viewer.desiredSize ?? 0) < event.byteLength) continue;
      try {
        viewer.enqueue(event);
      } catch {
        this.#viewers.delete(viewer);
      }
    }
  };

  #event(): Uint8Array {
    return encoder.encode(`event: live\ndata: ${JSON.stringify(this.#snapshot())}\n\n`);
  }
}
