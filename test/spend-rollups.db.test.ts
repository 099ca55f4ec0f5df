// Hourly spend rollups always equal the receipts and charged failed requests they summarize, after
// random traffic written the ways the gateway writes (one row per statement, multi-row batches),
// plus rare updates and deletes; and spendSeries answers from them exactly as a raw scan does.
import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { spendSeries, spendSeriesFromRawRows, type SpendSeriesInput } from "../src/analytics/index.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database?.dispose();
});

interface Scene {
  orgId: string;
  keys: Array<{ id: string; projectId: string }>;
  routes: Array<{ id: string; model: string; channelId: string; snapshotId: string }>;
}

async function scene(): Promise<Scene> {
  const w = await f.world({ routed: "100" });
  const second = await f.project(w.viewer, w.org.id);
  const k2 = (await f.apiKey(w.viewer, second.id)).apiKey;
  const k3 = (await f.apiKey(w.viewer, w.project.id)).apiKey;
  const routes: Scene["routes"] = [];
  for (const model of ["model-a", "model-b"]) {
    const r = await f.route(w.viewer, w.org.id, `${model}-${randomUUID().slice(0, 6)}`, [
      { name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: model, settlement: "OFFICIAL", price: ["1", "2"] },
    ]);
    const snapshot = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: r.channels[0]!.id } });
    routes.push({ id: r.route.id, model: r.route.model, channelId: r.channels[0]!.id, snapshotId: snapshot.id });
  }
  return { orgId: w.org.id, keys: [w.key, k2, k3].map((k) => ({ id: k.id, projectId: k.projectId })), routes };
}

const BASE = Date.UTC(2026, 5, 1, 0, 0, 0);

interface Row {
  failed: boolean;
  key: number;
  route: number;
  /** Failed requests may have no key or route (refused before routing). */
  anonymous: boolean;
  bucket: "CREDIT" | "ROUTED";
  charge: number;
  prompt: number;
  completion: number;
  /** Milliseconds after BASE, over three days. */
  at: number;
}

const rowArb: fc.Arbitrary<Row> = fc.record({
  failed: fc.boolean(),
  key: fc.integer({ min: 0, max: 2 }),
  route: fc.integer({ min: 0, max: 1 }),
  anonymous: fc.boolean(),
  bucket: fc.constantFrom("CREDIT" as const, "ROUTED" as const),
  charge: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 5_000_000 })),
  prompt: fc.integer({ min: 0, max: 100_000 }),
  completion: fc.integer({ min: 0, max: 100_000 }),
  at: fc.integer({ min: 0, max: 3 * 86_400_000 - 1 }),
});

/** Writes rows as one multi-row INSERT per table (a batch) — or, with batch = false, one statement per row. */
async function write(s: Scene, rows: Row[], batch: boolean): Promise<void> {
  const chunks = batch ? [rows] : rows.map((r) => [r]);
  for (const chunk of chunks) {
    const receipts = chunk.filter((r) => !r.failed);
    const failed = chunk.filter((r) => r.failed);
    if (receipts.length) {
      const params: unknown[] = [];
      const values = receipts.map((r) => {
        const k = s.keys[r.key]!;
        const rt = s.routes[r.route]!;
        params.push(randomUUID(), s.orgId, k.id, k.projectId, rt.id, rt.channelId, rt.model, r.bucket, r.bucket === "CREDIT" ? "USD" : "CNY",
          r.prompt, r.completion, rt.snapshotId, String(r.charge), new Date(BASE + r.at).toISOString());
        const n = params.length - 14;
        return `($${n + 1}, $${n + 2}, $${n + 3}, $${n + 4}, $${n + 5}, $${n + 6}, $${n + 7}, 'up', '/v1/chat/completions', 'PRIMARY', false, 1,
                 $${n + 8}::"BalanceBucket", $${n + 9}, $${n + 10}::int, $${n + 11}::int, $${n + 12}, $${n + 13}::bigint, 5, 200,
                 $${n + 14}::timestamptz AT TIME ZONE 'UTC')`;
      });
      await database.sql.query(
        `INSERT INTO "Receipt" ("requestId", "organizationId", "keyId", "projectId", "routeId", "channelId", "requestedModel", "upstreamModel",
           endpoint, "channelRole", fallback, attempts, bucket, currency, "promptTokens", "completionTokens", "priceSnapshotId", charge,
           "latencyMs", status, "createdAt") VALUES ${values.join(", ")}`,
        params,
      );
    }
    if (failed.length) {
      const params: unknown[] = [];
      const values = failed.map((r) => {
        const k = s.keys[r.key]!;
        const rt = s.routes[r.route]!;
        const charged = r.charge > 0;
        params.push(randomUUID(), s.orgId, r.anonymous ? null : k.id, r.anonymous ? null : k.projectId, r.anonymous ? null : rt.id,
          r.anonymous ? null : rt.model, charged ? r.bucket : null, charged ? (r.bucket === "CREDIT" ? "USD" : "CNY") : null,
          r.prompt, r.completion, String(r.charge), new Date(BASE + r.at).toISOString());
        const n = params.length - 12;
        return `($${n + 1}, $${n + 2}, $${n + 3}, $${n + 4}, $${n + 5}, $${n + 6}, '/v1/chat/completions', 'UPSTREAM_ERROR', 'boom', 502,
                 $${n + 7}::"BalanceBucket", $${n + 8}, $${n + 9}::int, $${n + 10}::int, $${n + 11}::bigint, $${n + 12}::timestamptz AT TIME ZONE 'UTC')`;
      });
      await database.sql.query(
        `INSERT INTO "FailedRequest" ("requestId", "organizationId", "keyId", "projectId", "routeId", "requestedModel", endpoint, cause, message,
           "httpStatus", bucket, currency, "promptTokens", "completionTokens", charge, "createdAt") VALUES ${values.join(", ")}`,
        params,
      );
    }
  }
}

