// The money holes of issue 14 (points 1, 3, 4 and 7), each as it was found: a fallback that spent a
// backup channel past its cap, a lease given back while a request was being admitted against it, a
// lapsed lease that lost its receipt on a tight balance, a run paused between its grant and the next
// request, a grant racing a cap change, and a receipt lost to a write error after its response was
// sent. Every test fails on the code before the fix.
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { postEntry, scopeSpend, walletBucket } from "../src/money/ledger.ts";
import { chargeBatch, LeasePool, reclaimLeases } from "../src/money/leases.ts";
import { writeCharged } from "../src/money/index.ts";
import { recordBatch, recordWritten, type BatchItem } from "../src/money/writer.ts";
import { directSql } from "../src/db/index.ts";
import { changeRunPause, startRun } from "../src/runs/index.ts";
import { setChannelLimits } from "../src/routing/index.ts";
import { formatMoney } from "../src/money/amounts.ts";
import { createTestDatabase } from "./support/db.ts";
import { startFakeUpstream } from "./support/fake-upstream.ts";
import { startGateway, uid } from "./support/gateway.ts";
import * as f from "./support/fixtures.ts";
import { ledgerViolations } from "./support/invariants.ts";

const TTL_MS = 1_000;

async function leaseAmounts(sql: Sql, ids: string[]): Promise<Map<string, bigint>> {
  const rows = await sql.query<{ id: string; amount: string }>(`SELECT id, amount::text FROM "BudgetLease" WHERE id = ANY($1)`, [ids]);
  return new Map(rows.map((r) => [r.id, BigInt(r.amount)]));
}

type Sql = { query: <T>(q: string, p?: unknown[]) => Promise<T[]> };

/** The lease books without receipts (pool-level tests charge without records): balances, held sums, caps, available. */
async function leaseBookViolations(sql: Sql): Promise<string[]> {
  const out: string[] = [];
  for (const row of await sql.query<{ id: string; balance: string; held: string; ledger: string; leases: string }>(`
    SELECT b.id, b.balance::text, b.held::text,
           COALESCE((SELECT SUM(amount) FROM "LedgerEntry" e WHERE e."bucketId" = b.id), 0)::text AS ledger,
           COALESCE((SELECT SUM(amount) FROM "BudgetLease" l WHERE l."bucketId" = b.id AND l.scope = 'BALANCE'), 0)::text AS leases
      FROM "WalletBucket" b`)) {
    if (row.balance !== row.ledger) out.push(`bucket ${row.id}: balance ${row.balance} != ledger ${row.ledger}`);
    if (row.held !== row.leases) out.push(`bucket ${row.id}: held ${row.held} != leases ${row.leases}`);
    if (BigInt(row.held) > BigInt(row.balance)) out.push(`bucket ${row.id}: held ${row.held} > balance ${row.balance}`);
  }
  for (const row of await sql.query<{ scope: string; scope_id: string; held: string; leases: string; used: string; cap: string | null }>(`
    SELECT c.scope::text, c."scopeId" AS scope_id, c.held::text, (c.spent + c.held)::text AS used, tg_effective_cap(c.scope, c."scopeId", c.bucket)::text AS cap,
           COALESCE((SELECT SUM(l.amount) FROM "BudgetLease" l JOIN "WalletBucket" b ON b.id = l."bucketId"
                      WHERE l.scope = c.scope::text AND l."scopeId" = c."scopeId" AND b.bucket = c.bucket AND l."windowStart" = c."windowStart"), 0)::text AS leases
      FROM "SpendCounter" c`)) {
    if (row.held !== row.leases) out.push(`counter ${row.scope}: held ${row.held} != leases ${row.leases}`);
    if (row.cap !== null && BigInt(row.used) > BigInt(row.cap)) out.push(`counter ${row.scope}: used ${row.used} > cap ${row.cap}`);
  }
  return out;
}

