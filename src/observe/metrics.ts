/**
 * Prometheus metrics, hand-written exposition (text format 0.0.4). Metrics are module-level and
 * call sites use the verbs below; no call-sid labels (unbounded cardinality).
 */

type Labels = Readonly<Record<string, string>>;

function labelKey(labels: Labels | undefined): string {
  if (!labels) return "";
  const keys = Object.keys(labels).sort();
  if (keys.length === 0) return "";
  return "{" + keys.map((k) => `${k}="${escapeLabel(labels[k])}"`).join(",") + "}";
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

interface Metric {
  readonly name: string;
  render(): string;
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
  render(): string {
    let out = `# HELP ${this.name} ${this.#help}\n# TYPE ${this.name} counter\n`;
    if (this.#values.size === 0 && !this.#labelled) out += `${this.name} 0\n`;
    for (const [key, value] of this.#values) out += `${this.name}${key} ${formatNumber(value)}\n`;
    return out;
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
  render(): string {
    let value: number;
    try {
      value = this.#read();
    } catch {
      // A scrape must not fail because one source (e.g. a closed store) cannot be read.
      value = NaN;
    }
    return `# HELP ${this.name} ${this.#help}\n# TYPE ${this.name} gauge\n${this.name} ${
      formatNumber(value)
    }\n`;
  }
}

class Histogram implements Metric {
  readonly name: string;
  readonly #help: string;
  readonly #bounds: readonly number[];
  readonly #counts: number[];
  #sum = 0;
  #count = 0;
  constructor(name: string, help: string, bounds: readonly number[]) {
    this.name = name;
    this.#help = help;
    this.#bounds = bounds;
    this.#counts = bounds.map(() => 0);
    registry.push(this);
  }
  reset(): void {
    this.#counts.fill(0);
    this.#sum = 0;
    this.#count = 0;
  }
  observe(value: number): void {
    this.#sum += value;
    this.#count++;
    for (let i = 0; i < this.#bounds.length; i++) {
      if (value <= this.#bounds[i]) this.#counts[i]++;
    }
  }
  render(): string {
    let out = `# HELP ${this.name} ${this.#help}\n# TYPE ${this.name} histogram\n`;
    for (let i = 0; i < this.#bounds.length; i++) {
      out += `${this.name}_bucket{le="${this.#bounds[i]}"} ${this.#counts[i]}\n`;
    }
    out += `${this.name}_bucket{le="+Inf"} ${this.#count}\n`;
    out += `${this.name}_sum ${formatNumber(this.#sum)}\n${this.name}_count ${this.#count}\n`;
    return out;
  }
}

/** A histogram per label set (e.g. per provider); a series appears with its first observation. */
class LabelledHistogram implements Metric {
  readonly name: string;
  readonly #help: string;
  readonly #bounds: readonly number[];
  readonly #series = new Map<string, { counts: number[]; sum: number; count: number }>();
  constructor(name: string, help: string, bounds: readonly number[]) {
    this.name = name;
    this.#help = help;
    this.#bounds = bounds;
    registry.push(this);
  }
  reset(): void {
    this.#series.clear();
  }
  observe(labels: Labels, value: number): void {
    const key = Object.keys(labels).sort().map((k) => `${k}="${escapeLabel(labels[k])}"`).join(
      ",",
    );
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
  render(): string {
    let out = `# HELP ${this.name} ${this.#help}\n# TYPE ${this.name} histogram\n`;
    for (const [key, series] of this.#series) {
      const sep = key === "" ? "" : ",";
      for (let i = 0; i < this.#bounds.length; i++) {
        out += `${this.name}_bucket{${key}${sep}le="${this.#bounds[i]}"} ${series.counts[i]}\n`;
      }
      out += `${this.name}_bucket{${key}${sep}le="+Inf"} ${series.count}\n`;
      const labels = key === "" ? "" : `{${key}}`;
      out += `${this.name}_sum${labels} ${formatNumber(series.sum)}\n`;
      out += `${this.name}_count${labels} ${series.count}\n`;
    }
    return out;
  }
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
const sttFinalLatency = new LabelledHistogram(
  "kav_stt_final_latency_seconds",
  "End of a caller utterance (cut by Kav's VAD) to its final transcript, by STT provider",
  PROVIDER_BUCKETS_S,
);
const ttsFirstByte = new LabelledHistogram(
  "kav_tts_first_byte_seconds",
  "TTS request sent to its first audio bytes, by provider",
  PROVIDER_BUCKETS_S,
);
const providerLatency = new LabelledHistogram(
  "kav_provider_latency_seconds",
  "Provider request sent to its answer (first token or audio when streamed), by provider and kind",
  PROVIDER_BUCKETS_S,
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
  providerLatency.observe({ provider, kind }, seconds);
}
/** An utterance's final transcript arrived `seconds` after the utterance ended. */
export function sttFinalLatencyObserved(provider: string, seconds: number): void {
  sttFinalLatency.observe({ provider }, seconds);
}
/** A TTS answer's first audio bytes arrived `seconds` after the request was sent. */
export function ttsFirstByteObserved(provider: string, seconds: number): void {
  ttsFirstByte.observe({ provider }, seconds);
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

/** The whole registry in Prometheus text format. */
export function renderMetrics(): string {
  let out = "";
  for (const metric of registry) out += metric.render();
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
const toolDuration = new LabelledHistogram(
  "kav_tool_duration_seconds",
  "Operator tool request sent to its answer (or failure), by tool",
  PROVIDER_BUCKETS_S,
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
  toolDuration.observe({ tool }, seconds);
}
export function transferEnded(outcome: string): void {
  transfers.inc({ outcome });
}
