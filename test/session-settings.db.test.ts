// Every session the gateway opens plans with at least SESSION_WORK_MEM (src/db/index.ts says why:
// a spend report over a Live view otherwise sorts every rollup row), through the driver and through
// Prisma (a PostgreSQL server configured with more keeps its own value: session-settings.pg.test.ts).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SESSION_WORK_MEM } from "../src/db/index.ts";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase({ poolSize: 3 });
});
afterAll(async () => {
  await database.dispose();
});

describe("session settings", () => {
  it(`plans with work_mem ${SESSION_WORK_MEM} on every connection, raw and through Prisma`, async () => {
    expect(SESSION_WORK_MEM).toBe("16MB");
    // Three at once: each pooled connection, not only the first, got the setting.
    const settings = await Promise.all([1, 2, 3].map(() => database.sql.query<{ work_mem: string }>("SELECT current_setting('work_mem') AS work_mem, pg_sleep(0.05)")));
    expect(settings.map((rows) => rows[0]!.work_mem)).toEqual(["16MB", "16MB", "16MB"]);
    const viaPrisma = await database.prisma.$queryRawUnsafe<Array<{ work_mem: string }>>("SHOW work_mem");
    expect(viaPrisma[0]!.work_mem).toBe("16MB");
  });
});
