// Every admin mutation through GraphQL: its effect, its audit entry, and its refusals
// (nothing is written on a refused mutation).
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { codes, gql, gqlOk, token } from "./support/graphql.ts";
import { lookupKey } from "../src/keys/index.ts";
import { reserve, settle } from "../src/money/holds.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { sha256 } from "../src/secrets.ts";

let database: TestDatabase;
let platform: string;
let orgAdmin: string;
let w: Awaited<ReturnType<typeof f.world>>;

beforeAll(async () => {
  database = await createTestDatabase();
  w = await f.world({ credit: "50" });
  platform = await token("PLATFORM_ADMIN");
  orgAdmin = await token("ORG_ADMIN", w.org.id);
});
afterAll(() => database.dispose());

async function audits(targetId: string, action: string) {
  return database.prisma.auditEntry.findMany({ where: { targetId, action } });
}

const snapshotCounts = async () => ({
  projects: await database.prisma.project.count(),
  keys: await database.prisma.apiKey.count(),
  caps: await database.prisma.budgetCap.count(),
  audits: await database.prisma.auditEntry.count(),
  ledger: await database.prisma.ledgerEntry.count(),
});

describe("projects and budgets", () => {
  it("createProject stores caps and audits; setProjectBudget changes and removes them", async () => {
    const created = await gqlOk(
      orgAdmin,
      `mutation { createProject(input: { name: "web", dailyCap: "12.5", monthlyCap: "300" }) {
      id name dailyCap { amount currency } monthlyCap { amount } spendToday { amount } remainingToday { amount } } }`,
    );
    const p = created.createProject;
    expect(p).toMatchObject({
      name: "web",
      dailyCap: { amount: "12.500000", currency: "USD" },
      monthlyCap: { amount: "300.000000" },
      spendToday: { amount: "0.000000" },
      remainingToday: { amount: "12.500000" },
    });
    const [audit] = await audits(p.id, "createProject");
    expect(audit!.actor).toMatch(/test ORG_ADMIN/);
    expect(JSON.stringify(audit!.after)).toContain("12500000");

    const changed = await gqlOk(orgAdmin, `mutation($id: ID!) { setProjectBudget(input: { projectId: $id, dailyCap: null, monthlyCap: "100" }) { dailyCap { amount } monthlyCap { amount } } }`, {
      id: p.id,
    });
    expect(changed.setProjectBudget).toEqual({ dailyCap: null, monthlyCap: { amount: "100.000000" } });
    const [budgetAudit] = await audits(p.id, "setProjectBudget");
    expect(JSON.stringify(budgetAudit!.before)).toContain("12500000");
    expect(JSON.stringify(budgetAudit!.after)).not.toContain("12500000");
  });

  it.each([
    [`"-1"`, "dailyCap", /negative/],
    [`"abc"`, "dailyCap", /not a decimal/],
    [`"1.1234567"`, "dailyCap", /6 decimal/],
    [`"99999999999999999999"`, "dailyCap", /too large/],
  ])("refuses dailyCap %s with BAD_USER_INPUT naming the field, writing nothing", async (value, field, message) => {
    const before = await snapshotCounts();
    const r = await gql(orgAdmin, `mutation { createProject(input: { name: "bad-${randomUUID()}", dailyCap: ${value} }) { id } }`);
    expect(codes(r)).toEqual(["BAD_USER_INPUT"]);
    expect(r.errors![0]!.extensions!.field).toBe(field);
    expect(r.errors![0]!.message).toMatch(message);
    expect(await snapshotCounts()).toEqual(before);
  });

  it("refuses a duplicate project name (CONFLICT) and an unknown project (NOT_FOUND)", async () => {
    await gqlOk(orgAdmin, `mutation { createProject(input: { name: "dup" }) { id } }`);
    expect(codes(await gql(orgAdmin, `mutation { createProject(input: { name: "dup" }) { id } }`))).toEqual(["CONFLICT"]);
    expect(codes(await gql(orgAdmin, `mutation { setProjectBudget(input: { projectId: "nope", dailyCap: "1" }) { id } }`))).toEqual(["NOT_FOUND"]);
  });
});

