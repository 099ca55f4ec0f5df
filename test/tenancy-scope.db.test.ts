// No argument widens a token's view (issue 14, point 10): `apiKeys(projectId: <other project>)`
// listed another project's keys to a project viewer (the argument replaced the viewer's project).
// Every root query field, with every argument that narrows it by id, and every CSV export filter
// is asked, per role, about ids outside the token's scope: the answer must be exactly the answer for
// an id that does not exist (same data, same errors), and no answer may carry a foreign id, not
// even inside a cursor.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { fakeReceipt } from "./support/records.ts";
import { gql, startTestServer, token } from "./support/graphql.ts";
import { recordFailure } from "../src/money/writer.ts";
import { startRun } from "../src/runs/index.ts";
import { setAlertWebhook } from "../src/webhooks/index.ts";
import { schema } from "../src/schema/index.ts";
import type { RunningServer } from "../src/server.ts";
import type { AdminRole } from "../src/generated/prisma/enums.ts";

let database: TestDatabase;
let server: RunningServer;

interface Tenant {
  org: { id: string };
  projects: Array<{ id: string }>;
  keys: Array<{ id: string; projectId: string }>;
  route: { id: string };
  channelId: string;
}

const tenants: Tenant[] = [];

async function tenant(viewer: Awaited<ReturnType<typeof f.platformViewer>>): Promise<Tenant> {
  const org = await f.organization();
  await f.topUp(org.id, "CREDIT", "100");
  const projects = [await f.project(viewer, org.id), await f.project(viewer, org.id)];
  const { route, channels } = await f.route(viewer, org.id, `gpt-tenancy-${org.id.slice(0, 8)}`, [
    { name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: "gpt-tenancy-upstream", price: ["1", "2"] },
  ]);
  const channelId = channels[0]!.id;
  const price = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId } });
  const keys: Tenant["keys"] = [];
  for (const project of projects) {
    for (let i = 0; i < 2; i++) {
      const { apiKey } = await f.apiKey(viewer, project.id, { dailyCap: "5" });
      keys.push(apiKey);
      await fakeReceipt(apiKey, route.id, channelId, price.id, 10n);
      await recordFailure(
        {
          requestId: randomUUID(),
          organizationId: org.id,
          keyId: apiKey.id,
          projectId: project.id,
          runId: null,
          routeId: route.id,
          channelId,
          requestedModel: "gpt-tenancy",
          endpoint: "/v1/chat/completions",
          cause: "UPSTREAM_ERROR",
          capScope: null,
          message: "The upstream failed after 1 attempt(s): status 500.",
          httpStatus: 502,
          upstreamStatus: 500,
          attempts: 1,
          bucket: "CREDIT",
          currency: "USD",
          promptTokens: 0,
          completionTokens: 0,
          priceSnapshotId: price.id,
          charge: 0n,
          estimated: false,
        },
        null,
      );
      await startRun(viewer, { keyId: apiKey.id, mode: "QUICK" });
    }
  }
  await setAlertWebhook(viewer, { organizationId: org.id, url: "http://127.0.0.1:9/hook", secret: "webhook-secret-0123456789" });
  await token("ORG_ADMIN", org.id);
  await token("PROJECT_VIEWER", org.id, projects[1]!.id);
  return { org, projects, keys, route, channelId };
}

const viewers: Array<{ role: AdminRole; secret: string }> = [];

beforeAll(async () => {
  database = await createTestDatabase();
  const platform = await f.platformViewer();
  tenants.push(await tenant(platform), await tenant(platform));
  const [a] = tenants;
  viewers.push(
    { role: "PLATFORM_ADMIN", secret: await token("PLATFORM_ADMIN") },
    { role: "ORG_ADMIN", secret: await token("ORG_ADMIN", a!.org.id) },
    { role: "ORG_VIEWER", secret: await token("ORG_VIEWER", a!.org.id) },
    { role: "PROJECT_VIEWER", secret: await token("PROJECT_VIEWER", a!.org.id, a!.projects[0]!.id) },
  );
  server = await startTestServer();
});
afterAll(async () => {
  await server?.close();
  await database.dispose();
});

