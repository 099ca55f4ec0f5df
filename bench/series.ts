// Spend analytics at scale (issue 18): receipts over 90 days on PostgreSQL (SERIES_BENCH_RECEIPTS,
// default 10,000,000) and on PGlite (SERIES_BENCH_PGLITE_RECEIPTS, default 1,000,000), 200 keys in 20
// projects, 10 models (7 settled OFFICIAL in CREDIT, 3 ROUTED), plus failed requests (1 per 100
// receipts, half of them charged). Three reports through spendReport, the function the GraphQL
// spendAnalytics field calls: (a) DAY x KEY top 10 over 30 days, (b) HOUR x MODEL over 7 days in
// Asia/Shanghai, (c) PROJECT x MODEL by DAY over 30 days for 3 keys in the CREDIT bucket.
//
// Data generation: the receipts are inserted in chunks of CHUNK rows by INSERT ... SELECT
// generate_series with session_replication_role = replica for the transaction, which skips the
// rollup triggers (the only user triggers on Receipt and FailedRequest) and the foreign-key checks
// (every id comes from the rows created just before, and the check after generation proves it from
// the rollups). The two rollups are then built by one INSERT ... SELECT ... GROUP BY each, the same
// sums the triggers keep (the rebuild of migration 20261203100000_spend_rollup_dimensions), written
// in key order as the triggers' upserts leave them (hour by hour). Before timing, each report is run
// on a sub-range from the rollups and from the raw rows (forceRaw) and must be identical.
import os from "node:os";
import { mkdtemp, rm } from "node:fs/promises";
import path from "node:path";
import { randomUUID } from "node:crypto";
import { openDatabase, useDatabase, type Database } from "../src/db/index.ts";
import { spendReport, type SpendReportInput, type SpendReport } from "../src/analytics/report.ts";
import { foldSpendRollups } from "../src/analytics/rollups.ts";
import { startEmbeddedPostgres } from "../test/support/global-setup.ts";
import * as f from "../test/support/fixtures.ts";

const PG_RECEIPTS = Number(process.env.SERIES_BENCH_RECEIPTS ?? 10_000_000);
const PGLITE_RECEIPTS = Number(process.env.SERIES_BENCH_PGLITE_RECEIPTS ?? 1_000_000);
const DAYS = 90;
const KEYS = 200;
const PROJECTS = 20;
const MODELS = 10;
/** Models 7..9 settle ROUTED (ROUTED bucket), the rest OFFICIAL (CREDIT). */
const ROUTED_FROM = 7;
/** Each key calls three models: its own and two others, so most keys spend in both buckets. */
const KEY_MODEL_OFFSETS = [0, 3, 7];
const CHUNK = 1_000_000;
const WARMUP_RUNS = 3;
const RUNS = 30;
const START = Date.UTC(2026, 8, 1);
const END = START + DAYS * 86_400_000;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
};
const log = (message: string) => console.error(`[series] ${new Date().toISOString().slice(11, 19)} ${message}`);
const n = (v: number) => v.toLocaleString("en-US");
const sqlArray = (values: string[]) => `ARRAY[${values.map((v) => `'${v}'`).join(", ")}]`;

interface World {
  organizationId: string;
  keys: Array<{ id: string; projectId: string }>;
  routes: Array<{ id: string; model: string; upstreamModel: string; channelId: string; snapshotId: string; bucket: string; currency: string }>;
}

