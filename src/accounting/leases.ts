// Budget leases (issue 9): admission in memory against durable grants of headroom.
//
// An instance (one LeasePool) holds leases, rows of "BudgetLease" granted by tg_lease_grant: for
// each scope-window-bucket counter a request touches (key day, project day / month, route day,
// run) and for the bucket's available balance. A lease's amount is counted in the counter's /
// bucket's `held`, so the database keeps, at all times, spent + Σ leases ≤ cap and Σ leases ≤
// balance, whatever the instances do. A request is admitted by a synchronous check of its worst
// case against the free part of every lease it needs (no database round trip); its hold is a
// number inside those leases, in memory. When a lease is short, the pool takes more in ONE
// statement for all the scopes that are short (all-or-nothing, sized down near a cap by
// tg_lease_size so the cap is reached exactly). Spending leaves the leases through the batched
// writer (tg_record_batch); unused headroom goes back when a lease is idle or the pool closes;
// a dead instance's leases lapse after their TTL (tg_expire_leases).
import { randomUUID } from "node:crypto";
import type { SqlClient } from "./index.ts";
import { dayStart, monthStart, RUN_WINDOW, translateDbError } from "./index.ts";
import type { CapScope } from "../generated/prisma/enums.ts";
import { MAX_AMOUNT_MICROS } from "../money.ts";
import { events } from "../events/index.ts";

/** A counter scope, or the bucket's available balance. */
export type LeaseScopeName = CapScope | "BALANCE";

export interface LeaseKey {
  bucketId: string;
  scope: LeaseScopeName;
  scopeId: string;
  windowStart: Date;
}

interface Lease extends LeaseKey {
  id: string;
  /** Granted and not yet spent, as the database counts it (in `held`). */
  amount: bigint;
  /** Part of `amount` promised to requests in flight. */
  inFlight: bigint;
  /** Local time after which the lease must not be used (its database expiry minus a safety margin). */
  usableUntil: number;
  lastUsed: number;
}

/** A request's worst case, held inside every lease it needs. */
export interface LeaseHold {
  amount: bigint;
  bucketId: string;
  leases: Lease[];
}

export type LeaseRefusal = CapScope | "INSUFFICIENT_BALANCE";
export type AdmitResult = { ok: true; hold: LeaseHold } | { ok: false; refusal: LeaseRefusal };

export interface AdmitInput {
  bucketId: string;
  amount: bigint;
  keyId: string;
  projectId: string;
  routeId?: string | null;
  runId?: string | null;
  /** The channel the request goes to (its CHANNEL_DAILY cap). */
  channelId?: string | null;
  /** The key's per-request maximum in this bucket, if any (not a counter: checked here). */
  perRequestCap?: bigint | null;
  now?: Date;
}

export interface LeasePoolOptions {
  instanceId: string;
  /** How long a grant lives without renewal (a dead instance's headroom comes back after this). */
  ttlMs: number;
  /** How much headroom to ask for beyond the request at hand (the database shrinks it near a cap). */
  chunk: (need: bigint) => bigint;
  /** A lease unused this long goes back (so another instance can have it). Default ttlMs / 2. */
  idleMs?: number;
  /** A lease is not used within this margin of its expiry (renewal may be late). Default ttlMs / 4. */
  safetyMs?: number;
  /** Local clock (tests move it). */
  clock?: () => number;
  /** A request was refused by this scope (other instances may hold its headroom: they are asked to give it back). */
  onRefused?: (key: LeaseKey) => void;
}

/** How long a refused grant is answered from memory (for requests asking as much or more). */
const REFUSAL_MEMORY_MS = 25;

const keyOf = (k: LeaseKey) => `${k.bucketId}|${k.scope}|${k.scopeId}|${k.windowStart.toISOString()}`;
const utc = (ms: number) => new Date(ms).toISOString();

