// 100 concurrent requests against one cap (key daily, project daily, route daily, run total):
// the sum of charges never exceeds the cap, every refusal is 402 budget_exceeded recorded as a
// FailedRequest naming the scope, and counters, receipts and ledger agree afterwards.
import { describe, expect, it } from "vitest";
import { APIError } from "openai";

import { leasesReturned, useGatewayHarness, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { scopeSpend, walletBucket } from "../src/money/ledger.ts";
import { startRun } from "../src/runs/index.ts";
import type { CapScope } from "../src/generated/prisma/enums.ts";

const h = useGatewayHarness();

const CAP = "0.050000";
const CAP_MICROS = 50_000n;
const CONCURRENCY = 100;

// 100 micros per input token, 1,000 per output token. Each request reserves ~7,600 micros
// (prompt bound + max_tokens 5) and costs 3,700 (7 prompt + 3 completion tokens as the fake reports).
const PRICES: [string, string] = ["100", "1000"];

async function hammer(scope: CapScope) {
  const w = await world({
    credit: "1000",
    key: scope === "KEY_DAILY" ? { dailyCap: CAP } : {},
    project: scope === "PROJECT_DAILY" ? { dailyCap: CAP } : {},
  });
  const model = uid("capped");
  const upstreamModel = uid("up");
  const r = await route(w.viewer, w.org.id, model, [{ name: "p", baseUrl: h.fake.url, upstreamModel, price: PRICES }], scope === "ROUTE_DAILY" ? { dailyCap: CAP } : {});
  h.fake.set(upstreamModel, { type: "ok", text: " a b c" });
  const run = scope === "RUN_TOTAL" ? await startRun(w.viewer, { keyId: w.key.id, mode: "DEEP", cap: CAP }) : null;
  const client = h.gw.client(w.secret, run ? { headers: { "x-run-id": run.id } } : {});

  const results = await Promise.allSettled(
    Array.from({ length: CONCURRENCY }, () => client.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 }).withResponse()),
  );
  const ok = results.filter((r) => r.status === "fulfilled");
  const refused = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
  // A run's first refusal on its cap exhausts it (issue 17): requests planned after that are refused
  // as an ended run (402 run_cancelled, "exhausted"); every other refusal is the cap's own.
  const exhaustedRun = (e: APIError) => scope === "RUN_TOTAL" && e.code === "run_cancelled" && /exhausted/.test(e.message);
  for (const r of refused) {
    expect(r.reason).toBeInstanceOf(APIError);
    expect((r.reason as APIError).status).toBe(402);
    if (!exhaustedRun(r.reason as APIError)) expect((r.reason as APIError).code).toBe("budget_exceeded");
  }
  expect(refused.some((r) => (r.reason as APIError).code === "budget_exceeded")).toBe(true);
  expect(ok.length + refused.length).toBe(CONCURRENCY);
  expect(ok.length).toBeGreaterThan(0);
  expect(refused.length).toBeGreaterThan(0);

  const receipts = await h.database.prisma.receipt.findMany({ where: { keyId: w.key.id }, include: { ledgerEntry: true } });
  expect(receipts).toHaveLength(ok.length);
  const spent = receipts.reduce((sum, r) => sum + r.charge, 0n);
  expect(spent).toBeLessThanOrEqual(CAP_MICROS);
  expect(spent).toBeGreaterThan(0n);
  for (const r of receipts) expect(r.ledgerEntry!.amount).toBe(-r.charge);
  for (const r of ok) expect(r.value.response.headers.get("x-tokengate-charge")).toMatch(/^0\.00\d{4}$/);

  const failed = await h.database.prisma.failedRequest.findMany({ where: { keyId: w.key.id } });
  expect(failed).toHaveLength(refused.length);
  for (const f of failed) {
    if (f.cause === "RUN_CANCELLED" && scope === "RUN_TOTAL") expect(f).toMatchObject({ capScope: null, httpStatus: 402, charge: 0n });
    else expect(f).toMatchObject({ cause: "BUDGET_EXCEEDED", capScope: scope, httpStatus: 402, charge: 0n });
  }
  if (run) expect((await h.database.prisma.run.findUniqueOrThrow({ where: { id: run.id } })).status).toBe("EXHAUSTED");
  const refusedIds = new Set(refused.map((r) => (r.reason as APIError).requestID));
  expect(new Set(failed.map((f) => f.requestId))).toEqual(refusedIds);

  const scopeId = { KEY_DAILY: w.key.id, PROJECT_DAILY: w.project.id, ROUTE_DAILY: r.route.id, RUN_TOTAL: run?.id ?? "" }[scope as "KEY_DAILY"];
  const counter = await scopeSpend(scope, scopeId, "CREDIT");
  expect(counter.spent).toBe(spent);
  // Whatever is still held (on leases: this instance's unspent leased headroom) counts against the cap.
  expect(counter.spent + counter.held).toBeLessThanOrEqual(CAP_MICROS);
  expect(await h.database.prisma.hold.count({ where: { keyId: w.key.id, status: "ACTIVE" } })).toBe(0);
  expect((await walletBucket(w.org.id, "CREDIT")).balance).toBe(1_000_000_000n - spent);
  // Once the gateway is idle nothing is held (on leases: once its leases went back).
  await leasesReturned(h);
  expect(await scopeSpend(scope, scopeId, "CREDIT")).toEqual({ spent, held: 0n });
  const bucket = await walletBucket(w.org.id, "CREDIT");
  expect(bucket.balance).toBe(1_000_000_000n - spent);
  expect(bucket.held).toBe(0n);
  admitted += ok.length;
  // No group-committed batch had to fall back to one-by-one.
  const stats = h.gw.gateway.stats();
  expect(stats.settle.fallbacks, stats.settle.lastError ?? "").toBe(0);
}

let admitted = 0;

describe(`${CONCURRENCY} concurrent requests never spend more than a cap`, () => {
  it("key daily cap", () => hammer("KEY_DAILY"));
  it("project daily cap", () => hammer("PROJECT_DAILY"));
  it("route daily cap", () => hammer("ROUTE_DAILY"));
  it("run cap", () => hammer("RUN_TOTAL"));
  it("the money path batched its database work", () => {
    const stats = h.gw.gateway.stats();
    expect(admitted).toBeGreaterThan(0);
    // Admission against leases (no reservation statements); receipts and refusals were written
    // many per statement by the batched writer. (Near a cap every refusal still asks for a grant:
    // about one grant statement per refused request here.)
    expect(stats.leases.grants).toBeGreaterThan(0);
    expect(stats.settle.batches).toBeGreaterThan(0);
    expect(stats.settle.batchedItems).toBeGreaterThan(stats.settle.batches);
  });
});
