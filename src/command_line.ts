/**
 * Command-line parsing for `main.ts` and every script: `node:util`'s `parseArgs`, with what Kav's
 * commands need around it:
 * - every bare `--` is dropped, because `deno task NAME -- ARGS` hands it on to the script (no Kav
 *   command takes an argument that starts with `-` and comes after the options);
 * - a string option takes the next argument as its value even when that starts with `-`
 *   (`--kav-flag --v8-flags=--trace-gc`), as `--name=value` does; an empty value is missing;
 * - a bad command line is a `RangeError` that names the option or argument.
 */
import { parseArgs, type ParseArgsOptionsConfig } from "node:util";

export type { ParseArgsOptionsConfig as OptionsConfig };

/** `argv` without the bare `--` that `deno task NAME -- ARGS` passes on. */
export function taskArgs(argv: readonly string[]): string[] {
  return argv.filter((arg) => arg !== "--");
}

/**
 * Parses `argv` against `options` (strict: unknown options and, unless `positionals`, positional
 * arguments are refused).
 * @throws RangeError naming the bad option or argument.
 */
export function readCommandLine<const O extends ParseArgsOptionsConfig>(
  argv: readonly string[],
  options: O,
  settings: { readonly positionals?: boolean } = {},
) {
  const args = joinValues(taskArgs(argv), options);
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options,
      strict: true,
      allowPositionals: settings.positionals,
      tokens: true,
    });
  } catch (error) {
    throw asRangeError(error);
  }
  for (const token of parsed.tokens) {
    if (token.kind === "option" && token.value === "") throw missingValue(token.rawName);
  }
  return { values: parsed.values, positionals: parsed.positionals };
}

/**
 * Takes `options` out of `argv` wherever they appear and leaves everything else, in order, for a
 * subcommand to parse (`kav calls --config FILE --since 1h`).
 * @throws RangeError when one of `options` has no value, or a value it does not take.
 */
export function splitCommandLine<const O extends ParseArgsOptionsConfig>(
  argv: readonly string[],
  options: O,
): { values: { [K in keyof O]?: string | boolean }; rest: string[] } {
  const args = joinValues(taskArgs(argv), options);
  const { tokens } = parseArgs({
    args,
    options,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  const values: { [K in keyof O]?: string | boolean } = {};
  const rest: string[] = [];
  for (const token of tokens) {
    if (token.kind === "positional") {
      rest.push(token.value);
    } else if (token.kind === "option") {
      const spec = Object.hasOwn(options, token.name) ? options[token.name] : undefined;
      if (spec === undefined) {
        rest.push(token.inlineValue ? `${token.rawName}=${token.value}` : token.rawName);
      } else if (spec.type === "string") {
        if (token.value === undefined || token.value === "") throw missingValue(token.rawName);
        values[token.name as keyof O] = token.value;
      } else {
        if (token.inlineValue) throw takesNoValue(token.rawName);
        values[token.name as keyof O] = true;
      }
    }
  }
  return { values, rest };
}

/** `--name VALUE` and `-n VALUE` → `--name=VALUE` for string options (see the module comment). */
function joinValues(argv: readonly string[], options: ParseArgsOptionsConfig): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const name = optionNamed(argv[i], options);
    if (name !== null && options[name].type === "string" && i + 1 < argv.length) {
      out.push(`--${name}=${argv[++i]}`);
    } else {
      out.push(argv[i]);
    }
  }
  return out;
}

function optionNamed(arg: string, options: ParseArgsOptionsConfig): string | null {
  if (arg.startsWith("--")) {
    const name = arg.slice(2);
    return Object.hasOwn(options, name) ? name : null;
  }
  if (arg.length === 2 && arg[0] === "-") {
    for (const [name, spec] of Object.entries(options)) if (spec.short === arg[1]) return name;
  }
  return null;
}

function missingValue(option: string): RangeError {
  return new RangeError(`Cannot use ${option}: a value is required`);
}

function takesNoValue(option: string): RangeError {
  return new RangeError(`Cannot use ${option}: it takes no value`);
}

/** `parseArgs`'s errors (TypeErrors with a `code`) as RangeErrors in Kav's wording. */
function asRangeError(error: unknown): unknown {
  if (!(error instanceof TypeError) || !("code" in error)) return error;
  // "Unknown option '--x'", "Option '-x, --x <value>' argument missing", "Unexpected argument 'x'".
  const quoted = /'([^']*)'/.exec(error.message)?.[1] ?? "";
  const words = quoted.split(/[ ,]+/);
  const option = words.find((word) => word.startsWith("--")) ?? words[0];
  switch (error.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return new RangeError(`Cannot use option ${JSON.stringify(option)}`);
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return new RangeError(`Cannot use ${JSON.stringify(quoted)}`);
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return /argument missing/.test(error.message) ? missingValue(option) : takesNoValue(option);
    default:
      return error;
  }
}
