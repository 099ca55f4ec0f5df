// Tenancy and roles, over HTTP and over WebSocket: nobody reads or changes what is not theirs.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { codes, gql, startTestServer, token, wsClient, wsExecute } from "./support/graphql.ts";
import { fakeReceipt } from "./support/records.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let server: RunningServer;
const t: Record<string, string> = {};
let a: Awaited<ReturnType<typeof f.world>>;
let b: Awaited<ReturnType<typeof f.world>>;

beforeAll(async () => {
  database = await createTestDatabase();
  a = await f.world({ credit: "10" });
  b = await f.world({ credit: "20" });
  const { route, channels } = await f.route(a.viewer, a.org.id, "gpt-test", [{ name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: "gpt-test-upstream", price: ["1", "2"] }]);
  const price = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: channels[0]!.id } });
  await fakeReceipt(a.key, route.id, channels[0]!.id, price.id);
  t.platform = await token("PLATFORM_ADMIN");
  t.adminA = await token("ORG_ADMIN", a.org.id);
  t.adminB = await token("ORG_ADMIN", b.org.id);
  t.viewerA = await token("ORG_VIEWER", a.org.id);
  t.projectViewerA = await token("PROJECT_VIEWER", a.org.id, a.project.id);
  server = await startTestServer();
});
afterAll(async () => {
  await server?.close();
  await database.dispose();
});

const KEY_BY_ID = `query($id: ID!) { apiKey(id: $id) { id name } }`;

