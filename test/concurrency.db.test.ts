// 200 concurrent reservations from two independent clients (two "gateway processes") against
// each kind of cap: exactly as many are admitted as fit, and nothing overspends.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { ledgerViolations } from "./support/invariants.ts";
import { reserve, settle } from "../src/money/holds.ts";
import type { Refusal } from "../src/money/sql.ts";
import { scopeSpend, walletBucket } from "../src/money/ledger.ts";
import { setKeyCaps } from "../src/keys/index.ts";
import { setProjectBudget } from "../src/budgets/index.ts";
import { startRun } from "../src/runs/index.ts";
import type { Database } from "../src/db/index.ts";
import type { CapScope } from "../src/generated/prisma/enums.ts";

let database: TestDatabase;
let second: Database;
beforeAll(async () => {
  database = await createTestDatabase({ poolSize: 25 });
  second = await database.openSecondClient();
});
afterAll(async () => {
  await second.close();
  await database.dispose();
});

const AMOUNT = 70_000n; // 0.07: 10.00 admits exactly 142
const FITS = 142;

type Kind = CapScope | "INSUFFICIENT_BALANCE";
const kinds: Kind[] = ["KEY_DAILY", "PROJECT_DAILY", "PROJECT_MONTHLY", "ROUTE_DAILY", "RUN_TOTAL", "INSUFFICIENT_BALANCE"];

describe("200 concurrent reservations from two clients", () => {
  it.each(kinds)("against %s admit exactly what fits", async (kind) => {
    const w = await f.world({ credit: kind === "INSUFFICIENT_BALANCE" ? "10" : "1000" });
    const { route } = await f.route(w.viewer, w.org.id, `model-${kind}`, [{ name: "c", baseUrl: "http://127.0.0.1:9", upstreamModel: "m" }], kind === "ROUTE_DAILY" ? { dailyCap: "10" } : {});
    if (kind === "KEY_DAILY") await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: "10" });
    if (kind === "PROJECT_DAILY") await setProjectBudget(w.viewer, { projectId: w.project.id, dailyCap: "10" });
    if (kind === "PROJECT_MONTHLY") await setProjectBudget(w.viewer, { projectId: w.project.id, monthlyCap: "10" });
    const run = await startRun(w.viewer, { keyId: w.key.id, mode: "DEEP", cap: kind === "RUN_TOTAL" ? "10" : null });
    const bucketId = (await walletBucket(w.org.id, "CREDIT")).id;

    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        reserve(
          { requestId: randomUUID(), bucketId, amount: AMOUNT, keyId: w.key.id, projectId: w.project.id, routeId: route.id, runId: run.id, ttlMs: 60_000 },
          i % 2 === 0 ? database.prisma : second.prisma,
        ),
      ),
    );
    const admitted = results.filter((r) => r.ok);
    const refusals = new Set(results.flatMap((r) => (r.ok ? [] : [r.refusal as Refusal])));
    expect(admitted).toHaveLength(FITS);
    expect([...refusals]).toEqual([kind]);

    const scopeFor: Partial<Record<Kind, [CapScope, string]>> = {
      KEY_DAILY: ["KEY_DAILY", w.key.id],
      PROJECT_DAILY: ["PROJECT_DAILY", w.project.id],
      PROJECT_MONTHLY: ["PROJECT_MONTHLY", w.project.id],
      ROUTE_DAILY: ["ROUTE_DAILY", route.id],
      RUN_TOTAL: ["RUN_TOTAL", run.id],
      INSUFFICIENT_BALANCE: ["KEY_DAILY", w.key.id],
    };
    const [scope, scopeId] = scopeFor[kind]!;
    expect(await scopeSpend(scope, scopeId, "CREDIT")).toEqual({ spent: 0n, held: AMOUNT * BigInt(FITS) });

    // Settling them all, concurrently too, lands exactly at the cap and never past it.
    await Promise.all(admitted.map((r, i) => settle((r as { holdId: string }).holdId, AMOUNT, {}, i % 2 ? second.prisma : database.prisma)));
    expect(await scopeSpend(scope, scopeId, "CREDIT")).toEqual({ spent: AMOUNT * BigInt(FITS), held: 0n });
    const bucket = await database.prisma.walletBucket.findUniqueOrThrow({ where: { id: bucketId } });
    expect(bucket.balance).toBe((kind === "INSUFFICIENT_BALANCE" ? 10_000_000n : 1_000_000_000n) - AMOUNT * BigInt(FITS));
    expect(await ledgerViolations(database)).toEqual([]);
  });
});
