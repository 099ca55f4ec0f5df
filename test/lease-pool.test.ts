// LeasePool's own bookkeeping against an in-memory grant store (test/support/memory-grants.ts, the
// rules of the SQL lease functions on maps): grants and their sizing near a cap, refusals and their
// memory, revocations heard and missed, reclaims, idle returns, failed statements, and a seeded run
// of random operations checking that the store always counts everything the pool holds. The same
// pool on the real SQL functions: test/lease-*.db.test.ts, test/leases.pg.test.ts and the money
// simulation.
import { describe, expect, it } from "vitest";
import { LeasePool, type AdmitInput, type LeaseHold } from "../src/money/leases.ts";
import { capWindow } from "../src/money/windows.ts";
import { chargeOut, leaseSize, MemoryGrants } from "./support/memory-grants.ts";

const BUCKET = "bucket-1";
const KEY = "key-1";
const PROJECT = "project-1";
const TTL_MS = 60_000;

function setUp(options: { balance?: bigint; keyCap?: bigint | null; chunk?: (need: bigint) => bigint } = {}) {
  const store = new MemoryGrants().bucket(BUCKET, options.balance ?? 100_000_000n);
  if (options.keyCap !== undefined && options.keyCap !== null) store.cap("KEY_DAILY", KEY, options.keyCap);
  const clock = { now: Date.parse("2031-03-10T12:00:00Z") };
  const errors: string[] = [];
  const pool = new LeasePool(store, {
    instanceId: "i1",
    ttlMs: TTL_MS,
    chunk: options.chunk ?? ((need) => need * 10n),
    clock: () => clock.now,
    databaseTime: () => new Date(clock.now),
    onError: (message) => errors.push(message),
  });
  const input: Omit<AdmitInput, "amount"> = { bucketId: BUCKET, keyId: KEY, projectId: PROJECT };
  const day = capWindow("DAY", new Date(clock.now)).start.toISOString();
  const keyCounter = () => store.counter("KEY_DAILY", KEY, day);
  return { store, pool, clock, input, errors, keyCounter };
}

/** The invariant the pool keeps: the store counts every hold the pool admitted (its leases are at least as large). */
function assertCounted(store: MemoryGrants, pool: LeasePool): void {
  for (const lease of pool.snapshot()) {
    if (lease.gone) continue;
    const row = store.leases.get(lease.id);
    expect(row, `lease ${lease.id} the pool uses is in the store`).toBeDefined();
    expect(row!.amount).toBeGreaterThanOrEqual(lease.inFlight);
    expect(row!.amount).toBeGreaterThanOrEqual(lease.amount);
  }
  let leased = 0n;
  for (const l of store.leases.values()) if (l.scope === "BALANCE") leased += l.amount;
  expect(store.balances.get(BUCKET)!.held).toBe(leased);
}

describe("lease sizing (tg_lease_size)", () => {
  it("grants what is wanted far from a cap, shrinks near it, never below the need, never past what is left", () => {
    expect(leaseSize(10n, 100n, 10_000n, null, 0n)).toBe(100n);
    expect(leaseSize(10n, 5_000n, 10_000n, 10_000n, 0n)).toBe(2_500n); // below half: a quarter of what is left
    expect(leaseSize(10n, 5_000n, 4_000n, 10_000n, 6_000n)).toBe(400n); // up to 80 %: a tenth
    expect(leaseSize(10n, 5_000n, 1_000n, 10_000n, 9_000n)).toBe(50n); // beyond: a twentieth
    expect(leaseSize(300n, 5_000n, 1_000n, 10_000n, 9_000n)).toBe(300n); // never below the need
    expect(leaseSize(300n, 5_000n, 299n, 10_000n, 9_701n)).toBe(0n); // the need does not fit: nothing
  });
});

