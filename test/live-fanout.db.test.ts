// Issue 15's acceptance test: SQL statements while 50 subscribers of every subscription receive 100
// events do not grow with subscribers × events. Every statement is counted: Prisma's and the
// gateway's direct driver statements alike. The same 100 requests are sent once with 1 subscriber
// per subscription and once with 50; the difference is what subscribers cost the database.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Client } from "graphql-ws";
import type { APIError } from "openai";
import OpenAI from "openai";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import * as f from "./support/fixtures.ts";
import { settledListeners, startTestServer, token, wsClient } from "./support/graphql.ts";
import { currentDatabase } from "../src/db/index.ts";
import { listenerCount } from "./support/services.ts";
import { formatMoney } from "../src/money/amounts.ts";
import type { RunningServer } from "../src/server.ts";
import { RECEIPT_FIELDS, FAILED_FIELDS } from "../src/dashboard/operations.ts";

let database: TestDatabase;
let fake: FakeUpstream;
let server: RunningServer;
let statements = 0;
/**
 * Statements that follow the clock, not the events: lease heartbeats and reclaims, route plans
 * and keys re-read when their caches expire (≤ 1 s), leases granted as they drain, the shared wallet watch (one read per organization per 250 ms
 * while it spends). A slower run (50 subscribers take more CPU) has more of them; they are bounded by
 * the run's duration instead.
 */
const PERIODIC =
  /tg_lease_renew|tg_reclaim_leases|tg_lease_return|granted::text AS granted|KEY_PER_REQUEST|FROM "public"\."ApiKeySecret"|FROM "public"\."ApiKey"|"public"\."WalletBucket"|FROM "public"\."Route"|FROM "public"\."Channel"|FROM "public"\."PriceSnapshot"/;
let periodic = 0;
/** SHOW_SQL=1: the statements of each run, grouped (to see what grew). */
const seen = new Map<string, number>();
const note = (text: string) => {
  if (PERIODIC.test(text)) periodic++;
  else statements++;
  if (process.env.SHOW_SQL) seen.set(text.slice(0, 100), (seen.get(text.slice(0, 100)) ?? 0) + 1);
};

beforeAll(async () => {
  database = await createTestDatabase({ onQuery: note });
  // The gateway's hot path and the event builders send raw SQL straight to the driver: counted too.
  const sql = currentDatabase()!.sql;
  const query = sql.query.bind(sql);
  sql.query = ((text: string, params?: unknown[]) => {
    note(text);
    return query(text, params);
  }) as typeof sql.query;
  fake = await startFakeUpstream();
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
  await fake.close();
  await database.dispose();
});

