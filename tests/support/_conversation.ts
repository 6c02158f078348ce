/**
 * Helpers for the end-to-end conversation tests (`tests/conversation_*_test.ts`): a caller line
 * that streams inbound audio continuously at 50 fps like a real phone (silence between utterances)
 * and records when each frame left, the audio the local TTS server speaks for a text, and reads of
 * the call record once the call has ended.
 */
import alawmulaw from "alawmulaw";
import {
  FRAME_BYTES,
  FRAME_MS,
  frameAt,
  frameCount,
  MULAW_SILENCE,
} from "../../src/audio/frames.ts";
import { frameDbfs } from "../../src/audio/mulaw.ts";
import { sharedScheduler, sleepUntil } from "../../src/call/scheduler.ts";
import { type CallDetail, openCallReader } from "../../src/store/read.ts";
import {
  type Clip,
  fixtureClips,
  type Sandbox,
  type SandboxOptions,
  startSandbox,
} from "../../tools/sandbox/sandbox.ts";
import { synthWaveform } from "../../tools/sandbox/tts_server.ts";
import type { TwilioClient } from "../../tools/twilio/client.ts";
import { concatBytes } from "../../tools/bytes.ts";

const SILENT_FRAME = new Uint8Array(FRAME_BYTES).fill(MULAW_SILENCE);

/** The fixture clip named `name` ("appointment", "hours", "goodbye", "tomorrow"). */
export function clip(name: string): Clip {
  const found = fixtureClips().find((c) => c.name === name);
  if (found === undefined) throw new RangeError(`Cannot find fixture clip "${name}"`);
  return found;
}

/** The μ-law audio the local TTS server returns for `text`, padded to whole 20 ms frames. */
export function ttsAudio(text: string, msPerChar = 60): Uint8Array {
  const mulaw = alawmulaw.mulaw.encode(synthWaveform(text, msPerChar, 8000));
  const out = new Uint8Array(frameCount(mulaw.length) * FRAME_BYTES).fill(MULAW_SILENCE);
  out.set(mulaw);
  return out;
}

