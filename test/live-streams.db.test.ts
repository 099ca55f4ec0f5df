// The coalesced streams of issue 15 (liveSpend, channelStats, walletBalances) over graphql-ws and
// SSE, their bounds (interval floor, list sizes, tenancy), slow consumers (coalesced, or cut off
// with close code 4500 / SLOW_CONSUMER), and fresh DataLoaders per event.
import { randomUUID } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Client } from "graphql-ws";
import OpenAI from "openai";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import * as f from "./support/fixtures.ts";
import { gqlOk, settledListeners, startTestServer, token, wsClient } from "./support/graphql.ts";
import type { SpendEvent } from "../src/events/index.ts";
import { events, listen, listenerCount, setLiveQueueLimit } from "./support/services.ts";
import { coalescedStream, liveQueueLimit } from "../src/events/streams.ts";
import { SpendWindow, type SpendTick } from "../src/events/live.ts";
import { formatMoney } from "../src/money/amounts.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let fake: FakeUpstream;
let server: RunningServer;
const clients: Client[] = [];
beforeAll(async () => {
  database = await createTestDatabase();
  fake = await startFakeUpstream();
  server = await startTestServer();
});
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.dispose()));
});
afterAll(async () => {
  await server.close();
  await fake.close();
  await database.dispose();
});

async function until(check: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

type Payload = Record<string, any>;

function collect(client: Client, query: string, variables: Record<string, unknown> = {}) {
  const received: Payload[] = [];
  const errors: Payload[] = [];
  const dispose = client.subscribe<Payload>(
    { query, variables },
    {
      next: (v) => (v.errors ? errors.push(...(v.errors as unknown as Payload[])) : received.push(v.data!)),
      error: (e) => errors.push(e as Payload),
      complete: () => undefined,
    },
  );
  return { received, errors, dispose };
}

async function ws(orgId: string, role: "ORG_ADMIN" | "ORG_VIEWER" = "ORG_ADMIN", onClose?: (code: number) => void): Promise<Client> {
  const client = wsClient(server, await token(role, orgId), onClose);
  clients.push(client);
  return client;
}

/** A spend event as src/spend publishes it (the transport under test is the same). */
function spend(w: { org: { id: string }; project: { id: string } }, keyId: string, charge: bigint, extra: Partial<SpendEvent> = {}): SpendEvent {
  return {
    organizationId: w.org.id,
    projectId: w.project.id,
    keyId,
    requestId: randomUUID(),
    bucket: "CREDIT",
    charge: charge.toString(),
    keySpendToday: charge.toString(),
    keyRemainingToday: null,
    projectSpendToday: charge.toString(),
    projectRemainingToday: null,
    status: "SETTLED",
    at: new Date().toISOString(),
    ...extra,
  };
}

const micros = (amount: string) => BigInt(amount.replace(".", ""));

async function sendRequests(secret: string, model: string, n: number): Promise<string[]> {
  const openai = new OpenAI({ apiKey: secret, baseURL: `${server.url}/v1`, maxRetries: 0, timeout: 60_000 });
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const { response } = await openai.chat.completions.create({ model, messages: [{ role: "user", content: `hi ${i}` }], max_tokens: 20 }).withResponse();
    ids.push(response.headers.get("x-request-id")!);
  }
  return ids;
}

