/**
 * A real `Deno.serve` on 127.0.0.1 that upgrades `/ws/twilio-media` into a `CallManager`, with a
 * local speech provider and an in-memory store: the call core end to end, before the HTTP routes.
 * Also `runConcurrentCalls()`: N Twilio-like clients streaming at once.
 */
import type { AudioConfig } from "../../src/config/types.ts";
import { Greeting } from "../../src/agent/greeting.ts";
import type { AgentContext, AgentFactory, CallAgent } from "../../src/call/agent.ts";
import type { SttEvent } from "../../src/stt/types.ts";
import { type CallCoreConfig, CallManager } from "../../src/call/manager.ts";
import type { Scheduler } from "../../src/call/scheduler.ts";
import { createLogger, type Logger } from "../../src/observe/log.ts";
import { type LocalSpeechOptions, LocalSttProvider } from "./local_speech.ts";
import { MemoryStore } from "./memory_store.ts";
import { TwilioClient, type TwilioClientOptions } from "../../tools/twilio/client.ts";

/** The call-core config used by tests (SPEC defaults, short limits). */
export function testCallConfig(overrides: {
  server?: Partial<CallCoreConfig["server"]>;
  audio?: Partial<AudioConfig>;
  transcripts?: boolean;
} = {}): CallCoreConfig {
  return {
    server: {
      max_calls: 50,
      max_ws_message_bytes: 64 * 1024,
      idle_media_timeout_s: 30,
      max_call_duration_s: 3600,
      ...overrides.server,
    },
    audio: {
      rx_queue_frames: 200,
      tx_queue_frames: 144,
      tx_lead_ms: 60,
      tx_max_buffered_bytes: 256 * 1024,
      ...overrides.audio,
    },
    call: { language: "he-IL" },
    log: { transcripts: overrides.transcripts ?? true },
  };
}

export interface CallServerOptions {
  readonly config?: CallCoreConfig;
  readonly speech?: LocalSpeechOptions;
  /** Greeting audio (default 1 s of a recognizable ramp pattern), queued before any agent's. */
  readonly greeting?: Uint8Array;
  /** Created after the greeting is queued (as the conversation does it). */
  readonly agentFactory?: AgentFactory;
  readonly scheduler?: Scheduler;
  /** Print log lines as well as collecting them. */
  readonly echoLogs?: boolean;
}

export interface CallServer {
  /** `ws://127.0.0.1:<port>/ws/twilio-media` */
  readonly url: string;
  readonly manager: CallManager;
  readonly stt: LocalSttProvider;
  readonly store: MemoryStore;
  readonly logger: Logger;
  /** Every log line so far. */
  readonly lines: string[];
  readonly greeting: Uint8Array;
  /** Log lines containing `call=<sid>`. */
  linesFor(sid: string): string[];
  /** Opens a Twilio-like client against this server. */
  connect(options?: Partial<TwilioClientOptions>): Promise<TwilioClient>;
  /** Ends every call, closes the clients from `connect()`, stops the server and waits for it. */
  close(): Promise<void>;
}

/** Audio whose bytes encode their index, so order and completeness can be checked. */
export function patternAudio(frames: number, seed = 0): Uint8Array {
  const out = new Uint8Array(frames * 160);
  for (let i = 0; i < out.length; i++) out[i] = (i * 7 + seed * 31 + (i >> 8)) & 0x7f;
  return out;
}

export function startCallServer(options: CallServerOptions = {}): Promise<CallServer> {
  const lines: string[] = [];
  const logger = createLogger((line) => {
    lines.push(line);
    if (options.echoLogs) console.log(line);
  });
  const stt = new LocalSttProvider(options.speech);
  const store = new MemoryStore();
  const greeting = options.greeting ?? patternAudio(50, 99);
  const manager = new CallManager({
    config: options.config ?? testCallConfig(),
    stt,
    store,
    logger,
    agentFactory: greetingFirst(greeting, options.agentFactory),
    scheduler: options.scheduler,
  });
  const controller = new AbortController();
  const clients: TwilioClient[] = [];
  return new Promise((resolve) => {
    const server = Deno.serve({
      port: 0,
      hostname: "127.0.0.1",
      signal: controller.signal,
      onListen({ port }) {
        const url = `ws://127.0.0.1:${port}/ws/twilio-media`;
        resolve({
          url,
          manager,
          stt,
          store,
          logger,
          lines,
          greeting,
          linesFor: (sid) =>
            lines.filter((l) => l.includes(` call=${sid} `) || l.endsWith(` call=${sid}`)),
          connect: async (extra = {}) => {
            const client = await TwilioClient.connect({ url, ...extra });
            clients.push(client);
            return client;
          },
          close: async () => {
            await manager.drain({ timeoutMs: 0 });
            await Promise.all(clients.map((c) => c.close()));
            controller.abort();
            await server.finished;
          },
        });
      },
    }, (request, info) => {
      const url = new URL(request.url);
      if (url.pathname !== "/ws/twilio-media") return new Response("not found", { status: 404 });
      if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") {
        return new Response("upgrade required", { status: 426 });
      }
      if (!manager.canAccept()) return new Response("busy", { status: 503 });
      const offered = (request.headers.get("sec-websocket-protocol") ?? "").split(",")
        .map((p) => p.trim());
      // Read before the upgrade: afterwards the request counts as closed.
      const remoteAddr = info.remoteAddr.hostname;
      const { socket, response } = Deno.upgradeWebSocket(
        request,
        offered.includes("audio.twilio.com") ? { protocol: "audio.twilio.com" } : {},
      );
      manager.attach(socket, { remoteAddr });
      return response;
    });
  });
}

