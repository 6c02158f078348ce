/**
 * The free-form parts of SPEC 6: `[call.transfer]` (department names are the operator's) and the
 * `[[tools]]` array, each tool's `parameters` a JSON Schema compiled with ajv. Problems name the
 * key (`tools[2].url`, 1-based) and its line, like every other config problem.
 */
import type { ConfigProblem } from "../errors.ts";
import { compileSchema } from "../json_schema.ts";
import type { ToolConfig } from "./types.ts";
import { indexArrayEntries, lineOf } from "./_lines.ts";
import { checkHttpUrl } from "./_urls.ts";
import { describe, isTable } from "./_validate.ts";

/** Names the built-in tools take; an operator tool may not. */
export const BUILTIN_TOOL_NAMES: ReadonlySet<string> = new Set(["end_call", "transfer_call"]);
const TOOL_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const E164 = /^\+[1-9]\d{6,14}$/;
const SIP_URI = /^sips?:[^\s<>"@]+@[^\s<>"]+$/;
const TOOL_KEYS = new Set(["name", "description", "url", "timeout_ms", "filler", "parameters"]);
const DEFAULT_TOOL_TIMEOUT_MS = 4000;
const EMPTY_PARAMETERS = Object.freeze({ type: "object", properties: {} });

export interface AgentActs {
  readonly transfer: Readonly<Record<string, string>>;
  readonly tools: readonly ToolConfig[];
  readonly problems: readonly ConfigProblem[];
}

/** Validates `call.transfer` and `tools` of the parsed `tree`; `source` gives the lines. */
export function validateAgentActs(
  tree: Record<string, unknown>,
  source: string,
  lines: ReadonlyMap<string, number>,
): AgentActs {
  const problems: ConfigProblem[] = [];
  const call = isTable(tree.call) ? tree.call : {};
  const transfer = validateTransfer(call.transfer, lines, problems);
  const tools = validateTools(tree.tools, source, lines, problems);
  return { transfer, tools, problems };
}

function validateTransfer(
  value: unknown,
  lines: ReadonlyMap<string, number>,
  problems: ConfigProblem[],
): Record<string, string> {
  const out: Record<string, string> = {};
  if (value === undefined) return out;
  const problem = (key: string, message: string) =>
    problems.push({ key, line: lineOf(lines, key), message });
  if (!isTable(value)) {
    problem("call.transfer", `must be a table: current value is ${describe(value)}`);
    return out;
  }
  for (const [department, target] of Object.entries(value)) {
    const key = `call.transfer.${department}`;
    if (department.trim() === "" || department.length > 64) {
      problem(key, "department names must be 1-64 characters");
    } else if (typeof target !== "string") {
      problem(key, `must be a string: current value is ${describe(target)}`);
    } else if (!E164.test(target) && !SIP_URI.test(target)) {
      problem(
        key,
        `must be a number in E.164 form ("+97231234567") or a SIP URI ("sip:support@pbx.example.com"): current value is ${
          JSON.stringify(target)
        }`,
      );
    } else out[department] = target;
  }
  return out;
}

function validateTools(
  value: unknown,
  source: string,
  fileLines: ReadonlyMap<string, number>,
  problems: ConfigProblem[],
): ToolConfig[] {
  if (value === undefined) return [];
  const entries = indexArrayEntries(source, "tools");
  if (!Array.isArray(value)) {
    problems.push({
      key: "tools",
      line: lineOf(fileLines, "tools"),
      message: `must be an array of tables ([[tools]]): current value is ${describe(value)}`,
    });
    return [];
  }
  const tools: ToolConfig[] = [];
  const names = new Set<string>();
  value.forEach((entry: unknown, i) => {
    const lines = entries[i] ?? new Map<string, number>();
    const at = (key: string): number | null => {
      const parts = key.split(".");
      for (let n = parts.length; n > 0; n--) {
        const line = lines.get(parts.slice(0, n).join("."));
        if (line !== undefined) return line;
      }
      return lines.get("") ?? null;
    };
    const before = problems.length;
    const problem = (key: string, message: string) =>
      problems.push({
        key: `tools[${i + 1}]${key === "" ? "" : "." + key}`,
        line: at(key),
        message,
      });
    if (!isTable(entry)) {
      problem("", `must be a table: current value is ${describe(entry)}`);
      return;
    }
    for (const key of Object.keys(entry)) {
      if (!TOOL_KEYS.has(key)) problem(key, "unknown key");
    }
    const name = entry.name;
    if (typeof name !== "string" || !TOOL_NAME.test(name)) {
      problem(
        "name",
        name === undefined
          ? "is required"
          : `must be 1-64 letters, digits, "_" or "-": current value is ${describe(name)}`,
      );
    } else if (BUILTIN_TOOL_NAMES.has(name)) {
      problem("name", `${JSON.stringify(name)} is a built-in tool: choose another name`);
    } else if (names.has(name)) {
      problem("name", `${JSON.stringify(name)} is already the name of another tool`);
    } else names.add(name);
    const description = entry.description;
    if (typeof description !== "string" || description.trim() === "") {
      problem(
        "description",
        description === undefined ? "is required" : "must be a non-empty string",
      );
    }
    const url = entry.url;
    if (typeof url !== "string") {
      problem(
        "url",
        url === undefined ? "is required" : `must be a string: current value is ${describe(url)}`,
      );
    } else {
      const message = checkHttpUrl(url);
      if (message !== null) problem("url", message);
    }
    const timeout = entry.timeout_ms ?? DEFAULT_TOOL_TIMEOUT_MS;
    if (
      typeof timeout !== "number" || !Number.isInteger(timeout) || timeout < 100 || timeout > 60_000
    ) {
      problem(
        "timeout_ms",
        `must be a whole number between 100 and 60000: current value is ${describe(timeout)}`,
      );
    }
    const filler = entry.filler ?? "";
    if (typeof filler !== "string") {
      problem("filler", `must be a string: current value is ${describe(filler)}`);
    }
    const parameters = entry.parameters ?? EMPTY_PARAMETERS;
    if (!isTable(parameters)) {
      problem(
        "parameters",
        `must be a table (a JSON Schema): current value is ${describe(parameters)}`,
      );
    } else if (parameters.type !== "object") {
      problem(
        "parameters",
        'must be a JSON Schema with type = "object" (the arguments are an object)',
      );
    } else {
      const bad = findNonJson(parameters);
      if (bad !== null) {
        problem(`parameters${bad.path}`, `must be JSON data: current value is ${bad.what}`);
      } else {
        try {
          compileSchema(parameters);
        } catch (error) {
          problem("parameters", `is not a valid JSON Schema: ${(error as Error).message}`);
        }
      }
    }
    if (problems.length > before) return;
    tools.push({
      name: name as string,
      description: (description as string).trim(),
      url: url as string,
      timeout_ms: timeout as number,
      filler: (filler as string).trim() === "" ? null : (filler as string).trim(),
      // Plain JSON (smol-toml gives null-prototype objects).
      parameters: JSON.parse(JSON.stringify(parameters)),
    });
  });
  return tools;
}

/** The first value in a TOML tree that JSON cannot carry (a date), with its path. */
function findNonJson(value: unknown, path = ""): { path: string; what: string } | null {
  if (value instanceof Date) return { path, what: describe(value) };
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findNonJson(value[i], path);
      if (found !== null) return found;
    }
  } else if (typeof value === "object" && value !== null) {
    for (const [key, child] of Object.entries(value)) {
      const found = findNonJson(child, `${path}.${key}`);
      if (found !== null) return found;
    }
  }
  return null;
}
