// Hold rows (src/money/holds.ts: no longer a gateway path since issue 16, still the SQL
// reservation the accounting tests place and settle, and what an earlier release may have left for
// the sweeper): a settlement that finds its hold expired anyway (a stalled process) still writes
// the record and the charge, and charges no more than the bucket still has.
// (The keep-alive of a long request is its leases' renewal now: test/leases.pg.test.ts.)
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { ledgerViolations } from "./support/invariants.ts";
import { expireHolds, reserve, settle } from "../src/money/holds.ts";
import { scopeSpend, walletBucket } from "../src/money/ledger.ts";
import { recordReceipt, type ReceiptInput } from "../src/money/writer.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database.dispose();
});

const PRICES: [string, string] = ["100", "1000"];

describe("settling a hold that expired anyway (late settlement)", () => {
  async function setup(credit: string) {
    const w = await world({ credit });
    const r = await route(w.viewer, w.org.id, uid("late"), [{ name: "c", baseUrl: "http://127.0.0.1:9", upstreamModel: "m", price: PRICES }]);
    const bucket = await walletBucket(w.org.id, "CREDIT");
    const price = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: r.channels[0]!.id } });
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
    expect((await database.prisma.hold.findUniqueOrThrow({ where: { id: held.holdId } })).status).toBe("EXPIRED");
    expect((await walletBucket(w.org.id, "CREDIT")).held).toBe(0n);

    const requestId = randomUUID();
    const receipt = await recordReceipt(receiptInput(requestId, 5_000n), { id: held.holdId, amount: 8_000n });
    const stored = await database.prisma.receipt.findUniqueOrThrow({ where: { id: receipt.id }, include: { ledgerEntry: true } });
    expect(stored.charge).toBe(5_000n);
    expect(stored.ledgerEntry!.amount).toBe(-5_000n);
    expect(stored.ledgerEntry!.memo).toMatch(/^late settlement/);
    const after = await walletBucket(w.org.id, "CREDIT");
    expect(after.balance).toBe(1_000_000n - 5_000n);
    expect(after.held).toBe(0n);
    expect(await scopeSpend("KEY_DAILY", w.key.id, "CREDIT", now)).toEqual({ spent: 5_000n, held: 0n });
    expect(await scopeSpend("CHANNEL_DAILY", channelId, "CREDIT", now)).toEqual({ spent: 5_000n, held: 0n });
    const hold = await database.prisma.hold.findUniqueOrThrow({ where: { id: held.holdId } });
    expect(hold).toMatchObject({ status: "EXPIRED", charged: 5_000n });
    expect(hold.lateResolvedAt).not.toBeNull();
    expect(await ledgerViolations(database)).toEqual([]);
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
    const stored = await database.prisma.receipt.findUniqueOrThrow({ where: { id: receipt.id }, include: { ledgerEntry: true } });
    expect(stored.charge).toBe(3_000n);
    expect(stored.ledgerEntry!.amount).toBe(-3_000n);
    expect(stored.ledgerEntry!.memo).toContain("2000 micro-units not charged");
    const after = await walletBucket(w.org.id, "CREDIT");
    expect(after.balance).toBe(10_000n - 3_000n);
    expect(after.balance - after.held).toBe(0n);
    expect(await ledgerViolations(database)).toEqual([]);
  });
});
