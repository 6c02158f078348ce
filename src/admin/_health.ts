/**
 * The console's health page data: providers' errors and latencies (since start and over the last
 * minutes), the store's queue, the CRM backlog, the runtime and a summary of the config without
 * secrets. Everything but the config comes from Kav's own metrics, so it says what `/metrics` says.
 */
import type { Config } from "../config/types.ts";
import { renderMetrics } from "../observe/metrics.ts";
import { parsePrometheusText, type PromFamily, sampleValue } from "../observe/prom_parse.ts";

/** How far back "recent" looks. */
export const RECENT_WINDOW_MS = 5 * 60_000;
/** Metric samples kept to compute "recent" (one per minute at most). */
const KEPT_SAMPLES = 6;

type Families = Map<string, PromFamily>;

const LATENCIES = [
  { name: "stt_final", metric: "kav_stt_final_latency_seconds" },
  { name: "tts_first_byte", metric: "kav_tts_first_byte_seconds" },
  { name: "e2e", metric: "kav_e2e_latency_seconds" },
] as const;

export interface ErrorCount {
  readonly labels: Readonly<Record<string, string>>;
  readonly total: number;
  readonly recent: number;
}

export interface LatencyFigure {
  readonly name: (typeof LATENCIES)[number]["name"];
  readonly provider: string | null;
  readonly count: number;
  readonly recentCount: number;
  /** Estimated from the histogram buckets (recent when there were any, else since start), ms. */
  readonly p50Ms: number | null;
  readonly p95Ms: number | null;
}

export class HealthReport {
  readonly #config: Config;
  readonly #startedAt: number;
  readonly #now: () => number;
  readonly #samples: { at: number; families: Families }[] = [];

  constructor(config: Config, options: { now?: () => number } = {}) {
    this.#config = config;
    this.#now = options.now ?? Date.now;
    this.#startedAt = this.#now();
    // Until a page asks twice, "recent" counts from here.
    this.#samples.push({ at: this.#startedAt, families: parsePrometheusText(renderMetrics()) });
  }

  /** The health JSON (docs/console.md), from the metrics as they are now. */
  build(extra: { draining: boolean; viewers: number }): Record<string, unknown> {
    const now = this.#now();
    const families = parsePrometheusText(renderMetrics());
    const baseline = this.#baseline(now, families);
    const gauge = (name: string) => sampleValue(families, name) ?? null;
    const config = this.#config;
    return {
      at: now,
      node: config.server.node_id,
      uptimeS: Math.round((now - this.#startedAt) / 1000),
      draining: extra.draining,
      runtime: { deno: Deno.version.deno, v8: Deno.version.v8, os: Deno.build.os },
      calls: { active: gauge("kav_active_calls"), max: config.server.max_calls },
      console: { viewers: extra.viewers },
      store: {
        kind: config.storage.url === null ? "sqlite" : "postgres",
        queued: gauge("kav_store_write_queue_depth"),
        behind: gauge("kav_store_behind"),
        journaled: gauge("kav_store_journal_records"),
        writeFailures: counts(families, baseline.families, "kav_store_write_failures_total"),
      },
      crm: {
        enabled: config.crm.url !== null,
        pending: gauge("kav_crm_outbox_pending"),
        attempts: counts(families, baseline.families, "kav_crm_delivery_attempts_total"),
      },
      providers: {
        recentWindowS: Math.round((now - baseline.at) / 1000),
        errors: counts(families, baseline.families, "kav_provider_errors_total"),
        sttRestarts: counts(families, baseline.families, "kav_stt_restarts_total"),
        latency: LATENCIES.flatMap((l) => latencies(families, baseline.families, l)),
      },
      config: configSummary(config),
    };
  }

  /** The oldest kept sample within the window (or now's, at first); keeps one per minute. */
  #baseline(now: number, families: Families): { at: number; families: Families } {
    while (this.#samples.length > 0 && now - this.#samples[0].at > RECENT_WINDOW_MS) {
      this.#samples.shift();
    }
    const last = this.#samples.at(-1);
    if (last === undefined || now - last.at >= 60_000) {
      this.#samples.push({ at: now, families });
      if (this.#samples.length > KEPT_SAMPLES) this.#samples.shift();
    }
    return this.#samples[0];
  }
}

/** Every series of counter `name`: its total and its growth since `before`. */
function counts(now: Families, before: Families, name: string): ErrorCount[] {
  const family = now.get(name);
  if (family === undefined) return [];
  return family.samples.map((sample) => ({
    labels: sample.labels,
    total: sample.value,
    recent: sample.value - (sampleValue(before, name, sample.labels) ?? 0),
  }));
}

function latencies(
  now: Families,
  before: Families,
  spec: (typeof LATENCIES)[number],
): LatencyFigure[] {
  const family = now.get(spec.metric);
  if (family === undefined) return [];
  const providers = new Set<string | null>();
  for (const s of family.samples) {
    if (s.name === `${spec.metric}_count`) providers.add(s.labels.provider ?? null);
  }
  return [...providers].map((provider) => {
    const labels: Record<string, string> = provider === null ? {} : { provider };
    const total = buckets(now, spec.metric, labels);
    const old = buckets(before, spec.metric, labels);
    const recent = total.map(([le, n], i) => [le, n - (old[i]?.[1] ?? 0)] as [number, number]);
    const count = sampleValue(now, `${spec.metric}_count`, labels) ?? 0;
    const recentCount = count - (sampleValue(before, `${spec.metric}_count`, labels) ?? 0);
    const use = recentCount > 0 ? recent : total;
    return {
      name: spec.name,
      provider,
      count,
      recentCount,
      p50Ms: quantileMs(use, 0.5),
      p95Ms: quantileMs(use, 0.95),
    };
  });
}

/** Cumulative buckets `[le, count]` of one histogram series, by bound. */
function buckets(
  families: Families,
  metric: string,
  labels: Record<string, string>,
): [number, number][] {
  const family = families.get(metric);
  if (family === undefined) return [];
  const out: [number, number][] = [];
  for (const s of family.samples) {
    if (s.name !== `${metric}_bucket`) continue;
    const { le, ...rest } = s.labels;
    if (le === undefined || !sameLabels(rest, labels)) continue;
    out.push([le === "+Inf" ? Infinity : Number(le), s.value]);
  }
  return out.sort((a, b) => a[0] - b[0]);
}

function sameLabels(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>) {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}

/** Prometheus' histogram_quantile: linear within the bucket holding the rank, in ms. */
export function quantileMs(cumulative: readonly [number, number][], q: number): number | null {
  const total = cumulative.at(-1)?.[1] ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, count] of cumulative) {
    if (count >= rank) {
      // Past the last finite bound all that is known is "more than it".
      if (!Number.isFinite(le)) return Math.round(lowerBound * 1000);
      const share = count === lowerCount ? 0 : (rank - lowerCount) / (count - lowerCount);
      return Math.round((lowerBound + (le - lowerBound) * share) * 1000 * 10) / 10;
    }
    lowerBound = le;
    lowerCount = count;
  }
  return null;
}

