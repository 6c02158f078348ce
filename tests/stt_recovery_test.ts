/**
 * Recovery from per-utterance `Recognize` back to streaming, with the real `@google-cloud/speech`
 * client against the local gRPC Speech server. The server recognizes a clip only when its exact
 * bytes arrive contiguously (on one stream, or in one Recognize call), so "each clip exactly once,
 * on the path expected" proves that the switch neither lost nor repeated any audio.
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import type { SttEvent } from "../src/stt/types.ts";
import type { SpeechServer, StreamRecord } from "../tools/sandbox/speech_server.ts";
import {
  CallerLine,
  clip,
  CLIPS,
  finals,
  type Harness,
  openSession,
  sleep,
  sttConfig,
  waitFor,
  withServer,
} from "./support/stt_harness.ts";

const APPOINTMENT = clip("appointment");
const HOURS = clip("hours");
const GOODBYE = clip("goodbye");
const TOMORROW = clip("tomorrow");
const TEST = { sanitizeOps: true, sanitizeResources: true };
const TIMEOUT_MS = 20_000;

function recognized(...servers: SpeechServer[]): string[] {
  return servers.flatMap((s) => s.stats.recognizeCalls.flatMap((c) => c.texts));
}

function restarts(events: readonly SttEvent[]): string[] {
  return events.flatMap((e) => e.type === "restart" ? [e.reason] : []);
}

function inRecognizeMode(h: Harness): boolean {
  return h.lines.some((l) => l.includes("using per-utterance recognize"));
}

function periods(h: Harness): number {
  return h.lines.filter((l) => l.includes("using per-utterance recognize")).length;
}

function resumed(h: Harness): boolean {
  return h.lines.some((l) => /\[STT\] call=CAtest streaming resumed/.test(l));
}

/**
 * Says `audio`, then queues 700 ms of silence (longer than the segmenter's 600 ms hangover, so a
 * Recognize utterance ends) and waits for the clip's final (one more than before).
 */
async function sayAndHear(h: Harness, line: CallerLine, audio: Uint8Array): Promise<void> {
  const before = finals(h.events).length;
  await line.say(audio);
  const pause = line.pause(700);
  await waitFor("the final", () => finals(h.events).length > before, TIMEOUT_MS);
  await pause;
}

/** The stream that carried `text`'s final; it must also carry the end of everything written. */
function streamWith(server: SpeechServer, text: string): StreamRecord {
  const stream = server.stats.streams.find((s) => s.finals.includes(text));
  assert.ok(stream, `a stream recognized "${text}"`);
  return stream;
}

function assertEndsWith(all: Uint8Array, tail: Uint8Array, what: string): void {
  assert.ok(tail.length > 0 && tail.length <= all.length, what);
  assert.deepEqual(all.subarray(all.length - tail.length), tail, what);
}

Deno.test(
  "a session refused streaming on both endpoints returns to streaming when streams are accepted",
  TEST,
  async () => {
    await withServer({ clips: CLIPS }, async (primary) => {
      await withServer({ clips: CLIPS }, async (fallback) => {
        // Refused for about a second (3 opens on each endpoint, 200 ms apart), then accepted; the
        // first retry comes resumeFirstMs (2 s) after recognize mode began: ~3 s without streaming.
        primary.refuseStreams(3);
        fallback.refuseStreams(3);
        const h = openSession(sttConfig(primary.address, { fallback_endpoint: fallback.address }));
        const line = new CallerLine(h.session);
        try {
          await h.session.ready;
          line.start();
          await waitFor("recognize mode", () => inRecognizeMode(h), TIMEOUT_MS);
          await sayAndHear(h, line, TOMORROW.audio);
          await waitFor("streaming resumed", () => resumed(h), TIMEOUT_MS);
          await sayAndHear(h, line, HOURS.audio);
        } finally {
          await line.stop();
          await h.finish();
        }

        assert.deepEqual(finals(h.events), [TOMORROW.text, HOURS.text]);
        assert.deepEqual(recognized(primary, fallback), [TOMORROW.text], "first via Recognize");
        assert.deepEqual(primary.finals(), [HOURS.text], "second via streaming, once");
        assert.deepEqual(fallback.finals(), []);
        assert.deepEqual(primary.stats.streams.map((s) => s.status).slice(0, 3), [
          "refused",
          "refused",
          "refused",
        ]);
        assert.equal(fallback.stats.streams.length, 3, "the retry found the primary working");
        const stream = streamWith(primary, HOURS.text);
        assert.equal(stream.index, 3, "the first stream after the refusals");
        assert.equal(stream.status, "client_end");
        // The resumed stream heard a contiguous tail of the call: nothing after the switch lost.
        assertEndsWith(line.written, stream.matcher.audio, "the stream got the end of the call");
        assert.deepEqual(restarts(h.events), ["streaming resumed"]);
        const switchedAt = h.events.findIndex((e) => e.type === "restart");
        const firstFinalAt = h.events.findIndex((e) => e.type === "final");
        assert.ok(firstFinalAt < switchedAt, "the switch waited for the utterance in Recognize");
        const afterResume = h.events.slice(switchedAt);
        assert.ok(afterResume.some((e) => e.type === "partial"), "interim results are back");
      });
    });
  },
);