/** Every id (and request id) of rows the role may not read: the other organization's, and for a project viewer its sibling project's. */
async function foreignIds(
  role: AdminRole,
): Promise<{ organizationId: string[]; projectId: string[]; keyId: string[]; routeId: string[]; channelId: string[]; runId: string[]; requestId: string[]; all: string[] }> {
  const [a, b] = tenants as [Tenant, Tenant];
  if (role === "PLATFORM_ADMIN") return { organizationId: [], projectId: [], keyId: [], routeId: [], channelId: [], runId: [], requestId: [], all: [] };
  const p = database.prisma;
  const orgB = { organizationId: b.org.id };
  const sibling = role === "PROJECT_VIEWER" ? [a.projects[1]!.id] : [];
  // The sibling project's rows first: each case asks about the first two ids of a kind, so a project
  // viewer is asked about its own organization's other project and about the other organization.
  const projectIds = [...sibling, ...b.projects.map((x) => x.id)];
  const byProject = async <T>(find: (projectId: string) => Promise<T[]>) => (await Promise.all(projectIds.map(find))).flat();
  const keys = await byProject((projectId) => p.apiKey.findMany({ where: { projectId }, select: { id: true } }));
  const runs = await byProject((projectId) => p.run.findMany({ where: { projectId }, select: { id: true } }));
  const receipts = await byProject((projectId) => p.receipt.findMany({ where: { projectId }, select: { id: true, requestId: true } }));
  const failures = await byProject((projectId) => p.failedRequest.findMany({ where: { projectId }, select: { id: true, requestId: true } }));
  const rest = (
    await Promise.all([
      p.ledgerEntry.findMany({ where: orgB, select: { id: true } }),
      p.adminToken.findMany({ where: orgB, select: { id: true } }),
      p.auditEntry.findMany({ where: orgB, select: { id: true } }),
      p.priceSnapshot.findMany({ where: orgB, select: { id: true } }),
      p.alertWebhook.findMany({ where: orgB, select: { id: true } }),
      p.wallet.findMany({ where: orgB, select: { id: true } }),
      p.walletBucket.findMany({ where: orgB, select: { id: true } }),
    ])
  ).flat();
  const ids = {
    organizationId: [b.org.id],
    projectId: projectIds,
    keyId: keys.map((k) => k.id),
    routeId: [b.route.id],
    channelId: [b.channelId],
    runId: runs.map((r) => r.id),
    requestId: [receipts[0]!, failures[0]!, ...receipts.slice(1), ...failures.slice(1)].map((r) => r.requestId),
  };
  return { ...ids, all: [...Object.values(ids).flat(), ...receipts.map((r) => r.id), ...failures.map((r) => r.id), ...rest.map((r) => r.id)] };
}

/** The response as text, with cursors decoded: a cursor is the row id in base64. */
function visibleText(value: unknown): string {
  const parts: string[] = [JSON.stringify(value)];
  const walk = (v: unknown, key = "") => {
    if (typeof v === "string" && /cursor$/i.test(key)) parts.push(Buffer.from(v, "base64").toString("utf8"));
    else if (v && typeof v === "object") for (const [k, child] of Object.entries(v)) walk(child, k);
  };
  walk(value);
  return parts.join("\n");
}

const CONNECTION = `totalCount pageInfo { startCursor endCursor } edges { cursor node { id } }`;
const REQUEST_NODE = `totalCount pageInfo { startCursor endCursor } edges { cursor node { id requestId key { id } } }`;
const TODAY = { from: new Date(Date.now() - 86_400_000).toISOString(), to: new Date(Date.now() + 86_400_000).toISOString() };