describe("over HTTP", () => {
  it("refuses every field without a token: UNAUTHENTICATED", async () => {
    expect(codes(await gql(null, `{ projects { totalCount } }`))).toEqual(["UNAUTHENTICATED"]);
    expect(codes(await gql("tgadm_not-a-real-token", `{ wallet { id } }`))).toEqual(["UNAUTHENTICATED"]);
    const mutation = await gql(null, `mutation { pauseKey(id: "${a.key.id}") { status } }`);
    expect(codes(mutation)).toEqual(["UNAUTHENTICATED"]);
    expect((await database.prisma.apiKey.findUniqueOrThrow({ where: { id: a.key.id } })).status).toBe("ACTIVE");
  });

  it("an organization token lists only its own keys, receipts and ledger", async () => {
    const r = await gql(
      t.adminB!,
      `{
      apiKeys { totalCount edges { node { id } } }
      receipts { totalCount }
      ledgerEntries { totalCount edges { node { amount { amount currency } } } }
      wallet { balances { bucket balance { amount } } }
    }`,
    );
    expect(r.errors).toBeUndefined();
    expect(r.data!.apiKeys.edges.map((e: { node: { id: string } }) => e.node.id)).toEqual([b.key.id]);
    expect(r.data!.receipts.totalCount).toBe(0);
    expect(r.data!.ledgerEntries.edges).toEqual([{ node: { amount: { amount: "20.000000", currency: "USD" } } }]);
    expect(r.data!.wallet.balances[0]).toEqual({ bucket: "CREDIT", balance: { amount: "20.000000" } });
  });

  it("an organization token cannot read another organization's rows by id or by filter", async () => {
    expect(codes(await gql(t.adminB!, KEY_BY_ID, { id: a.key.id }))).toEqual(["NOT_FOUND"]);
    expect(codes(await gql(t.adminB!, `query($id: ID!) { project(id: $id) { id } }`, { id: a.project.id }))).toEqual(["NOT_FOUND"]);
    expect(codes(await gql(t.adminB!, `query($o: ID) { wallet(organizationId: $o) { id } }`, { o: a.org.id }))).toEqual(["NOT_FOUND"]);
    const filtered = await gql(t.adminB!, `query($k: ID) { receipts(filter: { keyId: $k }) { totalCount } }`, { k: a.key.id });
    expect(filtered.data!.receipts.totalCount).toBe(0);
    const ledger = await gql(t.adminB!, `query($o: ID) { ledgerEntries(organizationId: $o) { totalCount } }`, { o: a.org.id });
    expect(ledger.data!.ledgerEntries.totalCount).toBe(1); // its own single top-up, never A's
  });

  it("the owner and the platform see the same rows", async () => {
    const own = await gql(t.adminA!, `query($id: ID!) { apiKey(id: $id) { id receipts { totalCount } } receipts { totalCount } }`, { id: a.key.id });
    expect(own.errors).toBeUndefined();
    expect(own.data!.apiKey.receipts.totalCount).toBe(1);
    const platform = await gql(t.platform!, `{ apiKeys { totalCount } organizations { id } }`);
    expect(platform.data!.apiKeys.totalCount).toBeGreaterThanOrEqual(2);
  });

  it("a project viewer sees its project only, and not through nested relations either", async () => {
    const own = await gql(t.projectViewerA!, `{ apiKeys { edges { node { id } } } receipts { totalCount } }`);
    expect(own.errors).toBeUndefined();
    expect(own.data!.apiKeys.edges).toEqual([{ node: { id: a.key.id } }]);
    expect(own.data!.receipts.totalCount).toBe(1);
    const nested = await gql(t.projectViewerA!, `query($id: ID!) { apiKey(id: $id) { project { organization { projects { edges { node { id } } } } } } }`, { id: a.key.id });
    expect(codes(nested)).toContain("FORBIDDEN");
    expect(codes(await gql(t.projectViewerA!, `{ ledgerEntries { totalCount } }`))).toEqual(["FORBIDDEN"]);
  });

  it("viewer tokens cannot run mutations, and nothing changes", async () => {
    for (const viewer of [t.viewerA!, t.projectViewerA!]) {
      const r = await gql(viewer, `mutation($id: ID!) { pauseKey(id: $id) { status } }`, { id: a.key.id });
      expect(codes(r)).toEqual(["FORBIDDEN"]);
    }
    // Another organization's key does not exist for this token: NOT_FOUND, as the query says.
    expect(codes(await gql(t.adminB!, `mutation($id: ID!) { pauseKey(id: $id) { status } }`, { id: a.key.id }))).toEqual(["NOT_FOUND"]);
    expect((await database.prisma.apiKey.findUniqueOrThrow({ where: { id: a.key.id } })).status).toBe("ACTIVE");
    expect(await database.prisma.auditEntry.count({ where: { targetId: a.key.id, action: "pauseKey" } })).toBe(0);
  });

  it("only platform admins move balances", async () => {
    const r = await gql(t.adminA!, `mutation { topUp(input: { bucket: CREDIT, amount: "5", idempotencyKey: "x" }) { id } }`);
    expect(codes(r)).toEqual(["FORBIDDEN"]);
  });
});

describe("over WebSocket (graphql-ws)", () => {
  it("closes a connection without a valid token with 4403 Forbidden", async () => {
    for (const secret of [null, "tgadm_wrong"]) {
      let closedWith = 0;
      const client = wsClient(server, secret, (code) => (closedWith = code));
      await expect(wsExecute(client, `{ projects { totalCount } }`)).rejects.toBeDefined();
      expect(closedWith).toBe(4403);
      await client.dispose();
    }
  });

  it("applies the same tenancy and role rules as HTTP", async () => {
    const clientB = wsClient(server, t.adminB!);
    expect(codes(await wsExecute(clientB, KEY_BY_ID, { id: a.key.id }))).toEqual(["NOT_FOUND"]);
    const list = await wsExecute(clientB, `{ apiKeys { edges { node { id } } } }`);
    expect(list.data!.apiKeys.edges).toEqual([{ node: { id: b.key.id } }]);
    await clientB.dispose();

    const viewer = wsClient(server, t.viewerA!);
    const refused = await wsExecute(viewer, `mutation($id: ID!) { revokeKey(id: $id) { status } }`, { id: a.key.id });
    expect(codes(refused)).toEqual(["FORBIDDEN"]);
    await viewer.dispose();
    expect((await database.prisma.apiKey.findUniqueOrThrow({ where: { id: a.key.id } })).status).toBe("ACTIVE");
  });
});
