import assert from "node:assert/strict";
import { readCommandLine, splitCommandLine, taskArgs } from "../src/command_line.ts";

const OPTIONS = {
  port: { type: "string", short: "p" },
  json: { type: "boolean" },
  "kav-flag": { type: "string", multiple: true },
  "no-pin": { type: "boolean" },
} as const;

Deno.test("taskArgs() drops every bare -- that deno task passes on", () => {
  assert.deepEqual(taskArgs(["--", "--port", "1", "--"]), ["--port", "1"]);
  assert.deepEqual(taskArgs([]), []);
});

Deno.test("readCommandLine() reads --name value, --name=value, -n value and repeated options", () => {
  const line = readCommandLine(
    ["--", "--port", "9000", "--json", "--kav-flag", "--v8-flags=--trace-gc", "--kav-flag=-A"],
    OPTIONS,
  );
  assert.deepEqual({ ...line.values }, {
    port: "9000",
    json: true,
    "kav-flag": ["--v8-flags=--trace-gc", "-A"],
  });
  assert.deepEqual(line.positionals, []);
  assert.equal(readCommandLine(["-p", "-1"], OPTIONS).values.port, "-1");
  assert.equal(readCommandLine(["--port=7"], OPTIONS).values.port, "7");
  assert.equal(readCommandLine(["--no-pin"], OPTIONS).values["no-pin"], true);
  const withPositionals = readCommandLine(["CA1", "--json"], OPTIONS, { positionals: true });
  assert.deepEqual(withPositionals.positionals, ["CA1"]);
});

Deno.test("readCommandLine() names the bad option or argument in a RangeError", () => {
  const cases: [string[], RegExp][] = [
    [["--bogus"], /^Cannot use option "--bogus"$/],
    [["-x"], /^Cannot use option "-x"$/],
    [["--port"], /^Cannot use --port: a value is required$/],
    [["--port="], /^Cannot use --port: a value is required$/],
    [["--port", ""], /^Cannot use --port: a value is required$/],
    [["--json=yes"], /^Cannot use --json: it takes no value$/],
    [["extra"], /^Cannot use "extra"$/],
  ];
  for (const [argv, message] of cases) {
    assert.throws(
      () => readCommandLine(argv, OPTIONS),
      { name: "RangeError", message },
      argv.join(" "),
    );
  }
});

Deno.test("splitCommandLine() takes its options anywhere and leaves the rest in order", () => {
  const options = { config: { type: "string", short: "c" }, help: { type: "boolean" } } as const;
  assert.deepEqual(
    splitCommandLine(["calls", "--", "--config", "k.toml", "--since", "1h", "--limit=5"], options),
    { values: { config: "k.toml" }, rest: ["calls", "--since", "1h", "--limit=5"] },
  );
  assert.deepEqual(splitCommandLine(["-c", "a.toml", "serve", "--help"], options), {
    values: { config: "a.toml", help: true },
    rest: ["serve"],
  });
  assert.throws(
    () => splitCommandLine(["--config"], options),
    /^RangeError: Cannot use --config: a value is required$/,
  );
  assert.throws(() => splitCommandLine(["--help=1"], options), /it takes no value/);
});