describe("LeasePool against the in-memory grant store", () => {
  it("one grant serves several requests; the cap is reached exactly and the next request is refused with its scope", async () => {
    const { store, pool, input, keyCounter } = setUp({ keyCap: 1_000n });
    const holds: LeaseHold[] = [];
    let admitted = 0n;
    for (let i = 0; i < 30; i++) {
      const r = await pool.admit({ ...input, amount: 90n });
      if (!r.ok) {
        expect(r.refusal).toBe("KEY_DAILY");
        break;
      }
      holds.push(r.hold);
      admitted += 90n;
    }
    expect(admitted).toBe(990n); // 11 × 90 fit under 1,000; the 12th does not
    // Held = the holds plus the headroom leased beyond them, and never past the cap.
    expect(keyCounter().held).toBeGreaterThanOrEqual(990n);
    expect(keyCounter().held).toBeLessThanOrEqual(1_000n);
    expect(store.calls.grant).toBeLessThan(holds.length); // grants are chunked
    assertCounted(store, pool);
    // Charges commit (the writer) and the holds settle: spent moves, held shrinks to the free headroom.
    for (const hold of holds) {
      chargeOut(
        store,
        hold.leases.map((l) => l.id),
        80n,
      );
      pool.settled(hold, 80n);
    }
    expect(keyCounter().spent).toBe(880n);
    assertCounted(store, pool);
    await pool.returnAll();
    await pool.flush();
    expect(keyCounter().held).toBe(0n);
    expect(store.leased("i1")).toBe(0n);
  });

  it("a refusal is answered from memory for asks as large, for a moment; a smaller ask goes to the store", async () => {
    const { store, pool, clock, input } = setUp({ keyCap: 100n, chunk: (need) => need });
    expect((await pool.admit({ ...input, amount: 100n })).ok).toBe(true);
    const before = store.calls.grant;
    for (let i = 0; i < 20; i++) expect(await pool.admit({ ...input, amount: 50n })).toEqual({ ok: false, refusal: "KEY_DAILY" });
    expect(store.calls.grant - before).toBe(1);
    expect(await pool.admit({ ...input, amount: 10n })).toEqual({ ok: false, refusal: "KEY_DAILY" });
    expect(store.calls.grant - before).toBe(2);
    clock.now += 30; // past REFUSAL_MEMORY_MS
    expect(await pool.admit({ ...input, amount: 50n })).toEqual({ ok: false, refusal: "KEY_DAILY" });
    expect(store.calls.grant - before).toBe(3);
  });

  it("the balance refuses what it cannot cover (INSUFFICIENT_BALANCE), and the per-request cap before any statement", async () => {
    const { store, pool, input } = setUp({ balance: 500n, chunk: (need) => need });
    expect((await pool.admit({ ...input, amount: 400n })).ok).toBe(true);
    expect(await pool.admit({ ...input, amount: 200n })).toEqual({ ok: false, refusal: "INSUFFICIENT_BALANCE" });
    const calls = store.calls.grant;
    expect(await pool.admit({ ...input, amount: 60n, perRequestCap: 50n })).toEqual({ ok: false, refusal: "KEY_PER_REQUEST" });
    expect(store.calls.grant).toBe(calls);
  });

  it("a revoked scope (a cap change heard) admits nothing new from its lease; what is in flight stays counted; a new lease follows", async () => {
    const { store, pool, input, keyCounter } = setUp({ keyCap: 10_000n });
    const first = await pool.admit({ ...input, amount: 100n });
    if (!first.ok) throw new Error("refused");
    const oldLease = first.hold.leases.find((l) => l.scope === "KEY_DAILY")!;
    const leasedBefore = store.leases.get(oldLease.id)!.amount;
    expect(leasedBefore).toBeGreaterThan(100n);
    store.revoke("KEY_DAILY", KEY);
    store.cap("KEY_DAILY", KEY, 5_000n);
    await pool.forgetScope("KEY_DAILY", KEY);
    // The free part went back; the 100 in flight did not.
    expect(store.leases.get(oldLease.id)!.amount).toBe(100n);
    expect(keyCounter().held).toBe(100n);
    const second = await pool.admit({ ...input, amount: 100n });
    if (!second.ok) throw new Error("refused");
    const newLease = second.hold.leases.find((l) => l.scope === "KEY_DAILY")!;
    expect(newLease.id).not.toBe(oldLease.id);
    assertCounted(store, pool);
    // The old request ends: its lease closes and goes back whole.
    pool.release(first.hold);
    await pool.flush();
    expect(store.leases.has(oldLease.id)).toBe(false);
    assertCounted(store, pool);
  });

  it("a revocation whose event was missed is learnt at the next renewal", async () => {
    const { store, pool, input } = setUp({ keyCap: 10_000n });
    const r = await pool.admit({ ...input, amount: 100n });
    if (!r.ok) throw new Error("refused");
    const lease = r.hold.leases.find((l) => l.scope === "KEY_DAILY")!;
    store.revoke("KEY_DAILY", KEY);
    await pool.maintain();
    expect(pool.stats.revoked).toBeGreaterThanOrEqual(1);
    const again = await pool.admit({ ...input, amount: 100n });
    if (!again.ok) throw new Error("refused");
    expect(again.hold.leases.find((l) => l.scope === "KEY_DAILY")!.id).not.toBe(lease.id);
    assertCounted(store, pool);
  });

  it("a reclaimed lease (the instance stalled past the grace) is learnt at renewal; its hold is backed anew before it is charged", async () => {
    const { store, pool, clock, input, keyCounter } = setUp({ keyCap: 10_000n });
    const r = await pool.admit({ ...input, amount: 300n });
    if (!r.ok) throw new Error("refused");
    clock.now += TTL_MS + 5_000;
    expect(store.reclaim(clock.now, 1_000)).toBe(4); // balance, key, project day, project month
    expect(keyCounter().held).toBe(0n);
    await pool.maintain();
    expect(pool.stats.lapsed).toBeGreaterThanOrEqual(1);
    expect(pool.isBacked(r.hold)).toBe(false);
    const backed = await pool.backed(r.hold, 250n);
    expect(backed.charge).toBe(250n);
    expect(pool.isBacked(backed.hold)).toBe(true);
    // Backed anew at the charge, against the caps as any request.
    expect(keyCounter().held).toBeGreaterThanOrEqual(250n);
    assertCounted(store, pool);
  });

  it("an idle lease goes back whole at the heartbeat; a failed return is retried, never lost", async () => {
    const { store, pool, clock, input, errors } = setUp({ keyCap: 10_000n });
    const r = await pool.admit({ ...input, amount: 100n });
    if (!r.ok) throw new Error("refused");
    pool.release(r.hold);
    clock.now += TTL_MS / 2 + 1;
    store.failNext = 1;
    await pool.maintain();
    expect(errors.some((e) => /give back/.test(e))).toBe(true);
    expect(store.leased("i1")).toBeGreaterThan(0n);
    await pool.maintain();
    expect(store.leased("i1")).toBe(0n);
    expect(store.balances.get(BUCKET)!.held).toBe(0n);
  });

  it("random admissions, charges, releases, revocations, recalls, heartbeats and failed statements: the store always counts what the pool holds", async () => {
    let seed = 20_261_203;
    const rand = (n: number) => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed % n;
    };
    for (let schedule = 0; schedule < 20; schedule++) {
      const cap = BigInt(1_000 + rand(20_000));
      const { store, pool, clock, input, keyCounter } = setUp({ keyCap: cap, chunk: (need) => need * BigInt(1 + rand(20)) });
      const holds: LeaseHold[] = [];
      for (let step = 0; step < 200; step++) {
        const op = rand(10);
        if (op < 4) {
          const r = await pool.admit({ ...input, amount: BigInt(1 + rand(500)) }).catch(() => null);
          if (r?.ok) holds.push(r.hold);
        } else if (op < 6 && holds.length) {
          const hold = holds.splice(rand(holds.length), 1)[0]!;
          const charge = hold.amount === 0n ? 0n : BigInt(rand(Number(hold.amount) + 1));
          if (pool.isBacked(hold)) {
            chargeOut(
              store,
              hold.leases.map((l) => l.id),
              charge,
            );
            pool.settled(hold, charge);
          } else pool.release(hold);
        } else if (op === 6 && holds.length) pool.release(holds.splice(rand(holds.length), 1)[0]!);
        else if (op === 7) {
          store.revoke("KEY_DAILY", KEY);
          store.cap("KEY_DAILY", KEY, BigInt(500 + rand(20_000)));
          if (rand(2)) await pool.forgetScope("KEY_DAILY", KEY);
        } else if (op === 8) {
          if (rand(3) === 0) store.failNext = 1;
          clock.now += rand(TTL_MS / 2);
          await pool.maintain().catch(() => undefined);
        } else await pool.recall(BUCKET, "KEY_DAILY", KEY);
        assertCounted(store, pool);
        const c = keyCounter();
        expect(c.held).toBeGreaterThanOrEqual(0n);
        expect(c.spent).toBeGreaterThanOrEqual(0n);
      }
      for (const hold of holds) pool.release(hold);
      store.failNext = 0;
      await pool.returnAll();
      await pool.flush();
      expect(store.leased("i1")).toBe(0n);
      expect(store.balances.get(BUCKET)!.held).toBe(0n);
      expect(keyCounter().held).toBe(0n);
    }
  });
});
