/**
 * Google STT provider against the local gRPC Speech server (tools/sandbox/speech_server.ts), with the
 * real `@google-cloud/speech` client over real loopback sockets. The server recognizes a clip only
 * when its exact bytes arrive contiguously on one stream, so "every clip recognized exactly once"
 * proves that no audio was lost, cut or duplicated across stream restarts.
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { v1 } from "@google-cloud/speech";
import { gaxClientOptions } from "../src/providers/grpc.ts";
import * as metrics from "../src/observe/metrics.ts";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import {
  clip,
  CLIPS,
  feed,
  finals,
  openSession,
  silence,
  sleep,
  sttConfig,
  waitFor,
  withServer,
} from "./support/stt_harness.ts";
import { concatBytes } from "../tools/bytes.ts";

const [APPOINTMENT, HOURS, GOODBYE, TOMORROW] = ["appointment", "hours", "goodbye", "tomorrow"]
  .map(clip);
const TEST = { sanitizeOps: true, sanitizeResources: true };
/** Tests of the first failover keep streaming retries (stt_recovery_test.ts) out of their way. */
const NO_RESUME = { tuning: { resumeFirstMs: 60_000 } };

Deno.test(
  "open() streams MULAW 8000 Hz he-IL phone_call audio in 40 ms batches, in order",
  TEST,
  async () => {
    metrics.resetMetrics();
    await withServer({ clips: CLIPS }, async (server) => {
      const h = openSession(sttConfig(server.address));
      await h.session.ready;
      const audio = concatBytes(silence(200), HOURS.audio, silence(300));
      await feed(h.session, audio, 5);
      await waitFor("the final", () => finals(h.events).length === 1);
      await h.finish();

      assert.equal(server.stats.streams.length, 1);
      const stream = server.stats.streams[0];
      assert.deepEqual(stream.config, {
        config: {
          encoding: "MULAW",
          sampleRateHertz: 8000,
          audioChannelCount: 1,
          languageCode: "he-IL",
          model: "phone_call",
          useEnhanced: true,
        },
        interimResults: true,
        singleUtterance: false,
      });
      // Every message but the last carries exactly batch_ms = 40 ms (320 bytes); nothing reordered.
      assert.ok(stream.chunkSizes.slice(0, -1).every((n) => n === 320), `${stream.chunkSizes}`);
      assert.deepEqual(stream.matcher.audio, audio);
      assert.equal(stream.status, "client_end");
      assert.deepEqual(finals(h.events), [HOURS.text]);
      const partials = h.events.filter((e) => e.type === "partial");
      assert.ok(partials.length >= 2, "interim results arrive as partial events");
      assert.ok(HOURS.text.startsWith(partials[0].type === "partial" ? partials[0].text : "?"));
      // The final's latency (its end written → final received) is in the per-provider histogram.
      const scrape = parsePrometheusText(metrics.renderMetrics());
      const labels = { provider: "google" };
      assert.equal(sampleValue(scrape, "kav_stt_final_latency_seconds_count", labels), 1);
      const seconds = sampleValue(scrape, "kav_stt_final_latency_seconds_sum", labels) ?? -1;
      assert.ok(seconds >= 0 && seconds < 2, `${seconds} s`);
    });
  },
);

