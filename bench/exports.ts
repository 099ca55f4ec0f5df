// CSV export at scale: 1,000,000 receipts exported through GET /exports/receipts.csv on a real
// server, the body read by a real HTTP client in the same process, RSS sampled throughout (so the
// bound covers server, driver and client together). PostgreSQL streams from a cursor; PGlite pages.
import { randomUUID } from "node:crypto";
import http from "node:http";
import { PGlite } from "@electric-sql/pglite";
import { openDatabase, useDatabase, type Database } from "../src/db/index.ts";
import { startServer } from "../src/server.ts";
import { servicesWith } from "../src/installed.ts";
import { loadConfig } from "../src/config.ts";
import { createAdminToken } from "../src/auth/index.ts";
import { startEmbeddedPostgres } from "../test/support/global-setup.ts";
import * as f from "../test/support/fixtures.ts";

const PG_ROWS = Number(process.env.EXPORT_BENCH_ROWS ?? 1_000_000);
const PGLITE_ROWS = Number(process.env.EXPORT_BENCH_PGLITE_ROWS ?? 100_000);

interface ExportRun {
  database: string;
  rows: number;
  seconds: number;
  bytes: number;
  rssGrowthMb: number;
  heapGrowthMb: number;
}

async function seed(database: Database, rows: number): Promise<string> {
  useDatabase(database);
  const viewer = await f.platformViewer();
  const org = await f.organization();
  const project = await f.project(viewer, org.id);
  const key = (await f.apiKey(viewer, project.id)).apiKey;
  const r = await f.route(viewer, org.id, `export-bench-${randomUUID().slice(0, 6)}`, [{ name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: "m", price: ["1", "2"] }]);
  const snapshot = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: r.channels[0]!.id } });
  // Set-up only: foreign-key checks and triggers off (replica role) for a fast bulk insert.
  await database.sql.exec(`SET session_replication_role = replica;
    INSERT INTO "Receipt" ("requestId", "organizationId", "keyId", "projectId", "routeId", "channelId", "requestedModel", "upstreamModel",
      endpoint, "channelRole", fallback, attempts, bucket, currency, "promptTokens", "completionTokens", "priceSnapshotId", charge,
      "latencyMs", status, "createdAt")
    SELECT 'export-bench-' || i, '${org.id}', '${key.id}', '${project.id}', '${r.route.id}', '${r.channels[0]!.id}', '${r.route.model}',
           'm', '/v1/chat/completions', 'PRIMARY', false, 1, 'CREDIT', 'USD', 100 + i % 900, 50 + i % 400, '${snapshot.id}', 100 + i % 5000,
           20, 200, timestamp '2026-10-01' + (i::float8 / ${rows}) * interval '30 days'
      FROM generate_series(1, ${rows}) i;
    SET session_replication_role = DEFAULT;
    ANALYZE "Receipt";`);
  return org.id;
}

async function run(label: string, database: Database, rows: number): Promise<ExportRun> {
  const organizationId = await seed(database, rows);
  const { secret } = await createAdminToken({ name: "export bench", role: "ORG_ADMIN", organizationId });
  const server = await startServer(servicesWith({ ...loadConfig({ LOG_LEVEL: "silent" }), port: 0, host: "127.0.0.1" }), { quiet: true });
  try {
    global.gc?.();
    const rss0 = process.memoryUsage().rss;
    const heap0 = process.memoryUsage().heapUsed;
    let rssPeak = rss0;
    let heapPeak = heap0;
    const sampler = setInterval(() => {
      const m = process.memoryUsage();
      rssPeak = Math.max(rssPeak, m.rss);
      heapPeak = Math.max(heapPeak, m.heapUsed);
    }, 25);
    const started = performance.now();
    let bytes = 0;
    let lines = 0;
    await new Promise<void>((resolve, reject) => {
      http
        .get(`${server.url}/exports/receipts.csv`, { agent: false, headers: { authorization: `Bearer ${secret}` } }, (res) => {
          if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
          res.on("data", (chunk: Buffer) => {
            bytes += chunk.length;
            for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++;
          });
          res.on("end", resolve);
          res.on("error", reject);
        })
        .on("error", reject);
    });
    const seconds = (performance.now() - started) / 1000;
    clearInterval(sampler);
    if (lines !== rows + 1) throw new Error(`exported ${lines - 1} rows, expected ${rows}`);
    return { database: label, rows, seconds, bytes, rssGrowthMb: (rssPeak - rss0) / 2 ** 20, heapGrowthMb: (heapPeak - heap0) / 2 ** 20 };
  } finally {
    await server.close();
  }
}

export async function benchExports(): Promise<string> {
  const runs: ExportRun[] = [];
  const pg = await startEmbeddedPostgres({ durable: true });
  try {
    const database = await openDatabase({ databaseUrl: pg.url, poolSize: 4 });
    runs.push(await run("PostgreSQL 18 (cursor, pg-query-stream)", database, PG_ROWS));
    await database.close();
  } finally {
    await pg.stop();
  }
  if (PGLITE_ROWS > 0) {
    const database = await openDatabase({ pglite: await PGlite.create() });
    runs.push(await run("PGlite in-memory (keyset pages of 1,000)", database, PGLITE_ROWS));
    await database.close();
  }
  return [
    "CSV export, GET /exports/receipts.csv (24 columns), server and HTTP client in one process:",
    "",
    "| database | rows | seconds | rows/s | MB/s | peak RSS growth MB | peak heap growth MB |",
    "|---|---:|---:|---:|---:|---:|---:|",
    ...runs.map(
      (r) =>
        `| ${r.database} | ${r.rows.toLocaleString("en-US")} | ${r.seconds.toFixed(1)} | ${Math.round(r.rows / r.seconds).toLocaleString("en-US")} | ` +
        `${(r.bytes / 2 ** 20 / r.seconds).toFixed(1)} | ${r.rssGrowthMb.toFixed(1)} | ${r.heapGrowthMb.toFixed(1)} |`,
    ),
  ].join("\n");
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchExports());
