// CLI entry: `serve` (default), `migrate`, `print-schema`, `create-admin-token`.
import { writeFile } from "node:fs/promises";
import { loadConfig, type Config } from "./config.ts";
import { errorFields, logger } from "./log.ts";
import { openConfiguredDatabase } from "./db/index.ts";

async function serve(config: Config): Promise<void> {
  // Loaded here, not above: the other commands need neither the GraphQL schema nor the gateway.
  const [{ startServices }, { startServer }, { bootstrapAdmin }] = await Promise.all([import("./services.ts"), import("./server.ts"), import("./auth/index.ts")]);
  const services = await startServices(config);
  const { generatedSecret, revoked } = await bootstrapAdmin(config.adminToken);
  if (revoked) console.log(`TOKENGATE_ADMIN_TOKEN changed: revoked ${revoked} earlier bootstrap token(s)`);
  if (generatedSecret) {
    // The one secret ever printed, by design: plain text on stdout, once, never through the logger.
    process.stdout.write(
      `\n  A platform admin token was generated (shown once, stored hashed):\n\n    ${generatedSecret}\n\n  Use it as: Authorization: Bearer <token>   (or set TOKENGATE_ADMIN_TOKEN)\n\n`,
    );
  }
  const running = await startServer(services);

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    // The server first (its requests finish, the gateway writes what it holds), then every service.
    await running.close();
    await services.close();
    process.exit(0);
  };
  process.on("SIGINT", () => void shutdown("SIGINT"));
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
}

async function main(): Promise<void> {
  const [command = "serve", ...rest] = process.argv.slice(2);
  const config = loadConfig(process.env);
  logger.level = config.logLevel;
  switch (command) {
    case "serve":
      return serve(config);
    case "migrate": {
      const database = await openConfiguredDatabase(config, { migrate: true });
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
      const database = await openConfiguredDatabase(config, { migrate: true });
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