describe("API keys", () => {
  it("createApiKey shows the secret once and stores only its SHA-256, prefix and last 4", async () => {
    const r = await gqlOk(
      orgAdmin,
      `mutation($p: ID!) { createApiKey(input: { projectId: $p, name: "worker", allowedModels: ["gpt-4o-mini"],
      allowedBuckets: [ROUTED], lowerCostRoutes: true, backupRoutes: false, dailyCap: "3", perRequestMaxCharge: "0.25", retryCeiling: 1, failedChargePolicy: PROMPT_TOKENS }) {
      secret apiKey { id prefix last4 status allowedModels allowedBuckets lowerCostRoutes backupRoutes retryCeiling failedChargePolicy
        dailyCap { amount currency } perRequestMaxCharge { amount currency } spendToday { amount currency } remainingToday { amount } } } }`,
      { p: w.project.id },
    );
    const { secret, apiKey } = r.createApiKey;
    expect(secret).toMatch(/^tg_[0-9A-Za-z]{43}$/);
    expect(apiKey).toMatchObject({
      prefix: secret.slice(0, 9),
      last4: secret.slice(-4),
      status: "ACTIVE",
      allowedModels: ["gpt-4o-mini"],
      allowedBuckets: ["ROUTED"],
      backupRoutes: false,
      retryCeiling: 1,
      failedChargePolicy: "PROMPT_TOKENS",
      dailyCap: { amount: "3.000000", currency: "CNY" },
      perRequestMaxCharge: { amount: "0.250000", currency: "CNY" },
      spendToday: { amount: "0.000000", currency: "CNY" },
      remainingToday: { amount: "3.000000" },
    });
    const stored = await database.prisma.apiKeySecret.findFirstOrThrow({ where: { keyId: apiKey.id } });
    expect(stored.secretHash).toBe(sha256(secret));
    // The secret is nowhere in the database: not in keys, secrets or the audit trail.
    const dump =
      JSON.stringify(await database.sql.query(`SELECT row_to_json(t)::text AS j FROM (SELECT * FROM "ApiKey" UNION ALL SELECT * FROM "ApiKey") t`)) +
      JSON.stringify(await database.prisma.auditEntry.findMany()) +
      JSON.stringify(await database.prisma.apiKeySecret.findMany());
    expect(dump).not.toContain(secret);
    expect((await lookupKey(secret)).ok).toBe(true);
    expect((await audits(apiKey.id, "createApiKey")).length).toBe(1);
  });

  it("refuses bad key input and unknown projects without writing", async () => {
    const before = await snapshotCounts();
    expect(codes(await gql(orgAdmin, `mutation { createApiKey(input: { projectId: "missing", name: "x" }) { secret } }`))).toEqual(["NOT_FOUND"]);
    const noBuckets = await gql(orgAdmin, `mutation($p: ID!) { createApiKey(input: { projectId: $p, name: "x", allowedBuckets: [] }) { secret } }`, { p: w.project.id });
    expect(noBuckets.errors![0]!.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "allowedBuckets" });
    const retries = await gql(orgAdmin, `mutation($p: ID!) { createApiKey(input: { projectId: $p, name: "x", retryCeiling: 99 }) { secret } }`, { p: w.project.id });
    expect(retries.errors![0]!.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "retryCeiling" });
    expect(await snapshotCounts()).toEqual(before);
  });

  it("setKeyCaps, pause, resume and revoke change the key and audit each step", async () => {
    const { apiKey, secret } = await f.apiKey(w.viewer, w.project.id);
    const caps = await gqlOk(
      orgAdmin,
      `mutation($k: ID!) { setKeyCaps(input: { keyId: $k, dailyCap: "7", retryCeiling: 0, failedChargePolicy: FULL_USAGE }) {
      dailyCap { amount } retryCeiling failedChargePolicy } }`,
      { k: apiKey.id },
    );
    expect(caps.setKeyCaps).toEqual({ dailyCap: { amount: "7.000000" }, retryCeiling: 0, failedChargePolicy: "FULL_USAGE" });
    expect((await gqlOk(orgAdmin, `mutation($k: ID!) { pauseKey(id: $k) { status } }`, { k: apiKey.id })).pauseKey.status).toBe("PAUSED");
    expect(await lookupKey(secret)).toMatchObject({ ok: false, reason: "KEY_PAUSED" });
    expect((await gqlOk(orgAdmin, `mutation($k: ID!) { resumeKey(id: $k) { status } }`, { k: apiKey.id })).resumeKey.status).toBe("ACTIVE");
    expect((await lookupKey(secret)).ok).toBe(true);
    expect((await gqlOk(orgAdmin, `mutation($k: ID!) { revokeKey(id: $k) { status } }`, { k: apiKey.id })).revokeKey.status).toBe("REVOKED");
    expect(await lookupKey(secret)).toMatchObject({ ok: false, reason: "KEY_REVOKED" });
    expect(codes(await gql(orgAdmin, `mutation($k: ID!) { resumeKey(id: $k) { status } }`, { k: apiKey.id }))).toEqual(["CONFLICT"]);
    expect(codes(await gql(orgAdmin, `mutation($k: ID!) { setKeyCaps(input: { keyId: $k, dailyCap: "1" }) { id } }`, { k: apiKey.id }))).toEqual(["CONFLICT"]);
    for (const action of ["setKeyCaps", "pauseKey", "resumeKey", "revokeKey"]) expect(await audits(apiKey.id, action)).toHaveLength(1);
  });

  it("rotateKey issues a new secret; the old one works until the grace period ends", async () => {
    const { apiKey, secret: first } = await f.apiKey(w.viewer, w.project.id);
    const rotated = await gqlOk(orgAdmin, `mutation($k: ID!) { rotateKey(id: $k, graceSeconds: 60) { secret apiKey { prefix last4 } } }`, { k: apiKey.id });
    const second = rotated.rotateKey.secret as string;
    expect(second).not.toBe(first);
    expect(rotated.rotateKey.apiKey.last4).toBe(second.slice(-4));
    expect((await lookupKey(first)).ok).toBe(true);
    expect((await lookupKey(second)).ok).toBe(true);
    expect(await lookupKey(first, new Date(Date.now() + 61_000))).toMatchObject({ ok: false, reason: "KEY_INVALID" });
    const third = (await gqlOk(orgAdmin, `mutation($k: ID!) { rotateKey(id: $k, graceSeconds: 0) { secret } }`, { k: apiKey.id })).rotateKey.secret as string;
    await new Promise((r) => setTimeout(r, 1_100)); // past the key cache
    expect((await lookupKey(second)).ok).toBe(false);
    expect((await lookupKey(third)).ok).toBe(true);
    expect(codes(await gql(orgAdmin, `mutation($k: ID!) { rotateKey(id: $k, graceSeconds: -5) { secret } }`, { k: apiKey.id }))).toEqual(["BAD_USER_INPUT"]);
  });
});

