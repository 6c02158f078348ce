/**
 * The first calls after boot (issue 20): boots Kav `--boots` times (default 5) against the sandbox
 * providers and places `--calls` calls one after another on each fresh process, measuring at the
 * client the WebSocket upgrade and the greeting's first frame after `start` (SPEC 5: < 50 ms, on
 * the first call too). Prints a table, and JSON with `--json`.
 *
 *   deno run -A scripts/bench_first_call.ts [--boots 5] [--calls 5] [--json]
 */
import { parseArgs } from "node:util";
import { startProviderServers } from "../tools/sandbox/sandbox.ts";
import { sandboxToml } from "../tools/sandbox/sandbox.ts";
import { freePort, startKav } from "./_bench_procs.ts";
import { fixtureLines, simulate } from "../tools/twilio/simulation.ts";

const { values } = parseArgs({
  args: Deno.args.filter((a) => a !== "--"),
  options: {
    boots: { type: "string", default: "5" },
    calls: { type: "string", default: "5" },
    json: { type: "boolean", default: false },
  },
});
const boots = Number(values.boots);
const calls = Number(values.calls);

const servers = await startProviderServers();
const dir = await Deno.makeTempDir({ prefix: "kav-first-call-" });
const rows: {
  boot: number;
  call: number;
  upgradeMs: number | null;
  firstFrameMs: number | null;
}[] = [];
try {
  for (let boot = 1; boot <= boots; boot++) {
    const port = freePort();
    const dbPath = `${dir}/boot${boot}.db`;
    const kav = await startKav({
      dir,
      name: `boot${boot}`,
      toml: sandboxToml(servers, {
        listen: `127.0.0.1:${port}`,
        publicUrl: `http://127.0.0.1:${port}`,
        storagePath: dbPath,
      }),
      port,
      dbPath,
      core: null,
      token: "",
    });
    try {
      for (let call = 1; call <= calls; call++) {
        const report = await simulate({
          target: { baseUrl: kav.baseUrl, publicUrl: kav.baseUrl, authToken: null },
          calls: 1,
          rampMs: 0,
          turns: 0,
          minDurationMs: 0,
          lines: fixtureLines(),
        });
        const c = report.calls[0];
        rows.push({ boot, call, upgradeMs: c.upgradeMs, firstFrameMs: c.greeting.firstFrameMs });
      }
    } finally {
      await kav.stop();
    }
  }
} finally {
  await servers.close();
  await Deno.remove(dir, { recursive: true });
}

if (values.json) {
  console.log(JSON.stringify({ boots, calls, rows }, null, 2));
} else {
  console.log("boot  call  upgrade_ms  greeting_first_frame_ms");
  for (const r of rows) {
    console.log(
      `${String(r.boot).padStart(4)}  ${String(r.call).padStart(4)}  ${
        String(r.upgradeMs).padStart(10)
      }  ${String(r.firstFrameMs).padStart(23)}`,
    );
  }
  const first = rows.filter((r) => r.call === 1).map((r) => r.firstFrameMs ?? Infinity);
  console.log(`first call after boot, greeting first frame: max ${Math.max(...first)} ms`);
}
