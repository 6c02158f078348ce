/**
 * The fleet store's disk journal: records that could not reach PostgreSQL wait here, in order, and
 * survive a restart. A directory of segment files (`000000000001.jsonl`, …), one JSON record per
 * line, appended by the store's one writer and read back oldest first; a segment is deleted once
 * every record in it is in the database. Records are idempotent, so a segment replayed twice (a
 * crash between the commit and the delete) lands once.
 *
 * Durability: appends reach the page cache (they survive a killed process, like SQLite's WAL with
 * synchronous=NORMAL; power loss may lose the last ones).
 */
import type { Logger } from "../observe/log.ts";
import type { QueuedOp } from "./_pg_writer.ts";
import { STORE_OP_KINDS, type StoreOp } from "./_writer.ts";

/** Records per segment before the next append starts a new file. */
export const SEGMENT_MAX_RECORDS = 2000;

const SEGMENT_NAME = /^(\d{12})\.jsonl$/;

const encoder = new TextEncoder();

interface Loaded {
  readonly number: number;
  readonly entries: QueuedOp[];
  cursor: number;
}

function isQueuedOp(value: unknown): value is QueuedOp {
  if (typeof value !== "object" || value === null) return false;
  const { boot, seq, op } = value as Record<string, unknown>;
  if (typeof boot !== "string" || typeof seq !== "number") return false;
  if (typeof op !== "object" || op === null) return false;
  const kind = (op as Partial<StoreOp>).kind;
  return typeof kind === "string" && STORE_OP_KINDS.has(kind);
}

export class Journal {
  readonly #dir: string;
  readonly #log: Logger;
  /** Segment numbers on disk, oldest first. */
  readonly #segments: number[];
  /** The segment appends go to, and how many records it holds; null starts a new one. */
  #active: { number: number; records: number } | null = null;
  #loaded: Loaded | null = null;
  #count: number;

  private constructor(dir: string, log: Logger, segments: number[], count: number) {
    this.#dir = dir;
    this.#log = log;
    this.#segments = segments;
    this.#count = count;
  }

  /** Opens (creating) the journal in `dir` and counts the records left by an earlier run. */
  static async open(dir: string, log: Logger): Promise<Journal> {
    try {
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw new Error(`Cannot open the store journal "${dir}": ${reason}`, { cause: error });
    }
    const segments: number[] = [];
    for await (const entry of Deno.readDir(dir)) {
      const match = SEGMENT_NAME.exec(entry.name);
      if (entry.isFile && match) segments.push(Number(match[1]));
    }
    segments.sort((a, b) => a - b);
    let count = 0;
    for (const number of segments) {
      const text = await Deno.readTextFile(`${dir}/${Journal.#name(number)}`);
      count += text.split("\n").filter((line) => line !== "").length;
    }
    return new Journal(dir, log, segments, count);
  }

  static #name(number: number): string {
    return `${String(number).padStart(12, "0")}.jsonl`;
  }

  /** Records on disk not yet consumed. */
  get count(): number {
    return this.#count;
  }

  /** Appends `entries` after every record already in the journal. */
  async append(entries: readonly QueuedOp[]): Promise<void> {
    let from = 0;
    while (from < entries.length) {
      if (this.#active === null || this.#active.records >= SEGMENT_MAX_RECORDS) {
        const number = (this.#segments.at(-1) ?? 0) + 1;
        this.#segments.push(number);
        this.#active = { number, records: 0 };
      }
      const active = this.#active;
      const take = Math.min(entries.length - from, SEGMENT_MAX_RECORDS - active.records);
      let text = "";
      for (let i = from; i < from + take; i++) text += JSON.stringify(entries[i]) + "\n";
      await Deno.writeFile(`${this.#dir}/${Journal.#name(active.number)}`, encoder.encode(text), {
        append: true,
        create: true,
        mode: 0o600,
      });
      active.records += take;
      this.#count += take;
      from += take;
    }
  }

  /** Up to `max` of the oldest records, without consuming them. */
  async peek(max: number): Promise<QueuedOp[]> {
    while (this.#loaded === null || this.#loaded.cursor >= this.#loaded.entries.length) {
      if (this.#loaded !== null) await this.#dropLoaded();
      const number = this.#segments[0];
      if (number === undefined) return [];
      // Appends go to a new segment from now on, so this one is read whole.
      if (this.#active?.number === number) this.#active = null;
      this.#loaded = { number, entries: await this.#read(number), cursor: 0 };
    }
    const { entries, cursor } = this.#loaded;
    return entries.slice(cursor, cursor + max);
  }

  /** Marks the first `n` records returned by `peek` as written; deletes a finished segment. */
  async consume(n: number): Promise<void> {
    if (this.#loaded === null) return;
    this.#loaded.cursor += n;
    this.#count = Math.max(0, this.#count - n);
    if (this.#loaded.cursor >= this.#loaded.entries.length) await this.#dropLoaded();
  }

  async #dropLoaded(): Promise<void> {
    const loaded = this.#loaded;
    if (loaded === null) return;
    await Deno.remove(`${this.#dir}/${Journal.#name(loaded.number)}`).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
    this.#segments.shift();
    this.#loaded = null;
  }

  async #read(number: number): Promise<QueuedOp[]> {
    const name = Journal.#name(number);
    const lines = (await Deno.readTextFile(`${this.#dir}/${name}`)).split("\n")
      .filter((line) => line !== "");
    const entries: QueuedOp[] = [];
    for (const line of lines) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(line);
      } catch {
        parsed = null;
      }
      if (isQueuedOp(parsed)) entries.push(parsed);
      else {
        // Only a process killed mid-append leaves a torn line, and only at a segment's end.
        this.#log.warn("STORE", "journal line unreadable, skipped", {
          segment: name,
          bytes: line.length,
        });
      }
    }
    this.#count -= lines.length - entries.length;
    return entries;
  }
}
