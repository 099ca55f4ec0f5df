// Issue 14, point 7: a grant racing a cap change. The change locks the organization's buckets
// before it writes the cap, so a grant sent while it is open waits for its commit and reads the new
// cap. Needs two connections at once: PostgreSQL only (PGlite runs one statement at a time).
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { walletBucket } from "../src/money/ledger.ts";
import { LeasePool } from "../src/money/leases.ts";
import { setCap } from "../src/budgets/index.ts";
import { db, directSql } from "../src/db/index.ts";
import { createTestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";

describe("cap change and grant race", () => {
  it("a grant racing a cap change waits for it and is sized by the new cap", async () => {
    const database = await createTestDatabase();
    try {
      const w = await f.world({ credit: "100", key: { dailyCap: "1" } });
      const bucket = await walletBucket(w.org.id, "CREDIT");
      const pool = new LeasePool(directSql(), { instanceId: `race-${randomUUID()}`, ttlMs: 60_000, chunk: (need) => need * 100n });
      let granted: Promise<unknown> | null = null;
      await db.$transaction(async (tx) => {
        await setCap(tx, { organizationId: w.org.id, scope: "KEY_DAILY", scopeId: w.key.id, bucket: "CREDIT" }, 20_000n);
        // The grant runs on another connection while the change is open: it must wait for it.
        granted = pool.admit({ bucketId: bucket.id, keyId: w.key.id, projectId: w.project.id, amount: 10_000n });
        await new Promise((resolve) => setTimeout(resolve, 200));
      });
      expect(await granted).toMatchObject({ ok: true });
      // Leased under the new cap: at most 20,000 µ, however large the chunk asked for.
      const [row] = await database.sql.query<{ held: string }>(`SELECT held::text FROM "SpendCounter" WHERE scope = 'KEY_DAILY' AND "scopeId" = $1 AND bucket = 'CREDIT'`, [w.key.id]);
      expect(BigInt(row!.held)).toBeLessThanOrEqual(20_000n);
    } finally {
      await database.dispose();
    }
  });
});