Deno.test(
  "a server killed mid-call and restarted: transcripts continue, then streaming resumes",
  TEST,
  async () => {
    await withServer({ clips: CLIPS }, async (server) => {
      const h = openSession(sttConfig(server.address), {
        tuning: { resumeFirstMs: 1000, resumeMaxMs: 2000 },
      });
      const line = new CallerLine(h.session);
      try {
        await h.session.ready;
        line.start();
        await sayAndHear(h, line, TOMORROW.audio);
        await server.kill();
        await waitFor("recognize mode", () => inRecognizeMode(h), TIMEOUT_MS);
        await sleep(2500); // down for ~3 s in all
        await server.restart();
        // The first retry that reaches the restarted server is refused: the client's channel is
        // connected again, and the session stays in recognize mode for one more utterance.
        const refused = server.stats.refused;
        server.refuseStreams(1);
        await waitFor("a refused retry", () => server.stats.refused > refused, TIMEOUT_MS);
        await sayAndHear(h, line, HOURS.audio);
        await waitFor("streaming resumed", () => resumed(h), TIMEOUT_MS);
        await sayAndHear(h, line, GOODBYE.audio);
      } finally {
        await line.stop();
        await h.finish();
      }

      assert.deepEqual(finals(h.events), [TOMORROW.text, HOURS.text, GOODBYE.text]);
      // HOURS, said while a retry was due, went to Recognize or (handed over mid-utterance) to the
      // resumed stream: the session reported it once either way (above).
      assert.ok(recognized(server).every((t) => t === HOURS.text));
      assert.deepEqual(server.finals().filter((t) => t !== HOURS.text), [
        TOMORROW.text,
        GOODBYE.text,
      ], "streaming before, after");
      assert.equal(streamWith(server, TOMORROW.text).status, "killed");
      assert.equal(streamWith(server, GOODBYE.text).status, "client_end");
      assert.ok(h.lines.some((l) => l.includes("streaming retry failed")));
      assert.equal(restarts(h.events).at(-1), "streaming resumed");
      assert.ok(h.events.some((e) => e.type === "error" && !e.fatal), "the outage is reported");
    });
  },
);

Deno.test(
  "a resumed stream that takes the call but never answers speech is dropped, and Recognize gets the words",
  TEST,
  async () => {
    await withServer({ clips: CLIPS }, async (server) => {
      server.refuseStreams(3);
      const h = openSession(sttConfig(server.address), {
        tuning: { resumeFirstMs: 300, resumeMaxMs: 600, resultTimeoutMs: 1500 },
      });
      const line = new CallerLine(h.session);
      try {
        await h.session.ready;
        line.start();
        await waitFor("recognize mode", () => inRecognizeMode(h), TIMEOUT_MS);
        // The next streams take the config and the audio but never send anything back: up by
        // the accept rule, dead by the no-result rule once they have heard speech.
        server.script.openDelayMs = 60_000;
        await waitFor("streaming resumed", () => resumed(h), TIMEOUT_MS);
        await sayAndHear(h, line, TOMORROW.audio);
        assert.ok(h.lines.some((l) => l.includes("stream gave no result for speech")));
        assert.equal(periods(h), 2, "back to Recognize after the silent streams");
        server.script.openDelayMs = 0;
        await waitFor(
          "streaming resumed again",
          () => h.lines.filter((l) => /streaming resumed/.test(l)).length >= 2,
          TIMEOUT_MS,
        );
        await sayAndHear(h, line, HOURS.audio);
      } finally {
        await line.stop();
        await h.finish();
      }

      assert.deepEqual(finals(h.events), [TOMORROW.text, HOURS.text], "each word once, in order");
      assert.deepEqual(recognized(server), [TOMORROW.text], "said to the silent stream: Recognize");
      assert.deepEqual(streamWith(server, HOURS.text).finals, [HOURS.text]);
      const probe = server.stats.streams[3];
      assert.notEqual(probe.config, null, "the retry sent the streaming config");
    });
  },
);