async function createWorld(database: Database): Promise<World> {
  const viewer = await f.platformViewer();
  const org = await f.organization();
  const projects = [];
  for (let p = 0; p < PROJECTS; p++) projects.push(await f.project(viewer, org.id));
  const keys = [];
  for (let k = 0; k < KEYS; k++) {
    const { apiKey } = await f.apiKey(viewer, projects[k % PROJECTS]!.id);
    keys.push({ id: apiKey.id, projectId: apiKey.projectId });
  }
  const routes = [];
  for (let m = 0; m < MODELS; m++) {
    const settlement = m >= ROUTED_FROM ? "ROUTED" : "OFFICIAL";
    // Price m+1 per million input tokens and 2(m+1) per million output: a token costs (m+1) or 2(m+1) micros, so charges are exact.
    const r = await f.route(viewer, org.id, `series-model-${m}-${randomUUID().slice(0, 6)}`, [
      { name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: `up-${m}`, settlement, price: [String(m + 1), String(2 * (m + 1))] },
    ]);
    const snapshot = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: r.channels[0]!.id } });
    routes.push({ id: r.route.id, model: r.route.model, upstreamModel: `up-${m}`, channelId: r.channels[0]!.id, snapshotId: snapshot.id, bucket: snapshot.bucket, currency: snapshot.currency });
  }
  return { organizationId: org.id, keys, routes };
}

/** SQL of row i's key index (skewed: key 0 spends most), model index and the looked-up columns. */
function rowSql(w: World, total: number) {
  // A low-discrepancy fraction of i (golden ratio): squared, it favours low key numbers, so the top 10 is a real cut.
  const k = `floor(${KEYS} * power(i * 0.6180339887498949 - floor(i * 0.6180339887498949), 2))::int`;
  const m = `((${k}) + (ARRAY[${KEY_MODEL_OFFSETS.join(", ")}])[1 + i % ${KEY_MODEL_OFFSETS.length}]) % ${MODELS}`;
  const pick = (values: string[], index: string) => `(${sqlArray(values)})[1 + (${index})]`;
  return {
    k,
    m,
    keyId: pick(
      w.keys.map((x) => x.id),
      "k",
    ),
    projectId: pick(
      w.keys.map((x) => x.projectId),
      "k",
    ),
    routeId: pick(
      w.routes.map((r) => r.id),
      "m",
    ),
    channelId: pick(
      w.routes.map((r) => r.channelId),
      "m",
    ),
    model: pick(
      w.routes.map((r) => r.model),
      "m",
    ),
    upstreamModel: pick(
      w.routes.map((r) => r.upstreamModel),
      "m",
    ),
    snapshotId: pick(
      w.routes.map((r) => r.snapshotId),
      "m",
    ),
    bucket: `(${pick(
      w.routes.map((r) => r.bucket),
      "m",
    )})::"BalanceBucket"`,
    currency: pick(
      w.routes.map((r) => r.currency),
      "m",
    ),
    // Spread evenly over the 90 days, in order (as a gateway writes them).
    at: `(timestamp '${new Date(START).toISOString().slice(0, -1)}' + (i::float8 * ${(DAYS * DAY) / total}) * interval '1 millisecond')::timestamp(3)`,
  };
}

async function insertReceipts(database: Database, w: World, from: number, to: number, total: number): Promise<void> {
  const r = rowSql(w, total);
  // session_replication_role = replica for this transaction only: no rollup triggers, no foreign-key checks.
  await database.sql.exec(`BEGIN; SET LOCAL session_replication_role = replica;
    INSERT INTO "Receipt" ("requestId", "organizationId", "keyId", "projectId", "routeId", "channelId", "requestedModel", "upstreamModel",
      endpoint, "channelRole", fallback, attempts, bucket, currency, "promptTokens", "completionTokens", "cachedPromptTokens", "reasoningTokens",
      "priceSnapshotId", charge, "latencyMs", status, "createdAt")
    SELECT 'series-' || i, '${w.organizationId}', ${r.keyId}, ${r.projectId}, ${r.routeId}, ${r.channelId}, ${r.model}, ${r.upstreamModel},
           '/v1/chat/completions', 'PRIMARY', false, 1, ${r.bucket}, ${r.currency}, p, c, CASE WHEN i % 4 = 0 THEN p / 2 ELSE 0 END,
           CASE WHEN m >= ${ROUTED_FROM} THEN c / 3 ELSE 0 END, ${r.snapshotId}, (m + 1) * (p + 2 * c), 150 + (i * 13) % 3000, 200, ${r.at}
      FROM (SELECT i, ${r.k} AS k, ${r.m} AS m, 100 + (i * 37) % 4000 AS p, 20 + (i * 11) % 1500 AS c
              FROM generate_series(${from}::bigint, ${to - 1}::bigint) i) g;
    COMMIT;`);
}

