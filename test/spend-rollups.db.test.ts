// Hourly spend rollups always equal the receipts and charged failed requests they summarize, after
// random traffic written the ways the gateway writes (one row per statement, multi-row batches),
// plus rare updates and deletes; and spendSeries answers from them exactly as a raw scan does. A
// write queues its sums (one "SpendRollupPending" row) and a fold moves them into the rollups: the
// Live views (rollup + queue) equal the rows at every moment, and the rollups alone after a fold.
import { readFile } from "node:fs/promises";
import path from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { MIGRATIONS_DIR } from "../src/db/migrate.ts";
import { rowArb as spendRowArb, scene as spendScene, write as writeRows, type Row, type Scene } from "./support/spend-rows.ts";
import { spendSeries, spendSeriesFromRawRows, type SpendSeriesInput } from "../src/analytics/index.ts";
import { SPEND_DIMENSIONS, spendReport, type SpendDimension, type SpendReportInput } from "../src/analytics/report.ts";
import { foldSpendRollups } from "../src/analytics/rollups.ts";

let database: TestDatabase;
const pendingRows = async () => Number((await database.sql.query<{ n: string }>(`SELECT count(*)::text AS n FROM "SpendRollupPending"`))[0]!.n);
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database?.dispose();
});

const BASE = Date.UTC(2026, 5, 1, 0, 0, 0);
const SPAN = 3 * 86_400_000;
const rowArb = spendRowArb(SPAN);
const write = (s: Scene, rows: Row[], batch: boolean) => writeRows(database, s, BASE, rows, batch);
const scene = () => spendScene(database);

/** A filter list in about one query of four (absent otherwise). */
const sometimes = <T>(arb: fc.Arbitrary<T>) => fc.oneof({ arbitrary: fc.constant(undefined), weight: 3 }, { arbitrary: arb, weight: 1 });

const WIDE = `"keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", bucket, currency`;
/** Every rollup, with the dimensions it keeps: the wide ones and the narrow ones reports prefer. */
const GRAINS = [
  { table: "SpendRollupHourly", unit: "hour", dimensions: WIDE },
  { table: "SpendRollupDaily", unit: "day", dimensions: WIDE },
  { table: "SpendRollupDailyByKey", unit: "day", dimensions: `"keyId", "projectId", bucket, currency` },
  { table: "SpendRollupHourlyByModel", unit: "hour", dimensions: `"requestedModel", "upstreamModel", bucket, currency` },
] as const;

/**
 * One grain's sums as read (`live`: the rollup plus its queued sums, as reports read them; `folded`:
 * the rollup table alone, which must then hold one row per group) vs the same sums computed from the
 * raw rows: must be identical.
 */
