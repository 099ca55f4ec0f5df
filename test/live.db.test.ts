// Subscriptions: route health changes, budget alerts once per threshold, tenancy of events,
// and no listener left behind after 1,000 subscribe / unsubscribe cycles.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { startTestServer, token, wsClient } from "./support/graphql.ts";
import { reserve, settle } from "../src/money/holds.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { announceSpend } from "../src/spend/index.ts";
import { HealthTracker } from "../src/health/index.ts";
import { events, listenerCount } from "./support/services.ts";
import type { RunningServer } from "../src/server.ts";
import type { Client } from "graphql-ws";

let database: TestDatabase;
let server: RunningServer;
beforeAll(async () => {
  database = await createTestDatabase();
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
  await database.dispose();
});

/** Collects a subscription's payloads; resolves `ready` once the server has registered it. */
function collect<T = Record<string, any>>(client: Client, query: string, variables?: Record<string, unknown>) {
  const received: T[] = [];
  const errors: unknown[] = [];
  const dispose = client.subscribe<T>(
    { query, variables },
    {
      next: (v) => (v.errors ? errors.push(v.errors) : received.push(v.data as T)),
      error: (e) => errors.push(e),
      complete: () => undefined,
    },
  );
  return { received, errors, dispose };
}

async function until(check: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

const settleOne = async (w: Awaited<ReturnType<typeof f.world>>, amount: bigint) => {
  const bucketId = (await walletBucket(w.org.id, "CREDIT")).id;
  const requestId = randomUUID();
  const r = await reserve({ requestId, bucketId, amount, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000 });
  if (!r.ok) throw new Error(r.refusal);
  await settle(r.holdId, amount);
  await announceSpend(events, { organizationId: w.org.id, projectId: w.project.id, keyId: w.key.id, routeId: null, requestId, bucket: "CREDIT", charge: amount, status: "SETTLED" });
  return requestId;
};

describe("routeHealth", () => {
  it("reports a channel going DOWN after failures and coming back after recovery, and stores each change", async () => {
    const w = await f.world();
    const { route, channels } = await f.route(w.viewer, w.org.id, "health-model", [{ name: "c1", baseUrl: "http://127.0.0.1:9", upstreamModel: "m" }]);
    const channel = { ...channels[0]!, organizationId: w.org.id };
    const client = wsClient(server, await token("ORG_ADMIN", w.org.id));
    const before = listenerCount();
    const sub = collect(client, `subscription($r: ID) { routeHealth(routeId: $r) { routeId channelId state previousState successRate } }`, { r: route.id });
    await until(() => listenerCount() > before);

    const tracker = new HealthTracker({ window: 10, downAfter: 3, recoverAfter: 2, degradedBelow: 0.8, minSamples: 5, cooldownMs: 100 }, events);
    const t0 = Date.now();
    for (let i = 0; i < 3; i++) await tracker.record(channel, { ok: false, latencyMs: 5 }, t0 + i);
    expect(tracker.admit(channel, t0 + 50)).toBe("no"); // cooling down
    expect(tracker.admit(channel, t0 + 200)).toBe("probe"); // half-open: one probe…
    expect(tracker.admit(channel, t0 + 201)).toBe("no"); // …and only one
    // The probe succeeds: one step up. HEALTHY needs a run of successes and a good rate over the
    // window (hysteresis), so with 3 failures in a window of 10 it takes 8 successes.
    expect(await tracker.record(channel, { ok: true, latencyMs: 5 }, t0 + 300)).toBe("DEGRADED");
    let successes = 1;
    while ((await tracker.record(channel, { ok: true, latencyMs: 5 }, t0 + 300 + successes)) !== "HEALTHY") successes++;
    expect(successes + 1).toBe(8);

    await until(() => sub.received.length >= 4);
    expect(sub.received.map((e) => `${e.routeHealth.previousState}->${e.routeHealth.state}`)).toEqual(["HEALTHY->DEGRADED", "DEGRADED->DOWN", "DOWN->DEGRADED", "DEGRADED->HEALTHY"]);
    expect(sub.received[1]!.routeHealth).toMatchObject({ routeId: route.id, channelId: channel.id, state: "DOWN", successRate: 0 });
    expect((await database.prisma.channel.findUniqueOrThrow({ where: { id: channel.id } })).health).toBe("HEALTHY");
    expect(await database.prisma.channelHealthEvent.count({ where: { channelId: channel.id } })).toBe(4);
    sub.dispose();
    await until(() => listenerCount() === before);
    await client.dispose();
  });
});

describe("budgetAlert and keySpend", () => {
  it("sends each crossed threshold once per window and spend events with the counters' numbers", async () => {
    const w = await f.world({ key: { dailyCap: "1" } });
    const client = wsClient(server, await token("ORG_ADMIN", w.org.id));
    const before = listenerCount();
    const alerts = collect(client, `subscription($p: ID) { budgetAlert(projectId: $p) { scope scopeId threshold spent { amount } cap { amount currency } } }`, { p: w.project.id });
    const spend = collect(client, `subscription($k: ID!) { keySpend(keyId: $k) { keyId requestId charge { amount currency } spendToday { amount } remainingToday { amount } status } }`, {
      k: w.key.id,
    });
    await until(() => listenerCount() === before + 2);

    const first = await settleOne(w, 600_000n);
    await settleOne(w, 250_000n);
    await settleOne(w, 10_000n); // still past 80 %: nothing new
    await settleOne(w, 140_000n); // reaches 100 %
    await until(() => spend.received.length === 4 && alerts.received.length === 3);
    await new Promise((r) => setTimeout(r, 100));
    expect(alerts.received.map((a) => [a.budgetAlert.scope, a.budgetAlert.threshold, a.budgetAlert.spent.amount])).toEqual([
      ["KEY_DAILY", 50, "0.600000"],
      ["KEY_DAILY", 80, "0.850000"],
      ["KEY_DAILY", 100, "1.000000"],
    ]);
    expect(spend.received[0]!.keySpend).toEqual({
      keyId: w.key.id,
      requestId: first,
      charge: { amount: "0.600000", currency: "USD" },
      spendToday: { amount: "0.600000" },
      remainingToday: { amount: "0.400000" },
      status: "SETTLED",
    });
    expect(spend.received[3]!.keySpend.remainingToday).toEqual({ amount: "0.000000" });
    expect(await database.prisma.budgetAlert.count({ where: { scopeId: w.key.id } })).toBe(3);
    alerts.dispose();
    spend.dispose();
    await client.dispose();
    await until(() => listenerCount() === before);
  });

  it("a subscriber of organization A receives nothing from organization B, and cannot subscribe to B's key", async () => {
    const a = await f.world({ key: { dailyCap: "1" } });
    const b = await f.world({ key: { dailyCap: "1" } });
    const client = wsClient(server, await token("ORG_ADMIN", a.org.id));
    const before = listenerCount();
    const alerts = collect(client, `subscription { budgetAlert { scopeId } }`);
    const receipts = collect(client, `subscription { receiptCreated { id } }`);
    const foreign = collect(client, `subscription($k: ID!) { keySpend(keyId: $k) { requestId } }`, { k: b.key.id });
    await until(() => foreign.errors.length === 1 && listenerCount() === before + 2);
    expect(JSON.stringify(foreign.errors[0])).toContain("not found");
    await settleOne(b, 900_000n);
    await settleOne(a, 600_000n);
    await until(() => alerts.received.length >= 1);
    await new Promise((r) => setTimeout(r, 100));
    expect(alerts.received.map((x) => x.budgetAlert.scopeId)).toEqual([a.key.id]);
    alerts.dispose();
    receipts.dispose();
    await client.dispose();
    await until(() => listenerCount() === before);
  });
});

describe("subscription hygiene", () => {
  it("1,000 subscribe / unsubscribe cycles leave no listener behind", async () => {
    const w = await f.world();
    const client = wsClient(server, await token("ORG_ADMIN", w.org.id));
    const baseline = listenerCount();
    for (let round = 0; round < 10; round++) {
      // Odd rounds: 100 distinct documents (an execution each); even rounds: 100 identical ones (one shared execution).
      const distinct = round % 2 === 1;
      const subs = Array.from({ length: 100 }, (_, i) => collect(client, `subscription($k: ID!) { ${distinct ? `s${i}: ` : ""}keySpend(keyId: $k) { requestId } }`, { k: w.key.id }));
      await until(() => listenerCount() === baseline + (distinct ? 100 : 1));
      for (const s of subs) s.dispose();
      await until(() => listenerCount() === baseline);
    }
    // A socket that drops with subscriptions open releases them too.
    const dropped = wsClient(server, await token("ORG_ADMIN", w.org.id));
    for (let i = 0; i < 20; i++) collect(dropped, `subscription { a${i}: budgetAlert { threshold } }`);
    await until(() => listenerCount() === baseline + 20);
    await dropped.dispose();
    await until(() => listenerCount() === baseline);
    await client.dispose();
  });

  it("SSE subscriptions need a token too", async () => {
    const response = await fetch(`${server.url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify({ query: `subscription { budgetAlert { threshold } }` }),
    });
    const text = await response.text();
    expect(text).toContain("UNAUTHENTICATED");
  });
});
