import assert from "node:assert/strict";
import { SdNotifier, sdNotifierFromEnv } from "../src/observe/sd_notify.ts";
import { createLogger } from "../src/observe/log.ts";

/** A local stand-in for systemd's notify socket (SOCK_DGRAM, like /run/systemd/notify). */
class NotifySocket {
  readonly path: string;
  readonly #conn: Deno.DatagramConn;
  readonly #decoder = new TextDecoder();
  // A receive that outlived a timeout is kept for the next call (one receive at a time).
  #pending: Promise<[Uint8Array, Deno.Addr]> | null = null;
  constructor(path: string) {
    this.path = path;
    this.#conn = Deno.listenDatagram({ transport: "unixpacket", path: path.replace(/^@/, "\0") });
  }
  /** Next datagram as text, or rejects after `ms`. */
  async next(ms = 10_000): Promise<string> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`No notify message within ${ms} ms`)), ms);
    });
    try {
      this.#pending ??= this.#conn.receive();
      const [data] = await Promise.race([this.#pending, timeout]);
      this.#pending = null;
      return this.#decoder.decode(data);
    } finally {
      clearTimeout(timer);
    }
  }
  close(): void {
    this.#conn.close();
  }
}

function collectingLogger() {
  const lines: string[] = [];
  return { lines, log: createLogger((line) => lines.push(line)) };
}

Deno.test("sdNotifierFromEnv() is a no-op without NOTIFY_SOCKET", async () => {
  const notifier = sdNotifierFromEnv({ env: () => undefined });
  assert.equal(notifier.enabled, false);
  assert.equal(notifier.watchdogIntervalMs, null);
  await notifier.ready();
  await notifier.watchdog();
  await notifier.status("0 active calls");
  await notifier.stopping({ extendTimeoutMs: 1000 });
  const controller = new AbortController();
  notifier.startWatchdog({ signal: controller.signal, status: () => "x" });
  controller.abort();
  await notifier.close();
});

Deno.test("sdNotifierFromEnv() pings at half WATCHDOG_USEC only for its own pid", () => {
  const env = (pid: string | undefined) => (name: string) =>
    ({ NOTIFY_SOCKET: "/run/systemd/notify", WATCHDOG_USEC: "20000000", WATCHDOG_PID: pid })[
      name
    ];
  const mine = sdNotifierFromEnv({ env: env("4242"), pid: 4242 });
  assert.equal(mine.enabled, true);
  assert.equal(mine.watchdogIntervalMs, 10_000);
  assert.equal(sdNotifierFromEnv({ env: env("1"), pid: 4242 }).watchdogIntervalMs, null);
  assert.equal(sdNotifierFromEnv({ env: env(undefined), pid: 4242 }).watchdogIntervalMs, 10_000);
  const bad = sdNotifierFromEnv({
    env: (n) => ({ NOTIFY_SOCKET: "/x", WATCHDOG_USEC: "soon" })[n],
  });
  assert.equal(bad.watchdogIntervalMs, null);
});

