// Admin tokens (issue 8, point 12): listed, minted with the secret shown once, revoked at once
// (HTTP and open WebSockets), expired tokens refused, organization admins confined to their
// organization, and a changed TOKENGATE_ADMIN_TOKEN revokes the previous bootstrap token.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { codes, gql, gqlOk, startTestServer, token, wsClient, wsExecute } from "./support/graphql.ts";
import { bootstrapAdmin } from "../src/auth/index.ts";
import { events } from "./support/services.ts";
import { sha256 } from "../src/secrets.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let server: RunningServer;
let a: Awaited<ReturnType<typeof f.world>>;
let b: Awaited<ReturnType<typeof f.world>>;
const t: Record<string, string> = {};

beforeAll(async () => {
  database = await createTestDatabase();
  a = await f.world();
  b = await f.world();
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

const CREATE = `mutation($input: CreateAdminTokenInput!) {
  createAdminToken(input: $input) { secret adminToken { id name role organizationId projectId expiresAt revokedAt lastUsedAt } } }`;
const REVOKE = `mutation($id: ID!) { revokeAdminToken(id: $id) { id revokedAt } }`;
const LIST = `query($all: Boolean) { adminTokens(includeRevoked: $all) { totalCount edges { node { id name role organizationId revokedAt lastUsedAt } } } }`;
type Created = { createAdminToken: { secret: string; adminToken: { id: string; name: string; role: string; organizationId: string | null; revokedAt: string | null; lastUsedAt: string | null } } };

describe("createAdminToken", () => {
  it("returns the secret once, stores only its hash, audits, and the token works", async () => {
    const r = await gqlOk<Created>(t.adminA!, CREATE, { input: { name: "ci reader", role: "ORG_VIEWER" } });
    const { secret, adminToken } = r.createAdminToken;
    expect(secret).toMatch(/^tgadm_[0-9A-Za-z]{43}$/);
    expect(adminToken).toMatchObject({ name: "ci reader", role: "ORG_VIEWER", organizationId: a.org.id, revokedAt: null, lastUsedAt: null });
    const row = await database.prisma.adminToken.findUniqueOrThrow({ where: { id: adminToken.id } });
    expect(row.tokenHash).toBe(sha256(secret));
    expect(JSON.stringify(row)).not.toContain(secret);
    const audit = await database.prisma.auditEntry.findFirstOrThrow({ where: { targetId: adminToken.id, action: "createAdminToken" } });
    expect(JSON.stringify(audit)).not.toContain(secret);
    expect(JSON.stringify(audit)).not.toContain(row.tokenHash);

    const used = await gqlOk(secret, `{ apiKeys { totalCount } }`);
    expect(used.apiKeys.totalCount).toBe(1);
    const listed = await gqlOk(t.adminA!, LIST);
    const node = listed.adminTokens.edges.find((e: { node: { id: string } }) => e.node.id === adminToken.id).node;
    expect(node.lastUsedAt).not.toBeNull();
    // The secret is never readable again.
    expect(JSON.stringify(listed)).not.toContain(secret);
  });

  it("organization admins cannot mint platform tokens nor tokens of another organization; viewers cannot mint", async () => {
    const platform = await gql(t.adminA!, CREATE, { input: { name: "escalate", role: "PLATFORM_ADMIN" } });
    expect(codes(platform)).toEqual(["FORBIDDEN"]);
    const foreign = await gql(t.adminA!, CREATE, { input: { name: "x", role: "ORG_ADMIN", organizationId: b.org.id } });
    expect(codes(foreign)).toEqual(["NOT_FOUND"]);
    const foreignProject = await gql(t.adminA!, CREATE, { input: { name: "x", role: "PROJECT_VIEWER", projectId: b.project.id } });
    expect(codes(foreignProject)).toEqual(["NOT_FOUND"]);
    for (const viewer of [t.viewerA!, t.projectViewerA!]) {
      expect(codes(await gql(viewer, CREATE, { input: { name: "x", role: "ORG_VIEWER" } }))).toEqual(["FORBIDDEN"]);
    }
    const past = await gql(t.adminA!, CREATE, { input: { name: "x", role: "ORG_VIEWER", expiresAt: new Date(Date.now() - 1000).toISOString() } });
    expect(past.errors![0]!.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "expiresAt" });
    expect(await database.prisma.adminToken.count({ where: { name: { in: ["escalate", "x"] } } })).toBe(0);

    const platformMade = await gqlOk<Created>(t.platform!, CREATE, { input: { name: "second platform", role: "PLATFORM_ADMIN" } });
    expect(platformMade.createAdminToken.adminToken).toMatchObject({ role: "PLATFORM_ADMIN", organizationId: null });
  });

  it("organizationId defaults as API.md says: a platform token's ORG_VIEWER / ORG_ADMIN token goes to the default organization (issue 14, point 12)", async () => {
    const defaultOrg = await f.organization("default");
    for (const role of ["ORG_VIEWER", "ORG_ADMIN"] as const) {
      const r = await gqlOk<Created>(t.platform!, CREATE, { input: { name: `default ${role}`, role } });
      expect(r.createAdminToken.adminToken).toMatchObject({ role, organizationId: defaultOrg.id });
      // It works, and within that organization.
      const wallet = await gqlOk(r.createAdminToken.secret, `{ wallet { organization { id } } }`);
      expect(wallet.wallet.organization.id).toBe(defaultOrg.id);
    }
    // Named, it is that organization; an organization admin's default stays its own.
    const named = await gqlOk<Created>(t.platform!, CREATE, { input: { name: "named", role: "ORG_VIEWER", organizationId: b.org.id } });
    expect(named.createAdminToken.adminToken.organizationId).toBe(b.org.id);
    const own = await gqlOk<Created>(t.adminA!, CREATE, { input: { name: "own default", role: "ORG_VIEWER" } });
    expect(own.createAdminToken.adminToken.organizationId).toBe(a.org.id);
    // A project token still needs its project; an unknown organization is NOT_FOUND.
    const noProject = await gql(t.platform!, CREATE, { input: { name: "x", role: "PROJECT_VIEWER" } });
    expect(noProject.errors![0]!.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "projectId" });
    expect(codes(await gql(t.platform!, CREATE, { input: { name: "x", role: "ORG_VIEWER", organizationId: "00000000-0000-0000-0000-000000000000" } }))).toEqual(["NOT_FOUND"]);
  });

  it("an expired token is refused (UNAUTHENTICATED) from its expiry on", async () => {
    const expiresAt = new Date(Date.now() + 5000).toISOString();
    const r = await gqlOk<Created>(t.adminA!, CREATE, { input: { name: "short-lived", role: "ORG_ADMIN", expiresAt } });
    const secret = r.createAdminToken.secret;
    expect((await gql(secret, `{ projects { totalCount } }`)).errors).toBeUndefined();
    // An open socket of that token (a live subscription keeps it open) is closed when it expires.
    let closedWith = 0;
    const client = wsClient(server, secret, (code) => (closedWith = code));
    client.subscribe({ query: "subscription { receiptCreated { id } }" }, { next: () => {}, error: () => {}, complete: () => {} });
    expect((await wsExecute(client, `{ projects { totalCount } }`)).errors).toBeUndefined();
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, Date.parse(expiresAt) - Date.now()) + 300));
    expect(codes(await gql(secret, `{ projects { totalCount } }`))).toEqual(["UNAUTHENTICATED"]);
    expect(closedWith).toBe(4403);
    await client.dispose();
  });
});