Deno.test(
  "a stream that answers while the caller speaks gets the whole utterance, Recognize none of it",
  TEST,
  async () => {
    await withServer({ clips: CLIPS }, async (server) => {
      server.refuseStreams(3);
      const h = openSession(sttConfig(server.address), { tuning: { resumeFirstMs: 300 } });
      const line = new CallerLine(h.session);
      try {
        await h.session.ready;
        line.start();
        await waitFor("recognize mode", () => inRecognizeMode(h), TIMEOUT_MS);
        // The retry's stream answers 700 ms after it starts: well into the 2.1 s clip.
        server.script.openDelayMs = 700;
        await waitFor("a retry in flight", () => server.stats.streams.length >= 4, TIMEOUT_MS);
        const saying = sayAndHear(h, line, APPOINTMENT.audio);
        await waitFor("streaming resumed", () => resumed(h), TIMEOUT_MS);
        await saying;
      } finally {
        await line.stop();
        await h.finish();
      }

      assert.deepEqual(finals(h.events), [APPOINTMENT.text]);
      assert.deepEqual(server.finals(), [APPOINTMENT.text], "the stream heard the clip whole");
      assert.deepEqual(recognized(server), [], "the utterance being cut was handed over");
      assert.equal(server.stats.recognizeCalls.length, 0);
      const stream = streamWith(server, APPOINTMENT.text);
      assert.equal(stream.index, 3, "the retry's stream");
      assertEndsWith(line.written, stream.matcher.audio, "the stream got the end of the call");
      assert.deepEqual(restarts(h.events), ["streaming resumed"]);
    });
  },
);

Deno.test("streaming retries back off, doubling up to resumeMaxMs", TEST, async () => {
  await withServer({ clips: CLIPS }, async (server) => {
    server.refuseStreams(100);
    const h = openSession(sttConfig(server.address), {
      tuning: { resumeFirstMs: 100, resumeMaxMs: 400 },
    });
    const line = new CallerLine(h.session);
    const waits = () =>
      h.lines.flatMap((l) => {
        const match = /streaming retry failed.* next_ms=(\d+)/.exec(l);
        return match ? [Number(match[1])] : [];
      });
    try {
      await h.session.ready;
      line.start();
      await waitFor("four failed retries", () => waits().length >= 4, TIMEOUT_MS);
    } finally {
      await line.stop();
      await h.finish();
    }
    assert.deepEqual(waits().slice(0, 4), [200, 400, 400, 400]);
    // 3 opens, then one stream per retry: the retries are not a tight loop.
    assert.ok(server.stats.streams.length <= 3 + waits().length + 1);
    assert.ok(h.lines.every((l) => !l.includes("streaming resumed")));
  });
});

Deno.test(
  "a server that accepts streams and drops them at once cannot lose or repeat an utterance",
  TEST,
  async () => {
    // Every stream answers, then fails (UNAVAILABLE) 100 ms after it started, before any result.
    const script = { streamLimitMs: 100, streamLimitCode: grpc.status.UNAVAILABLE };
    await withServer({ clips: CLIPS, ...script }, async (server) => {
      const h = openSession(sttConfig(server.address), {
        tuning: { resumeFirstMs: 200, resumeMaxMs: 800 },
      });
      const line = new CallerLine(h.session);
      try {
        await h.session.ready;
        line.start();
        await waitFor("recognize mode", () => inRecognizeMode(h), TIMEOUT_MS);
        await waitFor("a resumed stream", () => resumed(h), TIMEOUT_MS);
        await sayAndHear(h, line, TOMORROW.audio);
        await waitFor("three recognize periods", () => periods(h) >= 3, TIMEOUT_MS);
      } finally {
        await line.stop();
        await h.finish();
      }

      assert.deepEqual(finals(h.events), [TOMORROW.text]);
      // By Recognize, or by a short-lived stream that got the clip whole in its replay: once.
      assert.deepEqual([...recognized(server), ...server.finals()], [TOMORROW.text]);
      // Each resume that fails at once goes back to recognize mode after its open retries, and
      // the waits double: no tight loop of streams.
      const n = periods(h);
      assert.ok(restarts(h.events).filter((r) => r === "streaming resumed").length >= 2);
      // The first period after 3 opens; each later one after a retry and 2 more open attempts; a
      // last retry may be in flight.
      const streams = server.stats.streams.length;
      assert.ok(streams <= 3 * n + 1, `${streams} streams in ${n} recognize periods`);
    });
  },
);