const GRAINS = [
  { table: "SpendRollupHourly", unit: "hour" },
  { table: "SpendRollupDaily", unit: "day" },
] as const;

/** Rollups of one grain as stored vs the same sums computed from the raw rows: must be identical. */
async function compareWithRawRows(orgId: string, grain: (typeof GRAINS)[number] = GRAINS[0]) {
  const GROUP_COLUMNS = `"organizationId", ${grain.unit} AS at, "keyId", "projectId", "routeId", "requestedModel", bucket, currency`;
  const ORDER = `"organizationId", at, "keyId", "projectId", "routeId", "requestedModel", bucket, currency`;
  const rollups = await database.sql.query<Record<string, unknown>>(
    `SELECT ${GROUP_COLUMNS}, spend::text, requests::text, "promptTokens"::text, "completionTokens"::text
       FROM "${grain.table}" WHERE "organizationId" = $1 AND requests <> 0 ORDER BY ${ORDER}`,
    [orgId],
  );
  const raw = await database.sql.query<Record<string, unknown>>(
    `SELECT ${GROUP_COLUMNS}, SUM(charge)::text AS spend, COUNT(*)::text AS requests,
            SUM("promptTokens")::text AS "promptTokens", SUM("completionTokens")::text AS "completionTokens"
       FROM (SELECT "organizationId", date_trunc('${grain.unit}', "createdAt") AS ${grain.unit}, "keyId", "projectId", "routeId", "requestedModel", bucket, currency,
                    charge, "promptTokens", "completionTokens" FROM "Receipt" WHERE "organizationId" = $1
             UNION ALL
             SELECT "organizationId", date_trunc('${grain.unit}', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", bucket, currency,
                    charge, "promptTokens", "completionTokens" FROM "FailedRequest"
              WHERE "organizationId" = $1 AND bucket IS NOT NULL AND charge > 0) spend
      GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8`,
    [orgId],
  );
  return { rollups, raw };
}

