// The money path of one gateway instance: admit (hold a request's worst case), settle (receipt +
// charge), release, record a failure (failed request + its policy charge). Two implementations
// behind one interface, chosen by GATEWAY_ADMISSION:
// - "leases" (issue 9, the default): admission in memory against this instance's budget leases,
//   and one batched write per request (record + charge, aggregated deltas) through recordBatch;
// - "holds": a Hold row per request, reserved and resolved by SQL functions, group-committed.
import { randomUUID } from "node:crypto";
import { currentDatabase, directSql } from "../db/index.ts";
import { release, reserve, reserveMany, type ReserveInput, type ReserveResult } from "../accounting/index.ts";
import { LeasePool, reclaimLeases, type LeaseHold } from "../accounting/leases.ts";
import { GroupCommit } from "./group-commit.ts";
import { events } from "../events/index.ts";

const RECALL_EVERY_MS = 250;
/** Tries of a durable write before the request fails (about 1.5 s of retries). */
const DURABLE_WRITE_TRIES = 6;
import { capToHold, recordBatch, recordFailure, recordReceipt, recordReceiptMany, type BatchItem, type CounterState, type FailedRequestInput, type HoldRef, type ReceiptInput } from "../requests/index.ts";

export interface Settlement {
  record: ReceiptInput;
  hold: HoldRef;
  bucketId: string;
}

type BatchStats = GroupCommit<unknown, unknown>["stats"];

/** Batching counters (for /metrics and tests); `settle` is the batched writer on the lease path. */
export interface MoneyStats {
  reserve: BatchStats;
  settle: BatchStats;
  leases?: LeasePool["stats"] & { held: number };
}

export interface MoneyPath {
  reserve(input: ReserveInput): Promise<ReserveResult>;
  /**
   * Receipt + charge, durable when this resolves; or, with SEND_BEFORE_COMMIT_MS, queued when this
   * resolves and durable when `committed` does. `record.charge` is already capped at the hold.
   */
  settle(item: Settlement): Promise<{ id: string; committed?: Promise<void> }>;
  /** Drops a hold uncharged. */
  release(hold: HoldRef): Promise<void>;
  /** Failed request + its charge (capped at the hold), durable when this resolves. */
  recordFailure(record: FailedRequestInput, hold: HoldRef | null): Promise<{ id: string }>;
  stats(): MoneyStats;
  /** The counters as the batch that recorded this request left them (once; null if unknown). */
  spendStates(requestId: string): CounterState[] | null;
  close(): Promise<void>;
}

/** Hold rows, reserved and settled through the SQL functions, group-committed. */
export function holdMoneyPath(options: { grouped: boolean }): MoneyPath {
  const reservations = new GroupCommit<ReserveInput, ReserveResult>(
    (items) => reserveMany(items, directSql()),
    (item) => reserve(item, directSql()),
  );
  const settlements = new GroupCommit<Settlement, { id: string }>(
    (items) => recordReceiptMany(items),
    (item) => recordReceipt(item.record, item.hold),
  );
  return {
    reserve: options.grouped ? (input) => reservations.submit(input) : (input) => reserve(input, directSql()),
    settle: options.grouped ? (item) => settlements.submit(item) : (item) => recordReceipt(item.record, item.hold),
    release: async (hold) => {
      await release(hold.id, 0n, {}, directSql());
    },
    recordFailure: (record, hold) => recordFailure(record, hold),
    stats: () => ({ reserve: { ...reservations.stats }, settle: { ...settlements.stats } }),
    spendStates: () => null,
    close: async () => {},
  };
}

export interface LeaseMoneyOptions {
  /** Lease TTL: a lease admits nothing new this long after its last renewal. */
  ttlMs: number;
  /** A dead instance's leases are reclaimed this long after their expiry (what they hold in flight stays counted until then). */
  reclaimGraceMs: number;
  /** Headroom asked for beyond a request's worst case, in multiples of it (the database shrinks it near a cap). */
  chunkRequests: number;
  /** How long a key's per-request maximum is served from memory (as keys are). */
  capCacheTtlMs: number;
  /** 0: a receipt is durable before settle() resolves. N > 0: settle() resolves once it is queued; the batch commits within N ms. */
  sendBeforeCommitMs?: number;
  onError: (message: string, error: unknown) => void;
}

