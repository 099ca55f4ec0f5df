// Admin-surface hardening (issue 8, points 6 and 13): a channel's credential never follows it to a
// new host, internal upstream addresses are for platform admins, other organizations' ids answer
// NOT_FOUND to mutations too, project viewers' estimates hide the wallet and channels, /metrics can
// require a token, and stored credentials are HKDF-keyed and bound to their channel.
import { createCipheriv, createHash, randomBytes } from "node:crypto";
import { lookup } from "node:dns/promises";
import os from "node:os";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import * as f from "./support/fixtures.ts";
import { codes, gql, gqlOk, token } from "./support/graphql.ts";
import { useGatewayHarness } from "./support/gateway.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import { channelCredential, upgradeStoredCredentials } from "../src/routing/index.ts";
import { servicesWith } from "../src/installed.ts";
import { allowPrivateUpstreams } from "./support/services.ts";
import { checkUpstreamHost, isInternalAddress } from "../src/routing/addresses.ts";
import { CredentialCipher } from "../src/secrets.ts";
import { loadConfig } from "../src/config.ts";
import { startServer, type RunningServer } from "../src/server.ts";

const h = useGatewayHarness();
let echo: FakeUpstream;
beforeAll(async () => {
  echo = await startFakeUpstream();
});
afterAll(async () => {
  await echo?.close();
});
afterEach(() => allowPrivateUpstreams(false));

const UPSERT = `mutation($input: UpsertRouteInput!) { upsertRoute(input: $input) { id channels { name } } }`;
const PLATFORM_SECRET = "sk-platform-upstream-secret-do-not-leak";

describe("point 6: moving a channel never carries its credential to the new host", () => {
  it("requires a new apiKey (or an explicit null) when baseUrl changes origin; the echo host never sees the stored secret", async () => {
    const w = await f.world();
    const orgAdmin = await token("ORG_ADMIN", w.org.id);
    const model = "stolen-credential-model";
    await f.route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: h.fake.url, apiKey: PLATFORM_SECRET, upstreamModel: "up-a", price: ["1", "1"] }]);
    allowPrivateUpstreams(true); // the echo server listens on 127.0.0.1

    const moved = { organizationId: w.org.id, model, channels: [{ name: "primary", baseUrl: echo.url, upstreamModel: "up-a" }] };
    for (const who of [orgAdmin, await token("PLATFORM_ADMIN")]) {
      const refused = await gql(who, UPSERT, { input: moved });
      expect(refused.errors![0]!.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "channels[0].apiKey" });
    }
    // Same origin, another path: the credential stays (it goes to the same host).
    const samePath = await gql(orgAdmin, UPSERT, { input: { model, channels: [{ name: "primary", baseUrl: `${h.fake.url}/`, upstreamModel: "up-a" }] } });
    expect(samePath.errors).toBeUndefined();

    const dropped = await gql(orgAdmin, UPSERT, { input: { model, channels: [{ ...moved.channels[0], apiKey: null }] } });
    expect(dropped.errors).toBeUndefined();
    const channel = await h.database.prisma.channel.findFirstOrThrow({ where: { routeId: dropped.data!.upsertRoute.id, name: "primary" } });
    expect(channel.apiKeyCiphertext).toBeNull();
    await h.gw.client(w.secret).chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 10 });
    expect(echo.requests.length).toBeGreaterThan(0);
    expect(JSON.stringify(echo.requests.map((r) => r.headers))).not.toContain(PLATFORM_SECRET);
  });

  it("internal addresses are for platform admins unless TOKENGATE_ALLOW_PRIVATE_UPSTREAMS is set", async () => {
    const w = await f.world();
    const orgAdmin = await token("ORG_ADMIN", w.org.id);
    const internal = [
      "http://127.0.0.1:8080/v1",
      "http://localhost/v1",
      "http://169.254.169.254/latest",
      "http://10.1.2.3/v1",
      "http://192.168.0.10/v1",
      "http://[::1]/v1",
      "http://[::ffff:127.0.0.1]/v1",
      "http://[fd00:ec2::254]/v1",
      "http://2130706433/v1", // 127.0.0.1 in decimal: URL parsing normalises it
      "http://0.0.0.0/v1",
    ];
    for (const baseUrl of internal) {
      const r = await gql(orgAdmin, UPSERT, { input: { model: "internal", channels: [{ name: "c", baseUrl, upstreamModel: "m" }] } });
      expect(r.errors?.[0]?.extensions, baseUrl).toMatchObject({ code: "FORBIDDEN", field: "channels[0].baseUrl" });
    }
    expect(await h.database.prisma.route.count({ where: { organizationId: w.org.id, model: "internal" } })).toBe(0);
    // A host name is resolved: this machine's own name resolves to an internal address here.
    const own = os.hostname();
    const resolved = await lookup(own, { all: true }).catch(() => []);
    if (resolved.some((r) => isInternalAddress(r.address))) {
      const r = await gql(orgAdmin, UPSERT, { input: { model: "internal", channels: [{ name: "c", baseUrl: `http://${own}:1234/v1`, upstreamModel: "m" }] } });
      expect(codes(r)).toEqual(["FORBIDDEN"]);
    }
    // Public addresses and names that do not resolve are fine for an organization admin.
    const pub = await gql(orgAdmin, UPSERT, {
      input: {
        model: "public",
        channels: [
          { name: "c", baseUrl: "https://8.8.8.8/v1", upstreamModel: "m" },
          { name: "d", baseUrl: "https://api.example.test/v1", upstreamModel: "m" },
        ],
      },
    });
    expect(pub.errors).toBeUndefined();
    // Platform admins may; with the setting, every admin may.
    expect(
      (await gql(await token("PLATFORM_ADMIN"), UPSERT, { input: { organizationId: w.org.id, model: "internal", channels: [{ name: "c", baseUrl: internal[0], upstreamModel: "m" }] } })).errors,
    ).toBeUndefined();
    allowPrivateUpstreams(true);
    expect((await gql(orgAdmin, UPSERT, { input: { model: "internal", channels: [{ name: "c", baseUrl: internal[2], upstreamModel: "m" }] } })).errors).toBeUndefined();
    expect(loadConfig({ TOKENGATE_ALLOW_PRIVATE_UPSTREAMS: "1" }).admin.allowPrivateUpstreams).toBe(true);
    expect(loadConfig({}).admin.allowPrivateUpstreams).toBe(false);
  });

  it("classifies addresses", async () => {
    for (const a of [
      "127.0.0.1",
      "10.0.0.1",
      "172.16.5.4",
      "192.168.1.1",
      "169.254.169.254",
      "100.64.0.1",
      "0.0.0.0",
      "::1",
      "::",
      "fe80::1",
      "fc00::1",
      "::ffff:10.0.0.1",
      "::ffff:a9fe:a9fe",
      "64:ff9b::7f00:1",
    ]) {
      expect(isInternalAddress(a), a).toBe(true);
    }
    for (const a of ["8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]) expect(isInternalAddress(a), a).toBe(false);
    expect(await checkUpstreamHost(new URL("http://LOCALHOST./v1"))).toMatchObject({ internal: true });
    expect(await checkUpstreamHost(new URL("http://no-such-host.invalid/v1"))).toEqual({ internal: false, unresolved: true });
  });
});

