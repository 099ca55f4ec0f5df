// The money door: the one object the gateway holds per instance (MoneyPath, built by
// leaseMoneyPath), with its verbs admit (`reserve`: hold a request's worst case), `settle` (receipt
// + charge), `release` (drop a hold uncharged) and fail (`recordFailure`: failed request + its
// policy charge). Admission is in memory against this instance's budget leases (issue 9); each
// request is written once (record + charge, aggregated deltas) through recordBatch. The Hold-row
// path (a Hold row per request, GATEWAY_ADMISSION=holds) was retired in issue 16: its SQL
// (holds.ts) stays for the tests that reserve and settle through it and for the sweeper that
// expires Hold rows an earlier release left.
//
// Where each limit is enforced (one answer per limit; the SQL functions are in prisma/functions.sql):
// - KEY_PER_REQUEST: LeasePool.admit (src/money/leases.ts; perRequestCap is read here and cached
//   capCacheTtlMs).
// - KEY_DAILY, PROJECT_DAILY, PROJECT_MONTHLY, ROUTE_DAILY, CHANNEL_DAILY, RUN_TOTAL: which scopes a
//   request counts in is leaseScopes (src/money/leases.ts); the window each counts in is
//   capWindow (src/money/windows.ts, the organization's zone); the cap is tg_effective_cap; the
//   check is tg_lease_grant (src/money/grant-store.ts) when a lease falls short (else the lease's
//   headroom, in memory: LeasePool.admit). A CHANNEL_DAILY refusal skips to
//   the next channel (refusalSkipsChannel, below, asked by src/gateway/pipeline/forward.ts); a
//   RUN_TOTAL refusal ends the run EXHAUSTED (markRunExhausted, src/runs, called by pipeline/fail.ts).
// - Run paused / cancelled: tg_lease_grant refuses RUN_TOTAL leases of a run not ACTIVE.
// - The balance (BALANCE): a lease of the bucket (tg_lease_grant).
// - A cap changed with requests in flight: revokeLeases (src/money/leases.ts) in the change's
//   transaction (src/budgets, src/runs); the instances drain those leases (leasesRevoked, below, or
//   the next renewal).
// - The charge: src/money/charges.ts (never above the hold: usageCharge, capAtHold); written with
//   its receipt and ledger entry by tg_record_batch (src/money/writer.ts: recordBatch).
// - Rate limits (rpm, tpm, concurrency): src/gateway/rate-limit.ts, before admission (not money).
//
// The folder (src/money/), which file does what:
// - index.ts        this door: MoneyPath, leaseMoneyPath, writeCharged (the one place
//                   a request's spend becomes durable), the heartbeat and recall timers;
// - charges.ts      every amount: worst case, whether a hold covers a fallback, the usage charge, a
//                   failed request's charge;
// - leases.ts       LeasePool (admission in memory against budget leases, grants, renewal, give-back,
//                   recall), leaseScopes, revokeLeases / reclaimLeases, the charge batch's SQL;
// - grant-store.ts  the three statements behind a LeasePool (tg_lease_grant / _return / _renew);
// - windows.ts      the day / month / run window a cap counts in, in the organization's zone;
// - writer.ts       receipts and failed requests with their charges: the batched writer (recordBatch)
//                   and the Hold-row writes (tests); onRequestRecorded, told after each commit;
// - group-commit.ts batches calls that arrive while a statement is in flight;
// - holds.ts        Hold-row reservations (reserve / settle / release / expire): no longer a
//                   gateway path; the sweeper of expired rows still runs;
// - ledger.ts       top-ups / adjustments / refunds (postEntry), walletBucket, scopeSpend;
// - sql.ts          SqlClient, Refusal, LeaseGoneError and the TG_* error translation;
// - amounts.ts      micro-unit amounts (parseMoney / formatMoney), bucket currencies, token prices.
//
// Outside this folder, everything but two value modules is reached through this file (the exports
// just below): amounts.ts (parsing and printing micro-units) and windows.ts (which day a cap counts
// in) are plain values with no state or SQL, imported directly wherever amounts or dates are shown.
import { randomUUID } from "node:crypto";
import { directSql } from "../db/index.ts";
import { LeaseGoneError, type Refusal } from "./sql.ts";
import { LeasePool, reclaimLeases, type AdmitInput, type LeaseHold } from "./leases.ts";
import { GroupCommit } from "./group-commit.ts";
import type { EventBus } from "../events/index.ts";
import type { CapScope } from "../generated/prisma/enums.ts";