/** An agent that does nothing (calls without an agent of their own). */
const SILENT_AGENT: CallAgent = {
  onInboundAudio: () => {},
  onSpeech: () => {},
  onMark: () => {},
  onDtmf: () => {},
  close: () => Promise.resolve(),
};

/**
 * Every call starts with the real `Greeting` (the mark `greeting_end` after `audio`), then `inner`
 * takes over; without text nothing is recorded, so call-core tests see only what they send.
 */
function greetingFirst(audio: Uint8Array, inner: AgentFactory | undefined): AgentFactory {
  return (ctx) => {
    Greeting.start(ctx, { text: "", audio, nextTurnIndex: () => 0 });
    return inner?.(ctx) ?? SILENT_AGENT;
  };
}

/**
 * Opens `n` calls at once; each sends `connected` + `start`, streams `audio` at 50 fps, then
 * `stop` (unless `stop: false`). Resolves with the clients once all have streamed (still open;
 * the caller closes them).
 */
export async function runConcurrentCalls(
  server: CallServer,
  n: number,
  options: { audio: Uint8Array; stop?: boolean; signal?: AbortSignal },
): Promise<TwilioClient[]> {
  const clients = await Promise.all(
    Array.from(
      { length: n },
      (_, i) => server.connect({ customParameters: { From: `+97250000${i}`, To: "+97230000000" } }),
    ),
  );
  await Promise.all(clients.map(async (client) => {
    client.begin();
    await client.streamAudio(options.audio, { signal: options.signal });
    if (options.stop !== false) client.sendStop();
  }));
  return clients;
}

/** What a `recordingAgents()` agent saw. */
export interface RecordedAgent {
  readonly ctx: AgentContext;
  inbound: number;
  readonly speech: SttEvent[];
  readonly marks: { name: string; played: boolean }[];
  readonly dtmf: string[];
  closed: boolean;
  /** The result of the initial `play` (when `speak` was given). */
  played: Promise<boolean> | null;
}

/**
 * An agent factory that records every callback; with `speak`, each agent plays that audio at once
 * through `Outbound.play` (a "speaker": e.g. 10 s in one call) followed by `mark`.
 */
export function recordingAgents(options: { speak?: Uint8Array; markName?: string } = {}): {
  factory: AgentFactory;
  agents: RecordedAgent[];
} {
  const agents: RecordedAgent[] = [];
  const factory: AgentFactory = (ctx) => {
    const rec: RecordedAgent = {
      ctx,
      inbound: 0,
      speech: [],
      marks: [],
      dtmf: [],
      closed: false,
      played: null,
    };
    agents.push(rec);
    if (options.speak !== undefined) {
      rec.played = ctx.out.play(options.speak, { signal: ctx.signal }).catch(() => false);
      ctx.out.mark(options.markName ?? "speech_end", { signal: ctx.signal }).catch(() => false);
    }
    const agent: CallAgent = {
      onInboundAudio: () => {
        rec.inbound++;
      },
      onSpeech: (event) => {
        rec.speech.push(event);
      },
      onMark: (name, echo) => {
        rec.marks.push({ name, played: echo.played });
      },
      onDtmf: (digit) => {
        rec.dtmf.push(digit);
      },
      close: () => {
        rec.closed = true;
        return Promise.resolve();
      },
    };
    return agent;
  };
  return { factory, agents };
}

/** Polls `predicate` every 5 ms (for server-side state); rejects after `timeoutMs`. */
export async function waitUntil(
  predicate: () => boolean,
  options: { timeoutMs: number; what?: string },
): Promise<void> {
  const deadline = performance.now() + options.timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) {
      throw new Error(
        `Timed out after ${options.timeoutMs} ms waiting for ${options.what ?? "condition"}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
