// Start-up: every service of one process (database, event bus, channel health, credential cipher,
// key cache, alert webhooks, hold sweeper) built from one Config, installed (src/installed.ts), and closed
// through one path, in the reverse order of their start.
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { randomBytes } from "node:crypto";
import type { Config } from "./config.ts";
import { openConfiguredDatabase, useDatabase, type Database } from "./db/index.ts";
import { createEventBus } from "./events/index.ts";
import { HealthTracker } from "./health/index.ts";
import { KeyCache } from "./keys/cache.ts";
import { installServices, type Services } from "./installed.ts";
import { errorFields, logger } from "./log.ts";
import { CredentialCipher } from "./secrets.ts";
import { upgradeStoredCredentials } from "./routing/index.ts";
import { startAlertWebhooks } from "./webhooks/index.ts";
import { startHoldSweeper } from "./money/index.ts";

export interface RunningServices extends Services {
  database: Database;
}

/** TOKENGATE_SECRET, or (unset) the one generated beside the data so credentials survive restarts. */
export async function credentialSecret(config: Config): Promise<string> {
  if (config.secret) return config.secret;
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

/**
 * Builds and installs the services of `config`; close() stops them in reverse order (hold sweeper,
 * webhooks, key cache, event transport, database). A start-up that fails half-way closes what it opened.
 * `options.database`: one the caller opened and migrated (a test's), used and closed as if opened here.
 */
export async function startServices(config: Config, options: { database?: Database } = {}): Promise<RunningServices> {
  const stops: Array<() => void | Promise<void>> = [];
  let closing: Promise<void> | null = null;
  const close = () =>
    (closing ??= (async () => {
      for (const stop of stops.reverse()) await stop();
    })());
  try {
    const database = options.database ?? (await openConfiguredDatabase(config, { migrate: true }));
    useDatabase(database);
    stops.push(() => database.close());
    logger.info(database.kind === "pglite" ? { database: "pglite", dir: path.resolve(config.dataDir, "pglite") } : { database: "postgres" }, "database open");
    // Before anything subscribes: what subscribes stays on the bus it found.
    const events = await createEventBus(config.redisUrl);
    stops.push(() => events.close());
    if (config.redisUrl) logger.info({ events: "redis" }, "events: Redis pub/sub (REDIS_URL)");
    const cipher = new CredentialCipher(await credentialSecret(config));
    const keys = new KeyCache(events);
    stops.push(() => keys.close());
    const services = installServices({ config, events, health: new HealthTracker(config.health, events), cipher, keys, close });
    const upgraded = await upgradeStoredCredentials();
    if (upgraded) console.log(`re-encrypted ${upgraded} stored upstream credential(s) with the current scheme`);
    stops.push(startAlertWebhooks({ ...config.webhooks, events, onError: (message, e) => logger.error({ component: "webhooks", ...errorFields(e) }, message) }));
    stops.push(startHoldSweeper(config.sweepIntervalMs, (e) => logger.error({ component: "holds", ...errorFields(e) }, "sweep failed")));
    return { ...services, database };
  } catch (error) {
    await close().catch(() => undefined);
    throw error;
  }
}