Deno.test(
  "ready waits for a 2 s stream open, and audio queued meanwhile is not lost",
  TEST,
  async () => {
    await withServer({ clips: CLIPS, openDelayMs: 2000 }, async (server) => {
      const started = performance.now();
      const h = openSession(sttConfig(server.address));
      let readyAt = 0;
      h.session.ready.then(() => readyAt = performance.now());
      // The caller's RX queue: frames keep arriving in real time; they are written only after ready.
      const audio = concatBytes(
        silence(300),
        APPOINTMENT.audio,
        silence(400),
        GOODBYE.audio,
        silence(400),
      );
      const queued: Uint8Array[] = [];
      let next = performance.now();
      let heldAtReady = -1;
      for (let at = 0; at < audio.length; at += 160) {
        queued.push(audio.subarray(at, at + 160));
        if (readyAt > 0) {
          if (heldAtReady < 0) heldAtReady = queued.length;
          for (const frame of queued) h.session.write(frame);
          queued.length = 0;
        }
        next += 20;
        const wait = next - performance.now();
        if (wait > 0) await sleep(wait);
      }
      await h.session.ready;
      for (const frame of queued) h.session.write(frame);
      await waitFor("both finals", () => finals(h.events).length === 2);
      await h.finish();

      assert.ok(readyAt - started >= 1900, `ready after ${Math.round(readyAt - started)} ms`);
      assert.ok(heldAtReady >= 90, `${heldAtReady} frames (20 ms) were held until ready`);
      assert.deepEqual(finals(h.events), [APPOINTMENT.text, GOODBYE.text]);
      assert.deepEqual(server.stats.streams[0].matcher.audio, audio);
    });
  },
);

Deno.test(
  "stream restarts at utterance boundaries before the duration limit; every clip once",
  TEST,
  async () => {
    // Scaled down: the server ends a stream after 3.5 s (Google: ~305 s); restart_after_s = 1.
    // Short pauses and 250 ms response latency: each final arrives after the next clip has begun,
    // so a restart without replay would cut that clip.
    const latencyMs = 250;
    await withServer({ clips: CLIPS, streamLimitMs: 3500, latencyMs }, async (server) => {
      const h = openSession(sttConfig(server.address, {}, 1));
      await h.session.ready;
      const gap = silence(150);
      const call = concatBytes(
        silence(300),
        APPOINTMENT.audio,
        gap,
        HOURS.audio,
        gap,
        GOODBYE.audio,
        gap,
        TOMORROW.audio,
        silence(700),
      );
      await feed(h.session, call, 2);
      await waitFor("four finals", () => finals(h.events).length === 4);
      await h.finish();

      const expected = [APPOINTMENT.text, HOURS.text, GOODBYE.text, TOMORROW.text];
      assert.deepEqual(finals(h.events), expected);
      assert.deepEqual(
        server.finals(),
        expected,
        "each clip recognized exactly once by the server",
      );
      const restarts = h.events.filter((e) => e.type === "restart");
      assert.ok(restarts.length >= 2, `restarted ${restarts.length} times`);
      assert.ok(restarts.every((e) => e.type === "restart" && e.reason === "age"));
      assert.ok(
        server.stats.streams.every((s) => s.status !== "error:OUT_OF_RANGE"),
        "no stream reached the server's duration limit",
      );
    });
  },
);

Deno.test(
  "a stream ended by the duration limit mid-utterance is replaced and replayed",
  TEST,
  async () => {
    // restart_after_s is far away, so the server's limit (1.2 s) cuts streams mid-clip.
    await withServer({ clips: CLIPS, streamLimitMs: 1200 }, async (server) => {
      const h = openSession(sttConfig(server.address));
      await h.session.ready;
      const call = concatBytes(
        silence(300),
        APPOINTMENT.audio,
        silence(500),
        TOMORROW.audio,
        silence(500),
      );
      await feed(h.session, call, 1);
      await waitFor("two finals", () => finals(h.events).length === 2);
      await h.finish();

      assert.deepEqual(finals(h.events), [APPOINTMENT.text, TOMORROW.text]);
      assert.deepEqual(server.finals(), [APPOINTMENT.text, TOMORROW.text]);
      assert.ok(server.stats.streams.some((s) => s.status === "error:OUT_OF_RANGE"));
      assert.ok(h.events.some((e) => e.type === "restart" && e.reason === "duration_limit"));
    });
  },
);