/** The leases a request needs: the bucket's balance and every counter scope that applies to it. */
export function leaseScopes(input: Pick<AdmitInput, "bucketId" | "keyId" | "projectId" | "routeId" | "runId" | "channelId">, now: Date): LeaseKey[] {
  const day = dayStart(now);
  const scopes: LeaseKey[] = [
    { bucketId: input.bucketId, scope: "BALANCE", scopeId: "", windowStart: RUN_WINDOW },
    { bucketId: input.bucketId, scope: "KEY_DAILY", scopeId: input.keyId, windowStart: day },
    { bucketId: input.bucketId, scope: "PROJECT_DAILY", scopeId: input.projectId, windowStart: day },
    { bucketId: input.bucketId, scope: "PROJECT_MONTHLY", scopeId: input.projectId, windowStart: monthStart(now) },
  ];
  if (input.routeId) scopes.push({ bucketId: input.bucketId, scope: "ROUTE_DAILY", scopeId: input.routeId, windowStart: day });
  if (input.channelId) scopes.push({ bucketId: input.bucketId, scope: "CHANNEL_DAILY", scopeId: input.channelId, windowStart: day });
  if (input.runId) scopes.push({ bucketId: input.bucketId, scope: "RUN_TOTAL", scopeId: input.runId, windowStart: RUN_WINDOW });
  return scopes;
}

export class LeasePool {
  private readonly leases = new Map<string, Lease>();
  /** Grants refused in the last REFUSAL_MEMORY_MS, per scope: what was asked, and the refusal. */
  private readonly refused = new Map<string, { until: number; amount: bigint; refusal: LeaseRefusal }>();
  /** The grant statement in flight per bucket, if any. */
  private readonly granting = new Map<string, Promise<void>>();
  private readonly clock: () => number;
  private readonly idleMs: number;
  private readonly safetyMs: number;
  /** Grants, renewals and returns the pool made (for tests and metrics). */
  readonly stats = { grants: 0, grantStatements: 0, refusals: 0, returns: 0, renewals: 0, lapsed: 0, recalls: 0 };

  constructor(
    private readonly client: SqlClient,
    private readonly options: LeasePoolOptions,
  ) {
    this.clock = options.clock ?? Date.now;
    this.idleMs = options.idleMs ?? Math.floor(options.ttlMs / 2);
    this.safetyMs = options.safetyMs ?? Math.floor(options.ttlMs / 4);
  }

  get instanceId(): string {
    return this.options.instanceId;
  }

  /** Leases held now (a copy: amounts and in-flight holds). */
  snapshot(): Array<LeaseKey & { id: string; amount: bigint; inFlight: bigint }> {
    return [...this.leases.values()].map((l) => ({ ...l }));
  }

  /**
   * Admits a request's worst case against this instance's leases, taking more headroom (one
   * statement) when one falls short. Refuses with the scope that cannot cover it.
   */
  async admit(input: AdmitInput): Promise<AdmitResult> {
    if (input.amount < 0n || input.amount > MAX_AMOUNT_MICROS) throw new RangeError("admission amount out of range");
    if (input.perRequestCap != null && input.amount > input.perRequestCap) return { ok: false, refusal: "KEY_PER_REQUEST" };
    const scopes = leaseScopes(input, input.now ?? new Date(this.clock()));
    // A grant may be taken by concurrent admissions of this instance before ours checks it again.
    for (let attempt = 0, waits = 0; attempt < 4 && waits < 64; ) {
      const short = this.tryHold(scopes, input.amount, input.bucketId);
      if (!Array.isArray(short)) return { ok: true, hold: short };
      // One grant per bucket at a time: requests that fall short together wait for it rather than
      // each taking a chunk (which would strand headroom other instances could use).
      const pending = this.granting.get(input.bucketId);
      if (pending) {
        waits++;
        await pending;
        continue;
      }
      // A grant refused a moment ago for as much or less: refuse in memory. A client hammering a
      // key at its cap must not turn each request into a statement holding the bucket row (which
      // every request of the organization needs); headroom that comes back is seen within the window.
      const refusedAt = this.recentRefusal(short, input.amount);
      if (refusedAt) return this.refuse(scopes, refusedAt);
      attempt++;
      const granted = this.grant(short, input.amount);
      const done = granted.then(
        () => undefined,
        () => undefined,
      );
      this.granting.set(input.bucketId, done);
      let refusal: LeaseRefusal | null;
      try {
        refusal = await granted;
      } finally {
        if (this.granting.get(input.bucketId) === done) this.granting.delete(input.bucketId);
      }
      if (refusal) {
        // A concurrent grant of this instance may have brought the headroom meanwhile.
        const again = this.tryHold(scopes, input.amount, input.bucketId);
        if (!Array.isArray(again)) return { ok: true, hold: again };
        this.rememberRefusal(short, input.amount, refusal);
        return this.refuse(scopes, refusal);
      }
    }
    const last = this.tryHold(scopes, input.amount, input.bucketId);
    if (!Array.isArray(last)) return { ok: true, hold: last };
    const scope = last[0]!.key.scope;
    return this.refuse(scopes, scope === "BALANCE" ? "INSUFFICIENT_BALANCE" : scope);
  }