/** Admission in memory against budget leases; one batched write per request. */
export function leaseMoneyPath(options: LeaseMoneyOptions): MoneyPath & { pool: LeasePool } {
  const sql = directSql();
  const instanceId = randomUUID();
  // KEY_PER_REQUEST is not a counter: the key's maximum per bucket, cached like keys are.
  const perRequest = new Map<string, { cap: bigint | null; until: number }>();

  // Near a cap, headroom may sit in other instances' leases: a refusal asks them for it (at most
  // once per scope per RECALL_EVERY_MS), so the next request here can be granted it.
  const recalled = new Map<string, number>();
  let flushing = false;
  const pool = new LeasePool(sql, {
    instanceId,
    ttlMs: options.ttlMs,
    chunk: (need) => need * BigInt(Math.max(1, options.chunkRequests)),
    onError: options.onError,
    // A lease drained after a cap change goes back at once, not at the next heartbeat.
    onDrained: () => {
      if (flushing) return;
      flushing = true;
      setImmediate(() => {
        flushing = false;
        void pool.flush();
      });
    },
    onRefused: (key) => {
      const k = `${key.bucketId}|${key.scope}|${key.scopeId}`;
      const now = Date.now();
      if ((recalled.get(k) ?? 0) > now - RECALL_EVERY_MS) return;
      if (recalled.size > 10_000) recalled.clear();
      recalled.set(k, now);
      events.publish("leaseRecall", { instanceId, bucketId: key.bucketId, scope: key.scope, scopeId: key.scopeId });
    },
  });
  const revoked = events.subscribe("leasesRevoked");
  const recalls = events.subscribe("leaseRecall");
  void (async () => {
    for await (const event of revoked) {
      await pool.forgetScope(event.scope, event.scopeId).catch((e: unknown) => options.onError("could not give back revoked leases", e));
      if (event.scope === "KEY_PER_REQUEST") for (const k of perRequest.keys()) if (k.startsWith(`${event.scopeId}|`)) perRequest.delete(k);
    }
  })();
  void (async () => {
    for await (const event of recalls) {
      if (event.instanceId === instanceId) continue;
      await pool.recall(event.bucketId, event.scope, event.scopeId).catch((e: unknown) => options.onError("could not give back recalled leases", e));
    }
  })();
  const holds = new Map<string, LeaseHold>();
  let closing = false;
  const sendFirst = (options.sendBeforeCommitMs ?? 0) > 0;
  /** Receipts whose response went out before their commit (SEND_BEFORE_COMMIT_MS), until they commit. */
  const unsent = new Set<Promise<void>>();
  const writer = new GroupCommit<BatchItem, { id: string; ledgerEntryId: string | null; counters: CounterState[] }>(
    (items) => recordBatch(items),
    async (item) => (await recordBatch([item]))[0]!,
    // PostgreSQL: a second batch is sent while the first waits on its WAL flush. PGlite runs one
    // statement at a time on this thread: a second in flight would only split batches in two.
    { maxBatch: 256, maxInFlight: currentDatabase()?.kind === "pglite" ? 1 : 2, windowMs: options.sendBeforeCommitMs },
  );

  /**
   * A write retried on errors (the database restarting, a failover): a response that was sent is
   * never dropped, its hold staying in its leases (caps hold) until it commits. `tries` Infinity:
   * the response already went out (SEND_BEFORE_COMMIT_MS), so retry until it commits or the
   * instance stops (then it is logged loudly with its charge).
   */
  async function writeDurably(item: BatchItem, tries: number): Promise<{ id: string; ledgerEntryId: string | null; counters: CounterState[] }> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await writer.submit(item);
      } catch (e) {
        if (attempt >= tries || (closing && tries === Infinity && attempt > DURABLE_WRITE_TRIES)) {
          options.onError(`${item.kind} of request ${item.record.requestId} (charge ${item.record.charge} µ) could not be written after ${attempt} tries`, e);
          throw e;
        }
        if (attempt === 1) options.onError(`${item.kind} of request ${item.record.requestId} could not be written; retrying`, e);
        await new Promise((resolve) => setTimeout(resolve, Math.min(1_000, 25 * 2 ** attempt)));
      }
    }
  }

  async function perRequestCap(keyId: string, bucketId: string): Promise<bigint | null> {
    const k = `${keyId}|${bucketId}`;
    const hit = perRequest.get(k);
    if (hit && hit.until > Date.now()) return hit.cap;
    const rows = await sql.$queryRawUnsafe<Array<{ cap: string | null }>>(
      `SELECT tg_effective_cap('KEY_PER_REQUEST', $1, b.bucket)::text AS cap FROM "WalletBucket" b WHERE b.id = $2`,
      keyId,
      bucketId,
    );
    const cap = rows[0]?.cap == null ? null : BigInt(rows[0].cap);
    if (options.capCacheTtlMs > 0) perRequest.set(k, { cap, until: Date.now() + options.capCacheTtlMs });
    return cap;
  }

  // Heartbeat: renew what is in use, give back what idles, lapse any instance's expired leases.
  let beating: Promise<void> | null = null;
  const timer = setInterval(() => {
    if (beating) return;
    beating = (async () => {
      await pool.maintain();
      await reclaimLeases(sql, options.reclaimGraceMs);
    })()
      .catch((e: unknown) => options.onError("lease heartbeat failed", e))
      .finally(() => {
        beating = null;
      });
  }, Math.max(50, Math.floor(options.ttlMs / 3)));
  timer.unref();

  // Counters each recorded request's batch returned, until its event is announced (bounded: oldest dropped).
  const recent = new Map<string, CounterState[]>();
  const remember = (requestId: string, counters: CounterState[]) => {
    if (recent.size >= 10_000) recent.delete(recent.keys().next().value!);
    recent.set(requestId, counters);
  };

  const take = (hold: HoldRef | null): LeaseHold | null => {
    if (!hold) return null;
    const found = holds.get(hold.id) ?? null;
    holds.delete(hold.id);
    return found;
  };

  return {
    pool,
    async reserve(input) {
      const result = await pool.admit({
        bucketId: input.bucketId,
        amount: input.amount,
        keyId: input.keyId,
        projectId: input.projectId,
        routeId: input.routeId,
        runId: input.runId,
        channelId: input.channelId,
        perRequestCap: await perRequestCap(input.keyId, input.bucketId),
      });
      if (!result.ok) return { ok: false, refusal: result.refusal };
      const holdId = randomUUID();
      holds.set(holdId, result.hold);
      return { ok: true, holdId };
    },
    async settle(item) {
      const admitted = holds.get(item.hold.id);
      if (!admitted) throw new Error(`no lease hold ${item.hold.id}`);
      // A lease reclaimed under this request (its instance stalled past the grace): its charge is admitted anew first.
      const { hold, charge } = await pool.backed(admitted, item.record.charge);
      if (charge !== item.record.charge) {
        options.onError(`request ${item.record.requestId}: its lease was reclaimed and no cap or balance covers its charge (${item.record.charge} µ) now; its receipt is written uncharged`, null);
      }
      const record = charge === item.record.charge ? item.record : { ...item.record, charge };
      holds.set(item.hold.id, hold);
      const id = randomUUID();
      const entry: BatchItem = { kind: "receipt", id, record, bucketId: item.bucketId, leases: pool.chargeLeases(hold) };
      // The hold stays in its leases until the charge committed: caps hold whichever answers first.
      const committed = writeDurably(entry, sendFirst ? Infinity : DURABLE_WRITE_TRIES).then((written) => {
        holds.delete(item.hold.id);
        pool.settled(hold, record.charge);
        remember(record.requestId, written.counters);
      });
      if (!sendFirst) {
        try {
          await committed;
        } catch (e) {
          // Not written after its retries: the client is told it was not charged, and the hold goes.
          const lost = take(item.hold);
          if (lost) pool.release(lost);
          throw e;
        }
        return { id };
      }
      unsent.add(committed);
      const done = committed.finally(() => void unsent.delete(committed));
      return { id, committed: done };
    },
    async release(ref) {
      const hold = take(ref);
      if (hold) pool.release(hold);
    },
    async recordFailure(record, ref) {
      const admitted = ref ? (holds.get(ref.id) ?? null) : null;
      const asked = admitted ? capToHold(record.charge, ref) : 0n;
      const { hold, charge } = admitted ? await pool.backed(admitted, asked) : { hold: null, charge: 0n };
      if (ref && hold) holds.set(ref.id, hold);
      const charged = { ...record, charge };
      let written: { id: string; ledgerEntryId: string | null; counters: CounterState[] };
      try {
        written = await writeDurably({ kind: "failure", record: charged, bucketId: hold?.bucketId ?? null, leases: hold ? pool.chargeLeases(hold) : [] }, DURABLE_WRITE_TRIES);
      } catch (e) {
        if (hold) pool.release(take(ref) ?? hold);
        throw e;
      }
      if (hold) {
        take(ref);
        pool.settled(hold, charged.charge);
      }
      remember(record.requestId, written.counters);
      return written;
    },
    spendStates(requestId) {
      const counters = recent.get(requestId) ?? null;
      recent.delete(requestId);
      return counters;
    },
    stats: () => ({ reserve: { batches: 0, batchedItems: 0, fallbacks: 0, lastError: null }, settle: { ...writer.stats }, leases: { ...pool.stats, held: pool.snapshot().length } }),
    async close() {
      closing = true;
      // Receipts sent before their commit are written before the leases go back.
      await Promise.allSettled([...unsent]);
      clearInterval(timer);
      await revoked.return?.();
      await recalls.return?.();
      await beating;
      for (const hold of holds.values()) pool.release(hold);
      holds.clear();
      await pool.returnAll().catch((e: unknown) => options.onError("could not return leases (they lapse after their TTL)", e));
    },
  };
}
