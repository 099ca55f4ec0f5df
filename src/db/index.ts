// The database: embedded PGlite by default, PostgreSQL when DATABASE_URL is set.
// One Prisma schema and one migration history serve both.
import { mkdir } from "node:fs/promises";
import path from "node:path";
import type { PGlite } from "@electric-sql/pglite";
import { PrismaPGlite } from "pglite-prisma-adapter";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import QueryStream from "pg-query-stream";
import { PrismaClient, type Prisma } from "../generated/prisma/client.ts";
import { applyMigrations, type SqlExecutor } from "./migrate.ts";
import { openPglite, pgliteSql } from "./pglite.ts";
import type { Config } from "../config.ts";
import { logger } from "../log.ts";

export type { PrismaClient };
export type DatabaseKind = "pglite" | "postgres";

export interface Database {
  kind: DatabaseKind;
  prisma: PrismaClient;
  /** Direct SQL, for migrations and test set-up (the app itself goes through prisma). */
  sql: SqlExecutor;
  /** Connection pool occupancy for /metrics (PGlite: one in-process connection). */
  pool(): { total: number; idle: number; waiting: number };
  /**
   * PostgreSQL only: a query's rows read from a server-side cursor on one pooled connection, a
   * batch at a time as the consumer pulls them (backpressure), for exports of any size. Rows are
   * arrays in select-list order (no per-row objects). PGlite has no cursor API outside a
   * transaction, which would lock out every other query.
   */
  streamRowBatches?(text: string, params?: unknown[]): AsyncGenerator<unknown[][], void, undefined>;
  close(): Promise<void>;
}

export interface OpenOptions {
  databaseUrl?: string;
  /** PGlite lives in `${dataDir}/pglite`; ignored with a databaseUrl. */
  dataDir?: string;
  /** An already opened PGlite (tests load one from a migrated template). */
  pglite?: PGlite;
  migrate?: boolean;
  /** Pool size for PostgreSQL. */
  poolSize?: number;
  onQuery?: (sql: string) => void;
}

type AdapterFactory = NonNullable<Prisma.PrismaClientOptions["adapter"]>;

function prismaWithLogging(adapter: AdapterFactory, onQuery?: (sql: string) => void): PrismaClient {
  if (!onQuery) return new PrismaClient({ adapter });
  const client = new PrismaClient({ adapter, log: [{ emit: "event", level: "query" }] });
  client.$on("query", (e) => onQuery(e.query));
  return client;
}

// Small batches read straight from the cursor (one promise per batch, not per row): each row is
// garbage before V8's next scavenge, so it dies young instead of being promoted to the old
// generation, which with default heap settings is collected only after it has grown by hundreds of MB.
const STREAM_BATCH_ROWS = 100;

/** The part of pg-cursor (QueryStream.cursor, untyped) read here: a promise of up to `rows` rows. */
interface RowCursor {
  read(rows: number): Promise<unknown[][]>;
}

async function* streamFromCursor(pool: pg.Pool, text: string, params?: unknown[]): AsyncGenerator<unknown[][], void, undefined> {
  const client = await pool.connect();
  const stream = client.query(new QueryStream(text, params, { batchSize: STREAM_BATCH_ROWS, rowMode: "array" }));
  const cursor = stream.cursor as RowCursor;
  let finished = false;
  try {
    for (;;) {
      const rows = await cursor.read(STREAM_BATCH_ROWS);
      if (rows.length) yield rows;
      if (rows.length < STREAM_BATCH_ROWS) break;
    }
    finished = true;
  } finally {
    stream.destroy();
    // A cursor abandoned half-way (client went away, error) may leave the connection mid-protocol: discard it.
    client.release(finished ? undefined : true);
  }
}

/**
 * The least work_mem a session of ours plans with. Spend reports group a rollup and its queue (the
 * Live views, a UNION ALL) by GROUPING SETS; the planner has no statistics for the union, estimates
 * far more groups than there are and, at PostgreSQL's default 4 MB, sorts every rollup row instead
 * of hashing them (report (a) of the series benchmark: +30 %). The hash it then picks uses about
 * 1 MB. A server configured with more keeps its value. PGlite starts with this value (pglite.ts).
 */