  private recentRefusal(short: Array<{ key: LeaseKey }>, amount: bigint): LeaseRefusal | null {
    const now = this.clock();
    for (const { key } of short) {
      const refused = this.refused.get(keyOf(key));
      if (refused && refused.until > now && amount >= refused.amount) return refused.refusal;
    }
    return null;
  }

  private rememberRefusal(short: Array<{ key: LeaseKey }>, amount: bigint, refusal: LeaseRefusal): void {
    const scope = refusal === "INSUFFICIENT_BALANCE" ? "BALANCE" : refusal;
    const key = short.find((s) => s.key.scope === scope)?.key;
    if (!key) return;
    if (this.refused.size > 10_000) this.refused.clear();
    this.refused.set(keyOf(key), { until: this.clock() + REFUSAL_MEMORY_MS, amount, refusal });
  }

  private refuse(scopes: LeaseKey[], refusal: LeaseRefusal): AdmitResult {
    this.stats.refusals++;
    const scope = refusal === "INSUFFICIENT_BALANCE" ? "BALANCE" : refusal;
    const key = scopes.find((k) => k.scope === scope);
    if (key) this.options.onRefused?.(key);
    return { ok: false, refusal };
  }

  /** Synchronous: holds `amount` in every lease, or returns the leases that are short (and by how much). */
  private tryHold(scopes: LeaseKey[], amount: bigint, bucketId: string): LeaseHold | Array<{ key: LeaseKey; need: bigint }> {
    const now = this.clock();
    const short: Array<{ key: LeaseKey; need: bigint }> = [];
    const found: Lease[] = [];
    for (const key of scopes) {
      const lease = this.leases.get(keyOf(key));
      if (lease && lease.usableUntil <= now) {
        // Lapsed (or about to): the grant that replaces it must also cover the holds still in
        // flight in it, which then move to the new lease (see grant).
        short.push({ key, need: amount + lease.inFlight });
        continue;
      }
      const usable = lease ? lease.amount - lease.inFlight : 0n;
      if (usable < amount) short.push({ key, need: amount - usable });
      else if (lease) found.push(lease); // a zero worst case needs no lease
    }
    if (short.length) return short;
    for (const lease of found) {
      lease.inFlight += amount;
      lease.lastUsed = now;
    }
    return { amount, bucketId, leases: found };
  }

