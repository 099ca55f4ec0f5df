// Budget leases across processes (issue 9), gateway processes started as `npm start` does, on one
// real PostgreSQL:
// - 10,000 requests over two processes against one key cap and one project cap never overspend,
//   and end with spent (counters and ledger) equal to the sum of receipts;
// - an instance idle for the lease TTL gives its headroom back: a request that fits the rest of
//   the cap is then admitted by the other instance;
// - a process killed with SIGKILL under load loses no receipt of a 2xx the client received, and
//   its leases lapse after their TTL.
// PostgreSQL-only (processes cannot share an in-process PGlite): run by the "postgres" project.
import { spawn, type ChildProcess } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import * as f from "./support/fixtures.ts";
import { reclaimLeases } from "../src/money/leases.ts";
import { scopeSpend } from "../src/money/ledger.ts";
import { freePort } from "./support/net.ts";

const LEASE_TTL_MS = 1_000;

let database: TestDatabase;
let fake: FakeUpstream;
const started: ChildProcess[] = [];

async function startInstance(): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const port = await freePort();
  let output = "";
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts", "serve"], {
    env: {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: database.url!,
      TOKENGATE_SECRET: "test-secret-not-for-production-0123456789",
      TOKENGATE_ADMIN_TOKEN: "tgadm_leases_test_token_000000000000000000000000",
      LEASE_TTL_MS: String(LEASE_TTL_MS),
      LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  started.push(child);
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

async function stop(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill(signal);
  await exited;
}

beforeAll(async () => {
  database = await createTestDatabase();
  fake = await startFakeUpstream();
}, 120_000);

afterAll(async () => {
  for (const child of started) await stop(child);
  await fake?.close();
  await database?.dispose();
});

/** One chat completion; 2xx answers carry their request id and charge (micro-units). */
async function ask(url: string, secret: string, model: string): Promise<{ status: number; requestId: string | null; code: string | null; charge: bigint | null }> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${secret}` },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 }),
  });
  const body = (await res.json()) as { error?: { code: string } };
  const charge = res.headers.get("x-tokengate-charge");
  return {
    status: res.status,
    requestId: res.headers.get("x-request-id"),
    code: body.error?.code ?? null,
    charge: res.ok && charge ? BigInt(charge.replace(".", "")) : null,
  };
}

async function books(organizationId: string) {
  const [receipts, ledger, failedCharges] = await Promise.all([
    database.prisma.receipt.aggregate({ where: { organizationId }, _sum: { charge: true }, _count: true }),
    database.prisma.ledgerEntry.aggregate({ where: { organizationId, kind: "CHARGE" }, _sum: { amount: true } }),
    database.prisma.failedRequest.aggregate({ where: { organizationId }, _sum: { charge: true } }),
  ]);
  return { receiptCount: receipts._count, receipts: receipts._sum.charge ?? 0n, ledger: -(ledger._sum.amount ?? 0n), failedCharges: failedCharges._sum.charge ?? 0n };
}

// 100 micros per input token, 1,000 per output token: each request's worst case is ~7,600 micros and
// it costs 3,700 (7 prompt + 3 completion tokens as the fake reports).
const PRICES: [string, string] = ["100", "1000"];

describe("budget leases over two gateway processes on PostgreSQL", () => {
  it("10,000 requests against one key cap and one project cap never overspend; spent = Σ receipts", async () => {
    const a = await startInstance();
    const b = await startInstance();
    // The key cap binds first (≈ 1,350 requests), the project cap would bind a little later.
    const w = await f.world({ credit: "1000", key: { dailyCap: "5" }, project: { dailyCap: "5.2" } });
    await f.route(w.viewer, w.org.id, "lease-model", [{ name: "p", baseUrl: fake.url, upstreamModel: "lease-up", price: PRICES }]);
    fake.set("lease-up", { type: "ok", text: " a b c" });

    const TOTAL = 10_000;
    let next = 0;
    const outcomes: Array<Awaited<ReturnType<typeof ask>>> = [];
    await Promise.all(
      Array.from({ length: 32 }, async (_, worker) => {
        while (next < TOTAL) {
          next++;
          outcomes.push(await ask((worker % 2 ? b : a).url, w.secret, "lease-model"));
        }
      }),
    );
    expect(outcomes).toHaveLength(TOTAL);
    const served = outcomes.filter((o) => o.status === 200);
    const refused = outcomes.filter((o) => o.status !== 200);
    for (const o of refused) expect({ status: o.status, code: o.code }).toEqual({ status: 402, code: "budget_exceeded" });
    expect(served.length).toBeGreaterThan(1_000);
    const total = served.reduce((sum, o) => sum + o.charge!, 0n);
    expect(total).toBeLessThanOrEqual(5_000_000n);

    await Promise.all([stop(a.child), stop(b.child)]);
    const after = await books(w.org.id);
    expect(after.receiptCount).toBe(served.length);
    expect(after.receipts).toBe(total);
    expect(after.ledger).toBe(total);
    expect((await scopeSpend("KEY_DAILY", w.key.id, "CREDIT")).spent).toBe(total);
    expect((await scopeSpend("PROJECT_DAILY", w.project.id, "CREDIT")).spent).toBe(total);
    // Stopped instances gave their leases back: nothing is held any more.
    expect(await database.prisma.$queryRawUnsafe<Array<{ n: bigint }>>(`SELECT count(*) AS n FROM "BudgetLease"`)).toEqual([{ n: 0n }]);
    expect((await scopeSpend("KEY_DAILY", w.key.id, "CREDIT")).held).toBe(0n);
    const bucket = await database.prisma.walletBucket.findFirstOrThrow({ where: { organizationId: w.org.id, bucket: "CREDIT" } });
    expect(bucket.held).toBe(0n);
    expect(bucket.balance).toBe(1_000_000_000n - total);
  }, 600_000);

  it("an instance idle for the lease TTL gives its headroom back to the other", async () => {
    const a = await startInstance();
    const b = await startInstance();
    // Room for about 8 worst cases: B's first grant takes a good part of it.
    const w = await f.world({ credit: "1000", key: { dailyCap: "0.06" } });
    await f.route(w.viewer, w.org.id, "idle-model", [{ name: "p", baseUrl: fake.url, upstreamModel: "idle-up", price: PRICES }]);
    fake.set("idle-up", { type: "ok", text: " a b c" });
    expect((await ask(b.url, w.secret, "idle-model")).status).toBe(200);
    // B is idle from now on; after its TTL, A may spend all that is left, and is refused only when a request no longer fits.
    await new Promise((r) => setTimeout(r, LEASE_TTL_MS + 300));
    let refusal: Awaited<ReturnType<typeof ask>> | null = null;
    for (let i = 0; i < 40 && !refusal; i++) {
      const o = await ask(a.url, w.secret, "idle-model");
      if (o.status !== 200) refusal = o;
    }
    expect(refusal).toMatchObject({ status: 402, code: "budget_exceeded" });
    const { spent } = await scopeSpend("KEY_DAILY", w.key.id, "CREDIT");
    const worst = 7_600n; // ≥ the worst case reserved per request here
    expect(spent).toBeLessThanOrEqual(60_000n);
    expect(60_000n - spent).toBeLessThan(worst);
    await Promise.all([stop(a.child), stop(b.child)]);
  }, 120_000);

  it("SIGKILL under load: every 2xx the client received has its receipt; the dead instance's leases lapse", async () => {
    const victim = await startInstance();
    const w = await f.world({ credit: "1000", key: { dailyCap: "100" } });
    await f.route(w.viewer, w.org.id, "kill-model", [{ name: "p", baseUrl: fake.url, upstreamModel: "kill-up", price: PRICES }]);
    fake.set("kill-up", { type: "ok", text: " a b c" });

    const received: string[] = [];
    let killed = false;
    const load = Promise.all(
      Array.from({ length: 16 }, async () => {
        while (!killed) {
          const o = await ask(victim.url, w.secret, "kill-model").catch(() => null);
          if (o?.status === 200) received.push(o.requestId!);
        }
      }),
    );
    while (received.length < 300) await new Promise((r) => setTimeout(r, 10));
    await stop(victim.child, "SIGKILL");
    killed = true;
    await load;

    const receipts = await database.prisma.receipt.findMany({ where: { requestId: { in: received } }, select: { requestId: true } });
    expect(receipts.length).toBe(received.length);
    // Its leases stay counted until their TTL and the reclaim grace pass (a grace of 0 here); then nothing stays held.
    await new Promise((r) => setTimeout(r, LEASE_TTL_MS + 100));
    await reclaimLeases(database.prisma, 0);
    expect(await database.prisma.$queryRawUnsafe<Array<{ n: bigint }>>(`SELECT count(*) AS n FROM "BudgetLease"`)).toEqual([{ n: 0n }]);
    const counter = await scopeSpend("KEY_DAILY", w.key.id, "CREDIT");
    expect(counter.held).toBe(0n);
    const after = await books(w.org.id);
    expect(counter.spent).toBe(after.receipts + after.failedCharges);
    expect(after.ledger).toBe(after.receipts + after.failedCharges);
  }, 300_000);
});
