// Two gateway processes on one real PostgreSQL and one real Redis behave as one system:
// a subscriber on A sees spend served by B, revoking on A makes B refuse within 1 s, and
// 100 concurrent requests split over both never overspend one key cap.
// PostgreSQL-only (two processes cannot share an in-process PGlite): run by the "postgres" project.
import { spawn, type ChildProcess } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI, { APIError } from "openai";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import * as f from "./support/fixtures.ts";
import { requireRedis, startRedis } from "./support/redis.ts";
import { token, wsClient } from "./support/graphql.ts";
import { formatMoney, parseMoney } from "../src/money/amounts.ts";
import type { RunningServer } from "../src/server.ts";
import { freePort } from "./support/net.ts";

const hasRedis = requireRedis();

let database: TestDatabase;
let redis: Awaited<ReturnType<typeof startRedis>>;
let fake: FakeUpstream;
const instances: Array<{ child: ChildProcess; url: string; output: () => string }> = [];

async function startInstance(): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const port = await freePort();
  let output = "";
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts", "serve"], {
    env: {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: database.url!,
      REDIS_URL: redis.url,
      // The fixtures encrypt channel credentials with this secret; every instance shares it.
      TOKENGATE_SECRET: "test-secret-not-for-production-0123456789",
      TOKENGATE_ADMIN_TOKEN: "tgadm_multi_instance_test_token_0000000000000000",
      LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  while (
    !(await fetch(`${url}/healthz`).then(
      (r) => r.ok,
      () => false,
    ))
  ) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`instance did not start:\n${output}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return { child, url, output: () => output };
}

beforeAll(async () => {
  if (!hasRedis) return;
  database = await createTestDatabase();
  redis = await startRedis();
  fake = await startFakeUpstream();
  instances.push(...(await Promise.all([startInstance(), startInstance()])));
}, 120_000);

afterAll(async () => {
  for (const i of instances) {
    const exited = new Promise((r) => i.child.once("exit", r));
    i.child.kill("SIGTERM");
    await exited;
  }
  await fake?.close();
  await redis?.stop();
  await database?.dispose();
});

async function setup(keyCaps: { dailyCap?: string; rpmLimit?: number } = {}) {
  const w = await f.world({ credit: "100", key: keyCaps });
  const model = `gpt-multi-${Math.random().toString(36).slice(2, 7)}`;
  await f.route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: fake.url, upstreamModel: `${model}-up`, price: ["2.5", "10"] }]);
  const client = (i: number) => new OpenAI({ apiKey: w.secret, baseURL: `${instances[i]!.url}/v1`, maxRetries: 0 });
  return { ...w, model, client };
}

describe.runIf(hasRedis)("two instances, one PostgreSQL, one Redis", () => {
  it("a subscriber on A receives the spend of a request served by B, with the charge of the header and the receipt", async () => {
    const s = await setup();
    const subscriber = wsClient({ url: instances[0]!.url } as RunningServer, await token("ORG_ADMIN", s.org.id));
    const received: Array<{ requestId: string; charge: { amount: string }; status: string }> = [];
    let ready = false;
    subscriber.on("connected", () => (ready = true));
    const dispose = subscriber.subscribe<{ keySpend: (typeof received)[number] }>(
      { query: `subscription($k: ID!) { keySpend(keyId: $k) { requestId charge { amount } status } }`, variables: { k: s.key.id } },
      { next: (v) => received.push(v.data!.keySpend), error: () => undefined, complete: () => undefined },
    );
    while (!ready) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 300)); // the subscription is registered with Redis

    const { response } = await s
      .client(1)
      .chat.completions.create({ model: s.model, messages: [{ role: "user", content: "hello from B" }], max_tokens: 20 })
      .withResponse();
    const requestId = response.headers.get("x-request-id")!;
    const charge = response.headers.get("x-tokengate-charge")!;
    const deadline = Date.now() + 5_000;
    while (!received.some((e) => e.requestId === requestId) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const event = received.find((e) => e.requestId === requestId);
    expect(event).toEqual({ requestId, charge: { amount: charge }, status: "SETTLED" });
    const receipt = await database.prisma.receipt.findUniqueOrThrow({ where: { requestId } });
    expect(formatMoney(receipt.charge)).toBe(charge);
    dispose();
    await subscriber.dispose();
  });

  it("revokeKey on A makes B refuse the key within 1 s", async () => {
    const s = await setup();
    await s.client(1).chat.completions.create({ model: s.model, messages: [{ role: "user", content: "warm B's key cache" }], max_tokens: 5 });
    const admin = await token("ORG_ADMIN", s.org.id);
    const revoked = await fetch(`${instances[0]!.url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${admin}` },
      body: JSON.stringify({ query: `mutation($k: ID!) { revokeKey(id: $k) { status } }`, variables: { k: s.key.id } }),
    });
    expect((await revoked.json()).data.revokeKey.status).toBe("REVOKED");
    const started = Date.now();
    let status = 200;
    while (Date.now() - started < 1_000) {
      status = await s
        .client(1)
        .chat.completions.create({ model: s.model, messages: [{ role: "user", content: "still?" }], max_tokens: 5 })
        .then(
          () => 200,
          (e: unknown) => (e instanceof APIError ? (e.status ?? 0) : 0),
        );
      if (status === 401) break;
    }
    expect(status).toBe(401);
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  it("100 concurrent requests split over both instances never overspend one key cap", async () => {
    const s = await setup({ dailyCap: "0.01" });
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        s
          .client(i % 2)
          .chat.completions.create({ model: s.model, messages: [{ role: "user", content: `request ${i}` }], max_tokens: 100 })
          .withResponse()
          .then(
            (r) => ({ ok: true as const, charge: parseMoney(r.response.headers.get("x-tokengate-charge")!, "charge") }),
            (e: unknown) => ({ ok: false as const, status: (e as APIError).status, code: (e as APIError).code }),
          ),
      ),
    );
    const served = results.filter((r) => r.ok);
    const refused = results.filter((r) => !r.ok);
    expect(served.length).toBeGreaterThan(0);
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) expect(r).toMatchObject({ status: 402, code: "budget_exceeded" });
    const total = served.reduce((sum, r) => sum + (r.ok ? r.charge : 0n), 0n);
    expect(total).toBeLessThanOrEqual(10_000n);
    const ledger = await database.prisma.ledgerEntry.aggregate({ where: { organizationId: s.org.id, kind: "CHARGE" }, _sum: { amount: true } });
    expect(-(ledger._sum.amount ?? 0n)).toBe(total);
    const failures = await database.prisma.failedRequest.findMany({ where: { keyId: s.key.id } });
    expect(failures).toHaveLength(refused.length);
    expect(failures.every((x) => x.cause === "BUDGET_EXCEEDED" && x.capScope === "KEY_DAILY")).toBe(true);
  });

  it("a key's rpmLimit holds for both processes together (counted in Redis): 20 concurrent requests, exactly 6 served", async () => {
    const s = await setup({ rpmLimit: 6 });
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        s
          .client(i % 2)
          .chat.completions.create({ model: s.model, messages: [{ role: "user", content: `request ${i}` }], max_tokens: 5 })
          .then(
            () => ({ ok: true as const }),
            (e: unknown) => ({ ok: false as const, status: (e as APIError).status, code: (e as APIError).code, retryAfter: (e as APIError).headers?.get("retry-after") }),
          ),
      ),
    );
    expect(results.filter((r) => r.ok)).toHaveLength(6);
    for (const r of results.filter((r) => !r.ok)) expect(r).toMatchObject({ status: 429, code: "rate_limit_exceeded", retryAfter: expect.stringMatching(/^\d+$/) });
    expect(await database.prisma.failedRequest.count({ where: { keyId: s.key.id, cause: "RATE_LIMITED" } })).toBe(14);
  });
});
