/**
 * Opens the call store the config names: SQLite at `storage.path` (one VM), or the fleet store on
 * PostgreSQL when `storage.url` is set, with its outage journal beside where the SQLite file would be
 * (the state directory).
 */
import type { Config } from "../config/types.ts";
import type { Logger } from "../observe/log.ts";
import { openPostgresStore } from "./postgres.ts";
import { openCallStore } from "./sqlite.ts";
import type { CallStore } from "./types.ts";

/** The fleet store's journal directory for a `storage.path`: `pg-journal` beside it. */
export function journalDirFor(storagePath: string): string {
  const slash = storagePath.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : storagePath.slice(0, slash);
  return `${dir === "/" ? "" : dir}/pg-journal`;
}

/** The SQLite store, or the PostgreSQL one with `storage.url`. */
export async function openConfiguredStore(config: Config, log: Logger): Promise<CallStore> {
  const { storage, server, crm } = config;
  if (storage.url === null) {
    return await openCallStore({
      path: storage.path,
      log,
      retentionDays: storage.retention_days,
      crm,
      nodeId: server.node_id,
    });
  }
  return await openPostgresStore({
    url: storage.url,
    password: storage.password,
    nodeId: server.node_id,
    journalDir: journalDirFor(storage.path),
    log,
    retentionDays: storage.retention_days,
    crm,
  });
}