describe("spend rollups", () => {
  it("equal the raw receipts and charged failed requests after random traffic, and spendSeries answers as a raw scan does", async () => {
    const s = await scene();
    const seriesQuery = fc.record({
      fromMs: fc.integer({ min: -3_600_000, max: 3 * 86_400_000 }),
      spanMs: fc.integer({ min: 1, max: 4 * 86_400_000 }),
      interval: fc.constantFrom("HOUR" as const, "DAY" as const, "MONTH" as const),
      groupBy: fc.constantFrom("KEY" as const, "PROJECT" as const, "MODEL" as const, "ROUTE" as const, "BUCKET" as const),
      keyFilter: fc.option(fc.integer({ min: 0, max: 2 }), { nil: undefined }),
      projectFilter: fc.option(fc.integer({ min: 0, max: 2 }), { nil: undefined }),
      align: fc.constantFrom("none" as const, "hour" as const, "day" as const),
    });
    let checkedPoints = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ rows: fc.array(rowArb, { minLength: 1, maxLength: 25 }), batch: fc.boolean() }), { minLength: 1, maxLength: 4 }),
        fc.array(seriesQuery, { minLength: 3, maxLength: 6 }),
        async (writes, queries) => {
          for (const w of writes) await write(s, w.rows, w.batch);
          for (const grain of GRAINS) {
            const { rollups, raw } = await compareWithRawRows(s.orgId, grain);
            expect(rollups).toEqual(raw);
          }
          for (const q of queries) {
            const unit = { none: 1, hour: 3_600_000, day: 86_400_000 }[q.align];
            const from = Math.floor(q.fromMs / unit) * unit;
            const to = Math.ceil((from + q.spanMs) / unit) * unit;
            const input: SpendSeriesInput = {
              organizationId: s.orgId,
              from: new Date(BASE + from),
              to: new Date(BASE + Math.max(to, from + 1)),
              interval: q.interval,
              groupBy: q.groupBy,
              keyId: q.keyFilter === undefined ? null : s.keys[q.keyFilter]!.id,
              projectId: q.projectFilter === undefined ? null : s.keys[q.projectFilter]!.projectId,
            };
            const expected = await spendSeriesFromRawRows(input);
            expect(await spendSeries(input)).toEqual(expected);
            checkedPoints += expected.length;
          }
        },
      ),
      { seed: 20261123, numRuns: 15 },
    );
    // The property compared real series, not only empty ones.
    expect(checkedPoints).toBeGreaterThan(100);
  });

  it("follow updates and deletes of the summarized rows", async () => {
    const s = await scene();
    await write(s, Array.from({ length: 12 }, (_, i) => ({
      failed: i % 3 === 0, key: i % 3, route: i % 2, anonymous: false, bucket: i % 2 ? "ROUTED" : "CREDIT", charge: 1000 + i,
      prompt: 10 * i, completion: i, at: i * 1_800_000,
    })), true);
    await database.sql.query(`UPDATE "Receipt" SET charge = charge + 7, "createdAt" = "createdAt" + interval '5 hours' WHERE "organizationId" = $1 AND "promptTokens" < 60`, [s.orgId]);
    await database.sql.query(`UPDATE "FailedRequest" SET charge = 0 WHERE "organizationId" = $1 AND "promptTokens" = 30`, [s.orgId]);
    await database.sql.query(`DELETE FROM "Receipt" WHERE "organizationId" = $1 AND "promptTokens" > 90`, [s.orgId]);
    for (const grain of GRAINS) {
      const { rollups, raw } = await compareWithRawRows(s.orgId, grain);
      expect(raw.length).toBeGreaterThan(3);
      expect(rollups).toEqual(raw);
    }
    const input: SpendSeriesInput = { organizationId: s.orgId, from: new Date(BASE), to: new Date(BASE + 86_400_000), interval: "HOUR", groupBy: "KEY" };
    expect(await spendSeries(input)).toEqual(await spendSeriesFromRawRows(input));
  });

  it("are what spendSeries reads for whole days and whole hours", async () => {
    const s = await scene();
    await write(s, [{ failed: false, key: 0, route: 0, anonymous: false, bucket: "CREDIT", charge: 5_000, prompt: 1, completion: 1, at: 90_000 }], false);
    const byDay: SpendSeriesInput = { organizationId: s.orgId, from: new Date(BASE), to: new Date(BASE + 86_400_000), interval: "DAY", groupBy: "BUCKET" };
    const byHour: SpendSeriesInput = { ...byDay, interval: "HOUR" };
    expect((await spendSeries(byDay)).map((p) => p.spend)).toEqual([5_000n]);
    // Markers written only into the rollups show up in the series (and not in the raw scan).
    await database.sql.query(`UPDATE "SpendRollupDaily" SET spend = spend + 1 WHERE "organizationId" = $1`, [s.orgId]);
    await database.sql.query(`UPDATE "SpendRollupHourly" SET spend = spend + 2 WHERE "organizationId" = $1`, [s.orgId]);
    expect((await spendSeries(byDay)).map((p) => p.spend)).toEqual([5_001n]);
    expect((await spendSeries(byHour)).map((p) => p.spend)).toEqual([5_002n]);
    expect((await spendSeriesFromRawRows(byDay)).map((p) => p.spend)).toEqual([5_000n]);
  });
});