describe("liveSpend", () => {
  it("over graphql-ws: the named keys' spend, coalesced, adding up to the receipts, with each window's standing", async () => {
    const w = await f.world({ credit: "50", key: { dailyCap: "10" } });
    const other = await f.apiKey(w.viewer, w.project.id, {});
    const model = `ls-${w.org.id.slice(-6)}`;
    await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "ls-up", price: ["2.5", "10"] }]);
    const client = await ws(w.org.id);
    const before = await settledListeners();
    const sub = collect(
      client,
      `subscription($k: [ID!]) { liveSpend(input: { keyIds: $k, intervalMs: 250 }) { since at requests settled failed promptTokens spend { bucket amount { amount currency } } keys { keyId requests spend { amount { amount } } } scopes { scope scopeId bucket spent { amount } held { amount } cap { amount } remaining { amount } } } }`,
      { k: [w.key.id] },
    );
    await until(() => listenerCount() > before);
    const mine = await sendRequests(w.secret, model, 6);
    await sendRequests(other.secret, model, 3); // another key: not in this subscription
    const receipts = await database.prisma.receipt.findMany({ where: { requestId: { in: mine } } });
    const total = receipts.reduce((s, r) => s + r.charge, 0n);
    await until(() => sub.received.reduce((n, t) => n + t.liveSpend.requests, 0) >= 6);
    await new Promise((r) => setTimeout(r, 600)); // a tick the other key's requests would have made
    const ticks = sub.received.map((t) => t.liveSpend);
    expect(sub.errors).toEqual([]);
    expect(ticks.reduce((n, t) => n + t.requests, 0)).toBe(6);
    expect(ticks.every((t) => t.keys.every((k: Payload) => k.keyId === w.key.id))).toBe(true);
    expect(ticks.flatMap((t) => t.spend).reduce((s: bigint, x: Payload) => s + micros(x.amount.amount), 0n)).toBe(total);
    // Ticks follow each other: each starts where the previous one ended.
    for (let i = 1; i < ticks.length; i++) expect(ticks[i].since).toBe(ticks[i - 1].at);
    // The key's window as the counters hold it now.
    const last = ticks.at(-1).scopes.find((s: Payload) => s.scope === "KEY_DAILY" && s.scopeId === w.key.id);
    const counter = await database.prisma.spendCounter.findFirstOrThrow({ where: { scope: "KEY_DAILY", scopeId: w.key.id, bucket: "CREDIT" } });
    expect(last.spent.amount).toBe(formatMoney(counter.spent));
    expect(last.cap.amount).toBe("10.000000");
    expect(micros(last.remaining.amount)).toBe(10_000_000n - counter.spent - micros(last.held.amount));
    sub.dispose();
  });

  it("over SSE: the organization's ticks stream with the token of the request", async () => {
    const w = await f.world();
    const adminToken = await token("ORG_ADMIN", w.org.id);
    const controller = new AbortController();
    const before = await settledListeners();
    const response = await fetch(`${server.url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream", authorization: `Bearer ${adminToken}` },
      body: JSON.stringify({ query: `subscription { liveSpend(input: { intervalMs: 250 }) { requests spend { bucket amount { amount } } } }` }),
      signal: controller.signal,
    });
    expect(response.headers.get("content-type")).toContain("text/event-stream");
    await until(() => listenerCount() > before);
    events.publish("spend", spend(w, w.key.id, 1_500n));
    events.publish("spend", spend(w, w.key.id, 2_500n));
    const reader = response.body!.getReader();
    let text = "";
    while (!text.includes("event: next")) text += new TextDecoder().decode((await reader.read()).value);
    while (!/data: .*\n\n/.test(text.slice(text.indexOf("event: next")))) text += new TextDecoder().decode((await reader.read()).value);
    const data = JSON.parse(/event: next\ndata: (.*)\n/.exec(text)![1]!);
    expect(data.data.liveSpend).toEqual({ requests: 2, spend: [{ bucket: "CREDIT", amount: { amount: "0.004000" } }] });
    controller.abort();
    await until(() => listenerCount() === before);
  });

  it("refuses an interval under 250 ms, too many ids, another organization's key, and shows nothing of another organization", async () => {
    const a = await f.world();
    const b = await f.world();
    const client = await ws(a.org.id);
    const fast = collect(client, `subscription { liveSpend(input: { intervalMs: 100 }) { requests } }`);
    const many = collect(client, `subscription($k: [ID!]) { liveSpend(input: { keyIds: $k }) { requests } }`, { k: Array.from({ length: 1_001 }, (_, i) => `k${i}`) });
    const foreign = collect(client, `subscription($k: [ID!]) { liveSpend(input: { keyIds: $k }) { requests } }`, { k: [b.key.id] });
    const foreignOrg = collect(client, `subscription($o: ID) { channelStats(organizationId: $o) { at } }`, { o: b.org.id });
    await until(() => fast.errors.length > 0 && many.errors.length > 0 && foreign.errors.length > 0 && foreignOrg.errors.length > 0);
    const code = (e: Payload[]) => (e[0]!.extensions ?? e[0]![0]?.extensions)?.code;
    expect(code(fast.errors)).toBe("BAD_USER_INPUT");
    expect(code(many.errors)).toBe("BAD_USER_INPUT");
    expect(code(foreign.errors)).toBe("NOT_FOUND");
    expect(code(foreignOrg.errors)).toBe("NOT_FOUND");

    const before = await settledListeners();
    const mine = collect(client, `subscription { liveSpend(input: { intervalMs: 250 }) { requests keys { keyId } } }`);
    await until(() => listenerCount() > before);
    events.publish("spend", spend(b, b.key.id, 10n));
    events.publish("spend", spend(a, a.key.id, 10n));
    await until(() => mine.received.length >= 1);
    await new Promise((r) => setTimeout(r, 500));
    expect(mine.received.flatMap((t) => t.liveSpend.keys.map((k: Payload) => k.keyId))).toEqual([a.key.id]);
    mine.dispose();
  });

  it("a consumer that stops taking ticks gets them merged: one tick with everything, nothing lost", async () => {
    const w = await f.world();
    const window = new SpendWindow(() => true);
    const stream = coalescedStream<SpendTick>({
      intervalMs: 250,
      start: (touch) =>
        listen("spend", (e) => {
          if (e.organizationId !== w.org.id) return;
          window.add(e);
          touch();
        }),
      take: () => window.take(),
    });
    const first = stream.next();
    events.publish("spend", spend(w, w.key.id, 7n));
    const tick = (await first).value as SpendTick;
    expect(tick.requests).toBe(1);
    // The consumer is busy: 50 requests over several intervals, and it asks for nothing.
    for (let i = 0; i < 50; i++) {
      events.publish("spend", spend(w, w.key.id, 1n));
      if (i % 10 === 0) await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, 600));
    const merged = (await stream.next()).value as SpendTick;
    expect(merged.requests).toBe(50);
    expect(merged.charge.get("CREDIT")).toBe(50n);
    expect(merged.since).toEqual(tick.at);
    await stream.return!();
  });
});

describe("slow consumers of per-event streams", () => {
  it("graphql-ws: a subscriber more than LIVE_QUEUE_LIMIT events behind is closed with 4500; an SSE stream is cut", async () => {
    const w = await f.world();
    const limit = liveQueueLimit();
    setLiveQueueLimit(5);
    try {
      let closed: number | null = null;
      const client = await ws(w.org.id, "ORG_ADMIN", (code) => (closed = code));
      const before = await settledListeners();
      const sub = collect(client, `subscription($k: ID!) { keySpend(keyId: $k) { requestId } }`, { k: w.key.id });
      await until(() => listenerCount() > before);
      // A burst of 50 in one turn of the event loop: no consumer takes them as fast.
      for (let i = 0; i < 50; i++) events.publish("spend", spend(w, w.key.id, 1n));
      await until(() => closed !== null);
      expect(closed).toBe(4500);
      expect(sub.received.length).toBeLessThanOrEqual(6);
      await until(() => listenerCount() === before);

      const adminToken = await token("ORG_ADMIN", w.org.id);
      const response = await fetch(`${server.url}/graphql`, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "text/event-stream", authorization: `Bearer ${adminToken}` },
        body: JSON.stringify({ query: `subscription($k: ID!) { keySpend(keyId: $k) { requestId } }`, variables: { k: w.key.id } }),
      });
      await until(() => listenerCount() > before);
      for (let i = 0; i < 50; i++) events.publish("spend", spend(w, w.key.id, 1n));
      // The stream ends (the connection is cut) instead of buffering; the listener is gone.
      const body = await response.text().catch(() => "cut");
      expect(body.split("event: next").length - 1).toBeLessThanOrEqual(6);
      await until(() => listenerCount() === before);
    } finally {
      setLiveQueueLimit(limit);
    }
  });
});

describe("channelStats and walletBalances", () => {
  it("channelStats: a first tick at once, then requests, success rate, p50 / p95 latency and state of each channel", async () => {
    const w = await f.world();
    const { route, channels } = await f.route(w.viewer, w.org.id, `cs-${w.org.id.slice(-6)}`, [
      { name: "a", baseUrl: fake.url, upstreamModel: "cs-a", price: ["1", "1"] },
      { name: "b", baseUrl: fake.url, upstreamModel: "cs-b", price: ["1", "1"] },
    ]);
    const client = await ws(w.org.id, "ORG_VIEWER");
    const sub = collect(
      client,
      `subscription($r: ID) { channelStats(routeId: $r, intervalMs: 250) { channels { routeId routeModel channelId channelName requests failed successRate p50LatencyMs p95LatencyMs state } } }`,
      { r: route.id },
    );
    await until(() => sub.received.length >= 1);
    expect(sub.received[0]!.channelStats.channels.map((c: Payload) => [c.channelName, c.requests, c.successRate, c.state])).toEqual([
      ["a", 0, null, "HEALTHY"],
      ["b", 0, null, "HEALTHY"],
    ]);
    const a = channels.find((c) => c.name === "a")!;
    for (let i = 1; i <= 20; i++) events.publish("spend", spend(w, w.key.id, 1n, { channelId: a.id, routeId: route.id, latencyMs: i * 10, status: i === 20 ? "FAILED" : "SETTLED" }));
    await until(() => sub.received.some((t) => t.channelStats.channels[0].requests === 20));
    const stats = sub.received.find((t) => t.channelStats.channels[0].requests === 20)!.channelStats.channels[0];
    // 19 successes with latencies 10…190 ms (failures carry no latency into the percentiles).
    expect(stats).toMatchObject({ channelName: "a", failed: 1, successRate: 0.95, p50LatencyMs: 100, p95LatencyMs: 190 });
    sub.dispose();
  });

  it("walletBalances: the balances at once, then after spend and after a top-up, read once for every subscriber", async () => {
    const w = await f.world({ credit: "5" });
    const model = `wb-${w.org.id.slice(-6)}`;
    await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "wb-up", price: ["2.5", "10"] }]);
    const client = await ws(w.org.id);
    const subs = [0, 1, 2].map(() => collect(client, `subscription { walletBalances(intervalMs: 250) { balances { bucket balance { amount currency } held { amount } available { amount } } } }`));
    await until(() => subs.every((s) => s.received.length >= 1));
    expect(subs[0]!.received[0]!.walletBalances.balances.find((b: Payload) => b.bucket === "CREDIT").balance).toEqual({ amount: "5.000000", currency: "USD" });
    await sendRequests(w.secret, model, 2);
    const platformToken = await token("PLATFORM_ADMIN");
    await gqlOk(platformToken, `mutation($o: ID) { topUp(input: { organizationId: $o, bucket: CREDIT, amount: "1", idempotencyKey: "${randomUUID()}" }) { id } }`, { o: w.org.id });
    const stored = await database.prisma.walletBucket.findFirstOrThrow({ where: { wallet: { organizationId: w.org.id }, bucket: "CREDIT" } });
    await until(() => subs.every((s) => s.received.some((t) => t.walletBalances.balances.find((b: Payload) => b.bucket === "CREDIT").balance.amount === formatMoney(stored.balance))));
    for (const s of subs) s.dispose();
  });
});

describe("identical subscriptions share one execution per tenancy", () => {
  it("same document, two organizations and two roles: each sees its own; a late joiner of walletBalances gets the balance at once, on no new execution", async () => {
    const a = await f.world({ credit: "7" });
    const b = await f.world({ credit: "9" });
    const doc = `subscription { walletBalances(intervalMs: 250) { balances { bucket balance { amount } } } }`;
    const credit = (t: Payload) => t.walletBalances.balances.find((x: Payload) => x.bucket === "CREDIT").balance.amount;
    const before = await settledListeners();
    const first = collect(await ws(a.org.id), doc);
    await until(() => first.received.length >= 1);
    const afterFirst = await settledListeners();
    expect(afterFirst).toBeGreaterThan(before);
    // The same document, same organization and role, on another socket: shared, answered at once.
    const joiner = collect(await ws(a.org.id), doc);
    await until(() => joiner.received.length >= 1, 2_000);
    expect(await settledListeners()).toBe(afterFirst);
    // Another organization and another role run their own.
    const other = collect(await ws(b.org.id), doc);
    const viewer = collect(await ws(a.org.id, "ORG_VIEWER"), doc);
    await until(() => other.received.length >= 1 && viewer.received.length >= 1);
    expect([credit(first.received[0]!), credit(joiner.received[0]!), credit(viewer.received[0]!), credit(other.received[0]!)]).toEqual(["7.000000", "7.000000", "7.000000", "9.000000"]);
    expect(await settledListeners()).toBeGreaterThan(afterFirst);
    for (const s of [first, joiner, other, viewer]) {
      expect(s.errors).toEqual([]);
      s.dispose();
    }
  });
});

describe("receipts live, from the event's payload", () => {
  it("liveFeed and receiptCreated show each receipt's token classes, upstream cost, status and latency as stored", async () => {
    const w = await f.world();
    const model = `tc-${w.org.id.slice(-6)}`;
    await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "tc-up", price: ["2.5", "10"] }]);
    fake.set("tc-up", { type: "ok", usage: { prompt_tokens: 1000, completion_tokens: 50 }, details: { cached_tokens: 900, cache_write_tokens: 40, reasoning_tokens: 20, cost: 0.00042 } });
    const client = await ws(w.org.id);
    const before = await settledListeners();
    const classes = "promptTokens completionTokens cachedPromptTokens cacheWriteTokens audioPromptTokens reasoningTokens audioCompletionTokens upstreamCost";
    const feed = collect(client, `subscription { liveFeed(intervalMs: 250) { items { kind requestId httpStatus latencyMs ${classes} } } }`);
    const created = collect(client, `subscription { receiptCreated { requestId status latencyMs ${classes} } }`);
    await until(() => listenerCount() >= before + 2);
    const [requestId] = await sendRequests(w.secret, model, 1);
    await until(() => created.received.length === 1 && feed.received.some((t) => t.liveFeed.items.length > 0));
    const stored = await database.prisma.receipt.findUniqueOrThrow({ where: { requestId } });
    const expected = {
      requestId,
      promptTokens: 1000,
      completionTokens: 50,
      cachedPromptTokens: 900,
      cacheWriteTokens: 40,
      audioPromptTokens: 0,
      reasoningTokens: 20,
      audioCompletionTokens: 0,
      upstreamCost: stored.upstreamCost,
      latencyMs: stored.latencyMs,
    };
    expect(stored).toMatchObject({ cachedPromptTokens: 900, cacheWriteTokens: 40, reasoningTokens: 20 });
    expect(stored.upstreamCost).not.toBeNull();
    expect(created.received[0]!.receiptCreated).toEqual({ ...expected, status: 200 });
    const item = feed.received.flatMap((t) => t.liveFeed.items).find((i: Payload) => i.requestId === requestId);
    expect(item).toEqual({ ...expected, kind: "RECEIPT", httpStatus: 200 });
    feed.dispose();
    created.dispose();
  });
});

describe("DataLoaders live one event, not one subscription", () => {
  it("receiptCreated's nested key spend is the spend after each receipt, not the first one's", async () => {
    const w = await f.world();
    const model = `dl-${w.org.id.slice(-6)}`;
    await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "dl-up", price: ["2.5", "10"] }]);
    const client = await ws(w.org.id);
    const before = await settledListeners();
    const sub = collect(client, `subscription { receiptCreated { requestId charge { amount } key { spendToday { amount } } } }`);
    await until(() => listenerCount() > before);
    for (let i = 0; i < 3; i++) {
      await sendRequests(w.secret, model, 1);
      await until(() => sub.received.length === i + 1);
    }
    const spends = sub.received.map((r) => r.receiptCreated.key.spendToday.amount);
    expect(new Set(spends).size).toBe(3);
    expect(micros(spends[2]!)).toBe(sub.received.reduce((s, r) => s + micros(r.receiptCreated.charge.amount), 0n));
    sub.dispose();
  });
});
