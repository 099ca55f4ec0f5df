// Every session the gateway opens plans with at least SESSION_WORK_MEM (src/db/index.ts says why:
// a spend report over a Live view otherwise sorts every rollup row), through the driver and through
// Prisma, and a PostgreSQL server configured with more keeps its own value.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, SESSION_WORK_MEM } from "../src/db/index.ts";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "./support/db.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase({ poolSize: 3 });
});
afterAll(async () => {
  await database.dispose();
});

const workMem = async (db: { sql: { query<Row>(text: string): Promise<Row[]> } }) => (await db.sql.query<{ work_mem: string }>("SHOW work_mem"))[0]!.work_mem;

describe("session settings", () => {
  it(`plans with work_mem ${SESSION_WORK_MEM} on every connection, raw and through Prisma`, async () => {
    expect(SESSION_WORK_MEM).toBe("16MB");
    // Three at once: each pooled connection, not only the first, got the setting.
    const settings = await Promise.all([1, 2, 3].map(() => database.sql.query<{ work_mem: string }>("SELECT current_setting('work_mem') AS work_mem, pg_sleep(0.05)")));
    expect(settings.map((rows) => rows[0]!.work_mem)).toEqual(["16MB", "16MB", "16MB"]);
    const viaPrisma = await database.prisma.$queryRawUnsafe<Array<{ work_mem: string }>>("SHOW work_mem");
    expect(viaPrisma[0]!.work_mem).toBe("16MB");
  });

  it.runIf(testDatabaseKind() === "postgres")("keeps a larger value the server gives the session", async () => {
    const url = new URL(database.url!);
    url.searchParams.set("options", "-c work_mem=64MB");
    const larger = await openDatabase({ databaseUrl: url.toString(), migrate: false, poolSize: 1 });
    try {
      expect(await workMem(larger)).toBe("64MB");
    } finally {
      await larger.close();
    }
    url.searchParams.set("options", "-c work_mem=1MB");
    const smaller = await openDatabase({ databaseUrl: url.toString(), migrate: false, poolSize: 1 });
    try {
      expect(await workMem(smaller)).toBe("16MB");
    } finally {
      await smaller.close();
    }
  });
});
