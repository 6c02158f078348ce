/**
 * The Twilio-like Media Streams client over a real WebSocket: the one the tests, the simulator
 * (`caller.ts`) and the bench use. It sends `connected`, `start`, `media` at 50 fps on an
 * absolute-deadline schedule, `dtmf`, `stop`; it plays received audio on a virtual clock (20 ms per
 * 160 bytes), measures the agent's frame cadence, and echoes each `mark` when the audio before it
 * would have finished, or at once on `clear`, like Twilio (twilio-media-streams.md).
 *
 * Hundreds of clients can share one scheduler (one timer); a load generator sends pre-encoded
 * payloads (`sendEncodedMedia`), turns off `keepAudio` and `keepMessages`, and sets `fastMedia` so
 * received media is recognised without JSON parsing.
 *
 * Timing note: Deno's WebSocket client leaves Nagle's algorithm on, so two messages sent back to
 * back (e.g. `begin()`'s `connected` + `start`) can see the second held ~40 ms until the server's
 * delayed ACK. To measure start → first greeting frame, `sendConnected()`, pause, then time from
 * `sendStart()`. Streams paced at 20 ms are not affected in practice (measured p50 20.3 ms).
 */
import { FRAME_BYTES, FRAME_MS, frameAt, frameCount } from "../../src/audio/frames.ts";
import { type Scheduler, sharedScheduler, sleepUntil } from "../../src/call/scheduler.ts";
import type { MsHistogram } from "../stats.ts";
import { Playout, type ReceivedMessage, type TwilioClientListener } from "./_playout.ts";

export type { MarkEchoRecord, ReceivedMessage, TwilioClientListener } from "./_playout.ts";

export interface TwilioClientOptions {
  /** e.g. `ws://127.0.0.1:8080/ws/twilio-media`. */
  readonly url: string;
  /** Offered subprotocols; default `["audio.twilio.com"]`, `[]` offers none. */
  readonly protocols?: readonly string[];
  /** Extra upgrade headers (e.g. `X-Twilio-Signature`). */
  readonly headers?: Readonly<Record<string, string>>;
  /** For `wss://` with a private CA: `Deno.createHttpClient({ caCerts })`. */
  readonly client?: Deno.HttpClient;
  readonly callSid?: string;
  readonly streamSid?: string;
  readonly accountSid?: string;
  /** `<Parameter>` pairs sent in `start`. */
  readonly customParameters?: Readonly<Record<string, string>>;
  /** Echo marks like Twilio (default true). */
  readonly echoMarks?: boolean;
  /** Keep every received audio byte (default true; benchmarks may turn it off). */
  readonly keepAudio?: boolean;
  /**
   * Keep every received message in `received` and every media arrival in `mediaArrivals` (default
   * true). Off, the counters, the cadence histogram and the listener still see everything.
   */
  readonly keepMessages?: boolean;
  /** Recognise media by its exact prefix, without JSON parsing (default false: check everything). */
  readonly fastMedia?: boolean;
  /** Told of each message, echo and invalid message as it happens. */
  readonly listener?: TwilioClientListener;
  /** Clock for the media schedule and mark echoes; default the shared real-time scheduler. */
  readonly scheduler?: Scheduler;
}

let sidCounter = 0;

/** A sid unique across processes too (several load generators may call one Kav). */
export function newSid(prefix: string): string {
  const random = crypto.getRandomValues(new Uint8Array(8));
  let hex = "";
  for (const byte of random) hex += byte.toString(16).padStart(2, "0");
  return prefix + hex + (++sidCounter).toString(16).padStart(16, "0");
}

export class TwilioClient {
  readonly callSid: string;
  readonly streamSid: string;
  readonly accountSid: string;
  readonly socket: WebSocket;
  /** Resolves when the socket has closed (by either side), with the close code. */
  readonly closed: Promise<{ code: number; reason: string }>;
  readonly #options: TwilioClientOptions;
  readonly #scheduler: Scheduler;
  readonly #playout: Playout;
  readonly #sidJson: string;
  #upgradeMs = NaN;
  #sequence = 0;
  #chunk = 0;