/** Index of `needle` in `hay` (byte-exact), or -1. */
export function indexOfBytes(hay: Uint8Array, needle: Uint8Array, from = 0): number {
  if (needle.length === 0) return from;
  outer: for (let i = from; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** Index of the first frame of `mulaw` louder than `dbfs` (the VAD's absolute floor), or -1. */
export function firstVoicedFrame(mulaw: Uint8Array, dbfs = -45): number {
  const n = frameCount(mulaw.length);
  for (let i = 0; i < n; i++) if (frameDbfs(frameAt(mulaw, i)) > dbfs) return i;
  return -1;
}

/** Polls `predicate` every 20 ms; rejects after `timeoutMs` naming `what`. */
export async function waitUntil(
  predicate: () => boolean,
  options: { timeoutMs: number; what: string },
): Promise<void> {
  const deadline = performance.now() + options.timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) {
      throw new Error(`Timed out after ${options.timeoutMs} ms waiting for ${options.what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

interface QueuedFrame {
  readonly frame: Uint8Array;
  readonly onSent?: (at: number) => void;
}

/**
 * The caller's side of the line: once started, one `media` frame every 20 ms on an absolute
 * schedule, silence unless an utterance is queued by `say()`, like the inbound track of a real
 * call. Every frame sent is kept, so tests can compare it with what the speech server received.
 */
export class CallerLine {
  readonly #client: TwilioClient;
  readonly #queue: QueuedFrame[] = [];
  readonly #chunks: Uint8Array[] = [];
  #running: Promise<void> | null = null;
  #stopping = false;
  #align = 1;

  constructor(client: TwilioClient) {
    this.#client = client;
  }

  /** Frames sent so far. */
  get framesSent(): number {
    return this.#chunks.length;
  }

  /** Starts streaming (silence until `say`). */
  start(): void {
    this.#running ??= this.#run();
  }

  /**
   * Queues `mulaw` (whole frames, last one padded) after anything queued; resolves once its last
   * frame left, with the send time of each frame (ms, shared scheduler clock).
   */
  say(mulaw: Uint8Array): Promise<number[]> {
    const n = frameCount(mulaw.length);
    const sentAt: number[] = [];
    const done = Promise.withResolvers<number[]>();
    for (let i = 0; i < n; i++) {
      const last = i === n - 1;
      this.#queue.push({
        frame: frameAt(mulaw, i),
        onSent: (at) => {
          sentAt.push(at);
          if (last) done.resolve(sentAt);
        },
      });
    }
    if (n === 0) done.resolve(sentAt);
    return done.promise;
  }

  /** Queues `ms` of silence and waits until it has been sent (the line keeps running after). */
  pause(ms: number): Promise<number[]> {
    return this.say(
      new Uint8Array(Math.max(1, Math.round(ms / FRAME_MS)) * FRAME_BYTES).fill(MULAW_SILENCE),
    );
  }

  /** Everything sent, in order. */
  sent(): Uint8Array {
    const out = new Uint8Array(this.#chunks.length * FRAME_BYTES);
    this.#chunks.forEach((chunk, i) => out.set(chunk, i * FRAME_BYTES));
    return out;
  }

  /**
   * Stops streaming (after at most 20 ms) and waits for the loop to end. `alignFrames`: first pad
   * with silence until the frame count is a multiple of it (e.g. 2, so Kav's 40 ms STT batches
   * are all complete and sent while the call is still live).
   */
  async stop(options: { alignFrames?: number } = {}): Promise<void> {
    this.#align = Math.max(1, options.alignFrames ?? 1);
    this.#stopping = true;
    await this.#running;
  }

  /** Hangs up like Twilio does: the line stops, then `stop`, then the socket closes. */
  async hangUp(): Promise<void> {
    await this.stop();
    this.#client.sendStop();
    await this.#client.close();
  }

  async #run(): Promise<void> {
    const scheduler = sharedScheduler();
    const socket = this.#client.socket;
    let next = scheduler.now();
    const done = () => this.#stopping && this.#chunks.length % this.#align === 0;
    while (!done() && socket.readyState === WebSocket.OPEN) {
      const now = scheduler.now();
      if (now - next > 200) next = now;
      if (next > now) await sleepUntil(scheduler, next, {});
      if (done() || socket.readyState !== WebSocket.OPEN) return;
      const item = this.#queue.shift();
      const frame = item?.frame ?? SILENT_FRAME;
      this.#client.sendMedia(frame);
      this.#chunks.push(frame);
      item?.onSent?.(scheduler.now());
      next += FRAME_MS;
    }
  }
}

/**
 * Polls the store until `callSid`'s record shows the call ended (its turns are written before
 * the end), then returns it.
 */
export async function readEndedCall(
  storagePath: string,
  callSid: string,
  options: { timeoutMs: number } = { timeoutMs: 10_000 },
): Promise<CallDetail> {
  let detail: CallDetail | null = null;
  await waitUntil(() => {
    try {
      const reader = openCallReader(storagePath);
      try {
        detail = reader.getCall(callSid);
      } finally {
        reader.close();
      }
    } catch {
      detail = null; // not created yet
    }
    return detail !== null && detail.call.endedAt !== null;
  }, { timeoutMs: options.timeoutMs, what: `the record of call "${callSid}" to end` });
  return detail as unknown as CallDetail;
}

/** A sandbox for one test body; always stopped (Kav drained, servers closed, files removed). */
export async function withSandbox(
  options: SandboxOptions,
  body: (sandbox: Sandbox) => Promise<void>,
): Promise<void> {
  const sandbox = await startSandbox(options);
  try {
    await body(sandbox);
  } catch (error) {
    // The log tells what Kav did; print it only when the test fails.
    console.error(sandbox.lines.filter((l) => !/\[(RX|TX)\]/.test(l)).join("\n"));
    throw error;
  } finally {
    await sandbox.stop();
  }
}

/** Media frames between marks: one run per spoken item (greeting, sentence, apology). */
export function mediaRuns(client: TwilioClient): number[][] {
  const runs: number[][] = [];
  let run: number[] = [];
  for (const message of client.received) {
    if (message.event === "media") {
      run.push(message.at);
      continue;
    }
    if (run.length > 0) runs.push(run);
    run = [];
  }
  if (run.length > 0) runs.push(run);
  return runs;
}

/** The audio of the media messages received from index `from` of `client.received` on. */
export function audioSince(client: TwilioClient, from: number): Uint8Array {
  const chunks: Uint8Array[] = [];
  const received = client.received;
  for (let i = from; i < received.length; i++) {
    if (received[i].event !== "media") continue;
    const media = received[i].data["media"] as { payload: string };
    chunks.push(Uint8Array.fromBase64(media.payload));
  }
  return concatBytes(...chunks);
}
