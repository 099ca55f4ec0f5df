// A fresh, migrated database per test file, cloned from the run's template:
// PGlite loads the dumped data dir; PostgreSQL uses CREATE DATABASE … TEMPLATE.
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { PGlite } from "@electric-sql/pglite";
import pg from "pg";
import { inject } from "vitest";
import { openDatabase, useDatabase, type Database, type DatabaseKind } from "../../src/db/index.ts";
import { PGLITE_OPTIONS } from "../../src/db/pglite.ts";

const TEMPLATE_DB = "tokengate_template";

export const testDatabaseKind = (): DatabaseKind => (process.env.TG_TEST_DB === "postgres" ? "postgres" : "pglite");

export interface TestDatabase extends Database {
  /** postgres only: the URL of this test database (for a second client or a child process). */
  url: string | null;
  /** A second, independent client on the same database, standing in for another gateway process. */
  openSecondClient(): Promise<Database>;
  dispose(): Promise<void>;
}

export interface TestDatabaseOptions {
  /** Every statement sent through Prisma. */
  onQuery?: (sql: string) => void;
  /** Every statement sent straight to the driver (directSql(), database.sql.query): the hot path and the spend reports. */
  onDirectQuery?: (sql: string) => void;
  poolSize?: number;
}

/** Reports the statements sent straight to the driver; the object is the one useDatabase installed, so directSql() goes through it. */
function observeDirectQueries(database: Database, onDirectQuery: ((sql: string) => void) | undefined): void {
  if (!onDirectQuery) return;
  const query = database.sql.query.bind(database.sql);
  database.sql.query = (text, params) => {
    onDirectQuery(text);
    return query(text, params);
  };
}

export async function createTestDatabase(options: TestDatabaseOptions = {}): Promise<TestDatabase> {
  const kind = testDatabaseKind();
  if (kind === "postgres") {
    const adminUrl = inject("postgresAdminUrl");
    const name = `tg_${randomBytes(6).toString("hex")}`;
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name} TEMPLATE ${TEMPLATE_DB}`);
    await admin.end();
    const url = new URL(adminUrl);
    url.pathname = `/${name}`;
    const databaseUrl = url.toString();
    const database = await openDatabase({ databaseUrl, migrate: false, onQuery: options.onQuery, poolSize: options.poolSize ?? 20 });
    observeDirectQueries(database, options.onDirectQuery);
    const seconds: Database[] = [];
    useDatabase(database);
    return {
      ...database,
      url: databaseUrl,
      openSecondClient: async () => {
        const opened = await openDatabase({ databaseUrl, migrate: false, poolSize: options.poolSize ?? 20 });
        let closing: Promise<void> | null = null;
        const second = { ...opened, close: () => (closing ??= opened.close()) };
        seconds.push(second);
        return second;
      },
      dispose: async () => {
        for (const s of seconds) await s.close();
        await database.close();
        const dropper = new pg.Client({ connectionString: adminUrl });
        await dropper.connect();
        await dropper.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        await dropper.end();
      },
    };
  }
  const dump = await readFile(inject("pgliteTemplatePath"));
  // The server's PGlite settings (a small buffer pool), so tests run what `npm start` runs.
  const pglite = await PGlite.create({ loadDataDir: new Blob([dump]), ...PGLITE_OPTIONS });
  const database = await openDatabase({ pglite, migrate: false, onQuery: options.onQuery });
  observeDirectQueries(database, options.onDirectQuery);
  useDatabase(database);
  return {
    ...database,
    url: null,
    // PGlite is one in-process connection: a second Prisma client shares it, as a second process cannot.
    openSecondClient: async () => {
      const second = await openDatabase({ pglite, migrate: false });
      return { ...second, close: () => second.prisma.$disconnect() };
    },
    dispose: () => database.close(),
  };
}
