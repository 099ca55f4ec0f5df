// The gateway in its own process for the benchmark, on PGlite (DATABASE_URL unset, a fresh data
// dir) or PostgreSQL (DATABASE_URL): migrates, seeds an organization, key and route pointing at
// BENCH_UPSTREAM_URL, serves /v1/* and GET /bench/stats. Prints its port and key on stdout.
// The bench runs it compiled (dist/bench/gateway-process.js, see test/support/build.ts) under plain node with
// `npm start`'s node flags, so the CPU and RSS it reports are those of the dist/ modules `npm start`
// loads. It loads the gateway only: `npm start` also loads the GraphQL schema, Yoga and the
// dashboard (about 10 MB more; `npm run bench -- memory`).
import http from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { AddressInfo } from "node:net";
import { directSql, openDatabase, useDatabase } from "../src/db/index.ts";
import { logger } from "../src/log.ts";
import { loadConfig } from "../src/config.ts";
import { createGateway } from "../src/gateway/index.ts";
import { route, world } from "../test/support/fixtures.ts";

const upstreamUrl = process.env.BENCH_UPSTREAM_URL!;
const databaseUrl = process.env.DATABASE_URL || undefined;
const dataDir = databaseUrl ? undefined : await mkdtemp(path.join(os.tmpdir(), "tokengate-bench-pglite-"));
const database = await openDatabase({ databaseUrl, dataDir, poolSize: 16 });
useDatabase(database);

const w = await world({ credit: "1000000" });
const model = "bench-model";
const upstreamModel = "bench-upstream";
await route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: upstreamUrl, upstreamModel, price: ["0.15", "0.6"] }]);

/** Leases still counted though their TTL passed (a lapsed lease the sweeper has not reached yet gets a second's grace). */
async function staleLeases(now: Date): Promise<number> {
  const rows = await directSql().$queryRawUnsafe<Array<{ n: string }>>(
    `SELECT count(*)::text AS n FROM "BudgetLease" WHERE "expiresAt" < $1::timestamptz AT TIME ZONE 'UTC'`,
    new Date(now.getTime() - 1_000).toISOString(),
  );
  return Number(rows[0]!.n);
}

const config = loadConfig({ ...process.env, LOG_LEVEL: "warn" });
// The logger's level is set by whoever starts the process (main.ts does it for `serve`): without this, every request logs at info.
logger.level = config.logLevel;
const gateway = createGateway(config);
const server = http.createServer((req, res) => {
  if (req.url?.startsWith("/v1/")) return void gateway.handle(req, res);
  if (req.url === "/bench/stats") {
    void (async () => {
      const now = new Date();
      const [receipts, failed, staleHolds, charged] = await Promise.all([
        database.prisma.receipt.count(),
        database.prisma.failedRequest.count(),
        database.prisma.hold.count({ where: { status: "ACTIVE", expiresAt: { lt: now } } }),
        database.prisma.receipt.aggregate({ _sum: { charge: true } }),
      ]);
      // Hang-ups are charged (CLIENT_CLOSED failed requests): the ledger holds receipts + failed charges.
      const failedCharged = await database.prisma.failedRequest.aggregate({ _sum: { charge: true } });
      const ledger = await database.prisma.ledgerEntry.aggregate({ where: { kind: "CHARGE" }, _sum: { amount: true } });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          receipts,
          failed,
          staleHolds,
          staleLeases: await staleLeases(now),
          receiptCharges: String((charged._sum.charge ?? 0n) + (failedCharged._sum.charge ?? 0n)),
          ledgerCharges: String(-(ledger._sum.amount ?? 0n)),
        }),
      );
    })();
    return;
  }
  if (req.url === "/bench/commit") {
    // One durable commit, timed from this process through the hot path's driver: the unit of the 1-connection target.
    void (async () => {
      const sql = directSql();
      const times: number[] = [];
      for (let i = 0; i < 60; i++) {
        const started = performance.now();
        await sql.$queryRawUnsafe(`UPDATE "Project" SET name = name WHERE id = $1`, w.project.id);
        times.push(performance.now() - started);
      }
      times.sort((a, b) => a - b);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ p50Ms: times[Math.floor(times.length / 2)] }));
    })();
    return;
  }
  res.writeHead(404);
  res.end();
});
server.keepAliveTimeout = 60_000;
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port, secret: w.secret, model, upstreamModel, database: database.kind })}\n`);
process.on("SIGTERM", () => {
  server.closeAllConnections();
  server.close();
  void gateway
    .close()
    .then(() => database.close())
    .then(() => (dataDir ? rm(dataDir, { recursive: true, force: true }) : undefined))
    .finally(() => process.exit(0));
});
