/**
 * Kav as the benchmark runs it (a subprocess, pinned to one core by `bench.ts`): exactly `kav
 * --config FILE`, plus two bench-only switches.
 *
 *   deno run -A scripts/_bench_kav.ts --config FILE [--no-store] [--tx-lead-ms N]
 *
 * `--lag-probe` logs every event-loop stall over 20 ms (a 5 ms timer; for investigation only).
 * `--no-store` replaces the SQLite call store with one that discards everything (issue 6: do store
 * writes move the TX cadence?). `--tx-lead-ms N` overrides `audio.tx_lead_ms` beyond the config's
 * 1000 ms bound, so a huge value turns pacing off (what pacing buys).
 */
import { readCommandLine } from "../src/command_line.ts";
import { loadConfig } from "../src/config/load.ts";
import type { Config } from "../src/config/types.ts";
import { runKav } from "../src/kav.ts";
import { serveFloor } from "./_bench_floor.ts";
import { createLogger } from "../src/observe/log.ts";
import type { CallStore } from "../src/store/types.ts";

/** A store that keeps nothing (the "store off" side of the comparison). */
export const NULL_STORE: CallStore = {
  callStarted() {},
  turnCompleted() {},
  event() {},
  callEnded() {},
  toolCall() {},
  transfer() {},
  dialEnded() {},
  pending: () => 0,
  flush: () => Promise.resolve(),
  close: () => Promise.resolve(),
};

const OPTIONS = {
  config: { type: "string" },
  "no-store": { type: "boolean", default: false },
  "tx-lead-ms": { type: "string" },
  "lag-probe": { type: "boolean", default: false },
  floor: { type: "boolean", default: false },
} as const;

if (import.meta.main) {
  const { values } = readCommandLine(Deno.args, OPTIONS);
  const path = values.config;
  if (path === undefined) {
    console.error("Usage: _bench_kav.ts --config FILE [--no-store] [--tx-lead-ms N]");
    Deno.exit(2);
  }
  let config: Config = await loadConfig(path);
  const lead = values["tx-lead-ms"];
  if (lead !== undefined) {
    config = { ...config, audio: { ...config.audio, tx_lead_ms: Number(lead) } };
  }
  const store = values["no-store"] ? NULL_STORE : undefined;
  if (values["lag-probe"]) {
    let expected = performance.now() + 5;
    const probe = setInterval(() => {
      const now = performance.now();
      if (now - expected > 20) {
        console.error(
          `${new Date().toISOString()} [LAG] stalled_ms=${(now - expected).toFixed(1)}`,
        );
      }
      expected = now + 5;
    }, 5);
    Deno.unrefTimer(probe);
  }
  if (values.floor) {
    const server = config.server;
    await serveFloor({
      hostname: server.hostname,
      port: server.port,
      publicUrl: server.public_url,
    });
    await new Promise(() => {}); // serves until the bench stops it
  }
  await runKav({ config, log: createLogger(), store });
  Deno.exit(0);
}