  /** One statement for all short scopes (all-or-nothing); returns the refusal if one cannot be covered. */
  private async grant(short: Array<{ key: LeaseKey; need: bigint }>, amount: bigint): Promise<LeaseRefusal | null> {
    const bucketId = short[0]!.key.bucketId;
    const sentAt = this.clock();
    const payload = short.map(({ key, need }) => {
      const want = this.options.chunk(amount);
      return { scope: key.scope, scope_id: key.scopeId, window_start: key.windowStart.toISOString(), need: need.toString(), want: (want > need ? want : need).toString() };
    });
    this.stats.grantStatements++;
    const rows = await this.client
      .$queryRawUnsafe<Array<{ scope: string | null; scope_id: string | null; window_start: Date | string | null; lease_id: string | null; granted: string | bigint | null; refusal: string | null }>>(
        `SELECT scope, scope_id, window_start, lease_id, granted::text AS granted, refusal
           FROM tg_lease_grant($1, $2, $3::jsonb, $4::timestamptz AT TIME ZONE 'UTC', $5::int)`,
        this.options.instanceId,
        bucketId,
        JSON.stringify(payload),
        utc(sentAt),
        this.options.ttlMs,
      )
      .catch(translateDbError);
    if (rows.length === 1 && rows[0]!.refusal) {
      const refusal = rows[0]!.refusal;
      return refusal === "BALANCE" ? "INSUFFICIENT_BALANCE" : (refusal as LeaseRefusal);
    }
    const byScope = new Map(short.map((s) => [`${s.key.scope}|${s.key.scopeId}`, s.key]));
    for (const row of rows) {
      // The function answers in its lock order, not ours.
      const key = byScope.get(`${row.scope}|${row.scope_id ?? ""}`);
      if (!key) throw new Error(`tg_lease_grant answered an unasked scope ${row.scope}`);
      const granted = BigInt(row.granted ?? 0);
      const existing = this.leases.get(keyOf(key));
      // Expiry is reckoned from when the statement was sent: the database's clock of this grant is no later.
      const usableUntil = sentAt + this.options.ttlMs - this.safetyMs;
      if (existing && existing.id === row.lease_id) {
        existing.amount += granted;
        existing.usableUntil = Math.max(existing.usableUntil, usableUntil);
      } else if (existing && granted >= existing.inFlight) {
        // A lease we believed in had lapsed and was swept; the new one covers the holds still in
        // flight in it. They move with it (the same object, so their charges leave the new lease),
        // and the cap stays whole: their worst cases were granted again within it.
        existing.id = row.lease_id!;
        existing.amount = granted;
        existing.usableUntil = usableUntil;
        existing.lastUsed = this.clock();
      } else {
        // Lapsed, and the new grant does not cover its holds in flight: they stay on the lapsed
        // lease and are charged as lapsed (tg_record_batch); the new lease starts without them
        // (carrying their amount would keep it in use, and its headroom held, for good).
        this.leases.set(keyOf(key), { ...key, id: row.lease_id!, amount: granted, inFlight: 0n, usableUntil, lastUsed: this.clock() });
      }
      this.stats.grants++;
    }
    return null;
  }

  /** The batched writer's view of a hold: which leases (and counters) its charge leaves. */
  chargeLeases(hold: LeaseHold): ChargeLease[] {
    return hold.leases.map((l) => ({ lease_id: l.id, scope: l.scope, scope_id: l.scopeId, window_start: l.windowStart.toISOString() }));
  }

  /** After the charge committed (tg_record_batch): the charge left the leases, the rest of the hold is free again. */
  settled(hold: LeaseHold, charge: bigint): void {
    if (charge < 0n || charge > hold.amount) throw new RangeError("charge outside its hold");
    for (const lease of hold.leases) {
      lease.inFlight -= hold.amount;
      lease.amount -= charge;
      if (lease.amount < 0n) lease.amount = 0n;
      if (lease.inFlight < 0n) lease.inFlight = 0n;
    }
    hold.amount = 0n;
    hold.leases = [];
  }

  /** A hold dropped without a charge. */
  release(hold: LeaseHold): void {
    this.settled(hold, 0n);
  }

  /**
   * Heartbeat: renews every lease of this instance, gives back leases idle for `idleMs` (all of
   * their free headroom) and forgets leases the database no longer has. Run every ~ttl / 3.
   */
  async maintain(): Promise<void> {
    const now = this.clock();
    const idle = [...this.leases.values()].filter((l) => l.inFlight === 0n && now - l.lastUsed >= this.idleMs);
    if (idle.length) await this.giveBack(idle, now);
    if (this.leases.size === 0) return;
    const rows = await this.client.$queryRawUnsafe<Array<{ n: number }>>(
      `SELECT tg_lease_renew($1, $2::timestamptz AT TIME ZONE 'UTC', $3::int) AS n`,
      this.options.instanceId,
      utc(now),
      this.options.ttlMs,
    );
    this.stats.renewals++;
    const live = [...this.leases.values()].filter((l) => l.usableUntil > now);
    for (const lease of live) lease.usableUntil = now + this.options.ttlMs - this.safetyMs;
    if (Number(rows[0]!.n) < this.leases.size) {
      // Some lapsed in the database (this instance stalled past the TTL): never use them again.
      const ids = await this.client.$queryRawUnsafe<Array<{ id: string }>>(
        `SELECT id FROM "BudgetLease" WHERE "instanceId" = $1 AND "expiresAt" > $2::timestamptz AT TIME ZONE 'UTC'`,
        this.options.instanceId,
        utc(now),
      );
      const alive = new Set(ids.map((r) => r.id));
      for (const [k, lease] of this.leases) {
        if (!alive.has(lease.id)) {
          this.stats.lapsed++;
          if (lease.inFlight === 0n) this.leases.delete(k);
          else lease.usableUntil = 0;
        }
      }
    }
  }