/** One failed request per 100 receipts, at the same times: odd ones charged (an upstream timeout after streaming), even ones refused (no bucket). */
async function insertFailedRequests(database: Database, w: World, total: number): Promise<number> {
  const r = rowSql(w, total);
  const count = Math.floor(total / 100);
  await database.sql.exec(`BEGIN; SET LOCAL session_replication_role = replica;
    INSERT INTO "FailedRequest" ("requestId", "organizationId", "keyId", "projectId", "routeId", "channelId", "requestedModel", endpoint, cause,
      message, "httpStatus", attempts, bucket, currency, "promptTokens", "completionTokens", "priceSnapshotId", charge, "createdAt")
    SELECT 'series-failed-' || i, '${w.organizationId}', ${r.keyId}, ${r.projectId}, ${r.routeId}, ${r.channelId}, ${r.model}, '/v1/chat/completions',
           CASE WHEN charged THEN 'UPSTREAM_TIMEOUT' ELSE 'BUDGET_EXCEEDED' END::"FailureCause", 'bench', CASE WHEN charged THEN 504 ELSE 429 END, 1,
           CASE WHEN charged THEN ${r.bucket} END, CASE WHEN charged THEN ${r.currency} END, CASE WHEN charged THEN p ELSE 0 END,
           CASE WHEN charged THEN c ELSE 0 END, CASE WHEN charged THEN ${r.snapshotId} END, CASE WHEN charged THEN (m + 1) * (p + 2 * c) ELSE 0 END, ${r.at}
      FROM (SELECT i, ${r.k} AS k, ${r.m} AS m, (i / 100) % 2 = 1 AS charged, 100 + (i * 37) % 4000 AS p, 20 + (i * 11) % 700 AS c
              FROM generate_series(0::bigint, ${total - 1}::bigint, 100) i) g;
    COMMIT;`);
  return count;
}

const GROUP_COLUMNS = `"organizationId", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency"`;
const SUMS = `"spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge"`;
const CHARGED = `("bucket" IS NOT NULL AND "charge" > 0)`;
/** Every receipt and failed request as the triggers count them (tg_spend_rollup_receipt / tg_spend_rollup_failed_request in prisma/functions.sql). */
const SPEND_ROWS = `
    SELECT "createdAt", ${GROUP_COLUMNS},
           "charge" AS "spend", 1 AS "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", 0 AS "failedRequests", 0 AS "failedCharge"
      FROM "Receipt"
    UNION ALL
    SELECT "createdAt", "organizationId", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", NULL, "bucket", "currency",
           CASE WHEN ${CHARGED} THEN "charge" ELSE 0 END, CASE WHEN ${CHARGED} THEN 1 ELSE 0 END, CASE WHEN ${CHARGED} THEN "promptTokens" ELSE 0 END,
           CASE WHEN ${CHARGED} THEN "completionTokens" ELSE 0 END, 0, 0, 0, 0, 0, 1, CASE WHEN ${CHARGED} THEN "charge" ELSE 0 END
      FROM "FailedRequest" WHERE "organizationId" IS NOT NULL`;

