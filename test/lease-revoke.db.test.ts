// Budget leases and cap changes (issue 9): a cap written by a mutation revokes its scope's leases
// at once, so headroom granted under the old cap is never spent under the new one; and an
// instance refused near a cap gets the headroom idling in another instance's leases back by
// recalling it over the event bus, instead of waiting for that lease to idle out.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { walletBucket } from "../src/accounting/index.ts";
import { setKeyCaps } from "../src/keys/index.ts";
import { leaseMoneyPath, type MoneyPath } from "../src/gateway/money.ts";
import { LeasePool } from "../src/accounting/leases.ts";
import { directSql } from "../src/db/index.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(() => database.dispose());

type World = Awaited<ReturnType<typeof f.world>>;

function instance(): MoneyPath {
  // A TTL long enough that nothing idles out or lapses during a test: only revocation and recall move leases.
  return leaseMoneyPath({
    ttlMs: 60_000,
    chunkRequests: 32,
    capCacheTtlMs: 60_000,
    onError: (message, error) => {
      throw new Error(`${message}: ${String(error)}`);
    },
  });
}

async function admit(money: MoneyPath, w: World, bucketId: string, amount: bigint) {
  return money.reserve({ requestId: randomUUID(), bucketId, amount, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000 });
}

async function keyDaily(w: World): Promise<{ spent: bigint; held: bigint; leases: bigint }> {
  const [row] = await database.sql.query<{ spent: string; held: string; leases: string }>(
    `SELECT COALESCE(SUM(c.spent), 0)::text AS spent, COALESCE(SUM(c.held), 0)::text AS held,
            (SELECT COALESCE(SUM(l.amount), 0) FROM "BudgetLease" l WHERE l.scope = 'KEY_DAILY' AND l."scopeId" = $1)::text AS leases
       FROM "SpendCounter" c WHERE c.scope = 'KEY_DAILY' AND c."scopeId" = $1`,
    [w.key.id],
  );
  return { spent: BigInt(row!.spent), held: BigInt(row!.held), leases: BigInt(row!.leases) };
}

/** In-process events are delivered on a later turn of the event loop. */
const settleEvents = () => new Promise((resolve) => setTimeout(resolve, 50));

describe("budget leases and cap changes", () => {
  it("lowering a key's daily cap revokes its leases: no new request is admitted against headroom granted under the old cap", async () => {
    const w = await f.world({ credit: "100", key: { dailyCap: "1" } });
    const bucket = await walletBucket(w.org.id, "CREDIT");
    const money = instance();
    try {
      const first = await admit(money, w, bucket.id, 10_000n);
      expect(first.ok).toBe(true);
      // The grant is a quarter of what is left below half use: 250,000 µ of the 1,000,000 µ cap.
      expect(await keyDaily(w)).toEqual({ spent: 0n, held: 250_000n, leases: 250_000n });

      await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: "0.015" });
      await settleEvents();
      // The lease is gone from the database and from the instance; the first request is still in flight.
      expect(await keyDaily(w)).toEqual({ spent: 0n, held: 0n, leases: 0n });

      // 15,000 µ cap: one more 10,000 µ request fits (a fresh grant under the new cap), a second does not.
      const second = await admit(money, w, bucket.id, 10_000n);
      expect(second.ok).toBe(true);
      const third = await admit(money, w, bucket.id, 10_000n);
      expect(third).toEqual({ ok: false, refusal: "KEY_DAILY" });
      expect(await keyDaily(w)).toEqual({ spent: 0n, held: 10_000n, leases: 10_000n });

      if (first.ok) await money.release({ id: first.holdId, amount: 10_000n });
      if (second.ok) await money.release({ id: second.holdId, amount: 10_000n });
    } finally {
      await money.close();
    }
    // Everything given back: nothing held, no lease left.
    expect(await keyDaily(w)).toEqual({ spent: 0n, held: 0n, leases: 0n });
  });

  it("an instance refused near a cap recalls the headroom idling in another instance's lease; its next request is admitted", async () => {
    const w = await f.world({ credit: "100", key: { dailyCap: "0.1" } });
    const bucket = await walletBucket(w.org.id, "CREDIT");
    const a = instance();
    const b = instance();
    try {
      const onA = await admit(a, w, bucket.id, 10_000n);
      expect(onA.ok).toBe(true);
      if (onA.ok) await a.release({ id: onA.holdId, amount: 10_000n });
      // A keeps its (now idle) lease: a quarter of the 100,000 µ cap.
      expect(await keyDaily(w)).toEqual({ spent: 0n, held: 25_000n, leases: 25_000n });

      // B needs 80,000 µ; 75,000 µ are free: refused, and A is asked to give its lease back.
      expect(await admit(b, w, bucket.id, 80_000n)).toEqual({ ok: false, refusal: "KEY_DAILY" });
      await settleEvents();
      expect(await keyDaily(w)).toEqual({ spent: 0n, held: 0n, leases: 0n });

      const retried = await admit(b, w, bucket.id, 80_000n);
      expect(retried.ok).toBe(true);
      if (retried.ok) await b.release({ id: retried.holdId, amount: 80_000n });
    } finally {
      await a.close();
      await b.close();
    }
    expect(await keyDaily(w)).toEqual({ spent: 0n, held: 0n, leases: 0n });
  });

  it("a key at its cap hammered with requests costs one grant statement per 25 ms, not one per request; a raised cap admits at once", async () => {
    const w = await f.world({ credit: "100", key: { dailyCap: "0.01" } });
    const bucket = await walletBucket(w.org.id, "CREDIT");
    let clock = Date.now();
    const pool = new LeasePool(directSql(), { instanceId: randomUUID(), ttlMs: 60_000, chunk: (need) => need, clock: () => clock });
    const input = { bucketId: bucket.id, keyId: w.key.id, projectId: w.project.id };
    const all = await pool.admit({ ...input, amount: 10_000n });
    expect(all.ok).toBe(true);
    const before = pool.stats.grantStatements;
    for (let i = 0; i < 200; i++) expect(await pool.admit({ ...input, amount: 1_000n })).toEqual({ ok: false, refusal: "KEY_DAILY" });
    expect(pool.stats.grantStatements - before).toBe(1);
    // A smaller request is asked of the database again; so is any request once the window passed.
    expect(await pool.admit({ ...input, amount: 500n })).toEqual({ ok: false, refusal: "KEY_DAILY" });
    clock += 30;
    expect(await pool.admit({ ...input, amount: 1_000n })).toEqual({ ok: false, refusal: "KEY_DAILY" });
    expect(pool.stats.grantStatements - before).toBe(3);
    // The cap is raised: the revocation event (forgetScope) clears what was refused, the next request is granted.
    await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: "1" });
    pool.forgetScope("KEY_DAILY", w.key.id);
    const after = await pool.admit({ ...input, amount: 1_000n });
    expect(after.ok).toBe(true);
    if (all.ok) pool.release(all.hold);
    if (after.ok) pool.release(after.hold);
    await pool.returnAll();
  });
});