describe("point 13b: mutations on another organization's ids answer NOT_FOUND, like queries", () => {
  it("for keys, projects, runs, routes, channels and organization ids; a viewer of the same organization still gets FORBIDDEN", async () => {
    const a = await f.world();
    const b = await f.world();
    const { route, channels } = await f.route(a.viewer, a.org.id, "tenancy-model", [{ name: "c", baseUrl: h.fake.url, upstreamModel: "m", price: ["1", "1"] }]);
    const run = await gqlOk(await token("PLATFORM_ADMIN"), `mutation($k: ID!) { startRun(input: { keyId: $k, mode: QUICK }) { id } }`, { k: a.key.id });
    const adminB = await token("ORG_ADMIN", b.org.id);
    const attempts: Array<[string, Record<string, unknown>]> = [
      [`mutation($id: ID!) { pauseKey(id: $id) { id } }`, { id: a.key.id }],
      [`mutation($id: ID!) { revokeKey(id: $id) { id } }`, { id: a.key.id }],
      [`mutation($id: ID!) { rotateKey(id: $id) { secret } }`, { id: a.key.id }],
      [`mutation($id: ID!) { setKeyCaps(input: { keyId: $id, dailyCap: "1" }) { id } }`, { id: a.key.id }],
      [`mutation($id: ID!) { setProjectBudget(input: { projectId: $id, dailyCap: "1" }) { id } }`, { id: a.project.id }],
      [`mutation($id: ID!) { createApiKey(input: { projectId: $id, name: "x" }) { secret } }`, { id: a.project.id }],
      [`mutation($id: ID!) { startRun(input: { keyId: $id, mode: QUICK }) { id } }`, { id: a.key.id }],
      [`mutation($id: ID!) { cancelRun(id: $id) { id } }`, { id: run.startRun.id }],
      [`mutation($id: ID!) { setRouteLimits(input: { routeId: $id, dailyCap: "1" }) { id } }`, { id: route.id }],
      [`mutation($id: ID!) { setPrice(input: { channelId: $id, inputPerMillion: "0", outputPerMillion: "0" }) { id } }`, { id: channels[0]!.id }],
      [`mutation($o: ID!) { createProject(input: { organizationId: $o, name: "x" }) { id } }`, { o: a.org.id }],
      [`mutation($o: ID!) { upsertRoute(input: { organizationId: $o, model: "x", channels: [{ name: "c", baseUrl: "https://api.example.test", upstreamModel: "m" }] }) { id } }`, { o: a.org.id }],
    ];
    for (const [query, variables] of attempts) expect(codes(await gql(adminB, query, variables)), query).toEqual(["NOT_FOUND"]);
    // Nothing changed.
    expect((await h.database.prisma.apiKey.findUniqueOrThrow({ where: { id: a.key.id } })).status).toBe("ACTIVE");
    expect(await h.database.prisma.auditEntry.count({ where: { organizationId: a.org.id, actorTokenId: { not: a.viewer.tokenId }, action: { not: "startRun" } } })).toBe(0);
    // Same organization, no write role: FORBIDDEN (the row exists for this token).
    const viewerA = await token("ORG_VIEWER", a.org.id);
    expect(codes(await gql(viewerA, attempts[0]![0], attempts[0]![1]))).toEqual(["FORBIDDEN"]);
    expect(codes(await gql(viewerA, attempts[8]![0], attempts[8]![1]))).toEqual(["FORBIDDEN"]);
  });
});

