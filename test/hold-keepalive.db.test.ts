// A reservation lives as long as its request (issue 8 point 5): the gateway extends the holds of
// requests in flight, so a request outliving HOLD_TTL_MS with the sweeper running keeps its budget
// (nobody else can spend it meanwhile) and ends with its receipt and CHARGE entry; and a settlement
// that finds its hold expired anyway (a stalled process) still writes the record and the charge.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI, { APIError } from "openai";

import { useGatewayHarness, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { ledgerViolations } from "./support/invariants.ts";
import { expireHolds, reserve, settle, startHoldSweeper } from "../src/money/holds.ts";
import { scopeSpend, walletBucket } from "../src/money/ledger.ts";
import { recordReceipt, type ReceiptInput } from "../src/money/writer.ts";

const TTL_MS = 900;
// The Hold-row path's keep-alive and late settlement, on that path whatever the default (leases
// keep in-flight holds in memory and renew their leases instead: test/leases.pg.test.ts).
const h = useGatewayHarness({ HOLD_TTL_MS: String(TTL_MS), GATEWAY_ADMISSION: "holds" });

let stopSweeper: () => void = () => undefined;
const sweepErrors: unknown[] = [];
beforeAll(() => {
  stopSweeper = startHoldSweeper(50, (e) => sweepErrors.push(e));
});
afterAll(() => stopSweeper());

const client = (secret: string) => new OpenAI({ apiKey: secret, baseURL: h.gw.url, maxRetries: 2, timeout: 60_000 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const PRICES: [string, string] = ["100", "1000"];

describe("a request that outlives HOLD_TTL_MS", () => {
  it("keeps its hold while it streams: others cannot spend that budget, and it ends with receipt and ledger entry", async () => {
    // Room for one request's worst case (~7,600 micros) but not for two.
    const w = await world({ credit: "100", key: { dailyCap: "0.010000" } });
    const model = uid("slow");
    const fastModel = uid("fast");
    const [slowUp, fastUp] = [uid("slow-up"), uid("fast-up")];
    await route(w.viewer, w.org.id, model, [{ name: "slow", baseUrl: h.fake.url, upstreamModel: slowUp, price: PRICES }]);
    await route(w.viewer, w.org.id, fastModel, [{ name: "fast", baseUrl: h.fake.url, upstreamModel: fastUp, price: PRICES }]);
    // Four words, 700 ms apart: about 3 s, more than three TTLs.
    h.fake.set(slowUp, { type: "ok", text: " a b c d", delayMs: 700 });
    h.fake.set(fastUp, { type: "ok", text: " a b c" });

    const started = Date.now();
    const slow = (async () => {
      const stream = await client(w.secret).chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5, stream: true });
      let text = "";
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
      return text;
    })();

    // Well past the TTL, with the sweeper running every 50 ms, the slow request's hold still counts.
    await sleep(TTL_MS * 2);
    const error = await client(w.secret)
      .chat.completions.create({ model: fastModel, messages: [{ role: "user", content: "hi" }], max_tokens: 5 })
      .then(
        () => null,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(APIError);
    expect((error as APIError).status).toBe(402);
    expect((error as APIError).code).toBe("budget_exceeded");

    expect(await slow).toBe(" a b c d");
    expect(Date.now() - started).toBeGreaterThan(TTL_MS * 2);
    const receipts = await h.database.prisma.receipt.findMany({ where: { keyId: w.key.id }, include: { ledgerEntry: true } });
    expect(receipts).toHaveLength(1);
    const receipt = receipts[0]!;
    expect(receipt.charge).toBeGreaterThan(0n);
    expect(receipt.ledgerEntry!.amount).toBe(-receipt.charge);
    expect(receipt.ledgerEntry!.memo).toBeNull();
    const hold = await h.database.prisma.hold.findFirstOrThrow({ where: { requestId: receipt.requestId } });
    expect(hold.status).toBe("SETTLED");
    expect(hold.lateResolvedAt).toBeNull();
    expect(await scopeSpend("KEY_DAILY", w.key.id, "CREDIT")).toEqual({ spent: receipt.charge, held: 0n });
    const bucket = await walletBucket(w.org.id, "CREDIT");
    expect(bucket.balance).toBe(100_000_000n - receipt.charge);
    expect(bucket.held).toBe(0n);
    expect(await ledgerViolations(h.database)).toEqual([]);
    expect(sweepErrors).toEqual([]);
  });
});

describe("settling a hold that expired anyway (late settlement)", () => {
  async function setup(credit: string) {
    const w = await world({ credit });
    const r = await route(w.viewer, w.org.id, uid("late"), [{ name: "c", baseUrl: "http://127.0.0.1:9", upstreamModel: "m", price: PRICES }]);
    const bucket = await walletBucket(w.org.id, "CREDIT");
    const price = await h.database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: r.channels[0]!.id } });
    const now = new Date();
    // Short-lived holds (the sweeper of this file may expire them too) unless told otherwise.
    const reserveFor = (amount: bigint, ttlMs = 1_000) =>
      reserve({ requestId: randomUUID(), bucketId: bucket.id, amount, keyId: w.key.id, projectId: w.project.id, routeId: r.route.id, channelId: r.channels[0]!.id, now, ttlMs });
    const receiptInput = (requestId: string, charge: bigint): ReceiptInput => ({
      requestId,
      organizationId: w.org.id,
      keyId: w.key.id,
      projectId: w.project.id,
      runId: null,
      routeId: r.route.id,
      channelId: r.channels[0]!.id,
      requestedModel: "late",
      upstreamModel: "m",
      endpoint: "/v1/chat/completions",
      channelRole: "PRIMARY",
      fallback: false,
      attempts: 1,
      bucket: "CREDIT",
      currency: "USD",
      promptTokens: 10,
      completionTokens: 5,
      priceSnapshotId: price.id,
      charge,
      stream: false,
      latencyMs: 5,
      status: 200,
    });
    return { w, bucket, now, reserveFor, receiptInput, channelId: r.channels[0]!.id };
  }

  it("the receipt and its CHARGE entry are written, balance and counters are charged, the entry says it was late", async () => {
    const { w, bucket, now, reserveFor, receiptInput, channelId } = await setup("1");
    const held = await reserveFor(8_000n);
    if (!held.ok) throw new Error("reservation refused");
    await expireHolds(new Date(now.getTime() + 1_001));
    expect((await h.database.prisma.hold.findUniqueOrThrow({ where: { id: held.holdId } })).status).toBe("EXPIRED");
    expect((await walletBucket(w.org.id, "CREDIT")).held).toBe(0n);

    const requestId = randomUUID();
    const receipt = await recordReceipt(receiptInput(requestId, 5_000n), { id: held.holdId, amount: 8_000n });
    const stored = await h.database.prisma.receipt.findUniqueOrThrow({ where: { id: receipt.id }, include: { ledgerEntry: true } });
    expect(stored.charge).toBe(5_000n);
    expect(stored.ledgerEntry!.amount).toBe(-5_000n);
    expect(stored.ledgerEntry!.memo).toMatch(/^late settlement/);
    const after = await walletBucket(w.org.id, "CREDIT");
    expect(after.balance).toBe(1_000_000n - 5_000n);
    expect(after.held).toBe(0n);
    expect(await scopeSpend("KEY_DAILY", w.key.id, "CREDIT", now)).toEqual({ spent: 5_000n, held: 0n });
    expect(await scopeSpend("CHANNEL_DAILY", channelId, "CREDIT", now)).toEqual({ spent: 5_000n, held: 0n });
    const hold = await h.database.prisma.hold.findUniqueOrThrow({ where: { id: held.holdId } });
    expect(hold).toMatchObject({ status: "EXPIRED", charged: 5_000n });
    expect(hold.lateResolvedAt).not.toBeNull();
    expect(await ledgerViolations(h.database)).toEqual([]);
    // A hold is resolved late once: a second settlement is refused.
    await expect(settle(held.holdId, 1n)).rejects.toThrow(/TG_HOLD_NOT_ACTIVE/);
    expect(bucket.id).toBe(after.id);
  });

  it("when others took the freed budget meanwhile, it charges what is available and the record says what was charged", async () => {
    const { w, now, reserveFor, receiptInput } = await setup("0.010000");
    const first = await reserveFor(8_000n);
    if (!first.ok) throw new Error("reservation refused");
    await expireHolds(new Date(now.getTime() + 1_001));
    const second = await reserveFor(7_000n, 600_000);
    expect(second.ok).toBe(true);

    const receipt = await recordReceipt(receiptInput(randomUUID(), 5_000n), { id: first.holdId, amount: 8_000n });
    const stored = await h.database.prisma.receipt.findUniqueOrThrow({ where: { id: receipt.id }, include: { ledgerEntry: true } });
    expect(stored.charge).toBe(3_000n);
    expect(stored.ledgerEntry!.amount).toBe(-3_000n);
    expect(stored.ledgerEntry!.memo).toContain("2000 micro-units not charged");
    const after = await walletBucket(w.org.id, "CREDIT");
    expect(after.balance).toBe(10_000n - 3_000n);
    expect(after.balance - after.held).toBe(0n);
    expect(await ledgerViolations(h.database)).toEqual([]);
  });
});
