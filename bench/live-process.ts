// The whole server (`npm start`'s startServer: /v1, /graphql with graphql-ws, /dashboard) in its own
// process for `npm run bench -- live`, on a fresh PGlite data dir: seeds an organization with
// BENCH_LIVE_KEYS keys (default 1,000), a route pointing at BENCH_UPSTREAM_URL and an ORG_ADMIN
// token; prints its port, a key secret, the model and the admin token on stdout. Run compiled
// (dist/bench/live-process.js) under `npm start`'s node flags, like bench/gateway-process.ts.
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { openDatabase, useDatabase } from "../src/db/index.ts";
import { logger } from "../src/log.ts";
import { loadConfig } from "../src/config.ts";
import { startServer } from "../src/server.ts";
import { installServices, servicesWith } from "../src/installed.ts";
import { createAdminToken } from "../src/auth/index.ts";
import { createApiKey } from "../src/keys/index.ts";
import { route, world } from "../test/support/fixtures.ts";

const upstreamUrl = process.env.BENCH_UPSTREAM_URL!;
const keys = Number(process.env.BENCH_LIVE_KEYS ?? 1_000);
const dataDir = await mkdtemp(path.join(os.tmpdir(), "tokengate-bench-live-"));
const database = await openDatabase({ dataDir });
useDatabase(database);

const w = await world({ credit: "1000000", key: { dailyCap: "100000" } });
const model = "bench-model";
await route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: upstreamUrl, upstreamModel: "bench-upstream", price: ["0.15", "0.6"] }]);
for (let i = 1; i < keys; i++) await createApiKey(w.viewer, { projectId: w.project.id, name: `bench-key-${String(i).padStart(4, "0")}`, dailyCap: "1000" });
const adminToken = (await createAdminToken({ name: "bench live", role: "ORG_ADMIN", organizationId: w.org.id })).secret;

// Installed: the settings of the environment (LIVE_QUEUE_LIMIT, …) apply to the whole process, as in `npm start`.
const config = loadConfig({ ...process.env, LOG_LEVEL: "warn" });
logger.level = config.logLevel; // as main.ts does: the logger's level is the starter's to set
const server = await startServer(installServices(servicesWith({ ...config, port: 0, host: "127.0.0.1" })), { quiet: true });
process.stdout.write(`${JSON.stringify({ url: server.url, secret: w.secret, model, adminToken, keyId: w.key.id })}\n`);
process.on("SIGTERM", () => {
  void server
    .close()
    .then(() => database.close())
    .then(() => rm(dataDir, { recursive: true, force: true }))
    .finally(() => process.exit(0));
});