Deno.test("a mid-call stream error reconnects with the buffered audio replayed", TEST, async () => {
  await withServer({ clips: CLIPS }, async (server) => {
    const h = openSession(sttConfig(server.address));
    await h.session.ready;
    await feed(h.session, concatBytes(silence(200), HOURS.audio, silence(200)), 4);
    await waitFor("the first final", () => finals(h.events).length === 1);
    const half = Math.floor(APPOINTMENT.audio.length / 2);
    await feed(h.session, concatBytes(silence(200), APPOINTMENT.audio.subarray(0, half)), 4);
    await waitFor("the half clip to reach the server", () => server.bytesReceived() >= 3200 + half);
    assert.equal(server.failActiveStreams(grpc.status.INTERNAL, "Internal error encountered."), 1);
    await feed(h.session, concatBytes(APPOINTMENT.audio.subarray(half), silence(300)), 4);
    await waitFor("the second final", () => finals(h.events).length === 2);
    await h.finish();

    assert.deepEqual(finals(h.events), [HOURS.text, APPOINTMENT.text]);
    assert.deepEqual(server.finals(), [HOURS.text, APPOINTMENT.text]);
    assert.equal(server.stats.streams.length, 2);
    const error = h.events.find((e) => e.type === "error");
    assert.ok(error?.type === "error" && !error.fatal && error.error.category === "server");
    assert.ok(h.events.some((e) => e.type === "restart" && e.reason === "error"));
    // The new stream began with the replay from the last final: silence and the clip, not HOURS.
    const second = server.stats.streams[1].matcher.audio;
    assert.equal(second.length, (200 + 200 + 300) * 8 + APPOINTMENT.audio.length);
  });
});

Deno.test("a killed and restarted server mid-clip loses no words", TEST, async () => {
  await withServer({ clips: CLIPS }, async (server) => {
    const h = openSession(sttConfig(server.address));
    await h.session.ready;
    const half = Math.floor(GOODBYE.audio.length / 2);
    await feed(h.session, concatBytes(silence(200), GOODBYE.audio.subarray(0, half)), 4);
    await waitFor("audio at the server", () => server.bytesReceived() >= 1600 + half - 320);
    await server.kill();
    const during = feed(h.session, concatBytes(GOODBYE.audio.subarray(half), silence(300)), 1);
    await sleep(100);
    await server.restart();
    await during;
    await waitFor("the final", () => finals(h.events).length === 1);
    await h.finish();

    assert.deepEqual(finals(h.events), [GOODBYE.text]);
    assert.deepEqual(server.finals(), [GOODBYE.text]);
    assert.ok(h.events.some((e) => e.type === "restart"));
  });
});

Deno.test(
  "streams that fail right after opening count as failed opens, not a replay loop",
  TEST,
  async () => {
    // Every stream fails (UNAVAILABLE) 100 ms after it starts, before any result.
    const script = { streamLimitMs: 100, streamLimitCode: grpc.status.UNAVAILABLE };
    await withServer({ clips: CLIPS, ...script }, async (server) => {
      const h = openSession(sttConfig(server.address), NO_RESUME);
      await h.session.ready;
      await feed(h.session, silence(1500), 2);
      await waitFor("recognize mode", () => h.lines.some((l) => l.includes("per-utterance")));
      await feed(h.session, concatBytes(silence(200), TOMORROW.audio, silence(900)), 4);
      await waitFor("the final", () => finals(h.events).length === 1);
      await h.finish();

      assert.equal(server.stats.streams.length, 3, "3 open attempts, then no more");
      assert.deepEqual(server.stats.recognizeCalls.map((c) => c.texts), [[TOMORROW.text]]);
    });
  },
);

Deno.test("two refused opens are retried on the primary", TEST, async () => {
  await withServer({ clips: CLIPS }, async (primary) => {
    primary.refuseStreams(2);
    const h = openSession(sttConfig(primary.address, { fallback_endpoint: "127.0.0.1:1" }));
    await h.session.ready;
    await feed(h.session, concatBytes(silence(100), TOMORROW.audio, silence(200)), 5);
    await waitFor("the final", () => finals(h.events).length === 1);
    await h.finish();
    assert.equal(primary.stats.refused, 2);
    assert.equal(primary.stats.streams.length, 3);
    assert.deepEqual(primary.finals(), [TOMORROW.text]);
  });
});