async function buildRollups(database: Database): Promise<void> {
  const existing = await database.sql.query<{ n: string }>(
    `SELECT (${["SpendRollupHourly", "SpendRollupDaily", ...NARROW_ROLLUPS.map((r) => r.table)].map((t) => `(SELECT COUNT(*) FROM "${t}")`).join(" + ")})::text AS n`,
  );
  if (existing[0]!.n !== "0") throw new Error("rollups are not empty before the build: the set-based build would not add to them");
  for (const [table, column, grain] of [
    ["SpendRollupHourly", "hour", "hour"],
    ["SpendRollupDaily", "day", "day"],
  ] as const) {
    // One sort of every row: a larger work_mem for this transaction keeps it in memory.
    await database.sql.exec(`BEGIN; SET LOCAL work_mem = '256MB';
      INSERT INTO "${table}" ("organizationId", "${column}", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency", ${SUMS})
      SELECT "organizationId", date_trunc('${grain}', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
             SUM("spend"), SUM("requests"), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"),
             SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM("failedRequests"), SUM("failedCharge")
        FROM (${SPEND_ROWS}) spend
       GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 2, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11;
      COMMIT;`);
  }
  // The narrow rollups from the wide ones, as migration 20261205090000_spend_rollups_narrow fills them.
  for (const { table, column, dimensions, from } of NARROW_ROLLUPS) {
    const columns = `"organizationId", "${column}", ${dimensions}, "bucket", "currency"`;
    await database.sql.exec(`INSERT INTO "${table}" (${columns}, ${SUMS})
      SELECT ${columns}, ${SUMS.split(", ")
        .map((c) => `SUM(${c})`)
        .join(", ")}
        FROM "${from}" GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 2, 1, 3, 4, 5, 6`);
  }
}
const NARROW_ROLLUPS = [
  { table: "SpendRollupDailyByKey", column: "day", dimensions: `"keyId", "projectId"`, from: "SpendRollupDaily" },
  { table: "SpendRollupHourlyByModel", column: "hour", dimensions: `"requestedModel", "upstreamModel"`, from: "SpendRollupHourly" },
] as const;

/** Whole-table checks, cheap next to the data: every sum of both rollups equals the raw rows', and every id in them exists. */
async function checkTotals(database: Database): Promise<void> {
  await foldSpendRollups(); // what the triggers queued (the generated rows skip them) joins the rollups first
  const sums = SUMS.split(", ")
    .map((c) => `SUM(${c})::text AS ${c}`)
    .join(", ");
  const [raw] = await database.sql.query(`SELECT ${sums} FROM (${SPEND_ROWS}) s`);
  for (const table of ["SpendRollupHourly", "SpendRollupDaily", ...NARROW_ROLLUPS.map((r) => r.table)]) {
    const [rolled] = await database.sql.query(`SELECT ${sums} FROM "${table}"`);
    if (JSON.stringify(rolled) !== JSON.stringify(raw)) throw new Error(`${table} sums ${JSON.stringify(rolled)} differ from the rows' ${JSON.stringify(raw)}`);
  }
  const [orphans] = await database.sql.query<{ n: string }>(`SELECT COUNT(*)::text AS n FROM "SpendRollupDaily" d
     WHERE NOT EXISTS (SELECT 1 FROM "ApiKey" k WHERE k.id = d."keyId" AND k."projectId" = d."projectId")
        OR NOT EXISTS (SELECT 1 FROM "Channel" c WHERE c.id = d."channelId" AND c."routeId" = d."routeId")
        OR NOT EXISTS (SELECT 1 FROM "Organization" o WHERE o.id = d."organizationId")`);
  if (orphans!.n !== "0") throw new Error(`${orphans!.n} rollup groups name a key, project, route or channel that does not exist`);
}

const json = (report: SpendReport) => JSON.stringify({ ...report, source: undefined }, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));

interface Query {
  name: string;
  input: SpendReportInput;
  /** The same report over a sub-range (partial hours at both ends included), checked against the raw rows. */
  check: SpendReportInput;
}

