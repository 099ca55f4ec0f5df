// PostgreSQL only: a connection raises work_mem to SESSION_WORK_MEM (src/db/index.ts) unless the
// server gives the session more, and keeps the larger value.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, type Database } from "../src/db/index.ts";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase({ poolSize: 1 });
});
afterAll(async () => {
  await database.dispose();
});

const workMem = async (db: Database) => (await db.sql.query<{ work_mem: string }>("SHOW work_mem"))[0]!.work_mem;

describe("session settings on PostgreSQL", () => {
  it("keeps a larger value the server gives the session", async () => {
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
