// The accounting primitives: reserve, settle, release, expiry and idempotent postings.
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { ledgerViolations } from "./support/invariants.ts";
import { expireHolds, release, reserve, settle } from "../src/money/holds.ts";
import { postEntry, scopeSpend, walletBucket } from "../src/money/ledger.ts";
import { setKeyCaps } from "../src/keys/index.ts";
import { setProjectBudget } from "../src/budgets/index.ts";
import { DomainError } from "../src/errors.ts";

let database: TestDatabase;
let w: Awaited<ReturnType<typeof f.world>>;
let bucketId: string;

beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(() => database.dispose());
beforeEach(async () => {
  w = await f.world({ credit: "10" });
  bucketId = (await walletBucket(w.org.id, "CREDIT")).id;
});

const hold = (amount: bigint, extra: Partial<Parameters<typeof reserve>[0]> = {}) =>
  reserve({ requestId: randomUUID(), bucketId, amount, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000, ...extra });

async function bucket() {
  return database.prisma.walletBucket.findUniqueOrThrow({ where: { id: bucketId } });
}

describe("reserve and settle", () => {
  it("holds the worst case, charges the actual amount, and writes one CHARGE entry with the running balance", async () => {
    const r = await hold(2_000_000n);
    expect(r.ok).toBe(true);
    expect((await bucket()).held).toBe(2_000_000n);
    expect((await scopeSpend("KEY_DAILY", w.key.id, "CREDIT")).held).toBe(2_000_000n);

    const s = await settle((r as { holdId: string }).holdId, 1_234_567n);
    expect(s.charged).toBe(1_234_567n);
    expect(s.balanceAfter).toBe(10_000_000n - 1_234_567n);
    const b = await bucket();
    expect(b.balance).toBe(8_765_433n);
    expect(b.held).toBe(0n);
    const entry = await database.prisma.ledgerEntry.findUniqueOrThrow({ where: { id: s.ledgerEntryId! } });
    expect(entry.kind).toBe("CHARGE");
    expect(entry.amount).toBe(-1_234_567n);
    expect(entry.balanceAfter).toBe(8_765_433n);
    expect(await scopeSpend("KEY_DAILY", w.key.id, "CREDIT")).toEqual({ spent: 1_234_567n, held: 0n });
    expect(await scopeSpend("PROJECT_MONTHLY", w.project.id, "CREDIT")).toEqual({ spent: 1_234_567n, held: 0n });
    expect(await ledgerViolations(database)).toEqual([]);
  });

  it("never charges more than the hold, and a hold resolves only once", async () => {
    const r = await hold(1_000n);
    if (!r.ok) throw new Error("refused");
    expect((await settle(r.holdId, 5_000n)).charged).toBe(1_000n);
    await expect(settle(r.holdId, 1n)).rejects.toThrow(/TG_HOLD_NOT_ACTIVE/);
    expect((await bucket()).balance).toBe(10_000_000n - 1_000n);
  });

  it("release charges only what the failure policy passes in, zero writes no entry", async () => {
    const a = await hold(500_000n);
    const b = await hold(500_000n);
    if (!a.ok || !b.ok) throw new Error("refused");
    expect(await release(a.holdId)).toMatchObject({ charged: 0n, ledgerEntryId: null });
    expect((await release(b.holdId, 42n)).charged).toBe(42n);
    expect((await bucket()).balance).toBe(10_000_000n - 42n);
    expect((await bucket()).held).toBe(0n);
    expect(await ledgerViolations(database)).toEqual([]);
  });

  it("refuses with the scope that does not fit and writes nothing", async () => {
    await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: "1", perRequestMaxCharge: "0.8" });
    await setProjectBudget(w.viewer, { projectId: w.project.id, monthlyCap: "0.5" });
    expect(await hold(900_000n)).toEqual({ ok: false, refusal: "KEY_PER_REQUEST" });
    expect(await hold(600_000n)).toEqual({ ok: false, refusal: "PROJECT_MONTHLY" });
    await setProjectBudget(w.viewer, { projectId: w.project.id, monthlyCap: null });
    expect((await hold(600_000n)).ok).toBe(true);
    expect(await hold(600_000n)).toEqual({ ok: false, refusal: "KEY_DAILY" });
    expect(await hold(20_000_000n, { amount: 0n })).toMatchObject({ ok: true }); // zero always fits
    await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: null, perRequestMaxCharge: null });
    expect(await hold(9_500_000n)).toEqual({ ok: false, refusal: "INSUFFICIENT_BALANCE" });
    expect(await database.prisma.hold.count({ where: { keyId: w.key.id } })).toBe(2);
    expect((await bucket()).held).toBe(600_000n);
    expect(await ledgerViolations(database)).toEqual([]);
  });

  it("counts in calendar-aligned UTC windows", async () => {
    await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: "1" });
    const lateToday = new Date(Date.UTC(2031, 0, 31, 23, 59, 59));
    const tomorrow = new Date(Date.UTC(2031, 1, 1, 0, 0, 1));
    const a = await hold(1_000_000n, { now: lateToday });
    expect(a.ok).toBe(true);
    expect(await hold(1n, { now: lateToday })).toEqual({ ok: false, refusal: "KEY_DAILY" });
    expect((await hold(1_000_000n, { now: tomorrow })).ok).toBe(true);
    const jan = await scopeSpend("PROJECT_MONTHLY", w.project.id, "CREDIT", lateToday);
    const feb = await scopeSpend("PROJECT_MONTHLY", w.project.id, "CREDIT", tomorrow);
    expect(jan.held).toBe(1_000_000n);
    expect(feb.held).toBe(1_000_000n);
  });
});

