// spendSeries at scale: 1,000,000 receipts over 30 days on PostgreSQL, a month by day x key, answered
// from the hourly rollups; the same series from a raw scan of the receipts beside it, same run.
// The data is written by one set-based INSERT ... SELECT generate_series, so the rollup triggers
// maintain the rollups exactly as they do for the gateway's writes.
import { randomUUID } from "node:crypto";
import { openDatabase, useDatabase } from "../src/db/index.ts";
import { spendSeries, spendSeriesFromRawRows, type SpendSeriesInput } from "../src/analytics/index.ts";
import { startEmbeddedPostgres } from "../test/support/global-setup.ts";
import * as f from "../test/support/fixtures.ts";

const RECEIPTS = Number(process.env.SERIES_BENCH_RECEIPTS ?? 1_000_000);
const KEYS = 20;
const PROJECTS = 4;
const MODELS = 3;
const ROLLUP_RUNS = 30;
const RAW_RUNS = 5;

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
};

async function timed(runs: number, op: () => Promise<unknown>): Promise<number[]> {
  await op(); // warm-up: plans and caches
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    await op();
    times.push(performance.now() - started);
  }
  return times;
}

export async function benchSeries(): Promise<string> {
  const pg = await startEmbeddedPostgres({ durable: true });
  try {
    const database = await openDatabase({ databaseUrl: pg.url, poolSize: 4 });
    useDatabase(database);
    const viewer = await f.platformViewer();
    const org = await f.organization();
    const projects = await Promise.all(Array.from({ length: PROJECTS }, () => f.project(viewer, org.id)));
    const keys = [];
    for (let i = 0; i < KEYS; i++) keys.push((await f.apiKey(viewer, projects[i % PROJECTS]!.id)).apiKey);
    const routes = [];
    for (let m = 0; m < MODELS; m++) {
      const r = await f.route(viewer, org.id, `bench-model-${m}-${randomUUID().slice(0, 6)}`, [{ name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: `m${m}`, price: ["1", "2"] }]);
      const snapshot = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: r.channels[0]!.id } });
      routes.push({ id: r.route.id, model: r.route.model, channelId: r.channels[0]!.id, snapshotId: snapshot.id });
    }
    const start = Date.UTC(2026, 9, 1);
    const arr = (values: string[]) => `ARRAY[${values.map((v) => `'${v}'`).join(", ")}]`;
    const generated = performance.now();
    // Receipt i: key i % KEYS (its project), model/route i % MODELS, spread evenly over 30 days.
    await database.sql.exec(`
      INSERT INTO "Receipt" ("requestId", "organizationId", "keyId", "projectId", "routeId", "channelId", "requestedModel", "upstreamModel",
        endpoint, "channelRole", fallback, attempts, bucket, currency, "promptTokens", "completionTokens", "priceSnapshotId", charge,
        "latencyMs", status, "createdAt")
      SELECT 'series-bench-' || i, '${org.id}',
             (${arr(keys.map((k) => k.id))})[1 + i % ${KEYS}], (${arr(keys.map((k) => k.projectId))})[1 + i % ${KEYS}],
             (${arr(routes.map((r) => r.id))})[1 + i % ${MODELS}], (${arr(routes.map((r) => r.channelId))})[1 + i % ${MODELS}],
             (${arr(routes.map((r) => r.model))})[1 + i % ${MODELS}], 'up', '/v1/chat/completions', 'PRIMARY', false, 1, 'CREDIT', 'USD',
             100 + i % 900, 50 + i % 400, (${arr(routes.map((r) => r.snapshotId))})[1 + i % ${MODELS}], 100 + i % 5000, 20, 200,
             timestamp '2026-10-01' + (i::float8 / ${RECEIPTS}) * interval '30 days'
        FROM generate_series(0, ${RECEIPTS - 1}) i`);
    const generateSeconds = (performance.now() - generated) / 1000;
    await database.sql.exec(`ANALYZE`);
    const count = async (table: string) => Number((await database.sql.query<{ n: string }>(`SELECT COUNT(*)::text AS n FROM "${table}"`))[0]!.n);
    const [hourly, daily] = [await count("SpendRollupHourly"), await count("SpendRollupDaily")];

    const input: SpendSeriesInput = {
      organizationId: org.id,
      from: new Date(start),
      to: new Date(start + 30 * 86_400_000),
      interval: "DAY",
      groupBy: "KEY",
    };
    const fromRollups = await spendSeries(input);
    const fromRaw = await spendSeriesFromRawRows(input);
    if (JSON.stringify(fromRollups, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v)) !== JSON.stringify(fromRaw, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v))) {
      throw new Error("rollup series differs from the raw scan");
    }
    const rollupTimes = await timed(ROLLUP_RUNS, () => spendSeries(input));
    const rawTimes = await timed(RAW_RUNS, () => spendSeriesFromRawRows(input));
    await database.close();
    const ms = (v: number) => v.toFixed(1);
    return [
      `spendSeries, 30 days by DAY x KEY, PostgreSQL 18 (embedded): ${RECEIPTS.toLocaleString("en-US")} receipts, ${KEYS} keys, ${MODELS} models; ` +
        `${hourly.toLocaleString("en-US")} hourly and ${daily.toLocaleString("en-US")} daily rollup rows; ${fromRollups.length} points (identical from both sources); ` +
        `data generated in ${generateSeconds.toFixed(1)} s (one INSERT ... SELECT generate_series, triggers on)`,
      "",
      "| source | runs | p50 ms | p95 ms |",
      "|---|---:|---:|---:|",
      `| rollups (spendSeries) | ${ROLLUP_RUNS} | ${ms(percentile(rollupTimes, 50))} | ${ms(percentile(rollupTimes, 95))} |`,
      `| raw scan of receipts | ${RAW_RUNS} | ${ms(percentile(rawTimes, 50))} | ${ms(percentile(rawTimes, 95))} |`,
    ].join("\n");
  } finally {
    await pg.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchSeries());
