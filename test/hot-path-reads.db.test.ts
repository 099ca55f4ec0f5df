// The hot path's cached reads (keys, route plans) are single-flight: when an entry expires under
// load, the requests that arrive before it is read again share one read instead of each sending
// their own (a burst of Prisma queries, ~0.5 ms of CPU each, every second per key and route).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { changeKeyStatus, forgetKey, lookupKey } from "../src/keys/index.ts";
import { Lookups } from "../src/gateway/lookups.ts";

let database: TestDatabase;
let statements: string[] = [];
beforeAll(async () => {
  database = await createTestDatabase({ onQuery: (sql) => statements.push(sql) });
});
afterAll(() => database.dispose());

describe("hot-path reads", () => {
  it("50 concurrent lookups of an uncached key read it once; a key change reaches the next lookup at once", async () => {
    const w = await f.world();
    forgetKey(w.key.id);
    statements = [];
    const found = await Promise.all(Array.from({ length: 50 }, () => lookupKey(w.secret)));
    expect(found.every((r) => r.ok && r.key.id === w.key.id)).toBe(true);
    expect(statements.filter((s) => s.includes('"ApiKeySecret"'))).toHaveLength(1);

    // A change reaches the next lookup at once, read in flight or not.
    const inFlight = lookupKey(w.secret, new Date(Date.now() + 5_000));
    await changeKeyStatus(w.viewer, w.key.id, "pauseKey");
    await inFlight;
    expect(await lookupKey(w.secret)).toMatchObject({ ok: false, reason: "KEY_PAUSED" });
  });

  it("50 concurrent plans of an uncached route read it as often as one plan does", async () => {
    const w = await f.world();
    await f.route(w.viewer, w.org.id, "m-single", [{ name: "c", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: "u", price: ["1", "2"] }]);
    statements = [];
    await new Lookups(60_000).plan(w.org.id, "m-single");
    const one = statements.length;
    expect(one).toBeGreaterThan(0);
    statements = [];
    const lookups = new Lookups(60_000);
    const plans = await Promise.all(Array.from({ length: 50 }, () => lookups.plan(w.org.id, "m-single")));
    expect(plans.every((p) => p?.route.model === "m-single")).toBe(true);
    expect(statements).toHaveLength(one);
  });
});