describe("routes and prices", () => {
  it("upsertRoute encrypts credentials, orders channels, and disables channels left out", async () => {
    const r = await gqlOk(
      orgAdmin,
      `mutation { upsertRoute(input: { model: "gpt-4o-mini", dailyCap: "20", channels: [
        { name: "official", baseUrl: "https://api.example.test/v1", apiKey: "sk-upstream-secret-1", upstreamModel: "gpt-4o-mini", settlement: OFFICIAL },
        { name: "routed", baseUrl: "https://cheap.example.test/v1", apiKey: "sk-upstream-secret-2", upstreamModel: "gpt-4o-mini-r", settlement: ROUTED }] }) {
      id model dailyCap { amount currency } channels { id name priority settlement upstreamModel health hasCredential } } }`,
    );
    const route = r.upsertRoute;
    expect(route.dailyCap).toEqual({ amount: "20.000000", currency: "USD" });
    expect(route.channels.map((c: { name: string; priority: number }) => [c.name, c.priority])).toEqual([
      ["official", 0],
      ["routed", 1],
    ]);
    expect(route.channels.every((c: { hasCredential: boolean; health: string }) => c.hasCredential && c.health === "HEALTHY")).toBe(true);
    const raw = JSON.stringify(await database.prisma.channel.findMany({ where: { routeId: route.id } })) + JSON.stringify(await audits(route.id, "upsertRoute"));
    expect(raw).not.toContain("sk-upstream-secret");

    const again = await gqlOk(
      orgAdmin,
      `mutation { upsertRoute(input: { model: "gpt-4o-mini", channels: [
        { name: "routed", baseUrl: "https://cheap.example.test/v1", upstreamModel: "gpt-4o-mini-r", settlement: ROUTED, priority: 0 }] }) {
      id channels { name hasCredential } } }`,
    );
    expect(again.upsertRoute.id).toBe(route.id);
    expect(again.upsertRoute.channels).toEqual([{ name: "routed", hasCredential: true }]);
    const bad = await gql(orgAdmin, `mutation { upsertRoute(input: { model: "x", channels: [{ name: "a", baseUrl: "not a url", upstreamModel: "m" }] }) { id } }`);
    expect(bad.errors![0]!.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "channels[0].baseUrl" });
    expect(codes(await gql(orgAdmin, `mutation { upsertRoute(input: { model: "x", channels: [] }) { id } }`))).toEqual(["BAD_USER_INPUT"]);
  });

  it("setPrice adds snapshots in the channel's currency and never rewrites history; setRouteLimits changes the cap", async () => {
    const { route, channels } = await f.route(w.viewer, w.org.id, "priced", [{ name: "a", baseUrl: "http://127.0.0.1:9", upstreamModel: "m", settlement: "ROUTED" }]);
    const first = await gqlOk(
      orgAdmin,
      `mutation($c: ID!) { setPrice(input: { channelId: $c, inputPerMillion: "1.5", outputPerMillion: "6" }) {
      id bucket inputPerMillion { amount currency } outputPerMillion { amount } } }`,
      { c: channels[0]!.id },
    );
    expect(first.setPrice).toMatchObject({ bucket: "ROUTED", inputPerMillion: { amount: "1.500000", currency: "CNY" }, outputPerMillion: { amount: "6.000000" } });
    await new Promise((r) => setTimeout(r, 5));
    await gqlOk(orgAdmin, `mutation($c: ID!) { setPrice(input: { channelId: $c, inputPerMillion: "2", outputPerMillion: "8" }) { id } }`, { c: channels[0]!.id });
    const history = await gqlOk(orgAdmin, `query($r: ID!) { route(id: $r) { channels { currentPrice { inputPerMillion { amount } } priceHistory { totalCount } } } }`, { r: route.id });
    expect(history.route.channels[0]).toEqual({ currentPrice: { inputPerMillion: { amount: "2.000000" } }, priceHistory: { totalCount: 2 } });
    const stillFirst = await database.prisma.priceSnapshot.findUniqueOrThrow({ where: { id: first.setPrice.id } });
    expect(stillFirst.inputPerMillion).toBe(1_500_000n);
    expect(codes(await gql(orgAdmin, `mutation($c: ID!) { setPrice(input: { channelId: $c, inputPerMillion: "-1", outputPerMillion: "1" }) { id } }`, { c: channels[0]!.id }))).toEqual([
      "BAD_USER_INPUT",
    ]);

    const limits = await gqlOk(
      orgAdmin,
      `mutation($r: ID!) { setRouteLimits(input: { routeId: $r, dailyCap: "4", capBucket: ROUTED, defaultMaxTokens: 512 }) {
      defaultMaxTokens dailyCap(bucket: ROUTED) { amount currency } } }`,
      { r: route.id },
    );
    expect(limits.setRouteLimits).toEqual({ defaultMaxTokens: 512, dailyCap: { amount: "4.000000", currency: "CNY" } });
    expect(await audits(route.id, "setRouteLimits")).toHaveLength(1);
    expect(await audits(channels[0]!.id, "setPrice")).toHaveLength(2);
  });
});

