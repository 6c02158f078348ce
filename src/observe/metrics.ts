/**
 * Prometheus metrics, hand-written exposition (text format 0.0.4). Metrics are module-level and
 * call sites use the verbs below; no call-sid labels (unbounded cardinality).
 */

type Labels = Readonly<Record<string, string>>;

/** A series' label set as rendered inside the braces (`a="x",b="y"`), sorted; "" for none. */
function labelKey(labels: Labels | undefined): string {
  if (!labels) return "";
  const keys = Object.keys(labels).sort();
  return keys.map((k) => `${k}="${escapeLabel(labels[k])}"`).join(",");
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function formatNumber(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

/**
 * One metric family as plain data: what a call worker sends to the main thread, and what the
 * exposition is rendered from. Series are keyed by their rendered label set without braces
 * (`outcome="completed"`; "" for none).
 */
export type FamilySnapshot =
  | {
    readonly kind: "counter";
    readonly name: string;
    readonly help: string;
    /** Labelled counters show no series before the first `inc`. */
    readonly labelled: boolean;
    readonly series: readonly (readonly [string, number])[];
  }
  | {
    readonly kind: "gauge";
    readonly name: string;
    readonly help: string;
    readonly value: number;
  }
  | {
    readonly kind: "histogram";
    readonly name: string;
    readonly help: string;
    readonly bounds: readonly number[];
    /** A histogram without labels always shows its one series. */
    readonly labelled: boolean;
    readonly series: readonly (readonly [string, HistogramSeries])[];
  };

export interface HistogramSeries {
  /** Observations at or below each bound (cumulative, as rendered). */
  readonly counts: readonly number[];
  readonly sum: number;
  readonly count: number;
}

/** Every family of one registry, in registration order. */
export type MetricsSnapshot = readonly FamilySnapshot[];

interface Metric {
  readonly name: string;
  snapshot(): FamilySnapshot;
  /** Back to the initial state (tests). */
  reset(): void;
}

const registry: Metric[] = [];

class Counter implements Metric {
  readonly name: string;
  readonly #help: string;
  /** Labelled counters have no series until the first `inc` (a bare `name 0` would be a stray series). */
  readonly #labelled: boolean;
  readonly #values = new Map<string, number>();
  constructor(name: string, help: string, options?: { labelled?: boolean }) {
    this.name = name;
    this.#help = help;
    this.#labelled = options?.labelled ?? false;
    registry.push(this);
  }
  inc(labels?: Labels, by = 1): void {
    const key = labelKey(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }
  get(labels?: Labels): number {
    return this.#values.get(labelKey(labels)) ?? 0;
  }
  reset(): void {
    this.#values.clear();
  }
  snapshot(): FamilySnapshot {
    return {
      kind: "counter",
      name: this.name,
      help: this.#help,
      labelled: this.#labelled,
      series: [...this.#values],
    };
  }
}

class Gauge implements Metric {
  readonly name: string;
  readonly #help: string;
  readonly #read: () => number;
  constructor(name: string, help: string, read: () => number) {
    this.name = name;
    this.#help = help;
    this.#read = read;
    registry.push(this);
  }
  reset(): void {}
  snapshot(): FamilySnapshot {
    let value: number;
    try {
      value = this.#read();
    } catch {
      // A scrape must not fail because one source (e.g. a closed store) cannot be read.
      value = NaN;
    }
    return { kind: "gauge", name: this.name, help: this.#help, value };
  }
}

interface MutableSeries {
  counts: number[];
  sum: number;
  count: number;
}

/**
 * A histogram, optionally per label set (e.g. per provider). Without labels its one series is
 * always shown; with labels a series appears with its first observation.
 */
class Histogram implements Metric {
  readonly name: string;
  readonly #help: string;
  readonly #bounds: readonly number[];
  readonly #labelled: boolean;
  readonly #series = new Map<string, MutableSeries>();
  constructor(
    name: string,
    help: string,
    bounds: readonly number[],
    options?: { labelled?: boolean },
  ) {
    this.name = name;
    this.#help = help;
    this.#bounds = bounds;
    this.#labelled = options?.labelled ?? false;
    registry.push(this);
  }
  reset(): void {
    this.#series.clear();
  }
  observe(value: number, labels?: Labels): void {
    const key = labelKey(labels);
    let series = this.#series.get(key);
    if (series === undefined) {
      series = { counts: this.#bounds.map(() => 0), sum: 0, count: 0 };
      this.#series.set(key, series);
    }
    series.sum += value;
    series.count++;
    for (let i = 0; i < this.#bounds.length; i++) {
      if (value <= this.#bounds[i]) series.counts[i]++;
    }
  }
  snapshot(): FamilySnapshot {
    const series: [string, HistogramSeries][] = [];
    for (const [key, s] of this.#series) {
      series.push([key, { counts: [...s.counts], sum: s.sum, count: s.count }]);
    }
    return {
      kind: "histogram",
      name: this.name,
      help: this.#help,
      bounds: this.#bounds,
      labelled: this.#labelled,
      series,
    };
  }
}

function renderFamily(family: FamilySnapshot): string {
  const { name } = family;
  const head = `# HELP ${name} ${family.help}\n# TYPE ${name} ${family.kind}\n`;
  switch (family.kind) {
    case "gauge":
      return `${head}${name} ${formatNumber(family.value)}\n`;
    case "counter": {
      let out = head;
      if (family.series.length === 0 && !family.labelled) out += `${name} 0\n`;
      for (const [key, value] of family.series) {
        out += `${name}${key === "" ? "" : `{${key}}`} ${formatNumber(value)}\n`;
      }
      return out;
    }
    case "histogram": {
      let out = head;
      const series: readonly (readonly [string, HistogramSeries])[] =
        family.series.length === 0 && !family.labelled
          ? [["", { counts: family.bounds.map(() => 0), sum: 0, count: 0 }]]
          : family.series;
      for (const [key, s] of series) {
        const sep = key === "" ? "" : ",";
        for (let i = 0; i < family.bounds.length; i++) {
          out += `${name}_bucket{${key}${sep}le="${family.bounds[i]}"} ${s.counts[i]}\n`;
        }
        out += `${name}_bucket{${key}${sep}le="+Inf"} ${s.count}\n`;
        const labels = key === "" ? "" : `{${key}}`;
        out += `${name}_sum${labels} ${formatNumber(s.sum)}\n`;
        out += `${name}_count${labels} ${s.count}\n`;
      }
      return out;
    }
    default: {
      const unreachable: never = family;
      throw new TypeError(`Cannot render metric family ${JSON.stringify(unreachable)}`);
    }
  }
}

/**
 * Sums registries family by family, series by series (counters, histograms and gauges alike: every
 * gauge here is a count or a 0/1 flag, so the process's value is the sum of its event loops').
 * Families keep the first snapshot's order; a family or series only some have is kept as it is.
 */
export function mergeSnapshots(snapshots: readonly MetricsSnapshot[]): MetricsSnapshot {
  const order: string[] = [];
  const merged = new Map<string, FamilySnapshot>();
  for (const snapshot of snapshots) {
    for (const family of snapshot) {
      const seen = merged.get(family.name);
      if (seen === undefined) {
        order.push(family.name);
        merged.set(family.name, family);
      } else {
        merged.set(family.name, addFamilies(seen, family));
      }
    }
  }
  return order.map((name) => merged.get(name)!);
}

function addSeries<T>(
  a: readonly (readonly [string, T])[],
  b: readonly (readonly [string, T])[],
  add: (x: T, y: T) => T,
): [string, T][] {
  const out = new Map<string, T>(a);
  for (const [key, value] of b) {
    const seen = out.get(key);
    out.set(key, seen === undefined ? value : add(seen, value));
  }
  return [...out];
}

function addFamilies(a: FamilySnapshot, b: FamilySnapshot): FamilySnapshot {
  if (a.kind === "gauge" && b.kind === "gauge") return { ...a, value: a.value + b.value };
  if (a.kind === "counter" && b.kind === "counter") {
    return { ...a, series: addSeries(a.series, b.series, (x, y) => x + y) };
  }
  if (a.kind === "histogram" && b.kind === "histogram" && sameBounds(a.bounds, b.bounds)) {
    const add = (x: HistogramSeries, y: HistogramSeries): HistogramSeries => ({
      counts: x.counts.map((c, i) => c + (y.counts[i] ?? 0)),
      sum: x.sum + y.sum,
      count: x.count + y.count,
    });
    return { ...a, series: addSeries(a.series, b.series, add) };
  }
  throw new TypeError(`Cannot merge metric ${a.name}: ${a.kind} and ${b.kind} differ`);
}

function sameBounds(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((bound, i) => bound === b[i]);
}

/**
 * What a finished event loop leaves behind: its counters and histograms (a dead worker's counts
 * must not vanish from the process's totals), not its gauges (its calls are gone).
 */
export function retiredPart(snapshot: MetricsSnapshot): MetricsSnapshot {
  return snapshot.filter((family) => family.kind !== "gauge");
}

const LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

let activeCallCount = 0;
let storeQueueDepth: () => number = () => 0;

new Gauge("kav_active_calls", "Calls with an open media stream", () => activeCallCount);
new Gauge(
  "kav_store_write_queue_depth",
  "Call-store writes queued, not yet on disk",
  () => storeQueueDepth(),
);
let storeBehind: () => boolean = () => false;
let storeJournalRecords: () => number = () => 0;
new Gauge(
  "kav_store_behind",
  "1 while call records wait for the fleet database (down, slow or a journal to write), else 0",
  () => storeBehind() ? 1 : 0,
);
new Gauge(
  "kav_store_journal_records",
  "Call records in the fleet store's disk journal, waiting for the database",
  () => storeJournalRecords(),
);
const callsTotal = new Counter("kav_calls_total", "Calls ended, by outcome", { labelled: true });
const rxFrames = new Counter("kav_rx_frames_total", "Inbound media frames received");
const rxDrops = new Counter(
  "kav_rx_dropped_frames_total",
  "Inbound media frames dropped (rx_q full)",
);
const txFrames = new Counter("kav_tx_frames_total", "Outbound media frames sent");
const txLate = new Counter("kav_tx_late_frames_total", "TX ticks later than the cadence allows");
const malformed = new Counter(
  "kav_malformed_messages_total",
  "Inbound WebSocket messages rejected",
  { labelled: true },
);
const sttRestarts = new Counter("kav_stt_restarts_total", "STT streams restarted");
let sttDegradedSessions = 0;
new Gauge(
  "kav_stt_degraded_sessions",
  "Speech sessions with no working stream (opening again or per-utterance Recognize)",
  () => sttDegradedSessions,
);
const providerErrors = new Counter(
  "kav_provider_errors_total",
  "Provider failures, by provider",
  { labelled: true },
);
const badSignatures = new Counter(
  "kav_bad_signatures_total",
  "Requests rejected for their signature",
  { labelled: true },
);
const rateLimited = new Counter(
  "kav_rate_limited_requests_total",
  "Requests answered 429 by the per-IP bad-signature cap, by route",
  { labelled: true },
);
const unhandledErrors = new Counter(
  "kav_unhandled_errors_total",
  "Errors that escaped every handler (logged, process kept up), by kind",
  { labelled: true },
);
const storeWriteFailures = new Counter(
  "kav_store_write_failures_total",
  "Call-store batches that failed (retried) or writes rejected by SQLite (dropped)",
  { labelled: true },
);
const crmAttempts = new Counter(
  "kav_crm_delivery_attempts_total",
  "CRM summary POSTs, by result",
  { labelled: true },
);
let crmOutboxPending: () => number = () => 0;
new Gauge("kav_crm_outbox_pending", "CRM summaries not yet delivered", () => crmOutboxPending());
const webhookLatency = new Histogram(
  "kav_webhook_duration_seconds",
  "Time to answer a status callback",
  LATENCY_BUCKETS_S,
);
const e2eLatency = new Histogram(
  "kav_e2e_latency_seconds",
  "Caller speech end to first agent frame on the wire",
  LATENCY_BUCKETS_S,
);

const PROVIDER_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const sttFinalLatency = new Histogram(
  "kav_stt_final_latency_seconds",
  "End of a caller utterance (cut by Kav's VAD) to its final transcript, by STT provider",
  PROVIDER_BUCKETS_S,
  { labelled: true },
);
const ttsFirstByte = new Histogram(
  "kav_tts_first_byte_seconds",
  "TTS request sent to its first audio bytes, by provider",
  PROVIDER_BUCKETS_S,
  { labelled: true },
);
const providerLatency = new Histogram(
  "kav_provider_latency_seconds",
  "Provider request sent to its answer (first token or audio when streamed), by provider and kind",
  PROVIDER_BUCKETS_S,
  { labelled: true },
);
const sttRetries = new Counter(
  "kav_stt_retries_total",
  "Utterance transcriptions tried again after a failure, by provider",
  { labelled: true },
);
const sttDroppedUtterances = new Counter(
  "kav_stt_dropped_utterances_total",
  "Caller utterances given up without a transcript, by provider and reason",
  { labelled: true },
);
const sttDroppedAudio = new Counter(
  "kav_stt_dropped_audio_seconds_total",
  "Caller audio given up without a transcript, by provider",
  { labelled: true },
);

export function callStarted(): void {
  activeCallCount++;
}
export function callEnded(outcome: string): void {
  activeCallCount--;
  callsTotal.inc({ outcome });
}
/** A call whose call worker died, recorded by the main thread (its worker's counts are gone). */
export function callRecordedAsLost(outcome: string): void {
  callsTotal.inc({ outcome });
}
export function rxFrameReceived(): void {
  rxFrames.inc();
}
export function rxFrameDropped(): void {
  rxDrops.inc();
}
export function txFrameSent(): void {
  txFrames.inc();
}
export function txLateTick(): void {
  txLate.inc();
}
export function malformedMessage(reason: string): void {
  malformed.inc({ reason });
}
export function sttRestarted(): void {
  sttRestarts.inc();
}
/** +1 when a session loses its stream, -1 when streaming works again or the session ends. */
export function sttDegraded(delta: 1 | -1): void {
  sttDegradedSessions += delta;
}
/** Call through `countError` in `src/providers/policy.ts`, which counts each error once. */
export function providerError(provider: string, category: string): void {
  providerErrors.inc({ provider, category });
}
/** A provider request of `kind` answered after `seconds` (through `observe` in the policy). */
export function providerLatencyObserved(provider: string, kind: string, seconds: number): void {
  providerLatency.observe(seconds, { provider, kind });
}
/** An utterance's final transcript arrived `seconds` after the utterance ended. */
export function sttFinalLatencyObserved(provider: string, seconds: number): void {
  sttFinalLatency.observe(seconds, { provider });
}
/** A TTS answer's first audio bytes arrived `seconds` after the request was sent. */
export function ttsFirstByteObserved(provider: string, seconds: number): void {
  ttsFirstByte.observe(seconds, { provider });
}
/** An utterance's transcription failed and will be tried again. */
export function sttRetried(provider: string): void {
  sttRetries.inc({ provider });
}
/** An utterance of `seconds` of audio was given up (backlog full, or refused for good). */
export function sttUtteranceDropped(provider: string, reason: string, seconds: number): void {
  sttDroppedUtterances.inc({ provider, reason });
  sttDroppedAudio.inc({ provider }, seconds);
}
export function badSignature(route: string): void {
  badSignatures.inc({ route });
}
/** A bad-signature request past the per-IP cap got 429. */
export function requestRateLimited(route: string): void {
  rateLimited.inc({ route });
}
/** An error escaped every per-call handler and reached the process-level handler. */
export function unhandledError(kind: "rejection" | "exception"): void {
  unhandledErrors.inc({ kind });
}
export function webhookAnswered(seconds: number): void {
  webhookLatency.observe(seconds);
}
export function e2eLatencyObserved(seconds: number): void {
  e2eLatency.observe(seconds);
}
/** The store registers how to read its queue depth. */
export function watchStoreQueue(read: () => number): void {
  storeQueueDepth = read;
}
/** The fleet store registers whether records wait, and how many are in its disk journal. */
export function watchStoreBehind(behind: () => boolean, journalRecords: () => number): void {
  storeBehind = behind;
  storeJournalRecords = journalRecords;
}
/** A store batch failed and stays queued (`retried`), or SQLite rejected one write (`dropped`). */
export function storeWriteFailed(action: "retried" | "dropped"): void {
  storeWriteFailures.inc({ action });
}
/** One CRM POST finished: a 2xx (`delivered`) or anything else (`failed`, to be retried). */
export function crmDeliveryAttempt(result: "delivered" | "failed"): void {
  crmAttempts.inc({ result });
}
/** The CRM outbox registers how to count undelivered summaries. */
export function watchCrmOutbox(read: () => number): void {
  crmOutboxPending = read;
}
/** Zeroes every counter and histogram and forgets the watchers (tests only). */
export function resetMetrics(): void {
  for (const metric of registry) metric.reset();
  activeCallCount = 0;
  storeQueueDepth = () => 0;
  storeBehind = () => false;
  storeJournalRecords = () => 0;
  crmOutboxPending = () => 0;
}

/** This event loop's registry as plain data (a call worker sends it to the main thread). */
export function snapshotMetrics(): MetricsSnapshot {
  return registry.map((metric) => metric.snapshot());
}

/** Renders a snapshot (e.g. the sum over workers) in Prometheus text format. */
export function renderSnapshot(snapshot: MetricsSnapshot): string {
  let out = "";
  for (const family of snapshot) out += renderFamily(family);
  return out;
}

// The agent acts (SPEC 6): tool calls, their failures and latency, transfers by dial outcome.
const toolCalls = new Counter("kav_tool_calls_total", "Operator tool calls, by tool", {
  labelled: true,
});
const toolErrors = new Counter(
  "kav_tool_errors_total",
  "Operator tool calls that failed, by tool and reason",
  { labelled: true },
);
const toolDuration = new Histogram(
  "kav_tool_duration_seconds",
  "Operator tool request sent to its answer (or failure), by tool",
  PROVIDER_BUCKETS_S,
  { labelled: true },
);
const transfers = new Counter(
  "kav_transfers_total",
  "Agent transfers, by outcome (Twilio's DialCallStatus, or cancelled by the caller)",
  { labelled: true },
);

export function toolCalled(tool: string): void {
  toolCalls.inc({ tool });
}
export function toolFailed(tool: string, reason: string): void {
  toolErrors.inc({ tool, reason });
}
export function toolDurationObserved(tool: string, seconds: number): void {
  toolDuration.observe(seconds, { tool });
}
export function transferEnded(outcome: string): void {
  transfers.inc({ outcome });
}

/** This event loop's registry in Prometheus text format. */
export function renderMetrics(): string {
  return renderSnapshot(snapshotMetrics());
}