describe("point 13a: estimateRun shows a project viewer only what it may read", () => {
  it("hides the wallet balance and channel names from project viewers; org tokens see them", async () => {
    const w = await f.world({ credit: "42" });
    await f.route(w.viewer, w.org.id, "estimate-model", [{ name: "secret-channel-name", baseUrl: h.fake.url, upstreamModel: "m", price: ["1", "2"] }]);
    const query = `query($k: ID!) { estimateRun(input: { keyId: $k, model: "estimate-model", mode: QUICK }) { allowed reasons bucket channelName available { amount } costMax { amount currency } } }`;
    const projectViewer = await token("PROJECT_VIEWER", w.org.id, w.project.id);
    const seen = await gqlOk(projectViewer, query, { k: w.key.id });
    expect(seen.estimateRun).toMatchObject({ allowed: true, bucket: "CREDIT", channelName: null, available: null });
    expect(seen.estimateRun.costMax.currency).toBe("USD");
    expect(JSON.stringify(seen)).not.toContain("secret-channel-name");
    expect(JSON.stringify(seen)).not.toContain("42.000000");
    const org = await gqlOk(await token("ORG_VIEWER", w.org.id), query, { k: w.key.id });
    expect(org.estimateRun).toMatchObject({ channelName: "secret-channel-name", available: { amount: "42.000000" } });
    // Another project's key: NOT_FOUND, as apiKey(id) says.
    const other = await f.apiKey(w.viewer, (await f.project(w.viewer, w.org.id)).id);
    expect(codes(await gql(projectViewer, query, { k: other.apiKey.id }))).toEqual(["NOT_FOUND"]);
  });
});

describe("point 13c: /metrics", () => {
  let guarded: RunningServer;
  let open: RunningServer;
  beforeAll(async () => {
    const base = { ...loadConfig({}), port: 0, host: "127.0.0.1" };
    guarded = await startServer(servicesWith({ ...base, admin: { ...base.admin, metricsToken: "metrics-secret-token" } }), { quiet: true });
    open = await startServer(servicesWith(base), { quiet: true });
  });
  afterAll(async () => {
    await guarded?.close();
    await open?.close();
  });

  it("requires Bearer METRICS_TOKEN when set; unset, a loopback client needs none", async () => {
    const missing = await fetch(`${guarded.url}/metrics`);
    expect(missing.status).toBe(401);
    expect(missing.headers.get("www-authenticate")).toMatch(/^Bearer/);
    expect(await missing.text()).not.toContain("tokengate_");
    expect((await fetch(`${guarded.url}/metrics`, { headers: { authorization: "Bearer wrong" } })).status).toBe(401);
    const ok = await fetch(`${guarded.url}/metrics`, { headers: { authorization: "Bearer metrics-secret-token" } });
    expect(ok.status).toBe(200);
    expect(await ok.text()).toContain("tokengate_");
    expect((await fetch(`${open.url}/metrics`)).status).toBe(200);
    expect(loadConfig({ METRICS_TOKEN: "x" }).admin.metricsToken).toBe("x");
  });
});

