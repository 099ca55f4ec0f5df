import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { postEntry, walletBucket } from "../src/money/ledger.ts";
import { ensureDefaultOrganization } from "../src/orgs/index.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(() => database.dispose());

describe("ledger entries are append-only", () => {
  it("rejects raw UPDATE, DELETE and TRUNCATE, and the entry is unchanged", async () => {
    const org = await ensureDefaultOrganization();
    const bucket = await walletBucket(org.id, "CREDIT");
    const { entry } = await postEntry({ bucketId: bucket.id, kind: "TOPUP", amount: 5_000_000n, idempotencyKey: "t1" });

    await expect(database.sql.query(`UPDATE "LedgerEntry" SET amount = 1 WHERE id = $1`, [entry.id])).rejects.toThrow(/append-only/);
    await expect(database.sql.query(`DELETE FROM "LedgerEntry" WHERE id = $1`, [entry.id])).rejects.toThrow(/append-only/);
    await expect(database.sql.query(`TRUNCATE "LedgerEntry" CASCADE`)).rejects.toThrow(/append-only/);
    await expect(database.prisma.ledgerEntry.update({ where: { id: entry.id }, data: { memo: "edited" } })).rejects.toThrow();

    const after = await database.prisma.ledgerEntry.findUniqueOrThrow({ where: { id: entry.id } });
    expect(after.amount).toBe(5_000_000n);
    expect(after.balanceAfter).toBe(5_000_000n);
    expect(after.memo).toBeNull();
  });
});