type IdKind = "organizationId" | "projectId" | "keyId" | "routeId" | "channelId" | "runId" | "requestId";
/** Root query fields and the id arguments that narrow them: every one is asked with foreign ids. */
const CASES: Record<string, { query: string; args: Array<{ variable: IdKind; type: string }>; base?: Record<string, unknown> }> = {
  adminTokens: { query: `query($organizationId: ID) { adminTokens(organizationId: $organizationId, includeRevoked: true) { ${CONNECTION} } }`, args: [{ variable: "organizationId", type: "ID" }] },
  alertWebhook: { query: `query($organizationId: ID) { alertWebhook(organizationId: $organizationId) { id url } }`, args: [{ variable: "organizationId", type: "ID" }] },
  apiKey: { query: `query($keyId: ID!) { apiKey(id: $keyId) { id project { id } } }`, args: [{ variable: "keyId", type: "ID!" }] },
  apiKeys: { query: `query($projectId: ID) { apiKeys(projectId: $projectId) { ${CONNECTION} } }`, args: [{ variable: "projectId", type: "ID" }] },
  auditEntries: {
    query: `query($keyId: ID, $projectId: ID) { a: auditEntries(targetId: $keyId) { ${CONNECTION} } b: auditEntries(targetId: $projectId) { ${CONNECTION} } }`,
    args: [
      { variable: "keyId", type: "ID" },
      { variable: "projectId", type: "ID" },
    ],
  },
  budgetAlerts: {
    query: `query($organizationId: ID, $projectId: ID) { budgetAlerts(filter: { organizationId: $organizationId, projectId: $projectId }) { ${CONNECTION} } }`,
    args: [
      { variable: "organizationId", type: "ID" },
      { variable: "projectId", type: "ID" },
    ],
  },
  channelHealthEvents: {
    query: `query($organizationId: ID, $routeId: ID, $channelId: ID) { channelHealthEvents(filter: { organizationId: $organizationId, routeId: $routeId, channelId: $channelId }) { ${CONNECTION} } }`,
    args: ["organizationId", "routeId", "channelId"].map((v) => ({ variable: v as IdKind, type: "ID" })),
  },
  lowBalanceAlerts: { query: `query($organizationId: ID) { lowBalanceAlerts(filter: { organizationId: $organizationId }) { ${CONNECTION} } }`, args: [{ variable: "organizationId", type: "ID" }] },
  node: { query: `query($keyId: ID!) { node(id: $keyId) { __typename id ... on ApiKey { project { id } } } }`, args: [{ variable: "keyId", type: "ID!" }] },
  nodes: { query: `query($projectId: ID!) { nodes(ids: [$projectId]) { __typename id } }`, args: [{ variable: "projectId", type: "ID!" }] },
  estimateRun: { query: `query($keyId: ID!) { estimateRun(input: { keyId: $keyId, model: "gpt-tenancy", mode: QUICK }) { __typename } }`, args: [{ variable: "keyId", type: "ID!" }] },
  failedRequests: {
    query: `query($keyId: ID, $projectId: ID, $routeId: ID, $runId: ID, $requestId: String) { failedRequests(filter: { keyId: $keyId, projectId: $projectId, routeId: $routeId, runId: $runId, requestId: $requestId }) { ${REQUEST_NODE} } }`,
    args: ["keyId", "projectId", "routeId", "runId", "requestId"].map((v) => ({ variable: v as IdKind, type: v === "requestId" ? "String" : "ID" })),
  },
  ledgerEntries: {
    query: `query($organizationId: ID, $keyId: ID, $projectId: ID, $routeId: ID, $runId: ID) { ledgerEntries(organizationId: $organizationId, keyId: $keyId, projectId: $projectId, routeId: $routeId, runId: $runId) { ${CONNECTION} } }`,
    args: ["organizationId", "keyId", "projectId", "routeId", "runId"].map((v) => ({ variable: v as IdKind, type: "ID" })),
  },
  organizations: { query: `{ organizations { id projects { ${CONNECTION} } } }`, args: [] },
  priceSnapshots: {
    query: `query($channelId: ID, $routeId: ID) { priceSnapshots(channelId: $channelId, routeId: $routeId) { ${CONNECTION} } }`,
    args: [
      { variable: "channelId", type: "ID" },
      { variable: "routeId", type: "ID" },
    ],
  },
  project: { query: `query($projectId: ID!) { project(id: $projectId) { id apiKeys { ${CONNECTION} } } }`, args: [{ variable: "projectId", type: "ID!" }] },
  projects: { query: `{ projects { ${CONNECTION} } }`, args: [] },
  receipts: {
    query: `query($keyId: ID, $projectId: ID, $routeId: ID, $runId: ID, $requestId: String) { receipts(filter: { keyId: $keyId, projectId: $projectId, routeId: $routeId, runId: $runId, requestId: $requestId }) { ${REQUEST_NODE} } }`,
    args: ["keyId", "projectId", "routeId", "runId", "requestId"].map((v) => ({ variable: v as IdKind, type: v === "requestId" ? "String" : "ID" })),
  },
  route: { query: `query($routeId: ID!) { route(id: $routeId) { id channels { id } } }`, args: [{ variable: "routeId", type: "ID!" }] },
  routes: { query: `{ routes { id channels { id } } }`, args: [] },
  run: { query: `query($runId: ID!) { run(id: $runId) { id totals { requests } ledgerEntries { ${CONNECTION} } } }`, args: [{ variable: "runId", type: "ID!" }] },
  runs: {
    query: `query($organizationId: ID, $keyId: ID, $projectId: ID) { runs(filter: { organizationId: $organizationId, keyId: $keyId, projectId: $projectId }) { ${CONNECTION} } }`,
    args: ["organizationId", "keyId", "projectId"].map((v) => ({ variable: v as IdKind, type: "ID" })),
  },
  spendSeries: {
    query: `query($organizationId: ID, $keyId: ID, $projectId: ID) { spendSeries(input: { from: "${TODAY.from}", to: "${TODAY.to}", interval: DAY, groupBy: KEY, organizationId: $organizationId, keyId: $keyId, projectId: $projectId }) { group requests spend { amount } } }`,
    args: ["organizationId", "keyId", "projectId"].map((v) => ({ variable: v as IdKind, type: "ID" })),
  },
  spendAnalytics: {
    query: `query($organizationId: ID, $keyId: [ID!], $projectId: [ID!], $routeId: [ID!], $channelId: [ID!], $runId: [ID!]) {
      spendAnalytics(input: { from: "${TODAY.from}", to: "${TODAY.to}", interval: HOUR, groupBy: [KEY, PROJECT, ROUTE, CHANNEL, RUN], organizationId: $organizationId,
                              filter: { keyIds: $keyId, projectIds: $projectId, routeIds: $routeId, channelIds: $channelId, runIds: $runId } }) {
        groupCount totals { requests failedRequests spend { amount { amount } } }
        series { group { key { id } project { id } route { id } channel { id } run { id } } points { requests failedRequests } } } }`,
    args: [{ variable: "organizationId", type: "ID" }, ...["keyId", "projectId", "routeId", "channelId", "runId"].map((v) => ({ variable: v as IdKind, type: "[ID!]" }))],
  },
  wallet: {
    query: `query($organizationId: ID) { wallet(organizationId: $organizationId) { id organization { id } balances { bucket balance { amount } } } }`,
    args: [{ variable: "organizationId", type: "ID" }],
  },
};

