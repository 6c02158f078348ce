/**
 * Issue 7, item 4: containment. Each provider client (wrapping the real Google and OpenAI clients
 * that `runKav` builds) is made to throw synchronously, reject, and emit an error event before and
 * after its connection opens. An STT failure ends at most its own call, with a record; LLM and TTS
 * failures end in the cached apology with a recorded provider error and the call goes on; an error
 * that escapes every handler is logged, counted, and the process (and the other calls) go on.
 */
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { currentCallScope } from "../src/call/_session_escape.ts";
import { createProviders, type KavProviders } from "../src/kav.ts";
import type { LlmProvider } from "../src/llm/types.ts";
import { renderMetrics } from "../src/observe/metrics.ts";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import { openCallReader } from "../src/store/read.ts";
import type { CallDetail } from "../src/store/read.ts";
import type { SpeechSession, SttEvent, SttProvider } from "../src/stt/types.ts";
import type { TtsProvider } from "../src/tts/types.ts";
import { fixtureClip, sayAndWait } from "./support/kav_process.ts";
import { type Sandbox, startSandbox } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT_MS = 30_000;

function unhandled(kind: "rejection" | "exception"): number {
  return sampleValue(parsePrometheusText(renderMetrics()), "kav_unhandled_errors_total", {
    kind,
  }) ?? 0;
}