import { capToHold, recordBatch, recordWritten, type BatchItem, type CounterState, type FailedRequestInput, type HoldRef, type ReceiptInput } from "./writer.ts";

// The door's other verbs: what the rest of tokengate may call of this folder.
export { failedRequestCharge, holdable, holdCovers, usageCharge, worstCase } from "./charges.ts";
export { postEntry, scopeSpend, walletBucket, type ScopeSpend } from "./ledger.ts";
export { onRequestRecorded, type ChargedBalance, type CounterState, type FailedRequestInput, type HoldRef, type ReceiptInput } from "./writer.ts";
export { revokeLeases } from "./leases.ts";
export { startHoldSweeper } from "./holds.ts";

// Tuning constants (the settings, LEASE_* and SEND_BEFORE_COMMIT_MS, are read in config.ts).
/** A refusal asks other instances to give back a scope's headroom at most once per this, per scope. */
const RECALL_EVERY_MS = 250;
/** Scopes whose last recall is remembered at most (forgotten all at once past it). */
const RECALL_MEMORY_MAX = 10_000;
/** Tries of a durable write before the request fails (about 1.5 s of retries). */
const DURABLE_WRITE_TRIES = 6;
/** Backoff between tries: RETRY_BASE_MS × 2^try, at most RETRY_MAX_MS. */
const RETRY_BASE_MS = 25;
const RETRY_MAX_MS = 1_000;
/** Re-admissions of a charge whose lease the database reclaimed under it, per write (each finds new leases). */
const REBACKS_PER_WRITE = 3;
/** Records per statement of the batched writer. */
const WRITER_MAX_BATCH = 256;
/** Batches of the writer in flight at once (see the writer below). */
const WRITER_IN_FLIGHT = 1;
/** The heartbeat runs every TTL / 3, never more often than this. */
const HEARTBEAT_MIN_MS = 50;
/** Recorded requests whose batch's counters are kept until their event is announced (oldest dropped). */
const SPEND_STATES_KEPT = 10_000;

/** A refusal by the channel's own daily cap: the gateway tries its next channel instead of answering it. */
export const refusalSkipsChannel = (scope: CapScope | null): boolean => scope === "CHANNEL_DAILY";

export interface Settlement {
  record: ReceiptInput;
  hold: HoldRef;
  bucketId: string;
}

type BatchStats = GroupCommit<unknown, unknown>["stats"];

/** Batching counters (for /metrics and tests): `settle` is the batched writer. */
export interface MoneyStats {
  settle: BatchStats;
  leases: LeasePool["stats"] & { held: number };
}

/** What admission needs of a request: its bucket, its worst case and the scopes it counts in (the per-request maximum is read here). */
export type AdmissionRequest = Omit<AdmitInput, "perRequestCap" | "now">;

export type AdmissionResult = { ok: true; holdId: string } | { ok: false; refusal: Refusal };