Deno.test("SdNotifier sends READY, STATUS and STOPPING in call order", async () => {
  const dir = await Deno.makeTempDir();
  const socket = new NotifySocket(`${dir}/notify.sock`);
  const notifier = new SdNotifier({ socketPath: socket.path, watchdogUsec: null });
  try {
    // Not awaited one by one: order must hold even when calls overlap.
    void notifier.ready("listening");
    void notifier.status("2 active\ncalls");
    void notifier.stopping({ status: "draining", extendTimeoutMs: 35_000 });
    assert.equal(await socket.next(), "READY=1\nSTATUS=listening");
    assert.equal(await socket.next(), "STATUS=2 active calls");
    assert.equal(
      await socket.next(),
      "STOPPING=1\nSTATUS=draining\nEXTEND_TIMEOUT_USEC=35000000",
    );
  } finally {
    await notifier.close();
    socket.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SdNotifier reaches an abstract NOTIFY_SOCKET given as @name", async () => {
  const socket = new NotifySocket(`@kav-test-${Deno.pid}-${Math.random().toString(16).slice(2)}`);
  const notifier = new SdNotifier({ socketPath: socket.path, watchdogUsec: null });
  try {
    await notifier.watchdog();
    assert.equal(await socket.next(), "WATCHDOG=1");
  } finally {
    await notifier.close();
    socket.close();
  }
});

Deno.test("SdNotifier.startWatchdog() pings with changed status and stops on abort", async () => {
  const dir = await Deno.makeTempDir();
  const socket = new NotifySocket(`${dir}/notify.sock`);
  // 40 ms watchdog ⇒ a ping every 20 ms.
  const notifier = new SdNotifier({ socketPath: socket.path, watchdogUsec: 40_000 });
  const controller = new AbortController();
  let calls = 3;
  try {
    notifier.startWatchdog({ signal: controller.signal, status: () => `${calls} active calls` });
    assert.equal(await socket.next(), "WATCHDOG=1\nSTATUS=3 active calls");
    assert.equal(await socket.next(), "WATCHDOG=1");
    calls = 4;
    let message = await socket.next();
    while (message === "WATCHDOG=1") message = await socket.next();
    assert.equal(message, "WATCHDOG=1\nSTATUS=4 active calls");
    controller.abort();
    await notifier.close();
    // Pings sent before the abort may still be queued; after them, nothing more arrives.
    while (await socket.next(100).then(() => true, () => false));
    await assert.rejects(socket.next(200), /No notify message/);
  } finally {
    controller.abort();
    await notifier.close();
    socket.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SdNotifier.startWatchdog() refreshes STATUS without a watchdog", async () => {
  const dir = await Deno.makeTempDir();
  const socket = new NotifySocket(`${dir}/notify.sock`);
  const notifier = new SdNotifier({ socketPath: socket.path, watchdogUsec: null });
  const controller = new AbortController();
  try {
    notifier.startWatchdog({
      signal: controller.signal,
      status: () => "1 active call",
      statusIntervalMs: 20,
    });
    assert.equal(await socket.next(), "STATUS=1 active call");
    // Unchanged status is not resent.
    await assert.rejects(socket.next(200), /No notify message/);
  } finally {
    controller.abort();
    await notifier.close();
    socket.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SdNotifier logs one error when the notify socket is missing and never throws", async () => {
  const dir = await Deno.makeTempDir();
  const { lines, log } = collectingLogger();
  const notifier = new SdNotifier({ socketPath: `${dir}/absent.sock`, watchdogUsec: null, log });
  try {
    await notifier.ready();
    await notifier.watchdog();
    assert.equal(lines.length, 1);
    assert.match(lines[0], /\[SYSTEMD\] notify failed socket=\S+absent\.sock error=/);
  } finally {
    await notifier.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SdNotifier does nothing after close()", async () => {
  const dir = await Deno.makeTempDir();
  const socket = new NotifySocket(`${dir}/notify.sock`);
  const notifier = new SdNotifier({ socketPath: socket.path, watchdogUsec: null });
  try {
    await notifier.ready();
    assert.equal(await socket.next(), "READY=1");
    await notifier.close();
    await notifier.close();
    await notifier.status("late");
    await assert.rejects(socket.next(200), /No notify message/);
  } finally {
    socket.close();
    await Deno.remove(dir, { recursive: true });
  }
});

// The program main.ts is expected to be: listen, READY=1, watchdog, STOPPING=1 on SIGTERM, exit 0.
const CHILD = `
import { sdNotifierFromEnv } from ${
  JSON.stringify(new URL("../src/observe/sd_notify.ts", import.meta.url).href)
};
const notifier = sdNotifierFromEnv();
const controller = new AbortController();
const server = Deno.serve({ port: 0, hostname: "127.0.0.1", signal: controller.signal, onListen() {} }, () => new Response("ok"));
await notifier.ready();
notifier.startWatchdog({ signal: controller.signal, status: () => "0 active calls" });
Deno.addSignalListener("SIGTERM", async () => {
  await notifier.stopping({ status: "draining" });
  controller.abort();
  await server.finished;
  await notifier.close();
  Deno.exit(0);
});
`;

Deno.test("a child with NOTIFY_SOCKET sends READY=1, then WATCHDOG=1, then STOPPING=1 on SIGTERM", async () => {
  const dir = await Deno.makeTempDir();
  const socket = new NotifySocket(`${dir}/notify.sock`);
  const program = `${dir}/child.ts`;
  await Deno.writeTextFile(program, CHILD);
  const child = new Deno.Command(Deno.execPath(), {
    // The permissions Kav runs with, scoped to this socket instead of /run/systemd/notify.
    args: [
      "run",
      "--no-config",
      "--unstable-net",
      "--allow-net",
      `--allow-read=${dir}`,
      `--allow-write=${socket.path}`,
      "--allow-env=NOTIFY_SOCKET,WATCHDOG_USEC,WATCHDOG_PID",
      program,
    ],
    env: { NOTIFY_SOCKET: socket.path, WATCHDOG_USEC: "300000" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const seen: string[] = [];
  try {
    // Generous: the child type-checks nothing but may start slowly on a loaded machine.
    seen.push(await socket.next(60_000));
    assert.equal(seen[0], "READY=1");
    seen.push(await socket.next());
    assert.match(seen[1], /^WATCHDOG=1(\nSTATUS=0 active calls)?$/);
    child.kill("SIGTERM");
    let message = await socket.next();
    while (message.startsWith("WATCHDOG=1")) message = await socket.next();
    seen.push(message);
    assert.equal(message, "STOPPING=1\nSTATUS=draining");
    const status = await child.status;
    assert.equal(status.code, 0, `child exited ${status.code}`);
  } catch (error) {
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
    await child.status;
    throw error;
  } finally {
    const [out, err] = await Promise.all([child.stdout, child.stderr].map(readAll));
    if (seen.length < 3) console.log(`seen=${JSON.stringify(seen)} stdout=${out} stderr=${err}`);
    socket.close();
    await Deno.remove(dir, { recursive: true });
  }
});

async function readAll(stream: ReadableStream<Uint8Array>): Promise<string> {
  return await new Response(stream).text();
}

Deno.test("SdNotifier logs that --unstable-net is missing instead of throwing", async () => {
  const dir = await Deno.makeTempDir();
  const program = `${dir}/child.ts`;
  const src = (name: string) =>
    JSON.stringify(new URL(`../src/observe/${name}`, import.meta.url).href);
  await Deno.writeTextFile(
    program,
    `import { sdNotifierFromEnv } from ${src("sd_notify.ts")};
import { createLogger } from ${src("log.ts")};
const notifier = sdNotifierFromEnv({ log: createLogger() });
await notifier.ready();
await notifier.close();
console.log("exited normally");
`,
  );
  try {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", `--allow-read=${dir}`, "--allow-env", program],
      env: { NOTIFY_SOCKET: `${dir}/notify.sock` },
    }).output();
    const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
    assert.equal(output.code, 0, text);
    assert.match(text, /\[SYSTEMD\] notify failed .*needs --unstable-net/);
    assert.match(text, /exited normally/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