/** The stored call once it has ended (the store writes as it goes; polled from disk). */
async function storedCall(sandbox: Sandbox, sid: string): Promise<CallDetail> {
  const deadline = Date.now() + TIMEOUT_MS;
  while (true) {
    const reader = openCallReader(sandbox.storagePath);
    try {
      const detail = reader.getCall(sid);
      if (detail?.call.outcome) return detail;
    } finally {
      reader.close();
    }
    if (Date.now() > deadline) throw new Error(`Timed out waiting for the record of ${sid}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** An error event on an emitter nobody listens to: Node semantics make `emit` throw it. */
function emitError(message: string): void {
  new EventEmitter().emit("error", new Error(message));
}

/** A result stream that fails (once `after` settles) before yielding anything. */
function failingEvents(after: Promise<unknown>, message: string): AsyncIterable<SttEvent> {
  return {
    [Symbol.asyncIterator]: () => ({
      next: async () => {
        await after;
        throw new Error(message);
      },
    }),
  };
}

type SttFault =
  | "none"
  | "open_throws"
  | "emit_before_open"
  | "ready_rejects"
  | "results_throw_before_ready"
  | "results_throw_after_ready"
  | "write_throws_after_ready"
  | "stray_rejection_after_ready"
  | "timer_exception_after_ready";

/** Wraps the real STT; each `open()` takes the next fault from `plan` (calls connect one by one). */
function faultyStt(inner: SttProvider, plan: SttFault[]): SttProvider & { opened: SttFault[] } {
  const opened: SttFault[] = [];
  const wrap = (session: SpeechSession, over: Partial<SpeechSession>): SpeechSession => ({
    ready: over.ready ?? session.ready,
    write: over.write ?? ((mulaw) => session.write(mulaw)),
    results: over.results ?? (() => session.results()),
    close: () => session.close(),
  });
  return {
    opened,
    close: () => inner.close(),
    open(options) {
      const fault = plan.shift() ?? "none";
      opened.push(fault);
      switch (fault) {
        case "open_throws":
          throw new Error("stt open threw");
        case "emit_before_open":
          emitError("stt emitted error before open");
          break;
        default:
          break;
      }
      const session = inner.open(options);
      switch (fault) {
        case "none":
        case "emit_before_open":
          return session;
        case "ready_rejects": {
          const ready = Promise.reject(new Error("stt ready rejected"));
          return wrap(session, { ready });
        }
        case "results_throw_before_ready":
          return wrap(session, {
            results: () => failingEvents(Promise.resolve(), "stt results failed before open"),
          });
        case "results_throw_after_ready":
          return wrap(session, {
            results: () => failingEvents(session.ready, "stt results failed after open"),
          });
        case "write_throws_after_ready":
          return wrap(session, {
            write: () => {
              throw new Error("stt write failed after open");
            },
          });
        case "stray_rejection_after_ready":
          // A library callback throwing inside a promise chain nobody awaits.
          session.ready.then(() => emitError("stt emitted error after open (promise)"));
          return session;
        case "timer_exception_after_ready":
          // A library callback throwing from a timer: an uncaught exception, no call context.
          session.ready.then(() => {
            setTimeout(() => emitError("stt emitted error after open (timer)"), 0);
          });
          return session;
        default: {
          const never: never = fault;
          throw new TypeError(`Unknown fault ${never}`);
        }
      }
    },
  };
}

Deno.test("an STT client that throws, rejects or emits errors before or after opening ends at most its own call, with a record", async () => {
  const faults: SttFault[] = [
    "open_throws",
    "emit_before_open",
    "ready_rejects",
    "results_throw_before_ready",
    "results_throw_after_ready",
    "write_throws_after_ready",
    "stray_rejection_after_ready",
    "timer_exception_after_ready",
    "none",
  ];
  const expectedReason: Partial<Record<SttFault, RegExp>> = {
    open_throws: /stt open threw/,
    emit_before_open: /stt emitted error before open/,
    ready_rejects: /stt ready rejected/,
    results_throw_before_ready: /stt results failed before open/,
    results_throw_after_ready: /stt results failed after open/,
    write_throws_after_ready: /stt write failed after open/,
    stray_rejection_after_ready: /Unhandled rejection: stt emitted error after open \(promise\)/,
  };
  const holder: { stt: ReturnType<typeof faultyStt> | null } = { stt: null };
  const rejectionsBefore = unhandled("rejection");
  const exceptionsBefore = unhandled("exception");
  const sandbox = await startSandbox({
    providers: (config, log): KavProviders => {
      const real = createProviders(config, log);
      const stt = faultyStt(real.stt, [...faults]);
      holder.stt = stt;
      return { ...real, stt };
    },
  });
  const clients: TwilioClient[] = [];
  try {
    for (let i = 0; i < faults.length; i++) {
      const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
      clients.push(client);
      // One open at a time, so each connection gets its planned fault.
      const deadline = Date.now() + TIMEOUT_MS;
      while ((holder.stt?.opened.length ?? 0) <= i && client.socket.readyState === WebSocket.OPEN) {
        if (Date.now() > deadline) throw new Error(`Timed out waiting for open ${i}`);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      client.begin();
    }
    const byFault = new Map(faults.map((fault, i) => [fault, clients[i]]));

    // The calls that keep going still hold a full conversation: caller clip → final → answer.
    const survivors = (["timer_exception_after_ready", "none"] as const).map((fault) => {
      const client = byFault.get(fault)!;
      return sayAndWait(
        client,
        fixtureClip("appointment").audio,
        client.waitFor(() => client.echoes.some((e) => e.name.startsWith("a1_")), {
          timeoutMs: TIMEOUT_MS,
          what: `the answer on the ${fault} call`,
        }),
      );
    });
    // The failing calls stream media too (Twilio always does): it is what reaches `write`.
    const failing = Object.keys(expectedReason).map((fault) => {
      const client = byFault.get(fault as SttFault)!;
      return sayAndWait(client, new Uint8Array(1600).fill(0xff), client.closed);
    });
    for (const [fault, reason] of Object.entries(expectedReason)) {
      const client = byFault.get(fault as SttFault)!;
      const detail = await storedCall(sandbox, client.callSid);
      assert.equal(detail.call.outcome, "error", fault);
      assert.match(detail.call.reason ?? "", reason, fault);
      assert.ok(
        sandbox.lines.some((l) =>
          l.includes(`call=${client.callSid}`) && l.includes("call failed")
        ),
        `${fault}: logged with its call sid`,
      );
      await client.closed;
    }
    await Promise.all(failing);
    await Promise.all(survivors);
    for (const fault of ["timer_exception_after_ready", "none"] as const) {
      const client = byFault.get(fault)!;
      client.sendStop();
      const detail = await storedCall(sandbox, client.callSid);
      assert.equal(detail.call.outcome, "completed", fault);
      const callerAt = detail.turns.findIndex((t) => t.speaker === "caller");
      assert.equal(detail.turns[callerAt]?.text, fixtureClip("appointment").text, fault);
      const answer = detail.turns.slice(callerAt + 1).find((t) => t.speaker === "agent");
      assert.ok(answer !== undefined && answer.text !== "", `${fault}: answered`);
    }

    // The escapes were caught at the process level: counted, logged, nothing else went down.
    assert.equal(unhandled("rejection") - rejectionsBefore, 1);
    assert.equal(unhandled("exception") - exceptionsBefore, 1);
    // Attributed to its call (by connection id: it came before `start`, whose record then got it).
    assert.ok(
      sandbox.lines.some((l) =>
        /\[CALL\] unhandled error call=(conn|CA)\S+ kind=rejection/.test(l)
      ),
    );
    assert.ok(sandbox.lines.some((l) => /\[CALL\] unhandled error call=- kind=exception/.test(l)));
    const health = await fetch(`${sandbox.baseUrl}/healthz`);
    assert.equal(health.status, 200);
    await health.body?.cancel();
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await sandbox.stop();
  }
});

type ReplyFault =
  | "none"
  | "llm_throws"
  | "llm_rejects_before_first_token"
  | "llm_throws_after_tokens"
  | "llm_stray_rejection"
  | "tts_throws"
  | "tts_rejects";

/** Wraps the real LLM and TTS; the fault is chosen by the calling call's sid. */
function faultyReplies(
  real: KavProviders,
  faultOf: (sid: string | null) => ReplyFault,
): { llm: LlmProvider; tts: TtsProvider } {
  const fault = () => faultOf(currentCallScope()?.sid() ?? null);
  return {
    llm: {
      stream(messages, options) {
        switch (fault()) {
          case "llm_throws":
            throw new Error("llm stream threw");
          case "llm_rejects_before_first_token":
            return {
              [Symbol.asyncIterator]: () => ({
                next: () => Promise.reject(new Error("llm failed before its first token")),
              }),
            };
          case "llm_throws_after_tokens":
            return (async function* () {
              let n = 0;
              for await (const token of real.llm.stream(messages, options)) {
                yield token;
                if (++n === 2) throw new Error("llm failed after 2 tokens");
              }
            })();
          case "llm_stray_rejection":
            // Rejected by a library and dropped: escapes to the process handler, inside this call.
            Promise.resolve().then(() => emitError("llm emitted error (promise)"));
            return real.llm.stream(messages, options);
          default:
            return real.llm.stream(messages, options);
        }
      },
    },
    tts: {
      synthesize(text, options) {
        switch (fault()) {
          case "tts_throws":
            throw new Error("tts synthesize threw");
          case "tts_rejects":
            return Promise.reject(new Error("tts synthesize rejected"));
          default:
            return real.tts.synthesize(text, options);
        }
      },
      close: () => real.tts.close(),
    },
  };
}

Deno.test("LLM and TTS clients that throw or reject end in the cached apology with a recorded provider error; the call goes on", async () => {
  const faults: ReplyFault[] = [
    "llm_throws",
    "llm_rejects_before_first_token",
    "llm_throws_after_tokens",
    "tts_throws",
    "tts_rejects",
    "llm_stray_rejection",
    "none",
  ];
  const sids = new Map<string, ReplyFault>();
  const rejectionsBefore = unhandled("rejection");
  const sandbox = await startSandbox({
    providers: (config, log): KavProviders => {
      const real = createProviders(config, log);
      return { ...real, ...faultyReplies(real, (sid) => sids.get(sid ?? "") ?? "none") };
    },
  });
  const apology = sandbox.config.call.apology;
  const clients = await Promise.all(
    faults.map(() => TwilioClient.connect({ url: sandbox.mediaUrl })),
  );
  try {
    faults.forEach((fault, i) => sids.set(clients[i].callSid, fault));
    const runs = clients.map(async (client, i) => {
      client.begin();
      await client.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
      const answered: Promise<unknown> = faults[i] === "llm_stray_rejection"
        ? client.closed
        : client.waitFor(() => client.echoes.some((e) => e.name.startsWith("a1_")), {
          timeoutMs: TIMEOUT_MS,
          what: `the answer on the ${faults[i]} call`,
        });
      await sayAndWait(client, fixtureClip("hours").audio, answered);
      client.sendStop();
      return storedCall(sandbox, client.callSid);
    });
    const details = await Promise.all(runs);
    details.forEach((detail, i) => {
      const fault = faults[i];
      // The answer: the agent turn after the caller's (the greeting is an agent turn too).
      const callerAt = detail.turns.findIndex((t) => t.speaker === "caller");
      const agent = detail.turns.slice(callerAt + 1).find((t) => t.speaker === "agent");
      const errors = detail.events.filter((e) => e.kind === "provider_error");
      if (fault === "llm_stray_rejection") {
        // An escaped error inside a call ends that call, with a record.
        assert.equal(detail.call.outcome, "error", fault);
        assert.match(detail.call.reason ?? "", /Unhandled rejection: llm emitted error/);
        return;
      }
      assert.equal(detail.call.outcome, "completed", `${fault}: ${detail.call.reason}`);
      if (fault === "none") {
        assert.equal(errors.length, 0);
        assert.ok(agent !== undefined && agent.text !== apology && agent.text !== "");
        return;
      }
      const provider = fault.startsWith("llm") ? "llm" : "tts";
      assert.ok(errors.length >= 1, `${fault}: provider error recorded`);
      assert.ok(
        errors.every((e) => e.detail.startsWith(provider)),
        `${fault}: ${errors[0].detail}`,
      );
      assert.ok(agent?.text.endsWith(apology), `${fault}: the apology was heard (${agent?.text})`);
    });
    assert.equal(unhandled("rejection") - rejectionsBefore, 1);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await sandbox.stop();
  }
});
