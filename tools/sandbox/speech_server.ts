/**
 * A real gRPC `google.cloud.speech.v1.Speech` server for tests and the local sandbox, built from the
 * protos shipped in `@google-cloud/speech`. Transcripts are keyed by audio (see `_clip_matcher.ts`).
 * Everything is scriptable per test through the mutable `script` and the control methods, and the
 * server records what it received in `stats`.
 *
 * Standalone: `deno run -A tools/sandbox/speech_server.ts --port 50051 --clips tools/sandbox/fixtures/clips.json`
 */
import * as grpc from "@grpc/grpc-js";
import { ClipMatcher, findClips, type MatchEvent } from "./_clip_matcher.ts";
import { readCommandLine } from "../../src/command_line.ts";
import { type Clip, loadClips, speechService } from "./_protos.ts";

type Timer = ReturnType<typeof setTimeout>;

/** Behaviour that tests may change at any time; it applies to streams opened afterwards. */
export interface SpeechScript {
  /** Wait this long (ms) after a stream starts before sending response headers ("open"). */
  openDelayMs: number;
  /** Delay (ms) before each response message. */
  latencyMs: number;
  /** End each stream with `streamLimitCode` this long (ms) after it started; null = no limit. */
  streamLimitMs: number | null;
  /** OUT_OF_RANGE by default, as Google's "Exceeded maximum allowed stream duration". */
  streamLimitCode: grpc.status;
  /** Language codes refused with INVALID_ARGUMENT after the first (config) message. */
  rejectLanguages: string[];
  /**
   * When response headers go out: "immediate" (after `openDelayMs`), or "with_first_result" (with
   * the first response message, as many gRPC servers do; nothing before the audio has words).
   */
  headers: "immediate" | "with_first_result";
  /** Finals carry `resultEndTime` (Google does; some servers do not). */
  finalEndTime: boolean;
}

export interface SpeechServerOptions extends Partial<SpeechScript> {
  readonly clips: readonly Clip[];
  /** 0 (default) picks a free port. */
  readonly port?: number;
  readonly hostname?: string;
}

/** What one StreamingRecognize call received and how it ended. */
export interface StreamRecord {
  readonly index: number;
  /** The `streamingConfig` of the first message (camelCase, enums as names), or null. */
  config: Record<string, unknown> | null;
  /** Sizes of the audio messages, in bytes, in arrival order. */
  readonly chunkSizes: number[];
  /** Finals emitted on this stream, in order. */
  readonly finals: string[];
  /** "open" while running, then "client_end", "cancelled", "refused" or "error:<CODE>". */
  status: string;
  readonly matcher: ClipMatcher;
}

export interface SpeechServerStats {
  readonly streams: StreamRecord[];
  readonly recognizeCalls: { config: Record<string, unknown>; bytes: number; texts: string[] }[];
  refused: number;
}

export interface SpeechServer {
  readonly port: number;
  /** "127.0.0.1:<port>", the form `stt.google.endpoint` takes. */
  readonly address: string;
  readonly script: SpeechScript;
  readonly stats: SpeechServerStats;
  /** Refuse the next `count` stream opens with `code` before any header is sent. */
  refuseStreams(count: number, code?: grpc.status, message?: string): void;
  /** Fail the next `count` Recognize calls with `code`. */
  failRecognize(count: number, code?: grpc.status, message?: string): void;
  /** Fail every Recognize call with UNAVAILABLE for the next `ms`. */
  failRecognizeFor(ms: number): void;
  /** Ends every open stream with an error now (a mid-call failure); returns how many. */
  failActiveStreams(code?: grpc.status, message?: string): number;
  /** Total bytes received on all streams. */
  bytesReceived(): number;
  /** Every final emitted on any stream, in order. */
  finals(): string[];
  /** Stops the server abruptly (connections dropped); `restart()` brings it back on the same port. */
  kill(): Promise<void>;
  restart(): Promise<void>;
  /**
   * Not listening for `ms` (connections refused), then back on the same port: kills now and
   * resolves once restarted. Total downtime is `ms`.
   */
  downFor(ms: number): Promise<void>;
  close(): Promise<void>;
}

type Duplex = grpc.ServerDuplexStream<Record<string, unknown>, Record<string, unknown>>;
type Unary = grpc.ServerUnaryCall<Record<string, unknown>, Record<string, unknown>>;

function duration(bytes: number): { seconds: number; nanos: number } {
  const ms = bytes / 8;
  return { seconds: Math.floor(ms / 1000), nanos: Math.round((ms % 1000) * 1e6) };
}

function toResult(event: MatchEvent, finalEndTime = true): Record<string, unknown> {
  if (event.kind === "final") {
    return {
      alternatives: [{ transcript: event.text, confidence: 0.92 }],
      isFinal: true,
      ...(finalEndTime ? { resultEndTime: duration(event.end) } : {}),
      languageCode: "he-il",
    };
  }
  return {
    alternatives: [{ transcript: event.text }],
    isFinal: false,
    stability: event.stability,
    resultEndTime: duration(event.end),
  };
}

