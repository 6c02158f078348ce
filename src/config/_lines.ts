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

/** Maps dotted paths ("stt.google", "stt.google.endpoint") to their first 1-based line. */
export function indexLines(source: string): ReadonlyMap<string, number> {
  const lines = new Map<string, number>();
  const remember = (parts: readonly string[], line: number) => {
    for (let i = 1; i <= parts.length; i++) {
      const key = parts.slice(0, i).join(".");
      if (!lines.has(key)) lines.set(key, line);
    }
  };
  let table: string[] = [];
  // Inside a multi-line string, lines that look like `key =` are text, not keys.
  let openString: '"""' | "'''" | null = null;
  const rows = source.split(/\r?\n/);
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i].trim();
    const lineNo = i + 1;
    if (openString !== null) {
      if (countOf(row, openString) % 2 === 1) openString = null;
      continue;
    }
    if (row === "" || row.startsWith("#")) continue;
    const header = HEADER_RE.exec(row);
    if (header) {
      table = splitKeyPath(header[1]);
      remember(table, lineNo);
      continue;
    }
    const keyLine = KEY_RE.exec(row);
    if (!keyLine) continue;
    remember([...table, ...splitKeyPath(keyLine[1])], lineNo);
    const value = keyLine[2];
    if (countOf(value, '"""') % 2 === 1) openString = '"""';
    else if (countOf(value, "'''") % 2 === 1) openString = "'''";
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
  let openString: '"""' | "'''" | null = null;
  const rows = source.split(/\r?\n/);
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i].trim();
    const lineNo = i + 1;
    if (openString !== null) {
      if (countOf(row, openString) % 2 === 1) openString = null;
      continue;
    }
    if (row === "" || row.startsWith("#")) continue;
    const header = HEADER_RE.exec(row);
    if (header) {
      const parts = splitKeyPath(header[1]);
      if (row.startsWith("[[") && parts.length === 1 && parts[0] === name) {
        entry = new Map([["", lineNo]]);
        entries.push(entry);
        prefix = [];
      } else if (entry !== null && parts[0] === name && parts.length > 1) {
        prefix = parts.slice(1);
        const key = prefix.join(".");
        if (!entry.has(key)) entry.set(key, lineNo);
      } else {
        entry = null;
      }
      continue;
    }
    const keyLine = KEY_RE.exec(row);
    if (!keyLine) continue;
    if (entry !== null) {
      const parts = [...prefix, ...splitKeyPath(keyLine[1])];
      for (let n = 1; n <= parts.length; n++) {
        const key = parts.slice(0, n).join(".");
        if (!entry.has(key)) entry.set(key, lineNo);
      }
    }
    const value = keyLine[2];
    if (countOf(value, '"""') % 2 === 1) openString = '"""';
    else if (countOf(value, "'''") % 2 === 1) openString = "'''";
  }
  return entries;
}
