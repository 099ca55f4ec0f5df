// Issue 18, points 1–3: object identification (Node, node, nodes) with the raw database ids the rest
// of the API shows, one connection type per node type with orderBy and the same filter everywhere,
// and types that say what they hold (enums, a strict DateTime input, counts beyond 32 bits).
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { fakeReceipt } from "./support/records.ts";
import { codes, gql, gqlOk, token } from "./support/graphql.ts";
import { startRun } from "../src/runs/index.ts";
import { setAlertWebhook } from "../src/webhooks/index.ts";
import { createAdminToken } from "../src/auth/index.ts";
import { AUDIT_ACTIONS, AUDIT_TARGET_TYPES } from "../src/audit/index.ts";
import { schema } from "../src/schema/index.ts";
import { isEnumType, type GraphQLEnumType, type GraphQLObjectType } from "graphql";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database.dispose();
});

/** One object of every node type in one organization, and the ids the API shows for them. */
async function everyNode() {
  const w = await f.world({ credit: "50" });
  const { route, channels } = await f.route(w.viewer, w.org.id, `node-${w.org.id.slice(-6)}`, [
    { name: "main", baseUrl: "https://upstream.example.test/v1", upstreamModel: "node-up", price: ["1", "2"] },
  ]);
  const channel = channels[0]!;
  const snapshot = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: channel.id } });
  const receipt = await fakeReceipt(w.key, route.id, channel.id, snapshot.id, 3n);
  const run = await startRun(w.viewer, { keyId: w.key.id, mode: "QUICK" });
  const failed = await database.prisma.failedRequest.create({
    data: {
      requestId: randomUUID(),
      organizationId: w.org.id,
      keyId: w.key.id,
      projectId: w.project.id,
      routeId: route.id,
      runId: run.id,
      endpoint: "/v1/chat/completions",
      cause: "UPSTREAM_ERROR",
      message: "upstream failed",
      httpStatus: 502,
      attempts: 1,
    },
  });
  const wallet = await database.prisma.wallet.findUniqueOrThrow({ where: { organizationId: w.org.id }, include: { buckets: true } });
  const credit = wallet.buckets.find((b) => b.bucket === "CREDIT")!;
  const ledgerEntry = await database.prisma.ledgerEntry.findFirstOrThrow({ where: { bucketId: credit.id } });
  const audit = await database.prisma.auditEntry.findFirstOrThrow({ where: { organizationId: w.org.id, action: "createProject" } });
  const { webhook } = await setAlertWebhook(w.viewer, { organizationId: w.org.id, url: "https://hooks.example.test/alerts", secret: "0123456789abcdef0123" });
  const delivery = await database.prisma.alertWebhookDelivery.create({
    data: { webhookId: webhook.id, organizationId: w.org.id, deliveryId: randomUUID(), event: "budgetAlert", attempt: 1, status: "SUCCEEDED", httpStatus: 200, durationMs: 5 },
  });
  const adminToken = await createAdminToken({ name: "node-test", role: "ORG_VIEWER", organizationId: w.org.id });
  const budgetAlert = await database.prisma.budgetAlert.create({
    data: { organizationId: w.org.id, projectId: w.project.id, scope: "PROJECT_DAILY", scopeId: w.project.id, bucket: "CREDIT", windowStart: new Date(), threshold: 50, spent: 5n, cap: 10n },
  });
  const lowBalance = await database.prisma.balanceAlert.create({ data: { organizationId: w.org.id, bucket: "CREDIT", threshold: 10n, balance: 5n } });
  const health = await database.prisma.channelHealthEvent.create({
    data: { channelId: channel.id, organizationId: w.org.id, routeId: route.id, fromState: "HEALTHY", toState: "DEGRADED", successRate: 0.5, p50LatencyMs: 20 },
  });
  const ids = {
    Organization: w.org.id,
    Project: w.project.id,
    ApiKey: w.key.id,
    Route: route.id,
    Channel: channel.id,
    PriceSnapshot: snapshot.id,
    Receipt: receipt.id,
    FailedRequest: failed.id,
    LedgerEntry: ledgerEntry.id,
    Run: run.id,
    AuditEntry: audit.id,
    AlertWebhook: webhook.id,
    AlertWebhookDelivery: delivery.id,
    AdminToken: adminToken.id,
    Wallet: wallet.id,
    WalletBalance: credit.id,
    BudgetAlert: budgetAlert.id,
    LowBalanceAlert: lowBalance.id,
    ChannelHealthEvent: health.id,
  };
  return { ...w, route, channel, snapshot, receipt, run, failed, ids };
}