/** The config an operator may see: no secrets, no prompts; only whether each secret is set. */
export function configSummary(config: Config): Record<string, unknown> {
  const host = (url: string | null) => {
    if (url === null) return null;
    try {
      const parsed = new URL(url);
      return `${parsed.protocol}//${parsed.host}`;
    } catch {
      return "(set)";
    }
  };
  const { server, stt, tts, llm, storage } = config;
  return {
    server: {
      listen: `${server.hostname}:${server.port}`,
      public_url: server.public_url,
      tls: server.tls_cert !== null,
      max_calls: server.max_calls,
      node_id: server.node_id,
    },
    call: { language: config.call.language },
    stt: {
      provider: stt.provider,
      endpoint: stt.provider === "google" ? stt.google.endpoint : host(stt.openai.base_url),
      model: stt.provider === "google" ? stt.google.model : stt.openai.model,
    },
    tts: {
      provider: tts.provider,
      endpoint: tts.provider === "google" ? tts.google.endpoint : host(tts.openai.base_url),
      voice: tts.provider === "google" ? tts.voice : tts.openai.voice,
    },
    llm: { endpoint: host(llm.base_url), model: llm.model, timeout_ms: llm.timeout_ms },
    storage: {
      kind: storage.url === null ? "sqlite" : "postgres",
      where: storage.url === null ? storage.path : host(storage.url),
      retention_days: storage.retention_days,
    },
    log: { transcripts: config.log.transcripts },
    crm: { url: host(config.crm.url) },
    admin: {
      listen: config.admin.listen === null
        ? null
        : `${config.admin.listen.hostname}:${config.admin.listen.port}`,
    },
    secrets: {
      twilio_auth_token: config.twilio.auth_token !== null,
      openai_api_key: llm.api_key !== null,
      google_credentials: config.google.credentials_path !== null,
      crm_secret: config.crm.secret !== null,
      db_password: storage.password !== null,
      admin_token: config.admin.token !== null,
    },
    twilio: { validate_signatures: config.twilio.validate_signatures },
  };
}
