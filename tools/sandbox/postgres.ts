/**
 * A real PostgreSQL from Debian's packages (`/usr/lib/postgresql/<v>/bin`) in a temporary directory,
 * for the fleet-store tests and `deno task bench --store postgres`. As root it runs as the
 * `postgres` OS user (PostgreSQL refuses to run as root). It listens on 127.0.0.1 on a free port
 * with password (SCRAM) authentication for TCP, so Kav's password path is the real one; the unix
 * socket in the data directory is trusted for the superuser.
 *
 * `POSTGRES_UNAVAILABLE` is null when it can run, else the reason (tests `ignore:` with it).
 */
import postgres from "postgres";

/** Kav's role and its password (TCP connections need it). */
export const PG_USER = "kav";
export const PG_PASSWORD = "kav-test-password";

function findBinDir(): string | null {
  try {
    const versions = [...Deno.readDirSync("/usr/lib/postgresql")]
      .filter((entry) => entry.isDirectory && /^\d+$/.test(entry.name))
      .map((entry) => Number(entry.name))
      .sort((a, b) => b - a);
    for (const version of versions) {
      const dir = `/usr/lib/postgresql/${version}/bin`;
      try {
        if (Deno.statSync(`${dir}/initdb`).isFile && Deno.statSync(`${dir}/pg_ctl`).isFile) {
          return dir;
        }
      } catch {
        // Not this version.
      }
    }
  } catch {
    // No /usr/lib/postgresql.
  }
  return null;
}

/** uid and gid of the `postgres` OS user, from /etc/passwd. */
function postgresUser(): { uid: number; gid: number } | null {
  try {
    for (const line of Deno.readTextFileSync("/etc/passwd").split("\n")) {
      const fields = line.split(":");
      if (fields[0] === "postgres") return { uid: Number(fields[2]), gid: Number(fields[3]) };
    }
  } catch {
    // No passwd file.
  }
  return null;
}

const BIN_DIR = findBinDir();
const IS_ROOT = Deno.uid() === 0;
const RUN_AS = IS_ROOT ? postgresUser() : null;

/** Why a PostgreSQL cannot be started here, or null when it can. */
export const POSTGRES_UNAVAILABLE: string | null = BIN_DIR === null
  ? "PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)"
  : IS_ROOT && RUN_AS === null
  ? "running as root and there is no postgres OS user to run PostgreSQL as"
  : null;

export interface LocalPostgres {
  readonly host: string;
  readonly port: number;
  /** The data directory (removed by `close()`). */
  readonly dir: string;
  /** `postgres://kav@127.0.0.1:<port>/<database>`: no password (Kav takes it from PGPASSWORD). */
  urlFor(database: string): string;
  /** Creates a database owned by `kav`; returns its URL (without the password). */
  createDatabase(name: string): Promise<string>;
  /** A superuser client on the trusted unix socket (tests inspect and tamper with it). */
  admin(database: string): postgres.Sql;
  /** `pg_ctl stop -m fast`: every connection is closed, new ones are refused. */
  stop(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  /** The postmaster's pid (the bench pins it; backends it forks inherit the pinning). */
  pid(): number;
  /** Stops it and removes the data directory. */
  close(): Promise<void>;
}

export interface StartPostgresOptions {
  /** fsync off (default true): tests do not survive an OS crash anyway, and it is much faster. */
  readonly fast?: boolean;
  readonly maxConnections?: number;
}

async function run(cmd: string, args: string[], options: { cwd?: string } = {}): Promise<string> {
  const [program, argv] = RUN_AS === null
    ? [cmd, args]
    : ["runuser", ["-u", "postgres", "--", cmd, ...args]];
  const out = await new Deno.Command(program, {
    args: argv,
    cwd: options.cwd ?? "/tmp",
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C.UTF-8", LANG: "C.UTF-8" },
  }).output();
  const text = new TextDecoder();
  const output = text.decode(out.stdout) + text.decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed (${out.code}):\n${output}`);
  return output;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

async function chownTree(path: string): Promise<void> {
  if (RUN_AS === null) return;
  await Deno.chown(path, RUN_AS.uid, RUN_AS.gid);
}

/** initdb, then starts the server; throws when `POSTGRES_UNAVAILABLE` is set. */
export async function startPostgres(options: StartPostgresOptions = {}): Promise<LocalPostgres> {
  if (POSTGRES_UNAVAILABLE !== null || BIN_DIR === null) {
    throw new Error(`Cannot start PostgreSQL: ${POSTGRES_UNAVAILABLE}`);
  }
  const bin = BIN_DIR;
  const dir = await Deno.makeTempDir({ prefix: "kav-pg-" });
  await Deno.chmod(dir, 0o700);
  await chownTree(dir);
  const data = `${dir}/data`;
  const pwfile = `${dir}/superuser.pw`;
  // The superuser is `kav`'s admin; only the unix socket (trusted) is used for it.
  await Deno.writeTextFile(pwfile, "admin-unused\n");
  await chownTree(pwfile);
  await run(`${bin}/initdb`, [
    "-D",
    data,
    "-U",
    "postgres",
    "--pwfile",
    pwfile,
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "--encoding=UTF8",
    "--no-instructions",
  ]);
  const port = freePort();
  const settings = [
    `port = ${port}`,
    "listen_addresses = '127.0.0.1'",
    `unix_socket_directories = '${dir}'`,
    `max_connections = ${options.maxConnections ?? 100}`,
    "shared_buffers = 32MB",
    ...(options.fast ?? true ? ["fsync = off", "full_page_writes = off"] : []),
  ];
  await Deno.writeTextFile(`${data}/postgresql.auto.conf`, settings.join("\n") + "\n", {
    append: true,
  });
  const logFile = `${dir}/postgres.log`;
  const pgStart = () =>
    run(`${bin}/pg_ctl`, ["-D", data, "-l", logFile, "-w", "-t", "60", "start"]);
  const pgStop = () => run(`${bin}/pg_ctl`, ["-D", data, "-m", "fast", "-w", "stop"]);
  await pgStart();
  const admins: postgres.Sql[] = [];
  const admin = (database: string) => {
    const sql = postgres({
      host: dir,
      port,
      user: "postgres",
      database,
      max: 2,
      onnotice: () => {},
    });
    admins.push(sql);
    return sql;
  };
  let running = true;
  try {
    const root = admin("postgres");
    await root.unsafe(`CREATE ROLE ${PG_USER} LOGIN PASSWORD '${PG_PASSWORD}'`);
  } catch (error) {
    await pgStop().catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw error;
  }
  const urlFor = (database: string) => `postgres://${PG_USER}@127.0.0.1:${port}/${database}`;
  return {
    host: "127.0.0.1",
    port,
    dir,
    urlFor,
    async createDatabase(name) {
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new RangeError(`Cannot use database "${name}"`);
      await admin("postgres").unsafe(`CREATE DATABASE ${name} OWNER ${PG_USER}`);
      return urlFor(name);
    },
    admin,
    async stop() {
      if (!running) return;
      running = false;
      await pgStop();
    },
    async start() {
      if (running) return;
      await pgStart();
      running = true;
    },
    pid: () => Number(Deno.readTextFileSync(`${data}/postmaster.pid`).split("\n")[0]),
    async close() {
      await Promise.allSettled(admins.map((sql) => sql.end({ timeout: 1 })));
      if (running) await pgStop().catch(() => {});
      running = false;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
