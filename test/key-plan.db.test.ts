// Issue 17, point 1: a key's plan per model. A key with a primary channel (OFFICIAL → CREDIT) and a
// backup (ROUTED → ROUTED), caps on key, project, route and channel in both buckets and some spend
// in each (through the real passthrough): the plan shows the order, the bucket on each channel,
// and every limit per bucket with spent / held / remaining to the micro-unit; spend per bucket,
// ledger entries and last use; tenancy (another organization's admin: not found; a project
// viewer: its key without the organization's parts).
import { describe, expect, it } from "vitest";
import { useGatewayHarness, leasesReturned, uid } from "./support/gateway.ts";
import { apiKey as newKey, route, world, topUp } from "./support/fixtures.ts";
import { codes, gql, gqlOk, token } from "./support/graphql.ts";
import { reserve, release } from "../src/money/holds.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { setKeyCaps } from "../src/keys/index.ts";
import { setProjectBudget } from "../src/budgets/index.ts";
import { setChannelLimits, setRouteLimits } from "../src/routing/index.ts";
import { formatMoney } from "../src/money/amounts.ts";

const h = useGatewayHarness();

const PLAN = `query($id: ID!, $model: String) { apiKey(id: $id) {
  lastUsedAt
  spend { bucket charged { amount currency } requests failures }
  plan(model: $model) {
    model callable reasons routeId primaryBucket fallbackSwitchesBucket retryCeiling maxAttempts failedChargePolicy defaultMaxTokens
    rateLimits { rpmLimit tpmLimit maxConcurrent }
    channels { position role channelId name settlement bucket upstreamModel health tried notTriedBecause
      price { snapshotId bucket inputPerMillion { amount currency } outputPerMillion { amount currency } } }
    limits { kind scopeId bucket windowStart limit { amount currency } spent { amount currency } held { amount currency } remaining { amount currency } }
  }
} }`;

type Limit = {
  kind: string;
  scopeId: string | null;
  bucket: string;
  windowStart: string | null;
  limit: { amount: string; currency: string } | null;
  spent: { amount: string };
  held: { amount: string };
  remaining: { amount: string } | null;
};

const m = (micros: bigint) => formatMoney(micros);
/** The limits as [kind, scopeId, bucket, limit, spent, held, remaining] rows. */
const rows = (limits: Limit[]) => limits.map((l) => [l.kind, l.scopeId, l.bucket, l.limit?.amount ?? null, l.spent.amount, l.held.amount, l.remaining?.amount ?? null]);