/** Fields a platform token may find empty for another organization's ids: no audit / ledger rows name them, and spendSeries / spendAnalytics are asked in the default organization. */
const PLATFORM_MAY_FIND_NOTHING = new Set(["auditEntries", "ledgerEntries", "spendSeries", "spendAnalytics", "budgetAlerts", "channelHealthEvents", "lowBalanceAlerts"]);

/** How an out-of-scope read may answer (the field conventions already used); anything else is a bug. */
const OK_CODES = /^(FORBIDDEN|NOT_FOUND)$/;

const normalize = (value: unknown, ids: string[]) => {
  let text = JSON.stringify(value);
  for (const id of ids) text = text.replaceAll(id, "<ID>");
  return text;
};

describe("every root query field, per role", () => {
  it("the cases cover every root query field", () => {
    expect(Object.keys(CASES).sort()).toEqual(Object.keys(schema.getQueryType()!.getFields()).sort());
  });

  for (const role of ["PLATFORM_ADMIN", "ORG_ADMIN", "ORG_VIEWER", "PROJECT_VIEWER"] as const) {
    it(`${role}: a foreign id answers as an unknown one, and no answer carries a foreign id`, async () => {
      const { secret } = viewers.find((v) => v.role === role)!;
      const foreign = await foreignIds(role);
      const [, b] = tenants as [Tenant, Tenant];
      const mismatches: string[] = [];
      let asked = 0;
      for (const [field, c] of Object.entries(CASES)) {
        // Unfiltered (where an argument is optional): nothing foreign in it.
        if (!c.args.some((a) => a.type.endsWith("!"))) {
          const plain = await gql(secret, c.query, {});
          for (const e of plain.errors ?? []) if (!OK_CODES.test(e.extensions?.code ?? "")) mismatches.push(`${field} (no arguments): ${e.extensions?.code} ${e.message}`);
          const text = visibleText(plain);
          for (const id of foreign.all) if (text.includes(id)) mismatches.push(`${field} (no arguments) shows ${id}`);
        }
        for (const arg of c.args) {
          // Platform tokens see everything: the other organization's ids are asked to prove they find rows.
          const ids =
            role === "PLATFORM_ADMIN"
              ? { keyId: b.keys.map((k) => k.id), projectId: b.projects.map((p) => p.id), organizationId: [b.org.id], routeId: [b.route.id], channelId: [b.channelId], runId: [], requestId: [] }[
                  arg.variable
                ]
              : foreign[arg.variable];
          for (const id of ids.slice(0, 2)) {
            const unknown = randomUUID();
            const real = await gql(secret, c.query, { [arg.variable]: id });
            const none = await gql(secret, c.query, { [arg.variable]: unknown });
            asked++;
            for (const e of [...(real.errors ?? []), ...(none.errors ?? [])])
              if (!OK_CODES.test(e.extensions?.code ?? "")) mismatches.push(`${field}(${arg.variable}): ${e.extensions?.code} ${e.message}`);
            if (role === "PLATFORM_ADMIN") {
              // Non-vacuous: the platform token finds what the others must not.
              if (normalize(real, [id]) === normalize(none, [unknown]) && !PLATFORM_MAY_FIND_NOTHING.has(field))
                mismatches.push(`platform: ${field}(${arg.variable}) found nothing for an existing id`);
              continue;
            }
            if (normalize(real, [id]) !== normalize(none, [unknown]))
              mismatches.push(`${field}(${arg.variable}: ${id}) ${normalize(real, [id]).slice(0, 160)} ≠ unknown id ${normalize(none, [unknown]).slice(0, 160)}`);
            const text = visibleText(real);
            for (const other of foreign.all) if (other !== id && text.includes(other)) mismatches.push(`${field}(${arg.variable}) shows ${other}`);
          }
        }
      }
      expect(mismatches).toEqual([]);
      expect(asked).toBeGreaterThan(role === "PLATFORM_ADMIN" ? 15 : 25);
    });
  }

  it("a project viewer still sees its own project's keys, and all of them", async () => {
    const [a] = tenants as [Tenant];
    const { secret } = viewers.find((v) => v.role === "PROJECT_VIEWER")!;
    const own = await gql(secret, `query($p: ID) { apiKeys(projectId: $p) { totalCount } }`, { p: a.projects[0]!.id });
    expect(own.data).toEqual({ apiKeys: { totalCount: 2 } });
    const all = await gql(secret, `{ apiKeys { totalCount } }`);
    expect(all.data).toEqual({ apiKeys: { totalCount: 2 } });
  });
});