  private async giveBack(leases: Lease[], now: number): Promise<void> {
    const returns = leases.map((l) => ({ lease_id: l.id, amount: (l.amount - l.inFlight).toString() }));
    await this.client.$queryRawUnsafe(`SELECT tg_lease_return($1::jsonb, $2::timestamptz AT TIME ZONE 'UTC')`, JSON.stringify(returns), utc(now)).catch(translateDbError);
    for (const lease of leases) {
      if (lease.inFlight === 0n) this.leases.delete(keyOf(lease));
      else lease.amount = lease.inFlight;
    }
    this.stats.returns += leases.length;
  }

  /** Gives back every lease's free headroom (on stop, or when another instance asks near a cap). */
  async returnAll(): Promise<void> {
    const all = [...this.leases.values()].filter((l) => l.amount > l.inFlight);
    if (all.length) await this.giveBack(all, this.clock());
  }

  /**
   * A cap of this scope changed and its leases were revoked in the database: stop admitting against
   * them (holds in flight keep their lease and are charged as lapsed); the next request takes a new
   * grant under the new cap.
   */
  forgetScope(scope: string, scopeId: string): void {
    for (const [k, lease] of this.leases) if (lease.scope === scope && lease.scopeId === scopeId) this.leases.delete(k);
    // A raised cap admits at once.
    for (const k of this.refused.keys()) if (k.includes(`|${scope}|${scopeId}|`)) this.refused.delete(k);
  }

  /** Another instance was refused near this scope's cap: give back the free part of our leases of it. */
  async recall(bucketId: string, scope: string, scopeId: string): Promise<void> {
    const leases = [...this.leases.values()].filter((l) => l.bucketId === bucketId && l.scope === scope && l.scopeId === scopeId && l.amount > l.inFlight);
    if (leases.length) await this.giveBack(leases, this.clock());
    this.stats.recalls++;
  }

  /** Forgets everything without telling the database (what a killed process does; tests use it). */
  abandon(): void {
    this.leases.clear();
  }
}

/**
 * A cap changed: every live lease of its scope goes (their headroom leaves `held`), in the caller's
 * transaction, so no lease granted under the old cap is spent under the new one. The instances are
 * told at once (leasesRevoked) and take new grants; publishing before the commit is safe: a new
 * grant waits on the bucket rows this transaction locked, then reads the new cap. An instance that
 * misses the event notices at its next renewal (TTL / 3).
 */
export async function revokeLeases(client: SqlClient, scope: CapScope, scopeId: string, now = new Date()): Promise<void> {
  await client.$queryRawUnsafe(`SELECT tg_lease_revoke($1, $2, $3::timestamptz AT TIME ZONE 'UTC')`, scope, scopeId, now.toISOString()).catch(translateDbError);
  events.publish("leasesRevoked", { scope, scopeId });
}

/** Lapses leases whose TTL passed (their instance died or stalled): their headroom comes back. */
export async function expireLeases(now: Date, client: SqlClient): Promise<number> {
  const rows = await client.$queryRawUnsafe<Array<{ n: number }>>(`SELECT tg_expire_leases($1::timestamptz AT TIME ZONE 'UTC') AS n`, now.toISOString());
  return Number(rows[0]!.n);
}

export interface ChargeItem {
  requestId: string;
  bucketId: string;
  charge: bigint;
  hold: LeaseHold;
  receiptId?: string | null;
  failedRequestId?: string | null;
}

/** Which lease (and counter) a charge leaves: pool.chargeLeases(hold). */
export interface ChargeLease {
  lease_id: string;
  scope: LeaseScopeName;
  scope_id: string;
  window_start: string;
}

/** One charge as the batched writer sends it. */
export interface ChargeRow {
  requestId: string;
  bucketId: string;
  charge: bigint;
  receiptId: string | null;
  failedRequestId: string | null;
  ledgerEntryId: string;
  leases: ChargeLease[];
}

