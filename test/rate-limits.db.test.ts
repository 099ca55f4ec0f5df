// Per-key rate limits (rpmLimit, tpmLimit, maxConcurrent) through /v1 with the openai SDK and raw
// fetch: 429 rate_limit_exceeded with retry-after, recorded as RATE_LIMITED; the same limits held
// across two gateway instances sharing a real redis-server; and a flood of bad keys writes no rows.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { APIError } from "openai";
import { leasesReturned, startGateway, useGatewayHarness, uid, type TestGateway } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { requireRedis, startRedis } from "./support/redis.ts";
import { walletBucket } from "../src/money/ledger.ts";
import type { KeyCapsInput } from "../src/keys/index.ts";
import { RateLimiter } from "../src/gateway/rate-limit.ts";
import { codes, gql, gqlOk, token } from "./support/graphql.ts";

const h = useGatewayHarness();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const USAGE = { prompt_tokens: 10, completion_tokens: 20 };

async function setup(limits: KeyCapsInput, behavior: { delayMs?: number } = {}) {
  const w = await world({ key: limits });
  const model = uid("gpt");
  const upstreamModel = uid("up");
  await route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: h.fake.url, upstreamModel, price: ["1", "1"] }]);
  h.fake.set(upstreamModel, { type: "ok", usage: USAGE, ...behavior });
  return { ...w, model, upstreamModel };
}

const chat = (gw: TestGateway, secret: string, model: string, maxTokens = 5) =>
  gw.client(secret).chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: maxTokens });

async function rejected(p: Promise<unknown>): Promise<APIError> {
  const e = await p.then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(APIError);
  return e as APIError;
}

async function expectLimited(p: Promise<unknown>) {
  const e = await rejected(p);
  expect(e.status).toBe(429);
  expect(e.code).toBe("rate_limit_exceeded");
  expect(e.type).toBe("rate_limit_error");
  const retryAfter = Number(e.headers?.get("retry-after"));
  expect(Number.isInteger(retryAfter)).toBe(true);
  expect(retryAfter).toBeGreaterThanOrEqual(1);
  expect(retryAfter).toBeLessThanOrEqual(120);
  return e;
}

