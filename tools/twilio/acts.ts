/**
 * `deno task simulate -- --keys DIGITS [--dial-status STATUS]`: one call that tries the agent's
 * acts (SPEC 6) without a phone. The caller says its lines (each answer may involve a tool call),
 * then types DIGITS on the keypad; when Kav closes the stream to transfer or hang up, the
 * simulator does what Twilio does: it requests the `<Connect action>`, and for a `<Dial>` pretends
 * the dial ended with STATUS (default no-answer) and requests the `<Dial action>`; when Kav
 * connects the caller back, it opens the new stream and waits for the agent's words. Every step
 * is printed; the call's record (`deno task calls`) shows the tool calls and the transfer.
 */
import { FRAME_MS } from "../../src/audio/frames.ts";
import { sharedScheduler } from "../../src/call/scheduler.ts";
import { parseTwiml, TwilioClient, type TwimlNext } from "./client.ts";
import type { CallerLine as CallerScript } from "./caller.ts";
import { CallerLine, waitUntil } from "./caller_line.ts";
import {
  connectUrl,
  type KavTarget,
  postTwilioForm,
  requestTwiml,
  signatureHeaders,
} from "./http.ts";

export interface ActsOptions {
  readonly target: KavTarget;
  readonly lines: readonly CallerScript[];
  readonly turns: number;
  readonly keys: string;
  readonly dialStatus: string;
  readonly answerTimeoutMs: number;
  readonly print: (line: string) => void;
}

const FROM = "+972501234567";
/** An answer is over when its marks came back and no audio came for this long (a filler, then a
 * slow tool's answer, stays one answer). */
const QUIET_FRAMES = 60;
const TO = "+97230000000";

/** The caller's line as audio (its frames are base64 payloads). */
function audioOf(line: CallerScript): Uint8Array {
  const out = new Uint8Array(line.frames.length * 160);
  line.frames.forEach((frame, i) => out.set(Uint8Array.fromBase64(frame), i * 160));
  return out;
}

/** Runs the call; resolves true when every step happened as Twilio would see it. */
export async function simulateActs(options: ActsOptions): Promise<boolean> {
  const { target, print } = options;
  const callSid = "CA" + crypto.randomUUID().replaceAll("-", "");
  const call = { callSid, accountSid: "AC" + "0".repeat(32), from: FROM, to: TO };
  const twiml = await requestTwiml(target, call);
  if (twiml.kind === "busy") {
    print("Kav answered busy");
    return false;
  }
  print(`call ${callSid}: Voice URL answered <Connect><Stream>`);
  let stream = await openStream(options, callSid, twiml.streamUrl, twiml.parameters);
  await stream.client.waitForEcho("greeting_end", { timeoutMs: options.answerTimeoutMs });
  print("greeting heard");
  for (let turn = 0; turn < options.turns; turn++) {
    const line = options.lines[turn % options.lines.length];
    await stream.line.say(audioOf(line));
    print(`caller said "${line.text || line.name}"`);
    if (!await awaitAnswer(stream.client, options)) return false;
  }
  if (options.keys !== "") {
    for (const digit of options.keys) stream.client.sendDtmf(digit);
    print(`caller typed ${options.keys} on the keypad`);
    if (!await awaitAnswer(stream.client, options)) return false;
  }
  for (let hop = 0; hop < 4; hop++) {
    if (stream.client.socket.readyState === WebSocket.OPEN) {
      await stream.line.hangUp();
      print("caller hung up");
      return true;
    }
    await stream.line.stop();
    print("Kav closed the stream after its last sentence was heard");
    const after = await follow(target, twiml.action ?? `${target.publicUrl}/webhook/stream_ended`, [
      ["AccountSid", call.accountSid],
      ["CallSid", callSid],
      ["CallStatus", "in-progress"],
      ["From", FROM],
      ["To", TO],
    ]);
    if (after.kind === "hangup" || after.kind === "none") {
      print(
        after.kind === "hangup"
          ? "<Connect action> answered <Hangup/>: the agent hung up"
          : "<Connect action> answered 204: the call ends",
      );
      return true;
    }
    if (after.kind !== "dial") return false;
    print(
      `<Connect action> answered <Dial> to ${after.target}; pretending the dial ended: ${options.dialStatus}`,
    );
    const dialled = await follow(target, after.action, [
      ["AccountSid", call.accountSid],
      ["CallSid", callSid],
      ["CallStatus", "in-progress"],
      ["DialCallSid", "CA" + "d".repeat(32)],
      ["DialCallStatus", options.dialStatus],
      ["From", FROM],
      ["To", TO],
    ]);
    if (dialled.kind !== "stream") {
      print(
        `<Dial action> answered ${dialled.kind === "hangup" ? "<Hangup/>: done" : dialled.kind}`,
      );
      return dialled.kind === "hangup";
    }
    print("<Dial action> connected the caller back to a new stream");
    stream = await openStream(options, callSid, dialled.url, dialled.parameters);
    if (!await awaitAnswer(stream.client, options)) return false;
    print("the agent spoke first, knowing the transfer failed");
  }
  return false;
}

async function openStream(
  options: ActsOptions,
  callSid: string,
  streamUrl: string,
  parameters: Readonly<Record<string, string>>,
): Promise<{ client: TwilioClient; line: CallerLine }> {
  const client = await TwilioClient.connect({
    url: connectUrl(options.target, streamUrl),
    headers: signatureHeaders(options.target, streamUrl),
    callSid,
    customParameters: parameters,
  });
  client.begin();
  const line = new CallerLine(client);
  line.start();
  return { client, line };
}

/** Waits for the agent's answer to end (all its marks echoed, then quiet) or Kav to close. */
async function awaitAnswer(client: TwilioClient, options: ActsOptions): Promise<boolean> {
  const marks = client.marks.length;
  const scheduler = sharedScheduler();
  try {
    await waitUntil(() => {
      if (client.socket.readyState !== WebSocket.OPEN) return true;
      const answered = client.marks.length > marks &&
        client.echoes.length === client.marks.length;
      const last = client.mediaArrivals.at(-1) ?? 0;
      return answered && scheduler.now() - last > QUIET_FRAMES * FRAME_MS;
    }, { timeoutMs: options.answerTimeoutMs, what: "the agent's answer" });
  } catch {
    options.print(`no answer within ${options.answerTimeoutMs} ms`);
    return false;
  }
  const names = client.marks.slice(marks).filter((name) => name !== "greeting_end");
  if (names.length > 0) options.print(`agent answered (${names.join(", ")})`);
  return true;
}

async function follow(
  target: KavTarget,
  url: string,
  params: [string, string][],
): Promise<TwimlNext> {
  const { status, body } = await postTwilioForm(target, url, params);
  return parseTwiml(status, body);
}