/**
 * The money parameters of tg_record_batch (after p_now, p_receipts, p_failures): per charge in
 * request order, then the totals per lease and per (counter, lease), aggregated here so the
 * database applies one delta per row whatever the batch size.
 */
export function chargeBatchParams(rows: ChargeRow[]): unknown[] {
  const requestIds: string[] = [];
  const bucketIds: string[] = [];
  const charges: string[] = [];
  const receiptIds: Array<string | null> = [];
  const failedIds: Array<string | null> = [];
  const ledgerIds: string[] = [];
  const balanceLeases: Array<string | null> = [];
  const perLease = new Map<string, bigint>();
  const perCounter = new Map<string, { scope: string; scopeId: string; bucketId: string; window: string; leaseId: string; amount: bigint }>();
  for (const row of rows) {
    if (row.charge < 0n) throw new RangeError("a charge must be >= 0");
    requestIds.push(row.requestId);
    bucketIds.push(row.bucketId);
    charges.push(row.charge.toString());
    receiptIds.push(row.receiptId);
    failedIds.push(row.failedRequestId);
    ledgerIds.push(row.ledgerEntryId);
    let balanceLease: string | null = null;
    for (const lease of row.leases) {
      if (lease.scope === "BALANCE") balanceLease = lease.lease_id;
      if (row.charge === 0n) continue;
      perLease.set(lease.lease_id, (perLease.get(lease.lease_id) ?? 0n) + row.charge);
      if (lease.scope === "BALANCE") continue;
      const key = `${lease.lease_id}|${lease.scope}|${lease.scope_id}|${row.bucketId}|${lease.window_start}`;
      const counter = perCounter.get(key);
      if (counter) counter.amount += row.charge;
      else perCounter.set(key, { scope: lease.scope, scopeId: lease.scope_id, bucketId: row.bucketId, window: lease.window_start, leaseId: lease.lease_id, amount: row.charge });
    }
    balanceLeases.push(balanceLease);
  }
  const counters = [...perCounter.values()];
  return [
    requestIds,
    bucketIds,
    charges,
    receiptIds,
    failedIds,
    ledgerIds,
    balanceLeases,
    [...perLease.keys()],
    [...perLease.values()].map(String),
    counters.map((c) => c.scope),
    counters.map((c) => c.scopeId),
    counters.map((c) => c.bucketId),
    counters.map((c) => c.window),
    counters.map((c) => c.leaseId),
    counters.map((c) => c.amount.toString()),
  ];
}

/** tg_record_batch's call: $1 now, $2 receipts JSON, $3 failures JSON, then chargeBatchParams. */
export const RECORD_BATCH_SQL = `SELECT request_id, ledger_entry_id, balance_after::text AS balance_after, scope, scope_id, bucket, window_start,
       spent::text AS spent, held::text AS held, cap::text AS cap
  FROM tg_record_batch($1::timestamptz AT TIME ZONE 'UTC', $2::json, $3::json, ${Array.from({ length: 15 }, (_, i) => `$${i + 4}`).join(", ")})`;

/** Charges only (no receipts): the lease property test's writer, the same statement the gateway's batches use. */
export async function chargeBatch(pool: LeasePool, items: ChargeItem[], client: SqlClient, now = new Date()): Promise<Map<string, { ledgerEntryId: string; balanceAfter: bigint }>> {
  for (const item of items) if (item.charge < 0n || item.charge > item.hold.amount) throw new RangeError("charge outside its hold");
  const rows = await client
    .$queryRawUnsafe<Array<{ request_id: string | null; ledger_entry_id: string; balance_after: string }>>(
      RECORD_BATCH_SQL,
      now.toISOString(),
      null,
      null,
      ...chargeBatchParams(
        items.map((item) => ({
          requestId: item.requestId,
          bucketId: item.bucketId,
          charge: item.charge,
          receiptId: item.receiptId ?? null,
          failedRequestId: item.failedRequestId ?? null,
          ledgerEntryId: randomUUID(),
          leases: pool.chargeLeases(item.hold),
        })),
      ),
    )
    .catch(translateDbError);
  for (const item of items) pool.settled(item.hold, item.charge);
  return new Map(rows.filter((r) => r.request_id !== null).map((r) => [r.request_id!, { ledgerEntryId: r.ledger_entry_id, balanceAfter: BigInt(r.balance_after) }]));
}
