// Group commit: reserveMany and recordReceiptMany place / settle several holds in one statement,
// each exactly as its one-by-one counterpart would, in order (a later reservation sees the holds
// of the earlier ones), atomically.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomUUID } from "node:crypto";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { route, world } from "./support/fixtures.ts";
import { reserveMany, type ReserveInput } from "../src/money/holds.ts";
import { scopeSpend, walletBucket } from "../src/money/ledger.ts";
import { recordReceiptMany, type ReceiptInput } from "../src/money/writer.ts";
import { directSql } from "../src/db/index.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(() => database.dispose());

describe("group commit", () => {
  it("reserves in order within one statement: the cap admits exactly what fits, refusals name the scope", async () => {
    const w = await world({ credit: "10", key: { dailyCap: "0.000250" } });
    const bucket = await walletBucket(w.org.id, "CREDIT");
    const input = (amount: bigint): ReserveInput => ({ requestId: randomUUID(), bucketId: bucket.id, amount, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000 });
    const results = await reserveMany([input(100n), input(100n), input(100n), input(50n), input(1n)], directSql());
    expect(results.map((r) => (r.ok ? "ok" : r.refusal))).toEqual(["ok", "ok", "KEY_DAILY", "ok", "KEY_DAILY"]);
    expect(await scopeSpend("KEY_DAILY", w.key.id, "CREDIT")).toEqual({ spent: 0n, held: 250n });
    expect((await walletBucket(w.org.id, "CREDIT")).held).toBe(250n);
  });

  it("a failing item fails the whole batch and writes nothing", async () => {
    const w = await world();
    const bucket = await walletBucket(w.org.id, "CREDIT");
    const good: ReserveInput = { requestId: randomUUID(), bucketId: bucket.id, amount: 10n, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000 };
    await expect(reserveMany([good, { ...good, requestId: randomUUID(), bucketId: "no-such-bucket" }], directSql())).rejects.toThrow();
    expect((await walletBucket(w.org.id, "CREDIT")).held).toBe(0n);
  });

  it("writes several receipts and settles their holds in one statement, each with its ledger entry", async () => {
    const w = await world({ credit: "10" });
    const r = await route(w.viewer, w.org.id, `m-${randomUUID()}`, [{ name: "p", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: "u", price: ["1", "2"] }]);
    const snapshot = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: r.channels[0]!.id } });
    const bucket = await walletBucket(w.org.id, "CREDIT");
    const inputs: ReserveInput[] = [1, 2, 3].map(() => ({
      requestId: randomUUID(),
      bucketId: bucket.id,
      amount: 1_000n,
      keyId: w.key.id,
      projectId: w.project.id,
      routeId: r.route.id,
      ttlMs: 60_000,
    }));
    const holds = await reserveMany(inputs, directSql());
    const items = holds.map((h, i) => {
      if (!h.ok) throw new Error("refused");
      const record: ReceiptInput = {
        requestId: inputs[i]!.requestId,
        organizationId: w.org.id,
        keyId: w.key.id,
        projectId: w.project.id,
        runId: null,
        routeId: r.route.id,
        channelId: r.channels[0]!.id,
        requestedModel: "m",
        upstreamModel: "u",
        endpoint: "/v1/chat/completions",
        channelRole: "PRIMARY",
        fallback: false,
        attempts: 1,
        bucket: "CREDIT",
        currency: "USD",
        promptTokens: 10 * (i + 1),
        completionTokens: 5,
        priceSnapshotId: snapshot.id,
        charge: BigInt(100 * i), // the first is free: no ledger entry
        stream: false,
        latencyMs: 3,
        status: 200,
      };
      return { record, hold: { id: h.holdId, amount: 1_000n }, bucketId: bucket.id };
    });
    const written = await recordReceiptMany(items);
    expect(written).toHaveLength(3);
    for (const [i, item] of items.entries()) {
      const receipt = await database.prisma.receipt.findUniqueOrThrow({ where: { requestId: item.record.requestId }, include: { ledgerEntry: true } });
      expect(receipt.id).toBe(written[i]!.id);
      expect(receipt.charge).toBe(item.record.charge);
      expect(receipt.promptTokens).toBe(10 * (i + 1));
      expect(receipt.ledgerEntry?.amount ?? 0n).toBe(-item.record.charge);
      const hold = await database.prisma.hold.findUniqueOrThrow({ where: { id: item.hold.id } });
      expect(hold).toMatchObject({ status: "SETTLED", charged: item.record.charge });
    }
    const after = await walletBucket(w.org.id, "CREDIT");
    expect(after.held).toBe(0n);
    expect(after.balance).toBe(10_000_000n - 300n);
    // Replaying a batch (a hold already settled) fails as a whole and changes nothing.
    await expect(recordReceiptMany(items.map((it) => ({ ...it, record: { ...it.record, requestId: randomUUID() } })))).rejects.toThrow();
    expect((await walletBucket(w.org.id, "CREDIT")).balance).toBe(10_000_000n - 300n);
  });
});