describe("balances", () => {
  it("topUp is platform-only, idempotent, and shows in the wallet", async () => {
    const m = `mutation($o: ID, $k: String!, $a: Decimal!) { topUp(input: { organizationId: $o, bucket: ROUTED, amount: $a, idempotencyKey: $k }) {
      id kind amount { amount currency } balanceAfter { amount } idempotencyKey } }`;
    const one = await gqlOk(platform, m, { o: w.org.id, k: "invoice-42", a: "88.8" });
    expect(one.topUp).toMatchObject({ kind: "TOPUP", amount: { amount: "88.800000", currency: "CNY" }, balanceAfter: { amount: "88.800000" }, idempotencyKey: "invoice-42" });
    const replay = await gqlOk(platform, m, { o: w.org.id, k: "invoice-42", a: "88.8" });
    expect(replay.topUp.id).toBe(one.topUp.id);
    expect(codes(await gql(platform, m, { o: w.org.id, k: "invoice-42", a: "99" }))).toEqual(["CONFLICT"]);
    expect(codes(await gql(platform, m, { o: w.org.id, k: "neg", a: "-5" }))).toEqual(["BAD_USER_INPUT"]);
    expect(codes(await gql(platform, m, { o: w.org.id, k: "zero", a: "0" }))).toEqual(["BAD_USER_INPUT"]);
    expect(await audits(one.topUp.id, "topUp")).toHaveLength(1);

    const bucketId = (await walletBucket(w.org.id, "ROUTED")).id;
    await reserve({ requestId: randomUUID(), bucketId, amount: 800_000n, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000 });
    const wallet = await gqlOk(orgAdmin, `{ wallet { balances { bucket balance { amount currency } held { amount } available { amount } } } }`);
    expect(wallet.wallet.balances).toEqual([
      { bucket: "CREDIT", balance: { amount: "50.000000", currency: "USD" }, held: { amount: "0.000000" }, available: { amount: "50.000000" } },
      { bucket: "ROUTED", balance: { amount: "88.800000", currency: "CNY" }, held: { amount: "0.800000" }, available: { amount: "88.000000" } },
    ]);
  });
});

