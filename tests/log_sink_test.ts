import assert from "node:assert/strict";

const LOG_MODULE = new URL("../src/observe/log.ts", import.meta.url).href;

/** Runs `body` in a fresh Deno with stdout and stderr on one pipe, as journald would get them. */
async function combinedOutput(body: string): Promise<string[]> {
  const script = `import { createLogger } from ${JSON.stringify(LOG_MODULE)};\n${body}`;
  const command = new Deno.Command("sh", {
    args: ["-c", `"${Deno.execPath()}" run --quiet - 2>&1`],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  });
  const child = command.spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(script));
  await writer.close();
  const { stdout } = await child.output();
  return new TextDecoder().decode(stdout).split("\n").filter((line) => line !== "")
    .map((line) => line.replace(/^\S+ /, "")); // drop the timestamp
}

Deno.test("the console sink batches info lines but never lets a warning overtake them", async () => {
  const lines = await combinedOutput(`
    const log = createLogger().child({ call: "CA1" });
    log.info("RX", "first");
    log.info("TX", "second");
    log.error("CALL", "failed");
    log.info("RX", "after");
    await new Promise((resolve) => setTimeout(resolve, 20));
    log.info("RX", "last, then exit");
    Deno.exit(0);
  `);
  assert.deepEqual(lines, [
    "[RX] call=CA1 first",
    "[TX] call=CA1 second",
    "[CALL] call=CA1 failed",
    "[RX] call=CA1 after",
    "[RX] call=CA1 last, then exit",
  ]);
});

Deno.test("the console sink writes out a large burst whole, in order", async () => {
  const lines = await combinedOutput(`
    const log = createLogger();
    for (let i = 0; i < 3000; i++) log.info("RX", "line", { i, pad: "x".repeat(40) });
  `);
  assert.equal(lines.length, 3000);
  assert.ok(lines.every((line, i) => line.startsWith(`[RX] line i=${i} `)));
});
