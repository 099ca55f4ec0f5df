// Property (issue 9, point 2): for any sequence of admissions on two instances, batched charges,
// releases, heartbeats, returns, expiries, instance deaths and stalls, top-ups and clock moves, after every
// step the database keeps: for every capped scope spent + Σ live leases ≤ cap; for every counter
// and bucket held = Σ its leases; Σ leases ≤ balance; balance = Σ ledger; every charge is a
// ledger entry. And no instance ever holds more in flight than its leases.
import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { postEntry, walletBucket } from "../src/money/ledger.ts";
import { chargeBatch, LeasePool, reclaimLeases, type LeaseHold } from "../src/money/leases.ts";
import { directSql } from "../src/db/index.ts";
import { setKeyCaps } from "../src/keys/index.ts";
import { setProjectBudget } from "../src/budgets/index.ts";
import { setRouteLimits } from "../src/routing/index.ts";
import { startRun } from "../src/runs/index.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(() => database.dispose());

const TTL_MS = 1_000;

type Step =
  | { op: "topUp"; bucket: 0 | 1; amount: number }
  | { op: "admit"; inst: 0 | 1; bucket: 0 | 1; amount: number; key: 0 | 1; withRoute: boolean; withRun: boolean }
  | { op: "settle"; picks: number[]; fraction: number }
  | { op: "release"; pick: number }
  | { op: "maintain"; inst: 0 | 1 }
  | { op: "returnAll"; inst: 0 | 1 }
  | { op: "die"; inst: 0 | 1 }
  | { op: "tick"; ms: number }
  | { op: "stall"; inst: 0 | 1 }
  | { op: "expire" }
  | { op: "advance"; hours: number }
  | { op: "setCap"; keyDaily: number }
  | { op: "recall"; inst: 0 | 1; bucket: 0 | 1; key: 0 | 1 };

const inst = fc.constantFrom(0 as const, 1 as const);
const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ op: fc.constant("topUp" as const), bucket: fc.constantFrom(0 as const, 1 as const), amount: fc.integer({ min: 1, max: 3_000_000 }) }),
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant("admit" as const),
      inst,
      bucket: fc.constantFrom(0 as const, 0 as const, 1 as const),
      amount: fc.integer({ min: 0, max: 1_500_000 }),
      key: fc.constantFrom(0 as const, 1 as const),
      withRoute: fc.boolean(),
      withRun: fc.boolean(),
    }),
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant("settle" as const), picks: fc.array(fc.nat(), { minLength: 1, maxLength: 4 }), fraction: fc.double({ min: 0, max: 1, noNaN: true }) }) },
  fc.record({ op: fc.constant("release" as const), pick: fc.nat() }),
  fc.record({ op: fc.constant("maintain" as const), inst }),
  fc.record({ op: fc.constant("returnAll" as const), inst }),
  fc.record({ op: fc.constant("die" as const), inst }),
  fc.record({ op: fc.constant("tick" as const), ms: fc.integer({ min: 1, max: Math.floor(TTL_MS / 3) }) }),
  fc.record({ op: fc.constant("stall" as const), inst }),
  fc.record({ op: fc.constant("expire" as const) }),
  fc.record({ op: fc.constant("advance" as const), hours: fc.integer({ min: 1, max: 30 }) }),
  // An admin lowers or raises the first key's daily cap mid-sequence (its leases are revoked).
  fc.record({ op: fc.constant("setCap" as const), keyDaily: fc.oneof(fc.integer({ min: 0, max: 200_000 }), fc.integer({ min: 0, max: 6_000_000 })) }),
  // Another instance was refused near a key's daily cap: this one gives its free headroom back.
  fc.record({ op: fc.constant("recall" as const), inst, bucket: fc.constantFrom(0 as const, 1 as const), key: fc.constantFrom(0 as const, 1 as const) }),
);

/**
 * Every invariant of point 2, in SQL; caps are checked for the windows from `since` on (earlier
 * windows had other caps). `grace` (per scope id): what requests admitted before a cap was lowered
 * may still be charged above it (admitted under the old cap; no request admitted after the change may).
 */