const NODES = `query($ids: [ID!]!) { nodes(ids: $ids) { __typename id
  ... on Organization { name }
  ... on Project { name organization { id } }
  ... on ApiKey { name project { id } }
  ... on Route { model }
  ... on Channel { name route { id } }
  ... on PriceSnapshot { inputPerMillion { amount currency } channel { id } }
  ... on Receipt { requestId charge { amount } key { id } }
  ... on FailedRequest { cause run { id } }
  ... on LedgerEntry { kind amount { amount currency } }
  ... on Run { mode key { id } }
  ... on AuditEntry { action targetType targetId }
  ... on AlertWebhook { url }
  ... on AlertWebhookDelivery { deliveryId status }
  ... on AdminToken { name role }
  ... on Wallet { organization { id } }
  ... on WalletBalance { bucket balance { amount } }
  ... on BudgetAlert { percent: threshold scope }
  ... on LowBalanceAlert { bucket threshold { amount } }
  ... on ChannelHealthEvent { state channel { id } }
} }`;

describe("object identification", () => {
  it("node and nodes reach every node type with its raw id, its __typename and its fields", async () => {
    const w = await everyNode();
    const admin = await token("ORG_ADMIN", w.org.id);
    const entries = Object.entries(w.ids);
    const { nodes } = await gqlOk<{ nodes: Array<Record<string, any>> }>(admin, NODES, { ids: entries.map(([, id]) => id) });
    expect(nodes.map((n) => [n.__typename, n.id])).toEqual(entries);
    const by = Object.fromEntries(nodes.map((n) => [n.__typename, n]));
    expect(by.Project.organization.id).toBe(w.org.id);
    expect(by.ApiKey.project.id).toBe(w.project.id);
    expect(by.Channel.route.id).toBe(w.route.id);
    expect(by.PriceSnapshot).toMatchObject({ inputPerMillion: { amount: "1.000000", currency: "USD" }, channel: { id: w.channel.id } });
    expect(by.Receipt).toMatchObject({ requestId: w.receipt.requestId, charge: { amount: "0.000003" }, key: { id: w.key.id } });
    expect(by.FailedRequest).toMatchObject({ cause: "UPSTREAM_ERROR", run: { id: w.run.id } });
    expect(by.LedgerEntry).toMatchObject({ kind: "TOPUP", amount: { amount: "50.000000", currency: "USD" } });
    expect(by.AuditEntry).toMatchObject({ action: "createProject", targetType: "Project", targetId: w.project.id });
    expect(by.WalletBalance).toMatchObject({ bucket: "CREDIT", balance: { amount: "50.000000" } });
    expect(by.ChannelHealthEvent).toMatchObject({ state: "DEGRADED", channel: { id: w.channel.id } });
    expect(by.Wallet.organization.id).toBe(w.org.id);

    // node(id:) answers the same object; the id it shows is the id every other field shows.
    for (const [typename, id] of entries) {
      const { node } = await gqlOk<{ node: { __typename: string; id: string } }>(admin, `query($id: ID!) { node(id: $id) { __typename id } }`, { id });
      expect(node).toEqual({ __typename: typename, id });
    }
    const { apiKey } = await gqlOk(admin, `query($id: ID!) { apiKey(id: $id) { id receipts { edges { node { id } } } } }`, { id: w.key.id });
    expect(apiKey.receipts.edges[0].node.id).toBe(w.receipt.id);
  });

  it("another organization's ids, unknown ids and ids a project viewer may not read answer null, never an error", async () => {
    const w = await everyNode();
    const other = await f.world();
    const otherAdmin = await token("ORG_ADMIN", other.org.id);
    const ids = Object.values(w.ids);
    const foreign = await gql(otherAdmin, NODES, { ids: [...ids, randomUUID(), "not-an-id", "x".repeat(500)] });
    expect(foreign.errors).toBeUndefined();
    expect(foreign.data!.nodes).toEqual(ids.map(() => null).concat([null, null, null]));
    const single = await gql(otherAdmin, `query($id: ID!) { node(id: $id) { id } }`, { id: w.receipt.id });
    expect(single).toEqual({ data: { node: null } });

    // A project viewer sees its project's objects (project, key, receipts, runs, failures, project
    // alerts) and nothing of another project, nor the organization-level ones.
    const sibling = await f.project(w.viewer, w.org.id);
    const siblingKey = await f.apiKey(w.viewer, sibling.id);
    const viewer = await token("PROJECT_VIEWER", w.org.id, w.project.id);
    const seen = await gqlOk<{ nodes: Array<{ __typename: string } | null> }>(viewer, `query($ids: [ID!]!) { nodes(ids: $ids) { __typename id } }`, {
      ids: [...ids, sibling.id, siblingKey.apiKey.id],
    });
    const visible = seen.nodes.map((n) => n?.__typename ?? null);
    expect(visible).toEqual([null, "Project", "ApiKey", null, null, null, "Receipt", "FailedRequest", null, "Run", null, null, null, null, null, null, "BudgetAlert", null, null, null, null]);
    // An organization viewer sees the organization's objects but not its admin tokens (as adminTokens).
    const orgViewer = await token("ORG_VIEWER", w.org.id);
    const byOrgViewer = await gqlOk<{ nodes: Array<{ __typename: string } | null> }>(orgViewer, NODES, { ids });
    expect(byOrgViewer.nodes.filter((n) => n === null)).toHaveLength(1);
    expect(byOrgViewer.nodes[Object.keys(w.ids).indexOf("AdminToken")]).toBeNull();
    // A platform token sees everything.
    const platform = await token("PLATFORM_ADMIN");
    const all = await gqlOk<{ nodes: Array<{ id: string } | null> }>(platform, NODES, { ids });
    expect(all.nodes.map((n) => n?.id)).toEqual(ids);
  });

  it("nodes takes at most 100 ids; duplicates answer the same object at each place", async () => {
    const w = await f.world();
    const admin = await token("ORG_ADMIN", w.org.id);
    const tooMany = await gql(admin, `query($ids: [ID!]!) { nodes(ids: $ids) { id } }`, { ids: Array.from({ length: 101 }, () => randomUUID()) });
    expect(codes(tooMany)).toEqual(["BAD_USER_INPUT"]);
    expect(tooMany.errors![0]!.message).toMatch(/at most 100/);
    const hundred = await gqlOk(admin, `query($ids: [ID!]!) { nodes(ids: $ids) { id } }`, {
      ids: [w.key.id, w.project.id, w.key.id, ...Array.from({ length: 97 }, () => randomUUID())],
    });
    expect(hundred.nodes.slice(0, 4)).toEqual([{ id: w.key.id }, { id: w.project.id }, { id: w.key.id }, null]);
  });

  it("a Node fragment works wherever the object appears", async () => {
    const w = await everyNode();
    const admin = await token("ORG_ADMIN", w.org.id);
    const data = await gqlOk(admin, `fragment N on Node { id } query($k: ID!) { apiKey(id: $k) { ...N project { ...N } } node(id: $k) { ...N ... on ApiKey { name } } }`, { k: w.key.id });
    expect(data.apiKey).toEqual({ id: w.key.id, project: { id: w.project.id } });
    expect(data.node).toEqual({ id: w.key.id, name: w.key.name });
  });
});