async function until(check: () => boolean, ms = 30_000, explain?: () => unknown): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`condition not reached in time ${explain ? JSON.stringify(explain()) : ""}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

type Payload = Record<string, any>;

/** Every subscription of API.md and of issue 15, with the fields a dashboard selects. */
function documents(ids: { keyId: string; projectId: string; routeId: string }) {
  return [
    {
      name: "keySpend",
      query: `subscription($k: ID!) { keySpend(keyId: $k) { keyId requestId charge { amount currency } spendToday { amount } remainingToday { amount } status scopes { scope scopeId spent { amount } remaining { amount } } } }`,
      variables: { k: ids.keyId },
    },
    {
      name: "projectSpend",
      query: `subscription($p: ID!) { projectSpend(projectId: $p) { projectId keyId requestId charge { amount } spendToday { amount } remainingToday { amount } status } }`,
      variables: { p: ids.projectId },
    },
    { name: "routeHealth", query: `subscription($r: ID) { routeHealth(routeId: $r) { routeId channelId state successRate p50LatencyMs } }`, variables: { r: ids.routeId } },
    { name: "receiptCreated", query: `subscription { receiptCreated { id status latencyMs ${RECEIPT_FIELDS} } }`, variables: {} },
    { name: "failedRequestCreated", query: `subscription { failedRequestCreated { id ${FAILED_FIELDS} } }`, variables: {} },
    { name: "budgetAlert", query: `subscription { budgetAlert { scope scopeId threshold spent { amount } cap { amount } } }`, variables: {} },
    {
      name: "liveSpend",
      query: `subscription { liveSpend(input: { intervalMs: 250 }) { requests failed spend { bucket amount { amount } } keys { keyId requests } scopes { scope scopeId spent { amount } } } }`,
      variables: {},
    },
    {
      name: "channelStats",
      query: `subscription { channelStats(intervalMs: 250) { channels { channelId requests successRate p50LatencyMs p95LatencyMs state spendToday { amount { amount } } } } }`,
      variables: {},
    },
    { name: "walletBalances", query: `subscription { walletBalances(intervalMs: 250) { balances { bucket balance { amount } held { amount } available { amount } } } }`, variables: {} },
  ];
}

interface Subscriber {
  name: string;
  received: Payload[];
  errors: unknown[];
}

async function subscribeAll(clients: Client[], ids: { keyId: string; projectId: string; routeId: string }): Promise<{ subscribers: Subscriber[]; dispose: () => void; listeners: number }> {
  const subscribers: Subscriber[] = [];
  const disposers: Array<() => void> = [];
  const before = await settledListeners();
  for (const client of clients) {
    for (const doc of documents(ids)) {
      const s: Subscriber = { name: doc.name, received: [], errors: [] };
      subscribers.push(s);
      disposers.push(
        client.subscribe<Payload>(
          { query: doc.query, variables: doc.variables },
          {
            next: (v) => (v.errors ? s.errors.push(v.errors) : s.received.push(v.data![doc.name])),
            error: (e) => s.errors.push(e),
            complete: () => undefined,
          },
        ),
      );
    }
  }
  // Every subscription listens: the listener count settles (each one is checked by what it receives below).
  let last = -1;
  let stableSince = Date.now();
  await until(
    () => {
      const now = listenerCount();
      if (now !== last) {
        last = now;
        stableSince = Date.now();
      }
      // Identical documents of one tenancy share one execution: 6 listeners however many clients.
      return now >= before + 6 && Date.now() - stableSince > 1_000;
    },
    60_000,
    () => ({ before, now: listenerCount() }),
  );
  // The first tick of channelStats and walletBalances arrived for everyone: subscribe-time reads are over.
  await until(
    () => subscribers.filter((s) => s.name === "channelStats" || s.name === "walletBalances").every((s) => s.received.length >= 1),
    30_000,
    () =>
      subscribers
        .filter((s) => (s.name === "channelStats" || s.name === "walletBalances") && !s.received.length)
        .map((s) => [s.name, s.errors])
        .slice(0, 3),
  );
  return {
    subscribers,
    dispose: () => {
      for (const d of disposers) d();
    },
    listeners: listenerCount() - before,
  };
}

describe("live fan-out costs the database nothing per subscriber", { timeout: 240_000 }, () => {
  it("50 subscribers of every subscription, 100 events: the same statements as 1 subscriber", async () => {
    const w = await f.world({ credit: "100", key: { dailyCap: "50", failedChargePolicy: "NEVER", retryCeiling: 0 } });
    const { route } = await f.route(w.viewer, w.org.id, "fan-ok", [{ name: "main", baseUrl: fake.url, upstreamModel: "fan-up", price: ["2.5", "10"] }]);
    await f.route(w.viewer, w.org.id, "fan-bad", [{ name: "broken", baseUrl: fake.url, upstreamModel: "fan-down", price: ["2.5", "10"] }]);
    fake.set("fan-down", { type: "status", status: 500 });
    const openai = new OpenAI({ apiKey: w.secret, baseURL: `${server.url}/v1`, maxRetries: 0, timeout: 60_000 });
    const adminToken = await token("ORG_ADMIN", w.org.id);
    const ids = { keyId: w.key.id, projectId: w.project.id, routeId: route.id };

    /** 100 requests: 80 answered, 20 failing upstream (failed requests); returns the statements they took. */
    const sendHundred = async () => {
      const sent: Array<{ requestId: string; ok: boolean; charge: string }> = [];
      const start = statements;
      const periodicStart = periodic;
      const startedAt = Date.now();
      seen.clear();
      for (let i = 0; i < 100; i++) {
        const model = i % 5 === 4 ? "fan-bad" : "fan-ok";
        try {
          const { response } = await openai.chat.completions.create({ model, messages: [{ role: "user", content: `hello ${i}` }], max_tokens: 20 }).withResponse();
          sent.push({ requestId: response.headers.get("x-request-id")!, ok: true, charge: response.headers.get("x-tokengate-charge")! });
        } catch (e) {
          sent.push({ requestId: (e as APIError).headers!.get("x-request-id")!, ok: false, charge: "0.000000" });
        }
      }
      return { sent, start, periodicStart, startedAt };
    };

    const run = async (count: number) => {
      const clients = Array.from({ length: count }, () => wsClient(server, adminToken));
      const { subscribers, dispose, listeners } = await subscribeAll(clients, ids);
      const { sent, start, periodicStart, startedAt } = await sendHundred();
      const ok = sent.filter((s) => s.ok);
      const failed = sent.filter((s) => !s.ok);
      // Every subscriber got every event of its kind.
      await until(() =>
        subscribers.every((s) =>
          s.name === "keySpend" || s.name === "projectSpend"
            ? s.received.length === 100
            : s.name === "receiptCreated"
              ? s.received.length === ok.length
              : s.name === "failedRequestCreated"
                ? s.received.length === failed.length
                : s.name === "liveSpend"
                  ? s.received.reduce((n, t) => n + t.requests, 0) === 100
                  : true,
        ),
      );
      const used = statements - start;
      const clock = { statements: periodic - periodicStart, ms: Date.now() - startedAt };
      if (process.env.SHOW_SQL)
        console.log(
          count,
          used,
          [...seen.entries()].sort((a, b) => b[1] - a[1]),
        );
      for (const s of subscribers) expect(s.errors, s.name).toEqual([]);
      dispose();
      await Promise.all(clients.map((c) => c.dispose()));
      return { used, clock, subscribers, sent, listeners };
    };

    const one = await run(1);
    const fifty = await run(50);
    // 50 clients of the same documents and tenancy: one execution (one listener) per document, as for 1.
    expect(fifty.listeners).toBe(one.listeners);
    // Per subscriber per event, even one statement would be 49 × 100 more.
    expect(fifty.used).toBeLessThanOrEqual(one.used + 5);
    expect(one.used).toBeLessThan(100 * 3);
    // The clock-driven ones stay within a couple of dozen per second of the run, whatever the subscribers
    // (one statement per subscriber per event would be 4,900 more).
    for (const r of [one, fifty]) expect(r.clock.statements).toBeLessThanOrEqual(Math.ceil(r.clock.ms / 1_000) * 25 + 20);

    // What they received is what the ledger holds.
    const receipts = await database.prisma.receipt.findMany({ where: { requestId: { in: fifty.sent.map((s) => s.requestId) } }, include: { key: true, route: true, channel: true } });
    const byRequest = new Map(receipts.map((r) => [r.requestId, r]));
    const feed = fifty.subscribers.find((s) => s.name === "receiptCreated")!.received;
    expect(feed).toHaveLength(80);
    for (const item of feed) {
      const r = byRequest.get(item.requestId)!;
      expect(item).toMatchObject({
        id: r.id,
        createdAt: r.createdAt.toISOString(),
        requestedModel: "fan-ok",
        status: r.status,
        latencyMs: r.latencyMs,
        charge: { amount: formatMoney(r.charge), currency: "USD" },
        key: { id: w.key.id, name: r.key.name },
        route: { model: r.route.model },
        channel: { name: "main" },
      });
    }
    const failures = fifty.subscribers.find((s) => s.name === "failedRequestCreated")!.received;
    expect(failures).toHaveLength(20);
    const storedFailures = await database.prisma.failedRequest.findMany({ where: { requestId: { in: failures.map((x) => x.requestId) } } });
    for (const item of failures) {
      const stored = storedFailures.find((x) => x.requestId === item.requestId)!;
      expect(item).toMatchObject({ id: stored.id, cause: stored.cause, httpStatus: stored.httpStatus, key: { name: w.key.name }, route: { model: "fan-bad" }, channel: { name: "broken" } });
    }
    // The coalesced spend adds up to the ledger's charges.
    const ledger = await database.prisma.ledgerEntry.aggregate({
      where: { organizationId: w.org.id, kind: "CHARGE", receipt: { requestId: { in: fifty.sent.map((s) => s.requestId) } } },
      _sum: { amount: true },
    });
    const live = fifty.subscribers.find((s) => s.name === "liveSpend")!.received;
    const liveTotal = live.flatMap((t) => t.spend).reduce((sum: bigint, s: Payload) => sum + BigInt(s.amount.amount.replace(".", "")), 0n);
    expect(liveTotal).toBe(-(ledger._sum.amount ?? 0n));
    const headerTotal = fifty.sent.reduce((sum, s) => sum + BigInt(s.charge.replace(".", "")), 0n);
    expect(liveTotal).toBe(headerTotal);
  });
});