Deno.test(
  "an open refused on every retry (UNAVAILABLE) moves to the fallback endpoint",
  TEST,
  async () => {
    await withServer({ clips: CLIPS }, async (primary) => {
      await withServer({ clips: CLIPS }, async (fallback) => {
        primary.refuseStreams(3); // refused 3 times (SPEC: then the fallback)
        const h = openSession(sttConfig(primary.address, { fallback_endpoint: fallback.address }));
        await h.session.ready;
        await feed(h.session, concatBytes(silence(100), HOURS.audio, silence(200)), 5);
        await waitFor("the final", () => finals(h.events).length === 1);
        await h.finish();

        assert.equal(primary.stats.refused, 3);
        assert.equal(primary.stats.streams.length, 3);
        assert.deepEqual(fallback.finals(), [HOURS.text]);
        const error = h.events.find((e) => e.type === "error");
        assert.ok(
          error?.type === "error" && error.error.category === "connectivity" && !error.fatal,
        );
        assert.ok(h.lines.some((l) => l.includes("using fallback endpoint")));
      });
    });
  },
);

Deno.test("a primary that refuses the language goes straight to the fallback", TEST, async () => {
  await withServer({ clips: CLIPS, rejectLanguages: ["he-IL"] }, async (primary) => {
    await withServer({ clips: CLIPS }, async (fallback) => {
      const h = openSession(sttConfig(primary.address, { fallback_endpoint: fallback.address }));
      await h.session.ready;
      await feed(h.session, concatBytes(silence(100), GOODBYE.audio, silence(200)), 5);
      await waitFor("the final", () => finals(h.events).length === 1);
      await h.finish();

      assert.equal(primary.stats.streams.length, 1, "INVALID_ARGUMENT is not retried");
      assert.equal(primary.stats.streams[0].status, "error:INVALID_ARGUMENT");
      assert.deepEqual(fallback.finals(), [GOODBYE.text]);
      const error = h.events.find((e) => e.type === "error");
      assert.ok(error?.type === "error" && error.error.category === "invalid_request");
      assert.equal(error.error.retryable, false);
    });
  });
});

Deno.test(
  "with streaming refused everywhere, per-utterance recognize transcribes",
  TEST,
  async () => {
    await withServer({ clips: CLIPS, latencyMs: 300 }, async (primary) => {
      await withServer({ clips: CLIPS }, async (fallback) => {
        primary.refuseStreams(100);
        fallback.refuseStreams(100);
        const h = openSession(
          sttConfig(primary.address, { fallback_endpoint: fallback.address }),
          NO_RESUME,
        );
        await h.session.ready;
        const call = concatBytes(
          silence(300),
          APPOINTMENT.audio,
          silence(900),
          TOMORROW.audio,
          silence(900),
        );
        await feed(h.session, call, 4);
        await waitFor("two finals", () => finals(h.events).length === 2);
        await h.finish();

        assert.deepEqual(finals(h.events), [APPOINTMENT.text, TOMORROW.text]);
        assert.equal(primary.stats.streams.length, 3);
        assert.equal(fallback.stats.streams.length, 3);
        const calls = primary.stats.recognizeCalls;
        assert.equal(calls.length, 2, "one Recognize call per utterance");
        assert.deepEqual(calls.map((c) => c.texts), [[APPOINTMENT.text], [TOMORROW.text]]);
        assert.equal(calls[0].config.encoding, "MULAW");
        assert.equal(calls[0].config.languageCode, "he-IL");
        assert.ok(h.lines.some((l) => l.includes("per-utterance recognize")));
      });
    });
  },
);