export const SESSION_WORK_MEM = "16MB";
const RAISE_WORK_MEM = `SELECT set_config('work_mem', '${SESSION_WORK_MEM}', false) WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes('${SESSION_WORK_MEM}')`;

export async function openDatabase(options: OpenOptions = {}): Promise<Database> {
  let database: Database;
  if (options.databaseUrl) {
    const pool = new pg.Pool({
      connectionString: options.databaseUrl,
      max: options.poolSize ?? 10,
      // Before the connection serves its first query. If it fails, the connection plans with the
      // server's setting: slower reports, nothing wrong.
      onConnect: async (client) => {
        await client.query(RAISE_WORK_MEM).catch(() => undefined);
      },
    });
    // A dropped idle connection must not crash the process.
    pool.on("error", () => undefined);
    const prisma = prismaWithLogging(new PrismaPg(pool), options.onQuery);
    database = {
      kind: "postgres",
      prisma,
      sql: {
        exec: async (text) => {
          const client = await pool.connect();
          try {
            await client.query(text);
          } finally {
            client.release();
          }
        },
        query: async <Row>(text: string, params?: unknown[]) => (await pool.query(text, params)).rows as Row[],
      },
      pool: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
      streamRowBatches: (text: string, params?: unknown[]) => streamFromCursor(pool, text, params),
      close: async () => {
        await prisma.$disconnect();
        await pool.end();
      },
    };
  } else {
    let pglite = options.pglite;
    if (!pglite) {
      const dir = path.resolve(options.dataDir ?? "./data", "pglite");
      await mkdir(path.dirname(dir), { recursive: true });
      pglite = await openPglite(dir);
    }
    const instance = pglite;
    const prisma = prismaWithLogging(
      // pglite-prisma-adapter is typed against an older @prisma/driver-adapter-utils; the runtime contract is the same.
      new PrismaPGlite(instance) as unknown as AdapterFactory,
      options.onQuery,
    );
    database = {
      kind: "pglite",
      prisma,
      sql: pgliteSql(instance),
      pool: () => ({ total: 1, idle: 1, waiting: 0 }),
      close: async () => {
        await prisma.$disconnect();
        await instance.close();
      },
    };
  }
  if (options.migrate !== false) await applyMigrations(database.sql);
  return database;
}

/**
 * The process's database client. Domain modules import `db` (the complex-app habit: the client
 * is a module, not a context field); the entry point and test harness install it.
 */
export let db: PrismaClient;

let installed: Database | null = null;

export function useDatabase(database: Database): void {
  db = database.prisma;
  installed = database;
}

/** The configured database (PGlite in DATA_DIR, or DATABASE_URL), migrated if asked, installed as `db`. */
export async function openConfiguredDatabase(config: Pick<Config, "databaseUrl" | "dataDir">, options: { migrate: boolean }): Promise<Database> {
  const database = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, migrate: false });
  if (options.migrate) {
    const applied = await applyMigrations(database.sql);
    if (applied.length) logger.info({ migrations: applied }, "applied migrations");
  }
  useDatabase(database);
  return database;
}

/**
 * The database installed by useDatabase. The gateway's hot path sends its few raw SQL statements
 * straight to the driver (pg pool / PGlite), skipping Prisma's per-query plan compilation.
 */
export function currentDatabase(): Database | null {
  return installed;
}

/** The raw-SQL surface the accounting functions need (a Prisma client, transaction, or directSql()). */
export interface RawSqlClient {
  $queryRawUnsafe<T = unknown>(sql: string, ...values: unknown[]): Promise<T>;
}

/**
 * A raw-SQL client that goes straight to the installed driver (pg pool or PGlite), for the hot
 * path: the same statements through Prisma cost a query-plan compilation each (~0.5 ms of CPU).
 * Falls back to Prisma when no database was installed through useDatabase.
 */
export function directSql(): RawSqlClient {
  const database = installed;
  if (!database) return db;
  return { $queryRawUnsafe: <T>(sql: string, ...values: unknown[]) => database.sql.query(sql, values) as Promise<T> };
}
