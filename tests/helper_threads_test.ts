import assert from "node:assert/strict";
import { lowerHelperThreads, type ThreadSystem } from "../src/runtime/helper_threads.ts";
import { ignoredWhen, NOT_LINUX } from "./support/requires.ts";

/** A process with the given threads (tid → name) and nice values. */
function fakeSystem(
  names: Record<number, string>,
  options: { nice?: number; failSet?: boolean; noProc?: boolean } = {},
): ThreadSystem & { nice: Map<number, number> } {
  const nice = new Map(Object.keys(names).map((tid) => [Number(tid), options.nice ?? 0]));
  return {
    nice,
    threadIds() {
      if (options.noProc) throw new Deno.errors.NotFound("No such file: /proc/self/task");
      return [...nice.keys()];
    },
    threadName: (tid) => names[tid] ?? null,
    getNice: (tid) => nice.get(tid === 0 ? 100 : tid) ?? 0,
    setNice(tid, value) {
      if (options.failSet) throw new Error("Operation not permitted");
      nice.set(tid, value);
    },
  };
}

/** The module under test, as a subprocess imports it. */
const MODULE = JSON.stringify(new URL("../src/runtime/helper_threads.ts", import.meta.url).href);

const DENO_THREADS = {
  100: "deno",
  101: "V8 DefaultWorke",
  102: "V8 DefaultWorke",
  103: "tokio-runtime-w",
  104: "worker-1",
};

Deno.test("helper threads: only V8's helpers are lowered, relative to the process", () => {
  const system = fakeSystem(DENO_THREADS, { nice: -5 });
  assert.deepEqual(lowerHelperThreads(10, system), { ok: true, threads: 2, nice: 5 });
  assert.deepEqual([...system.nice], [[100, -5], [101, 5], [102, 5], [103, -5], [104, -5]]);
});

Deno.test("helper threads: the nice value stops at 19", () => {
  const system = fakeSystem(DENO_THREADS, { nice: 15 });
  assert.deepEqual(lowerHelperThreads(10, system), { ok: true, threads: 2, nice: 19 });
});

Deno.test("helper threads: 0 leaves every thread alone", () => {
  const system = fakeSystem(DENO_THREADS);
  const result = lowerHelperThreads(0, system);
  assert.equal(result.ok, false);
  assert.deepEqual([...system.nice.values()], [0, 0, 0, 0, 0]);
});

Deno.test("helper threads: no /proc, no permission or no helpers give a reason, not a throw", () => {
  const noProc = lowerHelperThreads(10, fakeSystem(DENO_THREADS, { noProc: true }));
  assert.equal(noProc.ok, false);
  assert.match(noProc.ok ? "" : noProc.reason, /cannot read or set thread priorities.*proc/);
  const denied = lowerHelperThreads(10, fakeSystem(DENO_THREADS, { failSet: true }));
  assert.match(denied.ok ? "" : denied.reason, /not permitted/);
  const none = lowerHelperThreads(10, fakeSystem({ 100: "deno" }));
  assert.deepEqual(none, { ok: false, reason: "no V8 helper threads found" });
});

Deno.test("helper threads: an increment outside 0-19 is refused", () => {
  assert.throws(() => lowerHelperThreads(20, fakeSystem(DENO_THREADS)), RangeError);
  assert.throws(() => lowerHelperThreads(-1, fakeSystem(DENO_THREADS)), RangeError);
  assert.throws(() => lowerHelperThreads(1.5, fakeSystem(DENO_THREADS)), RangeError);
});

Deno.test({
  ...ignoredWhen(
    "helper threads: a real Deno process gets its V8 helpers lowered, its main thread not",
    NOT_LINUX,
  ),
  async fn() {
    const program = `
      import { lowerHelperThreads } from ${MODULE};
      const result = lowerHelperThreads(7);
      const threads = [];
      for (const entry of Deno.readDirSync("/proc/self/task")) {
        const dir = "/proc/self/task/" + entry.name;
        const stat = Deno.readTextFileSync(dir + "/stat");
        const nice = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]);
        threads.push({ tid: Number(entry.name), name: Deno.readTextFileSync(dir + "/comm").trim(), nice });
      }
      console.log(JSON.stringify({ pid: Deno.pid, result, threads }));
    `;
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", program],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    const report = JSON.parse(new TextDecoder().decode(output.stdout)) as {
      pid: number;
      result: { ok: boolean; threads: number; nice: number };
      threads: { tid: number; name: string; nice: number }[];
    };
    const main = report.threads.find((t) => t.tid === report.pid);
    const helpers = report.threads.filter((t) => t.name.startsWith("V8 "));
    assert.ok(main !== undefined && helpers.length > 0, JSON.stringify(report.threads));
    assert.deepEqual(report.result, { ok: true, threads: helpers.length, nice: main.nice + 7 });
    for (const helper of helpers) assert.equal(helper.nice, Math.min(19, main.nice + 7));
    for (const other of report.threads.filter((t) => !t.name.startsWith("V8 "))) {
      assert.equal(other.nice, main.nice, `${other.name} kept its priority`);
    }
  },
});

Deno.test({
  ...ignoredWhen(
    "helper threads: without --allow-all Deno refuses /proc/self, and nothing changes",
    NOT_LINUX,
  ),
  async fn() {
    const program = `
      import { lowerHelperThreads } from ${MODULE};
      console.log(JSON.stringify(lowerHelperThreads(10)));
    `;
    const dir = await Deno.makeTempDir();
    const path = `${dir}/lower.ts`;
    await Deno.writeTextFile(path, program);
    const src = new URL("../src/", import.meta.url).pathname;
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", `--allow-read=${src},${dir}`, "--allow-sys", path],
      stdout: "piped",
      stderr: "piped",
    }).output();
    await Deno.remove(dir, { recursive: true });
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    const result = JSON.parse(new TextDecoder().decode(output.stdout));
    assert.equal(result.ok, false);
    assert.equal(result.reason, "not permitted: Deno reads /proc/self only with --allow-all");
  },
});
