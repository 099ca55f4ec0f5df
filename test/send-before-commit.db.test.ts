// SEND_BEFORE_COMMIT_MS (issue 9 point 4, the opt-in trade-off): the response goes out first and
// its receipt is committed within the window, batched. Charges still agree to the micro-unit in the
// header, the receipt and the ledger; the spend event follows the commit; caps hold through the
// leases while receipts are pending; closing the gateway writes every pending receipt first.
import { describe, expect, it } from "vitest";
import type { SpendEvent } from "../src/events/index.ts";
import { events } from "./support/services.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { formatMoney, parseMoney, requestCharge } from "../src/money/amounts.ts";
import { createTestDatabase } from "./support/db.ts";
import { startFakeUpstream } from "./support/fake-upstream.ts";
import { startGateway, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";

const WINDOW_MS = "150";

async function waitFor<T>(read: () => Promise<T | null>, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (value !== null) return value;
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("send before commit", () => {
  it("answers first, then commits receipt and ledger entry with the charge of the header; the spend event follows the commit", async () => {
    const database = await createTestDatabase();
    const fake = await startFakeUpstream();
    const gw = await startGateway({ SEND_BEFORE_COMMIT_MS: WINDOW_MS });
    const spends = events.subscribe("spend");
    try {
      const w = await world({ credit: "10" });
      const model = uid("m");
      await route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: fake.url, upstreamModel: uid("up"), price: ["2.5", "10"] }]);
      const before = await walletBucket(w.org.id, "CREDIT");
      const client = gw.client(w.secret);

      // The event for this request, and whether its receipt was already committed when it came.
      const seen = (async () => {
        for await (const event of spends as AsyncIterable<SpendEvent>) {
          if (event.keyId !== w.key.id) continue;
          const receipt = await database.prisma.receipt.findUnique({ where: { requestId: event.requestId } });
          return { event, committed: receipt !== null };
        }
        return null;
      })();

      const { data, response } = await client.chat.completions.create({ model, messages: [{ role: "user", content: "hello" }], max_tokens: 20 }).withResponse();
      const expected = requestCharge({ inputPerMillion: parseMoney("2.5", "in"), outputPerMillion: parseMoney("10", "out") }, data.usage!.prompt_tokens, data.usage!.completion_tokens);
      expect(response.headers.get("x-tokengate-charge")).toBe(formatMoney(expected));
      const requestId = response.headers.get("x-request-id")!;

      const receipt = await waitFor(() => database.prisma.receipt.findUnique({ where: { requestId }, include: { ledgerEntry: true } }));
      expect(receipt.charge).toBe(expected);
      expect(receipt.ledgerEntry!.amount).toBe(-expected);
      expect(receipt.ledgerEntry!.balanceAfter).toBe(before.balance - expected);
      expect((await walletBucket(w.org.id, "CREDIT")).balance).toBe(before.balance - expected);

      const { event, committed } = (await seen)!;
      expect(event.requestId).toBe(requestId);
      expect(event.charge).toBe(expected.toString());
      expect(committed).toBe(true);
    } finally {
      await spends.return?.();
      await gw.close();
      await fake.close();
      await database.dispose();
    }
  });

  it("closing the gateway writes every receipt already answered; a key cap still binds while receipts are pending", async () => {
    const database = await createTestDatabase();
    const fake = await startFakeUpstream();
    const gw = await startGateway({ SEND_BEFORE_COMMIT_MS: "1000" });
    let closed = false;
    try {
      // A daily cap that fits a handful of worst cases (prompt + 20 tokens at these prices).
      const w = await world({ credit: "10", key: { dailyCap: "0.002" } });
      const model = uid("m");
      await route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: fake.url, upstreamModel: uid("up"), price: ["2.5", "10"] }]);
      const client = gw.client(w.secret);
      const results = await Promise.allSettled(
        Array.from({ length: 40 }, () => client.chat.completions.create({ model, messages: [{ role: "user", content: "hello" }], max_tokens: 20 }).withResponse()),
      );
      const answered = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
      expect(answered.length).toBeGreaterThan(0);
      expect(answered.length).toBeLessThan(40); // the cap refused the rest, though no receipt had committed yet
      const charged = answered.reduce((sum, r) => sum + parseMoney(r.response.headers.get("x-tokengate-charge")!, "charge"), 0n);

      await gw.close();
      closed = true;
      const receipts = await database.prisma.receipt.findMany({ where: { keyId: w.key.id } });
      expect(receipts.length).toBe(answered.length);
      expect(receipts.reduce((sum, r) => sum + r.charge, 0n)).toBe(charged);
      expect(charged).toBeLessThanOrEqual(2_000n);
      const [counter] = await database.sql.query<{ spent: string; held: string }>(`SELECT spent::text, held::text FROM "SpendCounter" WHERE scope = 'KEY_DAILY' AND "scopeId" = $1`, [w.key.id]);
      expect(BigInt(counter!.spent)).toBe(charged);
      expect(counter!.held).toBe("0");
    } finally {
      if (!closed) await gw.close();
      await fake.close();
      await database.dispose();
    }
  });
});