describe("types that say what they hold", () => {
  const enumValues = (name: string) => (schema.getType(name) as GraphQLEnumType).getValues().map((v) => v.name);

  it("fixed values are enums: spend buckets, run estimates, audit actions and targets, webhook events, live causes", async () => {
    const w = await everyNode();
    const admin = await token("ORG_ADMIN", w.org.id);
    const field = (type: string, name: string) => {
      const t = schema.getType(type) as { getFields(): Record<string, { type: unknown }> };
      return String(t.getFields()[name]!.type);
    };
    expect(field("SpendPoint", "bucket")).toBe("BalanceBucket!");
    expect(field("RunEstimate", "settlement")).toBe("Settlement");
    expect(field("RunEstimate", "failedChargePolicy")).toBe("FailedChargePolicy!");
    expect(field("AuditEntry", "action")).toBe("AuditAction!");
    expect(field("AuditEntry", "targetType")).toBe("AuditTargetType!");
    expect(field("AlertWebhookDelivery", "event")).toBe("WebhookEvent!");
    expect(field("LiveFeedItem", "cause")).toBe("FailureCause");
    // Every action and target the code writes (writeAudit takes only these) is a value, and no other.
    expect(enumValues("AuditAction").sort()).toEqual([...AUDIT_ACTIONS].sort());
    expect(enumValues("AuditTargetType").sort()).toEqual([...AUDIT_TARGET_TYPES].sort());
    // HoldStatus was no field's type: gone. RunStatus keeps EXHAUSTED and COMPLETED, which the run lifecycle (issue 17) sets.
    expect(enumValues("RunStatus").sort()).toEqual(["ACTIVE", "CANCELLED", "COMPLETED", "EXHAUSTED", "PAUSED"]);
    expect(isEnumType(schema.getType("HoldStatus"))).toBe(false);

    const estimate = await gqlOk(admin, `query($k: ID!, $m: String!) { estimateRun(input: { keyId: $k, model: $m, mode: QUICK }) { settlement failedChargePolicy bucket } }`, {
      k: w.key.id,
      m: w.route.model,
    });
    expect(estimate.estimateRun).toEqual({ settlement: "OFFICIAL", failedChargePolicy: "NEVER", bucket: "CREDIT" });
    // Audit entries read and filter by the enum; the values are the names the entries always had.
    const audit = await gqlOk(admin, `{ auditEntries(action: createProject, targetType: Project) { totalCount edges { node { action targetType targetId } } } }`);
    expect(audit.auditEntries.edges).toEqual([{ node: { action: "createProject", targetType: "Project", targetId: w.project.id } }]);
    const unknown = await gql(admin, `{ auditEntries(action: "createProject") { totalCount } }`);
    expect(codes(unknown)).toEqual(["GRAPHQL_VALIDATION_FAILED"]);
  });

  it("DateTime inputs are full ISO 8601 date-times with an offset; anything else is BAD_USER_INPUT", async () => {
    const w = await f.world();
    const admin = await token("ORG_ADMIN", w.org.id);
    const query = `query($from: DateTime!) { receipts(filter: { from: $from }) { totalCount } }`;
    for (const accepted of ["2026-11-01T00:00:00Z", "2026-11-01T00:00:00.123Z", "2026-11-01T09:30:00+08:00", "2026-11-01T09:30:00.5-05:30", "2024-02-29T23:59:59z"]) {
      const r = await gql(admin, query, { from: accepted });
      expect(r.errors, accepted).toBeUndefined();
    }
    for (const rejected of [
      "Nov 1 2026",
      "2026-11-01",
      "2026-11-01T00:00:00",
      "2026-11-01 00:00:00Z",
      "2026-02-30T00:00:00Z",
      "2026-11-01T24:00:00Z",
      "2026-13-01T00:00:00Z",
      "2026-11-01T00:00Z",
      "1730419200000",
      "",
      "2026-11-01T00:00:00+0800",
    ]) {
      const r = await gql(admin, query, { from: rejected });
      expect(codes(r), rejected).toEqual(["BAD_USER_INPUT"]);
      expect(r.errors![0]!.message).toMatch(/ISO 8601 date-time with an offset/);
    }
    // As a literal in the document too, and a number is no DateTime.
    expect(codes(await gql(admin, `{ receipts(filter: { from: "2026-11-01" }) { totalCount } }`))).toEqual(["BAD_USER_INPUT"]);
    expect(codes(await gql(admin, query, { from: 1730419200000 }))).toEqual(["BAD_USER_INPUT"]);
    // An offset is honoured: 09:00+08:00 is 01:00Z.
    const filtered = await gqlOk(admin, `query($from: DateTime!, $to: DateTime!) { spendSeries(input: { from: $from, to: $to, interval: HOUR, groupBy: KEY }) { bucketStart } }`, {
      from: "2026-11-01T09:00:00+08:00",
      to: "2026-11-01T10:00:00+08:00",
    });
    expect(filtered.spendSeries).toEqual([]);
  });

  it("token sums above 2^31 do not fail a spend series, and counts are Count numbers", async () => {
    const w = await everyNode();
    const admin = await token("ORG_ADMIN", w.org.id);
    const hour = new Date(Date.UTC(2026, 10, 1, 10));
    // Three receipts of 1.5 billion prompt tokens each (an Int column holds one; the sum does not fit 32 bits).
    for (let i = 0; i < 3; i++) {
      const r = await fakeReceipt(w.key, w.route.id, w.channel.id, w.snapshot.id, 1n);
      await database.prisma.receipt.update({ where: { id: r.id }, data: { promptTokens: 1_500_000_000, completionTokens: 2_000_000_000 } });
    }
    await database.prisma.$executeRawUnsafe(`UPDATE "Receipt" SET "createdAt" = $1::timestamptz AT TIME ZONE 'UTC' WHERE "keyId" = $2 AND "promptTokens" = 1500000000`, hour.toISOString(), w.key.id);
    const series = `query($from: DateTime!, $to: DateTime!, $interval: SpendInterval!) { spendSeries(input: { from: $from, to: $to, interval: $interval, groupBy: KEY }) { bucket requests promptTokens completionTokens spend { amount } } }`;
    for (const interval of ["HOUR", "DAY"]) {
      const r = await gql(admin, series, { from: "2026-11-01T00:00:00Z", to: "2026-11-02T00:00:00Z", interval });
      expect(r.errors, interval).toBeUndefined();
      expect(r.data!.spendSeries).toEqual([{ bucket: "CREDIT", requests: 3, promptTokens: 4_500_000_000, completionTokens: 6_000_000_000, spend: { amount: "0.000003" } }]);
    }
    const counted = await gqlOk(admin, `{ receipts { totalCount } }`);
    expect(counted.receipts.totalCount).toBe(4);
  });
});

