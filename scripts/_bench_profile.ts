/**
 * CPU profile of a running Deno process started with `--inspect=127.0.0.1:PORT`, through the V8
 * inspector (Chrome DevTools Protocol `Profiler` domain): samples for `--seconds`, writes the
 * `.cpuprofile` (open it in Chrome DevTools) and prints the top functions by self time.
 *
 *   deno run -A scripts/_bench_profile.ts --port 9229 --seconds 10 [--out kav.cpuprofile]
 */
import { readCommandLine } from "../src/command_line.ts";

interface ProfileNode {
  readonly id: number;
  readonly callFrame: {
    readonly functionName: string;
    readonly url: string;
    readonly lineNumber: number;
  };
  readonly children?: readonly number[];
}

interface Profile {
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
  readonly startTime: number;
  readonly endTime: number;
}

/** Self time per function (ms) and share of the profile, highest first. */
export function topFunctions(
  profile: Profile,
  limit: number,
): { name: string; where: string; selfMs: number; pct: number }[] {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i];
    self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  const totals = new Map<string, { name: string; where: string; us: number }>();
  for (const [id, us] of self) {
    const frame = byId.get(id)?.callFrame;
    if (frame === undefined) continue;
    const where = `${frame.url.replace(/^.*\/(src|scripts|tests|node_modules)\//, "$1/")}:${
      frame.lineNumber + 1
    }`;
    const name = frame.functionName || "(anonymous)";
    const key = `${name} ${where}`;
    const entry = totals.get(key) ?? { name, where, us: 0 };
    entry.us += us;
    totals.set(key, entry);
  }
  const all = profile.endTime - profile.startTime;
  return [...totals.values()].sort((a, b) => b.us - a.us).slice(0, limit).map((e) => ({
    name: e.name,
    where: e.where,
    selfMs: Math.round(e.us / 100) / 10,
    pct: Math.round((1000 * e.us) / all) / 10,
  }));
}

if (import.meta.main) {
  const { values } = readCommandLine(Deno.args, {
    port: { type: "string", default: "9229" },
    seconds: { type: "string", default: "10" },
    out: { type: "string", default: "kav.cpuprofile" },
  });
  const port = values.port;
  const seconds = Number(values.seconds);
  const out = values.out;
  const targets = await (await fetch(`http://127.0.0.1:${port}/json`)).json() as {
    webSocketDebuggerUrl: string;
  }[];
  const socket = new WebSocket(targets[0].webSocketDebuggerUrl);
  await new Promise((resolve) => socket.addEventListener("open", resolve, { once: true }));
  let id = 0;
  const pending = new Map<number, (result: unknown) => void>();
  socket.addEventListener("message", (e) => {
    const message = JSON.parse(e.data as string) as { id?: number; result?: unknown };
    if (message.id !== undefined) pending.get(message.id)?.(message.result);
  });
  const call = (method: string, params: Record<string, unknown> = {}) =>
    new Promise<unknown>((resolve) => {
      pending.set(++id, resolve);
      socket.send(JSON.stringify({ id, method, params }));
    });
  await call("Profiler.enable");
  await call("Profiler.setSamplingInterval", { interval: 500 });
  await call("Profiler.start");
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  const { profile } = await call("Profiler.stop") as { profile: Profile };
  socket.close();
  await Deno.writeTextFile(out, JSON.stringify(profile));
  console.log(`wrote ${out}`);
  for (const f of topFunctions(profile, 40)) {
    console.log(
      `${String(f.pct).padStart(5)}%  ${String(f.selfMs).padStart(8)} ms  ${f.name}  ${f.where}`,
    );
  }
}
