// Money rules of the reservation (issue 8 point 4): a cap set in one bucket caps the other bucket
// at ZERO until an admin sets that bucket's cap explicitly, so no key, project, route or run cap
// is escapable by switching bucket, also not through a fallback to a ROUTED backup channel.
import { describe, expect, it } from "vitest";
import OpenAI, { APIError } from "openai";

import { leasesReturned, useGatewayHarness, uid } from "./support/gateway.ts";
import { route, topUp, world } from "./support/fixtures.ts";
import { gqlOk, token } from "./support/graphql.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { setKeyCaps } from "../src/keys/index.ts";
import { setProjectBudget } from "../src/budgets/index.ts";
import { setRouteLimits } from "../src/routing/index.ts";
import { startRun } from "../src/runs/index.ts";
import type { CapScope } from "../src/generated/prisma/enums.ts";

const h = useGatewayHarness();

// The SDK may reuse a keep-alive socket the server just closed on this loaded machine
// (ECONNRESET before the request is sent): let it retry connection errors only.
const client = (secret: string, headers: Record<string, string> = {}) => new OpenAI({ apiKey: secret, baseURL: h.gw.url, maxRetries: 2, timeout: 60_000, defaultHeaders: headers });

// 100 micros per input token, 1,000 per output token: a request reserves a few thousand micros.
const PRICES: [string, string] = ["100", "1000"];

/** A route whose primary channel is OFFICIAL (CREDIT) and whose backup is ROUTED. */
async function creditThenRouted(w: Awaited<ReturnType<typeof world>>, primary: "ok" | "fails") {
  const model = uid("two-bucket");
  const official = uid("official");
  const routed = uid("routed");
  const r = await route(w.viewer, w.org.id, model, [
    { name: "official", baseUrl: h.fake.url, upstreamModel: official, settlement: "OFFICIAL", price: PRICES },
    { name: "routed", baseUrl: h.fake.url, upstreamModel: routed, settlement: "ROUTED", price: PRICES },
  ]);
  h.fake.set(official, primary === "ok" ? { type: "ok", text: " a b c" } : { type: "status", status: 503 });
  h.fake.set(routed, { type: "ok", text: " a b c" });
  return { model, official, routed, route: r.route };
}

async function refusal(promise: Promise<unknown>): Promise<APIError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(APIError);
  return error as APIError;
}

async function expectRefused(w: Awaited<ReturnType<typeof world>>, model: string, scope: CapScope, headers: Record<string, string> = {}) {
  const error = await refusal(client(w.secret, headers).chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 }));
  expect(error.status).toBe(402);
  expect(error.code).toBe("budget_exceeded");
  const failed = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: error.requestID! } });
  expect(failed).toMatchObject({ cause: "BUDGET_EXCEEDED", capScope: scope, httpStatus: 402, charge: 0n });
  return failed;
}

const routedUntouched = async (w: Awaited<ReturnType<typeof world>>, routedBalance: bigint) => {
  const routed = await walletBucket(w.org.id, "ROUTED");
  expect(routed.balance).toBe(routedBalance);
  expect(routed.held).toBe(0n);
  expect(await h.database.prisma.receipt.count({ where: { keyId: w.key.id, bucket: "ROUTED" } })).toBe(0);
  expect(await h.database.prisma.ledgerEntry.count({ where: { bucketId: routed.id, kind: "CHARGE" } })).toBe(0);
};

