// Property: for any sequence of top-ups, reservations, settlements, releases, expiries and clock
// moves, after every step each bucket's balance is the sum of its ledger, available = balance −
// held ≥ 0, counters equal the holds, and no scope's spend plus holds exceeds its cap.
import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { ledgerViolations } from "./support/invariants.ts";
import { expireHolds, postEntry, release, reserve, settle, walletBucket } from "../src/accounting/index.ts";
import { setKeyCaps } from "../src/keys/index.ts";
import { setProjectBudget } from "../src/budgets/index.ts";
import { setRouteLimits } from "../src/routing/index.ts";
import { startRun } from "../src/runs/index.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(() => database.dispose());

type Step =
  | { op: "topUp"; bucket: 0 | 1; amount: number }
  | { op: "reserve"; bucket: 0 | 1; amount: number; key: 0 | 1; withRoute: boolean; withRun: boolean }
  | { op: "settle"; pick: number; fraction: number }
  | { op: "release"; pick: number; fraction: number }
  | { op: "expire"; pick: number }
  | { op: "advance"; hours: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ op: fc.constant("topUp" as const), bucket: fc.constantFrom(0 as const, 1 as const), amount: fc.integer({ min: 1, max: 3_000_000 }) }),
  fc.record({
    op: fc.constant("reserve" as const),
    bucket: fc.constantFrom(0 as const, 1 as const),
    amount: fc.integer({ min: 0, max: 2_500_000 }),
    key: fc.constantFrom(0 as const, 1 as const),
    withRoute: fc.boolean(),
    withRun: fc.boolean(),
  }),
  fc.record({ op: fc.constant("reserve" as const), bucket: fc.constant(0 as const), amount: fc.integer({ min: 0, max: 500_000 }), key: fc.constant(0 as const), withRoute: fc.constant(true), withRun: fc.constant(true) }),
  fc.record({ op: fc.constant("settle" as const), pick: fc.nat(), fraction: fc.double({ min: 0, max: 1.5, noNaN: true }) }),
  fc.record({ op: fc.constant("release" as const), pick: fc.nat(), fraction: fc.double({ min: 0, max: 1, noNaN: true }) }),
  fc.record({ op: fc.constant("expire" as const), pick: fc.nat() }),
  fc.record({ op: fc.constant("advance" as const), hours: fc.integer({ min: 1, max: 30 }) }),
);

describe("accounting invariants under random sequences", () => {
  it("hold after every step (seeded)", async () => {
    const w = await f.world({ credit: "0" });
    const second = await f.apiKey(w.viewer, w.project.id);
    const keys = [w.key, second.apiKey];
    const buckets = [await walletBucket(w.org.id, "CREDIT"), await walletBucket(w.org.id, "ROUTED")];
    const { route } = await f.route(w.viewer, w.org.id, "prop-model", [{ name: "c", baseUrl: "http://127.0.0.1:9", upstreamModel: "m" }]);
    let steps = 0;

    await fc.assert(
      fc.asyncProperty(
        fc.record({
          keyDaily: fc.integer({ min: 0, max: 6_000_000 }),
          perRequest: fc.integer({ min: 0, max: 3_000_000 }),
          projectDaily: fc.integer({ min: 0, max: 8_000_000 }),
          projectMonthly: fc.integer({ min: 0, max: 12_000_000 }),
          routeDaily: fc.integer({ min: 0, max: 5_000_000 }),
          runCap: fc.integer({ min: 0, max: 3_000_000 }),
        }),
        fc.array(step, { minLength: 1, maxLength: 14 }),
        async (caps, sequence) => {
          // Fresh caps per sequence (new windows and a new run keep sequences independent enough).
          const m = (n: number) => (n / 1e6).toFixed(6);
          for (const key of keys) {
            for (const capBucket of ["CREDIT", "ROUTED"] as const) {
              await setKeyCaps(w.viewer, { keyId: key.id, dailyCap: m(caps.keyDaily), perRequestMaxCharge: m(caps.perRequest), capBucket });
            }
          }
          await setProjectBudget(w.viewer, { projectId: w.project.id, dailyCap: m(caps.projectDaily), monthlyCap: m(caps.projectMonthly) });
          await setRouteLimits(w.viewer, { routeId: route.id, dailyCap: m(caps.routeDaily) });
          const run = await startRun(w.viewer, { keyId: w.key.id, mode: "QUICK", cap: m(caps.runCap) });
          // A clock far from today and from other sequences, so windows start empty.
          let clock = new Date(Date.UTC(2040, 0, 1) + steps * 3 * 86_400_000);
          const open: Array<{ holdId: string; amount: number }> = [];

          for (const s of sequence) {
            steps++;
            switch (s.op) {
              case "topUp":
                await postEntry({ bucketId: buckets[s.bucket]!.id, kind: "TOPUP", amount: BigInt(s.amount), idempotencyKey: randomUUID() });
                break;
              case "reserve": {
                const r = await reserve({
                  requestId: randomUUID(),
                  bucketId: buckets[s.bucket]!.id,
                  amount: BigInt(s.amount),
                  keyId: keys[s.key]!.id,
                  projectId: w.project.id,
                  routeId: s.withRoute ? route.id : null,
                  runId: s.withRun && s.key === 0 ? run.id : null,
                  now: clock,
                  ttlMs: 3_600_000,
                });
                if (r.ok) open.push({ holdId: r.holdId, amount: s.amount });
                break;
              }
              case "settle":
              case "release": {
                if (!open.length) break;
                const [h] = open.splice(s.pick % open.length, 1);
                const charge = BigInt(Math.floor(h!.amount * s.fraction));
                const result = s.op === "settle" ? await settle(h!.holdId, charge, { now: clock }) : await release(h!.holdId, charge, { now: clock });
                expect(result.charged).toBe(charge > BigInt(h!.amount) ? BigInt(h!.amount) : charge);
                break;
              }
              case "expire": {
                // Everything reserved more than the TTL ago expires.
                const expired = await expireHolds(new Date(clock.getTime() + 3_600_001));
                expect(expired).toBe(open.length);
                open.length = 0;
                break;
              }
              case "advance":
                clock = new Date(clock.getTime() + s.hours * 3_600_000);
                break;
            }
            const violations = await ledgerViolations(database);
            expect(violations).toEqual([]);
          }
          // Leave nothing open for the next sequence.
          for (const h of open) await release(h.holdId);
        },
      ),
      { seed: 20261122, numRuns: Number(process.env.PROPERTY_RUNS ?? 120), endOnFailure: true },
    );
    expect(steps).toBeGreaterThan(200);
  }, 600_000);
});
