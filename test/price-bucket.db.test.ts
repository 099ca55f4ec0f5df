// A price belongs to one bucket and its currency (issue 14, point 6). setPrice 10 / 30 USD on an
// OFFICIAL channel, then upsertRoute moves the channel to ROUTED: the USD snapshot must price
// nothing in the CNY bucket. The channel is unpriced (503 price_unknown, as a new channel is) until
// a price is set in its new bucket; then every place that shows the charge says CNY: the response
// headers, a stream's charge comment, the receipt, GraphQL and the CSV exports.
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { APIError } from "openai";
import { useGatewayHarness, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { gqlOk, startTestServer, token } from "./support/graphql.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { setPrice, upsertRoute } from "../src/routing/index.ts";
import { formatMoney } from "../src/money/amounts.ts";
import type { RunningServer } from "../src/server.ts";

const h = useGatewayHarness();
let server: RunningServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server?.close();
});

const USAGE = { prompt_tokens: 100, completion_tokens: 200 };
// 100 × 10 + 200 × 30 micro-units per token at "10" / "30" per million; 100 × 1 + 200 × 2 at "1" / "2".
const USD_CHARGE = 7_000n;
const CNY_CHARGE = 500n;

function rawStream(secret: string, model: string) {
  const body = JSON.stringify({ model, messages: [{ role: "user", content: "stream it" }], stream: true, max_tokens: 500 });
  return new Promise<{ status: number; text: string; headers: http.IncomingHttpHeaders; trailers: http.IncomingHttpHeaders }>((resolve, reject) => {
    const req = http.request(`${h.gw.url}/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode!, text, headers: res.headers, trailers: res.trailers }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

function csvRows(text: string): Array<Record<string, string>> {
  // Test data has no quoted fields: a plain split is enough here (exports.db.test.ts checks the quoting).
  const [header, ...lines] = text
    .trim()
    .split("\r\n")
    .map((l) => l.split(","));
  return lines.map((l) => Object.fromEntries(header!.map((name, i) => [name, l[i]!])));
}

async function exportCsv(path: string, adminToken: string, keyId: string) {
  const response = await fetch(`${server.url}/exports/${path}?keyId=${encodeURIComponent(keyId)}`, { headers: { authorization: `Bearer ${adminToken}` } });
  expect(response.status).toBe(200);
  return csvRows(await response.text());
}

describe("a settlement change leaves the old bucket's price behind", () => {
  it("OFFICIAL 10/30 USD → ROUTED: unpriced (503, nothing charged) until setPrice; then CNY everywhere", async () => {
    const w = await world({ credit: "100", routed: "100" });
    const admin = await token("ORG_ADMIN", w.org.id);
    const model = uid("moved");
    const upstreamModel = uid("up");
    h.fake.set(upstreamModel, { type: "ok", usage: USAGE });
    const channel = { name: "primary", baseUrl: h.fake.url, upstreamModel };
    const r = await route(w.viewer, w.org.id, model, [{ ...channel, settlement: "OFFICIAL", price: ["10", "30"] }]);
    const channelId = r.channels[0]!.id;
    const client = h.gw.client(w.secret);
    const ask = () => client.chat.completions.create({ model, messages: [{ role: "user", content: "price me" }], max_tokens: 500 }).withResponse();

    // Before the change: CREDIT at the USD price.
    const first = await ask();
    expect(first.response.headers.get("x-tokengate-currency")).toBe("USD");
    expect(first.response.headers.get("x-tokengate-charge")).toBe(formatMoney(USD_CHARGE));

    await upsertRoute(w.viewer, { organizationId: w.org.id, model, channels: [{ ...channel, settlement: "ROUTED" }] });
    const creditBefore = (await walletBucket(w.org.id, "CREDIT")).balance;
    const routedBefore = (await walletBucket(w.org.id, "ROUTED")).balance;

    // The USD snapshot does not price the ROUTED channel: refused like any unpriced channel, nothing charged.
    const refused = await ask().then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(APIError);
    expect((refused as APIError).status).toBe(503);
    expect((refused as APIError).code).toBe("price_unknown");
    const failed = await h.database.prisma.failedRequest.findFirstOrThrow({ where: { keyId: w.key.id } });
    expect(failed).toMatchObject({ cause: "PRICE_UNKNOWN", charge: 0n, priceSnapshotId: null });
    expect((await walletBucket(w.org.id, "ROUTED")).balance).toBe(routedBefore);
    expect((await walletBucket(w.org.id, "CREDIT")).balance).toBe(creditBefore);
    expect(h.fake.requests.filter((q) => q.model === upstreamModel)).toHaveLength(1);

    const CHANNEL = `query($id: ID!) { route(id: $id) { channels { id settlement bucket currentPrice { id bucket inputPerMillion { amount currency } } } } }`;
    const unpriced = await gqlOk<{ route: { channels: Array<{ settlement: string; bucket: string; currentPrice: unknown }> } }>(admin, CHANNEL, { id: r.route.id });
    expect(unpriced.route.channels).toEqual([{ id: channelId, settlement: "ROUTED", bucket: "ROUTED", currentPrice: null }]);
    // /v1/models lists only priced models.
    expect((await client.models.list()).data.map((m) => m.id)).not.toContain(model);

    // A price set now is in the channel's new bucket and currency, and prices its requests.
    const snapshot = await setPrice(w.viewer, { channelId, inputPerMillion: "1", outputPerMillion: "2" });
    expect(snapshot).toMatchObject({ bucket: "ROUTED", currency: "CNY" });
    const priced = await gqlOk<{ route: { channels: Array<{ currentPrice: unknown }> } }>(admin, CHANNEL, { id: r.route.id });
    expect(priced.route.channels[0]!.currentPrice).toEqual({ id: snapshot.id, bucket: "ROUTED", inputPerMillion: { amount: "1.000000", currency: "CNY" } });

    const json = await ask();
    expect(json.response.headers.get("x-tokengate-bucket")).toBe("ROUTED");
    expect(json.response.headers.get("x-tokengate-currency")).toBe("CNY");
    expect(json.response.headers.get("x-tokengate-charge")).toBe(formatMoney(CNY_CHARGE));

    const stream = await rawStream(w.secret, model);
    expect(stream.status).toBe(200);
    expect(stream.headers["x-tokengate-currency"]).toBe("CNY");
    expect(stream.headers["x-tokengate-bucket"]).toBe("ROUTED");
    expect(stream.text).toContain(`: tokengate-charge=${formatMoney(CNY_CHARGE)} currency=CNY\n\ndata: [DONE]\n\n`);
    expect(stream.trailers["x-tokengate-charge"]).toBe(formatMoney(CNY_CHARGE));

    // Only the two CNY requests came off the ROUTED balance; CREDIT untouched since the change.
    expect((await walletBucket(w.org.id, "ROUTED")).balance).toBe(routedBefore - 2n * CNY_CHARGE);
    expect((await walletBucket(w.org.id, "CREDIT")).balance).toBe(creditBefore);

    const ids = [first, json].map((x) => x.response.headers.get("x-request-id")!).concat(String(stream.headers["x-request-id"]));
    const receipts = await h.database.prisma.receipt.findMany({ where: { requestId: { in: ids } } });
    const byRequest = (id: string) => receipts.find((x) => x.requestId === id)!;
    expect(
      [ids[0], ids[1], ids[2]].map((id) => {
        const x = byRequest(id!);
        return [x.bucket, x.currency, x.charge, x.priceSnapshotId === snapshot.id];
      }),
    ).toEqual([
      ["CREDIT", "USD", USD_CHARGE, false],
      ["ROUTED", "CNY", CNY_CHARGE, true],
      ["ROUTED", "CNY", CNY_CHARGE, true],
    ]);

    // GraphQL: the receipt's charge and its price snapshot agree on the currency.
    const gqlReceipts = await gqlOk<{
      receipts: {
        edges: Array<{
          node: { requestId: string; bucket: string; charge: { amount: string; currency: string }; priceSnapshot: { bucket: string; outputPerMillion: { amount: string; currency: string } } };
        }>;
      };
    }>(
      admin,
      `query($keyId: ID!) { receipts(filter: { keyId: $keyId }, first: 10) { edges { node { requestId bucket charge { amount currency } priceSnapshot { bucket outputPerMillion { amount currency } } } } } }`,
      { keyId: w.key.id },
    );
    const shown = Object.fromEntries(gqlReceipts.receipts.edges.map(({ node: n }) => [n.requestId, [n.bucket, n.charge, n.priceSnapshot.bucket, n.priceSnapshot.outputPerMillion]]));
    expect(shown).toEqual({
      [ids[0]!]: ["CREDIT", { amount: "0.007000", currency: "USD" }, "CREDIT", { amount: "30.000000", currency: "USD" }],
      [ids[1]!]: ["ROUTED", { amount: "0.000500", currency: "CNY" }, "ROUTED", { amount: "2.000000", currency: "CNY" }],
      [ids[2]!]: ["ROUTED", { amount: "0.000500", currency: "CNY" }, "ROUTED", { amount: "2.000000", currency: "CNY" }],
    });

    // CSV: receipts and their ledger charges say the same currency as GraphQL and the headers.
    const csv = Object.fromEntries((await exportCsv("receipts.csv", admin, w.key.id)).map((row) => [row.requestId, [row.bucket, row.charge, row.currency, row.priceSnapshotId === snapshot.id]]));
    expect(csv).toEqual({
      [ids[0]!]: ["CREDIT", "0.007000", "USD", false],
      [ids[1]!]: ["ROUTED", "0.000500", "CNY", true],
      [ids[2]!]: ["ROUTED", "0.000500", "CNY", true],
    });
    const ledger = (await exportCsv("ledger.csv", admin, w.key.id)).filter((row) => row.kind === "CHARGE");
    expect(Object.fromEntries(ledger.map((row) => [row.requestId, [row.bucket, row.amount, row.currency]]))).toEqual({
      [ids[0]!]: ["CREDIT", "-0.007000", "USD"],
      [ids[1]!]: ["ROUTED", "-0.000500", "CNY"],
      [ids[2]!]: ["ROUTED", "-0.000500", "CNY"],
    });
  });
});