describe("adjustments", () => {
  it("adjustBalance writes a signed ADJUSTMENT entry with its memo, refuses to overdraw, and is platform-only", async () => {
    const fresh = await f.world({ credit: "10" });
    const m = `mutation($o: ID, $a: Decimal!, $k: String!) { adjustBalance(input: { organizationId: $o, bucket: CREDIT, amount: $a, idempotencyKey: $k, memo: "refund of a bad route" }) {
      id kind amount { amount } balanceAfter { amount } memo } }`;
    const down = await gqlOk(platform, m, { o: fresh.org.id, a: "-2.5", k: "adj-1" });
    expect(down.adjustBalance).toMatchObject({ kind: "ADJUSTMENT", amount: { amount: "-2.500000" }, balanceAfter: { amount: "7.500000" }, memo: "refund of a bad route" });
    expect((await gql(platform, m, { o: fresh.org.id, a: "-2.5", k: "adj-1" })).data!.adjustBalance.id).toBe(down.adjustBalance.id);
    const overdraw = await gql(platform, m, { o: fresh.org.id, a: "-100", k: "adj-2" });
    expect(overdraw.errors![0]!.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "amount" });
    const t = await token("ORG_ADMIN", fresh.org.id);
    expect(codes(await gql(t, m, { o: fresh.org.id, a: "5", k: "adj-3" }))).toEqual(["FORBIDDEN"]);
    expect((await walletBucket(fresh.org.id, "CREDIT")).balance).toBe(7_500_000n);
    expect(await audits(down.adjustBalance.id, "adjustBalance")).toHaveLength(1);
  });
});