export function queries(w: World): Query[] {
  const organizationId = w.organizationId;
  // The last Asia/Shanghai (UTC+8) midnight at or before END.
  const shanghaiMidnight = Math.floor((END + 8 * HOUR) / DAY) * DAY - 8 * HOUR;
  const threeKeys = [w.keys[0]!.id, w.keys[7]!.id, w.keys[42]!.id];
  const base = { organizationId, latency: false } as const;
  const a: SpendReportInput = { ...base, from: new Date(END - 30 * DAY), to: new Date(END), interval: "DAY", timeZone: "UTC", groupBy: ["KEY"], top: 10 };
  const b: SpendReportInput = { ...base, from: new Date(shanghaiMidnight - 7 * DAY), to: new Date(shanghaiMidnight), interval: "HOUR", timeZone: "Asia/Shanghai", groupBy: ["MODEL"] };
  const c: SpendReportInput = {
    ...base,
    from: new Date(END - 30 * DAY),
    to: new Date(END),
    interval: "DAY",
    timeZone: "UTC",
    groupBy: ["PROJECT", "MODEL"],
    filter: { keyIds: threeKeys, buckets: ["CREDIT"] },
  };
  return [
    { name: "(a) DAY x KEY, top 10, 30 days, UTC", input: a, check: { ...a, from: new Date(END - 2 * DAY - 5.5 * HOUR), to: new Date(END - 3.25 * HOUR) } },
    { name: "(b) HOUR x MODEL, 7 days, Asia/Shanghai", input: b, check: { ...b, from: new Date(shanghaiMidnight - DAY - 20 * 60_000), to: new Date(shanghaiMidnight - 0.5 * HOUR) } },
    { name: "(c) PROJECT x MODEL by DAY, 30 days, 3 keys, CREDIT", input: c, check: { ...c, from: new Date(END - 3 * DAY - 0.75 * HOUR), to: new Date(END - 1.5 * HOUR) } },
  ];
}

interface DatabaseResult {
  label: string;
  receipts: number;
  failed: number;
  hourly: number;
  daily: number;
  /** Row counts of the narrow rollups. */
  narrow: string[];
  insertSeconds: number;
  rollupSeconds: number;
  rows: Array<{ name: string; source: string; series: number; points: number; p50: number; p95: number }>;
}

async function benchDatabase(label: string, database: Database, receipts: number): Promise<DatabaseResult> {
  useDatabase(database);
  const w = await createWorld(database);
  const inserted = performance.now();
  for (let from = 0; from < receipts; from += CHUNK) {
    await insertReceipts(database, w, from, Math.min(receipts, from + CHUNK), receipts);
    log(`${label}: ${n(Math.min(receipts, from + CHUNK))} receipts`);
  }
  const failed = await insertFailedRequests(database, w, receipts);
  const insertSeconds = (performance.now() - inserted) / 1000;
  const built = performance.now();
  await buildRollups(database);
  const rollupSeconds = (performance.now() - built) / 1000;
  log(`${label}: inserted in ${insertSeconds.toFixed(1)} s, rollups built in ${rollupSeconds.toFixed(1)} s`);
  await database.sql.exec(`ANALYZE`);
  await checkTotals(database);
  const count = async (table: string) => Number((await database.sql.query<{ n: string }>(`SELECT COUNT(*)::text AS n FROM "${table}"`))[0]!.n);
  const [hourly, daily] = [await count("SpendRollupHourly"), await count("SpendRollupDaily")];
  const narrow: string[] = [];
  for (const r of NARROW_ROLLUPS) narrow.push(`${n(await count(r.table))} in ${r.table}`);

  const rows: DatabaseResult["rows"] = [];
  for (const q of queries(w)) {
    const fromRollups = await spendReport(q.check);
    const fromRaw = await spendReport(q.check, { forceRaw: true });
    if (fromRollups.source !== "ROLLUPS") throw new Error(`${q.name}: the check range was read from ${fromRollups.source}`);
    if (json(fromRollups) !== json(fromRaw)) throw new Error(`${label} ${q.name}: the report from the rollups differs from the raw rows`);
    if (fromRollups.series.length === 0) throw new Error(`${label} ${q.name}: the check range has no spend`);
    let report = await spendReport(q.input);
    for (let i = 1; i < WARMUP_RUNS; i++) report = await spendReport(q.input);
    const times: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const started = performance.now();
      await spendReport(q.input);
      times.push(performance.now() - started);
    }
    rows.push({ name: q.name, source: report.source, series: report.series.length, points: report.bucketStarts.length, p50: percentile(times, 50), p95: percentile(times, 95) });
    log(`${label} ${q.name}: p50 ${percentile(times, 50).toFixed(1)} ms`);
  }
  return { label, receipts, failed, hourly, daily, narrow, insertSeconds, rollupSeconds, rows };
}