describe("expiry", () => {
  it("the sweeper releases holds whose TTL passed, and only those", async () => {
    const old = await hold(3_000_000n, { ttlMs: 50 });
    const fresh = await hold(1_000_000n, { ttlMs: 60_000 });
    expect(old.ok && fresh.ok).toBe(true);
    expect(await expireHolds(new Date(Date.now() + 1_000))).toBe(1);
    const b = await bucket();
    expect(b.held).toBe(1_000_000n);
    expect(await database.prisma.hold.count({ where: { keyId: w.key.id, status: "EXPIRED" } })).toBe(1);
    expect(await ledgerViolations(database)).toEqual([]);
  });

  it("a killed process leaves no stuck hold once its TTL passes", async () => {
    const requestId = randomUUID();
    if (testDatabaseKind() === "postgres") {
      // A real second process reserves, then is killed with SIGKILL before it can settle.
      const script = `
        import { openDatabase } from "./src/db/index.ts";
        import { reserve } from "./src/money/holds.ts";
        const d = await openDatabase({ databaseUrl: process.env.URL, migrate: false });
        const r = await reserve({ requestId: process.env.REQ, bucketId: process.env.BUCKET, amount: 4000000n,
          keyId: process.env.KEY, projectId: process.env.PROJECT, ttlMs: 300 }, d.prisma);
        console.log(JSON.stringify(r));
        setInterval(() => {}, 1000);`;
      const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
        env: { ...process.env, URL: database.url!, REQ: requestId, BUCKET: bucketId, KEY: w.key.id, PROJECT: w.project.id },
        stdio: ["ignore", "pipe", "inherit"],
      });
      await new Promise<void>((resolve, reject) => {
        child.stdout.on("data", (chunk: Buffer) => (chunk.toString().includes('"ok":true') ? resolve() : reject(new Error(chunk.toString()))));
        child.on("exit", (code) => reject(new Error(`child exited early: ${code}`)));
      });
      child.kill("SIGKILL");
    } else {
      // PGlite lives in this process: the "dead process" is a client that reserves and is then dropped.
      const other = await database.openSecondClient();
      expect((await reserve({ requestId, bucketId, amount: 4_000_000n, keyId: w.key.id, projectId: w.project.id, ttlMs: 300 }, other.prisma)).ok).toBe(true);
      await other.close();
    }
    expect((await bucket()).held).toBe(4_000_000n);
    // The restarted process's sweeper runs after the TTL.
    await new Promise((r) => setTimeout(r, 400));
    expect(await expireHolds()).toBeGreaterThanOrEqual(1);
    expect((await bucket()).held).toBe(0n);
    expect((await database.prisma.hold.findFirstOrThrow({ where: { requestId } })).status).toBe("EXPIRED");
    expect(await ledgerViolations(database)).toEqual([]);
  });
});

describe("idempotent postings", () => {
  const topUp = (key: string, amount = 5_000_000n) => postEntry({ bucketId, kind: "TOPUP", amount, idempotencyKey: key });

  it("replaying a top-up 10 times in a row writes one entry", async () => {
    const results = [];
    for (let i = 0; i < 10; i++) results.push(await topUp("seq-1"));
    expect(new Set(results.map((r) => r.entry.id)).size).toBe(1);
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect((await bucket()).balance).toBe(15_000_000n);
  });

  it("replaying a top-up 10 times at once writes one entry", async () => {
    const other = await database.openSecondClient();
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => postEntry({ bucketId, kind: "TOPUP", amount: 5_000_000n, idempotencyKey: "par-1" }, i % 2 ? other.prisma : database.prisma)),
    );
    await other.close();
    expect(new Set(results.map((r) => r.entry.id)).size).toBe(1);
    expect(await database.prisma.ledgerEntry.count({ where: { idempotencyKey: "client:par-1" } })).toBe(1);
    expect((await bucket()).balance).toBe(15_000_000n);
  });

  it("the same key with another amount is a CONFLICT and writes nothing", async () => {
    await topUp("c-1");
    const error = await topUp("c-1", 6_000_000n).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DomainError);
    expect((error as DomainError).code).toBe("CONFLICT");
    expect((await bucket()).balance).toBe(15_000_000n);
    expect(await ledgerViolations(database)).toEqual([]);
  });
});