async function compareWithRawRows(orgId: string, grain: (typeof GRAINS)[number] = GRAINS[0], read: "live" | "folded" = "live") {
  const GROUP_COLUMNS = `"organizationId", ${grain.unit} AS at, ${grain.dimensions}`;
  const groups = Array.from({ length: grain.dimensions.split(", ").length + 2 }, (_, i) => i + 1).join(", ");
  const SUMS = `spend, requests, "promptTokens", "completionTokens", "cachedPromptTokens", "failedRequests", "failedCharge"`;
  const rollups = await database.sql.query<Record<string, unknown>>(
    read === "live"
      ? `SELECT ${GROUP_COLUMNS}, ${SUMS.split(", ")
          .map((c) => `SUM(${c})::text AS ${c}`)
          .join(", ")}
           FROM "${grain.table}Live" WHERE "organizationId" = $1 GROUP BY ${groups} HAVING SUM(requests) <> 0 OR SUM("failedRequests") <> 0 ORDER BY ${groups}`
      : `SELECT ${GROUP_COLUMNS}, ${SUMS.split(", ")
          .map((c) => `${c}::text`)
          .join(", ")}
           FROM "${grain.table}" WHERE "organizationId" = $1 AND (requests <> 0 OR "failedRequests" <> 0) ORDER BY ${groups}`,
    [orgId],
  );
  // Every failed request is a failure; only a charged one (with a bucket) is spend, with its tokens.
  const charged = `(bucket IS NOT NULL AND charge > 0)`;
  const raw = await database.sql.query<Record<string, unknown>>(
    `SELECT ${GROUP_COLUMNS}, SUM(charge)::text AS spend, SUM(requests)::text AS requests,
            SUM("promptTokens")::text AS "promptTokens", SUM("completionTokens")::text AS "completionTokens", SUM(cached)::text AS "cachedPromptTokens",
            SUM(failed)::text AS "failedRequests", SUM(failed_charge)::text AS "failedCharge"
       FROM (SELECT "organizationId", date_trunc('${grain.unit}', "createdAt") AS ${grain.unit}, ${WIDE},
                    charge, 1 AS requests, "promptTokens", "completionTokens", "cachedPromptTokens" AS cached, 0 AS failed, 0 AS failed_charge
               FROM "Receipt" WHERE "organizationId" = $1
             UNION ALL
             SELECT "organizationId", date_trunc('${grain.unit}', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", NULL, bucket, currency,
                    CASE WHEN ${charged} THEN charge ELSE 0 END, CASE WHEN ${charged} THEN 1 ELSE 0 END,
                    CASE WHEN ${charged} THEN "promptTokens" ELSE 0 END, CASE WHEN ${charged} THEN "completionTokens" ELSE 0 END, 0,
                    1, CASE WHEN ${charged} THEN charge ELSE 0 END
               FROM "FailedRequest" WHERE "organizationId" = $1) spend
      GROUP BY ${groups} ORDER BY ${groups}`,
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
    // spendAnalytics: every dimension and filter (each filter in about one query of four), zones whose boundaries are on UTC hours (rollups) or not (raw rows).
    const reportQuery = fc.record({
      fromMs: fc.integer({ min: -3_600_000, max: 3 * 86_400_000 }),
      spanMs: fc.integer({ min: 1, max: 4 * 86_400_000 }),
      interval: fc.constantFrom("HOUR" as const, "DAY" as const, "WEEK" as const, "MONTH" as const),
      timeZone: fc.constantFrom("UTC", "Asia/Shanghai", "America/New_York", "Asia/Kolkata"),
      groupBy: fc.subarray([...SPEND_DIMENSIONS], { maxLength: 3 }),
      keys: sometimes(fc.subarray([0, 1, 2], { minLength: 1 })),
      projects: sometimes(fc.subarray([0, 1], { minLength: 1 })),
      routes: sometimes(fc.subarray([0, 1], { minLength: 1 })),
      channels: sometimes(fc.subarray([0, 1, 2, 3], { minLength: 1 })),
      runs: sometimes(fc.subarray([0, 1], { minLength: 1 })),
      models: sometimes(fc.subarray([0, 1], { minLength: 1 })),
      buckets: sometimes(fc.subarray(["CREDIT" as const, "ROUTED" as const], { minLength: 1 })),
      top: fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined }),
      compare: fc.boolean(),
      align: fc.constantFrom("none" as const, "hour" as const, "day" as const),
    });
    let checkedPoints = 0;
    let checkedReports = 0; // non-empty points read from the rollups
    await fc.assert(
      fc.asyncProperty(
        // After a write, sometimes a fold: reports then read rollups with and without queued sums.
        fc.array(fc.record({ rows: fc.array(rowArb, { minLength: 1, maxLength: 25 }), batch: fc.boolean(), fold: fc.boolean() }), { minLength: 1, maxLength: 4 }),
        fc.array(seriesQuery, { minLength: 3, maxLength: 6 }),
        fc.array(reportQuery, { minLength: 2, maxLength: 5 }),
        async (writes, queries, reports) => {
          for (const w of writes) {
            await write(s, w.rows, w.batch);
            if (w.fold) await foldSpendRollups();
          }
          for (const grain of GRAINS) {
            const { rollups, raw } = await compareWithRawRows(s.orgId, grain, "live");
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
          for (const q of reports) {
            const unit = { none: 1, hour: 3_600_000, day: 86_400_000 }[q.align];
            const from = Math.floor(q.fromMs / unit) * unit;
            const to = Math.max(Math.ceil((from + q.spanMs) / unit) * unit, from + 1);
            const pick = <T>(all: T[], picked: number[] | undefined) => (picked === undefined ? null : picked.map((i) => all[i]!));
            const input: SpendReportInput = {
              organizationId: s.orgId,
              from: new Date(BASE + from),
              to: new Date(BASE + to),
              interval: q.interval,
              timeZone: q.timeZone,
              groupBy: q.groupBy as SpendDimension[],
              filter: {
                keyIds: pick(
                  s.keys.map((k) => k.id),
                  q.keys,
                ),
                projectIds: pick([...new Set(s.keys.map((k) => k.projectId))], q.projects),
                routeIds: pick(
                  s.routes.map((r) => r.id),
                  q.routes,
                ),
                channelIds: pick(
                  s.routes.flatMap((r) => r.channels.map((c) => c.id)),
                  q.channels,
                ),
                runIds: pick(
                  s.runs.map((r) => r.id),
                  q.runs,
                ),
                models: pick(
                  s.routes.map((r) => r.model),
                  q.models,
                ),
                buckets: q.buckets ?? null,
              },
              top: q.top ?? null,
              compare: q.compare,
            };
            const { source: _raw, ...expected } = await spendReport(input, { forceRaw: true });
            const { source: _read, ...actual } = await spendReport(input);
            expect(actual).toEqual(expected);
            // Points with something in them, answered from the rollups.
            if (_read === "ROLLUPS") checkedReports += expected.series.flatMap((x) => x.points).filter((p) => p.sums.requests > 0n || p.sums.failedRequests > 0n).length;
          }
          // A fold empties the queue and leaves each rollup, alone, equal to the rows.
          await foldSpendRollups();
          expect(await pendingRows()).toBe(0);
          for (const grain of GRAINS) {
            const { rollups, raw } = await compareWithRawRows(s.orgId, grain, "folded");
            expect(rollups).toEqual(raw);
          }
        },
      ),
      { seed: 20261123, numRuns: 15 },
    );
    // The property compared real series, not only empty ones.
    expect(checkedPoints).toBeGreaterThan(100);
    expect(checkedReports).toBeGreaterThan(50);
  });

  it("narrow ones filled by their migration from the wide ones equal the rows (a data directory of the previous release)", async () => {
    const s = await scene();
    const rows = fc.sample(rowArb, { numRuns: 40, seed: 20261205 });
    await write(s, rows, true);
    await foldSpendRollups(); // the previous release kept every sum in the rollups themselves
    const migration = await readFile(path.join(MIGRATIONS_DIR, "20261205090000_spend_rollups_narrow", "migration.sql"), "utf8");
    // As before the migration: the narrow rollups empty, then the migration's fill.
    await database.sql.exec(`TRUNCATE "SpendRollupDailyByKey", "SpendRollupHourlyByModel"; ${migration.slice(migration.indexOf("-- The fill:"))}`);
    for (const grain of GRAINS) {
      const { rollups, raw } = await compareWithRawRows(s.orgId, grain, "folded");
      expect(raw.length).toBeGreaterThan(3);
      expect(rollups).toEqual(raw);
    }
  });

  it("follow updates and deletes of the summarized rows", async () => {
    const s = await scene();
    await write(
      s,
      Array.from({ length: 12 }, (_, i) => ({
        failed: i % 3 === 0,
        key: i % 3,
        route: i % 2,
        channel: i % 2,
        run: i % 4 === 0 ? null : i % 2,
        anonymous: false,
        bucket: i % 2 ? "ROUTED" : "CREDIT",
        uncharged: "bucket",
        charge: 1000 + i,
        prompt: 10 * i,
        completion: i,
        cached: i,
        latencyMs: 100 + i,
        at: i * 1_800_000,
      })),
      true,
    );
    await database.sql.query(`UPDATE "Receipt" SET charge = charge + 7, "createdAt" = "createdAt" + interval '5 hours' WHERE "organizationId" = $1 AND "promptTokens" < 60`, [s.orgId]);
    await database.sql.query(`UPDATE "FailedRequest" SET charge = 0 WHERE "organizationId" = $1 AND "promptTokens" = 30`, [s.orgId]);
    await database.sql.query(`DELETE FROM "Receipt" WHERE "organizationId" = $1 AND "promptTokens" > 90`, [s.orgId]);
    for (const read of ["live", "folded"] as const) {
      if (read === "folded") await foldSpendRollups();
      for (const grain of GRAINS) {
        const { rollups, raw } = await compareWithRawRows(s.orgId, grain, read);
        expect(raw.length).toBeGreaterThan(3);
        expect(rollups).toEqual(raw);
      }
    }
    const input: SpendSeriesInput = { organizationId: s.orgId, from: new Date(BASE), to: new Date(BASE + 86_400_000), interval: "HOUR", groupBy: "KEY" };
    expect(await spendSeries(input)).toEqual(await spendSeriesFromRawRows(input));
  });

  it("are what spendSeries reads for whole days and whole hours", async () => {
    const s = await scene();
    await write(
      s,
      [{ failed: false, key: 0, route: 0, channel: 0, run: null, anonymous: false, bucket: "CREDIT", uncharged: "none", charge: 5_000, prompt: 1, completion: 1, cached: 0, latencyMs: 5, at: 90_000 }],
      false,
    );
    await foldSpendRollups();
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

  it("are read from the narrowest rollup that holds a report's groups and filters", async () => {
    const s = await scene();
    await write(
      s,
      [{ failed: false, key: 0, route: 0, channel: 0, run: null, anonymous: false, bucket: "CREDIT", uncharged: "none", charge: 5_000, prompt: 1, completion: 1, cached: 0, latencyMs: 5, at: 90_000 }],
      false,
    );
    await foldSpendRollups();
    // A marker per rollup, written only there: the report's spend says which one it read.
    const markers = { SpendRollupDaily: 1, SpendRollupHourly: 2, SpendRollupDailyByKey: 10, SpendRollupHourlyByModel: 100 };
    for (const [table, marker] of Object.entries(markers)) {
      await database.sql.query(`UPDATE "${table}" SET spend = spend + ${marker} WHERE "organizationId" = $1`, [s.orgId]);
    }
    const spend = async (groupBy: SpendDimension[], interval: "DAY" | "HOUR", filter: SpendReportInput["filter"] = null) => {
      const report = await spendReport({ organizationId: s.orgId, from: new Date(BASE), to: new Date(BASE + 86_400_000), interval, timeZone: "UTC", groupBy, filter, latency: false });
      return { source: report.source, credit: report.totals.spend.CREDIT, points: report.series[0]!.points.reduce((sum, p) => sum + p.sums.spend.CREDIT, 0n) };
    };
    // Keys and projects: totals read whole days by key; HOUR points the wide hourly rollup (no hourly one by key).
    expect(await spend(["KEY"], "DAY")).toEqual({ source: "ROLLUPS", credit: 5_010n, points: 5_010n });
    expect(await spend(["PROJECT"], "DAY", { keyIds: [s.keys[0]!.id] })).toEqual({ source: "ROLLUPS", credit: 5_010n, points: 5_010n });
    expect(await spend(["KEY"], "HOUR")).toEqual({ source: "ROLLUPS", credit: 5_010n, points: 5_002n });
    // Models: the hourly rollup by model, even for whole days (fewer rows than the wide daily one).
    expect(await spend(["MODEL"], "DAY")).toEqual({ source: "ROLLUPS", credit: 5_100n, points: 5_100n });
    expect(await spend(["MODEL", "UPSTREAM_MODEL"], "HOUR", { buckets: ["CREDIT"] })).toEqual({ source: "ROLLUPS", credit: 5_100n, points: 5_100n });
    // Bucket and settlement alone: the first narrow rollup that has them (by model, hourly; by key, daily).
    expect(await spend(["BUCKET", "SETTLEMENT"], "HOUR")).toEqual({ source: "ROLLUPS", credit: 5_010n, points: 5_100n });
    // A key and a model together, a route or a run need the wide ones.
    expect(await spend(["KEY", "MODEL"], "DAY")).toEqual({ source: "ROLLUPS", credit: 5_001n, points: 5_001n });
    expect(await spend(["MODEL"], "DAY", { routeIds: [s.routes[0]!.id] })).toEqual({ source: "ROLLUPS", credit: 5_001n, points: 5_001n });
    expect(await spend(["RUN_MODE"], "HOUR")).toEqual({ source: "ROLLUPS", credit: 5_001n, points: 5_002n });
  });

  it("cost a write one queued row per statement, whatever the batch holds; the rollups are untouched until a fold", async () => {
    const s = await scene();
    await foldSpendRollups();
    const rows = fc.sample(rowArb, { numRuns: 25, seed: 20261206 });
    const before = await pendingRows();
    const tableRows = async () =>
      Number(
        (
          await database.sql.query<{ n: string }>(
            `SELECT (SELECT count(*) FROM "SpendRollupHourly" WHERE "organizationId" = $1) + (SELECT count(*) FROM "SpendRollupDailyByKey" WHERE "organizationId" = $1) AS n`,
            [s.orgId],
          )
        )[0]!.n,
      );
    const rollupRows = await tableRows();
    await write(s, rows, true); // one statement per table: the receipts, the failed requests
    const queued = (await pendingRows()) - before;
    expect(queued).toBeGreaterThanOrEqual(1);
    expect(queued).toBeLessThanOrEqual(2);
    expect(await tableRows()).toBe(rollupRows);
    expect(await foldSpendRollups()).toBe(queued + before);
    expect(await tableRows()).toBeGreaterThan(rollupRows);
  });

  it("lose and double nothing when two folders run while rows are written", async () => {
    const s = await scene();
    const batches = Array.from({ length: 12 }, (_, i) => fc.sample(rowArb, { numRuns: 8, seed: 20261207 + i }));
    let writing = true;
    const folder = async () => {
      let folded = 0;
      while (writing) folded += await foldSpendRollups();
      return folded;
    };
    const folders = [folder(), folder()];
    for (const [i, rows] of batches.entries()) await write(s, rows, i % 2 === 0);
    writing = false;
    await Promise.all(folders);
    for (const grain of GRAINS) {
      const { rollups, raw } = await compareWithRawRows(s.orgId, grain, "live");
      expect(rollups).toEqual(raw);
    }
    await foldSpendRollups();
    for (const grain of GRAINS) {
      const { rollups, raw } = await compareWithRawRows(s.orgId, grain, "folded");
      expect(raw.length).toBeGreaterThan(3);
      expect(rollups).toEqual(raw);
    }
  });
});
