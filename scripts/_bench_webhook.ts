/**
 * The benchmark's status-callback prober (a separate process on the load core): POSTs a signed
 * `/webhook/stream_status` every `--interval-ms` (one request in flight at a time, keep-alive) and
 * times each answer. Each `window` line on stdin makes it print one JSON line with the latencies
 * since the previous one; `quit` (or the end of stdin) stops it.
 *
 *   deno run -A scripts/_bench_webhook.ts --url http://127.0.0.1:8080 --public-url URL --token T
 */
import { readCommandLine } from "../src/command_line.ts";
import { computeSignature } from "../src/twilio/signature.ts";
import { MsHistogram, round2 } from "../tools/stats.ts";

/** One window of answers. */
export interface WebhookWindow {
  readonly count: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  /** Answers other than 204, and failed requests. */
  readonly errors: number;
}

/** A finer histogram than the simulator's: 0.1 ms bins up to 250 ms, read at 0.01 ms rounding. */
function summary(h: MsHistogram, errors: number): WebhookWindow {
  return {
    count: h.count,
    p50: round2(h.quantile(0.5)),
    p99: round2(h.quantile(0.99)),
    max: round2(h.max),
    errors,
  };
}

if (import.meta.main) {
  const { values } = readCommandLine(Deno.args, {
    url: { type: "string", default: "http://127.0.0.1:8080" },
    "public-url": { type: "string" },
    token: { type: "string" },
    "interval-ms": { type: "string", default: "10" },
  });
  const baseUrl = values.url;
  const publicUrl = values["public-url"] ?? baseUrl;
  const token = values.token ?? "";
  const intervalMs = Number(values["interval-ms"]);
  const path = "/webhook/stream_status";
  const params: [string, string][] = [
    ["AccountSid", "AC" + "0".repeat(32)],
    ["CallSid", "CA" + "b".repeat(32)],
    ["StreamEvent", "stream-started"],
    ["StreamName", "MZ" + "b".repeat(32)],
    ["StreamSid", "MZ" + "b".repeat(32)],
    ["Timestamp", new Date().toISOString()],
  ];
  const body = new URLSearchParams(params).toString();
  const headers: Record<string, string> = {
    "content-type": "application/x-www-form-urlencoded",
  };
  if (token !== "") {
    headers["X-Twilio-Signature"] = computeSignature(token, { url: publicUrl + path, params });
  }
  let histogram = new MsHistogram();
  let errors = 0;
  let running = true;

  const loop = (async () => {
    let next = performance.now();
    while (running) {
      const started = performance.now();
      try {
        const response = await fetch(baseUrl + path, { method: "POST", headers, body });
        await response.arrayBuffer();
        if (response.status === 204) histogram.add(performance.now() - started);
        else errors++;
      } catch {
        errors++;
      }
      next += intervalMs;
      const wait = next - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      else next = performance.now();
    }
  })();

  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of Deno.stdin.readable) {
    buffered += decoder.decode(chunk, { stream: true });
    let newline: number;
    let quit = false;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const command = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (command === "window") {
        const line = JSON.stringify(summary(histogram, errors)) + "\n";
        histogram = new MsHistogram();
        errors = 0;
        await Deno.stdout.write(encoder.encode(line));
      } else if (command === "quit") {
        quit = true;
      }
    }
    if (quit) break;
  }
  running = false;
  await loop;
  Deno.exit(0);
}