describe("per-key rate limits (one instance, in memory)", () => {
  it("rpmLimit: the request over the limit is 429 with retry-after, recorded RATE_LIMITED, never reserved nor charged", async () => {
    const s = await setup({ rpmLimit: 3 });
    for (let i = 0; i < 3; i++) await chat(h.gw, s.secret, s.model);
    const before = await walletBucket(s.org.id, "CREDIT");
    const error = await expectLimited(chat(h.gw, s.secret, s.model));
    expect(error.message).toMatch(/rpmLimit/);

    const res = await fetch(`${h.gw.url}/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${s.secret}`, "content-type": "application/json" },
      body: JSON.stringify({ model: s.model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 }),
    });
    expect(res.status).toBe(429);
    const retryAfter = Number(res.headers.get("retry-after"));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(120);
    const requestId = res.headers.get("x-request-id")!;
    expect(requestId).toBeTruthy();
    const body = (await res.json()) as { error: Record<string, unknown> };
    expect(body.error).toEqual({ message: expect.stringMatching(/rpmLimit/), type: "rate_limit_error", code: "rate_limit_exceeded", param: null });

    const failed = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId } });
    expect(failed).toMatchObject({ cause: "RATE_LIMITED", httpStatus: 429, keyId: s.key.id, charge: 0n, attempts: 0 });
    expect(await h.database.prisma.hold.count({ where: { requestId } })).toBe(0);
    expect(await h.database.prisma.failedRequest.count({ where: { keyId: s.key.id, cause: "RATE_LIMITED" } })).toBe(2);
    expect(h.fake.requests.filter((r) => r.model === s.upstreamModel)).toHaveLength(3);
    const after = await walletBucket(s.org.id, "CREDIT");
    expect(after.balance).toBe(before.balance);
    // Nothing held once idle (on leases: the three admitted requests' leases went back).
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });

  it("tpmLimit: admission counts the reserved bound (prompt + max output), then the real usage replaces it", async () => {
    const s = await setup({ tpmLimit: 1000 });
    // A bound larger than the whole limit can never pass.
    await expectLimited(chat(h.gw, s.secret, s.model, 5_000));
    // ~630 tokens reserved; corrected to 30 once the receipt is written.
    await chat(h.gw, s.secret, s.model, 600);
    // Fits only because the first request was corrected to its usage (30 + ~630 ≤ 1000; 2 × ~630 would not).
    await chat(h.gw, s.secret, s.model, 600);
    // 60 used + ~990 reserved > 1000.
    const error = await expectLimited(chat(h.gw, s.secret, s.model, 960));
    expect(error.message).toMatch(/tpmLimit/);
    const receipts = await h.database.prisma.receipt.findMany({ where: { keyId: s.key.id } });
    expect(receipts.map((r) => r.promptTokens + r.completionTokens)).toEqual([30, 30]);
  });

  it("maxConcurrent: a third request while two are in flight is 429 (retry-after 1); a slot frees when one ends", async () => {
    const s = await setup({ maxConcurrent: 2 }, { delayMs: 1_000 });
    const inFlight = [chat(h.gw, s.secret, s.model), chat(h.gw, s.secret, s.model)];
    await h.fake.waitFor((rs) => rs.filter((r) => r.model === s.upstreamModel).length === 2);
    const error = await expectLimited(chat(h.gw, s.secret, s.model));
    expect(error.headers?.get("retry-after")).toBe("1");
    expect(error.message).toMatch(/maxConcurrent/);
    await Promise.all(inFlight);
    await chat(h.gw, s.secret, s.model);
    expect(h.gw.gateway.stats().limits.rateLimited.concurrent).toBeGreaterThanOrEqual(1);
  });

  it("limits are set with createApiKey, shown on ApiKey and changed or removed (null) with setKeyCaps", async () => {
    const s = await setup({});
    const admin = await token("ORG_ADMIN", s.org.id);
    const created = await gqlOk<{ createApiKey: { secret: string; apiKey: { id: string; rpmLimit: number | null; tpmLimit: number | null; maxConcurrent: number | null } } }>(
      admin,
      `mutation($p: ID!) { createApiKey(input: { projectId: $p, name: "limited", rpmLimit: 1, tpmLimit: 5000, maxConcurrent: 3 }) { secret apiKey { id rpmLimit tpmLimit maxConcurrent } } }`,
      { p: s.project.id },
    );
    expect(created.createApiKey.apiKey).toMatchObject({ rpmLimit: 1, tpmLimit: 5000, maxConcurrent: 3 });
    const secret = created.createApiKey.secret;
    const keyId = created.createApiKey.apiKey.id;
    await chat(h.gw, secret, s.model);
    await expectLimited(chat(h.gw, secret, s.model));

    const changed = await gqlOk<{ setKeyCaps: Record<string, number | null> }>(
      admin,
      `mutation($k: ID!) { setKeyCaps(input: { keyId: $k, rpmLimit: null, maxConcurrent: 5 }) { rpmLimit tpmLimit maxConcurrent } }`,
      { k: keyId },
    );
    expect(changed.setKeyCaps).toEqual({ rpmLimit: null, tpmLimit: 5000, maxConcurrent: 5 });
    await chat(h.gw, secret, s.model); // the key cache was cleared: no rpm limit any more

    const bad = await gql(admin, `mutation($k: ID!) { setKeyCaps(input: { keyId: $k, tpmLimit: 0 }) { id } }`, { k: keyId });
    expect(codes(bad)).toEqual(["BAD_USER_INPUT"]);
    expect(bad.errors![0]!.extensions!.field).toBe("tpmLimit");
    const audit = await h.database.prisma.auditEntry.findFirstOrThrow({ where: { targetId: keyId, action: "setKeyCaps" } });
    expect(audit.after).toMatchObject({ rpmLimit: null, maxConcurrent: 5 });
  });
});

describe("bad keys", () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ BAD_KEY_LIMIT_PER_MINUTE: "20" });
  });
  afterAll(() => gw?.close());

  it("a flood of unknown and missing keys writes no database row; after 20 a minute the address gets 429 without any lookup", async () => {
    // The throttle counts per calendar minute: start well inside one.
    if (Date.now() % 60_000 > 50_000) await sleep(60_000 - (Date.now() % 60_000) + 100);
    const rows = async () => (await h.database.prisma.failedRequest.count()) + (await h.database.prisma.receipt.count());
    const before = await rows();
    const statuses: number[] = [];
    for (let i = 0; i < 25; i++) {
      const headers: Record<string, string> = { "content-type": "application/json" };
      if (i % 5 !== 0) headers.authorization = `Bearer tg_guess_${i}_${Math.random().toString(36).slice(2)}`;
      const res = await fetch(`${gw.url}/chat/completions`, { method: "POST", headers, body: JSON.stringify({ model: "x", messages: [] }) });
      statuses.push(res.status);
      const body = (await res.json()) as { error: { code: string } };
      if (res.status === 429) {
        expect(body.error.code).toBe("rate_limit_exceeded");
        expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      } else expect(body.error.code).toBe("invalid_api_key");
    }
    expect(statuses).toEqual([...Array<number>(20).fill(401), ...Array<number>(5).fill(429)]);
    expect(await rows()).toBe(before);
    expect(gw.gateway.stats().limits).toMatchObject({ badKeys: 20, badKeyThrottled: 5 });
  });

  it("a throttled address is slowed, not shut out: valid keys behind it keep working, guesses get one lookup a second", async () => {
    if (Date.now() % 60_000 > 45_000) await sleep(60_000 - (Date.now() % 60_000) + 100);
    // A gateway of its own: the flood above throttled this address on the shared one.
    const gw = await startGateway({ BAD_KEY_LIMIT_PER_MINUTE: "5" });
    try {
      const s = await setup({});
      // A valid client behind the same address (NAT, a proxy) is already known to this instance.
      await chat(gw, s.secret, s.model);
      const guess = () =>
        fetch(`${gw.url}/chat/completions`, { method: "POST", headers: { authorization: `Bearer tg_guess_${Math.random().toString(36).slice(2)}`, "content-type": "application/json" }, body: "{}" });
      let throttled = false;
      for (let i = 0; i < 40 && !throttled; i++) throttled = (await guess()).status === 429;
      expect(throttled).toBe(true);
      // The known key passes with no wait, repeatedly.
      for (let i = 0; i < 5; i++) expect((await chat(gw, s.secret, s.model)).choices.length).toBe(1);
      // Guesses within the same second are refused without a lookup; a second later one is looked up (401).
      expect((await guess()).status).toBe(429);
      await sleep(1_100);
      expect((await guess()).status).toBe(401);
      expect((await guess()).status).toBe(429);
      // A valid key this instance has not seen yet gets through on the next lookup slot.
      const fresh = await setup({});
      await sleep(1_100);
      expect((await chat(gw, fresh.secret, fresh.model)).choices.length).toBe(1);
    } finally {
      await gw.close();
    }
  });
});

