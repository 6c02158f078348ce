import assert from "node:assert/strict";
import * as metrics from "../src/observe/metrics.ts";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import { createLogger } from "../src/observe/log.ts";
import { openCallStore } from "../src/store/sqlite.ts";

function scrape() {
  return parsePrometheusText(metrics.renderMetrics());
}

function value(name: string, labels: Record<string, string> = {}): number {
  return sampleValue(scrape(), name, labels) ?? 0;
}

Deno.test("renderMetrics() passes the strict Prometheus line grammar with every verb used", () => {
  metrics.callStarted();
  metrics.rxFrameReceived();
  metrics.rxFrameDropped();
  metrics.txFrameSent();
  metrics.txLateTick();
  metrics.malformedMessage('bad "json"\\ with\nnewline');
  metrics.sttRestarted();
  metrics.providerError("tts", "timeout");
  metrics.badSignature("/twiml");
  metrics.webhookAnswered(0.0007);
  metrics.e2eLatencyObserved(30);
  metrics.storeWriteFailed("retried");
  metrics.crmDeliveryAttempt("failed");
  metrics.callEnded("completed");
  const families = scrape();
  for (
    const name of [
      "kav_active_calls",
      "kav_calls_total",
      "kav_rx_frames_total",
      "kav_rx_dropped_frames_total",
      "kav_tx_frames_total",
      "kav_tx_late_frames_total",
      "kav_webhook_duration_seconds",
      "kav_e2e_latency_seconds",
      "kav_stt_restarts_total",
      "kav_provider_errors_total",
      "kav_store_write_queue_depth",
      "kav_crm_outbox_pending",
      "kav_crm_delivery_attempts_total",
    ]
  ) {
    const family = families.get(name);
    assert.ok(family, `${name} is exported`);
    assert.ok(family.help, `${name} has HELP`);
    assert.notEqual(family.type, "untyped", `${name} has TYPE`);
  }
  assert.equal(families.get("kav_e2e_latency_seconds")?.type, "histogram");
  assert.ok(
    (sampleValue(families, "kav_malformed_messages_total", {
      reason: 'bad "json"\\ with\nnewline',
    }) ?? 0) >= 1,
    "label values round-trip through the escapes",
  );
});

Deno.test("metrics move as a simulated call runs, store queue depth included", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kav_metrics_" });
  const store = await openCallStore({
    path: `${dir}/kav.db`,
    log: createLogger(() => {}),
    retentionDays: 0,
    tuning: { flushIntervalMs: 60_000 },
  });
  try {
    const before = {
      active: value("kav_active_calls"),
      completed: value("kav_calls_total", { outcome: "completed" }),
      rx: value("kav_rx_frames_total"),
      rxDrops: value("kav_rx_dropped_frames_total"),
      tx: value("kav_tx_frames_total"),
      late: value("kav_tx_late_frames_total"),
      restarts: value("kav_stt_restarts_total"),
      llmErrors: value("kav_provider_errors_total", { provider: "llm", category: "timeout" }),
      webhookCount: value("kav_webhook_duration_seconds_count"),
      webhookFast: value("kav_webhook_duration_seconds_bucket", { le: "0.005" }),
      e2eCount: value("kav_e2e_latency_seconds_count"),
      e2eUnderSecond: value("kav_e2e_latency_seconds_bucket", { le: "1" }),
      e2eUnderHalf: value("kav_e2e_latency_seconds_bucket", { le: "0.5" }),
    };
    metrics.callStarted();
    store.callStarted({
      callSid: "CA_M",
      streamSid: "MZ_M",
      accountSid: "AC1",
      from: null,
      to: null,
      customParameters: {},
      startedAt: Date.now(),
    });
    assert.equal(value("kav_active_calls"), before.active + 1);
    for (let i = 0; i < 50; i++) metrics.rxFrameReceived();
    metrics.rxFrameDropped();
    for (let i = 0; i < 40; i++) metrics.txFrameSent();
    metrics.txLateTick();
    metrics.sttRestarted();
    metrics.providerError("llm", "timeout");
    metrics.webhookAnswered(0.003);
    metrics.e2eLatencyObserved(0.8);
    store.event("CA_M", { kind: "mark", at: Date.now(), detail: "s1" });
    assert.equal(value("kav_store_write_queue_depth"), 2, "the gauge reads the live store");
    await store.flush();
    assert.equal(value("kav_store_write_queue_depth"), 0);
    metrics.callEnded("completed");
    assert.equal(value("kav_active_calls"), before.active);
    assert.equal(value("kav_calls_total", { outcome: "completed" }), before.completed + 1);
    assert.equal(value("kav_rx_frames_total"), before.rx + 50);
    assert.equal(value("kav_rx_dropped_frames_total"), before.rxDrops + 1);
    assert.equal(value("kav_tx_frames_total"), before.tx + 40);
    assert.equal(value("kav_tx_late_frames_total"), before.late + 1);
    assert.equal(value("kav_stt_restarts_total"), before.restarts + 1);
    assert.equal(
      value("kav_provider_errors_total", { provider: "llm", category: "timeout" }),
      before.llmErrors + 1,
    );
    assert.equal(value("kav_webhook_duration_seconds_count"), before.webhookCount + 1);
    assert.equal(
      value("kav_webhook_duration_seconds_bucket", { le: "0.005" }),
      before.webhookFast + 1,
    );
    assert.equal(value("kav_e2e_latency_seconds_count"), before.e2eCount + 1);
    assert.equal(value("kav_e2e_latency_seconds_bucket", { le: "1" }), before.e2eUnderSecond + 1);
    assert.equal(value("kav_e2e_latency_seconds_bucket", { le: "0.5" }), before.e2eUnderHalf);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resetMetrics() zeroes counters and histograms; labelled counters start empty", () => {
  metrics.txFrameSent();
  metrics.e2eLatencyObserved(0.2);
  metrics.callEnded("idle");
  metrics.resetMetrics();
  const text = metrics.renderMetrics();
  const families = parsePrometheusText(text);
  assert.equal(sampleValue(families, "kav_tx_frames_total"), 0);
  assert.equal(sampleValue(families, "kav_e2e_latency_seconds_count"), 0);
  assert.equal(sampleValue(families, "kav_active_calls"), 0);
  assert.equal(families.get("kav_calls_total")?.samples.length, 0);
  assert.ok(!/^kav_calls_total /m.test(text), "no unlabelled stray series");
});