  private constructor(socket: WebSocket, options: TwilioClientOptions) {
    this.socket = socket;
    this.#options = options;
    this.#scheduler = options.scheduler ?? sharedScheduler();
    this.callSid = options.callSid ?? newSid("CA");
    this.streamSid = options.streamSid ?? newSid("MZ");
    this.accountSid = options.accountSid ?? "AC" + "0".repeat(32);
    this.#sidJson = JSON.stringify(this.streamSid);
    this.#playout = new Playout({
      scheduler: this.#scheduler,
      streamSid: this.streamSid,
      keepAudio: options.keepAudio ?? true,
      keepMessages: options.keepMessages ?? true,
      fastMedia: options.fastMedia ?? false,
      echo: options.echoMarks === false ? null : (name) => this.#echo(name),
      listener: options.listener,
    });
    socket.addEventListener("message", (e) => this.#playout.receive(e.data));
    this.closed = new Promise((resolve) => {
      socket.addEventListener("close", (e) => {
        this.#playout.closed();
        resolve({ code: e.code, reason: e.reason });
      }, { once: true });
    });
  }

  /** Opens the socket (rejects if the upgrade fails) and returns the client. */
  static connect(options: TwilioClientOptions): Promise<TwilioClient> {
    const upgradeStartedAt = performance.now();
    const socket = new WebSocket(options.url, {
      protocols: [...(options.protocols ?? ["audio.twilio.com"])],
      headers: options.headers,
      client: options.client,
    });
    const client = new TwilioClient(socket, options);
    return new Promise((resolve, reject) => {
      const onError = () => reject(new Error(`Cannot open WebSocket to "${options.url}"`));
      socket.addEventListener("error", onError, { once: true });
      socket.addEventListener("open", () => {
        socket.removeEventListener("error", onError);
        client.#upgradeMs = performance.now() - upgradeStartedAt;
        resolve(client);
      }, { once: true });
    });
  }

  /** WebSocket upgrade request → socket open, ms. */
  get upgradeMs(): number {
    return this.#upgradeMs;
  }

  /** What was received, in order, with arrival times (ms, scheduler clock; needs `keepMessages`). */
  get received(): readonly ReceivedMessage[] {
    return this.#playout.received;
  }
  /** Arrival time of every received media message (ms, scheduler clock; needs `keepMessages`). */
  get mediaArrivals(): readonly number[] {
    return this.#playout.mediaArrivals;
  }
  /** Received media messages. */
  get mediaFrames(): number {
    return this.#playout.mediaFrames;
  }
  /** Arrival time of the last media message (ms, scheduler clock; NaN before the first). */
  get lastMediaAt(): number {
    return this.#playout.lastMediaAt;
  }
  /** When the audio received so far will have played (ms, scheduler clock). */
  get playoutEndsAt(): number {
    return this.#playout.playoutEnd;
  }
  /** Marks received and not yet echoed. */
  get pendingEchoes(): number {
    return this.#playout.pendingEchoes;
  }
  /** Received marks, in order. */
  get marks(): readonly string[] {
    return this.#playout.marks;
  }
  /** Marks echoed back, with time and whether a `clear` flushed them. */
  get echoes(): Playout["echoes"] {
    return this.#playout.echoes;
  }
  /** Arrival times of `clear` messages. */
  get clears(): readonly number[] {
    return this.#playout.clears;
  }
  /** Received messages that were not valid Twilio outbound JSON. */
  get invalid(): readonly string[] {
    return this.#playout.invalid;
  }

  /** Every received audio byte, in order (needs `keepAudio`). */
  audio(): Uint8Array {
    return this.#playout.audio();
  }

  /** Intervals between consecutive media arrivals with no mark or clear between them, ms. */
  get interArrival(): MsHistogram {
    return this.#playout.interArrival;
  }
  /** Such intervals over 40 ms (two frames' time). */
  get gapsOver40(): number {
    return this.#playout.gapsOver40;
  }

  /** Mean arrival interval over the run (first to last frame), ms; NaN under 2 frames. */
  meanIntervalMs(): number {
    const t = this.#playout.mediaArrivals;
    return t.length < 2 ? NaN : (t[t.length - 1] - t[0]) / (t.length - 1);
  }

  /** Times the virtual playout ran dry while more audio came later (audible gaps). */
  get underruns(): number {
    return this.#playout.underruns;
  }

  sendConnected(): void {
    this.sendRaw('{"event":"connected","protocol":"Call","version":"1.0.0"}');
  }

  sendStart(): void {
    const start = {
      event: "start",
      sequenceNumber: String(++this.#sequence),
      streamSid: this.streamSid,
      start: {
        accountSid: this.accountSid,
        streamSid: this.streamSid,
        callSid: this.callSid,
        tracks: ["inbound"],
        mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
        customParameters: this.#options.customParameters ?? {},
      },
    };
    this.sendRaw(JSON.stringify(start));
  }

  /** `connected` then `start`, as Twilio opens a stream. */
  begin(): void {
    this.sendConnected();
    this.sendStart();
  }

  /** One `media` message carrying `payload` (any length). */
  sendMedia(payload: Uint8Array): void {
    this.sendEncodedMedia(payload.toBase64());
  }

  /** One `media` message carrying an already base64-encoded payload (encode once, send often). */
  sendEncodedMedia(base64: string): void {
    const timestamp = this.#chunk * FRAME_MS;
    this.sendRaw(
      `{"event":"media","sequenceNumber":"${++this.#sequence}","streamSid":${this.#sidJson},` +
        `"media":{"track":"inbound","chunk":"${++this.#chunk}","timestamp":"${timestamp}",` +
        `"payload":"${base64}"}}`,
    );
  }

  /**
   * Streams `mulaw` as 20 ms frames (last one padded with silence) at 50 fps on an absolute
   * schedule (`next += 20`; more than 200 ms late ⇒ resync). Resolves with frames sent.
   */
  async streamAudio(mulaw: Uint8Array, options: { signal?: AbortSignal } = {}): Promise<number> {
    const n = frameCount(mulaw.length);
    let next = this.#scheduler.now();
    for (let i = 0; i < n; i++) {
      if (this.socket.readyState !== WebSocket.OPEN) return i;
      const now = this.#scheduler.now();
      if (now - next > 200) next = now;
      if (next > now) await sleepUntil(this.#scheduler, next, { signal: options.signal });
      if (this.socket.readyState !== WebSocket.OPEN) return i;
      this.sendMedia(frameAt(mulaw, i));
      next += FRAME_MS;
    }
    return n;
  }

  /** Streams `ms` of μ-law silence (whole frames). */
  streamSilence(ms: number, options: { signal?: AbortSignal } = {}): Promise<number> {
    const frames = Math.max(1, Math.round(ms / FRAME_MS));
    return this.streamAudio(new Uint8Array(frames * FRAME_BYTES).fill(0xff), options);
  }

  sendDtmf(digit: string): void {
    this.sendRaw(JSON.stringify({
      event: "dtmf",
      streamSid: this.streamSid,
      sequenceNumber: String(++this.#sequence),
      dtmf: { track: "inbound_track", digit },
    }));
  }

  sendStop(): void {
    this.sendRaw(JSON.stringify({
      event: "stop",
      sequenceNumber: String(++this.#sequence),
      streamSid: this.streamSid,
      stop: { accountSid: this.accountSid, callSid: this.callSid },
    }));
  }

  /** Sends anything, malformed included (text or binary). */
  sendRaw(data: string | Uint8Array): void {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(data);
  }

  /**
   * Resolves once `predicate()` holds (checked now and after every received message and at close);
   * rejects after `timeoutMs` with `what` in the message.
   */
  waitFor(predicate: () => boolean, options: { timeoutMs: number; what?: string }): Promise<void> {
    return this.#playout.waitFor(predicate, options);
  }

  /** Waits until at least `n` media frames have arrived. */
  waitForFrames(n: number, options: { timeoutMs: number }): Promise<void> {
    return this.waitFor(() => this.mediaFrames >= n, { ...options, what: `${n} media frames` });
  }

  /** Waits until `name` has been echoed back. */
  waitForEcho(name: string, options: { timeoutMs: number }): Promise<void> {
    return this.waitFor(() => this.echoes.some((e) => e.name === name), {
      ...options,
      what: `echo of mark "${name}"`,
    });
  }

  /**
   * Closes the socket (if open) and waits for the close, at most `timeoutMs` when given (a peer
   * that never answers the close handshake); cancels pending echoes.
   */
  async close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
    if (options.timeoutMs === undefined) {
      await this.closed;
      return;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const cap = new Promise<void>((resolve) => (timer = setTimeout(resolve, options.timeoutMs)));
    await Promise.race([this.closed, cap]);
    clearTimeout(timer);
  }

  #echo(name: string): void {
    this.sendRaw(
      `{"event":"mark","sequenceNumber":"${++this.#sequence}","streamSid":${this.#sidJson},` +
        `"mark":{"name":${JSON.stringify(name)}}}`,
    );
  }
}

/** What a TwiML answer tells Twilio to do next (the verbs Kav answers with). */
export type TwimlNext =
  | {
    readonly kind: "dial";
    readonly action: string;
    readonly target: string;
    readonly sip: boolean;
  }
  | { readonly kind: "hangup" }
  | {
    readonly kind: "stream";
    readonly url: string;
    readonly action: string | null;
    readonly parameters: Readonly<Record<string, string>>;
  }
  /** No TwiML (204 or an empty body): the call ends. */
  | { readonly kind: "none"; readonly status: number };

function unescapeXml(text: string): string {
  return text.replace(
    /&(amp|lt|gt|quot|apos|#\d+);/g,
    (_, e: string) =>
      e === "amp"
        ? "&"
        : e === "lt"
        ? "<"
        : e === "gt"
        ? ">"
        : e === "quot"
        ? '"'
        : e === "apos"
        ? "'"
        : String.fromCodePoint(Number(e.slice(1))),
  );
}

/** Reads Kav's TwiML answers (`<Connect><Stream>`, `<Dial>`, `<Hangup/>`); throws on others. */
export function parseTwiml(status: number, text: string): TwimlNext {
  if (status === 204 || text === "") return { kind: "none", status };
  if (/<Hangup\/>/.test(text)) return { kind: "hangup" };
  const dial = /<Dial action="([^"]*)"[^>]*>(.*)<\/Dial>/.exec(text);
  if (dial) {
    const sip = /^<Sip>(.*)<\/Sip>$/.exec(dial[2]);
    return {
      kind: "dial",
      action: unescapeXml(dial[1]),
      target: unescapeXml(sip ? sip[1] : dial[2]),
      sip: sip !== null,
    };
  }
  const stream = /<Stream url="([^"]*)"/.exec(text);
  if (stream) {
    const action = /<Connect action="([^"]*)"/.exec(text);
    const parameters: Record<string, string> = {};
    for (const p of text.matchAll(/<Parameter name="([^"]*)" value="([^"]*)"\/>/g)) {
      parameters[unescapeXml(p[1])] = unescapeXml(p[2]);
    }
    return {
      kind: "stream",
      url: unescapeXml(stream[1]),
      action: action ? unescapeXml(action[1]) : null,
      parameters,
    };
  }
  throw new TypeError(`Cannot read TwiML answer (status ${status}): ${text.slice(0, 200)}`);
}

