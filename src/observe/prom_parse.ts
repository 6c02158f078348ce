/**
 * A strict checker for the Prometheus text exposition format 0.0.4, used by tests to hold
 * `renderMetrics()` to the line grammar: `# HELP`/`# TYPE` before a family's samples, families
 * contiguous, valid names, label escapes limited to `\\`, `\"`, `\n`, Go-style floats, no
 * duplicate series, non-negative counters, and complete cumulative histograms. Stricter than
 * Prometheus where the format is lax (single spaces, no trailing label comma).
 */

export type PromType = "counter" | "gauge" | "histogram" | "summary" | "untyped";

export interface PromSample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
  readonly timestamp: number | null;
}

export interface PromFamily {
  readonly name: string;
  type: PromType;
  help: string | null;
  readonly samples: PromSample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const FLOAT = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;
const TYPES: ReadonlySet<string> = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

function parseValue(text: string): number | null {
  if (text === "NaN") return NaN;
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return FLOAT.test(text) ? Number(text) : null;
}

/** Parses `{a="x",b="y"}` starting at `start` (the `{`); returns the labels and the index after `}`. */
function parseLabels(line: string, start: number): { labels: Record<string, string>; end: number } {
  const labels: Record<string, string> = {};
  let i = start + 1;
  if (line[i] === "}") return { labels, end: i + 1 };
  for (;;) {
    const eq = line.indexOf("=", i);
    if (eq < 0) throw new Error("label without '='");
    const name = line.slice(i, eq);
    if (!LABEL_NAME.test(name)) throw new Error(`bad label name "${name}"`);
    if (name.startsWith("__")) throw new Error(`reserved label name "${name}"`);
    if (name in labels) throw new Error(`duplicate label "${name}"`);
    if (line[eq + 1] !== '"') throw new Error(`label "${name}" value is not quoted`);
    let value = "";
    i = eq + 2;
    for (;;) {
      const c = line[i];
      if (c === undefined) throw new Error(`label "${name}" value is not terminated`);
      if (c === '"') break;
      if (c === "\\") {
        const next = line[i + 1];
        if (next === "\\" || next === '"') value += next;
        else if (next === "n") value += "\n";
        else throw new Error(`bad escape "\\${next ?? ""}" in label "${name}"`);
        i += 2;
        continue;
      }
      value += c;
      i++;
    }
    labels[name] = value;
    i++;
    if (line[i] === "}") return { labels, end: i + 1 };
    if (line[i] !== ",") throw new Error("expected ',' or '}' after a label");
    i++;
    if (line[i] === "}") throw new Error("trailing comma in labels");
  }
}

/** HELP text allows only `\\` and `\n` escapes. */
function unescapeHelp(text: string): string {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== "\\") {
      out += text[i];
      continue;
    }
    const next = text[++i];
    if (next === "\\") out += "\\";
    else if (next === "n") out += "\n";
    else throw new Error("bad escape in HELP");
  }
  return out;
}

function parseSample(line: string): PromSample {
  const brace = line.indexOf("{");
  const space = line.indexOf(" ");
  let name: string;
  let labels: Record<string, string> = {};
  let rest: string;
  if (brace >= 0 && (space < 0 || brace < space)) {
    name = line.slice(0, brace);
    const parsed = parseLabels(line, brace);
    labels = parsed.labels;
    rest = line.slice(parsed.end);
  } else {
    if (space < 0) throw new Error("sample without a value");
    name = line.slice(0, space);
    rest = line.slice(space);
  }
  if (!METRIC_NAME.test(name)) throw new Error(`bad metric name "${name}"`);
  if (!rest.startsWith(" ") || rest.startsWith("  ")) {
    throw new Error("expected one space before the value");
  }
  const parts = rest.slice(1).split(" ");
  if (parts.length > 2 || parts.some((p) => p === "")) {
    throw new Error("expected 'value [timestamp]'");
  }
  const value = parseValue(parts[0]);
  if (value === null) throw new Error(`bad value "${parts[0]}"`);
  let timestamp: number | null = null;
  if (parts.length === 2) {
    if (!/^-?\d+$/.test(parts[1])) throw new Error(`bad timestamp "${parts[1]}"`);
    timestamp = Number(parts[1]);
  }
  return { name, labels, value, timestamp };
}

function familyOf(name: string, families: Map<string, PromFamily>): string {
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    if (!name.endsWith(suffix)) continue;
    const base = name.slice(0, -suffix.length);
    const type = families.get(base)?.type;
    if (type === "histogram" || (type === "summary" && suffix !== "_bucket")) return base;
  }
  return name;
}