async function leaseViolations(since: Date, runId: string, grace: ReadonlyMap<string, bigint> = new Map()): Promise<string[]> {
  const q = database.sql.query.bind(database.sql);
  const out: string[] = [];
  for (const row of await q<{ id: string; balance: string; held: string; ledger: string; leases: string }>(`
    SELECT b.id, b.balance::text, b.held::text,
           COALESCE((SELECT SUM(amount) FROM "LedgerEntry" e WHERE e."bucketId" = b.id), 0)::text AS ledger,
           COALESCE((SELECT SUM(amount) FROM "BudgetLease" l WHERE l."bucketId" = b.id AND l.scope = 'BALANCE'), 0)::text AS leases
      FROM "WalletBucket" b`)) {
    if (row.balance !== row.ledger) out.push(`bucket ${row.id}: balance ${row.balance} != ledger ${row.ledger}`);
    if (row.held !== row.leases) out.push(`bucket ${row.id}: held ${row.held} != Σ leases ${row.leases}`);
    if (BigInt(row.held) > BigInt(row.balance)) out.push(`bucket ${row.id}: leases ${row.held} > balance ${row.balance}`);
  }
  for (const row of await q<{ scope: string; scope_id: string; held: string; leases: string }>(`
    SELECT c.scope::text, c."scopeId" AS scope_id, c.held::text,
           COALESCE((SELECT SUM(l.amount) FROM "BudgetLease" l JOIN "WalletBucket" b ON b.id = l."bucketId"
                      WHERE l.scope = c.scope::text AND l."scopeId" = c."scopeId" AND b.bucket = c.bucket AND l."windowStart" = c."windowStart"), 0)::text AS leases
      FROM "SpendCounter" c`)) {
    if (row.held !== row.leases) out.push(`counter ${row.scope}/${row.scope_id}: held ${row.held} != Σ leases ${row.leases}`);
  }
  for (const row of await q<{ scope: string; scope_id: string; used: string; cap: string }>(
    `SELECT c.scope::text, c."scopeId" AS scope_id, (c.spent + c.held)::text AS used, tg_effective_cap(c.scope, c."scopeId", c.bucket)::text AS cap
       FROM "SpendCounter" c
      WHERE (c."windowStart" >= $1::timestamptz AT TIME ZONE 'UTC' OR c."scopeId" = $2)
        AND c.spent + c.held > tg_effective_cap(c.scope, c."scopeId", c.bucket)`,
    [since.toISOString(), runId],
  )) {
    if (BigInt(row.used) > BigInt(row.cap) + (grace.get(`${row.scope}|${row.scope_id}`) ?? 0n)) out.push(`cap exceeded: ${row.scope} used ${row.used} > cap ${row.cap}`);
  }
  for (const row of await q<{ id: string }>(`
    SELECT e.id FROM (SELECT id, "balanceAfter", SUM(amount) OVER (PARTITION BY "bucketId" ORDER BY sequence) AS running FROM "LedgerEntry") e
     WHERE e."balanceAfter" <> e.running`)) {
    out.push(`ledger entry ${row.id}: balanceAfter differs from the running sum`);
  }
  return out;
}