Deno.test("a gauge whose source throws renders NaN and the scrape still parses", () => {
  metrics.watchStoreQueue(() => {
    throw new Error("database is not open");
  });
  try {
    const families = scrape();
    assert.ok(Number.isNaN(sampleValue(families, "kav_store_write_queue_depth")));
  } finally {
    metrics.watchStoreQueue(() => 0);
  }
});

Deno.test("parsePrometheusText() accepts comments, blank lines, timestamps and escapes", () => {
  const text = [
    "# a free comment",
    "# HELP x_total Things, with a \\\\ and a \\n",
    "# TYPE x_total counter",
    'x_total{a="q\\"uote",b="back\\\\slash"} 3 1700000000000',
    "",
    "y -1.5e3",
    "# TYPE h histogram",
    'h_bucket{le="0.1"} 1',
    'h_bucket{le="+Inf"} 2',
    "h_sum 0.3",
    "h_count 2",
    "",
  ].join("\n");
  const families = parsePrometheusText(text);
  assert.equal(families.get("x_total")?.help, "Things, with a \\ and a \n");
  assert.equal(sampleValue(families, "x_total", { a: 'q"uote', b: "back\\slash" }), 3);
  assert.equal(families.get("x_total")?.samples[0].timestamp, 1700000000000);
  assert.equal(sampleValue(families, "y"), -1500);
  assert.equal(families.get("y")?.type, "untyped");
  assert.equal(sampleValue(families, "h_count"), 2);
});

Deno.test("parsePrometheusText() rejects what the line grammar forbids", () => {
  const bad: [string, RegExp][] = [
    ["x 1", /last line has no newline/],
    ["1x 1\n", /bad metric name "1x"/],
    ["x  1\n", /one space before the value/],
    ["x 1,5\n", /bad value "1,5"/],
    ["x 1 12.5\n", /bad timestamp/],
    ["x 1 2 3\n", /expected 'value \[timestamp\]'/],
    ['x{a="\\t"} 1\n', /bad escape/],
    ["x{a=b} 1\n", /not quoted/],
    ['x{a="b",} 1\n', /trailing comma in labels/],
    ['x{__name__="b"} 1\n', /reserved label name/],
    ['x{a="1",a="2"} 1\n', /duplicate label "a"/],
    ['x{a="1" 1\n', /expected ',' or '}'/],
    ["x 1\nx 2\n", /duplicate series/],
    ["x 1\n# TYPE x gauge\n", /TYPE after samples/],
    ["# TYPE x gauge\n# TYPE x gauge\n", /second TYPE/],
    ["# HELP x a\n# HELP x b\n", /second HELP/],
    ["# TYPE x meter\n", /unknown type "meter"/],
    ["# HELP x bad \\t escape\n", /bad escape in HELP/],
    ['x 1\ny 1\nx{a="1"} 2\n', /not contiguous/],
    ["# TYPE c counter\nc -1\n", /negative or NaN counter/],
    ["x 1\r\n", /carriage return/],
    [
      '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
      /not cumulative/,
    ],
    ['# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n', /no le="\+Inf"/],
    ['# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 1\n', /_count differs/],
    ['# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_count 1\n', /no _sum/],
    [
      '# TYPE h histogram\nh_bucket{le="2"} 1\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
      /not ascending/,
    ],
  ];
  for (const [text, message] of bad) {
    assert.throws(() => parsePrometheusText(text), (error: Error) => {
      assert.ok(error instanceof SyntaxError, JSON.stringify(text));
      assert.match(error.message, /^Cannot parse metrics/);
      assert.match(error.message, message, JSON.stringify(text));
      return true;
    });
  }
});
