/** `server.workers = 0`: the cores Kav may use, from affinity, cgroup quotas and the runtime. */
import assert from "node:assert/strict";
import {
  affinityFromStatus,
  availableCores,
  cgroupQuota,
  parseCpuList,
  quotaFromCfs,
  quotaFromCpuMax,
} from "../src/runtime/cores.ts";

function files(map: Record<string, string>): (path: string) => string | null {
  return (path) => map[path] ?? null;
}

Deno.test("parseCpuList() counts ranges and singles, and refuses what it cannot read", () => {
  assert.equal(parseCpuList("0-1"), 2);
  assert.equal(parseCpuList("0-3,8,10-11\n"), 7);
  assert.equal(parseCpuList("5"), 1);
  for (const bad of ["", "a-b", "3-1", "0,,1", "1-"]) assert.equal(parseCpuList(bad), null, bad);
});

Deno.test("affinityFromStatus() reads Cpus_allowed_list", () => {
  const status = "Name:\tdeno\nCpus_allowed:\t5\nCpus_allowed_list:\t0,2\nMems_allowed:\t1\n";
  assert.equal(affinityFromStatus(status), 2);
  assert.equal(affinityFromStatus("Name:\tdeno\n"), null);
});

Deno.test("quotas: cgroup v2 cpu.max and v1 CFS, 'max' and -1 meaning none", () => {
  assert.equal(quotaFromCpuMax("150000 100000\n"), 1.5);
  assert.equal(quotaFromCpuMax("max 100000"), null);
  assert.equal(quotaFromCfs("200000\n", "100000\n"), 2);
  assert.equal(quotaFromCfs("-1", "100000"), null);
});

Deno.test("cgroupQuota() takes the tightest quota of the cgroup and its ancestors (v2)", () => {
  const read = files({
    "/proc/self/cgroup": "0::/system.slice/kav.service\n",
    "/sys/fs/cgroup/system.slice/kav.service/cpu.max": "max 100000",
    "/sys/fs/cgroup/system.slice/cpu.max": "300000 100000",
  });
  assert.equal(cgroupQuota(read), 3);
  const none = files({ "/proc/self/cgroup": "0::/user.slice\n" });
  assert.equal(cgroupQuota(none), null);
  assert.equal(cgroupQuota(files({})), null, "unreadable: no quota known");
});

Deno.test("cgroupQuota() reads the v1 cpu controller, and a namespaced path's mount root", () => {
  const read = files({
    "/proc/self/cgroup": "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n0::/\n",
    "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "150000",
    "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
  });
  assert.equal(cgroupQuota(read), 1.5);
});

Deno.test("availableCores() is the lowest limit, a quota counted in whole cores, at least 1", () => {
  const status = (list: string) => `Cpus_allowed_list:\t${list}\n`;
  const v2 = (max: string) => ({
    "/proc/self/cgroup": "0::/kav\n",
    "/sys/fs/cgroup/kav/cpu.max": max,
  });
  assert.deepEqual(
    availableCores(files({ "/proc/self/status": status("0-7"), ...v2("max 100000") }), 8),
    { cores: 8, affinity: 8, quota: null, runtime: 8 },
  );
  assert.equal(availableCores(files({ "/proc/self/status": status("2-3") }), 8).cores, 2);
  assert.equal(
    availableCores(files({ "/proc/self/status": status("0-7"), ...v2("250000 100000") }), 8).cores,
    2,
    "2.5 cores of quota run 2 workers",
  );
  assert.equal(availableCores(files(v2("50000 100000")), 8).cores, 1, "half a core: one worker");
  assert.equal(availableCores(files({}), 3).cores, 3, "nothing readable: the runtime's count");
});

Deno.test("availableCores() on this machine agrees with the runtime under taskset", async () => {
  const here = availableCores();
  assert.ok(here.cores >= 1 && here.cores <= here.runtime, JSON.stringify(here));
  const taskset = await new Deno.Command("taskset", { args: ["--version"] }).output()
    .then((o) => o.success, () => false);
  if (!taskset || here.runtime < 2) return;
  const script = `import { availableCores } from "${
    new URL("../src/runtime/cores.ts", import.meta.url).href
  }"; console.log(JSON.stringify(availableCores()));`;
  const out = await new Deno.Command("taskset", {
    args: ["-c", "0", Deno.execPath(), "eval", "--no-config", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const pinned = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.equal(pinned.cores, 1);
  assert.equal(pinned.affinity, 1);
});