/** A balance of 0.2, and two instances on one moving clock (their local and the database's). */
async function tightWorld() {
  const w = await f.world({ credit: "0" });
  const bucket = await walletBucket(w.org.id, "CREDIT");
  await postEntry({ bucketId: bucket.id, kind: "TOPUP", amount: 200_000n, idempotencyKey: randomUUID() });
  const sql = directSql();
  const clock = { ms: Date.now() };
  const options = { ttlMs: TTL_MS, chunk: (need: bigint) => need, clock: () => clock.ms, databaseTime: () => new Date(clock.ms) };
  const stalled = new LeasePool(sql, { instanceId: `stall-${randomUUID()}`, ...options });
  const other = new LeasePool(sql, { instanceId: `other-${randomUUID()}`, ...options });
  const input = { bucketId: bucket.id, keyId: w.key.id, projectId: w.project.id };
  return { w, bucket, sql, stalled, other, input, clock };
}

describe("issue 14 money holes", () => {
  it("point 1: a fallback is admitted against the backup channel's own cap and counted there", async () => {
    const database = await createTestDatabase();
    const fake = await startFakeUpstream();
    const gw = await startGateway({});
    try {
      const w = await f.world({ credit: "100" });
      const model = uid("fallback-capped");
      const [primaryModel, backupModel] = [uid("a"), uid("b")];
      const { channels } = await f.route(w.viewer, w.org.id, model, [
        { name: "a", baseUrl: fake.url, upstreamModel: primaryModel, price: ["100", "1000"] },
        { name: "b", baseUrl: fake.url, upstreamModel: backupModel, price: ["100", "1000"] },
      ]);
      const [a, b] = channels;
      fake.set(primaryModel, { type: "status", status: 503 });
      fake.set(backupModel, { type: "ok", text: " a b c" });
      const cap = 20_000n;
      await setChannelLimits(w.viewer, { channelId: b!.id, dailyCap: formatMoney(cap) });

      const client = gw.client(w.secret);
      let served = 0;
      for (let i = 0; i < 12; i++) {
        const ok = await client.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 }).then(
          () => true,
          () => false,
        );
        if (ok) served++;
      }
      const receipts = await database.prisma.receipt.findMany({ where: { keyId: w.key.id } });
      expect(receipts.every((r) => r.channelId === b!.id)).toBe(true);
      expect(receipts.length).toBe(served);
      const onB = receipts.reduce((sum, r) => sum + r.charge, 0n);
      // Some were served, the rest refused once B's cap could not cover another worst case.
      expect(served).toBeGreaterThan(0);
      expect(served).toBeLessThan(12);
      expect(onB).toBeLessThanOrEqual(cap);
      await gw.gateway.recallLeases();
      // Counted where it was spent: B's counter holds B's receipts, A's holds nothing.
      expect((await scopeSpend("CHANNEL_DAILY", b!.id, "CREDIT")).spent).toBe(onB);
      expect((await scopeSpend("CHANNEL_DAILY", a!.id, "CREDIT")).spent).toBe(0n);
      expect(await ledgerViolations(database)).toEqual([]);
    } finally {
      await gw.close();
      await fake.close();
      await database.dispose();
    }
  });

  it("point 3: a lease being given back admits nothing more; the database always holds what the instance admitted", async () => {
    const database = await createTestDatabase();
    try {
      const w = await f.world({ credit: "100", key: { dailyCap: "1" } });
      const bucket = await walletBucket(w.org.id, "CREDIT");
      const sql = directSql();
      const pool = new LeasePool(sql, { instanceId: `ret-${randomUUID()}`, ttlMs: 60_000, chunk: (need) => need * 4n });
      const input = { bucketId: bucket.id, keyId: w.key.id, projectId: w.project.id };
      const first = await pool.admit({ ...input, amount: 100_000n });
      if (!first.ok) throw new Error("refused");
      pool.release(first.hold);
      // The give-back goes out; a request is admitted in the same turn (before the statement ran).
      const back = pool.returnAll();
      const admitted = pool.admit({ ...input, amount: 100_000n });
      await back;
      const second = await admitted;
      expect(second.ok).toBe(true);
      const local = pool.snapshot();
      const stored = await leaseAmounts(
        database.sql,
        local.map((l) => l.id),
      );
      for (const lease of local) expect(stored.get(lease.id) ?? 0n).toBeGreaterThanOrEqual(lease.inFlight);
      // Once its free part is back too, another instance can have everything but what this one holds in flight.
      await pool.returnAll();
      const other = new LeasePool(sql, { instanceId: `ret2-${randomUUID()}`, ttlMs: 60_000, chunk: (need) => need });
      expect(await other.admit({ ...input, amount: 900_001n })).toEqual({ ok: false, refusal: "KEY_DAILY" });
      expect((await other.admit({ ...input, amount: 900_000n })).ok).toBe(true);
      expect(await leaseBookViolations(database.sql)).toEqual([]);
    } finally {
      await database.dispose();
    }
  });

  it("point 4: a lease whose instance stalls past its TTL stays held, so a tight balance still pays the request delivered on it", async () => {
    const database = await createTestDatabase();
    try {
      const { w, bucket, sql, stalled, other, input, clock } = await tightWorld();
      const r1 = await stalled.admit({ ...input, amount: 150_000n });
      if (!r1.ok) throw new Error("refused");
      // No heartbeat for three TTLs; the other instance sweeps with the gateway's grace.
      clock.ms += 3 * TTL_MS;
      await reclaimLeases(sql, 660_000, new Date(clock.ms));
      // The stalled request's 0.15 is still counted: the other instance cannot take it.
      expect(await other.admit({ ...input, amount: 60_000n })).toEqual({ ok: false, refusal: "INSUFFICIENT_BALANCE" });
      expect((await other.admit({ ...input, amount: 50_000n })).ok).toBe(true);
      // The stalled instance comes back and charges what it delivered, in full.
      const entries = await chargeBatch(stalled, [{ requestId: randomUUID(), bucketId: bucket.id, charge: 150_000n, hold: r1.hold }], sql);
      expect(entries.size).toBe(1);
      const after = await walletBucket(w.org.id, "CREDIT");
      expect(after.balance).toBe(50_000n);
      expect(after.balance - after.held).toBeGreaterThanOrEqual(0n);
      expect(await leaseBookViolations(database.sql)).toEqual([]);
    } finally {
      await database.dispose();
    }
  });

  it("point 4: past the grace the lease is reclaimed; its charge is admitted anew and written, never failing the batch", async () => {
    const database = await createTestDatabase();
    try {
      const { w, bucket, sql, stalled, other, input, clock } = await tightWorld();
      const r1 = await stalled.admit({ ...input, amount: 150_000n });
      const r2 = await stalled.admit({ ...input, amount: 40_000n });
      if (!r1.ok || !r2.ok) throw new Error("refused");
      clock.ms += 10 * TTL_MS;
      expect(await reclaimLeases(sql, 0, new Date(clock.ms))).toBeGreaterThan(0);
      // Another instance takes most of the balance meanwhile.
      expect((await other.admit({ ...input, amount: 180_000n })).ok).toBe(true);
      await stalled.maintain();
      // Both are written: the first cannot be covered any more (charged 0), the second fits in what is left.
      const charged = await chargeBatch(
        stalled,
        [
          { requestId: randomUUID(), bucketId: bucket.id, charge: 150_000n, hold: r1.hold },
          { requestId: randomUUID(), bucketId: bucket.id, charge: 20_000n, hold: r2.hold },
        ],
        sql,
      );
      expect(charged.size).toBe(1);
      const after = await walletBucket(w.org.id, "CREDIT");
      expect(after.balance).toBe(180_000n);
      expect(after.balance - after.held).toBeGreaterThanOrEqual(0n);
      expect(await leaseBookViolations(database.sql)).toEqual([]);
    } finally {
      await database.dispose();
    }
  });

  it("point 4: a stalled instance that writes before its renewal finds its lease reclaimed: the charge is admitted anew, the batch never fails", async () => {
    const database = await createTestDatabase();
    try {
      const { w, bucket, sql, stalled, other, input, clock } = await tightWorld();
      const r1 = await stalled.admit({ ...input, amount: 150_000n });
      const r2 = await stalled.admit({ ...input, amount: 40_000n });
      if (!r1.ok || !r2.ok) throw new Error("refused");
      clock.ms += 10 * TTL_MS;
      expect(await reclaimLeases(sql, 0, new Date(clock.ms))).toBeGreaterThan(0);
      expect((await other.admit({ ...input, amount: 180_000n })).ok).toBe(true);
      // No renewal ran since: the pool still believes in its leases when the answers are written.
      const charged = await chargeBatch(
        stalled,
        [
          { requestId: randomUUID(), bucketId: bucket.id, charge: 150_000n, hold: r1.hold },
          { requestId: randomUUID(), bucketId: bucket.id, charge: 20_000n, hold: r2.hold },
        ],
        sql,
        new Date(clock.ms),
      );
      expect(charged.size).toBe(1);
      const after = await walletBucket(w.org.id, "CREDIT");
      expect(after.balance).toBe(180_000n);
      expect(after.held).toBe(180_000n);
      expect(await leaseBookViolations(database.sql)).toEqual([]);
    } finally {
      await database.dispose();
    }
  });

  it("a charge dropped for want of cover stays dropped when its write is retried (found by the simulation on PostgreSQL)", async () => {
    const database = await createTestDatabase();
    try {
      const { w, bucket, sql, stalled, other, input, clock } = await tightWorld();
      const r1 = await stalled.admit({ ...input, amount: 150_000n });
      if (!r1.ok) throw new Error("refused");
      clock.ms += 10 * TTL_MS;
      expect(await reclaimLeases(sql, 0, new Date(clock.ms))).toBeGreaterThan(0);
      expect((await other.admit({ ...input, amount: 180_000n })).ok).toBe(true);
      await stalled.maintain();
      const item: BatchItem = {
        kind: "failure",
        id: randomUUID(),
        bucketId: bucket.id,
        leases: [],
        record: {
          requestId: randomUUID(),
          organizationId: w.org.id,
          keyId: w.key.id,
          projectId: w.project.id,
          runId: null,
          routeId: null,
          channelId: null,
          requestedModel: "m",
          endpoint: "/v1/chat/completions",
          cause: "CLIENT_CLOSED",
          capScope: null,
          message: "client closed",
          httpStatus: 499,
          upstreamStatus: null,
          attempts: 1,
          bucket: "CREDIT",
          currency: "USD",
          promptTokens: 10,
          completionTokens: 0,
          priceSnapshotId: null,
          charge: 150_000n,
          estimated: true,
        },
      };
      let calls = 0;
      const held = { hold: r1.hold };
      const { item: entry } = await writeCharged(
        {
          pool: stalled,
          // The first try fails before its commit; the retry must not bring the dropped charge back.
          submit: async (e) => {
            if (++calls === 1) throw new Error("connection refused");
            return (await recordBatch([e], new Date(clock.ms)))[0]!;
          },
          written: recordWritten,
          onError: () => {},
          tries: 6,
          sleep: async () => {},
        },
        item,
        held,
      );
      stalled.settled(held.hold, entry.record.charge);
      expect(calls).toBe(2);
      expect(entry.record.charge).toBe(0n);
      const failed = await database.prisma.failedRequest.findUniqueOrThrow({ where: { id: item.id! }, include: { ledgerEntry: true } });
      expect(failed.charge).toBe(0n);
      expect(failed.ledgerEntry).toBeNull();
      const after = await walletBucket(w.org.id, "CREDIT");
      expect(after.balance).toBe(200_000n);
      expect(await leaseBookViolations(database.sql)).toEqual([]);
    } finally {
      await database.dispose();
    }
  });

  it("a sweep reclaims every expired lease of a bucket at once (a balance lease given back no longer hides the others)", async () => {
    const database = await createTestDatabase();
    try {
      const w = await f.world({ credit: "10", key: { dailyCap: "5" } });
      const bucket = await walletBucket(w.org.id, "CREDIT");
      const { route, channels } = await f.route(w.viewer, w.org.id, uid("sweep"), [{ name: "c", baseUrl: "http://127.0.0.1:9", upstreamModel: "m", price: ["1", "2"] }]);
      const sql = directSql();
      const clock = { ms: Date.now() };
      // Three dead instances, six leases each (balance, key day, project day and month, route, channel):
      // more rows than the sweep's cursor fetches at once, where the old sweep skipped the rest.
      const dead = [0, 1, 2].map(
        (i) => new LeasePool(sql, { instanceId: `dead${i}-${randomUUID()}`, ttlMs: TTL_MS, chunk: (need) => need, clock: () => clock.ms, databaseTime: () => new Date(clock.ms) }),
      );
      const input = { bucketId: bucket.id, keyId: w.key.id, projectId: w.project.id, routeId: route.id, channelId: channels[0]!.id, amount: 100_000n };
      for (const pool of dead) expect((await pool.admit(input)).ok).toBe(true);
      const leases = await database.sql.query<{ n: string }>(`SELECT count(*)::text AS n FROM "BudgetLease" WHERE "bucketId" = $1`, [bucket.id]);
      expect(leases[0]!.n).toBe("18");
      for (const pool of dead) pool.abandon();
      clock.ms += 2 * TTL_MS;
      expect(await reclaimLeases(sql, 0, new Date(clock.ms))).toBe(18);
      const after = await walletBucket(w.org.id, "CREDIT");
      expect(after.held).toBe(0n);
      for (const [scope, id] of [
        ["KEY_DAILY", w.key.id],
        ["ROUTE_DAILY", route.id],
        ["CHANNEL_DAILY", channels[0]!.id],
      ] as const) {
        expect((await scopeSpend(scope, id, "CREDIT")).held).toBe(0n);
      }
      expect(await leaseBookViolations(database.sql)).toEqual([]);
    } finally {
      await database.dispose();
    }
  });

  it("a write whose commit was acknowledged to no one is not written twice when it is retried", async () => {
    const database = await createTestDatabase();
    try {
      const w = await f.world({ credit: "10" });
      const bucket = await walletBucket(w.org.id, "CREDIT");
      const { route, channels } = await f.route(w.viewer, w.org.id, uid("ack"), [{ name: "c", baseUrl: "http://127.0.0.1:9", upstreamModel: "m", price: ["1", "2"] }]);
      const price = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: channels[0]!.id } });
      const pool = new LeasePool(directSql(), { instanceId: `ack-${randomUUID()}`, ttlMs: 60_000, chunk: (need) => need });
      const admitted = await pool.admit({ bucketId: bucket.id, keyId: w.key.id, projectId: w.project.id, routeId: route.id, channelId: channels[0]!.id, amount: 50_000n });
      if (!admitted.ok) throw new Error("refused");
      const requestId = randomUUID();
      const item: BatchItem = {
        kind: "receipt",
        id: randomUUID(),
        bucketId: bucket.id,
        leases: [],
        record: {
          requestId,
          organizationId: w.org.id,
          keyId: w.key.id,
          projectId: w.project.id,
          runId: null,
          routeId: route.id,
          channelId: channels[0]!.id,
          requestedModel: "m",
          upstreamModel: "m",
          endpoint: "/v1/chat/completions",
          channelRole: "PRIMARY",
          fallback: false,
          attempts: 1,
          bucket: "CREDIT",
          currency: "USD",
          promptTokens: 1_000,
          completionTokens: 500,
          priceSnapshotId: price.id,
          charge: 2_000n,
          stream: true,
          latencyMs: 1,
          status: 200,
        },
      };
      let calls = 0;
      const held = { hold: admitted.hold };
      const { item: entry } = await writeCharged(
        {
          pool,
          // The first statement commits and its answer is lost (the connection drops at the commit).
          submit: async (e) => {
            const written = await recordBatch([e]);
            if (++calls === 1) throw new Error("connection terminated unexpectedly");
            return written[0]!;
          },
          written: recordWritten,
          onError: () => {},
          tries: 6,
          sleep: async () => {},
        },
        item,
        held,
      );
      pool.settled(held.hold, entry.record.charge);
      expect(calls).toBe(1);
      const receipts = await database.prisma.receipt.findMany({ where: { requestId }, include: { ledgerEntry: true } });
      expect(receipts).toHaveLength(1);
      expect(receipts[0]!.charge).toBe(2_000n);
      expect(receipts[0]!.ledgerEntry!.amount).toBe(-2_000n);
      expect((await walletBucket(w.org.id, "CREDIT")).balance).toBe(10_000_000n - 2_000n);
      await pool.returnAll();
      expect(await ledgerViolations(database)).toEqual([]);
    } finally {
      await database.dispose();
    }
  });

  it("point 7: a paused run grants nothing, even to an instance that missed the pause event", async () => {
    const database = await createTestDatabase();
    try {
      const w = await f.world({ credit: "100" });
      const bucket = await walletBucket(w.org.id, "CREDIT");
      const run = await startRun(w.viewer, { keyId: w.key.id, mode: "QUICK", cap: "1" });
      const pool = new LeasePool(directSql(), { instanceId: `run-${randomUUID()}`, ttlMs: 60_000, chunk: (need) => need * 4n });
      const input = { bucketId: bucket.id, keyId: w.key.id, projectId: w.project.id, runId: run.id };
      const first = await pool.admit({ ...input, amount: 10_000n });
      if (!first.ok) throw new Error("refused");
      pool.release(first.hold);
      await changeRunPause(w.viewer, run.id, "pauseRun");
      // No leasesRevoked reached this pool: its heartbeat learns the revocation.
      await pool.maintain();
      expect(await pool.admit({ ...input, amount: 10_000n })).toEqual({ ok: false, refusal: "RUN_PAUSED" });
      await changeRunPause(w.viewer, run.id, "resumeRun");
      await pool.forgetScope("RUN_TOTAL", run.id);
      expect((await pool.admit({ ...input, amount: 10_000n })).ok).toBe(true);
    } finally {
      await database.dispose();
    }
  });

  it("point 7: with SEND_BEFORE_COMMIT_MS a write error is retried: the receipt of an answered request is never dropped", async () => {
    const database = await createTestDatabase();
    const fake = await startFakeUpstream();
    const gw = await startGateway({ SEND_BEFORE_COMMIT_MS: "20" });
    try {
      const w = await f.world({ credit: "10" });
      const model = uid("m");
      await f.route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: fake.url, upstreamModel: uid("up"), price: ["2.5", "10"] }]);
      // A real write failure: receipts of this key are rejected by the database until the trigger goes.
      await database.sql.query(`CREATE FUNCTION tg_test_reject_receipt() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'receipts are failing'; END $$`);
      await database.sql.query(`CREATE TRIGGER tg_test_reject BEFORE INSERT ON "Receipt" FOR EACH ROW WHEN (NEW."keyId" = '${w.key.id}') EXECUTE FUNCTION tg_test_reject_receipt()`);
      const { response } = await gw
        .client(w.secret)
        .chat.completions.create({ model, messages: [{ role: "user", content: "hello" }], max_tokens: 20 })
        .withResponse();
      const requestId = response.headers.get("x-request-id")!;
      const charge = response.headers.get("x-tokengate-charge")!;
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(await database.prisma.receipt.findUnique({ where: { requestId } })).toBeNull();
      await database.sql.query(`DROP TRIGGER tg_test_reject ON "Receipt"`);
      const deadline = Date.now() + 10_000;
      let receipt = null;
      while (!receipt && Date.now() < deadline) {
        receipt = await database.prisma.receipt.findUnique({ where: { requestId }, include: { ledgerEntry: true } });
        if (!receipt) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(receipt).not.toBeNull();
      expect(formatMoney(receipt!.charge)).toBe(charge);
      expect(receipt!.ledgerEntry!.amount).toBe(-receipt!.charge);
      await gw.gateway.recallLeases();
      expect(await ledgerViolations(database)).toEqual([]);
    } finally {
      await gw.close();
      await fake.close();
      await database.dispose();
    }
  });
});
