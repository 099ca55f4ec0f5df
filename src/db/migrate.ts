// Applies prisma/migrations in order, recording them in Prisma's own `_prisma_migrations`
// table (so `prisma migrate status` agrees), then prisma/functions.sql, the current definition
// of every SQL function, when it changed. Our runner, not the CLI: it works the same through
// PGlite and PostgreSQL and needs no schema engine at start-up.
import { createHash, randomUUID } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { PACKAGE_ROOT } from "../paths.ts";

export interface SqlExecutor {
  /** Runs one or more statements without parameters. */
  exec(sql: string): Promise<void>;
  /** Runs one parameterised query and returns its rows. */
  query<Row>(sql: string, params?: unknown[]): Promise<Row[]>;
}

export const MIGRATIONS_DIR = path.join(PACKAGE_ROOT, "prisma", "migrations");
/** Every SQL function's current definition; migrations keep the tables (see the file's header). */
export const FUNCTIONS_FILE = path.join(PACKAGE_ROOT, "prisma", "functions.sql");
/** The name applyMigrations reports when it (re)applied the functions file. */
export const FUNCTIONS_STEP = "functions.sql";

interface Migration {
  name: string;
  sql: string;
  checksum: string;
}

async function readMigrations(dir: string): Promise<Migration[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const names = entries
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();
  return Promise.all(
    names.map(async (name) => {
      const sql = await readFile(path.join(dir, name, "migration.sql"), "utf8");
      return { name, sql, checksum: createHash("sha256").update(sql).digest("hex") };
    }),
  );
}

const MIGRATIONS_TABLE = `CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
  "id" VARCHAR(36) PRIMARY KEY NOT NULL,
  "checksum" VARCHAR(64) NOT NULL,
  "finished_at" TIMESTAMPTZ,
  "migration_name" VARCHAR(255) NOT NULL,
  "logs" TEXT,
  "rolled_back_at" TIMESTAMPTZ,
  "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
  "applied_steps_count" INTEGER NOT NULL DEFAULT 0
)`;

const FUNCTIONS_TABLE = `CREATE TABLE IF NOT EXISTS "_tg_functions" (
  "id" INTEGER PRIMARY KEY CHECK ("id" = 1),
  "checksum" VARCHAR(64) NOT NULL,
  "applied_at" TIMESTAMPTZ NOT NULL DEFAULT now()
)`;

// Several instances may start at once against one PostgreSQL: one applies, the others wait.
const ADVISORY_LOCK_ID = 7_342_001;

/**
 * Applies pending migrations, then the functions file if its checksum differs from the one last
 * applied (`functionsFile: null` stops after the migrations, as a release before the file did);
 * returns the names it applied, FUNCTIONS_STEP last when it applied the file.
 */
export async function applyMigrations(db: SqlExecutor, dir = MIGRATIONS_DIR, functionsFile: string | null = FUNCTIONS_FILE): Promise<string[]> {
  const migrations = await readMigrations(dir);
  const functions = functionsFile === null ? null : await readFile(functionsFile, "utf8");
  await db.query("SELECT pg_advisory_lock($1)", [ADVISORY_LOCK_ID]);
  try {
    await db.exec(MIGRATIONS_TABLE);
    const done = await db.query<{ migration_name: string; checksum: string }>(`SELECT migration_name, checksum FROM "_prisma_migrations" WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL`);
    const applied = new Map(done.map((r) => [r.migration_name, r.checksum]));
    const ran: string[] = [];
    for (const m of migrations) {
      const previous = applied.get(m.name);
      if (previous !== undefined) {
        if (previous !== m.checksum) {
          throw new Error(`migration ${m.name} was changed after it was applied (checksum differs)`);
        }
        continue;
      }
      await db.exec(`BEGIN;\n${m.sql}\n;COMMIT;`).catch(async (error: unknown) => {
        await db.exec("ROLLBACK").catch(() => undefined);
        throw new Error(`migration ${m.name} failed: ${(error as Error).message}`);
      });
      await db.query(`INSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name, applied_steps_count) VALUES ($1, $2, now(), $3, 1)`, [randomUUID(), m.checksum, m.name]);
      ran.push(m.name);
    }
    if (functions !== null && (await applyFunctions(db, functions))) ran.push(FUNCTIONS_STEP);
    return ran;
  } finally {
    await db.query("SELECT pg_advisory_unlock($1)", [ADVISORY_LOCK_ID]);
  }
}

/** Applies the functions file unless its checksum is the one last applied; true when it ran. */
async function applyFunctions(db: SqlExecutor, sql: string): Promise<boolean> {
  const checksum = createHash("sha256").update(sql).digest("hex");
  await db.exec(FUNCTIONS_TABLE);
  const [current] = await db.query<{ checksum: string }>(`SELECT checksum FROM "_tg_functions" WHERE id = 1`);
  if (current?.checksum === checksum) return false;
  await db.exec(`BEGIN;\n${sql}\n;COMMIT;`).catch(async (error: unknown) => {
    await db.exec("ROLLBACK").catch(() => undefined);
    throw new Error(`${FUNCTIONS_STEP} failed: ${(error as Error).message}`);
  });
  await db.query(`INSERT INTO "_tg_functions" (id, checksum) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()`, [checksum]);
  return true;
}
