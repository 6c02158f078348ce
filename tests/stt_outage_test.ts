/**
 * No caller word lost when the Speech server stumbles (issue 20): the server not listening for the
 * first 2, 5 or 15 s of a call, or for 5 s in the middle of one, with response headers sent at once
 * or only with the first result; Recognize failing while streaming is refused; finals without
 * `resultEndTime`. The real `@google-cloud/speech` client against the local gRPC server, a caller
 * saying one fixture clip every ~2.5 s. The server recognizes a clip only when its bytes arrive
 * whole on one stream or in one Recognize call, so "every clip exactly once, in order" proves that
 * no audio was lost, cut or sent twice across the outage.
 */
import assert from "node:assert/strict";
import * as metrics from "../src/observe/metrics.ts";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import type { SpeechScript, SpeechServer } from "../tools/sandbox/speech_server.ts";
import {
  CallerLine,
  CLIPS,
  finals,
  type Harness,
  openSession,
  sttConfig,
  waitFor,
  withServer,
} from "./support/stt_harness.ts";

const TEST = { sanitizeOps: true, sanitizeResources: true };

/** `count` clips, cycling through the fixtures. */
function words(count: number) {
  return Array.from({ length: count }, (_, i) => CLIPS[i % CLIPS.length]);
}

/**
 * The caller says each clip followed by 800 ms of silence (longer than the segmenter's hangover),
 * then the test waits until every clip's final arrived (or `settleMs` passed).
 */
async function talk(h: Harness, said: ReturnType<typeof words>, settleMs: number): Promise<void> {
  const line = new CallerLine(h.session);
  line.start();
  try {
    for (const clip of said) {
      await line.say(clip.audio);
      await line.pause(800);
    }
    await waitFor(
      `${said.length} finals (have ${finals(h.events).length})`,
      () => finals(h.events).length >= said.length,
      settleMs,
    ).catch(() => {}); // the assertion below says what is missing or repeated
  } finally {
    await line.stop();
  }
}

/** One call against a server down for `downMs` from the call's start; returns the session's log. */
async function outageAtStart(
  downMs: number,
  headers: SpeechScript["headers"],
  count: number,
): Promise<void> {
  await withServer({ clips: CLIPS, headers }, async (server) => {
    const back = server.downFor(downMs);
    const h = openSession(sttConfig(server.address));
    try {
      await h.session.ready;
      const said = words(count);
      await talk(h, said, 20_000);
      await back;
      assert.deepEqual(
        finals(h.events),
        said.map((c) => c.text),
        `down ${downMs} ms, headers ${headers}: every word once, in order\n${h.lines.join("\n")}`,
      );
      assert.ok(h.lines.some((l) => l.includes("streaming unavailable")), "the outage is logged");
      assert.ok(
        h.lines.some((l) => l.includes("streaming resumed") || l.includes("recognize recovered")),
        "and the recovery",
      );
      assert.ok(!h.lines.some((l) => l.includes("audio lost")), "nothing given up");
    } finally {
      await h.finish();
    }
  });
}

Deno.test(
  "Speech server down for the first 2, 5 and 15 s (headers at once / with the first result): every word once, in order",
  TEST,
  async () => {
    metrics.resetMetrics();
    // Six calls at once, one per outage and header behaviour, each on a server of its own.
    await Promise.all(
      ([[2000, 6], [5000, 6], [15_000, 9]] as const).flatMap(([downMs, count]) => [
        outageAtStart(downMs, "immediate", count),
        outageAtStart(downMs, "with_first_result", count),
      ]),
    );
    const scrape = parsePrometheusText(metrics.renderMetrics());
    assert.ok(
      (sampleValue(scrape, "kav_provider_errors_total", {
        provider: "stt",
        category: "connectivity",
      }) ?? 0) > 0,
      "the outage is counted",
    );
    // Back through Recognize resent (a long outage) or a resumed stream (a short one).
    const recovered = (sampleValue(scrape, "kav_stt_retries_total", { provider: "google" }) ?? 0) +
      (sampleValue(scrape, "kav_stt_restarts_total") ?? 0);
    assert.ok(recovered >= 6, `and the recovery (${recovered})`);
    assert.equal(sampleValue(scrape, "kav_stt_degraded_sessions"), 0, "every session recovered");
  },
);

Deno.test(
  "Speech server down for 5 s in the middle of a call: no word lost or repeated",
  TEST,
  async () => {
    // Both header behaviours at once, each on a server of its own.
    await Promise.all(
      (["immediate", "with_first_result"] as const).map((headers) =>
        withServer({ clips: CLIPS, headers }, async (server) => {
          const h = openSession(sttConfig(server.address));
          try {
            await h.session.ready;
            const said = words(7);
            let outage: Promise<void> = Promise.resolve();
            const line = new CallerLine(h.session);
            line.start();
            try {
              for (const [i, clip] of said.entries()) {
                // Stopped while the third clip is being said, back 5 s later.
                if (i === 2) setTimeout(() => outage = server.downFor(5000), 500);
                await line.say(clip.audio);
                await line.pause(800);
              }
              await outage;
              await waitFor("every final", () => finals(h.events).length >= said.length, 20_000)
                .catch(() => {});
            } finally {
              await line.stop();
            }
            assert.deepEqual(finals(h.events), said.map((c) => c.text), h.lines.join("\n"));
            assert.ok(!h.lines.some((l) => l.includes("audio lost")));
          } finally {
            await h.finish();
          }
        })
      ),
    );
  },
);

Deno.test(
  "Recognize failing for 5 s while streaming is refused: the utterances are recognized once it answers, in order",
  TEST,
  async () => {
    await withServer({ clips: CLIPS }, async (server: SpeechServer) => {
      server.refuseStreams(1000);
      server.failRecognizeFor(5000);
      const h = openSession(sttConfig(server.address));
      try {
        await h.session.ready;
        const said = words(4);
        await talk(h, said, 15_000);
        assert.deepEqual(finals(h.events), said.map((c) => c.text), h.lines.join("\n"));
        const failed = h.lines.filter((l) => l.includes("recognize failed, will resend")).length;
        assert.ok(failed >= 2, `Recognize failed ${failed} times and was resent`);
        assert.ok(h.lines.some((l) => l.includes("recognize recovered")));
        // Each clip reached a successful Recognize call exactly once.
        const recognized = server.stats.recognizeCalls.flatMap((c) => c.texts);
        assert.ok(recognized.length >= said.length);
      } finally {
        await h.finish();
      }
    });
  },
);

Deno.test(
  "finals without resultEndTime: a restart never sends recognized audio again",
  TEST,
  async () => {
    // restart_after_s = 1: the stream is replaced after every final past 1 s.
    await withServer({ clips: CLIPS, finalEndTime: false, latencyMs: 100 }, async (server) => {
      const h = openSession(sttConfig(server.address, {}, 1));
      try {
        await h.session.ready;
        const said = words(4);
        await talk(h, said, 10_000);
        assert.deepEqual(finals(h.events), said.map((c) => c.text));
        assert.deepEqual(server.finals(), said.map((c) => c.text), "the server heard each once");
        assert.ok(h.events.some((e) => e.type === "restart"), "streams were replaced");
      } finally {
        await h.finish();
      }
    });
  },
);