describe("adminTokens and revokeAdminToken", () => {
  it("lists only what the caller may manage", async () => {
    const own = await gqlOk(t.adminA!, LIST);
    const orgs = new Set(own.adminTokens.edges.map((e: { node: { organizationId: string | null } }) => e.node.organizationId));
    expect([...orgs]).toEqual([a.org.id]);
    expect(own.adminTokens.totalCount).toBe(own.adminTokens.edges.length);
    const all = await gqlOk(t.platform!, LIST);
    expect(all.adminTokens.edges.some((e: { node: { role: string } }) => e.node.role === "PLATFORM_ADMIN")).toBe(true);
    expect(codes(await gql(t.viewerA!, LIST))).toEqual(["FORBIDDEN"]);
  });

  it("revocation refuses the token at once, over HTTP and on its open sockets, and is audited", async () => {
    const r = await gqlOk<Created>(t.adminA!, CREATE, { input: { name: "to revoke", role: "ORG_ADMIN" } });
    const { secret, adminToken } = r.createAdminToken;
    let closedWith = 0;
    const client = wsClient(server, secret, (code) => (closedWith = code));
    client.subscribe({ query: "subscription { receiptCreated { id } }" }, { next: () => {}, error: () => {}, complete: () => {} });
    expect((await wsExecute(client, `{ projects { totalCount } }`)).errors).toBeUndefined();

    expect(codes(await gql(t.adminB!, REVOKE, { id: adminToken.id }))).toEqual(["NOT_FOUND"]);
    expect(codes(await gql(t.viewerA!, REVOKE, { id: adminToken.id }))).toEqual(["FORBIDDEN"]);
    const revoked = await gqlOk(t.adminA!, REVOKE, { id: adminToken.id });
    expect(revoked.revokeAdminToken.revokedAt).not.toBeNull();
    expect(codes(await gql(secret, `{ projects { totalCount } }`))).toEqual(["UNAUTHENTICATED"]);
    const deadline = Date.now() + 5000;
    while (closedWith === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(closedWith).toBe(4403);
    await client.dispose();
    expect(await database.prisma.auditEntry.count({ where: { targetId: adminToken.id, action: "revokeAdminToken" } })).toBe(1);
    // Revoking again changes nothing; revoked tokens are listed only on request.
    expect((await gqlOk(t.adminA!, REVOKE, { id: adminToken.id })).revokeAdminToken.revokedAt).toBe(revoked.revokeAdminToken.revokedAt);
    const ids = (r: { adminTokens: { edges: Array<{ node: { id: string } }> } }) => r.adminTokens.edges.map((e) => e.node.id);
    expect(ids(await gqlOk(t.adminA!, LIST))).not.toContain(adminToken.id);
    expect(ids(await gqlOk(t.adminA!, LIST, { all: true }))).toContain(adminToken.id);
  });

  it("an SSE subscription of a revoked token delivers nothing more: the stream ends", async () => {
    const r = await gqlOk<Created>(t.platform!, CREATE, { input: { name: "sse watcher", role: "PLATFORM_ADMIN" } });
    const { secret, adminToken } = r.createAdminToken;
    const response = await fetch(`${server.url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream", authorization: `Bearer ${secret}` },
      body: JSON.stringify({ query: "subscription { routeHealth { channelId state } }" }),
    });
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let text = "";
    const readUntil = async (predicate: () => boolean, ms: number) => {
      const deadline = Date.now() + ms;
      while (!predicate() && Date.now() < deadline) {
        const chunk = await Promise.race([reader.read(), new Promise<null>((resolve) => setTimeout(() => resolve(null), 100))]);
        if (chunk === null) continue;
        if (chunk.done) return true;
        text += decoder.decode(chunk.value, { stream: true });
      }
      return false;
    };
    const health = (channelId: string) => ({
      organizationId: a.org.id,
      routeId: "r",
      channelId,
      state: "DOWN" as const,
      previousState: "HEALTHY" as const,
      successRate: 0,
      p50LatencyMs: 1,
      at: new Date().toISOString(),
    });
    await new Promise((resolve) => setTimeout(resolve, 300)); // the subscription is listening
    events.publish("routeHealth", health("before-revoke"));
    await readUntil(() => text.includes("before-revoke"), 5000);
    expect(text).toContain("before-revoke");
    await gqlOk(t.platform!, REVOKE, { id: adminToken.id });
    events.publish("routeHealth", health("after-revoke"));
    const ended = await readUntil(() => false, 3000);
    expect(text).not.toContain("after-revoke");
    expect(ended).toBe(true);
  });

  it("organization admins cannot see or revoke platform tokens", async () => {
    const platformRow = await database.prisma.adminToken.findFirstOrThrow({ where: { role: "PLATFORM_ADMIN", revokedAt: null } });
    expect(codes(await gql(t.adminA!, REVOKE, { id: platformRow.id }))).toEqual(["NOT_FOUND"]);
    expect((await database.prisma.adminToken.findUniqueOrThrow({ where: { id: platformRow.id } })).revokedAt).toBeNull();
  });
});

describe("TOKENGATE_ADMIN_TOKEN", () => {
  it("changing it revokes the previous bootstrap token at start-up; other tokens stay", async () => {
    const first = "tgadm_first-configured-token-0123456789abcdef";
    const second = "tgadm_second-configured-token-0123456789abcdef";
    await bootstrapAdmin(first);
    expect((await gql(first, `{ projects { totalCount } }`)).errors).toBeUndefined();
    expect((await bootstrapAdmin(first)).revoked).toBe(0); // a restart with the same value changes nothing
    const { revoked } = await bootstrapAdmin(second);
    expect(revoked).toBeGreaterThanOrEqual(1);
    expect(codes(await gql(first, `{ projects { totalCount } }`))).toEqual(["UNAUTHENTICATED"]);
    expect((await gql(second, `{ projects { totalCount } }`)).errors).toBeUndefined();
    expect((await gql(t.platform!, `{ projects { totalCount } }`)).errors).toBeUndefined();
  });
});