/**
 * POSTs a form-encoded Twilio request to Kav at `baseUrl` (the path taken from `url`, which may
 * name the public URL), as Twilio requests the `<Connect action>` and `<Dial action>` URLs.
 */
export async function postTwilioRequest(
  baseUrl: string,
  url: string,
  params: Readonly<Record<string, string>>,
): Promise<TwimlNext> {
  const path = new URL(url, baseUrl).pathname;
  const response = await fetch(baseUrl + path, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(params).toString(),
  });
  return parseTwiml(response.status, await response.text());
}

/**
 * What Twilio does after Kav closed the media socket of `client`'s call: request the
 * `<Connect action>` (`/webhook/stream_ended`) with the call's parameters; resolves with what the
 * answer says to do next.
 */
export function followConnectAction(
  baseUrl: string,
  call: { readonly callSid: string; readonly from: string; readonly to: string },
): Promise<TwimlNext> {
  return postTwilioRequest(baseUrl, "/webhook/stream_ended", {
    AccountSid: "AC" + "0".repeat(32),
    CallSid: call.callSid,
    From: call.from,
    To: call.to,
    CallStatus: "in-progress",
    Direction: "inbound",
  });
}

/**
 * What Twilio does when a `<Dial>` ends: request its `action` with `DialCallStatus` (and
 * `DialCallDuration` when it was answered); resolves with what the answer says to do next.
 */
export function followDialAction(
  baseUrl: string,
  dial: Extract<TwimlNext, { kind: "dial" }>,
  call: {
    readonly callSid: string;
    readonly from: string;
    readonly to: string;
    readonly status: string;
    readonly durationS?: number;
  },
): Promise<TwimlNext> {
  return postTwilioRequest(baseUrl, dial.action, {
    AccountSid: "AC" + "0".repeat(32),
    CallSid: call.callSid,
    From: call.from,
    To: call.to,
    CallStatus: "in-progress",
    DialCallSid: "CA" + "d".repeat(32),
    DialCallStatus: call.status,
    ...(call.durationS === undefined ? {} : { DialCallDuration: String(call.durationS) }),
  });
}
