// Issue 17: estimateRun's verdict covers every limit that applies (src/keys/plan.ts), not only the
// key's daily cap: a cap that leaves less than the smallest estimate refuses the run (per request:
// less than one call), one below the largest estimate is listed as binding (it may cut the run short).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { gqlOk, token } from "./support/graphql.ts";
import { setRouteLimits } from "../src/routing/index.ts";
import { setChannelLimits } from "../src/routing/index.ts";
import { setKeyCaps } from "../src/keys/index.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database.dispose();
});

const ESTIMATE = `query($k: ID!, $model: String!) { estimateRun(input: { keyId: $k, model: $model, mode: QUICK }) {
  allowed reasons costMin { amount } costMax { amount }
  keyDaily { scope cap { amount } remaining { amount } }
  limits { kind bucket limit { amount } remaining { amount } }
  bindingLimits { kind remaining { amount } }
} }`;

describe("estimateRun's verdict over every limit", () => {
  it("per-request, project, route and channel caps: below the smallest estimate refuses, below the largest binds", async () => {
    // QUICK: 2–4 calls of 2,000 prompt + 800 completion tokens at 2.5 / 10 per million = 0.013 per call.
    const w = await f.world({ credit: "1", key: { dailyCap: "1", perRequestMaxCharge: "0.012999" }, project: { dailyCap: "0.025999" } });
    const model = `est-${w.org.id.slice(-6)}`;
    const r = await f.route(w.viewer, w.org.id, model, [
      { name: "main", baseUrl: "http://127.0.0.1:9", upstreamModel: "m-up", price: ["2.5", "10"] },
      { name: "spare", baseUrl: "http://127.0.0.1:9", upstreamModel: "m-spare", price: ["2.5", "10"] },
    ]);
    await setRouteLimits(w.viewer, { routeId: r.route.id, dailyCap: "0.051999" });
    // The primary's own cap is below the smallest estimate, but a backup is left: binding, no refusal.
    await setChannelLimits(w.viewer, { channelId: r.channels[0]!.id, dailyCap: "0.010000" });
    const admin = await token("ORG_ADMIN", w.org.id);
    const e = (await gqlOk(admin, ESTIMATE, { k: w.key.id, model })).estimateRun;
    expect(e).toMatchObject({ allowed: false, costMin: { amount: "0.026000" }, costMax: { amount: "0.052000" } });
    expect(e.reasons).toEqual(["the key's per-request maximum charge leaves less than one call's estimate", "the project's daily cap leaves less than the smallest estimate"]);
    // keyDaily stays (API.md), and is one of the limits.
    expect(e.keyDaily).toEqual({ scope: "KEY_DAILY", cap: { amount: "1.000000" }, remaining: { amount: "1.000000" } });
    expect(e.limits).toEqual([
      { kind: "KEY_PER_REQUEST", bucket: "CREDIT", limit: { amount: "0.012999" }, remaining: { amount: "0.012999" } },
      { kind: "KEY_DAILY", bucket: "CREDIT", limit: { amount: "1.000000" }, remaining: { amount: "1.000000" } },
      { kind: "PROJECT_DAILY", bucket: "CREDIT", limit: { amount: "0.025999" }, remaining: { amount: "0.025999" } },
      { kind: "PROJECT_MONTHLY", bucket: "CREDIT", limit: null, remaining: null },
      { kind: "ROUTE_DAILY", bucket: "CREDIT", limit: { amount: "0.051999" }, remaining: { amount: "0.051999" } },
      { kind: "CHANNEL_DAILY", bucket: "CREDIT", limit: { amount: "0.010000" }, remaining: { amount: "0.010000" } },
      { kind: "BALANCE", bucket: "CREDIT", limit: { amount: "1.000000" }, remaining: { amount: "1.000000" } },
    ]);
    expect(e.bindingLimits.map((l: { kind: string }) => l.kind)).toEqual(["KEY_PER_REQUEST", "PROJECT_DAILY", "ROUTE_DAILY", "CHANNEL_DAILY"]);

    // At exactly one call and the smallest estimate the run is allowed; the route still binds.
    await gqlOk(admin, `mutation($k: ID!) { setKeyCaps(input: { keyId: $k, perRequestMaxCharge: "0.013000" }) { id } }`, { k: w.key.id });
    await gqlOk(admin, `mutation($p: ID!) { setProjectBudget(input: { projectId: $p, dailyCap: "0.026000" }) { id } }`, { p: w.project.id });
    const ok = (await gqlOk(admin, ESTIMATE, { k: w.key.id, model })).estimateRun;
    expect(ok).toMatchObject({ allowed: true, reasons: [] });
    expect(ok.bindingLimits.map((l: { kind: string }) => l.kind)).toEqual(["PROJECT_DAILY", "ROUTE_DAILY", "CHANNEL_DAILY"]);

    // Without a backup the channel's own cap refuses.
    await setKeyCaps(w.viewer, { keyId: w.key.id, backupRoutes: false });
    const alone = (await gqlOk(admin, ESTIMATE, { k: w.key.id, model })).estimateRun;
    expect(alone).toMatchObject({ allowed: false, reasons: ["the channel's daily cap leaves less than the smallest estimate"] });
  });
});