function asRecord(value: unknown): Record<string, unknown> | null {
  return typeof value === "object" && value !== null ? value as Record<string, unknown> : null;
}

function bind(server: grpc.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
      if (err) reject(err);
      else resolve(bound);
    });
  });
}

/** Starts the fake Speech server on 127.0.0.1 (port 0 = a free one). */
export async function startSpeechServer(options: SpeechServerOptions): Promise<SpeechServer> {
  const host = options.hostname ?? "127.0.0.1";
  const script: SpeechScript = {
    openDelayMs: options.openDelayMs ?? 0,
    latencyMs: options.latencyMs ?? 0,
    streamLimitMs: options.streamLimitMs ?? null,
    streamLimitCode: options.streamLimitCode ?? grpc.status.OUT_OF_RANGE,
    rejectLanguages: options.rejectLanguages ?? [],
    headers: options.headers ?? "immediate",
    finalEndTime: options.finalEndTime ?? true,
  };
  const stats: SpeechServerStats = { streams: [], recognizeCalls: [], refused: 0 };
  const refusals: { code: grpc.status; message: string }[] = [];
  const recognizeFailures: { code: grpc.status; message: string }[] = [];
  let recognizeDownUntil = 0;
  const active = new Map<(code: grpc.status, message: string) => void, (status: string) => void>();
  const timers = new Set<Timer>();

  function later(ms: number, fn: () => void): Timer {
    const id = setTimeout(() => {
      timers.delete(id);
      fn();
    }, ms);
    timers.add(id);
    return id;
  }
  function cancelTimer(id: Timer | null): void {
    if (id === null) return;
    clearTimeout(id);
    timers.delete(id);
  }

  function streamingRecognize(call: Duplex): void {
    const record: StreamRecord = {
      index: stats.streams.length,
      config: null,
      chunkSizes: [],
      finals: [],
      status: "open",
      matcher: new ClipMatcher(options.clips),
    };
    stats.streams.push(record);
    const refusal = refusals.shift();
    if (refusal) {
      stats.refused++;
      record.status = "refused";
      call.emit("error", { code: refusal.code, details: refusal.message });
      return;
    }
    let open = false;
    let done = false;
    let lastSendAt = 0;
    const pending = new Set<Timer>();
    const held: Record<string, unknown>[] = [];
    const finish = (status: string): void => {
      if (done) return;
      done = true;
      record.status = status;
      active.delete(fail);
      cancelTimer(openTimer);
      cancelTimer(limitTimer);
      for (const id of pending) cancelTimer(id);
    };
    const fail = (code: grpc.status, message: string): void => {
      if (done) return;
      finish(`error:${grpc.status[code]}`);
      call.emit("error", { code, details: message });
    };
    const openNow = (): void => {
      open = true;
      call.sendMetadata(new grpc.Metadata());
      for (const response of held.splice(0)) send(response);
      if (ending && pending.size === 0) endNow();
    };
    const headersWithResult = script.headers === "with_first_result";
    const send = (response: Record<string, unknown>): void => {
      if (!open && headersWithResult && openTimer === null) {
        openNow(); // the headers go out with the first message
      } else if (!open) {
        held.push(response);
        return;
      }
      const at = Math.max(Date.now() + script.latencyMs, lastSendAt);
      lastSendAt = at;
      const id = later(at - Date.now(), () => {
        pending.delete(id);
        if (!done) call.write(response);
        if (pending.size === 0 && ending) endNow();
      });
      pending.add(id);
    };
    let ending = false;
    const endNow = (): void => {
      if (done) return;
      finish("client_end");
      call.end();
    };
    active.set(fail, finish);
    // With "with_first_result", `openDelayMs` only delays the earliest moment headers can go.
    let openTimer: Timer | null = later(script.openDelayMs, () => {
      openTimer = null;
      if (!headersWithResult || held.length > 0) openNow();
    });
    const limitTimer: Timer | null = script.streamLimitMs === null ? null : later(
      script.streamLimitMs,
      () =>
        script.streamLimitCode === grpc.status.OUT_OF_RANGE
          ? fail(
            grpc.status.OUT_OF_RANGE,
            "Exceeded maximum allowed stream duration of 305 seconds.",
          )
          : fail(script.streamLimitCode, "Stream failed by the test script."),
    );
    call.on("data", (message: Record<string, unknown>) => {
      if (done) return;
      const config = asRecord(message.streamingConfig);
      if (config) {
        record.config = config;
        const language = asRecord(config.config)?.languageCode;
        if (typeof language === "string" && script.rejectLanguages.includes(language)) {
          fail(grpc.status.INVALID_ARGUMENT, `Invalid recognition 'config': bad language code.`);
        }
        return;
      }
      const audio = message.audioContent;
      if (!(audio instanceof Uint8Array)) return;
      record.chunkSizes.push(audio.length);
      for (const event of record.matcher.push(audio)) {
        if (event.kind === "final") record.finals.push(event.text);
        send({ results: [toResult(event, script.finalEndTime)] });
      }
    });
    call.on("end", () => {
      ending = true;
      // A client cancel also ends the readable side, with the cancel reported a tick later; wait
      // a macrotask so a cancel is recorded as one rather than as a half-close.
      later(0, () => {
        if (open && pending.size === 0) endNow();
      });
    });
    call.on("cancelled", () => finish("cancelled"));
    call.on("error", () => finish(record.status === "open" ? "error" : record.status));
  }

  function recognize(call: Unary, callback: grpc.sendUnaryData<Record<string, unknown>>): void {
    const config = asRecord(call.request.config) ?? {};
    const content = asRecord(call.request.audio)?.content;
    const audio = content instanceof Uint8Array ? content : new Uint8Array();
    const found = findClips(options.clips, audio);
    stats.recognizeCalls.push({ config, bytes: audio.length, texts: found.map((f) => f.text) });
    const failure = recognizeFailures.shift() ??
      (Date.now() < recognizeDownUntil
        ? { code: grpc.status.UNAVAILABLE, message: "The service is unavailable" }
        : undefined);
    later(script.latencyMs, () => {
      if (failure) {
        callback({ code: failure.code, details: failure.message });
        return;
      }
      const results = found.map((f) =>
        toResult({ kind: "final", text: f.text, clip: f.clip, end: f.end }, script.finalEndTime)
      );
      callback(null, { results, totalBilledTime: duration(audio.length) });
    });
  }

  const definition = speechService();
  let server = new grpc.Server();
  const serve = (): grpc.Server => {
    const s = new grpc.Server();
    s.addService(definition, {
      streamingRecognize,
      recognize,
      longRunningRecognize: (_call: Unary, callback: grpc.sendUnaryData<unknown>) =>
        callback({ code: grpc.status.UNIMPLEMENTED, details: "Not implemented by the fake" }),
    });
    return s;
  };
  server = serve();
  const port = await bind(server, host, options.port ?? 0);

  function kill(): Promise<void> {
    // Abrupt: connections drop with no status, as when the process dies.
    for (const finish of [...active.values()]) finish("killed");
    server.forceShutdown();
    return Promise.resolve();
  }
  async function restart(): Promise<void> {
    server = serve();
    await bind(server, host, port);
  }

  return {
    port,
    address: `${host}:${port}`,
    script,
    stats,
    refuseStreams(count, code = grpc.status.UNAVAILABLE, message = "The service is unavailable") {
      for (let i = 0; i < count; i++) refusals.push({ code, message });
    },
    failRecognize(count, code = grpc.status.UNAVAILABLE, message = "The service is unavailable") {
      for (let i = 0; i < count; i++) recognizeFailures.push({ code, message });
    },
    failRecognizeFor(ms) {
      recognizeDownUntil = Date.now() + ms;
    },
    failActiveStreams(code = grpc.status.INTERNAL, message = "Internal error encountered.") {
      const all = [...active.keys()];
      for (const fail of all) fail(code, message);
      return all.length;
    },
    bytesReceived() {
      return stats.streams.reduce((sum, s) => sum + s.matcher.audio.length, 0);
    },
    finals() {
      return stats.streams.flatMap((s) => s.finals);
    },
    kill,
    restart,
    async downFor(ms) {
      await kill();
      await new Promise((resolve) => later(ms, () => resolve(undefined)));
      await restart();
    },
    close() {
      for (const id of timers) clearTimeout(id);
      timers.clear();
      for (const finish of [...active.values()]) finish("closed");
      server.forceShutdown();
      return Promise.resolve();
    },
  };
}

if (import.meta.main) {
  const { values } = readCommandLine(Deno.args, {
    clips: { type: "string", default: new URL("./fixtures/clips.json", import.meta.url).pathname },
    port: { type: "string", default: "50051" },
    host: { type: "string", default: "127.0.0.1" },
    "open-delay-ms": { type: "string", default: "0" },
    "latency-ms": { type: "string", default: "0" },
    headers: { type: "string", default: "immediate" },
    "no-final-end-time": { type: "boolean", default: false },
  });
  const server = await startSpeechServer({
    clips: loadClips(values.clips),
    port: Number(values.port),
    hostname: values.host,
    openDelayMs: Number(values["open-delay-ms"]),
    latencyMs: Number(values["latency-ms"]),
    headers: values.headers === "with-first-result" ? "with_first_result" : "immediate",
    finalEndTime: !values["no-final-end-time"],
  });
  console.log(`speech_server listening on ${server.address}`);
  Deno.addSignalListener("SIGINT", () => server.close().then(() => Deno.exit(0)));
}