const TARGET_MS: Record<string, number> = { postgres: 50, pglite: 100 };

export async function benchSeries(): Promise<string> {
  const loadBefore = os.loadavg();
  const results: Array<DatabaseResult & { target: number }> = [];
  // A count of 0 leaves that database out (to profile the other).
  const pg = PG_RECEIPTS > 0 ? await startEmbeddedPostgres({ durable: true }) : null;
  if (pg)
    try {
      const database = await openDatabase({ databaseUrl: pg.url, poolSize: 4 });
      try {
        results.push({ ...(await benchDatabase("PostgreSQL 18 (embedded, durable)", database, PG_RECEIPTS)), target: TARGET_MS.postgres! });
      } finally {
        await database.close();
      }
    } finally {
      await pg.stop();
    }
  // PGlite as the product opens it: a data directory on disk (openDatabase's default path, 16 MB of shared buffers).
  const dir = await mkdtemp(path.join(os.tmpdir(), "tokengate-series-pglite-"));
  if (PGLITE_RECEIPTS > 0)
    try {
      const database = await openDatabase({ dataDir: dir });
      try {
        results.push({ ...(await benchDatabase("PGlite (data directory on disk)", database, PGLITE_RECEIPTS)), target: TARGET_MS.pglite! });
      } finally {
        await database.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  const loadAfter = os.loadavg();
  const ms = (v: number) => v.toFixed(1);
  const load = (l: number[]) => l.map((x) => x.toFixed(2)).join(", ");
  return [
    `spendReport (the spendAnalytics resolver's function) over ${DAYS} days of receipts, ${KEYS} keys in ${PROJECTS} projects, ${MODELS} models (${MODELS - ROUTED_FROM} ROUTED), ` +
      `latency percentiles off (the resolver computes them only when selected); each report identical from the rollups and from the raw rows on a sub-range, and both rollups' sums equal to the rows'; ` +
      `${WARMUP_RUNS} warm-up runs, then ${RUNS}. ${os.cpus().length} cores, load average ${load(loadBefore)} before and ${load(loadAfter)} after.`,
    "",
    ...results.map(
      (r) =>
        `- ${r.label}: ${n(r.receipts)} receipts + ${n(r.failed)} failed requests, ${n(r.hourly)} hourly and ${n(r.daily)} daily rollup rows (narrow: ${r.narrow.join(", ")}); ` +
        `inserted in ${r.insertSeconds.toFixed(1)} s (chunks of ${n(CHUNK)}, triggers off), rollups built in ${r.rollupSeconds.toFixed(1)} s`,
    ),
    "",
    "| database | report | source | series x points | p50 ms | p95 ms | target p50 | met |",
    "|---|---|---|---:|---:|---:|---:|---|",
    ...results.flatMap((r) =>
      r.rows.map((q) => `| ${r.label} | ${q.name} | ${q.source} | ${q.series} x ${q.points} | ${ms(q.p50)} | ${ms(q.p95)} | ${r.target} | ${q.p50 <= r.target ? "yes" : "no"} |`),
    ),
  ].join("\n");
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchSeries());