describe("issue 14, point 12: /metrics without METRICS_TOKEN is for loopback clients only", () => {
  let anyHost: RunningServer;
  let proxied: RunningServer;
  beforeAll(async () => {
    const base = { ...loadConfig({}), port: 0 };
    // Loopback only: tests send traffic to no other address; a non-loopback client is the forwarded case below.
    anyHost = await startServer(servicesWith({ ...base, host: "127.0.0.1" }), { quiet: true });
    proxied = await startServer(servicesWith({ ...loadConfig({ TRUST_PROXY: "1" }), port: 0, host: "127.0.0.1" }), { quiet: true });
  });
  afterAll(async () => {
    await anyHost?.close();
    await proxied?.close();
  });
  const port = (s: RunningServer) => new URL(s.url).port;

  it("a loopback client gets the metrics", async () => {
    const local = await fetch(`http://127.0.0.1:${port(anyHost)}/metrics`);
    expect(local.status).toBe(200);
    expect(await local.text()).toContain("tokengate_");
  });

  it("behind TRUST_PROXY the forwarded client address decides, not the proxy's", async () => {
    const forwarded = await fetch(`${proxied.url}/metrics`, { headers: { "x-forwarded-for": "203.0.113.9" } });
    expect(forwarded.status).toBe(403);
    expect(await forwarded.text()).not.toContain("tokengate_");
    const local = await fetch(`${proxied.url}/metrics`, { headers: { "x-forwarded-for": "127.0.0.1" } });
    expect(local.status).toBe(200);
  });
});

describe("point 13d: credential encryption", () => {
  it("binds each ciphertext to its channel: copied to another channel it does not decrypt", async () => {
    const w = await f.world();
    const { channels } = await f.route(w.viewer, w.org.id, "bound-model", [
      { name: "one", baseUrl: h.fake.url, apiKey: "sk-one", upstreamModel: "m" },
      { name: "two", baseUrl: h.fake.url, apiKey: "sk-two", upstreamModel: "m" },
    ]);
    const [one, two] = channels;
    expect(one!.apiKeyCiphertext).toMatch(/^v2\./);
    expect(channelCredential(one!)).toBe("sk-one");
    expect(() => channelCredential({ id: two!.id, apiKeyCiphertext: one!.apiKeyCiphertext })).toThrow();
  });

  it("refuses a TOKENGATE_SECRET shorter than 32 characters with a clear message", () => {
    expect(() => loadConfig({ TOKENGATE_SECRET: "too-short" })).toThrow(/TOKENGATE_SECRET must be at least 32 characters/);
    expect(() => new CredentialCipher("x".repeat(31))).toThrow(/at least 32 characters/);
    expect(loadConfig({ TOKENGATE_SECRET: "x".repeat(32) }).secret).toBe("x".repeat(32));
  });

  it("re-encrypts credentials of the earlier scheme at start-up without losing them; the gateway keeps using them", async () => {
    const w = await f.world();
    const model = "legacy-credential-model";
    const { channels } = await f.route(w.viewer, w.org.id, model, [{ name: "c", baseUrl: h.fake.url, apiKey: "placeholder", upstreamModel: "legacy-up", price: ["1", "1"] }]);
    // What the earlier code stored: AES-256-GCM under SHA-256("tokengate-credentials:" + secret), no AAD.
    const legacyKey = createHash("sha256").update("tokengate-credentials:test-secret-not-for-production-0123456789").digest();
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", legacyKey, iv);
    const body = Buffer.concat([cipher.update("sk-legacy-credential", "utf8"), cipher.final()]);
    const v1 = ["v1", iv.toString("base64"), cipher.getAuthTag().toString("base64"), body.toString("base64")].join(".");
    await h.database.prisma.channel.update({ where: { id: channels[0]!.id }, data: { apiKeyCiphertext: v1 } });

    expect(await upgradeStoredCredentials()).toBeGreaterThanOrEqual(1);
    const stored = await h.database.prisma.channel.findUniqueOrThrow({ where: { id: channels[0]!.id } });
    expect(stored.apiKeyCiphertext).toMatch(/^v2\./);
    expect(channelCredential(stored)).toBe("sk-legacy-credential");
    expect(await upgradeStoredCredentials()).toBe(0);

    await h.gw.client(w.secret).chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 10 });
    const seen = h.fake.requests.filter((r) => r.model === "legacy-up");
    expect(seen.at(-1)!.headers.authorization).toBe("Bearer sk-legacy-credential");
  });
});