describe("runs, spend and estimates", () => {
  it("startRun caps a run; cancelRun stops its reservations", async () => {
    const started = await gqlOk(orgAdmin, `mutation($k: ID!) { startRun(input: { keyId: $k, mode: DEEP, cap: "2" }) { id status mode budgets { bucket cap { amount } } } }`, { k: w.key.id });
    const run = started.startRun;
    expect(run).toMatchObject({ status: "ACTIVE", mode: "DEEP" });
    expect(run.budgets[0]).toEqual({ bucket: "CREDIT", cap: { amount: "2.000000" } });
    const bucketId = (await walletBucket(w.org.id, "CREDIT")).id;
    const r = (amount: bigint) => reserve({ requestId: randomUUID(), bucketId, amount, keyId: w.key.id, projectId: w.project.id, runId: run.id, ttlMs: 60_000 });
    expect((await r(1_500_000n)).ok).toBe(true);
    expect(await r(600_000n)).toEqual({ ok: false, refusal: "RUN_TOTAL" });
    expect((await gqlOk(orgAdmin, `mutation($id: ID!) { cancelRun(id: $id) { status endedAt } }`, { id: run.id })).cancelRun.status).toBe("CANCELLED");
    expect((await gqlOk(orgAdmin, `mutation($id: ID!) { cancelRun(id: $id) { status } }`, { id: run.id })).cancelRun.status).toBe("CANCELLED");
    expect(await r(1n)).toEqual({ ok: false, refusal: "RUN_CANCELLED" });
    expect(await audits(run.id, "cancelRun")).toHaveLength(1);
    expect(codes(await gql(orgAdmin, `mutation { startRun(input: { keyId: "nope", mode: QUICK }) { id } }`))).toEqual(["NOT_FOUND"]);
  });

  it("spendToday and remainingToday follow settled spend and holds on keys, projects and routes", async () => {
    const fresh = await f.world({ credit: "10", key: { dailyCap: "5" }, project: { dailyCap: "8" } });
    const { route } = await f.route(fresh.viewer, fresh.org.id, "m", [{ name: "c", baseUrl: "http://127.0.0.1:9", upstreamModel: "m", price: ["1", "1"] }], { dailyCap: "6" });
    const bucketId = (await walletBucket(fresh.org.id, "CREDIT")).id;
    const a = await reserve({ requestId: randomUUID(), bucketId, amount: 2_000_000n, keyId: fresh.key.id, projectId: fresh.project.id, routeId: route.id, ttlMs: 60_000 });
    const b = await reserve({ requestId: randomUUID(), bucketId, amount: 1_000_000n, keyId: fresh.key.id, projectId: fresh.project.id, routeId: route.id, ttlMs: 60_000 });
    if (!a.ok || !b.ok) throw new Error("refused");
    await settle(a.holdId, 1_250_000n);
    const t = await token("ORG_ADMIN", fresh.org.id);
    const data = await gqlOk(
      t,
      `query($k: ID!, $p: ID!, $r: ID!) {
      apiKey(id: $k) { spendToday { amount } remainingToday { amount } }
      project(id: $p) { spendToday { amount } remainingToday { amount } spendThisMonth { amount } }
      route(id: $r) { spendToday { amount } remainingToday { amount } } }`,
      { k: fresh.key.id, p: fresh.project.id, r: route.id },
    );
    expect(data.apiKey).toEqual({ spendToday: { amount: "1.250000" }, remainingToday: { amount: "2.750000" } });
    expect(data.project).toEqual({ spendToday: { amount: "1.250000" }, remainingToday: { amount: "5.750000" }, spendThisMonth: { amount: "1.250000" } });
    expect(data.route).toEqual({ spendToday: { amount: "1.250000" }, remainingToday: { amount: "3.750000" } });
  });

  it("estimateRun says what a run will cost, which bucket pays, and whether it is allowed", async () => {
    const fresh = await f.world({ credit: "1" });
    await f.route(fresh.viewer, fresh.org.id, "gpt-x", [{ name: "main", baseUrl: "http://127.0.0.1:9", upstreamModel: "gpt-x-up", price: ["2.5", "10"] }]);
    const t = await token("ORG_ADMIN", fresh.org.id);
    const q = `query($k: ID!, $mode: RunMode!) { estimateRun(input: { keyId: $k, model: "gpt-x", mode: $mode }) {
      allowed reasons bucket channelName upstreamModel estimatedCallsMin estimatedCallsMax costMin { amount currency } costMax { amount } available { amount } } }`;
    const quick = (await gqlOk(t, q, { k: fresh.key.id, mode: "QUICK" })).estimateRun;
    // QUICK: 2–4 calls of 2,000 prompt + 800 completion tokens at $2.5 / $10 per M = 0.013 per call.
    expect(quick).toEqual({
      allowed: true,
      reasons: [],
      bucket: "CREDIT",
      channelName: "main",
      upstreamModel: "gpt-x-up",
      estimatedCallsMin: 2,
      estimatedCallsMax: 4,
      costMin: { amount: "0.026000", currency: "USD" },
      costMax: { amount: "0.052000" },
      available: { amount: "1.000000" },
    });
    const deep = (await gqlOk(t, q, { k: fresh.key.id, mode: "DEEP" })).estimateRun;
    // DEEP: 12 calls × (8,000 × 2.5 + 3,000 × 10) / 1e6 = 12 × 0.05 = 0.6 ≤ 1, still allowed.
    expect(deep.costMin).toEqual({ amount: "0.600000", currency: "USD" });
    expect(deep.allowed).toBe(true);
  });
});