describe("lease invariants under random sequences (two instances)", () => {
  it("hold after every step (seeded)", async () => {
    const w = await f.world({ credit: "0" });
    const second = await f.apiKey(w.viewer, w.project.id);
    const keys = [w.key, second.apiKey];
    const buckets = [await walletBucket(w.org.id, "CREDIT"), await walletBucket(w.org.id, "ROUTED")];
    const { route } = await f.route(w.viewer, w.org.id, "lease-model", [{ name: "c", baseUrl: "http://127.0.0.1:9", upstreamModel: "m" }]);
    const sql = directSql();
    let steps = 0;
    let sequenceNo = 0;
    let charged = 0n;

    await fc.assert(
      fc.asyncProperty(
        fc.record({
          keyDaily: fc.integer({ min: 0, max: 6_000_000 }),
          perRequest: fc.integer({ min: 0, max: 3_000_000 }),
          projectDaily: fc.integer({ min: 0, max: 8_000_000 }),
          projectMonthly: fc.integer({ min: 0, max: 12_000_000 }),
          routeDaily: fc.integer({ min: 0, max: 5_000_000 }),
          runCap: fc.integer({ min: 0, max: 3_000_000 }),
          chunk: fc.integer({ min: 0, max: 4_000_000 }),
        }),
        fc.array(step, { minLength: 1, maxLength: 16 }),
        async (caps, sequence) => {
          const m = (n: number) => (n / 1e6).toFixed(6);
          // Caps in CREDIT only for the second key: ROUTED is then capped at zero for it.
          await setKeyCaps(w.viewer, { keyId: keys[0]!.id, dailyCap: m(caps.keyDaily), perRequestMaxCharge: m(caps.perRequest), capBucket: "CREDIT" });
          await setKeyCaps(w.viewer, { keyId: keys[0]!.id, dailyCap: m(caps.keyDaily), perRequestMaxCharge: m(caps.perRequest), capBucket: "ROUTED" });
          await setKeyCaps(w.viewer, { keyId: keys[1]!.id, dailyCap: m(caps.keyDaily), capBucket: "CREDIT" });
          await setProjectBudget(w.viewer, { projectId: w.project.id, dailyCap: m(caps.projectDaily), monthlyCap: m(caps.projectMonthly) });
          await setRouteLimits(w.viewer, { routeId: route.id, dailyCap: m(caps.routeDaily) });
          const run = await startRun(w.viewer, { keyId: w.key.id, mode: "QUICK", cap: m(caps.runCap) });
          // Each sequence starts on its own month (its windows saw no other caps).
          const start = new Date(Date.UTC(2050, sequenceNo++ * 3, 1));
          let clock = start.getTime();
          const pool = (n: number) =>
            new LeasePool(sql, { instanceId: `i${n}-${randomUUID()}`, ttlMs: TTL_MS, chunk: (need) => need + BigInt(caps.chunk), clock: () => clock, databaseTime: () => new Date(clock) });
          const pools = [pool(0), pool(1)];
          const open: Array<{ inst: 0 | 1; hold: LeaseHold; requestId: string }> = [];
          const grace = new Map<string, bigint>();
          // Some balance to start with, so admissions (and leases to revoke or recall) are common.
          await postEntry({ bucketId: buckets[0]!.id, kind: "TOPUP", amount: 3_000_000n, idempotencyKey: randomUUID(), now: new Date(clock) });

          for (const s of sequence) {
            steps++;
            switch (s.op) {
              case "topUp":
                await postEntry({ bucketId: buckets[s.bucket]!.id, kind: "TOPUP", amount: BigInt(s.amount), idempotencyKey: randomUUID(), now: new Date(clock) });
                break;
              case "admit": {
                const r = await pools[s.inst]!.admit({
                  bucketId: buckets[s.bucket]!.id,
                  amount: BigInt(s.amount),
                  keyId: keys[s.key]!.id,
                  projectId: w.project.id,
                  routeId: s.withRoute ? route.id : null,
                  runId: s.withRun && s.key === 0 ? run.id : null,
                  perRequestCap: s.key === 0 ? BigInt(caps.perRequest) : null,
                  now: new Date(clock),
                });
                if (r.ok) open.push({ inst: s.inst, hold: r.hold, requestId: randomUUID() });
                break;
              }
              case "settle": {
                // One batch per instance: the holds picked, each charged a fraction of its worst case.
                const picked = new Set(s.picks.map((p) => (open.length ? p % open.length : -1)).filter((p) => p >= 0));
                const items = [...picked].sort((a, b) => b - a).map((i) => open.splice(i, 1)[0]!);
                for (const n of [0, 1] as const) {
                  const mine = items.filter((o) => o.inst === n);
                  if (!mine.length) continue;
                  const batch = mine.map((o) => ({ requestId: o.requestId, bucketId: o.hold.bucketId, charge: BigInt(Math.floor(Number(o.hold.amount) * s.fraction)), hold: o.hold }));
                  const total = batch.reduce((sum, b) => sum + b.charge, 0n);
                  const entries = await chargeBatch(pools[n]!, batch, sql, new Date(clock));
                  expect(entries.size).toBe(batch.filter((b) => b.charge > 0n).length);
                  charged += total;
                }
                break;
              }
              case "release": {
                if (!open.length) break;
                const [o] = open.splice(s.pick % open.length, 1);
                pools[o!.inst]!.release(o!.hold);
                break;
              }
              case "maintain":
                await pools[s.inst]!.maintain();
                break;
              case "returnAll":
                await pools[s.inst]!.returnAll();
                break;
              case "die": {
                // SIGKILL: the instance's memory (and its requests in flight) is gone; its leases stay until they lapse.
                pools[s.inst]!.abandon();
                for (let i = open.length - 1; i >= 0; i--) if (open[i]!.inst === s.inst) open.splice(i, 1);
                pools[s.inst] = pool(s.inst);
                break;
              }
              case "tick":
                // Time passes within the TTL; heartbeats keep live instances' leases.
                clock += s.ms;
                for (const p of pools) await p.maintain();
                break;
              case "stall":
                // One instance stalls past the TTL with requests in flight (its heartbeat is late): the
                // others sweep its leases; its holds are then charged as lapsed, and it leases anew.
                for (let waited = 0; waited < 2 * TTL_MS; waited += Math.floor(TTL_MS / 3)) {
                  clock += Math.floor(TTL_MS / 3);
                  for (const [n, p] of pools.entries()) if (n !== s.inst) await p.maintain();
                  await reclaimLeases(sql, 0, new Date(clock));
                }
                break;
              case "expire":
                await reclaimLeases(sql, 0, new Date(clock));
                break;
              case "setCap": {
                // Requests in flight were admitted under the old cap: what they may still charge is the grace.
                const scopeKey = `KEY_DAILY|${keys[0]!.id}`;
                const inFlight = open.filter((o) => o.hold.leases.some((l) => l.scope === "KEY_DAILY" && l.scopeId === keys[0]!.id)).reduce((sum, o) => sum + o.hold.amount, 0n);
                // A dead instance's leases cannot be given back: they stay counted until the sweep
                // reclaims them (live instances give their free headroom back below, so only what is
                // in flight in theirs counts). Found at PROPERTY_RUNS=1000: a lease of a killed
                // instance, still held when the cap was lowered under it.
                const live = pools.map((p) => p.instanceId);
                const [dead] = await database.sql.query<{ held: string }>(
                  `SELECT COALESCE(SUM(amount), 0)::text AS held FROM "BudgetLease" WHERE scope = 'KEY_DAILY' AND "scopeId" = $1 AND NOT ("instanceId" = ANY($2))`,
                  [keys[0]!.id, live],
                );
                grace.set(scopeKey, (grace.get(scopeKey) ?? 0n) + inFlight + BigInt(dead!.held));
                await setKeyCaps(w.viewer, { keyId: keys[0]!.id, dailyCap: m(s.keyDaily), capBucket: "CREDIT" });
                // What the leasesRevoked event does in the gateway (src/money/index.ts).
                for (const p of pools) await p.forgetScope("KEY_DAILY", keys[0]!.id);
                break;
              }
              case "recall":
                await pools[s.inst]!.recall(buckets[s.bucket]!.id, "KEY_DAILY", keys[s.key]!.id);
                break;
              case "advance": {
                // Hours pass: requests in flight finish uncharged, the heartbeat had kept leases, now they idle out.
                for (const o of open.splice(0)) pools[o.inst]!.release(o.hold);
                for (const p of pools) await p.returnAll();
                clock += s.hours * 3_600_000;
                await reclaimLeases(sql, 0, new Date(clock));
                for (const p of pools) await p.maintain();
                break;
              }
            }
            for (const p of pools) for (const l of p.snapshot()) expect(l.inFlight <= l.amount || l.amount === 0n).toBe(true);
            expect(await leaseViolations(start, run.id, grace)).toEqual([]);
          }
          // Leave nothing behind for the next sequence: requests end, instances stop.
          for (const o of open) pools[o.inst]!.release(o.hold);
          for (const p of pools) await p.returnAll();
          // Once its requests ended, a live instance gives back everything it holds (a dead one's
          // leases wait for their TTL), whatever lapsed and was granted anew meanwhile.
          for (const p of pools) {
            expect(p.snapshot().filter((l) => l.amount > 0n || l.inFlight > 0n)).toEqual([]);
            const mine = await database.sql.query<{ n: string }>(`SELECT count(*)::text AS n FROM "BudgetLease" WHERE "instanceId" = $1 AND amount > 0`, [p.instanceId]);
            expect(mine[0]!.n).toBe("0");
          }
          await reclaimLeases(sql, 0, new Date(clock + 10 * TTL_MS));
          expect(await leaseViolations(start, run.id, grace)).toEqual([]);
        },
      ),
      // PROPERTY_PATH=<path> replays one failing run (fast-check prints its seed and path).
      { seed: 20261123, numRuns: Number(process.env.PROPERTY_RUNS ?? 60), endOnFailure: true, ...(process.env.PROPERTY_PATH ? { path: process.env.PROPERTY_PATH } : {}) },
    );
    // Every charge is in the ledger (CHARGE entries only come from the lease path here).
    const ledger = await database.sql.query<{ total: string }>(`SELECT COALESCE(-SUM(amount), 0)::text AS total FROM "LedgerEntry" WHERE kind = 'CHARGE'`);
    expect(BigInt(ledger[0]!.total)).toBe(charged);
    const leftover = await database.sql.query<{ n: string }>(`SELECT count(*)::text AS n FROM "BudgetLease"`);
    expect(leftover[0]!.n).toBe("0");
    expect(steps).toBeGreaterThan(200);
  }, 600_000);
});

