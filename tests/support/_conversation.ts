/**
 * Helpers for the end-to-end conversation tests (`tests/conversation_*_test.ts`): a caller line
 * that streams inbound audio continuously at 50 fps like a real phone (silence between utterances)
 * and records when each frame left, the audio the local TTS server speaks for a text, and reads of
 * the call record once the call has ended.
 */
import alawmulaw from "alawmulaw";
import { FRAME_BYTES, frameAt, frameCount, MULAW_SILENCE } from "../../src/audio/frames.ts";
import { frameDbfs } from "../../src/audio/mulaw.ts";
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
import { waitUntil } from "../../tools/twilio/caller_line.ts";
import { concatBytes } from "../../tools/bytes.ts";

export { CallerLine, waitUntil } from "../../tools/twilio/caller_line.ts";

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