describe("ApiKey.plan", () => {
  it("shows channels in order with their buckets, and every limit per bucket with spent, held and remaining", async () => {
    const w = await world({ credit: "100", routed: "500", key: { dailyCap: "1", capBucket: "CREDIT", allowedBuckets: ["CREDIT", "ROUTED"], rpmLimit: 600 }, project: { dailyCap: "2" } });
    const model = uid("plan");
    const [primaryUp, backupUp] = [uid("primary-up"), uid("backup-up")];
    const r = await route(
      w.viewer,
      w.org.id,
      model,
      [
        { name: "official", baseUrl: h.fake.url, upstreamModel: primaryUp, settlement: "OFFICIAL", price: ["1", "10"] },
        { name: "routed", baseUrl: h.fake.url, upstreamModel: backupUp, settlement: "ROUTED", price: ["2", "20"] },
      ],
      { dailyCap: "5" },
    );
    const [primary, backup] = r.channels;
    // The same scopes capped in the other bucket too (else a cap in one bucket caps the other at zero).
    await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: "2", capBucket: "ROUTED" });
    await setProjectBudget(w.viewer, { projectId: w.project.id, dailyCap: "4", bucket: "ROUTED" });
    await setRouteLimits(w.viewer, { routeId: r.route.id, dailyCap: "6", capBucket: "ROUTED" });
    await setChannelLimits(w.viewer, { channelId: backup!.id, dailyCap: "3" });

    // One request on the primary (CREDIT: 10 × 1 + 10 × 10 = 110 µ), one that falls back to the backup (ROUTED: 10 × 2 + 10 × 20 = 220 µ).
    const client = h.gw.client(w.secret);
    const ask = () => client.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 10 }).withResponse();
    h.fake.set(primaryUp, { type: "ok", usage: { prompt_tokens: 10, completion_tokens: 10 } });
    h.fake.set(backupUp, { type: "ok", usage: { prompt_tokens: 10, completion_tokens: 10 } });
    expect((await ask()).response.headers.get("x-tokengate-charge")).toBe("0.000110");
    h.fake.set(primaryUp, { type: "status", status: 500 });
    const fellBack = await ask();
    expect([fellBack.response.headers.get("x-tokengate-bucket"), fellBack.response.headers.get("x-tokengate-charge")]).toEqual(["ROUTED", "0.000220"]);
    h.fake.set(primaryUp, { type: "ok", usage: { prompt_tokens: 10, completion_tokens: 10 } });
    await leasesReturned(h);

    // A request in flight on the primary: 1,000 µ held against every CREDIT scope and the balance.
    const creditBucket = await walletBucket(w.org.id, "CREDIT");
    const held = await reserve({
      requestId: uid("inflight"),
      bucketId: creditBucket.id,
      amount: 1_000n,
      keyId: w.key.id,
      projectId: w.project.id,
      routeId: r.route.id,
      runId: null,
      channelId: primary!.id,
      ttlMs: 60_000,
    });
    if (!held.ok) throw new Error(`not reserved: ${held.refusal}`);

    const admin = await token("ORG_ADMIN", w.org.id);
    const { apiKey } = await gqlOk<{ apiKey: Record<string, any> }>(admin, PLAN, { id: w.key.id, model });
    const [plan] = apiKey.plan as Array<Record<string, any>>;
    expect(plan).toMatchObject({
      model,
      callable: true,
      reasons: [],
      routeId: r.route.id,
      primaryBucket: "CREDIT",
      fallbackSwitchesBucket: true,
      retryCeiling: 2,
      maxAttempts: 3,
      failedChargePolicy: "NEVER",
      rateLimits: { rpmLimit: 600, tpmLimit: null, maxConcurrent: null },
    });
    const snapshots = await h.database.prisma.priceSnapshot.findMany({ where: { channelId: { in: [primary!.id, backup!.id] } } });
    const snapshotOf = (channelId: string) => snapshots.find((s) => s.channelId === channelId)!.id;
    expect(plan.channels).toEqual([
      {
        position: 0,
        role: "PRIMARY",
        channelId: primary!.id,
        name: "official",
        settlement: "OFFICIAL",
        bucket: "CREDIT",
        upstreamModel: primaryUp,
        health: "HEALTHY",
        tried: true,
        notTriedBecause: null,
        price: { snapshotId: snapshotOf(primary!.id), bucket: "CREDIT", inputPerMillion: { amount: "1.000000", currency: "USD" }, outputPerMillion: { amount: "10.000000", currency: "USD" } },
      },
      {
        position: 1,
        role: "BACKUP",
        channelId: backup!.id,
        name: "routed",
        settlement: "ROUTED",
        bucket: "ROUTED",
        upstreamModel: backupUp,
        health: "HEALTHY",
        tried: true,
        notTriedBecause: null,
        price: { snapshotId: snapshotOf(backup!.id), bucket: "ROUTED", inputPerMillion: { amount: "2.000000", currency: "CNY" }, outputPerMillion: { amount: "20.000000", currency: "CNY" } },
      },
    ]);

    const monthly = await h.database.prisma.spendCounter.findMany({ where: { scope: "PROJECT_MONTHLY", scopeId: w.project.id } });
    const monthlySpent = (bucket: string) => m(monthly.find((c) => c.bucket === bucket)?.spent ?? 0n);
    const monthlyHeld = (bucket: string) => m(monthly.find((c) => c.bucket === bucket)?.held ?? 0n);
    expect(rows(plan.limits)).toEqual([
      ["KEY_PER_REQUEST", w.key.id, "CREDIT", null, "0.000000", "0.000000", null],
      ["KEY_DAILY", w.key.id, "CREDIT", "1.000000", "0.000110", "0.001000", "0.998890"],
      ["PROJECT_DAILY", w.project.id, "CREDIT", "2.000000", "0.000110", "0.001000", "1.998890"],
      ["PROJECT_MONTHLY", w.project.id, "CREDIT", null, monthlySpent("CREDIT"), monthlyHeld("CREDIT"), null],
      ["ROUTE_DAILY", r.route.id, "CREDIT", "5.000000", "0.000110", "0.001000", "4.998890"],
      ["KEY_PER_REQUEST", w.key.id, "ROUTED", null, "0.000000", "0.000000", null],
      ["KEY_DAILY", w.key.id, "ROUTED", "2.000000", "0.000220", "0.000000", "1.999780"],
      ["PROJECT_DAILY", w.project.id, "ROUTED", "4.000000", "0.000220", "0.000000", "3.999780"],
      ["PROJECT_MONTHLY", w.project.id, "ROUTED", null, monthlySpent("ROUTED"), monthlyHeld("ROUTED"), null],
      ["ROUTE_DAILY", r.route.id, "ROUTED", "6.000000", "0.000220", "0.000000", "5.999780"],
      ["CHANNEL_DAILY", primary!.id, "CREDIT", null, "0.000110", "0.001000", null],
      ["CHANNEL_DAILY", backup!.id, "ROUTED", "3.000000", "0.000220", "0.000000", "2.999780"],
      ["BALANCE", null, "CREDIT", "99.999890", "0.000000", "0.001000", "99.998890"],
      ["BALANCE", null, "ROUTED", "499.999780", "0.000000", "0.000000", "499.999780"],
    ]);
    const today = new Date(`${new Date().toISOString().slice(0, 10)}T00:00:00.000Z`).toISOString();
    expect(plan.limits.find((l: Limit) => l.kind === "KEY_DAILY").windowStart).toBe(today);

    // Spend per bucket (never one total), the ledger entries of its charges, and when it was last used.
    expect(apiKey.spend).toEqual([
      { bucket: "CREDIT", charged: { amount: "0.000110", currency: "USD" }, requests: 1, failures: 0 },
      { bucket: "ROUTED", charged: { amount: "0.000220", currency: "CNY" }, requests: 1, failures: 0 },
    ]);
    const last = await h.database.prisma.receipt.findFirstOrThrow({ where: { keyId: w.key.id }, orderBy: { createdAt: "desc" } });
    expect(apiKey.lastUsedAt).toBe(last.createdAt.toISOString());
    const ledger = await gqlOk<{ apiKey: { ledgerEntries: { totalCount: number; edges: Array<{ node: Record<string, any> }> } } }>(
      admin,
      `query($id: ID!) { apiKey(id: $id) { ledgerEntries { totalCount edges { node { kind amount { amount currency } receipt { requestId } } } } } }`,
      { id: w.key.id },
    );
    expect(ledger.apiKey.ledgerEntries.totalCount).toBe(2);
    expect(ledger.apiKey.ledgerEntries.edges.map((e) => [e.node.kind, e.node.amount.amount, e.node.amount.currency])).toEqual([
      ["CHARGE", "-0.000220", "CNY"],
      ["CHARGE", "-0.000110", "USD"],
    ]);
    // In a list (batched per request): the used key and an unused one.
    const unused = await newKey(w.viewer, w.project.id);
    const listed = await gqlOk<{ apiKeys: { edges: Array<{ node: Record<string, any> }> } }>(
      admin,
      `query($p: ID!) { apiKeys(projectId: $p) { edges { node { id lastUsedAt spend { bucket charged { amount } requests } } } } }`,
      { p: w.project.id },
    );
    expect(listed.apiKeys.edges.map((e) => e.node)).toEqual([
      {
        id: w.key.id,
        lastUsedAt: last.createdAt.toISOString(),
        spend: [
          { bucket: "CREDIT", charged: { amount: "0.000110" }, requests: 1 },
          { bucket: "ROUTED", charged: { amount: "0.000220" }, requests: 1 },
        ],
      },
      {
        id: unused.apiKey.id,
        lastUsedAt: null,
        spend: [
          { bucket: "CREDIT", charged: { amount: "0.000000" }, requests: 0 },
          { bucket: "ROUTED", charged: { amount: "0.000000" }, requests: 0 },
        ],
      },
    ]);
    // A range before today: nothing.
    const before = await gqlOk<{ apiKey: { spend: Array<{ charged: { amount: string } }> } }>(
      admin,
      `query($id: ID!) { apiKey(id: $id) { spend(from: "2020-01-01T00:00:00Z", to: "2020-01-02T00:00:00Z") { charged { amount } } } }`,
      { id: w.key.id },
    );
    expect(before.apiKey.spend.map((x) => x.charged.amount)).toEqual(["0.000000", "0.000000"]);
    const routedOnly = await gqlOk<{ apiKey: { ledgerEntries: { totalCount: number } } }>(admin, `query($id: ID!) { apiKey(id: $id) { ledgerEntries(bucket: ROUTED) { totalCount } } }`, {
      id: w.key.id,
    });
    expect(routedOnly.apiKey.ledgerEntries.totalCount).toBe(1);

    // A project viewer of the key's project: the plan without channel names / ids and without the wallet; no ledger.
    const projectViewer = await token("PROJECT_VIEWER", w.org.id, w.project.id);
    const seen = await gqlOk<{ apiKey: Record<string, any> }>(
      projectViewer,
      `query($id: ID!, $model: String) { apiKey(id: $id) { plan(model: $model) { channels { channelId name bucket price { inputPerMillion { amount } } } limits { kind scopeId bucket } } } }`,
      { id: w.key.id, model },
    );
    expect(seen.apiKey.plan[0].channels).toEqual([
      { channelId: null, name: null, bucket: "CREDIT", price: { inputPerMillion: { amount: "1.000000" } } },
      { channelId: null, name: null, bucket: "ROUTED", price: { inputPerMillion: { amount: "2.000000" } } },
    ]);
    const kinds = (seen.apiKey.plan[0].limits as Limit[]).map((l) => l.kind);
    expect(kinds).not.toContain("BALANCE");
    expect((seen.apiKey.plan[0].limits as Limit[]).filter((l) => l.kind === "CHANNEL_DAILY").map((l) => l.scopeId)).toEqual([null, null]);
    expect(codes(await gql(projectViewer, `query($id: ID!) { apiKey(id: $id) { ledgerEntries { totalCount } } }`, { id: w.key.id }))).toEqual(["FORBIDDEN"]);

    // Tenancy: another organization's admin, and a viewer of another project, do not find the key.
    const other = await world();
    const otherAdmin = await token("ORG_ADMIN", other.org.id);
    const foreign = await gql(otherAdmin, PLAN, { id: w.key.id, model });
    expect(codes(foreign)).toEqual(["NOT_FOUND"]);
    expect(foreign.data?.apiKey ?? null).toBeNull();
    const otherProject = await token("PROJECT_VIEWER", other.org.id, other.project.id);
    expect(codes(await gql(otherProject, PLAN, { id: w.key.id, model }))).toEqual(["NOT_FOUND"]);

    await release(held.holdId, 0n, {});
  });

  it("without a model: every model the key may call; a channel the key may not use is listed as not tried, with why", async () => {
    const w = await world({ credit: "10", key: { allowedBuckets: ["CREDIT"] } });
    await topUp(w.org.id, "ROUTED", "10");
    const [a, b] = [uid("all-a"), uid("all-b")];
    await route(w.viewer, w.org.id, a, [
      { name: "routed-first", baseUrl: h.fake.url, upstreamModel: "x", settlement: "ROUTED", price: ["1", "1"] },
      { name: "official", baseUrl: h.fake.url, upstreamModel: "y", settlement: "OFFICIAL", price: ["3", "4"] },
    ]);
    await route(w.viewer, w.org.id, b, [{ name: "unpriced", baseUrl: h.fake.url, upstreamModel: "z" }]);
    const admin = await token("ORG_ADMIN", w.org.id);
    const { apiKey } = await gqlOk<{ apiKey: { plan: Array<Record<string, any>> } }>(
      admin,
      `query($id: ID!) { apiKey(id: $id) { plan { model callable reasons primaryBucket fallbackSwitchesBucket channels { name role tried notTriedBecause } limits { kind bucket } } } }`,
      { id: w.key.id },
    );
    const byModel = new Map(apiKey.plan.map((p) => [p.model, p]));
    expect(byModel.get(a)).toMatchObject({
      callable: true,
      primaryBucket: "CREDIT",
      fallbackSwitchesBucket: false,
      channels: [
        { name: "routed-first", role: "PRIMARY", tried: false, notTriedBecause: "the key may not spend from ROUTED" },
        { name: "official", role: "BACKUP", tried: true, notTriedBecause: null },
      ],
    });
    // Only the bucket a tried channel pays from.
    expect(new Set((byModel.get(a)!.limits as Limit[]).map((l) => l.bucket))).toEqual(new Set(["CREDIT"]));
    expect(byModel.get(b)).toMatchObject({ callable: false, reasons: ["no channel of the route is open to this key and priced"], primaryBucket: null, limits: [] });
    expect(byModel.get(b)!.channels).toEqual([{ name: "unpriced", role: "PRIMARY", tried: false, notTriedBecause: "the channel has no price (never called)" }]);

    // A model it may not call says so; a run of another key is not found.
    const planOf = await gqlOk<{ apiKey: { plan: Array<Record<string, any>> } }>(admin, `query($id: ID!) { apiKey(id: $id) { plan(model: "nope") { model callable reasons channels { name } } } }`, {
      id: w.key.id,
    });
    expect(planOf.apiKey.plan).toEqual([{ model: "nope", callable: false, reasons: ["no route serves nope"], channels: [] }]);
    expect(codes(await gql(admin, `query($id: ID!) { apiKey(id: $id) { plan(model: "${a}", runId: "no-such-run") { model } } }`, { id: w.key.id }))).toEqual(["NOT_FOUND"]);
  });
});