describe("a cap in one bucket caps the other bucket at zero", () => {
  it("key daily cap of 0.000001 on CREDIT: refused, and the ROUTED backup is never spent", async () => {
    const w = await world({ credit: "100", routed: "100", key: { dailyCap: "0.000001" } });
    const { model, routed } = await creditThenRouted(w, "ok");
    const before = h.fake.requests.length;
    await expectRefused(w, model, "KEY_DAILY");
    // A model served only by a ROUTED channel is refused too (it used to spend freely).
    const routedOnly = uid("routed-only");
    await route(w.viewer, w.org.id, routedOnly, [{ name: "routed", baseUrl: h.fake.url, upstreamModel: routed, settlement: "ROUTED", price: PRICES }]);
    const failed = await expectRefused(w, routedOnly, "KEY_DAILY");
    expect(failed.bucket).toBe("ROUTED");
    expect(h.fake.requests.slice(before).filter((r) => r.model === routed)).toHaveLength(0);
    await routedUntouched(w, 100_000_000n);
  });

  it("key daily cap on CREDIT, primary fails, fallback to ROUTED is refused naming KEY_DAILY", async () => {
    const w = await world({ credit: "100", routed: "100", key: { dailyCap: "1" } });
    const { model, official, routed } = await creditThenRouted(w, "fails");
    const before = h.fake.requests.length;
    const failed = await expectRefused(w, model, "KEY_DAILY");
    const sent = h.fake.requests.slice(before);
    expect(sent.filter((r) => r.model === official).length).toBeGreaterThan(0);
    expect(sent.filter((r) => r.model === routed)).toHaveLength(0);
    expect(failed.bucket).toBe("ROUTED");
    await routedUntouched(w, 100_000_000n);
    // The CREDIT attempt's hold was dropped (failed attempt, policy NEVER): nothing held once idle.
    await leasesReturned(h);
    expect((await walletBucket(w.org.id, "CREDIT")).held).toBe(0n);
  });

  it("GraphQL shows the effective caps: the other bucket is capped at 0 and has 0 remaining", async () => {
    const w = await world({ credit: "100", routed: "100", key: { dailyCap: "2" } });
    const admin = await token("PLATFORM_ADMIN");
    const query = `query($id: ID!) { apiKey(id: $id) {
      credit: remainingToday(bucket: CREDIT) { amount currency } routed: remainingToday(bucket: ROUTED) { amount currency }
      creditCap: dailyCap(bucket: CREDIT) { amount } routedCap: dailyCap(bucket: ROUTED) { amount }
      budgets { bucket cap { amount } remaining { amount } } } }`;
    const data = await gqlOk<{ apiKey: Record<string, any> }>(admin, query, { id: w.key.id });
    expect(data.apiKey.credit).toEqual({ amount: "2.000000", currency: "USD" });
    expect(data.apiKey.routed).toEqual({ amount: "0.000000", currency: "CNY" });
    expect(data.apiKey.creditCap).toEqual({ amount: "2.000000" });
    expect(data.apiKey.routedCap).toEqual({ amount: "0.000000" });
    expect(data.apiKey.budgets).toEqual([
      { bucket: "CREDIT", cap: { amount: "2.000000" }, remaining: { amount: "2.000000" } },
      { bucket: "ROUTED", cap: { amount: "0.000000" }, remaining: { amount: "0.000000" } },
    ]);
    // A key without any cap stays uncapped in both buckets.
    const free = await world({ credit: "1" });
    const open = await gqlOk<{ apiKey: Record<string, any> }>(admin, query, { id: free.key.id });
    expect(open.apiKey).toMatchObject({ credit: null, routed: null, creditCap: null, routedCap: null });
  });

  it("an explicit cap on the other bucket allows it: the ROUTED fallback is then spent, within that cap", async () => {
    const w = await world({ credit: "100", routed: "100", key: { dailyCap: "1" } });
    const { model } = await creditThenRouted(w, "fails");
    await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: "5", capBucket: "ROUTED" });
    const { data, response } = await client(w.secret)
      .chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 })
      .withResponse();
    expect(data.choices[0]!.message.content).toBe(" a b c");
    expect(response.headers.get("x-tokengate-bucket")).toBe("ROUTED");
    expect(response.headers.get("x-tokengate-fallback")).toBe("true");
    const receipt = await h.database.prisma.receipt.findFirstOrThrow({ where: { keyId: w.key.id }, include: { ledgerEntry: true } });
    expect(receipt.bucket).toBe("ROUTED");
    expect(receipt.charge).toBeGreaterThan(0n);
    expect(receipt.ledgerEntry!.amount).toBe(-receipt.charge);
    expect((await walletBucket(w.org.id, "ROUTED")).balance).toBe(100_000_000n - receipt.charge);
  });

  it("project daily and monthly caps on CREDIT cap ROUTED at zero", async () => {
    for (const cap of ["dailyCap", "monthlyCap"] as const) {
      const w = await world({ credit: "100", routed: "100" });
      await setProjectBudget(w.viewer, { projectId: w.project.id, [cap]: "50" });
      const { model } = await creditThenRouted(w, "fails");
      await expectRefused(w, model, cap === "dailyCap" ? "PROJECT_DAILY" : "PROJECT_MONTHLY");
      await routedUntouched(w, 100_000_000n);
    }
  });

  it("a route's daily cap on CREDIT caps its ROUTED backup at zero", async () => {
    const w = await world({ credit: "100", routed: "100" });
    const { model, route: r } = await creditThenRouted(w, "fails");
    await setRouteLimits(w.viewer, { routeId: r.id, dailyCap: "50" });
    await expectRefused(w, model, "ROUTE_DAILY");
    await routedUntouched(w, 100_000_000n);
  });

  it("a run's cap on CREDIT caps the run's ROUTED spend at zero", async () => {
    const w = await world({ credit: "100", routed: "100" });
    const { model } = await creditThenRouted(w, "fails");
    const run = await startRun(w.viewer, { keyId: w.key.id, mode: "QUICK", cap: "50" });
    await expectRefused(w, model, "RUN_TOTAL", { "x-run-id": run.id });
    await routedUntouched(w, 100_000_000n);
    // Without the run header the same request may spend ROUTED (no other cap applies).
    await topUp(w.org.id, "ROUTED", "1");
    const ok = await client(w.secret)
      .chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 })
      .withResponse();
    expect(ok.response.headers.get("x-tokengate-bucket")).toBe("ROUTED");
  });
});
