// CLI entry: `serve` (default), `migrate`, `print-schema`, `create-admin-token`.
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { loadConfig, type Config } from "./config.ts";
import { openDatabase, useDatabase, type Database } from "./db/index.ts";
import { applyMigrations } from "./db/migrate.ts";
import { configureLogging, errorFields, logger } from "./log.ts";

async function credentialSecret(config: Config): Promise<string> {
  if (config.secret) return config.secret;
  // No TOKENGATE_SECRET: keep a generated one beside the data so credentials survive restarts.
  const file = path.resolve(config.dataDir, "tokengate-secret");
  try {
    return (await readFile(file, "utf8")).trim();
  } catch {
    await mkdir(path.dirname(file), { recursive: true });
    const secret = randomBytes(32).toString("base64url");
    await writeFile(file, `${secret}\n`, { mode: 0o600 });
    await chmod(file, 0o600);
    logger.warn({ file }, "TOKENGATE_SECRET is not set: generated one in this file. Set TOKENGATE_SECRET (the same on every instance) in production.");
    return secret;
  }
}

async function open(config: Config, migrate: boolean): Promise<Database> {
  const database = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, migrate: false });
  if (migrate) {
    const applied = await applyMigrations(database.sql);
    if (applied.length) logger.info({ migrations: applied }, "applied migrations");
  }
  useDatabase(database);
  return database;
}

async function serve(config: Config): Promise<void> {
  const database = await open(config, true);
  logger.info(database.kind === "pglite" ? { database: "pglite", dir: path.resolve(config.dataDir, "pglite") } : { database: "postgres" }, "database open");
  const { bootstrapAdmin } = await import("./auth/index.ts");
  const { configureCredentialSecret, configureUpstreamPolicy, upgradeStoredCredentials } = await import("./routing/index.ts");
  const { startHoldSweeper } = await import("./accounting/index.ts");
  const { startServer } = await import("./server.ts");
  const { configureEvents, closeEvents } = await import("./events/index.ts");
  await configureEvents(config.redisUrl);
  if (config.redisUrl) logger.info({ events: "redis" }, "events: Redis pub/sub (REDIS_URL)");
  configureCredentialSecret(await credentialSecret(config));
  configureUpstreamPolicy({ allowPrivateUpstreams: config.admin.allowPrivateUpstreams });
  const upgraded = await upgradeStoredCredentials();
  if (upgraded) console.log(`re-encrypted ${upgraded} stored upstream credential(s) with the current scheme`);
  const { generatedSecret, revoked } = await bootstrapAdmin(config.adminToken);
  if (revoked) console.log(`TOKENGATE_ADMIN_TOKEN changed: revoked ${revoked} earlier bootstrap token(s)`);
  if (generatedSecret) {
    // The one secret ever printed, by design: plain text on stdout, once, never through the logger.
    process.stdout.write(
      `\n  A platform admin token was generated (shown once, stored hashed):\n\n    ${generatedSecret}\n\n  Use it as: Authorization: Bearer <token>   (or set TOKENGATE_ADMIN_TOKEN)\n\n`,
    );
  }
  const { startAlertWebhooks } = await import("./webhooks/index.ts");
  const stopWebhooks = startAlertWebhooks({ ...config.webhooks, onError: (message, e) => logger.error({ component: "webhooks", ...errorFields(e) }, message) });
  const stopSweeper = startHoldSweeper(config.sweepIntervalMs, (e) => logger.error({ component: "holds", ...errorFields(e) }, "sweep failed"));
  const running = await startServer(config);

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    stopSweeper();
    await running.close();
    await stopWebhooks();
    await closeEvents();
    await database.close();
    process.exit(0);
  };
  process.on("SIGINT", () => void shutdown("SIGINT"));
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
}

async function main(): Promise<void> {
  const [command = "serve", ...rest] = process.argv.slice(2);
  const config = loadConfig(process.env);
  configureLogging(config.logLevel);
  switch (command) {
    case "serve":
      return serve(config);
    case "migrate": {
      const database = await open(config, true);
      logger.info("migrations up to date");
      await database.close();
      return;
    }
    case "print-schema": {
      const { printedSchema } = await import("./schema/index.ts");
      const target = rest[0] ?? "schema.graphql";
      await writeFile(target, printedSchema());
      console.log(`wrote ${target}`);
      return;
    }
    case "create-admin-token": {
      const [role = "PLATFORM_ADMIN", organizationId, projectId] = rest;
      const database = await open(config, true);
      const { createAdminToken } = await import("./auth/index.ts");
      const created = await createAdminToken({ name: `cli ${role}`, role: role as "PLATFORM_ADMIN", organizationId, projectId });
      console.log(created.secret);
      await database.close();
      return;
    }
    default:
      logger.error(`unknown command ${command}: use serve, migrate, print-schema or create-admin-token ROLE [ORG_ID] [PROJECT_ID]`);
      process.exit(2);
  }
}

main().catch((error: unknown) => {
  logger.error(errorFields(error), error instanceof Error ? error.message : String(error));
  process.exit(1);
});