describe("an instance that stalls past the TTL with requests in flight", () => {
  it("charges them as lapsed, leases anew for new requests, and gives everything back once they end", async () => {
    const w = await f.world({ credit: "100" });
    const bucket = await walletBucket(w.org.id, "CREDIT");
    const sql = directSql();
    let clock = Date.now();
    const pool = new LeasePool(sql, { instanceId: `stall-${randomUUID()}`, ttlMs: TTL_MS, chunk: (need) => need * 4n, clock: () => clock, databaseTime: () => new Date(clock) });
    const admit = async (amount: bigint) => {
      const r = await pool.admit({ bucketId: bucket.id, amount, keyId: w.key.id, projectId: w.project.id, now: new Date(clock) });
      if (!r.ok) throw new Error(`refused: ${r.refusal}`);
      return r.hold;
    };
    const first = await admit(1_000n);
    // No heartbeat for two TTLs: another instance's sweep lapses this one's leases.
    clock += 2 * TTL_MS;
    expect(await reclaimLeases(sql, 0, new Date(clock))).toBeGreaterThan(0);
    const second = await admit(1_000n);
    await chargeBatch(pool, [{ requestId: randomUUID(), bucketId: bucket.id, charge: 600n, hold: first }], sql, new Date(clock));
    await chargeBatch(pool, [{ requestId: randomUUID(), bucketId: bucket.id, charge: 300n, hold: second }], sql, new Date(clock));
    await pool.returnAll();
    expect(pool.snapshot()).toEqual([]);
    expect((await database.sql.query<{ n: string }>(`SELECT count(*)::text AS n FROM "BudgetLease" WHERE "instanceId" = $1`, [pool.instanceId]))[0]!.n).toBe("0");
    expect(await walletBucket(w.org.id, "CREDIT")).toMatchObject({ balance: 100_000_000n - 900n, held: 0n });
    for (const scope of ["KEY_DAILY", "PROJECT_DAILY", "PROJECT_MONTHLY"] as const) {
      const scopeId = scope === "KEY_DAILY" ? w.key.id : w.project.id;
      const rows = await database.sql.query<{ spent: string; held: string }>(`SELECT spent::text, held::text FROM "SpendCounter" WHERE scope = $1 AND "scopeId" = $2 AND bucket = 'CREDIT'`, [
        scope,
        scopeId,
      ]);
      expect(rows.map((r) => [r.spent, r.held])).toEqual([["900", "0"]]);
    }
  });
});
