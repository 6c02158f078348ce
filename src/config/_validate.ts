/** Checks a parsed TOML tree against the schema: one problem per bad key, defaults for the rest. */

import type { ConfigProblem } from "../errors.ts";
import { lineOf } from "./_lines.ts";
import {
  type ConfigValue,
  FREE_FORM_KEYS,
  type Rule,
  SCHEMA,
  SECRET_KEYS,
  TABLES,
} from "./_schema.ts";

export interface Validated {
  /** One entry per schema key (dotted path), defaults filled in. */
  readonly values: ReadonlyMap<string, ConfigValue>;
  readonly problems: readonly ConfigProblem[];
}

export function isTable(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === null || proto === Object.prototype;
}

export function describe(value: unknown): string {
  if (isTable(value)) return "a table";
  if (Array.isArray(value)) return "an array";
  if (value instanceof Date) return `a date (${value.toISOString()})`;
  const text = typeof value === "string" ? JSON.stringify(value) : String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Returns the value to keep, or a problem message. */
function applyRule(rule: Rule, value: unknown): { ok: true; value: ConfigValue } | {
  ok: false;
  message: string;
} {
  const current = `current value is ${describe(value)}`;
  switch (rule.kind) {
    case "int":
    case "number": {
      if (typeof value !== "number" || !Number.isFinite(value)) {
        return { ok: false, message: `must be a number: ${current}` };
      }
      if (rule.kind === "int" && !Number.isInteger(value)) {
        return { ok: false, message: `must be a whole number: ${current}` };
      }
      if (value < rule.min || value > rule.max) {
        return { ok: false, message: `must be between ${rule.min} and ${rule.max}: ${current}` };
      }
      return { ok: true, value };
    }
    case "bool":
      return typeof value === "boolean"
        ? { ok: true, value }
        : { ok: false, message: `must be true or false: ${current}` };
    case "string":
    case "nullable_string": {
      if (typeof value !== "string") {
        return { ok: false, message: `must be a string: ${current}` };
      }
      if (rule.kind === "nullable_string" && value === "") return { ok: true, value: null };
      const message = rule.check?.(value) ?? null;
      return message === null ? { ok: true, value } : { ok: false, message };
    }
    case "enum":
      return typeof value === "string" && rule.values.includes(value) ? { ok: true, value } : {
        ok: false,
        message: `must be one of ${
          rule.values.map((v) => JSON.stringify(v)).join(", ")
        }: ${current}`,
      };
    default: {
      const unreachable: never = rule;
      throw new TypeError(`Cannot apply config rule ${JSON.stringify(unreachable)}`);
    }
  }
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j] + 1,
        current[j - 1] + 1,
        previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length];
}

/** A known key or table in the same table within two edits of `key`, for typos. */
function closestKey(key: string): string | null {
  const cut = key.lastIndexOf(".");
  const prefix = key.slice(0, cut + 1);
  let best: string | null = null;
  let bestDistance = 3;
  for (const known of [...SCHEMA.keys(), ...TABLES, ...FREE_FORM_KEYS]) {
    if (!known.startsWith(prefix) || known.slice(prefix.length).includes(".")) continue;
    const distance = editDistance(key.slice(prefix.length), known.slice(prefix.length));
    if (distance < bestDistance) [best, bestDistance] = [known, distance];
  }
  return best;
}

/** Walks `tree` (from smol-toml) and returns every schema key's value, or the problems found. */
export function validateTree(
  tree: Record<string, unknown>,
  lines: ReadonlyMap<string, number>,
): Validated {
  const problems: ConfigProblem[] = [];
  const values = new Map<string, ConfigValue>();
  const problem = (key: string, message: string) =>
    problems.push({ key, line: lineOf(lines, key), message });

  const walk = (table: Record<string, unknown>, prefix: string) => {
    for (const name of Object.keys(table)) {
      const key = prefix === "" ? name : `${prefix}.${name}`;
      const value = table[name];
      const rule = SCHEMA.get(key);
      const secret = SECRET_KEYS.get(key);
      if (FREE_FORM_KEYS.has(key)) {
        // Validated by `_agent_acts.ts`.
      } else if (rule) {
        const result = applyRule(rule, value);
        if (result.ok) values.set(key, result.value);
        else problem(key, result.message);
      } else if (secret) {
        problem(
          key,
          `is not read from the file: set env ${secret.env} or the systemd credential ${secret.credential}`,
        );
      } else if (TABLES.has(key)) {
        if (isTable(value)) walk(value, key);
        else problem(key, `must be a table: current value is ${describe(value)}`);
      } else {
        const guess = closestKey(key);
        problem(key, guess === null ? "unknown key" : `unknown key: did you mean ${guess}?`);
      }
    }
  };
  walk(tree, "");

  for (const [key, rule] of SCHEMA) {
    if (values.has(key) || problems.some((p) => p.key === key)) continue;
    if (rule.default === null && rule.kind === "string") problem(key, "is required");
    else values.set(key, rule.default);
  }
  problems.sort((a, b) => (a.line ?? Infinity) - (b.line ?? Infinity));
  return { values, problems };
}