describe("an unreachable Redis", () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ REDIS_URL: "redis://127.0.0.1:9" });
  });
  afterAll(() => gw?.close());

  it("admits requests (rate limits are not money) instead of refusing or hanging them", async () => {
    const s = await setup({ rpmLimit: 1, maxConcurrent: 1 });
    const started = Date.now();
    for (let i = 0; i < 3; i++) await chat(gw, s.secret, s.model);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await h.database.prisma.receipt.count({ where: { keyId: s.key.id } })).toBe(3);
  });
});

const hasRedis = requireRedis();

describe.runIf(hasRedis)("limits across two instances sharing redis-server", () => {
  let redis: Awaited<ReturnType<typeof startRedis>>;
  let a: TestGateway;
  let b: TestGateway;
  beforeAll(async () => {
    redis = await startRedis();
    [a, b] = await Promise.all([startGateway({ REDIS_URL: redis.url }), startGateway({ REDIS_URL: redis.url })]);
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await redis?.stop();
  });

  it("rpmLimit counts the requests of both instances", async () => {
    const s = await setup({ rpmLimit: 4 });
    for (const gw of [a, b, a, b]) await chat(gw, s.secret, s.model);
    await expectLimited(chat(a, s.secret, s.model));
    await expectLimited(chat(b, s.secret, s.model));
    expect(await h.database.prisma.failedRequest.count({ where: { keyId: s.key.id, cause: "RATE_LIMITED" } })).toBe(2);
  });

  it("maxConcurrent counts the requests in flight on both instances", async () => {
    const s = await setup({ maxConcurrent: 1 }, { delayMs: 1_000 });
    const first = chat(a, s.secret, s.model);
    await h.fake.waitFor((rs) => rs.some((r) => r.model === s.upstreamModel));
    await expectLimited(chat(b, s.secret, s.model));
    await first;
    await chat(b, s.secret, s.model);
  });

  it("usage (what key plans and quotes read): a key's counts admitted through one limiter, read from another", async () => {
    const log = () => {};
    const [one, two] = [RateLimiter.create({ redisUrl: redis.url, badKeyLimitPerMinute: 0, log }), RateLimiter.create({ redisUrl: redis.url, badKeyLimitPerMinute: 0, log })];
    const memory = RateLimiter.create({ badKeyLimitPerMinute: 0, log });
    try {
      const keyId = uid("usage-key");
      const limits = { rpmLimit: 10, tpmLimit: 10_000, maxConcurrent: 5 };
      for (const limiter of [one, memory]) {
        const first = await limiter.admit(keyId, "r1", limits, 123);
        await limiter.admit(keyId, "r2", limits, 77);
        expect(first.ok).toBe(true);
        if (first.ok) await limiter.finish(first.ticket!);
      }
      expect(await two.usage(keyId)).toEqual({ requests: 2, tokens: 200, inFlight: 1 });
      expect(await memory.usage(keyId)).toEqual({ requests: 2, tokens: 200, inFlight: 1 });
      expect(await two.usage(uid("unused-key"))).toEqual({ requests: 0, tokens: 0, inFlight: 0 });
    } finally {
      await Promise.all([one.close(), two.close(), memory.close()]);
    }
  });

  it("tpmLimit: a bound admitted on A counts on B, and A's correction to real usage too", async () => {
    const s = await setup({ tpmLimit: 1000 });
    await chat(a, s.secret, s.model, 600);
    await sleep(100); // the correction is written to Redis after the receipt
    await chat(b, s.secret, s.model, 600);
    await sleep(100);
    await expectLimited(chat(a, s.secret, s.model, 960));
    await expectLimited(chat(b, s.secret, s.model, 960));
  });
});