function seriesKey(sample: PromSample, without?: string): string {
  const keys = Object.keys(sample.labels).filter((k) => k !== without).sort();
  return keys.map((k) => `${k}=${JSON.stringify(sample.labels[k])}`).join(",");
}

function checkHistogram(family: PromFamily): void {
  const groups = new Map<string, PromSample[]>();
  for (const sample of family.samples) {
    const key = seriesKey(sample, "le");
    groups.set(key, [...groups.get(key) ?? [], sample]);
  }
  for (const [key, samples] of groups) {
    const where = `histogram ${family.name}{${key}}`;
    const buckets = samples.filter((s) => s.name === `${family.name}_bucket`);
    let lastLe = -Infinity;
    let lastCount = 0;
    for (const bucket of buckets) {
      const le = bucket.labels.le === undefined ? null : parseValue(bucket.labels.le);
      if (le === null || Number.isNaN(le)) throw new Error(`${where}: bucket without a numeric le`);
      if (le <= lastLe) throw new Error(`${where}: le values not ascending`);
      if (bucket.value < lastCount) throw new Error(`${where}: buckets not cumulative`);
      lastLe = le;
      lastCount = bucket.value;
    }
    if (lastLe !== Infinity) throw new Error(`${where}: no le="+Inf" bucket`);
    const count = samples.find((s) => s.name === `${family.name}_count`);
    if (!count || count.value !== lastCount) throw new Error(`${where}: _count differs from +Inf`);
    if (!samples.some((s) => s.name === `${family.name}_sum`)) throw new Error(`${where}: no _sum`);
  }
}

/** Parses and checks `text`; throws a `SyntaxError` naming the first bad line. */
export function parsePrometheusText(text: string): Map<string, PromFamily> {
  const families = new Map<string, PromFamily>();
  if (text === "") return families;
  if (!text.endsWith("\n")) {
    throw new SyntaxError("Cannot parse metrics: the last line has no newline");
  }
  const lines = text.slice(0, -1).split("\n");
  const closed = new Set<string>();
  const typed = new Set<string>();
  const series = new Set<string>();
  let current: string | null = null;
  const family = (name: string): PromFamily => {
    let found = families.get(name);
    if (!found) families.set(name, found = { name, type: "untyped", help: null, samples: [] });
    return found;
  };
  lines.forEach((line, index) => {
    try {
      if (line.includes("\r")) throw new Error("carriage return");
      if (line === "") return;
      const meta = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
      if (meta) {
        const [, kind, name, rest = ""] = meta;
        if (!METRIC_NAME.test(name)) throw new Error(`bad metric name "${name}"`);
        const f = family(name);
        if (f.samples.length > 0) throw new Error(`${kind} after samples of "${name}"`);
        if (kind === "HELP") {
          if (f.help !== null) throw new Error(`second HELP for "${name}"`);
          f.help = unescapeHelp(rest);
        } else {
          if (!TYPES.has(rest)) throw new Error(`unknown type "${rest}"`);
          if (typed.has(name)) throw new Error(`second TYPE for "${name}"`);
          typed.add(name);
          f.type = rest as PromType;
        }
        return;
      }
      if (line.startsWith("#")) return;
      const sample = parseSample(line);
      const name = familyOf(sample.name, families);
      if (current !== name) {
        if (closed.has(name)) throw new Error(`samples of "${name}" are not contiguous`);
        if (current !== null) closed.add(current);
        current = name;
      }
      const f = family(name);
      const key = `${sample.name}{${seriesKey(sample)}}`;
      if (series.has(key)) throw new Error(`duplicate series ${key}`);
      series.add(key);
      if (f.type === "counter" && !(sample.value >= 0)) throw new Error("negative or NaN counter");
      f.samples.push(sample);
    } catch (error) {
      throw new SyntaxError(
        `Cannot parse metrics line ${index + 1}: ${(error as Error).message}: ${
          JSON.stringify(line)
        }`,
      );
    }
  });
  for (const f of families.values()) {
    if (f.type !== "histogram") continue;
    try {
      checkHistogram(f);
    } catch (error) {
      throw new SyntaxError(`Cannot parse metrics: ${(error as Error).message}`);
    }
  }
  return families;
}

/** The value of the sample `name` whose labels equal `labels` exactly, or undefined. */
export function sampleValue(
  families: Map<string, PromFamily>,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number | undefined {
  const want = seriesKey({ name, labels, value: 0, timestamp: null });
  for (const f of families.values()) {
    for (const s of f.samples) if (s.name === name && seriesKey(s) === want) return s.value;
  }
  return undefined;
}
