// Start-up builds every service from one Config (src/services.ts), installs them as the process's,
// and closes them through one close().
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "./support/db.ts";
import "./support/services.ts";
import { loadConfig } from "../src/config.ts";
import { db, useDatabase } from "../src/db/index.ts";
import { localEventBus } from "../src/events/index.ts";
import { KeyCache } from "../src/keys/cache.ts";
import { world } from "./support/fixtures.ts";
import { liveQueueLimit } from "../src/events/streams.ts";
import { installServices, services } from "../src/installed.ts";
import { BUCKET_CURRENCY } from "../src/money/amounts.ts";
import { CredentialCipher } from "../src/secrets.ts";
import { startServices } from "../src/services.ts";

let database: TestDatabase;
let dataDir: string;

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), "tokengate-services-"));
  database = await createTestDatabase();
});
afterAll(async () => {
  await database.dispose();
  await rm(dataDir, { recursive: true, force: true });
});

describe("startServices", () => {
  it("builds the services of one Config, installs them, and closes them once, database last", async () => {
    const before = services();
    const config = loadConfig({
      DATA_DIR: dataDir,
      DATABASE_URL: database.url ?? "",
      LOG_LEVEL: "silent",
      HEALTH_COOLDOWN_MS: "1234",
      LIVE_QUEUE_LIMIT: "7",
      TOKENGATE_CREDIT_CURRENCY: "EUR",
    });
    // PostgreSQL: start-up opens (and migrates) the database of DATABASE_URL itself. PGlite is one
    // in-process instance (a new data dir needs the TypeScript loader in a child process): a second
    // client on the test's instance stands in, its close() recorded.
    let closed = 0;
    const pglite = testDatabaseKind() === "pglite" ? await database.openSecondClient() : null;
    const recorded = pglite && {
      ...pglite,
      close: () => {
        closed++;
        return pglite.close();
      },
    };
    const running = await startServices(config, recorded ? { database: recorded } : {});
    try {
      const installed = services();
      expect(installed.config).toBe(config);
      expect(installed.events).toBe(running.events);
      expect(installed.health).toBe(running.health);
      expect(installed.cipher).toBe(running.cipher);
      expect(installed.keys).toBe(running.keys);
      // What modules read at call time comes from that one Config.
      expect(running.health.config.cooldownMs).toBe(1234);
      expect(liveQueueLimit()).toBe(7);
      expect(BUCKET_CURRENCY).toEqual({ CREDIT: "EUR", ROUTED: "CNY" });
      // No TOKENGATE_SECRET: the credential key is generated beside the data (owner-only) and used.
      const file = path.join(dataDir, "tokengate-secret");
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      const secret = (await readFile(file, "utf8")).trim();
      expect(new CredentialCipher(secret).decrypt(running.cipher!.encrypt("sk-upstream", "channel-1"), "channel-1")).toBe("sk-upstream");
      // The bus delivers.
      const seen: string[] = [];
      const stop = running.events.listen("walletChanged", (e) => seen.push(e.organizationId));
      running.events.publish("walletChanged", { organizationId: "org-1" });
      stop();
      expect(seen).toEqual(["org-1"]);
      expect(await running.database.sql.query<{ one: number }>("SELECT 1 AS one")).toEqual([{ one: 1 }]);
    } finally {
      await running.close();
      installServices(before);
      useDatabase(database);
    }
    // One close path: a second call is the same, and the database is closed.
    expect(running.close()).toBe(running.close());
    if (pglite) expect(closed).toBe(1);
    else await expect(running.database.sql.query("SELECT 1")).rejects.toThrow();
  });

  it("the key cache listens to its bus: a keyChanged event drops a key at once, and close() stops listening", async () => {
    useDatabase(database);
    const w = await world();
    const events = localEventBus();
    const keys = new KeyCache(events);
    try {
      const idle = events.listenerCount();
      expect((await keys.lookup(w.secret)).ok).toBe(true);
      expect(events.listenerCount()).toBe(idle + 1);
      // Paused behind the cache's back (no event): the cached entry still answers, for at most 1 s.
      await db.apiKey.update({ where: { id: w.key.id }, data: { status: "PAUSED" } });
      expect((await keys.lookup(w.secret)).ok).toBe(true);
      // The event another instance publishes on a change: this cache reads the key again.
      events.publish("keyChanged", { keyId: w.key.id, status: "PAUSED" });
      expect(await keys.lookup(w.secret)).toMatchObject({ ok: false, reason: "KEY_PAUSED" });
      keys.close();
      expect(events.listenerCount()).toBe(idle);
      // Closed: no listener comes back with the next lookup.
      await keys.lookup(w.secret);
      expect(events.listenerCount()).toBe(idle);
    } finally {
      keys.close();
      await events.close();
    }
  });
});
