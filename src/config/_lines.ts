/**
 * Where each key and table is written in the TOML source. smol-toml reports no positions for
 * values, so problems find their line by scanning table headers and `key =` lines.
 */

const KEY_PART = String.raw`(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')`;
const KEY_PATH = String.raw`${KEY_PART}(?:\s*\.\s*${KEY_PART})*`;
const HEADER_RE = new RegExp(String.raw`^\[\[?\s*(${KEY_PATH})\s*\]\]?\s*(?:#.*)?$`);
const KEY_RE = new RegExp(String.raw`^(${KEY_PATH})\s*=(.*)$`);
const PART_RE = new RegExp(KEY_PART, "g");

function splitKeyPath(path: string): string[] {
  const parts: string[] = [];
  for (const match of path.matchAll(PART_RE)) {
    const part = match[0];
    if (part.startsWith('"')) {
      try {
        parts.push(JSON.parse(part));
      } catch {
        parts.push(part.slice(1, -1));
      }
    } else if (part.startsWith("'")) {
      parts.push(part.slice(1, -1));
    } else {
      parts.push(part);
    }
  }
  return parts;
}

function countOf(text: string, needle: string): number {
  let count = 0;
  for (let at = text.indexOf(needle); at !== -1; at = text.indexOf(needle, at + needle.length)) {
    count++;
  }
  return count;
}

/** One meaningful row of TOML source: a table header or a `key =` line. */
type TomlRow =
  | {
    readonly kind: "header";
    readonly line: number;
    readonly path: string[];
    readonly array: boolean;
  }
  | { readonly kind: "key"; readonly line: number; readonly path: string[] };

/** The headers and `key =` lines of `source`, skipping comments, blanks and multi-line strings. */
function* tomlRows(source: string): Generator<TomlRow> {
  // Inside a multi-line string, lines that look like `key =` are text, not keys.
  let openString: '"""' | "'''" | null = null;
  const rows = source.split(/\r?\n/);
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i].trim();
    const line = i + 1;
    if (openString !== null) {
      if (countOf(row, openString) % 2 === 1) openString = null;
      continue;
    }
    if (row === "" || row.startsWith("#")) continue;
    const header = HEADER_RE.exec(row);
    if (header) {
      yield { kind: "header", line, path: splitKeyPath(header[1]), array: row.startsWith("[[") };
      continue;
    }
    const keyLine = KEY_RE.exec(row);
    if (!keyLine) continue;
    yield { kind: "key", line, path: splitKeyPath(keyLine[1]) };
    const value = keyLine[2];
    if (countOf(value, '"""') % 2 === 1) openString = '"""';
    else if (countOf(value, "'''") % 2 === 1) openString = "'''";
  }
}

/** Records `line` for every prefix of `parts` not seen before. */
function rememberPrefixes(
  lines: Map<string, number>,
  parts: readonly string[],
  line: number,
): void {
  for (let n = 1; n <= parts.length; n++) {
    const key = parts.slice(0, n).join(".");
    if (!lines.has(key)) lines.set(key, line);
  }
}

/** Maps dotted paths ("stt.google", "stt.google.endpoint") to their first 1-based line. */
export function indexLines(source: string): ReadonlyMap<string, number> {
  const lines = new Map<string, number>();
  let table: string[] = [];
  for (const row of tomlRows(source)) {
    if (row.kind === "header") table = row.path;
    rememberPrefixes(lines, row.kind === "header" ? row.path : [...table, ...row.path], row.line);
  }
  return lines;
}

/** The line of `key`, else of its nearest enclosing table, else null. */
export function lineOf(lines: ReadonlyMap<string, number>, key: string): number | null {
  const parts = key.split(".");
  for (let n = parts.length; n > 0; n--) {
    const line = lines.get(parts.slice(0, n).join("."));
    if (line !== undefined) return line;
  }
  return null;
}

/**
 * Lines of each entry of an array of tables (`[[tools]]`): one map per entry, in file order, from
 * the key path inside the entry ("url", "parameters.properties.phone") to its line, with "" the
 * entry's `[[name]]` header.
 */
export function indexArrayEntries(source: string, name: string): ReadonlyMap<string, number>[] {
  const entries: Map<string, number>[] = [];
  let entry: Map<string, number> | null = null;
  let prefix: string[] = [];
  for (const row of tomlRows(source)) {
    if (row.kind === "key") {
      if (entry !== null) rememberPrefixes(entry, [...prefix, ...row.path], row.line);
      continue;
    }
    const parts = row.path;
    if (row.array && parts.length === 1 && parts[0] === name) {
      entry = new Map([["", row.line]]);
      entries.push(entry);
      prefix = [];
    } else if (entry !== null && parts[0] === name && parts.length > 1) {
      prefix = parts.slice(1);
      const key = prefix.join(".");
      if (!entry.has(key)) entry.set(key, row.line);
    } else {
      entry = null;
    }
  }
  return entries;
}
