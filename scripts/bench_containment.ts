/**
 * What containment costs on the media path (issue 7): every inbound WebSocket message is handled
 * inside the call's `AsyncLocalStorage` scope (`inCallScope`), so an error escaping later can be
 * attributed to its call. This measures that wrapper against the work it wraps: screening and
 * parsing one real 20 ms `media` message (what `CallSession` does per message).
 *
 *   deno run -A scripts/bench_containment.ts [--messages 200000] [--rounds 5]
 *
 * Prints a table and one JSON line. Figures are per message, median of the rounds.
 */
import { readCommandLine } from "../src/command_line.ts";
import { inCallScope } from "../src/call/manager.ts";
import { parseInbound } from "../src/twilio/protocol.ts";
import { median } from "../tools/stats.ts";

const { values } = readCommandLine(Deno.args, {
  messages: { type: "string", default: "200000" },
  rounds: { type: "string", default: "5" },
});
const MESSAGES = Number(values.messages);
const ROUNDS = Number(values.rounds);
if (!Number.isInteger(MESSAGES) || MESSAGES < 1 || !Number.isInteger(ROUNDS) || ROUNDS < 1) {
  throw new RangeError(`Cannot use --messages "${values.messages}" --rounds "${values.rounds}"`);
}
const payload = new Uint8Array(160).map((_, i) => (i * 7) & 0xff).toBase64();
const message = `{"event":"media","sequenceNumber":"42","streamSid":"MZ${
  "0".repeat(32)
}","media":{"track":"inbound","chunk":"41","timestamp":"820","payload":"${payload}"}}`;
const scope = { sid: () => "CA" + "0".repeat(32), fail: () => {} };
let sink = 0;
const handle = (data: string) => {
  const parsed = parseInbound(data, { maxBytes: 65536 });
  if (parsed.ok) sink++;
};
const noop = (_data: string) => {
  sink++;
};

function nsPerMessage(run: () => void): number {
  const started = performance.now();
  run();
  return (performance.now() - started) * 1e6 / MESSAGES;
}

const cases: Record<string, () => void> = {
  "scope only (inCallScope around a no-op)": () => {
    for (let i = 0; i < MESSAGES; i++) inCallScope(scope, noop, message);
  },
  "no-op, direct": () => {
    for (let i = 0; i < MESSAGES; i++) noop(message);
  },
  "screen + parse, direct": () => {
    for (let i = 0; i < MESSAGES; i++) handle(message);
  },
  "screen + parse, in the call scope": () => {
    for (let i = 0; i < MESSAGES; i++) inCallScope(scope, handle, message);
  },
};
// Warm up the JIT on every case first.
for (const run of Object.values(cases)) run();
const results: Record<string, number> = {};
for (const [name, run] of Object.entries(cases)) {
  results[name] = median(Array.from({ length: ROUNDS }, () => nsPerMessage(run)));
}
const scopeNs = results["scope only (inCallScope around a no-op)"] -
  results["no-op, direct"];
// 50 inbound messages per second per call.
const corePerCall = scopeNs * 50 / 1e9 * 100;
console.log("| case | ns per message |\n|---|---|");
for (const [name, ns] of Object.entries(results)) console.log(`| ${name} | ${ns.toFixed(0)} |`);
console.log(`| scope overhead | ${scopeNs.toFixed(0)} |`);
console.log(`| scope overhead, % of a core per call (50 msg/s) | ${corePerCall.toFixed(5)} |`);
console.log(JSON.stringify({
  bench: "containment",
  messages: MESSAGES,
  rounds: ROUNDS,
  ns_per_message: results,
  scope_overhead_ns: scopeNs,
  scope_core_percent_per_call: corePerCall,
  deno: Deno.version.deno,
  sink,
}));
