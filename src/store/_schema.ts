/**
 * Versioned schema of the call store. Each migration runs once, in its own transaction, and bumps
 * `PRAGMA user_version`; a database newer than this build is refused rather than guessed at.
 */
import type { DatabaseSync } from "node:sqlite";

/** The six per-turn latency names (LiveKit's), in display order. */
export const LATENCY_NAMES = [
  "end_of_turn_delay",
  "stt_final_delay",
  "llm_ttft",
  "tts_ttfb",
  "e2e_latency",
  "server_latency",
] as const;

const percentileColumns = LATENCY_NAMES.map((name) => `${name}_p50 REAL, ${name}_p90 REAL`).join(
  ",\n  ",
);
const turnColumns = LATENCY_NAMES.map((name) => `${name} REAL`).join(",\n  ");

const MIGRATIONS: readonly string[] = [
  // 1: calls, turns, events and the CRM outbox. No foreign keys: a late event for an unknown call
  // must still be written, never rejected.
  `
CREATE TABLE calls (
  call_sid TEXT PRIMARY KEY,
  stream_sid TEXT NOT NULL,
  account_sid TEXT NOT NULL,
  from_number TEXT,
  to_number TEXT,
  custom_parameters TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  ended_at INTEGER,
  outcome TEXT,
  reason TEXT,
  rx_frames INTEGER,
  rx_drops INTEGER,
  tx_frames INTEGER,
  tx_drops INTEGER,
  tx_late INTEGER,
  malformed INTEGER,
  ${percentileColumns}
);
CREATE INDEX calls_started_at ON calls (started_at);
CREATE INDEX calls_open ON calls (call_sid) WHERE ended_at IS NULL;
CREATE TABLE turns (
  call_sid TEXT NOT NULL,
  idx INTEGER NOT NULL,
  speaker TEXT NOT NULL,
  text TEXT NOT NULL,
  generated TEXT,
  cut INTEGER NOT NULL,
  started_at INTEGER NOT NULL,
  ended_at INTEGER NOT NULL,
  has_timings INTEGER NOT NULL,
  ${turnColumns},
  PRIMARY KEY (call_sid, idx)
);
CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  call_sid TEXT NOT NULL,
  at INTEGER NOT NULL,
  kind TEXT NOT NULL,
  detail TEXT NOT NULL
);
CREATE INDEX events_call ON events (call_sid, at);
CREATE TABLE crm_outbox (
  id TEXT PRIMARY KEY,
  call_sid TEXT NOT NULL,
  body TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  delivered_at INTEGER,
  last_status INTEGER,
  last_error TEXT
);
CREATE INDEX crm_outbox_due ON crm_outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX crm_outbox_call ON crm_outbox (call_sid);
`,
  // 2: the node that answered the call (server.node_id); null for calls recorded before.
  "ALTER TABLE calls ADD COLUMN node_id TEXT;",
  // 3: full-text search of transcripts for the console's history (FTS5 over turns.text, kept by
  // triggers). The writer replaces a turn with INSERT OR REPLACE, whose implicit delete fires no
  // trigger: the BEFORE INSERT trigger takes the old text out of the index first.
  `
CREATE VIRTUAL TABLE turns_fts USING fts5(
  text, content = 'turns', content_rowid = 'rowid', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER turns_fts_replace BEFORE INSERT ON turns BEGIN
  INSERT INTO turns_fts (turns_fts, rowid, text)
    SELECT 'delete', rowid, text FROM turns WHERE call_sid = new.call_sid AND idx = new.idx;
END;
CREATE TRIGGER turns_fts_insert AFTER INSERT ON turns BEGIN
  INSERT INTO turns_fts (rowid, text) VALUES (new.rowid, new.text);
END;
CREATE TRIGGER turns_fts_delete AFTER DELETE ON turns BEGIN
  INSERT INTO turns_fts (turns_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
END;
CREATE TRIGGER turns_fts_update AFTER UPDATE OF text ON turns BEGIN
  INSERT INTO turns_fts (turns_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
  INSERT INTO turns_fts (rowid, text) VALUES (new.rowid, new.text);
END;
INSERT INTO turns_fts (turns_fts) VALUES ('rebuild');
`,
  // 4: the agent acts (SPEC 6): tool calls, transfers and keypad turns.
  `
CREATE TABLE tool_calls (
  id INTEGER PRIMARY KEY,
  call_sid TEXT NOT NULL,
  at INTEGER NOT NULL,
  tool_call_id TEXT NOT NULL,
  name TEXT NOT NULL,
  arguments TEXT NOT NULL,
  result TEXT,
  error TEXT,
  ms REAL NOT NULL
);
CREATE INDEX tool_calls_call ON tool_calls (call_sid, at);
CREATE TABLE transfers (
  id INTEGER PRIMARY KEY,
  call_sid TEXT NOT NULL,
  at INTEGER NOT NULL,
  department TEXT NOT NULL,
  target TEXT NOT NULL,
  dial_status TEXT,
  dial_ended_at INTEGER,
  dial_duration_s INTEGER
);
CREATE INDEX transfers_call ON transfers (call_sid, at);
ALTER TABLE turns ADD COLUMN input TEXT;
`,
];

/** The schema version this build writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/** Reads `PRAGMA user_version`. */
export function schemaVersion(db: DatabaseSync): number {
  const row = db.prepare("PRAGMA user_version").get();
  const version = row?.user_version;
  return typeof version === "number" ? version : 0;
}

/**
 * Brings the database to {@link SCHEMA_VERSION}; returns the version found before. Throws a
 * `RangeError` when the file was written by a newer Kav.
 */
export function migrate(db: DatabaseSync, path: string): number {
  const found = schemaVersion(db);
  if (found > SCHEMA_VERSION) {
    throw new RangeError(
      `Cannot open call store "${path}": schema version ${found} is newer than this build's ${SCHEMA_VERSION}`,
    );
  }
  for (let version = found + 1; version <= SCHEMA_VERSION; version++) {
    db.exec("BEGIN IMMEDIATE");
    try {
      db.exec(MIGRATIONS[version - 1]);
      // user_version lives in the header page, so it commits (or rolls back) with the migration.
      db.exec(`PRAGMA user_version = ${version}`);
      db.exec("COMMIT");
    } catch (error) {
      db.exec("ROLLBACK");
      throw error;
    }
  }
  return found;
}
