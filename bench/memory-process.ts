// Where the gateway's memory goes (issue 9, point 7): one process that loads the server's parts
// in order and prints its RSS and heap after each, as JSON lines. Run by `npm run bench -- memory`
// compiled, under plain node, as `npm start` runs the server (and, for comparison, through tsx).
// DATABASE_URL unset: PGlite in a new temporary data dir; set: PostgreSQL.
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

const mb = (n: number) => Math.round(n / 1024 / 1024);
function stage(name: string): void {
  const m = process.memoryUsage();
  const peak = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  process.stdout.write(
    `${JSON.stringify({ stage: name, rss: mb(m.rss), peakRss: peak ? Math.round(Number(peak[1]) / 1024) : null, heapUsed: mb(m.heapUsed), external: mb(m.external), arrayBuffers: mb(m.arrayBuffers) })}\n`,
  );
}

stage("node started (and the TypeScript loader, if any)");
const databaseUrl = process.env.DATABASE_URL || undefined;
const dataDir = databaseUrl ? undefined : await mkdtemp(path.join(os.tmpdir(), "tokengate-mem-"));
if (!databaseUrl) {
  await import("@electric-sql/pglite");
  stage("PGlite module loaded");
}
const { openDatabase, useDatabase } = await import("../src/db/index.ts");
stage("Prisma client + adapters loaded");
const database = await openDatabase({ databaseUrl, dataDir });
useDatabase(database);
stage(databaseUrl ? "pg pool opened, migrations checked" : "PGlite data dir created + migrated (child process), opened");
await database.prisma.organization.count();
stage("first Prisma query (query compiler WebAssembly instantiated)");
const { logger } = await import("../src/log.ts");
const { loadConfig } = await import("../src/config.ts");
const { startServer } = await import("../src/server.ts");
const { installServices, servicesWith } = await import("../src/installed.ts");
stage("server modules loaded (GraphQL schema, Yoga, gateway)");
const config = loadConfig({ ...process.env, PORT: "0", LOG_LEVEL: "silent", DATA_DIR: dataDir ?? os.tmpdir() });
logger.level = config.logLevel; // as main.ts does: the logger's level is the starter's to set
const running = await startServer(installServices(servicesWith(config)));
stage("server listening");
await running.close();
await database.close();
if (dataDir) await rm(dataDir, { recursive: true, force: true });
process.exit(0);
