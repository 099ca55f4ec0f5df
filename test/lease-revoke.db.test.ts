// Budget leases and cap changes (issue 9): a cap written by a mutation revokes its scope's leases
// at once, so headroom granted under the old cap is never spent under the new one; and an
// instance refused near a cap gets the headroom idling in another instance's leases back by
// recalling it over the event bus, instead of waiting for that lease to idle out.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { setKeyCaps } from "../src/keys/index.ts";
import { leaseMoneyPath, type MoneyPath } from "../src/money/index.ts";
import { LeasePool } from "../src/money/leases.ts";
import { directSql } from "../src/db/index.ts";
import { events } from "./support/services.ts";

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
    reclaimGraceMs: 0,
    chunkRequests: 32,
    capCacheTtlMs: 60_000,
    events,
    onError: (message, error) => {
      throw new Error(`${message}: ${String(error)}`);
    },
  });
}

async function admit(money: MoneyPath, w: World, bucketId: string, amount: bigint) {
  return money.reserve({ bucketId, amount, keyId: w.key.id, projectId: w.project.id });
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
      // The lease is revoked: its free part went back; the first request, still in flight, stays counted.
      expect(await keyDaily(w)).toEqual({ spent: 0n, held: 10_000n, leases: 10_000n });

      // 15,000 µ cap with 10,000 µ in flight: another 10,000 µ request does not fit, 5,000 µ does (a fresh grant under the new cap).
      expect(await admit(money, w, bucket.id, 10_000n)).toEqual({ ok: false, refusal: "KEY_DAILY" });
      const second = await admit(money, w, bucket.id, 5_000n);
      expect(second.ok).toBe(true);
      expect(await admit(money, w, bucket.id, 1n)).toEqual({ ok: false, refusal: "KEY_DAILY" });
      expect(await keyDaily(w)).toEqual({ spent: 0n, held: 15_000n, leases: 15_000n });

      // The first request ends: its revoked lease goes back whole.
      if (first.ok) await money.release({ id: first.holdId, amount: 10_000n });
      await settleEvents();
      expect(await keyDaily(w)).toEqual({ spent: 0n, held: 5_000n, leases: 5_000n });
      if (second.ok) await money.release({ id: second.holdId, amount: 5_000n });
    } finally {
      await money.close();
    }
    // Everything given back: nothing held, no lease left.
    expect(await keyDaily(w)).toEqual({ spent: 0n, held: 0n, leases: 0n });
  });

  it("re-saving a cap (same value) keeps the requests in flight counted: a request refused before is refused after (issue 14, point 2)", async () => {
    const w = await f.world({ credit: "100", key: { dailyCap: "1" } });
    const bucket = await walletBucket(w.org.id, "CREDIT");
    const money = instance();
    try {
      const r1 = await admit(money, w, bucket.id, 930_000n);
      expect(r1.ok).toBe(true);
      expect(await admit(money, w, bucket.id, 930_000n)).toEqual({ ok: false, refusal: "KEY_DAILY" });
      await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: "1" });
      await settleEvents();
      // Today's code gave R1's hold back with the revoked lease: R2 was admitted and both spent 1.82 of 1.00.
      expect(await admit(money, w, bucket.id, 930_000n)).toEqual({ ok: false, refusal: "KEY_DAILY" });
      expect((await keyDaily(w)).held).toBe(930_000n);
      // What is left under the cap is still available.
      const small = await admit(money, w, bucket.id, 70_000n);
      expect(small.ok).toBe(true);
      expect(await admit(money, w, bucket.id, 1n)).toEqual({ ok: false, refusal: "KEY_DAILY" });
      if (r1.ok) await money.release({ id: r1.holdId, amount: 930_000n });
      if (small.ok) await money.release({ id: small.holdId, amount: 70_000n });
    } finally {
      await money.close();
    }
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
