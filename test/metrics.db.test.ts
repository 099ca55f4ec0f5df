// /metrics through prom-client: after known traffic (a fallback, plain and streamed completions,
// a bad key, GraphQL operations, a live subscription) every named series holds the right values,
// and the spend counter equals the sum of the receipts' charges for the bucket.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI from "openai";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { startTestServer, token, wsClient } from "./support/graphql.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import { uid } from "./support/gateway.ts";
import { listenerCount } from "./support/services.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let server: RunningServer;
let fake: FakeUpstream;
beforeAll(async () => {
  database = await createTestDatabase();
  fake = await startFakeUpstream();
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
  await fake.close();
  await database.dispose();
});

async function scrape(): Promise<string> {
  const response = await fetch(`${server.url}/metrics`);
  expect(response.status).toBe(200);
  expect(response.headers.get("content-type")).toContain("text/plain");
  return response.text();
}

/** Sum of the samples of `name` whose labels include `labels` (0 when there is none). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const pair of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have[pair[1]!] = pair[2]!;
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) total += Number(m[3]);
  }
  return total;
}

async function until(check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("/metrics", () => {
  it("counts /v1 requests, attempts, fallbacks, spend (= the receipts' charges), GraphQL operations, subscriptions and the pool", async () => {
    const w = await f.world();
    const model = uid("gpt");
    const primary = uid("primary");
    const backup = uid("backup");
    await f.route(w.viewer, w.org.id, model, [
      { name: "primary", baseUrl: fake.url, upstreamModel: primary, price: ["3", "12"] },
      { name: "backup", baseUrl: fake.url, upstreamModel: backup, price: ["5", "20"] },
    ]);
    const client = new OpenAI({ apiKey: w.secret, baseURL: `${server.url}/v1`, maxRetries: 0 });
    const before = await scrape();

    fake.set(primary, { type: "status", status: 500 });
    await client.chat.completions.create({ model, messages: [{ role: "user", content: "fall back" }], max_tokens: 30 });
    fake.set(primary, { type: "ok" });
    await client.chat.completions.create({ model, messages: [{ role: "user", content: "one" }], max_tokens: 30 });
    await client.chat.completions.create({ model, messages: [{ role: "user", content: "two" }], max_tokens: 30 });
    const stream = await client.chat.completions.create({ model, messages: [{ role: "user", content: "three" }], max_tokens: 30, stream: true });
    for await (const _chunk of stream) void _chunk;
    const bad = new OpenAI({ apiKey: "sk-not-a-key", baseURL: `${server.url}/v1`, maxRetries: 0 });
    await expect(bad.chat.completions.create({ model, messages: [{ role: "user", content: "x" }] })).rejects.toMatchObject({ status: 401 });

    expect((await fetch(`${server.url}/v1/no-such-endpoint`, { method: "POST" })).status).toBe(404);

    const admin = await token("ORG_ADMIN", w.org.id);
    const post = (query: string) =>
      fetch(`${server.url}/graphql`, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${admin}` }, body: JSON.stringify({ query }) });
    expect((await post(`query Mine { projects { totalCount } }`)).status).toBe(200);
    await post(`{ project(id: "nope") { id } }`); // NOT_FOUND: an operation with errors
    await post(`{ noSuchField }`); // fails validation

    const ws = wsClient(server, admin);
    const listeners = listenerCount();
    const dispose = ws.subscribe({ query: `subscription { budgetAlert { threshold } }` }, { next: () => undefined, error: () => undefined, complete: () => undefined });
    await until(() => listenerCount() === listeners + 1);

    const after = await scrape();
    const delta = (name: string, labels: Record<string, string> = {}) => sample(after, name, labels) - sample(before, name, labels);

    // Requests by route / channel / status; the bad key never reached a route.
    expect(delta("tokengate_gateway_requests_total", { route: model, channel: "backup", status: "200" })).toBe(1);
    expect(delta("tokengate_gateway_requests_total", { route: model, channel: "primary", status: "200" })).toBe(3);
    expect(delta("tokengate_gateway_requests_total", { route: "none", channel: "none", status: "401" })).toBe(1);
    expect(delta("tokengate_gateway_requests_total", { route: "none", channel: "none", status: "404" })).toBe(1);
    expect(delta("tokengate_gateway_request_duration_seconds_count", { route: model })).toBe(4);
    expect(delta("tokengate_gateway_overhead_seconds_count", { route: model })).toBe(4);
    // The gateway's own time is part of the total, never more.
    expect(delta("tokengate_gateway_overhead_seconds_sum", { route: model })).toBeLessThanOrEqual(delta("tokengate_gateway_request_duration_seconds_sum", { route: model }));
    // Attempts and the fallback.
    expect(delta("tokengate_upstream_attempts_total", { route: model, channel: "primary", outcome: "failed" })).toBe(1);
    expect(delta("tokengate_upstream_attempts_total", { route: model, channel: "primary", outcome: "ok" })).toBe(3);
    expect(delta("tokengate_upstream_attempts_total", { route: model, channel: "backup", outcome: "ok" })).toBe(1);
    expect(delta("tokengate_upstream_attempt_duration_seconds_count", { route: model })).toBe(5);
    expect(delta("tokengate_fallbacks_total", { route: model, channel: "backup" })).toBe(1);

    // Spend: exactly the receipts' charges, to the micro-unit.
    const receipts = await database.prisma.receipt.findMany({ where: { organizationId: w.org.id } });
    expect(receipts).toHaveLength(4);
    const charged = receipts.reduce((sum, r) => sum + r.charge, 0n);
    expect(charged).toBeGreaterThan(0n);
    expect(BigInt(delta("tokengate_spend_micros_total", { bucket: "CREDIT", currency: "USD", source: "receipt" }))).toBe(charged);
    expect(delta("tokengate_spend_micros_total", { bucket: "ROUTED" })).toBe(0);

    // GraphQL operations by type / root field / outcome.
    expect(delta("tokengate_graphql_operations_total", { type: "query", field: "projects", outcome: "ok" })).toBe(1);
    expect(delta("tokengate_graphql_operations_total", { type: "query", field: "project", outcome: "error" })).toBe(1);
    expect(delta("tokengate_graphql_operations_total", { type: "query", field: "noSuchField", outcome: "invalid" })).toBe(1);
    expect(delta("tokengate_graphql_operations_total", { type: "subscription", field: "budgetAlert", outcome: "ok" })).toBe(1);
    expect(delta("tokengate_graphql_requests_total")).toBe(3);
    expect(sample(after, "tokengate_subscriptions_live")).toBe(listeners + 1);

    // Reservations: none outstanding once every request settled (no Hold rows on leases); nothing
    // held once the server is idle. On leases `held` is leased headroom until it goes back by itself
    // (unused for LEASE_TTL_MS / 2): the gauge reads the database at each scrape.
    expect(sample(after, "tokengate_holds_outstanding")).toBe(0);
    await until(async () => sample(await scrape(), "tokengate_held_micros", { bucket: "CREDIT" }) === 0, 5_000);
    // Pool and default process metrics.
    if (testDatabaseKind() === "pglite") expect(sample(after, "tokengate_db_pool_connections", { state: "total" })).toBe(1);
    else expect(sample(after, "tokengate_db_pool_connections", { state: "total" })).toBeGreaterThanOrEqual(1);
    expect(after).toMatch(/^tokengate_db_pool_connections\{state="waiting"\} \d+$/m);
    expect(after).toMatch(/^process_cpu_user_seconds_total \S+$/m);
    expect(after).toMatch(/^nodejs_heap_size_used_bytes \S+$/m);
    // Bounded labels: no request id or key id anywhere.
    expect(after).not.toContain(w.key.id);
    expect(after).not.toMatch(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/);

    dispose();
    await until(() => listenerCount() === listeners);
    await ws.dispose();
  }, 60_000);
});