export interface MoneyPath {
  reserve(input: AdmissionRequest): Promise<AdmissionResult>;
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

/** What a committed batch answers per record. */
export interface Written {
  id: string;
  ledgerEntryId: string | null;
  counters: CounterState[];
}

/** A request's hold as its write goes: backing it anew (a reclaimed lease) replaces it. */
export interface HeldCharge {
  hold: LeaseHold;
}

export interface ChargeWriteDeps {
  pool: LeasePool;
  /** Sends one record (batched with others); resolves once it committed. */
  submit: (item: BatchItem) => Promise<Written>;
  /** Whether a record whose write failed committed anyway (its answer was lost). */
  written: (item: BatchItem) => Promise<boolean>;
  onError: (message: string, error: unknown) => void;
  /** Tries before giving up (Infinity: until it commits, for a response already sent). */
  tries: number;
  /** The instance is stopping: an unbounded write gives up after DURABLE_WRITE_TRIES. */
  stopping?: () => boolean;
  sleep?: (ms: number) => Promise<void>;
}

/**
 * Writes one record with its charge out of `held.hold`, until it commits: the one place a request's
 * spend becomes durable (the gateway's money path and the simulation use it). A hold whose lease
 * the database reclaimed (the pool learnt it at a renewal, or the batch refused it: TG_LEASE_GONE)
 * is admitted anew against every cap before it is charged; its charge drops to what fits only when
 * nothing covers it (said loudly). A write that failed but committed (its answer lost) is not
 * written twice: its id is looked up before a retry. Resolves with what was written.
 */
export async function writeCharged(deps: ChargeWriteDeps, item: BatchItem, held: HeldCharge): Promise<{ written: Written; item: BatchItem }> {
  const asked = item.record.charge;
  let rebacks = 0;
  for (let attempt = 1; ; ) {
    // What the previous try settled on: a charge dropped for want of cover stays dropped (its hold is gone).
    const { hold, charge } = await deps.pool.backed(held.hold, item.record.charge);
    held.hold = hold;
    if (charge !== item.record.charge) {
      deps.onError(`request ${item.record.requestId}: its lease was reclaimed and no cap or balance covers its charge (${asked} µ) now; it is written uncharged`, null);
    }
    const entry = { ...item, record: { ...item.record, charge }, leases: deps.pool.chargeLeases(hold) } as BatchItem;
    item = entry;
    try {
      return { written: await deps.submit(entry), item: entry };
    } catch (e) {
      if (e instanceof LeaseGoneError && rebacks < REBACKS_PER_WRITE) {
        rebacks++;
        deps.pool.markGone(e.leaseIds);
        continue;
      }
      if (await deps.written(entry).catch(() => false)) return { written: { id: entry.id!, ledgerEntryId: null, counters: [] }, item: entry };
      const limit = deps.stopping?.() && deps.tries === Infinity ? DURABLE_WRITE_TRIES : deps.tries;
      if (attempt >= limit) {
        deps.onError(`${entry.kind} of request ${entry.record.requestId} (charge ${entry.record.charge} µ) could not be written after ${attempt} tries`, e);
        throw e;
      }
      if (attempt === 1) deps.onError(`${entry.kind} of request ${entry.record.requestId} could not be written; retrying`, e);
      await (deps.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms))))(Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt));
      attempt++;
    }
  }
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
  /** Lease recalls and revocations travel on it between instances. */
  events: EventBus;
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
      if (recalled.size > RECALL_MEMORY_MAX) recalled.clear();
      recalled.set(k, now);
      options.events.publish("leaseRecall", { instanceId, bucketId: key.bucketId, scope: key.scope, scopeId: key.scopeId });
    },
  });
  const revoked = options.events.subscribe("leasesRevoked");
  const recalls = options.events.subscribe("leaseRecall");
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
  const holds = new Map<string, HeldCharge>();
  let closing = false;
  const sendFirst = (options.sendBeforeCommitMs ?? 0) > 0;
  /** Receipts whose response went out before their commit (SEND_BEFORE_COMMIT_MS), until they commit. */
  const unsent = new Set<Promise<void>>();
  const writer = new GroupCommit<BatchItem, { id: string; ledgerEntryId: string | null; counters: CounterState[] }>(
    (items) => recordBatch(items),
    async (item) => (await recordBatch([item]))[0]!,
    // One batch in flight: what arrives meanwhile goes in the next, larger batch. A second batch in
    // flight only waited on the first's bucket row lock until its commit (PostgreSQL, 16 connections:
    // 5 requests a batch and 297 µs of database CPU a request with two, 230 µs and +10-20 % req/s with
    // one); PGlite runs one statement at a time anyway.
    { maxBatch: WRITER_MAX_BATCH, maxInFlight: WRITER_IN_FLIGHT, windowMs: options.sendBeforeCommitMs },
  );

  /** A write retried until it commits (see writeCharged); `tries` Infinity once its response went out. */
  const write = (item: BatchItem, held: HeldCharge, tries: number) =>
    writeCharged({ pool, submit: (entry) => writer.submit(entry), written: recordWritten, onError: options.onError, tries, stopping: () => closing }, item, held);

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
  const timer = setInterval(
    () => {
      if (beating) return;
      beating = (async () => {
        await pool.maintain();
        await reclaimLeases(sql, options.reclaimGraceMs);
      })()
        .catch((e: unknown) => options.onError("lease heartbeat failed", e))
        .finally(() => {
          beating = null;
        });
    },
    Math.max(HEARTBEAT_MIN_MS, Math.floor(options.ttlMs / 3)),
  );
  timer.unref();

  // Counters each recorded request's batch returned, until its event is announced (bounded: oldest dropped).
  const recent = new Map<string, CounterState[]>();
  const remember = (requestId: string, counters: CounterState[]) => {
    if (recent.size >= SPEND_STATES_KEPT) recent.delete(recent.keys().next().value!);
    recent.set(requestId, counters);
  };

  const take = (hold: HoldRef | null): LeaseHold | null => {
    if (!hold) return null;
    const found = holds.get(hold.id) ?? null;
    holds.delete(hold.id);
    return found?.hold ?? null;
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
        zone: input.zone,
        perRequestCap: await perRequestCap(input.keyId, input.bucketId),
      });
      if (!result.ok) return { ok: false, refusal: result.refusal };
      const holdId = randomUUID();
      holds.set(holdId, { hold: result.hold });
      return { ok: true, holdId };
    },
    async settle(item) {
      const held = holds.get(item.hold.id);
      if (!held) throw new Error(`no lease hold ${item.hold.id}`);
      const id = randomUUID();
      // The hold stays in its leases until the charge committed: caps hold whichever answers first.
      // A stream's answer is already with the client when its receipt is written (so is any answer
      // with SEND_BEFORE_COMMIT_MS): it is retried until it commits, never dropped.
      const tries = sendFirst || item.record.stream ? Infinity : DURABLE_WRITE_TRIES;
      const committed = write({ kind: "receipt", id, record: item.record, bucketId: item.bucketId, leases: [] }, held, tries).then(({ written, item: entry }) => {
        holds.delete(item.hold.id);
        pool.settled(held.hold, entry.record.charge);
        remember(entry.record.requestId, written.counters);
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
      const held = ref ? (holds.get(ref.id) ?? null) : null;
      const id = randomUUID();
      if (!held) {
        // Refused before admission (or its hold already went): nothing is charged.
        const { written } = await writeCharged(
          { pool, submit: (entry) => writer.submit(entry), written: recordWritten, onError: options.onError, tries: DURABLE_WRITE_TRIES },
          { kind: "failure", id, record: { ...record, charge: 0n }, bucketId: null, leases: [] },
          { hold: { amount: 0n, bucketId: "", leases: [] } },
        );
        remember(record.requestId, written.counters);
        return written;
      }
      const charge = capToHold(record.charge, ref);
      let result: { written: Written; item: BatchItem };
      try {
        result = await write({ kind: "failure", id, record: { ...record, charge }, bucketId: held.hold.bucketId, leases: [] }, held, DURABLE_WRITE_TRIES);
      } catch (e) {
        pool.release(take(ref) ?? held.hold);
        throw e;
      }
      take(ref);
      pool.settled(held.hold, result.item.record.charge);
      remember(record.requestId, result.written.counters);
      return result.written;
    },
    spendStates(requestId) {
      const counters = recent.get(requestId) ?? null;
      recent.delete(requestId);
      return counters;
    },
    stats: () => ({ settle: { ...writer.stats }, leases: { ...pool.stats, held: pool.snapshot().length } }),
    async close() {
      closing = true;
      // Receipts sent before their commit are written before the leases go back.
      await Promise.allSettled([...unsent]);
      clearInterval(timer);
      await revoked.return?.();
      await recalls.return?.();
      await beating;
      for (const held of holds.values()) pool.release(held.hold);
      holds.clear();
      await pool.returnAll().catch((e: unknown) => options.onError("could not return leases (they lapse after their TTL)", e));
    },
  };
}
