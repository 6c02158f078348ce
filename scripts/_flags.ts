/** Command-line flags of the scripts: `--name value` or `--name=value`, read one at a time. */

export interface Flag {
  /** The flag as typed, before any `=`. */
  readonly name: string;
  /** The whole argument, for error messages. */
  readonly raw: string;
  /** The flag's value (after `=`, else the next argument); throws RangeError when missing. */
  value(): string;
}

/** `argv` without the bare `--` that `deno task NAME -- ARGS` hands to the script. */
export function taskArgs(argv: readonly string[]): string[] {
  return argv.filter((arg) => arg !== "--");
}

/** Yields each flag; calling `value()` on one consumes the argument after it when needed. */
export function* readFlags(all: readonly string[]): Generator<Flag> {
  const argv = taskArgs(all);
  for (let i = 0; i < argv.length; i++) {
    const raw = argv[i];
    const eq = raw.indexOf("=");
    const name = eq < 0 ? raw : raw.slice(0, eq);
    const inline = eq < 0 ? null : raw.slice(eq + 1);
    yield {
      name,
      raw,
      value(): string {
        const v = inline ?? argv[++i];
        if (v === undefined || v === "") throw new RangeError(`Missing a value after ${name}`);
        return v;
      },
    };
  }
}
