// keySpend through the real passthrough: an event for every settled and every failed request of
// the key, carrying the charge of the response header and of the receipt / failed request.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { APIError } from "openai";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import { startGateway, type TestGateway } from "./support/gateway.ts";
import * as f from "./support/fixtures.ts";
import { startTestServer, token, wsClient } from "./support/graphql.ts";
import { formatMoney } from "../src/money/amounts.ts";
import { HealthTracker } from "../src/health/index.ts";
import { loadConfig } from "../src/config.ts";
import { events } from "./support/services.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let fake: FakeUpstream;
let gw: TestGateway;
let server: RunningServer;
beforeAll(async () => {
  database = await createTestDatabase();
  fake = await startFakeUpstream();
  gw = await startGateway();
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
  await gw.close();
  await fake.close();
  await database.dispose();
});

describe("keySpend from the gateway", () => {
  it("arrives for every settled and failed request with the charge of header and record", async () => {
    const w = await f.world({ credit: "5", key: { failedChargePolicy: "PROMPT_TOKENS", retryCeiling: 0, perRequestMaxCharge: "0.5" } });
    await f.route(w.viewer, w.org.id, "ok-model", [{ name: "p", baseUrl: fake.url, upstreamModel: "ok-up", price: ["2.5", "10"] }]);
    await f.route(w.viewer, w.org.id, "bad-model", [{ name: "p", baseUrl: fake.url, upstreamModel: "bad-up", price: ["2.5", "10"] }]);
    fake.set("bad-up", { type: "status", status: 500 });
    const client = wsClient(server, await token("ORG_ADMIN", w.org.id));
    const events: Array<{ requestId: string; charge: { amount: string }; status: string; spendToday: { amount: string } }> = [];
    let connected = false;
    client.on("connected", () => (connected = true));
    const dispose = client.subscribe<{ keySpend: (typeof events)[number] }>(
      { query: `subscription($k: ID!) { keySpend(keyId: $k) { requestId charge { amount } status spendToday { amount } } }`, variables: { k: w.key.id } },
      { next: (v) => events.push(v.data!.keySpend), error: () => undefined, complete: () => undefined },
    );
    while (!connected) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 100));

    const openai = gw.client(w.secret);
    const sent: Array<{ requestId: string; charge: string; ok: boolean }> = [];
    for (const model of ["ok-model", "bad-model", "ok-model", "bad-model"]) {
      try {
        const { response } = await openai.chat.completions.create({ model, messages: [{ role: "user", content: `hello ${model}` }], max_tokens: 30 }).withResponse();
        sent.push({ requestId: response.headers.get("x-request-id")!, charge: response.headers.get("x-tokengate-charge")!, ok: true });
      } catch (e) {
        const error = e as APIError;
        expect(error.status).toBe(502);
        sent.push({ requestId: error.headers!.get("x-request-id")!, charge: error.headers!.get("x-tokengate-charge")!, ok: false });
      }
    }
    // A refusal before the upstream (per-request max charge) is a failed request too, at no charge.
    await expect(openai.chat.completions.create({ model: "ok-model", messages: [{ role: "user", content: "big" }], max_tokens: 60_000 })).rejects.toMatchObject({ status: 402 });

    const deadline = Date.now() + 5_000;
    while (events.length < 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(events).toHaveLength(5);
    for (const s of sent) {
      const event = events.find((e) => e.requestId === s.requestId)!;
      expect(event.status).toBe(s.ok ? "SETTLED" : "FAILED");
      expect(event.charge.amount).toBe(s.charge);
      const recorded = s.ok
        ? (await database.prisma.receipt.findUniqueOrThrow({ where: { requestId: s.requestId } })).charge
        : (await database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: s.requestId } })).charge;
      expect(formatMoney(recorded)).toBe(s.charge);
    }
    expect(sent.filter((s) => !s.ok).every((s) => s.charge !== "0.000000")).toBe(true); // prompt tokens were charged
    const refusal = events.find((e) => !sent.some((s) => s.requestId === e.requestId))!;
    expect(refusal).toMatchObject({ status: "FAILED", charge: { amount: "0.000000" } });
    // After the last charge, spendToday is what the counters (and the ledger) say.
    const ledger = await database.prisma.ledgerEntry.aggregate({ where: { organizationId: w.org.id, kind: "CHARGE" }, _sum: { amount: true } });
    const highest = events
      .map((e) => e.spendToday.amount)
      .sort((a, b) => Number(a) - Number(b))
      .at(-1);
    expect(highest).toBe(formatMoney(-(ledger._sum.amount ?? 0n)));
    // The ledger answers the same question by key and by model.
    const admin = await token("ORG_ADMIN", w.org.id);
    const { gqlOk } = await import("./support/graphql.ts");
    const byKey = await gqlOk(admin, `query($k: ID) { ledgerEntries(keyId: $k, kind: CHARGE) { totalCount } bad: ledgerEntries(model: "bad-model") { totalCount } }`, { k: w.key.id });
    expect(byKey.ledgerEntries.totalCount).toBe(4); // two receipts, two charged failures
    expect(byKey.bad.totalCount).toBe(2);
    dispose();
    await client.dispose();
  });
});

describe("route health in the gateway", () => {
  it("a channel that keeps failing goes DOWN and is skipped for its backup; when every channel is DOWN the best one is still tried", async () => {
    // Its own gateway, with a channel health whose DOWN channels rest 60 s (longer than the test).
    const gw = await startGateway({}, { routeCacheTtlMs: 0, services: { events, health: new HealthTracker({ ...loadConfig({}).health, cooldownMs: 60_000 }, events) } });
    const w = await f.world({ credit: "5", key: { retryCeiling: 1 } });
    const { channels } = await f.route(w.viewer, w.org.id, "flaky-model", [
      { name: "primary", baseUrl: fake.url, upstreamModel: "flaky-primary", price: ["1", "1"] },
      { name: "backup", baseUrl: fake.url, upstreamModel: "flaky-backup", price: ["1", "1"] },
    ]);
    fake.set("flaky-primary", { type: "status", status: 500 });
    const openai = gw.client(w.secret);
    const ask = () => openai.chat.completions.create({ model: "flaky-model", messages: [{ role: "user", content: "hi" }], max_tokens: 5 }).withResponse();
    for (let i = 0; i < 3; i++) expect((await ask()).response.headers.get("x-tokengate-channel")).toBe("backup");
    await new Promise((r) => setTimeout(r, 100)); // health writes are asynchronous
    expect((await database.prisma.channel.findUniqueOrThrow({ where: { id: channels[0]!.id } })).health).toBe("DOWN");
    const primaryCalls = fake.requests.filter((r) => r.model === "flaky-primary").length;
    // DOWN and cooling down: the primary is not called at all any more.
    expect((await ask()).response.headers.get("x-tokengate-attempts")).toBe("1");
    expect(fake.requests.filter((r) => r.model === "flaky-primary").length).toBe(primaryCalls);

    // Now the backup fails too until it is DOWN; then, with every channel DOWN, the primary (best) is tried anyway.
    fake.set("flaky-backup", { type: "status", status: 500 });
    for (let i = 0; i < 3; i++) await ask().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 100));
    expect((await database.prisma.channel.findUniqueOrThrow({ where: { id: channels[1]!.id } })).health).toBe("DOWN");
    fake.set("flaky-primary", { type: "ok" });
    const { response } = await ask();
    expect(response.status).toBe(200);
    expect(response.headers.get("x-tokengate-channel")).toBe("primary");
    await gw.close();
  });
});