Deno.test(
  "recognize falls back to the second endpoint, reports failures and resends",
  TEST,
  async () => {
    await withServer({ clips: CLIPS }, async (primary) => {
      await withServer({ clips: CLIPS }, async (fallback) => {
        primary.refuseStreams(100);
        fallback.refuseStreams(100);
        primary.failRecognize(2, grpc.status.UNAVAILABLE);
        fallback.failRecognize(1, grpc.status.RESOURCE_EXHAUSTED, "Quota exceeded");
        const h = openSession(sttConfig(primary.address, { fallback_endpoint: fallback.address }));
        await h.session.ready;
        const call = concatBytes(
          silence(300),
          HOURS.audio,
          silence(900),
          GOODBYE.audio,
          silence(900),
        );
        await feed(h.session, call, 4);
        await waitFor("both finals", () => finals(h.events).length === 2);
        await h.finish();

        // First utterance: primary UNAVAILABLE, fallback RESOURCE_EXHAUSTED ⇒ a non-fatal error, and
        // the utterance is sent again: primary UNAVAILABLE, fallback answers. Nothing is lost.
        assert.deepEqual(finals(h.events), [HOURS.text, GOODBYE.text]);
        const errors = h.events.filter((e) => e.type === "error" && e.error.provider === "stt");
        const error = h.events.find((e) => e.type === "error" && e.error.category === "rate_limit");
        assert.ok(error?.type === "error" && !error.fatal && error.error.retryable);
        assert.ok(errors.length >= 2, "the stream failures and the Recognize outage");
        assert.match(
          error.error.message,
          /Cannot recognize speech at .*RESOURCE_EXHAUSTED: "Quota exceeded"/,
        );
      });
    });
  },
);

Deno.test("insecure mode never asks google-auth-library for credentials", TEST, async () => {
  const probe = new v1.SpeechClient(gaxClientOptions("127.0.0.1:9", true, null));
  const proto = Object.getPrototypeOf(probe.auth) as Record<string, unknown>;
  await probe.close();
  const spied = [
    "getClient",
    "getApplicationDefault",
    "getCredentials",
    "getAccessToken",
    "getRequestHeaders",
  ];
  const originals = new Map(spied.map((name) => [name, proto[name]]));
  const calls: string[] = [];
  for (const name of spied) {
    proto[name] = function () {
      calls.push(name);
      return Promise.reject(new Error("Could not load the default credentials"));
    };
  }
  const savedEnv = Deno.env.get("GOOGLE_APPLICATION_CREDENTIALS");
  Deno.env.set("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/kav-test-credentials.json");
  try {
    await withServer({ clips: CLIPS }, async (server) => {
      const h = openSession(sttConfig(server.address));
      await h.session.ready;
      await feed(h.session, concatBytes(TOMORROW.audio, silence(200)), 5);
      await waitFor("the final", () => finals(h.events).length === 1);
      await h.finish();
      assert.deepEqual(calls, [], "no credential lookup in insecure mode");

      // The same client in TLS mode does look credentials up, so the spy can see a lookup.
      const secure = openSession(sttConfig(server.address, { insecure: false }), {
        tuning: { openAttempts: 1 },
      });
      await waitFor("a credential lookup", () => calls.length > 0);
      secure.abort.abort();
      await secure.finish();
    });
  } finally {
    for (const [name, fn] of originals) proto[name] = fn;
    if (savedEnv === undefined) Deno.env.delete("GOOGLE_APPLICATION_CREDENTIALS");
    else Deno.env.set("GOOGLE_APPLICATION_CREDENTIALS", savedEnv);
  }
});

Deno.test("aborting the call's signal cancels the stream and ends results", TEST, async () => {
  await withServer({ clips: CLIPS }, async (server) => {
    const h = openSession(sttConfig(server.address));
    await h.session.ready;
    await feed(h.session, silence(200), 5);
    h.abort.abort();
    await h.finish();
    h.session.write(silence(20)); // ignored after close
    await h.session.close(); // idempotent
    await waitFor("the server to see the cancel", () => server.stats.streams[0].status !== "open");
    assert.equal(server.stats.streams[0].status, "cancelled");
  });
});
