// Alert webhooks: a real HTTP receiver verifies the HMAC-SHA256 signature with the organization's
// secret and gets every budget alert (50 / 80 / 100 %); failures are retried with backoff and
// every attempt is visible in GraphQL; a hanging receiver is cut at the per-attempt time-out and
// never delays the request path.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { codes, gql, gqlOk, token } from "./support/graphql.ts";
import { reserve, settle } from "../src/money/holds.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { announceSpend } from "../src/spend/index.ts";
import { startAlertWebhooks, type WebhookDeliveryOptions } from "../src/webhooks/index.ts";
import { allowPrivateUpstreams, events } from "./support/services.ts";

interface Received {
  headers: http.IncomingHttpHeaders;
  body: string;
}

interface Receiver {
  url: string;
  received: Received[];
  /** Statuses to answer in order (then 200); "hang" never answers. */
  plan: Array<number | "hang">;
  close(): Promise<void>;
}

async function startReceiver(): Promise<Receiver> {
  const received: Received[] = [];
  const receiver = { received, plan: [] as Array<number | "hang"> } as Receiver;
  const server = http.createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (c: string) => (body += c));
    req.on("end", () => {
      received.push({ headers: req.headers, body });
      const next = receiver.plan.shift() ?? 200;
      if (next === "hang") return;
      res.writeHead(next, { "content-type": "text/plain" });
      res.end("ok");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  receiver.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/tokengate`;
  receiver.close = async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return receiver;
}

/** What a receiver does: recompute the HMAC of the exact body and compare in constant time. */
function verify(secret: string, r: Received): boolean {
  const expected = Buffer.from(`sha256=${createHmac("sha256", secret).update(r.body).digest("hex")}`);
  const given = Buffer.from(String(r.headers["x-tokengate-signature"] ?? ""));
  return given.length === expected.length && timingSafeEqual(given, expected);
}

let database: TestDatabase;
let receiver: Receiver;
let stop: (() => Promise<void>) | null = null;
beforeAll(async () => {
  database = await createTestDatabase();
  receiver = await startReceiver();
  // The receiver listens on loopback: as an operator who set TOKENGATE_ALLOW_PRIVATE_UPSTREAMS would.
  allowPrivateUpstreams(true);
});
afterEach(async () => {
  await stop?.();
  stop = null;
  receiver.received.length = 0;
  receiver.plan.length = 0;
});
afterAll(async () => {
  allowPrivateUpstreams(false);
  await receiver.close();
  await database.dispose();
});

const start = (options: Partial<WebhookDeliveryOptions> = {}) => {
  stop = startAlertWebhooks({ maxAttempts: 3, timeoutMs: 2_000, backoffMs: 50, events, ...options });
};

async function until(check: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One settled charge on the world's key, announced as the gateway does (alerts fire from here). */
async function spend(w: Awaited<ReturnType<typeof f.world>>, amount: bigint): Promise<void> {
  const bucketId = (await walletBucket(w.org.id, "CREDIT")).id;
  const requestId = randomUUID();
  const r = await reserve({ requestId, bucketId, amount, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000 });
  if (!r.ok) throw new Error(r.refusal);
  await settle(r.holdId, amount);
  await announceSpend(events, { organizationId: w.org.id, projectId: w.project.id, keyId: w.key.id, routeId: null, requestId, bucket: "CREDIT", charge: amount, status: "SETTLED" });
}

const SET = `mutation($input: SetAlertWebhookInput!) { setAlertWebhook(input: $input) { alertWebhook { id url } generatedSecret } }`;
const DELIVERIES = `query($o: ID) { alertWebhook(organizationId: $o) { url deliveries(first: 20) { totalCount edges { node { id deliveryId event status httpStatus attempt error durationMs createdAt } } } } }`;

type DeliveryNode = { deliveryId: string; event: string; status: string; httpStatus: number | null; attempt: number; error: string | null; durationMs: number };
async function deliveries(admin: string, orgId: string): Promise<DeliveryNode[]> {
  const data = await gqlOk<{ alertWebhook: { deliveries: { edges: Array<{ node: DeliveryNode }> } } }>(admin, DELIVERIES, { o: orgId });
  return data.alertWebhook.deliveries.edges.map((e) => e.node).reverse(); // oldest first
}

describe("setAlertWebhook", () => {
  it("an internal address (loopback, private, metadata) is for platform admins only, as for channels", async () => {
    allowPrivateUpstreams(false);
    try {
      const w = await f.world();
      const admin = await token("ORG_ADMIN", w.org.id);
      for (const url of [receiver.url, "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/hook", "http://[::1]:9/hook"]) {
        const r = await gql(admin, SET, { input: { url } });
        expect(codes(r), url).toEqual(["FORBIDDEN"]);
      }
      const platform = await token("PLATFORM_ADMIN");
      const r = await gqlOk(platform, SET, { input: { url: receiver.url, organizationId: w.org.id } });
      expect(r.setAlertWebhook.alertWebhook.url).toBe(receiver.url);
    } finally {
      allowPrivateUpstreams(true);
    }
  });

  it("validates the URL and the secret, is audited without the secret, and generates a secret (shown once) when none is given", async () => {
    const w = await f.world();
    const admin = await token("ORG_ADMIN", w.org.id);
    expect(codes(await gql(admin, SET, { input: { url: "ftp://example.com/hook" } }))).toEqual(["BAD_USER_INPUT"]);
    expect(codes(await gql(admin, SET, { input: { url: "not a url" } }))).toEqual(["BAD_USER_INPUT"]);
    expect(codes(await gql(admin, SET, { input: { url: receiver.url, secret: "short" } }))).toEqual(["BAD_USER_INPUT"]);
    const viewer = await token("PROJECT_VIEWER", w.org.id, w.project.id);
    expect(codes(await gql(viewer, SET, { input: { url: receiver.url, secret: "s".repeat(32) } }))).toEqual(["FORBIDDEN"]);
    expect(codes(await gql(viewer, DELIVERIES, { o: w.org.id }))).toEqual(["FORBIDDEN"]);
    const other = await f.world();
    // Another organization's id is unknown to this token (issue 8: NOT_FOUND, as for every tenancy check).
    expect(codes(await gql(await token("ORG_ADMIN", other.org.id), DELIVERIES, { o: w.org.id }))).toEqual(["NOT_FOUND"]);

    const generated = await gqlOk(admin, SET, { input: { url: receiver.url } });
    expect(generated.setAlertWebhook.generatedSecret).toMatch(/^whsec_[0-9A-Za-z]{43}$/);
    const secret = "given-secret-0123456789";
    const replaced = await gqlOk(admin, SET, { input: { url: receiver.url, secret } });
    expect(replaced.setAlertWebhook).toEqual({ alertWebhook: { id: generated.setAlertWebhook.alertWebhook.id, url: receiver.url }, generatedSecret: null });

    const stored = await database.prisma.alertWebhook.findUniqueOrThrow({ where: { organizationId: w.org.id } });
    expect(stored.secretCiphertext).not.toContain(secret);
    const audits = await database.prisma.auditEntry.findMany({ where: { targetId: stored.id, action: "setAlertWebhook" } });
    expect(audits).toHaveLength(2);
    const trail = JSON.stringify(audits);
    expect(trail).not.toContain(secret);
    expect(trail).not.toContain(generated.setAlertWebhook.generatedSecret);
  });
});

describe("alert delivery", () => {
  it("POSTs every crossed threshold (50 / 80 / 100 %) signed with the secret; each attempt is visible in GraphQL", async () => {
    const w = await f.world({ key: { dailyCap: "1" } });
    const admin = await token("ORG_ADMIN", w.org.id);
    const secret = "receiver-shared-secret-42";
    await gqlOk(admin, SET, { input: { url: receiver.url, secret } });
    start();

    await spend(w, 600_000n);
    await spend(w, 250_000n);
    await spend(w, 10_000n); // still past 80 %: no new alert
    await spend(w, 140_000n);
    await until(() => receiver.received.length === 3);
    await until(async () => (await deliveries(admin, w.org.id)).length === 3);

    for (const r of receiver.received) {
      expect(verify(secret, r)).toBe(true);
      expect(verify("another-secret-0000000", r)).toBe(false);
      expect(r.headers["content-type"]).toBe("application/json");
      expect(r.headers["x-tokengate-event"]).toBe("budgetAlert");
      expect(r.headers["x-tokengate-timestamp"]).toMatch(/^\d{10}$/);
    }
    const bodies = receiver.received.map((r) => JSON.parse(r.body)).sort((a, b) => a.data.threshold - b.data.threshold);
    expect(bodies.map((b) => [b.data.scope, b.data.scopeId, b.data.threshold, b.data.spent, b.data.cap, b.data.currency])).toEqual([
      ["KEY_DAILY", w.key.id, 50, "0.600000", "1.000000", "USD"],
      ["KEY_DAILY", w.key.id, 80, "0.850000", "1.000000", "USD"],
      ["KEY_DAILY", w.key.id, 100, "1.000000", "1.000000", "USD"],
    ]);
    for (const b of bodies) expect(b).toMatchObject({ event: "budgetAlert", data: { organizationId: w.org.id, projectId: w.project.id, bucket: "CREDIT" } });
    // Each names the alert as the history lists it.
    const stored = await database.prisma.budgetAlert.findMany({ where: { scopeId: w.key.id }, orderBy: { threshold: "asc" } });
    expect(bodies.map((b) => b.data.alertId)).toEqual(stored.map((a) => a.id));
    expect(new Set(receiver.received.map((r) => r.headers["x-tokengate-delivery"]))).toEqual(new Set(bodies.map((b) => b.id)));

    const attempts = await deliveries(admin, w.org.id);
    expect(attempts.map((d) => [d.event, d.status, d.httpStatus, d.attempt, d.error])).toEqual([
      ["budgetAlert", "SUCCEEDED", 200, 1, null],
      ["budgetAlert", "SUCCEEDED", 200, 1, null],
      ["budgetAlert", "SUCCEEDED", 200, 1, null],
    ]);
  });

  it("a low-balance alert is delivered too: its own event name, signed, with the balance and threshold in the bucket's currency", async () => {
    const w = await f.world({ credit: "0", routed: "3" });
    const admin = await token("ORG_ADMIN", w.org.id);
    const secret = "receiver-shared-secret-43";
    await gqlOk(admin, SET, { input: { url: receiver.url, secret } });
    start();
    // Set above the balance: raised at once.
    await gqlOk(admin, `mutation { setLowBalanceThreshold(input: { bucket: ROUTED, threshold: "10" }) { bucket } }`);
    await until(() => receiver.received.length === 1);
    const [r] = receiver.received;
    expect(verify(secret, r!)).toBe(true);
    expect(r!.headers["x-tokengate-event"]).toBe("lowBalanceAlert");
    const stored = await database.prisma.balanceAlert.findFirstOrThrow({ where: { organizationId: w.org.id } });
    expect(JSON.parse(r!.body)).toMatchObject({
      event: "lowBalanceAlert",
      data: { alertId: stored.id, organizationId: w.org.id, bucket: "ROUTED", threshold: "10.000000", balance: "3.000000", currency: "CNY", requestId: null },
    });
    await until(async () => (await deliveries(admin, w.org.id)).length === 1);
    expect((await deliveries(admin, w.org.id)).map((d) => [d.event, d.status])).toEqual([["lowBalanceAlert", "SUCCEEDED"]]);
  });

  it("retries with backoff: a receiver failing twice then succeeding sees 3 attempts of the same delivery, all recorded", async () => {
    const w = await f.world({ key: { dailyCap: "1" } });
    const admin = await token("ORG_ADMIN", w.org.id);
    const secret = "retry-secret-0123456789";
    await gqlOk(admin, SET, { input: { url: receiver.url, secret } });
    receiver.plan.push(500, 503);
    start({ backoffMs: 100 });

    await spend(w, 500_000n); // exactly 50 %: one alert
    await until(async () => (await deliveries(admin, w.org.id)).some((d) => d.status === "SUCCEEDED"));
    const attempts = await deliveries(admin, w.org.id);
    expect(attempts.map((d) => [d.status, d.httpStatus, d.attempt, d.error])).toEqual([
      ["RETRYING", 500, 1, "HTTP 500"],
      ["RETRYING", 503, 2, "HTTP 503"],
      ["SUCCEEDED", 200, 3, null],
    ]);
    expect(new Set(attempts.map((d) => d.deliveryId)).size).toBe(1);
    expect(receiver.received).toHaveLength(3);
    expect(new Set(receiver.received.map((r) => r.body)).size).toBe(1); // the same signed body each time
    expect(receiver.received.map((r) => r.headers["x-tokengate-attempt"])).toEqual(["1", "2", "3"]);
    for (const r of receiver.received) expect(verify(secret, r)).toBe(true);
    // Backoff: 100 ms, then 200 ms between attempts.
    const rows = await database.prisma.alertWebhookDelivery.findMany({ where: { organizationId: w.org.id }, orderBy: { attempt: "asc" } });
    expect(rows[1]!.createdAt.getTime() - rows[0]!.createdAt.getTime()).toBeGreaterThanOrEqual(100);
    expect(rows[2]!.createdAt.getTime() - rows[1]!.createdAt.getTime()).toBeGreaterThanOrEqual(200);
  });

  it("a hanging receiver is cut at the per-attempt time-out, attempts are bounded, and the request path never waits for it", async () => {
    const w = await f.world({ key: { dailyCap: "1" } });
    const admin = await token("ORG_ADMIN", w.org.id);
    await gqlOk(admin, SET, { input: { url: receiver.url, secret: "hang-secret-0123456789" } });
    receiver.plan.push("hang", "hang", "hang");
    start({ maxAttempts: 2, timeoutMs: 1_000, backoffMs: 50 });

    await spend(w, 500_000n);
    // The alert was announced without waiting for the receiver: its first attempt is still open.
    await until(() => receiver.received.length === 1);
    expect(await database.prisma.alertWebhookDelivery.count({ where: { organizationId: w.org.id } })).toBe(0);
    await until(async () => (await deliveries(admin, w.org.id)).some((d) => d.status === "FAILED"));
    await new Promise((r) => setTimeout(r, 400)); // nothing after the last attempt
    const attempts = await deliveries(admin, w.org.id);
    expect(attempts.map((d) => [d.status, d.httpStatus, d.attempt, d.error])).toEqual([
      ["RETRYING", null, 1, "timed out after 1000 ms"],
      ["FAILED", null, 2, "timed out after 1000 ms"],
    ]);
    for (const d of attempts) expect(d.durationMs).toBeGreaterThanOrEqual(990);
    for (const d of attempts) expect(d.durationMs).toBeLessThan(5_000);
    expect(receiver.received).toHaveLength(2);
  });

  it("a secret that cannot be decrypted (TOKENGATE_SECRET changed) fails the delivery visibly and never sends it unsigned", async () => {
    const w = await f.world({ key: { dailyCap: "1" } });
    const admin = await token("ORG_ADMIN", w.org.id);
    await gqlOk(admin, SET, { input: { url: receiver.url, secret: "lost-secret-0123456789" } });
    await database.prisma.alertWebhook.update({ where: { organizationId: w.org.id }, data: { secretCiphertext: "v1.AAAA.AAAA.AAAA" } });
    start();
    await spend(w, 500_000n);
    await until(async () => (await deliveries(admin, w.org.id)).length === 1);
    const [only] = await deliveries(admin, w.org.id);
    expect(only).toMatchObject({ status: "FAILED", attempt: 1, httpStatus: null });
    expect(only!.error).toMatch(/cannot be decrypted/);
    expect(receiver.received).toHaveLength(0);
  });

  it("an organization without a webhook gets no delivery", async () => {
    const w = await f.world({ key: { dailyCap: "1" } });
    start();
    await spend(w, 1_000_000n);
    await new Promise((r) => setTimeout(r, 300));
    expect(receiver.received).toHaveLength(0);
    expect(await database.prisma.alertWebhookDelivery.count({ where: { organizationId: w.org.id } })).toBe(0);
  });
});