describe("CSV exports, per role", () => {
  const get = async (secret: string, kind: string, params: Record<string, string>) => {
    const response = await fetch(`${server.url}/exports/${kind}.csv?${new URLSearchParams(params)}`, { headers: { authorization: `Bearer ${secret}` } });
    return { status: response.status, body: await response.text() };
  };

  for (const role of ["ORG_ADMIN", "ORG_VIEWER", "PROJECT_VIEWER"] as const) {
    it(`${role}: a foreign filter id answers as an unknown one; no export carries a foreign id`, async () => {
      const { secret } = viewers.find((v) => v.role === role)!;
      const foreign = await foreignIds(role);
      const mismatches: string[] = [];
      for (const kind of ["receipts", "failed-requests", "ledger"]) {
        const plain = await get(secret, kind, {});
        for (const id of foreign.all) if (plain.body.includes(id)) mismatches.push(`${kind}.csv shows ${id}`);
        for (const param of ["keyId", "projectId", "routeId", "organizationId"] as const) {
          for (const id of foreign[param].slice(0, 2)) {
            const unknown = randomUUID();
            const real = await get(secret, kind, { [param]: id });
            const none = await get(secret, kind, { [param]: unknown });
            expect(real.status).not.toBe(500);
            if (normalize(real, [id]) !== normalize(none, [unknown]))
              mismatches.push(`${kind}.csv?${param}=${id}: ${real.status} ${real.body.slice(0, 200)} ≠ ${none.status} ${none.body.slice(0, 200)}`);
          }
        }
      }
      expect(mismatches).toEqual([]);
    });
  }
});