const fieldType = (type: string, field: string) => String((schema.getType(type) as GraphQLObjectType).getFields()[field]!.type);

describe("one connection type per node type", () => {
  it("a ReceiptConnection fragment works on the root list and every nested one; orderBy and the nested filter apply", async () => {
    const w = await everyNode();
    const admin = await token("ORG_ADMIN", w.org.id);
    // Two more receipts, 1 and 2 seconds later, with higher charges; one of them in the run.
    const later = [];
    for (const [i, charge] of [
      [1, 9n],
      [2, 5n],
    ] as const) {
      const r = await fakeReceipt(w.key, w.route.id, w.channel.id, w.snapshot.id, charge);
      later.push(await database.prisma.receipt.update({ where: { id: r.id }, data: { createdAt: new Date(w.receipt.createdAt.getTime() + i * 1000), runId: i === 2 ? w.run.id : null } }));
    }
    const ids = [w.receipt.id, later[0]!.id, later[1]!.id];
    const query = `fragment R on ReceiptConnection { totalCount edges { cursor node { id } } pageInfo { hasNextPage } }
      query($k: ID!, $p: ID!, $r: ID!, $run: ID!, $order: ReceiptOrder, $filter: RequestFilter) {
        receipts(filter: { keyId: $k }, orderBy: $order) { ...R }
        apiKey(id: $k) { receipts(orderBy: $order, filter: $filter) { ...R } }
        project(id: $p) { receipts(orderBy: $order, filter: $filter) { ...R } }
        route(id: $r) { receipts(orderBy: $order, filter: $filter) { ...R } }
        run(id: $run) { receipts(orderBy: $order) { ...R } }
      }`;
    const vars = { k: w.key.id, p: w.project.id, r: w.route.id, run: w.run.id };
    const order = (c: { edges: Array<{ node: { id: string } }> }) => c.edges.map((e) => e.node.id);
    const byDefault = await gqlOk(admin, query, vars);
    for (const c of [byDefault.receipts, byDefault.apiKey.receipts, byDefault.project.receipts, byDefault.route.receipts]) expect(order(c)).toEqual([...ids].reverse());
    expect(order(byDefault.run.receipts)).toEqual([later[1]!.id]);
    const ascending = await gqlOk(admin, query, { ...vars, order: { direction: "ASC" } });
    for (const c of [ascending.receipts, ascending.apiKey.receipts, ascending.project.receipts, ascending.route.receipts]) expect(order(c)).toEqual(ids);
    const byCharge = await gqlOk(admin, query, { ...vars, order: { field: "CHARGE", direction: "DESC" } });
    expect(order(byCharge.apiKey.receipts)).toEqual([later[0]!.id, later[1]!.id, w.receipt.id]);
    // The root field's filter, nested: a run and a time range.
    const filtered = await gqlOk(admin, query, { ...vars, filter: { runId: w.run.id } });
    expect(order(filtered.apiKey.receipts)).toEqual([later[1]!.id]);
    expect(filtered.project.receipts.totalCount).toBe(1);
    const ranged = await gqlOk(admin, query, { ...vars, filter: { from: later[0]!.createdAt.toISOString() } });
    expect(order(ranged.route.receipts)).toEqual([later[1]!.id, later[0]!.id]);
    expect(codes(await gql(admin, `{ receipts(orderBy: { field: NOPE }) { totalCount } }`))).toEqual(["GRAPHQL_VALIDATION_FAILED"]);
    // A bad enum value in a variable is the client's mistake: BAD_USER_INPUT naming it, never an internal error.
    const badOrder = await gql(admin, query, { ...vars, order: { field: "NOPE" } });
    const badBucket = await gql(
      admin,
      `query($b: BalanceBucket) { wallet { balances { bucket } } spendSeries(input: { from: "2026-11-01T00:00:00Z", to: "2026-11-02T00:00:00Z", interval: DAY, groupBy: KEY }) { bucket } x: ledgerEntries(bucket: $b) { totalCount } }`,
      { b: "NOPE" },
    );
    expect(badOrder.data ?? null).toBeNull();
    expect(codes(badOrder)).toEqual(["BAD_USER_INPUT"]);
    expect(codes(badBucket)).toEqual(["BAD_USER_INPUT"]);
    expect(JSON.stringify(badBucket.errors)).toContain("NOPE");

    const types = ["receipts", "failedRequests"].map((f) => fieldType("ApiKey", f));
    expect(types).toEqual(["ReceiptConnection!", "FailedRequestConnection!"]);
    for (const [type, field] of [
      ["Query", "failedRequests"],
      ["Project", "failedRequests"],
      ["Run", "failedRequests"],
    ]) {
      expect(fieldType(type!, field!)).toBe("FailedRequestConnection!");
    }
    expect(fieldType("Project", "apiKeys")).toBe("ApiKeyConnection!");
    expect(fieldType("Query", "apiKeys")).toBe("ApiKeyConnection!");
    expect(fieldType("Channel", "healthHistory")).toBe("ChannelHealthEventConnection!");
    expect(fieldType("Query", "channelHealthEvents")).toBe("ChannelHealthEventConnection!");
  });
});
